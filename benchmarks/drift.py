"""Benchmark of one drift report: Evidently's ``DataDriftPreset`` over 100,000 reference and 100,000
current rows of the model's feature columns (``feature_spec()``: 20 numeric, 4 categorical), exactly
what the ``drift_report`` asset runs once the two windows are fetched: ``drift.compare`` (report and
per-column verdicts) and ``save_html``. Target: ≤ 10 s on the 2-core machine.

The rows are synthetic (seeded), shaped like the features: log-normal amounts, Poisson counts, sums and
means derived from them, shares, a few NaN, the categorical request fields with their real cardinality;
the current window has the simulator's ``amount_inflation`` (amounts x 1.6), so the report holds both
drifted and stable columns. Importing Evidently (~7 s) and its first report (lazy imports) are timed
separately: every fresh process (each Dagster run) pays them once, before its first report.

Usage: ``.venv/bin/python benchmarks/drift.py [--rows 100000]``. With ``--database-url URL --reference
START/END --current START/END`` (ISO date-times) it reads two real windows of an existing platform database
instead (``drift.load_features``, at most ``--rows`` each; the fetch is timed too). Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from _machine import json_line, load_average
from rtml.monitoring.drift import Window, compare, load_features
from rtml.training.dataset import FeatureSpec, feature_spec

CATEGORIES = {
    "merchant_category": [f"category_{i}" for i in range(10)],
    "channel": ["pos", "online", "atm"],
    "country": [f"C{i}" for i in range(16)],
    "currency": ["EUR", "USD", "GBP", "CHF", "PLN", "SEK"],
}


def synthetic(spec: FeatureSpec, rows: int, seed: int, amount_factor: float = 1.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    amount = rng.lognormal(3.2, 0.8, rows) * amount_factor
    out: dict[str, np.ndarray] = {}
    for name in spec.numeric:
        if name == "amount":
            values = amount
        elif name.startswith(("txn_count", "merchant_txn_count", "distinct_merchants")):
            values = rng.poisson(30 if "merchant" in name else 4, rows).astype(float)
        elif name.startswith(("amount_sum", "amount_mean", "amount_std", "merchant_amount")):
            values = rng.lognormal(3.5, 0.9, rows) * amount_factor
        elif name.endswith(("share_7d", "rate_30d")):
            values = rng.beta(1.0, 12.0, rows)
        elif name.startswith("is_"):
            values = (rng.random(rows) < 0.2).astype(float)
        else:  # z-scores, seconds since the previous transaction, fraud counts
            values = rng.normal(0.0, 1.0, rows) * (1 + (amount_factor - 1) * ("zscore" in name))
        values[rng.random(rows) < 0.03] = np.nan  # missing merchant rows, undefined statistics
        out[name] = values.astype("float64")
    for name in spec.categorical:
        choices = CATEGORIES.get(name, ["a", "b", "c"])
        out[name] = rng.choice(np.array(choices, dtype=object), rows)
    return pd.DataFrame(out)[spec.columns]


def window(text: str) -> Window:
    start, _, end = text.partition("/")
    return Window(datetime.fromisoformat(start), datetime.fromisoformat(end))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--database-url", help="read real windows from this database (not synthetic rows)")
    parser.add_argument("--reference", type=window, help="START/END of the reference window")
    parser.add_argument("--current", type=window, help="START/END of the current window")
    args = parser.parse_args()
    load_start = load_average()
    fetch_seconds = 0.0
    if args.database_url:
        if args.reference is None or args.current is None:
            parser.error("--database-url needs --reference and --current")
        began = time.perf_counter()
        reference, spec = load_features(args.database_url, args.reference, args.rows)
        current, _ = load_features(args.database_url, args.current, args.rows)
        fetch_seconds = time.perf_counter() - began
    else:
        spec = feature_spec()
        reference = synthetic(spec, args.rows, seed=1)
        current = synthetic(spec, args.rows, seed=2, amount_factor=1.6)

    began = time.perf_counter()
    import evidently  # noqa: F401  # timed on its own: every fresh process pays it once

    import_seconds = time.perf_counter() - began
    began = time.perf_counter()
    compare(reference.head(1_000), current.head(1_000), spec)  # the first report's lazy imports
    warmup_seconds = time.perf_counter() - began

    began = time.perf_counter()
    comparison = compare(reference, current, spec)
    report_seconds = time.perf_counter() - began
    with tempfile.TemporaryDirectory(prefix="rtml-bench-drift-") as out:
        html = Path(out) / "drift.html"
        began = time.perf_counter()
        comparison.snapshot.save_html(str(html))
        html_seconds = time.perf_counter() - began
        html_mib = html.stat().st_size / 2**20
    seconds = report_seconds + html_seconds
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    drifted = [name for name, column in comparison.columns.items() if column.drifted]

    data = "synthetic" if not args.database_url else f"{args.reference} vs {args.current}"
    print(f"data         {data}")
    print(
        f"rows         {len(reference):,} reference + {len(current):,} current, {len(spec.columns)} columns"
    )
    if args.database_url:
        print(f"fetch        {fetch_seconds:7.2f} s  (COPY of both windows, not in the total)")
    print(f"import       {import_seconds:7.2f} s  (evidently, once per process)")
    print(f"first report {warmup_seconds:7.2f} s  (1,000 rows: lazy imports)")
    print(f"report       {report_seconds:7.2f} s  (Report.run + per-column verdicts)")
    print(f"html         {html_seconds:7.2f} s  ({html_mib:.1f} MiB)")
    print(f"total        {seconds:7.2f} s  (target ≤ 10 s)")
    print(f"drifted      {comparison.drifted_share:.1%}: {', '.join(drifted)}")
    print(f"peak RSS     {peak_rss_mib:7.0f} MiB")
    print(f"load average {load_start[0]:.2f} at the start, {load_average()[0]:.2f} at the end (2 cores)")
    print(
        json_line(
            {
                "benchmark": "drift",
                "data": "synthetic" if not args.database_url else "database",
                "reference_rows": len(reference),
                "current_rows": len(current),
                "columns": len(spec.columns),
                "seconds": round(seconds, 2),
                "report_seconds": round(report_seconds, 2),
                "html_seconds": round(html_seconds, 2),
                "import_seconds": round(import_seconds, 2),
                "first_report_seconds": round(warmup_seconds, 2),
                "html_mib": round(html_mib, 1),
                "drifted_share": round(comparison.drifted_share, 4),
                "peak_rss_mib": round(peak_rss_mib),
                "fetch_seconds": round(fetch_seconds, 2),
            },
            load_start,
        )
    )


if __name__ == "__main__":
    main()

"""Benchmark: calibration of the hourly drift check's rule on a week of undrifted hours, and its detection
of ``amount_inflation`` switched on at any minute of an hour.

The world is the one ``drift_to_staging.py`` builds (the seeded simulator from 2026-10-01 at
``--transactions-per-day``, the loader and dbt, the reference = a production training window of the 7 days
ending at day 37 10:00), built once, in a database of its own (``rtml_bench_drift_rule_calib``, dropped at
the end) on the PostgreSQL of ``RTML_DATABASE_URL``, else the machine's; where that does not answer, an
embedded one it starts and stops. After the reference week come 168 undrifted hours (day 37 10:00 to day
44 10:00: nights and a weekend included), then ``amount_inflation`` from day 44 10:00 for three hours.

Each hour goes through the hourly check's comparison as ``recent_drift_report`` makes it, by the same
library calls (``drift.fetch_windows`` with the same-hour, same-day-of-the-week reference, ``drift.compare``
with the hourly rule's p-values: the two-sample KS test of every numeric column, ``drift.reasons``): the
whole hour and its newest ``--tails`` minutes. A switch at minute
MM is emulated by a current window ending 60 - MM minutes after the switch (the hour the check sees at :05
holds 60 - MM drifted minutes); windows ending 120 and 180 minutes after it are whole drifted hours.

Printed: per window length, the smallest p-value over the undrifted week (and where), the p-values of
the drifted cases, the false alarms / detections at the settings in force (``RTML_DRIFT_RECENT_PVALUE``,
``RTML_DRIFT_RECENT_TAIL_MINUTES``, ``RTML_DRIFT_RECENT_TAIL_MIN_ROWS``), and at other p-values for each
tail length. Every hour's figures are written to ``--out`` (JSON) for other settings to be judged without
a new run.

Usage: ``.venv/bin/python benchmarks/drift_calibration.py [--tails 15 20] [--hours 168]``. Ends with one
JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from _machine import json_line, load_average
from _servers import DATABASE_URL, servers
from rtml.config import database_url_for

START = datetime(2026, 10, 1, tzinfo=UTC)  # drift_to_staging's world
DATABASE = "rtml_bench_drift_rule_calib"
SWITCH_MINUTES = (0, 30, 45, 50, 52, 55)  # a switch at :MM leaves 60 - MM drifted minutes in its hour
WHOLE_HOURS_AFTER = (2, 3)  # windows ending 2 and 3 hours after the switch: whole drifted hours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions-per-day", type=int, default=20_000)
    parser.add_argument("--history-days", type=int, default=38)
    parser.add_argument("--hours", type=int, default=168, help="undrifted hours after the reference")
    parser.add_argument("--tails", type=int, nargs="+", default=[15, 20], help="tail minutes")
    parser.add_argument("--out", type=Path, default=Path("/tmp/drift-rule-calibration.json"))
    args = parser.parse_args()

    with (
        servers(os.environ.get("RTML_DATABASE_URL", DATABASE_URL)) as (server, _),
        tempfile.TemporaryDirectory(prefix="rtml-bench-drift-calib-") as folder,
    ):
        os.environ["DBT_TARGET_PATH"] = str(Path(folder) / "dbt-target")
        for name in ("RTML_SIM_DRIFT_SCENARIO", "RTML_SIM_DRIFT_START", "RTML_DATABASE_URL"):
            os.environ.pop(name, None)
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f"drop database if exists {DATABASE}")
            conn.execute(f"create database {DATABASE}")
        try:
            calibrate(args, Path(folder), database_url_for(server, DATABASE))
        finally:
            with psycopg.connect(server, autocommit=True) as conn:
                conn.execute(f"drop database if exists {DATABASE} with (force)")


def calibrate(args: argparse.Namespace, folder: Path, url: str) -> None:
    load_start = load_average()
    from rtml.config import ServicesSettings, Settings, SimulatorSettings
    from rtml.features.dbt import run_dbt
    from rtml.features.sample_data import load_simulated
    from rtml.monitoring import drift

    reference_end = START + timedelta(days=args.history_days - 1, hours=10)
    reference = drift.Window(reference_end - timedelta(days=7), reference_end)
    switch_at = reference_end + timedelta(hours=args.hours)
    end = switch_at + timedelta(hours=max(WHOLE_HOURS_AFTER))
    base = Settings()  # the settings in force (environment): the rule judged
    settings = Settings(
        services=ServicesSettings(data_dir=folder),
        simulator=SimulatorSettings(
            start=START,
            transactions_per_day=args.transactions_per_day,
            drift_scenario="amount_inflation",
            drift_start=switch_at,
        ),
    )
    began = time.perf_counter()
    load_simulated(url, settings, START, end, labels_until=end, hours_per_chunk=24)
    loaded = time.perf_counter()
    proc = run_dbt(["run", "--full-refresh", "--select", "+training_set"], url, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:]
    built = time.perf_counter()
    print(
        f"world: {(end - START).days} days at {args.transactions_per_day}/day: load {loaded - began:.0f} s, "
        f"dbt {built - loaded:.0f} s; reference {reference}; switch at {switch_at:%Y-%m-%d %H:%M}",
        flush=True,
    )

    def check(current: drift.Window) -> dict[str, Any]:
        """The hourly check's comparisons of one current window: the hour and each tail."""
        tails = [drift.tail_window(current, minutes) for minutes in args.tails]
        rows = drift.fetch_windows(
            url,
            reference,
            current,
            base.monitoring.drift_recent_max_rows,
            same_hours_of_day=True,
            tails=tails,
        )
        figures: dict[str, Any] = {
            "end": current.end.isoformat(),
            "reference_rows": len(rows.reference),
            "reference_days": rows.reference_hours.days if rows.reference_hours else "all",
        }
        named = zip((f"tail{m}" for m in args.tails), rows.tails, strict=True)
        for name, frame in (("hour", rows.current), *named):
            if frame.empty:
                figures[name] = {"rows": 0}
                continue
            pvalue = base.monitoring.drift_recent_pvalue
            found = drift.compare(rows.reference, frame, rows.spec, pvalue=pvalue)
            # 4 significant digits: p-values of 1e-12 must not round to 0
            scores = {c.column: float(f"{c.score:.4g}") for c in found.columns.values()}
            top = min(scores, key=lambda column: scores[column])
            figures[name] = {
                "rows": len(frame),
                "share": round(found.drifted_share, 4),
                "top": top,
                "top_score": scores[top],
                "scores": scores,
                "drifted": [c.column for c in found.columns.values() if c.drifted],
                "methods": sorted({c.method for c in found.columns.values()}),
            }
        return figures

    undrifted = []
    for hour in range(args.hours):
        current = drift.Window(
            reference_end + timedelta(hours=hour), reference_end + timedelta(hours=hour + 1)
        )
        undrifted.append(check(current))
        hour_figures = undrifted[-1]["hour"]
        print(
            f"  {current.start:%a %m-%d %H:00}: {hour_figures['rows']} rows,"
            f" share {hour_figures.get('share')}"
            f" {hour_figures.get('drifted')}",
            flush=True,
        )
        if hour % 12 == 11:
            print(f"  {hour + 1} undrifted hours checked ({time.perf_counter() - built:.0f} s)", flush=True)
    drifted = {}
    ends = {f"switch :{m:02d}": 60 - m for m in SWITCH_MINUTES} | {
        f"whole hour {h}": 60 * h for h in WHOLE_HOURS_AFTER
    }
    for case, minutes in ends.items():
        window_end = switch_at + timedelta(minutes=minutes)
        drifted[case] = check(drift.Window(window_end - timedelta(hours=1), window_end))
    checked = time.perf_counter()
    args.out.write_text(json.dumps({"undrifted": undrifted, "drifted": drifted}, indent=1))
    report(args, base, undrifted, drifted, checked - built, args.out, load_start)


def fired(figures: dict[str, Any], tail: str | None, pvalue: float, min_rows: int) -> list[str]:
    """The hourly rule over one case's hour and ``tail`` (compared when it holds ``min_rows``): any
    numeric column's p-value below ``pvalue`` (``drift.reasons`` at share 0)."""
    from rtml.monitoring.drift import ColumnDrift, reasons

    found = []
    for name in ("hour", *([tail] if tail else [])):
        window = figures.get(name)
        if window is None:
            raise SystemExit(f"no figures for {name}: add it to --tails")
        if not window["rows"] or (name != "hour" and window["rows"] < min_rows):
            continue
        columns = {
            c: ColumnDrift(c, "K-S p_value", pvalue, p, p < pvalue) for c, p in window["scores"].items()
        }
        share = sum(column.drifted for column in columns.values()) / len(columns)
        found += [f"{name}: {why}" for why in reasons(share, 0.0, columns)]
    return found


ALPHAS = (1e-4, 1e-6, 1e-7, 1e-8)


def report(
    args: argparse.Namespace,
    base: Any,
    undrifted: list[dict[str, Any]],
    drifted: dict[str, dict[str, Any]],
    seconds: float,
    out: Path,
    load_start: list[float],
) -> None:
    windows = ["hour", *(f"tail{m}" for m in args.tails)]
    print(
        f"\n{len(undrifted)} undrifted hours, {len(drifted)} drifted cases, {seconds:.0f} s; figures: {out}"
    )
    print(
        "| window | rows (min-max) | smallest undrifted p-value (where) | 2nd "
        "| drifted cases: smallest p-value (" + ", ".join(drifted) + ") |"
    )
    smallest: dict[str, float] = {}
    for name in windows:
        seen = sorted(
            (h[name]["top_score"], h[name]["top"], h["end"], h[name]["rows"])
            for h in undrifted
            if h[name]["rows"]
        )
        rows = [h[name]["rows"] for h in undrifted]
        smallest[name] = seen[0][0]
        cases = ", ".join(
            f"{d[name].get('top_score', 1):.2g} {d[name].get('top', '')}" for d in drifted.values()
        )
        print(
            f"| {name} | {min(rows)}-{max(rows)} | {seen[0][0]:.2g} {seen[0][1]} ({seen[0][2][5:16]}, "
            f"{seen[0][3]} rows) | {seen[1][0]:.2g} {seen[1][1]} ({seen[1][2][5:16]}) | {cases} |"
        )
    tail = (
        f"tail{base.monitoring.drift_recent_tail_minutes}"
        if base.monitoring.drift_recent_tail_minutes
        else None
    )
    pvalue, min_rows = base.monitoring.drift_recent_pvalue, base.monitoring.drift_recent_tail_min_rows
    alarms = {h["end"]: why for h in undrifted if (why := fired(h, tail, pvalue, min_rows))}
    detections = {case: fired(d, tail, pvalue, min_rows) for case, d in drifted.items()}
    print(
        f"\nat the settings in force (p-value {pvalue:g}, "
        f"tail {base.monitoring.drift_recent_tail_minutes} min "
        f"with >= {min_rows} rows): {len(alarms)} false alarms of {len(undrifted)} undrifted hours"
    )
    for end, why in alarms.items():
        print(f"  false alarm, window ending {end}: {'; '.join(why)}")
    for case, why in detections.items():
        print(f"  {case}: {'detected: ' + '; '.join(why[:3]) if why else 'NOT detected'}")
    print("\nother p-values (hour, or a tail with >= the minimum rows):")
    others: dict[str, Any] = {}
    for name in windows[1:]:
        for alpha in ALPHAS:
            missed = [case for case, d in drifted.items() if not fired(d, name, alpha, min_rows)]
            false = [h["end"][5:16] for h in undrifted if fired(h, name, alpha, min_rows)]
            print(f"  {name}, p-value {alpha:g}: {len(false)} false alarms {false}; not detected {missed}")
            others[f"{name}_{alpha:g}"] = {"false_alarms": len(false), "undetected": missed}
    print(
        json_line(
            {
                "transactions_per_day": args.transactions_per_day,
                "undrifted_hours": len(undrifted),
                "check_seconds": round(seconds, 1),
                **{f"smallest_undrifted_pvalue_{name}": value for name, value in smallest.items()},
                "pvalue": pvalue,
                "tail_minutes": base.monitoring.drift_recent_tail_minutes,
                "false_alarms": len(alarms),
                "undetected_cases": [case for case, why in detections.items() if not why],
                "other_pvalues": others,
            },
            load_start,
        )
    )


if __name__ == "__main__":
    main()

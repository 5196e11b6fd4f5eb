"""Serving benchmark (issue #5): ``POST /score`` at a constant rate, next to BentoML's floor.

For each target — the framework's floor (``benchmarks/floor_service.py``: same request model, same
worker count, constant answer) and, when given, the real ``FraudScorer`` — the harness starts
``bentoml serve <target> --port <free port>`` itself, waits for ``/readyz``, warms up (closed loop),
then drives ``/score`` open loop (constant rate, latency from each request's scheduled time; see
``_load.py`` for why no off-the-shelf tool is used) at each ``--rates`` for ``--seconds``, and finally
measures the maximum throughput (closed loop, ``--concurrency`` connections, ``--max-seconds``).
The services run one after the other, never at the same time (the machine has 2 cores).

Usage (from the repository root)::

    .venv/bin/python benchmarks/serving.py                         # floor only
    RTML_REDIS_URL=... RTML_MLFLOW_TRACKING_URI=... RTML_MODEL_NAME=... RTML_ONLINE_KEY_PREFIX=... \\
      .venv/bin/python benchmarks/serving.py --service service:FraudScorer --service-cwd serving \\
      --transaction '{"customer_id": "<in Redis>", "merchant_id": "<in Redis>"}'

The real service takes its settings from the environment (``RTML_*``, as ``bentoml serve`` would);
``--transaction`` overrides fields of the default body (ids that exist in Redis, so the lookup finds
features). Targets: at 100 rps p99 ≤ 15 ms and ≤ 1.5 x the floor's p99, throughput ≥ 0.7 x the
floor's, zero errors. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import ROOT, TRANSACTION, Service, drive, load_average, score_body


def bench(
    service: Service, rates: list[float], seconds: float, max_seconds: float, concurrency: int, body: bytes
) -> dict:
    out: dict = {"load_average_start": load_average()}
    with service:
        warm = drive(service.url, 0, 3, body=body, concurrency=8)
        if warm.errors:
            raise SystemExit(f"{service.target}: {warm.errors} errors in warm-up: {warm.statuses}")
        out["rss_mib_start"] = round(service.rss_mib(), 1)
        for rate in rates:
            r = drive(service.url, rate, seconds, body=body)
            out[f"at_{rate:g}"] = r.summary()
            print(service.target, rate, "rps:", r.summary(), r.statuses, file=sys.stderr)
        m = drive(service.url, 0, max_seconds, body=body, concurrency=concurrency)
        out["max"] = m.summary()
        print(service.target, "max:", m.summary(), m.statuses, file=sys.stderr)
        out["rss_mib_end"] = round(service.rss_mib(), 1)
    out["load_average_end"] = load_average()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--floor", default="benchmarks.floor_service:FloorScorer")
    ap.add_argument("--service", default=None, help="e.g. service:FraudScorer (with --service-cwd serving)")
    ap.add_argument("--service-cwd", default="serving")
    ap.add_argument("--transaction", default="{}", help="JSON object overriding fields of the body")
    ap.add_argument("--rates", default="100,300")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--max-seconds", type=float, default=15)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--workers", type=int, default=int(os.environ.get("RTML_SERVING_WORKERS", "1")))
    ap.add_argument("--log-dir", default="/tmp/rtml-bench-serving")
    args = ap.parse_args()

    rates = [float(x) for x in args.rates.split(",")]
    body = score_body({**TRANSACTION, **json.loads(args.transaction)})
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {"RTML_SERVING_WORKERS": str(args.workers)}

    floor = bench(
        Service(args.floor, ROOT, env, log_dir / "floor.log"),
        rates,
        args.seconds,
        args.max_seconds,
        args.concurrency,
        body,
    )
    result: dict = {
        "benchmark": "serving",
        "workers": args.workers,
        "seconds_per_rate": args.seconds,
        "floor": floor,
    }
    if args.service:
        real = bench(
            Service(args.service, ROOT / args.service_cwd, env, log_dir / "service.log"),
            rates,
            args.seconds,
            args.max_seconds,
            args.concurrency,
            body,
        )
        result["service"] = real
        first = f"at_{rates[0]:g}"
        p99, floor_p99 = real[first]["p99_ms"], floor[first]["p99_ms"]
        result["p99_ratio"] = round(p99 / floor_p99, 2)
        result["rps_ratio"] = round(real["max"]["rps"] / floor["max"]["rps"], 2)
        errors = sum(v["errors"] for k, v in real.items() if k.startswith("at_"))
        result["targets_met"] = bool(
            p99 <= 15 and result["p99_ratio"] <= 1.5 and result["rps_ratio"] >= 0.7 and errors == 0
        )
    # flat, unit-suffixed keys for the last line
    flat: dict = {"benchmark": "serving", "workers": args.workers}
    for name in ("floor", "service"):
        if name not in result:
            continue
        part = result[name]
        for rate in rates:
            s = part[f"at_{rate:g}"]
            for key in ("p50_ms", "p99_ms", "errors", "lag_p99_ms"):
                flat[f"{name}_{rate:g}rps_{key}"] = s[key]
        flat[f"{name}_max_rps"] = part["max"]["rps"]
        flat[f"{name}_max_errors"] = part["max"]["errors"]
        flat[f"{name}_load_average"] = part["load_average_start"][0]
    for key in ("p99_ratio", "rps_ratio", "targets_met"):
        if key in result:
            flat[key] = result[key]
    print(json.dumps(result, indent=1), file=sys.stderr)
    print(json.dumps(flat))


if __name__ == "__main__":
    main()

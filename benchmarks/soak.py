"""Soak test (issue #5): ``POST /score`` at a constant 200 requests/s for 10 minutes; zero errors and the
worker memory flat (RSS growth < 50 MiB after the warm-up).

The harness starts ``bentoml serve <target>`` itself (default: the floor service; ``--real``: the real
``FraudScorer`` in a world it builds, as ``serving.py`` does: ``_world.py``, untimed, removed at the end;
``--target rtml.serving.service:FraudScorer``: the real one on the ``RTML_*`` settings given), warms
up (``--warmup-seconds`` at the soak rate, not counted), then drives it open loop (``_load.py``) in
``--interval``-second slices, sampling the workers' RSS (psutil, summed over BentoML's worker
processes and their children: the real service's sidecar process) after each slice. Growth =
last sample - first sample after the warm-up. Per slice: p50/p99/max latency (a growing
garbage-collection pause shows up as a growing max).

``RTML_BENTOML_MEMORY_FIX=none`` (floor only) serves without the fix of ``rtml/serving/bentoml_adapter.py``,
to see the retention it removes (``docs/serving-memory.md``). Ends with one JSON line.

    .venv/bin/python benchmarks/soak.py [--minutes 10 --rate 200] [--real]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import ROOT, TRANSACTION, Service, drive, score_body
from _machine import json_line, load_average
from _servers import DATABASE_URL, REDIS_URL
from rtml.stack.scorer_process import SERVICE


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="benchmarks.floor_service:FloorScorer")
    ap.add_argument("--cwd", default=".")
    ap.add_argument("--transaction", default="{}", help="JSON object overriding fields of the body")
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--warmup-seconds", type=float, default=60)
    ap.add_argument("--interval", type=float, default=30)
    ap.add_argument("--workers", type=int, default=int(os.environ.get("RTML_SERVING_WORKERS", "1")))
    ap.add_argument("--log", default="/tmp/rtml-bench-soak.log")
    ap.add_argument("--real", action="store_true", help="the real FraudScorer in a world of its own")
    ap.add_argument("--database-url", default=DATABASE_URL, help="with --real: the world's server")
    ap.add_argument("--redis-url", default=REDIS_URL, help="with --real: the world's Redis")
    args = ap.parse_args()
    args.provision_seconds = None
    with contextlib.ExitStack() as stack:
        if args.real:
            from _world import provisioned

            world = provisioned(args.database_url, args.redis_url, Path(args.log).parent, staged=False)
            known, args.provision_seconds = stack.enter_context(world)
            args.target = SERVICE
            args.transaction = json.dumps({**json.loads(args.transaction), **known})
        soak(args)


def soak(args: argparse.Namespace) -> None:
    body = score_body({**TRANSACTION, **json.loads(args.transaction)})
    env = {"RTML_SERVING_WORKERS": str(args.workers)}
    samples: list[dict] = []
    total_errors = 0
    latencies: list[np.ndarray] = []
    load_start = load_average()
    with Service(args.target, (ROOT / args.cwd).resolve(), env, Path(args.log)) as service:
        rss_start = service.rss_mib()
        warm = drive(service.url, args.rate, args.warmup_seconds, body=body)
        rss_warm = service.rss_mib()
        print(f"warm-up: {warm.summary()} rss {rss_start:.1f} -> {rss_warm:.1f} MiB", file=sys.stderr)
        slices = max(1, round(args.minutes * 60 / args.interval))
        for i in range(slices):
            r = drive(service.url, args.rate, args.interval, body=body)
            total_errors += r.errors
            latencies.append(r.latencies_ms)
            s = {
                "t_s": round((i + 1) * args.interval),
                "rss_mib": round(service.rss_mib(), 1),
                **r.summary(),
                "load_average": load_average()[0],
            }
            samples.append(s)
            print(json.dumps(s), file=sys.stderr)
    rss = [s["rss_mib"] for s in samples]
    lat = np.concatenate(latencies) if latencies else np.array([float("nan")])
    out = {
        "benchmark": "soak",
        "target": args.target,
        "provision_seconds": args.provision_seconds,
        "memory_fix": os.environ.get("RTML_BENTOML_MEMORY_FIX", "both"),
        "workers": args.workers,
        "rate_rps": args.rate,
        "minutes": args.minutes,
        "requests": len(lat) + total_errors,
        "errors": total_errors,
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "max_ms": round(float(np.max(lat)), 2),
        "max_ms_first_slice": samples[0]["max_ms"],
        "max_ms_last_slice": samples[-1]["max_ms"],
        "rss_start_mib": round(rss_start, 1),
        "rss_after_warmup_mib": round(rss_warm, 1),
        "rss_first_mib": rss[0],
        "rss_end_mib": rss[-1],
        "rss_max_mib": max(rss),
        "rss_growth_mib": round(rss[-1] - rss_warm, 1),
    }
    out["passed"] = bool(out["errors"] == 0 and out["rss_growth_mib"] < 50)
    print(json_line(out, load_start))


if __name__ == "__main__":
    main()

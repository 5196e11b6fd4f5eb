"""Serving under faults (issue 14): the scorer's answers while the Redis it reads hangs.

``measure_redis_hang(service_url, redis_pid, body)`` is the serving part of ``benchmarks/faults.py``:
it drives ``POST /score`` open loop at ``rate`` requests/s (``_load.drive``: latency from each
request's scheduled time) for ``hang_seconds`` while the Redis process is stopped (SIGSTOP at the
start, SIGCONT at the end), then reports, from SIGCONT, how long until ``GET /health`` says the
circuit breaker is closed and until ``/score`` answers with features again (not ``degraded``).
Targets (failing open): 0 non-2xx, p50 at most 5 ms, p99 at most 120 ms (only the requests caught in
the first socket timeout, ``RTML_REDIS_SOCKET_TIMEOUT_MS`` = 100 ms, may wait for it), recovery within
1 s of Redis answering. The latencies are of the 2xx answers (``_load``): failing closed, the figures
that matter are the 503s (``*_non_2xx``) and the recovery.

Measured 2026-12-05 on the test world (2 cores shared, one worker, default settings; the run:
``measure_redis_hang`` against a ``bentoml serve`` started as ``tests/test_serving.py`` starts its
scorers, without that module's 1 s socket timeout): failing open p50 2.0 ms, p99 33.8 ms, max 113 ms,
0 non-2xx of 1,000, breaker closed 0.023 s and features served again 0.025 s after SIGCONT; failing
closed 996 of 1,000 answered 503 at once, recovery 0.073 s. Before the breaker: p50 ~280 ms, 4 % of the
first second's requests over 2 s (issue 14).

Run alone (a world with the ``*_latest`` tables and a ``production`` model version, as for
``benchmarks/serving.py``): it starts a Valkey of its own — it stops a server, so never the machine's
or the platform's — pushes the online store into it from ``RTML_DATABASE_URL``, serves
``rtml.serving.service:FraudScorer`` on it, warms up, measures, and ends with one JSON line::

    RTML_DATABASE_URL=... RTML_MLFLOW_TRACKING_URI=... RTML_MODEL_NAME=... \\
      .venv/bin/python benchmarks/serving_faults.py [--rate 100 --hang-seconds 10] [--fail-closed]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import ROOT, TRANSACTION, Service, drive, score_body
from _machine import json_line, load_average
from rtml.stack.scorer_process import SERVICE


def _get_json(url: str, body: bytes | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _wait(condition: Any, timeout: float, poll: float = 0.005) -> float | None:
    """Seconds until ``condition()`` held (polled every ``poll`` s), None after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return round(time.monotonic() - started, 3)
        time.sleep(poll)
    return None


def measure_redis_hang(
    service_url: str,
    redis_pid: int,
    body: bytes,
    *,
    rate: float = 100.0,
    hang_seconds: float = 10.0,
    prefix: str = "redis_hang",
) -> dict[str, Any]:
    """Open loop at ``rate`` for ``hang_seconds`` with ``redis_pid`` stopped; recovery after SIGCONT."""
    recovery: dict[str, float | None] = {}

    def resume() -> None:
        os.kill(redis_pid, signal.SIGCONT)
        continued = time.monotonic()

        def breaker_closed() -> bool:
            return _get_json(f"{service_url}/health")[1]["online_store"]["breaker"] == "closed"

        def answers_with_features() -> bool:
            status, answer = _get_json(f"{service_url}/score", body)
            return status == 200 and not answer["degraded"]

        recovery["closed"] = _wait(breaker_closed, 30)
        served = _wait(answers_with_features, 30)
        recovery["served"] = None if served is None else round(time.monotonic() - continued, 3)

    os.kill(redis_pid, signal.SIGSTOP)
    timer = threading.Timer(hang_seconds, resume)
    try:
        timer.start()
        result = drive(service_url, rate, hang_seconds, body=body)
        timer.join()
    finally:
        timer.cancel()
        os.kill(redis_pid, signal.SIGCONT)  # whatever happened
    summary = result.summary()
    non_2xx = sum(n for status, n in result.statuses.items() if not 200 <= status < 300)
    return {
        f"{prefix}_rate": rate,
        f"{prefix}_seconds": hang_seconds,
        f"{prefix}_p50_ms": summary["p50_ms"],
        f"{prefix}_p99_ms": summary["p99_ms"],
        f"{prefix}_max_ms": summary["max_ms"],
        f"{prefix}_non_2xx": non_2xx,
        f"{prefix}_statuses": summary["statuses"],
        f"{prefix}_lag_p99_ms": summary["lag_p99_ms"],
        f"{prefix}_breaker_closed_s": recovery.get("closed"),
        f"{prefix}_recovery_s": recovery.get("served"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=100)
    ap.add_argument("--hang-seconds", type=float, default=10)
    ap.add_argument("--warmup-seconds", type=float, default=5)
    ap.add_argument("--fail-closed", action="store_true", help="also measure a fail-closed service")
    ap.add_argument("--log-dir", default="/tmp/rtml-bench-serving-faults")
    args = ap.parse_args()
    load_start = load_average()

    from rtml.config import OnlineSettings, get_settings
    from rtml.features.online import OnlineStore
    from rtml.stack.processes import stop_pid
    from rtml.stack.redis import start_embedded

    database_url = get_settings().services.database_url
    if not database_url:
        raise SystemExit("RTML_DATABASE_URL must name a database with the *_latest tables")
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"rtmlbench-faults-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as scratch:
        valkey = start_embedded(Path(scratch) / "valkey")
        try:
            store = OnlineStore(valkey.url, online=OnlineSettings(ttl_seconds=0, key_prefix=prefix))
            store.push_from_postgres(database_url, full=True)
            customer, merchant = _known_pair(database_url)
            body = score_body({**TRANSACTION, "customer_id": customer, "merchant_id": merchant})
            out: dict[str, Any] = {"benchmark": "serving_faults"}
            for fail_open in (True, False) if args.fail_closed else (True,):
                env = {
                    "RTML_REDIS_URL": valkey.url,
                    "RTML_ONLINE_KEY_PREFIX": prefix,
                    "RTML_SERVING_FAIL_OPEN": str(fail_open).lower(),
                    "BENTOML_HOME": str(Path(scratch) / f"bentoml-{fail_open}"),
                }
                name = "open" if fail_open else "closed"
                service = Service(SERVICE, ROOT, env, log_dir / f"scorer-{name}.log")
                with service:
                    warm = drive(service.url, args.rate, args.warmup_seconds, body=body)
                    if warm.errors:
                        raise SystemExit(f"{warm.errors} errors in the warm-up: {warm.statuses}")
                    status, answer = _get_json(f"{service.url}/score", body)
                    assert status == 200 and not answer["degraded"] and not answer["features_missing"], answer
                    prefix_name = "redis_hang" if fail_open else "redis_hang_fail_closed"
                    out.update(
                        measure_redis_hang(
                            service.url,
                            valkey.pid,
                            body,
                            rate=args.rate,
                            hang_seconds=args.hang_seconds,
                            prefix=prefix_name,
                        )
                    )
            store.purge()
            store.close()
        finally:
            stop_pid(valkey.pid)
    print(json_line(out, load_start))


def _known_pair(database_url: str) -> tuple[str, str]:
    """A customer and a merchant the online store holds."""
    import psycopg

    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "select c.customer_id, m.merchant_id from features.customer_features_latest c "
            "cross join (select merchant_id from features.merchant_features_latest limit 1) m limit 1"
        ).fetchone()
    if row is None:
        raise SystemExit("the *_latest tables are empty")
    return str(row[0]), str(row[1])


if __name__ == "__main__":
    main()

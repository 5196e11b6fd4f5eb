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

Run alone (from the repository root, after ``make test`` has created ``.venv``)::

    .venv/bin/python benchmarks/serving_faults.py [--rate 100 --hang-seconds 10] [--fail-closed]

By default (``--provision``) it builds a world of its own as ``benchmarks/serving.py`` does
(``_world.py``: a simulated world with the ``*_latest`` tables, an MLflow server, a ``production``
version) on the PostgreSQL of ``--database-url``, or an embedded one where the machine's servers do
not answer (``_servers.py``); it says how long that took (``provision_seconds``, not part of any
figure) and removes it all at the end. ``--no-provision``: the world named by ``RTML_DATABASE_URL``,
``RTML_MLFLOW_TRACKING_URI`` and ``RTML_MODEL_NAME``. Either way it starts a Valkey of its own — it
stops a server, so never the machine's or the platform's — pushes the online store into it from the
world's database, serves ``rtml.serving.service:FraudScorer`` on it, warms up, measures, and ends
with one JSON line::

    RTML_DATABASE_URL=... RTML_MLFLOW_TRACKING_URI=... RTML_MODEL_NAME=... \\
      .venv/bin/python benchmarks/serving_faults.py --no-provision
"""

from __future__ import annotations

import argparse
import contextlib
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
from _servers import DATABASE_URL, servers
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
    ap.add_argument(
        "--provision",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="build a world of its own (_world.py); --no-provision: the world of RTML_* as given",
    )
    ap.add_argument("--database-url", default=DATABASE_URL)
    args = ap.parse_args()
    load_start = load_average()

    from rtml.config import OnlineSettings, get_settings
    from rtml.features.online import OnlineStore
    from rtml.stack.processes import stop_pid
    from rtml.stack.redis import start_embedded

    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"rtmlbench-faults-{uuid.uuid4().hex[:8]}"
    out: dict[str, Any] = {"benchmark": "serving_faults", "provision_seconds": None}
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        valkey = start_embedded(scratch / "valkey")
        stack.callback(stop_pid, valkey.pid)
        if args.provision:
            from _world import production_world

            began = time.perf_counter()
            server_url, _ = stack.enter_context(servers(args.database_url))
            world = stack.enter_context(production_world(server_url, log_dir, "serving-faults"))
            out["provision_seconds"] = round(time.perf_counter() - began, 1)
            print(f"provisioned in {out['provision_seconds']} s (not timed)", file=sys.stderr)
            database_url, world_env = world.url, world.service_env(valkey.url)
        else:  # the scorer reads the world's settings from this environment
            database_url, world_env = get_settings().services.database_url, {}
            if not database_url:
                raise SystemExit(
                    "--no-provision: RTML_DATABASE_URL must name a database with the *_latest tables"
                )
        store = OnlineStore(valkey.url, online=OnlineSettings(ttl_seconds=0, key_prefix=prefix))
        stack.callback(store.close)
        stack.callback(store.purge)
        store.push_from_postgres(database_url, full=True)
        customer, merchant = _known_pair(database_url)
        body = score_body({**TRANSACTION, "customer_id": customer, "merchant_id": merchant})
        for fail_open in (True, False) if args.fail_closed else (True,):
            env = {
                **world_env,
                "RTML_REDIS_URL": valkey.url,
                "RTML_ONLINE_KEY_PREFIX": prefix,
                "RTML_SERVING_FAIL_OPEN": str(fail_open).lower(),
                "BENTOML_HOME": str(scratch / f"bentoml-{fail_open}"),
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

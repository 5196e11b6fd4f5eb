"""Faults under load (issue #14): each fault injected into the real servers of a running `rtml demo`
while ``POST /score`` is driven open loop, and what the platform does about it, as one JSON line.

From a fresh clone after ``make test`` (or ``make .venv/.synced``)::

    .venv/bin/python benchmarks/faults.py            # about 20 minutes on the 2-core machine

It provisions everything itself, in temporary folders, and cleans up after itself:

1. ``benchmarks/demo_lifecycle.py`` (its own `rtml demo --no-load`): a run whose code server and worker
   are SIGKILLed is marked failed (``killed_run_marked_failed_s``); Ctrl-C of the demo with a run in
   flight leaves ``demo_stop_leftover_processes`` alive 15 s later (target 0).
2. A live `rtml demo` (embedded PostgreSQL and Valkey, ``--demo-days`` of history, a model in
   production, the scorer, the Dagster daemon with its sensors) — provisioning is not timed — then, at
   100 requests/s:

   * **Redis hung** (SIGSTOP for 10 s, ``serving_faults.measure_redis_hang``): ``redis_hang_p50_ms``,
     ``redis_hang_p99_ms``, ``redis_hang_non_2xx`` (failing open: 0), ``redis_hang_recovery_s`` (SIGCONT
     to features served again; target ≤ 1 s);
   * **Redis killed** (SIGKILL; the demo restarts its embedded server on the same port within 5 s, and
     it comes back empty): ``redis_restart_recovery_s`` from the kill to a known customer's features
     served again, rebuilt by ``online_store_heal_sensor`` without a person (target ≤ 120 s); meanwhile
     answers are degraded, never errors (``redis_restart_non_2xx``);
   * **PostgreSQL down for 60 s** at 200 requests/s (``prediction_log.postgres_outage``; the demo's
     supervision is paused meanwhile, or it would restart the server at once):
     ``postgres_outage_predictions_lost`` (target 0);
   * **Ctrl-C of this live demo**: ``demo_stop_leftover_processes_live``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import ROOT, TRANSACTION, drive, score_body
from _machine import json_line, load_average
from demo_lifecycle import STOP_LIMIT_S, started_by
from prediction_log import postgres_outage
from rtml.config import ServicesSettings, Settings, StackSettings
from rtml.stack import postgres
from rtml.stack.local import LocalStack
from rtml.stack.processes import free_port, pid_alive
from rtml.stack.state import StackState
from serving_faults import _get_json, _known_pair, measure_redis_hang

RTML = str(Path(sys.executable).with_name("rtml"))
RATE = 100.0


def wait_until(what: str, condition: Callable[[], bool], timeout: float, poll: float = 0.2) -> float:
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(poll)
    return time.monotonic() - began


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def lifecycle() -> dict[str, Any]:
    """``demo_lifecycle.py`` in a process of its own (it runs its own demo); its JSON line."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "demo_lifecycle.py")], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"demo_lifecycle.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def redis_restart(scorer: str, body: bytes, stack: LocalStack, timeout: float = 300.0) -> dict[str, Any]:
    """SIGKILL the embedded Valkey under load; seconds until it answers again (the demo restarts it) and
    until the scorer serves the known customer's features again (the heal sensor's full push)."""
    valkey = StackState.load(stack.state_file).redis
    assert valkey is not None, "the demo runs no embedded Redis"
    load: dict[str, Any] = {}
    stop = threading.Event()

    def background() -> None:  # 100 requests/s in slices until the store is back
        results = []
        while not stop.is_set():
            results.append(drive(scorer, RATE, 5, body=body))
        load["non_2xx"] = sum(r.errors for r in results)
        load["requests"] = sum(r.sent for r in results)

    def served() -> bool:
        status, answer = _get_json(f"{scorer}/score", body)
        return status == 200 and not answer["degraded"] and not answer["features_missing"]

    driver = threading.Thread(target=background)
    driver.start()
    try:
        time.sleep(2)
        killed = time.monotonic()
        psutil.Process(valkey.pid).kill()
        revived = wait_until("Redis restarted by the demo", lambda: _up(stack), 60)
        wait_until("the scorer answers degraded", lambda: not served(), 30, poll=0.05)
        recovered = wait_until("features served again", served, timeout, poll=0.5)
        total = time.monotonic() - killed
    finally:
        stop.set()
        driver.join()
    return {
        "redis_restart_revived_s": round(revived, 1),
        "redis_restart_recovery_s": round(total, 1),
        "redis_restart_after_revival_s": round(recovered, 1),
        "redis_restart_requests": load.get("requests"),
        "redis_restart_non_2xx": load.get("non_2xx"),
    }


def _up(stack: LocalStack) -> bool:
    return next(c for c in stack.status() if c.name == "redis").answers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo-days", type=int, default=2, help="days of history the live demo loads")
    ap.add_argument("--outage-seconds", type=float, default=60)
    ap.add_argument("--skip-lifecycle", action="store_true", help="only the live demo's faults")
    ap.add_argument("--keep-data", action="store_true")
    args = ap.parse_args()

    load_start = load_average()
    figures: dict[str, Any] = {"benchmark": "faults"}
    if not args.skip_lifecycle:
        print("demo lifecycle (its own demo) ...", file=sys.stderr)
        figures |= lifecycle()
        print(json.dumps(figures), file=sys.stderr)

    data_dir = Path(tempfile.mkdtemp(prefix="rtml-faults-"))
    ports = {name: free_port() for name in ("DAGSTER", "DOCS", "SERVING", "MLFLOW")}
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RTML_", "DAGSTER_"))}
    env |= {f"RTML_{name}_PORT": str(port) for name, port in ports.items()}
    env |= {"RTML_DATA_DIR": str(data_dir), "RTML_DEMO_DAYS": str(args.demo_days)}
    env |= {"DBT_TARGET_PATH": str(data_dir / "dbt-target")}  # not the checkout's target/
    scorer = f"http://127.0.0.1:{ports['SERVING']}"
    home = str(data_dir / "dagster")  # the demo's DAGSTER_HOME: how its processes are recognised
    log = data_dir / "demo.out"
    print(f"live demo in {data_dir} (log {log}) ...", file=sys.stderr)
    began = time.monotonic()
    with log.open("wb") as out:
        demo = subprocess.Popen([RTML, "demo"], env=env, cwd=data_dir, stdout=out, stderr=subprocess.STDOUT)
    seen: dict[int, psutil.Process] = {}
    stack = LocalStack(
        Settings(
            services=ServicesSettings(data_dir=data_dir), stack=StackSettings(mlflow_port=ports["MLFLOW"])
        )
    )
    try:
        wait_until("the live demo's scoring API", lambda: answers(f"{scorer}/readyz"), 1800, poll=2)
        # the UIs answer while the window loads; the daemon (the heal sensor measured below) starts after
        wait_until("the demo window loaded", lambda: "demo window loaded" in log.read_text(), 600, poll=2)
        wait_until("the Dagster UI", lambda: answers(f"http://127.0.0.1:{ports['DAGSTER']}/server_info"), 300)
        figures["live_demo_provision_s"] = round(time.monotonic() - began)
        started_by(demo, home, seen)
        database_url = stack.info().database_url
        customer, merchant = _known_pair(database_url)
        body = score_body({**TRANSACTION, "customer_id": customer, "merchant_id": merchant})
        drive(scorer, RATE, 5, body=body)  # warm-up

        print("Redis hung for 10 s ...", file=sys.stderr)
        valkey = StackState.load(stack.state_file).redis
        assert valkey is not None
        figures |= measure_redis_hang(scorer, valkey.pid, body, rate=RATE, hang_seconds=10)

        print("Redis killed ...", file=sys.stderr)
        figures |= redis_restart(scorer, body, stack)

        print(f"PostgreSQL down for {args.outage_seconds:.0f} s ...", file=sys.stderr)
        pgdata = stack.pgdata

        def stop_postgres() -> None:
            os.kill(demo.pid, signal.SIGSTOP)  # the demo's supervision would restart it at once
            server = StackState.load(stack.state_file).postgres
            postgres.stop_embedded(pgdata, server.pid if server else None)

        def start_postgres() -> None:
            stack.up()
            os.kill(demo.pid, signal.SIGCONT)

        outage = postgres_outage(
            scorer,
            database_url,
            stop_postgres,
            start_postgres,
            outage_seconds=args.outage_seconds,
            transaction={"customer_id": customer, "merchant_id": merchant},
        )
        figures |= {
            "postgres_outage_seconds": outage["outage_seconds"],
            "postgres_outage_scored": outage["scored"],
            "postgres_outage_non_2xx": outage["non_2xx"],
            "postgres_outage_predictions_lost": outage["lost"],
            "postgres_outage_spilled": outage["spilled_during_outage"],
            "postgres_outage_drain_s": outage["drain_seconds"],
            "postgres_outage_p99_ms": outage["latency"]["outage"]["p99_ms"],
        }

        print("Ctrl-C of the live demo ...", file=sys.stderr)
        started_by(demo, home, seen)
        demo.send_signal(signal.SIGINT)
        stopping = time.monotonic()
        while started_by(demo, home, seen) and time.monotonic() - stopping < STOP_LIMIT_S:
            time.sleep(0.1)
        figures["demo_stop_leftover_processes_live"] = started_by(demo, home, seen)
        figures["demo_stop_live_s"] = round(time.monotonic() - stopping, 1)
    finally:
        if demo.poll() is None:  # stopped early: let the demo stop what it started, as on Ctrl-C
            os.kill(demo.pid, signal.SIGCONT)
            started_by(demo, home, seen)
            demo.send_signal(signal.SIGINT)
            try:
                demo.wait(60)
            except subprocess.TimeoutExpired:
                demo.kill()
        for process in seen.values():
            if pid_alive(process.pid):
                process.kill()
        stack.down()
        if not args.keep_data:
            shutil.rmtree(data_dir, ignore_errors=True)
    print(json_line(figures, load_start))


if __name__ == "__main__":
    main()

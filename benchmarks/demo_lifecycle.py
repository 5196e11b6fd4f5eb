"""The demo's processes and runs under kills and Ctrl-C (issue #14), measured on a real `rtml demo`.

In a temporary data directory: `rtml up` (embedded servers; they belong to `rtml up`, not to the demo,
and are not counted), then `rtml demo --no-load`; two runs of ``ingestion_job`` (three and twelve
simulated days) are launched through the UI's GraphQL API and the daemon. Once both are in their step:

* ``killed_run_marked_failed_s``: the first run's code server and worker are SIGKILLed together (a crash
  of the code server, the OOM killer); seconds until the run is marked failed (the daemon's run
  monitoring, every ``RTML_RUN_MONITORING_INTERVAL_S``, 30 s by default).
* ``demo_stop_leftover_processes``: SIGINT to `rtml demo` (a terminal's Ctrl-C) with the second run in
  flight; processes the demo started still alive 15 s later (target 0), counted over every descendant
  seen and every process whose environment names the demo's DAGSTER_HOME. Also ``demo_stop_s`` (until
  the last one ended) and ``demo_stop_run_status`` (the in-flight run's status afterwards: CANCELED).

Ends with one JSON line; `rtml down` at the end.

    .venv/bin/python benchmarks/demo_lifecycle.py [--keep-data]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import dagster as dg
import psutil
from dagster_graphql import DagsterGraphQLClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "platform"))
sys.path.insert(0, str(ROOT))  # tests/demo_processes.py
from tests import demo_processes  # noqa: E402

from _machine import json_line, load_average  # noqa: E402
from rtml.defs.automation.runs import CodeServer, worker_pid  # noqa: E402
from rtml.defs.automation.tags import range_tags  # noqa: E402
from rtml.stack.processes import free_port  # noqa: E402

RTML = str(Path(sys.executable).with_name("rtml"))
STOP_LIMIT_S = 15.0
DAYS = {  # the in-flight run is long: still in its step after the killed run's measurement
    "killed": ("2026-11-02-00:00", "2026-11-04-23:00"),
    "in_flight": ("2026-11-05-00:00", "2026-11-16-23:00"),
}


def wait_for(what: str, condition: Callable[[], bool], timeout: float) -> float:
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.2)
    return time.monotonic() - began


def started_by(demo: subprocess.Popen[bytes], dagster_home: str, seen: dict[int, psutil.Process]) -> int:
    """How many processes the demo started are alive, itself included (``tests/demo_processes.py``)."""
    return int(demo.poll() is None) + len(demo_processes.started_by(demo, dagster_home, seen))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep-data", action="store_true", help="keep the temporary data directory")
    args = ap.parse_args()
    load_start = load_average()
    data_dir = Path(tempfile.mkdtemp(prefix="rtml-bench-demo-"))
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("RTML_DATABASE_URL", "RTML_REDIS_URL", "RTML_MLFLOW_TRACKING_URI")
    }
    env |= {
        "RTML_DATA_DIR": str(data_dir),
        "RTML_MLFLOW_PORT": str(free_port()),
        "RTML_DAGSTER_PORT": str(free_port()),
        "RTML_DOCS_PORT": str(free_port()),
        "RTML_SERVING_PORT": str(free_port()),
        "RTML_SIM_TRANSACTIONS_PER_DAY": "300000",  # a step busy for a while
    }
    dagster_home = str(data_dir / "dagster")  # the demo gives its Dagster processes DAGSTER_HOME
    subprocess.run([RTML, "up"], env=env, check=True, capture_output=True)
    output = data_dir / "demo.out"
    with output.open("wb") as out:
        demo = subprocess.Popen([RTML, "demo", "--no-load"], env=env, stdout=out, stderr=subprocess.STDOUT)
    seen: dict[int, psutil.Process] = {}
    try:
        wait_for("the demo's UIs", lambda: "Dagster UI" in output.read_text(), 600)
        client = DagsterGraphQLClient("127.0.0.1", port_number=int(env["RTML_DAGSTER_PORT"]))
        runs = {
            name: client.submit_job_execution("ingestion_job", tags=range_tags(*days))
            for name, days in DAYS.items()
        }
        with dg.DagsterInstance.from_config(dagster_home) as instance:

            def in_step(run_id: str) -> bool:
                started = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)
                return bool(started) and worker_pid(instance, run_id) is not None

            for run_id in runs.values():
                wait_for("a run in its step", lambda run_id=run_id: in_step(run_id), 600)
            started_by(demo, dagster_home, seen)

            def status(run_id: str) -> dg.DagsterRunStatus:
                run = instance.get_run_by_id(run_id)
                assert run is not None
                return run.status

            killed = runs["killed"]
            server = CodeServer.of(instance.get_run_by_id(killed))  # type: ignore[arg-type]
            assert server is not None and server.socket
            worker = worker_pid(instance, killed)
            for process in seen.values():
                with suppress(psutil.Error):
                    if process.pid == worker or server.socket in " ".join(process.cmdline()):
                        process.kill()
            marked_failed_s = wait_for(
                "marked failed", lambda: status(killed) == dg.DagsterRunStatus.FAILURE, 300
            )

            demo.send_signal(signal.SIGINT)
            began = time.monotonic()
            while started_by(demo, dagster_home, seen) and time.monotonic() - began < STOP_LIMIT_S:
                time.sleep(0.1)
            stop_s = time.monotonic() - began
            leftover = started_by(demo, dagster_home, seen)
            demo.wait(60)
            figures = {
                "killed_run_marked_failed_s": round(marked_failed_s, 1),
                "demo_stop_leftover_processes": leftover,
                "demo_stop_s": round(stop_s, 1),
                "demo_stop_processes": len(seen),
                "demo_stop_run_status": status(runs["in_flight"]).value,
            }
    finally:
        for process in seen.values():
            with suppress(psutil.Error):
                process.kill()
        if demo.poll() is None:
            demo.kill()
        subprocess.run([RTML, "down"], env=env, capture_output=True)
        if not args.keep_data:
            shutil.rmtree(data_dir, ignore_errors=True)
    print(json_line(figures, load_start))


if __name__ == "__main__":
    main()

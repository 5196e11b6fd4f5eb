"""Benchmark of a run's start through a code server, as the daemon and the UI launch runs: from the run's
first event (the launcher's) to its first step's start, for ``hourly_drift_job`` launched through two real
code servers (``dagster api grpc -m rtml.definitions``, as the webserver and the daemon start them), one
forking its run workers from a forkserver that imported the code location and Evidently once
(``RTML_FORK_RUN_WORKERS``, the default: ``rtml.defs.executor``), one with Dagster's own ``spawn`` (a new
Python per run that imports the code location again), alternating run by run.

Only the start is timed: the benchmark provisions no world, so the drift step then fails at once ("no
PostgreSQL") without reaching Evidently. What a spawned worker would still pay there, Evidently's import
over the code location's, is timed in a fresh process of its own (``evidently_import_seconds``); a forked
worker has it imported already.

Usage: ``.venv/bin/python benchmarks/run_start.py [--runs 5]``. Everything lives in a temporary directory
(Dagster's storage in SQLite, the code servers' sockets, ``RTML_DATA_DIR``) that is removed at the end.
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg

sys.path.insert(0, str(Path(__file__).parent))

from _machine import json_line, load_average
from rtml.stack.dagster_processes import CODE_LOCATION

DAGSTER = str(Path(sys.executable).with_name("dagster"))
JOB = "hourly_drift_job"
MODES = {"forked": "true", "spawned": "false"}  # location name → RTML_FORK_RUN_WORKERS


def start_code_server(home: Path, mode: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    socket = home / f"{mode}.sock"
    command = [DAGSTER, "api", "grpc", "--socket", str(socket), "-m", CODE_LOCATION, "--location-name", mode]
    server_env = {**env, "RTML_FORK_RUN_WORKERS": MODES[mode]}
    log = (home / f"{mode}.log").open("wb")
    return subprocess.Popen(
        command, env=server_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def launch(workspace: Path, location: str, env: dict[str, str]) -> None:
    command = [DAGSTER, "job", "launch", "-w", str(workspace), "-l", location, "-j", JOB]
    deadline = time.monotonic() + 120
    while (proc := subprocess.run(command, env=env, capture_output=True, text=True)).returncode != 0:
        if time.monotonic() > deadline:  # the code server never answered
            raise RuntimeError(proc.stderr[-3000:])
        time.sleep(0.5)


def seconds_to_first_step(instance: dg.DagsterInstance) -> float:
    """Waits for the newest run to finish; its first event to its first step's start."""
    run = instance.get_runs(limit=1)[0]
    deadline = time.monotonic() + 300
    while not (current := instance.get_run_by_id(run.run_id)) or not current.is_finished:
        if time.monotonic() > deadline:
            raise RuntimeError(f"run {run.run_id} did not finish")
        time.sleep(0.2)
    logs = instance.all_logs(run.run_id)
    steps = [entry.timestamp for entry in logs if entry.dagster_event_type == dg.DagsterEventType.STEP_START]
    if not steps:
        raise RuntimeError(f"run {run.run_id} started no step: {[entry.user_message for entry in logs]}")
    return steps[0] - min(entry.timestamp for entry in logs)


def evidently_import_seconds() -> float:
    script = (
        "import time, rtml.definitions; began = time.perf_counter(); "
        "from evidently import Report; from evidently.metrics import ValueDrift; "
        "print(time.perf_counter() - began)"
    )
    return float(
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per code server")
    args = parser.parse_args()
    load_start = load_average()

    with tempfile.TemporaryDirectory(prefix="rtml-run-start-") as directory:
        home = Path(directory)
        (home / "dagster.yaml").write_text(
            "run_coordinator:\n  module: dagster._core.run_coordinator\n  class: DefaultRunCoordinator\n"
            "telemetry:\n  enabled: false\n"
        )
        workspace = home / "workspace.yaml"
        workspace.write_text(
            "load_from:\n"
            + "".join(
                f"  - grpc_server:\n      socket: {home / mode}.sock\n      host: localhost\n"
                f"      location_name: {mode}\n"
                for mode in MODES
            )
        )
        env = {**os.environ, "DAGSTER_HOME": str(home), "RTML_DATA_DIR": str(home / "data")}
        env.pop("RTML_DATABASE_URL", None)
        servers = [start_code_server(home, mode, env) for mode in MODES]
        seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
        try:
            with dg.DagsterInstance.from_config(str(home)) as instance:
                for i in range(args.runs + 1):  # the first forked run also starts the forkserver
                    for mode in MODES:
                        launch(workspace, mode, env)
                        seconds[mode].append(seconds_to_first_step(instance))
                        print(
                            f"run {i + 1}, {mode}: first step {seconds[mode][-1]:.2f} s after launch",
                            flush=True,
                        )
        finally:
            for server in servers:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()

    forked, spawned = seconds["forked"][1:], seconds["spawned"][1:]
    figures = {
        "benchmark": "run_start",
        "job": JOB,
        "runs_per_code_server": args.runs,
        "forked_start_seconds": round(statistics.median(forked), 2),
        "spawned_start_seconds": round(statistics.median(spawned), 2),
        "first_forked_start_seconds": round(seconds["forked"][0], 2),
        "first_spawned_start_seconds": round(seconds["spawned"][0], 2),
        "evidently_import_seconds": round(evidently_import_seconds(), 2),
    }
    print(
        f"median start: forked {figures['forked_start_seconds']} s, "
        f"spawned {figures['spawned_start_seconds']} s; the first forked run (the forkserver's own start) "
        f"{figures['first_forked_start_seconds']} s; Evidently's import, which a spawned drift run pays "
        f"too: {figures['evidently_import_seconds']} s"
    )
    print(json_line(figures, load_start))


if __name__ == "__main__":
    main()

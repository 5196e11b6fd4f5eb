"""Benchmark of a run's start through a code server, as the daemon and the UI launch runs: from the run's
first event (the launcher's) to its first step's start, for ``hourly_drift_job`` launched through two real
code servers (``dagster api grpc -m rtml.definitions``, as the webserver and the daemon start them), one
forking its run workers from a forkserver that imported the code location and the drift check's
libraries once (``RTML_FORK_RUN_WORKERS``, the default: ``rtml.defs.executor``), one with Dagster's own
``spawn`` (a new Python per run that imports the code location again), alternating run by run.

Only the start is timed: the benchmark provisions no world, so the drift step then fails at once ("no
PostgreSQL") without reaching Evidently. What a spawned worker would still pay there, the drift check's
imports over the code location's (Evidently, MLflow's model loading, skops), is timed in a fresh process
of its own (``drift_imports_seconds``); a forked worker has them imported already.

Usage: ``.venv/bin/python benchmarks/run_start.py [--runs 5]``. Dagster's storage is the stack's (a
PostgreSQL database of its own on the machine's server when it answers, else an embedded one), with runs
launched at once (Dagster's ``DefaultRunCoordinator``: no daemon); the code servers' sockets and
``RTML_DATA_DIR`` are in a temporary directory. All removed at the end. Ends with one JSON line.
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
import psutil

sys.path.insert(0, str(Path(__file__).parent))

from _machine import json_line, load_average
from _servers import servers
from _world import drop_database
from rtml.config import database_url_for
from rtml.defs.executor import RUN_WORKER_PRELOAD
from rtml.features.sample_data import create_database
from rtml.stack.dagster_home import write_dagster_yaml
from rtml.stack.dagster_processes import CODE_LOCATION

DAGSTER = str(Path(sys.executable).with_name("dagster"))
JOB = "hourly_drift_job"
DAGSTER_DATABASE = "rtml_bench_run_start_dagster"
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


def forkserver_rss_mib(server: subprocess.Popen[bytes]) -> float:
    """The resident memory of the forking code server's forkserver (its child running
    ``multiprocessing.forkserver``), with everything preloaded."""
    [forkserver] = [
        child
        for child in psutil.Process(server.pid).children(recursive=True)
        if "multiprocessing.forkserver" in " ".join(child.cmdline())
    ]
    return round(forkserver.memory_info().rss / 2**20, 1)


def drift_imports_seconds() -> float:
    preloaded = ", ".join(RUN_WORKER_PRELOAD[2:])  # past the entry point and the code location
    script = (
        "import time, rtml.definitions; began = time.perf_counter(); "
        f"import {preloaded}; print(time.perf_counter() - began)"
    )
    return float(
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per code server")
    args = parser.parse_args()
    load_start = load_average()

    seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
    with servers() as (server_url, _), tempfile.TemporaryDirectory(prefix="rtml-run-start-") as directory:
        home = Path(directory)
        # the stack's storage, with runs launched at once (no daemon to dequeue them)
        yaml = write_dagster_yaml(home, create_database(server_url, DAGSTER_DATABASE))
        with yaml.open("a") as dagster_yaml:
            dagster_yaml.write(
                "run_coordinator:\n  module: dagster._core.run_coordinator\n  class: DefaultRunCoordinator\n"
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
        code_servers = [start_code_server(home, mode, env) for mode in MODES]
        try:
            with dg.DagsterInstance.from_config(str(home)) as instance:
                for i in range(args.runs + 1):  # the first forked run also starts the forkserver
                    for mode in MODES:
                        launch(workspace, mode, env)
                        seconds[mode].append(seconds_to_first_step(instance))
                        print(f"run {i + 1}, {mode}: first step {seconds[mode][-1]:.2f} s", flush=True)
                forkserver_mib = forkserver_rss_mib(code_servers[list(MODES).index("forked")])
        finally:
            for server in code_servers:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
            drop_database(database_url_for(server_url, "postgres"), DAGSTER_DATABASE)

    forked, spawned = seconds["forked"][1:], seconds["spawned"][1:]
    figures = {
        "benchmark": "run_start",
        "job": JOB,
        "runs_per_code_server": args.runs,
        "forked_start_seconds": round(statistics.median(forked), 2),
        "spawned_start_seconds": round(statistics.median(spawned), 2),
        "first_forked_start_seconds": round(seconds["forked"][0], 2),
        "first_spawned_start_seconds": round(seconds["spawned"][0], 2),
        "drift_imports_seconds": round(drift_imports_seconds(), 2),
        "forkserver_rss_mib": forkserver_mib,
    }
    print(
        f"median start: forked {figures['forked_start_seconds']} s, "
        f"spawned {figures['spawned_start_seconds']} s; the first forked run (the forkserver's own start) "
        f"{figures['first_forked_start_seconds']} s; the drift check's imports, which a spawned drift run "
        f"pays too: {figures['drift_imports_seconds']} s; the forkserver's RSS {forkserver_mib} MiB"
    )
    print(json_line(figures, load_start))


if __name__ == "__main__":
    main()

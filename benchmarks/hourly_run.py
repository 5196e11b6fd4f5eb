"""Benchmark of the hourly refresh as the daemon runs it: one ``hourly_refresh_job`` run (an hour of
transactions → its incremental features → the latest-feature tables and the speed layer's snapshot → the
online store, with the run's eight asset checks and freshness checks) in a fresh process, the way a code
server's run worker executes it: load the code location, then execute the steps with the job's executor.

Two executors, alternating hour by hour over the same world: the code location's own
(``rtml.defs.executor``: the steps in the run's process) and Dagster's multiprocess executor (a process per
step, each loading the code location again: the default before). Per run: wall seconds and the CPU
seconds of the run and every process it started.

With ``--backfill-hours N`` it then times runs over N new hours each (one ``hourly_refresh_job`` run over
a range of partitions, as ``rtml backfill`` and the demo's catch-up make), alternating Dagster's default
(``DAGSTER_EVENT_BATCH_SIZE=0``: each materialization written to the event log on a connection of its
own) with the batched writes the code location sets (``rtml.defs.executor``: a step's materializations in
one insert).

Usage: ``.venv/bin/python benchmarks/hourly_run.py [--runs 3] [--backfill-hours 24 [--backfills 2]]``.
Provisions its own world (a database of its own on the machine's PostgreSQL and Redis when they answer,
else embedded ones; three simulated days, loaded and built with dbt; untimed; Dagster's storage in
PostgreSQL, as the stack's) and removes it. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _machine import json_line, load_average
from _servers import servers
from _world import drop_database
from rtml.config import OnlineSettings, Settings, SimulatorSettings, database_url_for
from rtml.defs.automation.tags import PARTITION_TAG, range_tags
from rtml.defs.executor import EVENT_BATCH_SIZE
from rtml.features.dbt import run_dbt
from rtml.features.online import OnlineStore
from rtml.features.sample_data import create_database, load_simulated
from rtml.stack.dagster_home import write_dagster_yaml
from rtml.stack.dagster_processes import CODE_LOCATION, dagster_env

BENCHMARKS = Path(__file__).resolve().parent
DATABASE = "rtml_bench_hourly"
DAGSTER_DATABASE = "rtml_bench_hourly_dagster"
KEY_PREFIX = f"rtml-bench-hourly-{os.getpid()}"
START = datetime(2026, 9, 1, tzinfo=UTC)
DAYS = 3
WORLD = {"RTML_SIM_CUSTOMERS": "2000", "RTML_SIM_MERCHANTS": "200", "RTML_SIM_TRANSACTIONS_PER_DAY": "8000"}
MULTIPROCESS_LOCATION = "_multiprocess_location"  # benchmarks/_multiprocess_location.py
DAGSTER = str(Path(sys.executable).with_name("dagster"))


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def partition_key(hour: datetime) -> str:
    return f"{hour:%Y-%m-%d-%H:%M}"


def timed_run(location: str, tags: dict[str, str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the run's processes) of one ``dagster job execute``."""
    command = [DAGSTER, "job", "execute", "-m", location, "-j", "hourly_refresh_job"]
    command += ["--tags", json.dumps(tags)]
    cpu, began = children_cpu(), time.perf_counter()
    with log.open("ab") as out:
        code = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    wall = time.perf_counter() - began
    if code != 0:
        raise SystemExit(f"the run of {tags} ({location}) failed: see {log}")
    return wall, children_cpu() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per executor (one new hour each)")
    parser.add_argument("--backfill-hours", type=int, default=0, help="then runs over this many new hours")
    parser.add_argument("--backfills", type=int, default=2, help="ranged runs per way of writing events")
    args = parser.parse_args()
    load_start = load_average()
    os.environ.update(WORLD)

    with servers() as (server_url, redis_url), tempfile.TemporaryDirectory(prefix="rtml-hourly-") as tmp:
        url = create_database(server_url, DATABASE)
        try:
            began = time.perf_counter()
            settings = Settings(simulator=SimulatorSettings(start=START))
            end = START + timedelta(days=DAYS)
            load_simulated(url, settings, START, end, labels_until=end)
            proc = run_dbt(["run", "--full-refresh"], url)
            if proc.returncode != 0:
                raise SystemExit(proc.stdout[-5000:])
            print(f"world: {DAYS} days loaded and built in {time.perf_counter() - began:.0f} s (untimed)")

            home = Path(tmp) / "dagster_home"
            write_dagster_yaml(home, create_database(server_url, DAGSTER_DATABASE))  # the stack's storage
            env = {
                **dagster_env(home, url, redis_url, START),
                "RTML_ENVIRONMENT": "servers",  # the URLs above, nothing looked up in a local stack
                "RTML_MLFLOW_TRACKING_URI": "http://127.0.0.1:1",  # not used by this job
                "RTML_ONLINE_KEY_PREFIX": KEY_PREFIX,
                "RTML_DATA_DIR": str(Path(tmp) / "data"),
                # the comparison's location (benchmarks/) and the tests' code_location it builds on
                "PYTHONPATH": os.pathsep.join(
                    [str(BENCHMARKS), str(BENCHMARKS.parent), os.environ.get("PYTHONPATH", "")]
                ),
            }
            figures: dict[str, list[tuple[float, float]]] = {"location": [], "multiprocess": []}
            hour = end
            for _ in range(args.runs):
                for name, location in (("location", CODE_LOCATION), ("multiprocess", MULTIPROCESS_LOCATION)):
                    partition = partition_key(hour)
                    wall, cpu = timed_run(location, {PARTITION_TAG: partition}, env, Path(tmp) / "runs.log")
                    print(f"{name:<13} {partition}: {wall:6.1f} s, CPU {cpu:6.1f} s")
                    figures[name].append((wall, cpu))
                    hour += timedelta(hours=1)
            for _ in range(args.backfills if args.backfill_hours else 0):
                for name, batch in (("one_by_one", "0"), ("batched", str(EVENT_BATCH_SIZE))):
                    last = hour + timedelta(hours=args.backfill_hours - 1)
                    tags = range_tags(partition_key(hour), partition_key(last))
                    run_env = {**env, "DAGSTER_EVENT_BATCH_SIZE": batch}
                    wall, cpu = timed_run(CODE_LOCATION, tags, run_env, Path(tmp) / "runs.log")
                    print(f"{name:<13} {' to '.join(tags.values())}: {wall:6.1f} s, CPU {cpu:6.1f} s")
                    figures.setdefault(name, []).append((wall, cpu))
                    hour = last + timedelta(hours=1)
        finally:
            for name in (DATABASE, DAGSTER_DATABASE):
                drop_database(database_url_for(server_url, "postgres"), name)
            store = OnlineStore(redis_url, online=OnlineSettings(key_prefix=KEY_PREFIX))
            store.purge()  # the runs' pushes and the speed layer's snapshot
            store.close()

    def median(name: str, index: int) -> float:
        return round(statistics.median(run[index] for run in figures[name]), 2)

    results = {
        "benchmark": "hourly_run",
        "runs_per_executor": args.runs,
        "seconds": median("location", 0),
        "cpu_seconds": median("location", 1),
        "multiprocess_seconds": median("multiprocess", 0),
        "multiprocess_cpu_seconds": median("multiprocess", 1),
    }
    if "batched" in figures:
        results |= {
            "backfill_hours": args.backfill_hours,
            "backfill_seconds": median("batched", 0),
            "backfill_cpu_seconds": median("batched", 1),
            "backfill_one_by_one_seconds": median("one_by_one", 0),
            "backfill_one_by_one_cpu_seconds": median("one_by_one", 1),
        }
    print(json_line(results, load_start))


if __name__ == "__main__":
    main()

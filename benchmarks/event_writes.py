"""Benchmark of a ranged run's planning on a Dagster instance in PostgreSQL, as the demo's bootstrap
executes its runs: before a run over many hourly partitions starts, Dagster writes one planned event per
partition per asset and check, each by itself. Alternating, run by run: dagster-postgres's default engine
(a new connection per write) and the pooled one the bootstrap sets up
(``rtml.defs.dagster_internals.pool_storage_connections``).

The job stands in for the bootstrap's window run: ``--assets`` hourly-partitioned assets with one check
each, materialized over ``--hours`` partitions in one run (no work in the steps). Timed: from the run's
first event to ``RUN_START`` (the planning), read from the event log, and the run's wall time.

Usage: ``.venv/bin/python benchmarks/event_writes.py [--hours 72] [--assets 10] [--runs 3]``. Uses the
machine's PostgreSQL when it answers, else an embedded one; creates its database and drops it. Ends with
one JSON line.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import dagster as dg

from _machine import json_line, load_average
from _servers import servers
from _world import drop_database
from rtml.config import database_url_for
from rtml.defs.automation.tags import range_tags
from rtml.defs.dagster_internals import pool_storage_connections
from rtml.features.sample_data import create_database
from rtml.stack.dagster_home import write_dagster_yaml

DATABASE = "rtml_bench_event_writes"
START = datetime(2026, 9, 1, tzinfo=UTC)


def job_of(assets: int) -> dg.JobDefinition:
    partitions = dg.HourlyPartitionsDefinition(start_date=f"{START:%Y-%m-%d-%H:%M}")

    def make(n: int) -> tuple[dg.AssetsDefinition, dg.AssetChecksDefinition]:
        @dg.asset(
            name=f"asset_{n}", partitions_def=partitions, backfill_policy=dg.BackfillPolicy.single_run()
        )
        def asset() -> None:
            return None

        @dg.asset_check(asset=asset, name="check")
        def check() -> dg.AssetCheckResult:
            return dg.AssetCheckResult(passed=True)

        return asset, check

    made = [make(n) for n in range(assets)]
    defs = dg.Definitions(
        assets=[a for a, _ in made],
        asset_checks=[c for _, c in made],
        jobs=[dg.define_asset_job("window", selection=dg.AssetSelection.all())],
    )
    return defs.resolve_job_def("window")


def timed(
    instance: dg.DagsterInstance, job: dg.JobDefinition, hours: int, offset: int
) -> tuple[float, float, int]:
    """(planning seconds, run seconds, events) of one run over ``hours`` partitions."""
    first = START + timedelta(hours=offset)
    tags = range_tags(f"{first:%Y-%m-%d-%H:%M}", f"{first + timedelta(hours=hours - 1):%Y-%m-%d-%H:%M}")
    began = time.perf_counter()
    result = job.execute_in_process(instance=instance, tags=tags)
    wall = time.perf_counter() - began
    assert result.success
    events = instance.all_logs(result.run_id)
    started = next(
        e for e in events if e.dagster_event and e.dagster_event.event_type_value == "PIPELINE_START"
    )
    return started.timestamp - events[0].timestamp, wall, len(events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=int, default=72, help="partitions of each run")
    parser.add_argument("--assets", type=int, default=10, help="partitioned assets, one check each")
    parser.add_argument("--runs", type=int, default=3, help="runs per engine, alternating")
    args = parser.parse_args()
    load_start = load_average()
    job = job_of(args.assets)
    figures: dict[str, list[tuple[float, float, int]]] = {"default": [], "pooled": []}
    with servers() as (server_url, _), tempfile.TemporaryDirectory(prefix="rtml-bench-events-") as home:
        create_database(server_url, DATABASE)
        try:
            write_dagster_yaml(Path(home), database_url_for(server_url, DATABASE))
            with (
                dg.DagsterInstance.from_config(home) as default,
                dg.DagsterInstance.from_config(home) as pooled,
            ):
                pool_storage_connections(pooled)
                offset = 0
                for _ in range(args.runs):
                    for name, instance in (("default", default), ("pooled", pooled)):
                        figures[name].append(timed(instance, job, args.hours, offset))
                        offset += args.hours  # new partitions each run
                        planning, wall, events = figures[name][-1]
                        print(
                            f"{name:8} planning {planning:6.2f} s  run {wall:6.2f} s  {events} events",
                            flush=True,
                        )
        finally:
            drop_database(server_url, DATABASE)

    def median(name: str, index: int) -> float:
        return round(statistics.median(run[index] for run in figures[name]), 2)

    print(
        json_line(
            {
                "benchmark": "event_writes",
                "hours": args.hours,
                "assets": args.assets,
                "events": figures["pooled"][0][2],
                "planning_default_seconds": median("default", 0),
                "planning_pooled_seconds": median("pooled", 0),
                "run_default_seconds": median("default", 1),
                "run_pooled_seconds": median("pooled", 1),
            },
            load_start,
        )
    )


if __name__ == "__main__":
    main()

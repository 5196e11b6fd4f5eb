"""How every run executes and records its steps.

Its steps run in its own process (``dg.in_process_executor``), one after the other. Dagster's default
executor starts a process per step, and each loads the code location again: about 8 s of CPU here (dbt,
MLflow, scikit-learn imported with it), paid eight times by every hourly refresh (eight steps with their
checks) on a 2-core machine where the steps themselves take seconds. The runs' steps form chains (ingest
→ dbt → latest tables → Redis; report → check), so a process per step bought no parallelism worth that; a
run is still a process of its own, apart from the code server and the daemon.
Figures: ``benchmarks/hourly_run.py`` (docs/benchmarks.md).

A run over a range of partitions (``rtml backfill``, the demo's bootstrap and catch-up) records one
materialization per partition of each asset. Dagster writes them one event at a time, each on a new
PostgreSQL connection (dagster-postgres holds none open in a run), unless ``DAGSTER_EVENT_BATCH_SIZE`` is
set: then a step's materializations go to the event log in one insert per batch (``store_event_batch``,
Dagster's own path). It is set here, where every process that runs our steps passes (run workers, the
bootstrap, ``dagster job execute``, the tests), unless the environment has its own value. A 72-hour
``hourly_refresh_job`` run: 51.4-54.0 s → 42.2-44.5 s (``benchmarks/hourly_run.py --backfill-hours 72``).

A run launched by the daemon or the UI is a process its code server starts. Dagster spawns a new Python
for it, which imports the code location again before the first step (about 3 s of a quiet machine's CPU,
more under load), and the drift check then imports Evidently, MLflow's model loading and skops (about 5 s
more), every hour. When the code location loads in a code server, it has that server fork its run
workers from a forkserver that imported all of them once (``fork_run_workers``; the setting
``RTML_FORK_RUN_WORKERS``): a run's first step starts about 1 s after its first event (4.4 s spawned),
with nothing left to import for the drift check (``benchmarks/run_start.py``). In other processes (the
daemon's and the UI's own, a CLI run, the tests) nothing changes: they start no run workers.
"""

import os

import dagster as dg

from rtml.config import get_settings
from rtml.defs.dagster_internals import fork_run_workers

EVENT_BATCH_SIZE = 100
"""Materializations per insert: a month's backfill of an hourly asset is eight inserts."""

os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", str(EVENT_BATCH_SIZE))

RUN_WORKER_PRELOAD = (
    "dagster._grpc.impl",  # the run's entry point
    "rtml.definitions",  # this code location
    "evidently",  # the hourly drift check's reports ...
    "rtml.training.loading",  # ... and the production model it scores the reference rows with
    "mlflow.models",
    "skops.io",
)
"""What a run worker has imported before it starts: what every run needs, and what the hourly drift check
imports (the code location defers MLflow and scikit-learn to the assets that use them, for the code
servers', sensors' and tests' sake)."""

if get_settings().stack.fork_run_workers:
    fork_run_workers(RUN_WORKER_PRELOAD)

defs = dg.Definitions(executor=dg.in_process_executor)

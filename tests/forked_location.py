"""A code location for tests/test_private_apis.py: its code server forks its run workers from a
forkserver that imported this module (``fork_run_workers``), so a run's op sees the module imported by
another process. Not collected (the file name does not start with ``test_``)."""

import os

import dagster as dg

from rtml.defs.dagster_internals import fork_run_workers

IMPORTED_BY = os.getpid()
"""The process that imported this module: the forkserver, for a forked run worker."""

fork_run_workers([__name__])


@dg.op
def where_am_i(context: dg.OpExecutionContext) -> None:
    context.log.info(f"run worker {os.getpid()}, child of {os.getppid()}, module imported by {IMPORTED_BY}")


@dg.job(executor_def=dg.in_process_executor)  # the op in the run worker itself, as rtml's runs
def where_am_i_job() -> None:
    where_am_i()


defs = dg.Definitions(jobs=[where_am_i_job])

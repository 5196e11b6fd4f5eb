"""``benchmarks/hourly_run.py``'s comparison: the code location (``rtml.definitions``) with Dagster's
multiprocess executor, a process per step (what every run used before ``rtml.defs.executor``)."""

import dagster as dg

import rtml.definitions


def with_multiprocess_executor(location: dg.Definitions) -> dg.Definitions:
    return dg.Definitions(
        assets=location.assets,
        asset_checks=location.asset_checks,
        jobs=location.jobs,
        resources=location.resources,
        executor=dg.multiprocess_executor,
    )


defs = with_multiprocess_executor(rtml.definitions.defs)  # the module's one Definitions object

"""``benchmarks/hourly_run.py``'s comparison: the code location with Dagster's multiprocess executor, a
process per step (what every run used before ``rtml.defs.executor``)."""

import dagster as dg
from tests.code_location import code_location

defs = code_location(executor=dg.multiprocess_executor)

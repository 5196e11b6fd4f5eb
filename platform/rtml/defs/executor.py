"""Every run executes its steps in its own process (``dg.in_process_executor``), one after the other.

Dagster's default executor starts a process per step, and each loads the code location again: about 8 s
of CPU here (dbt, MLflow, scikit-learn imported with it), paid eight times by every hourly refresh
(eight steps with their checks) on a 2-core machine where the steps themselves take seconds. The runs'
steps form chains (ingest → dbt → latest tables → Redis; report → check), so a process per step bought no
parallelism worth that; a run is still a process of its own, apart from the code server and the daemon.
Figures: ``benchmarks/hourly_run.py`` (docs/benchmarks.md).
"""

import dagster as dg

defs = dg.Definitions(executor=dg.in_process_executor)

"""A new file in the landing folder requests its own ingestion run."""

from __future__ import annotations

import dagster as dg

from rtml.config import get_settings
from rtml.defs.ingestion.partitions import landing_file_partitions
from rtml.sources.landing import list_landing_files

landing_job = dg.define_asset_job(
    "landing_ingestion_job", selection=["transactions_landing"], partitions_def=landing_file_partitions
)


@dg.sensor(job=landing_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def landing_files_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    files = list_landing_files(get_settings())
    known = set(context.instance.get_dynamic_partitions(landing_file_partitions.name or ""))
    new = [path.name for path in files if path.name not in known]
    return dg.SensorResult(
        # run_key: a file name is ingested once; a re-dropped file of the same name needs a new name.
        run_requests=[dg.RunRequest(run_key=name, partition_key=name) for name in new],
        dynamic_partitions_requests=[landing_file_partitions.build_add_request(new)] if new else [],
    )

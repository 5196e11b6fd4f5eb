"""Late rows reach the features: a landing file whose transactions lie in hours already built requests
one rebuild of those hours and of the later hours whose windows cover them (``rtml.features.late_rows``).

The hourly refresh only builds its own hour; without this, rows landed for an older hour would stay in
``raw.transactions`` and never reach ``stg_transactions``, the feature tables or the online store.
"""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg

from rtml.defs.automation.sensors import TRIGGER_TAG
from rtml.defs.features.assets import dbt_incremental_features
from rtml.defs.ingestion.assets import EVENT_TS_MAX, EVENT_TS_MIN
from rtml.defs.resources import PostgresResource
from rtml.features.late_rows import features_built_until, rebuild_window

LANDING = dg.AssetKey("transactions_landing")
RANGE_TAGS = ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")
LATE_ROWS_FILES_TAG = "rtml/late_rows_files"

# The hourly refresh without the simulator's raw hour: the incremental dbt models over the window (one
# single-run backfill: one dbt invocation), then the *_latest tables and the online store.
late_rows_job = dg.define_asset_job(
    "late_rows_job",
    selection=dg.AssetSelection.assets(dbt_incremental_features)
    | dg.AssetSelection.assets("customer_features_latest", "merchant_features_latest", "online_features"),
    description="Rebuild the features of the hours a landing file's late rows changed (their own hours "
    "and the 31 days after, up to the newest built hour), then the latest-feature tables and the "
    "online store. Launched by `late_rows_sensor`.",
)

# Runs that write the same feature tables: the rebuild waits for them (the sensor retries next tick).
_WRITERS = ("hourly_refresh_job", late_rows_job.name)
_ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def _event_range(record: dg.EventLogRecord) -> tuple[datetime, datetime] | None:
    materialization = record.asset_materialization
    metadata = materialization.metadata if materialization else {}
    lo, hi = metadata.get(EVENT_TS_MIN), metadata.get(EVENT_TS_MAX)
    if not isinstance(lo, dg.TimestampMetadataValue) or not isinstance(hi, dg.TimestampMetadataValue):
        return None  # a labels file, or a file that loaded no transaction
    return datetime.fromtimestamp(lo.value, UTC), datetime.fromtimestamp(hi.value, UTC)


@dg.sensor(job=late_rows_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def late_rows_sensor(
    context: dg.SensorEvaluationContext, postgres: PostgresResource
) -> dg.SensorResult | dg.SkipReason:
    """After landing files are loaded (materializations of ``transactions_landing`` since the cursor):
    if their transactions (metadata ``event_ts_min``/``event_ts_max``) lie in hours whose features are
    built, request ONE ``late_rows_job`` run over the hours from the earliest late row's hour to 31 days
    after the latest one (the 30-day windows that include them), capped at the newest built hour:
    later hours are built by the schedule, with the late rows. Bounded: one run per tick, however many
    files. Waits (cursor kept) while an hourly refresh or an earlier rebuild is queued or running."""
    after = int(context.cursor) if context.cursor else None
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=LANDING, after_storage_id=after), limit=1000, ascending=True
    ).records
    if not records:
        return dg.SkipReason("No landing file loaded since the last tick.")
    busy = [
        run.run_id
        for run in context.instance.get_runs(dg.RunsFilter(job_name=None, statuses=_ACTIVE))
        if run.job_name in _WRITERS
    ]
    if busy:
        return dg.SkipReason(f"Waiting for runs writing the feature tables: {', '.join(busy)}.")
    cursor = str(records[-1].storage_id)
    late = [(record.partition_key or "", span) for record in records if (span := _event_range(record))]
    window = (
        rebuild_window(
            min(span[0] for _, span in late),
            max(span[1] for _, span in late),
            features_built_until(postgres.database_url()),
        )
        if late
        else None
    )
    if window is None:
        return dg.SensorResult(
            skip_reason="The landed transactions lie in hours not built yet (the schedule builds them).",
            cursor=cursor,
        )
    first, last = window.partition_keys()
    files = sorted({name for name, _ in late})
    context.log.info(f"Late rows from {files}: rebuilding {window.hours} hours {first} .. {last}")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"late-rows@{cursor}",
                tags={
                    RANGE_TAGS[0]: first,
                    RANGE_TAGS[1]: last,
                    TRIGGER_TAG: "late_rows_sensor",
                    LATE_ROWS_FILES_TAG: ", ".join(files)[:1000],
                },
            )
        ],
        cursor=cursor,
    )

"""Late rows reach the features: a landing file, or a micro-batch of the stream's lander, whose
transactions lie in hours already built requests one rebuild of those hours and of the later hours whose
windows cover them (``rtml.features.late_rows``).

The hourly refresh only builds its own hour; without this, rows landed for an older hour would stay in
``raw.transactions`` and never reach ``stg_transactions``, the feature tables or the online store.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg

from rtml.config import Settings
from rtml.defs.automation.sensors import TRIGGER_TAG
from rtml.defs.automation.tags import range_tags
from rtml.defs.features.assets import dbt_incremental_features
from rtml.defs.ingestion.assets import EVENT_TS_MAX, EVENT_TS_MIN
from rtml.defs.resources import PostgresResource
from rtml.features.late_rows import (
    StreamLoads,
    features_built_until,
    late_stream_rows,
    rebuild_window,
    stream_loads_since,
)

LANDING = dg.AssetKey("transactions_landing")
LATE_ROWS_FILES_TAG = "rtml/late_rows_files"
LATE_ROWS_STREAM_TAG = "rtml/late_rows_stream"

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


@dataclass(frozen=True)
class LateRowsCursor:
    """Where the sensor has read up to: the last ``transactions_landing`` materialization (event storage
    id) and the lander's receipts (``raw.loads.loaded_at``; ``rtml.features.late_rows.stream_loads_since``).
    Stored as JSON; the integer cursor of earlier versions is the storage id alone."""

    storage_id: int | None = None
    loaded_at: datetime | None = None

    @classmethod
    def parse(cls, text: str | None) -> LateRowsCursor:
        if not text:
            return cls()
        if text.strip().isdigit():  # before the stream's receipts were read
            return cls(int(text))
        data = json.loads(text)
        loaded_at = data.get("loaded_at")
        return cls(data.get("storage_id"), datetime.fromisoformat(loaded_at) if loaded_at else None)

    def __str__(self) -> str:
        loaded_at = self.loaded_at.isoformat() if self.loaded_at else None
        return json.dumps({"storage_id": self.storage_id, "loaded_at": loaded_at}, sort_keys=True)


def _event_range(record: dg.EventLogRecord) -> tuple[datetime, datetime] | None:
    materialization = record.asset_materialization
    metadata = materialization.metadata if materialization else {}
    lo, hi = metadata.get(EVENT_TS_MIN), metadata.get(EVENT_TS_MAX)
    if not isinstance(lo, dg.TimestampMetadataValue) or not isinstance(hi, dg.TimestampMetadataValue):
        return None  # a labels file, or a file that loaded no transaction
    return datetime.fromtimestamp(lo.value, UTC), datetime.fromtimestamp(hi.value, UTC)


@dg.sensor(job=late_rows_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def late_rows_sensor(
    context: dg.SensorEvaluationContext, postgres: PostgresResource, settings: dg.ResourceParam[Settings]
) -> dg.SensorResult | dg.SkipReason:
    """After landing files are loaded (materializations of ``transactions_landing`` since the cursor):
    if their transactions (metadata ``event_ts_min``/``event_ts_max``) lie in hours whose features are
    built, request ONE ``late_rows_job`` run over the hours from the earliest late row's hour to 31 days
    after the latest one (the 30-day windows that include them), capped at the newest built hour:
    later hours are built by the schedule, with the late rows. The same for the stream's lander
    (``transactions_feed=stream``): its receipts in ``raw.loads`` since the cursor, whose rows lie in
    built hours and are missing from ``stg_transactions`` (landed after their hour was refreshed); files
    and stream rows of one tick share the run. Bounded: one run per tick, however many files and
    micro-batches. Waits (cursor kept) while an hourly refresh or an earlier rebuild is queued or
    running."""
    position = LateRowsCursor.parse(context.cursor)
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=LANDING, after_storage_id=position.storage_id),
        limit=1000,
        ascending=True,
    ).records
    url = postgres.database_url()
    # only a stream-fed deployment has a lander (`rtml stream land` refuses to run otherwise)
    stream = (
        stream_loads_since(url, position.loaded_at)
        if settings.stream.transactions_feed == "stream"
        else StreamLoads(position.loaded_at, 0)
    )
    if not records and not stream.loads:
        return dg.SkipReason("No landing file and no stream micro-batch loaded since the last tick.")
    busy = [
        run.run_id
        for run in context.instance.get_runs(dg.RunsFilter(job_name=None, statuses=_ACTIVE))
        if run.job_name in _WRITERS
    ]
    if busy:
        return dg.SkipReason(f"Waiting for runs writing the feature tables: {', '.join(busy)}.")
    cursor = str(LateRowsCursor(records[-1].storage_id if records else position.storage_id, stream.cutoff))
    late = [(record.partition_key or "", span) for record in records if (span := _event_range(record))]
    built_until = features_built_until(url) if late or stream.loads else None
    late_stream = (
        late_stream_rows(url, position.loaded_at, stream.cutoff, built_until)
        if stream.loads and stream.cutoff is not None
        else None
    )
    spans = [span for _, span in late]
    if late_stream is not None:
        spans.append((late_stream.first_event, late_stream.last_event))
    window = (
        rebuild_window(min(s[0] for s in spans), max(s[1] for s in spans), built_until) if spans else None
    )
    if window is None:
        return dg.SensorResult(
            skip_reason="The landed transactions lie in hours not built yet (the schedule builds them).",
            cursor=cursor,
        )
    first, last = window.partition_keys()
    files = sorted({name for name, _ in late})
    tags = {**range_tags(first, last), TRIGGER_TAG: "late_rows_sensor"}
    what = []
    if files:
        tags[LATE_ROWS_FILES_TAG] = ", ".join(files)[:1000]
        what.append(f"files {files}")
    if late_stream is not None:
        tags[LATE_ROWS_STREAM_TAG] = f"{late_stream.rows} rows of {late_stream.loads} stream micro-batches"
        what.append(f"the stream ({tags[LATE_ROWS_STREAM_TAG]})")
    context.log.info(f"Late rows from {' and '.join(what)}: rebuilding {window.hours} hours {first}..{last}")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"late-rows@{cursor}", tags=tags)], cursor=cursor
    )

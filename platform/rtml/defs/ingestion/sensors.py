"""A new file in the landing folder requests its own ingestion run."""

from __future__ import annotations

import json
import time

import dagster as dg

from rtml.config import Settings
from rtml.defs.automation.tags import TRIGGER_TAG
from rtml.defs.ingestion.partitions import landing_file_partitions
from rtml.ingest.landing import list_landing_files, ready_files
from rtml.monitoring import metrics

landing_job = dg.define_asset_job(
    "landing_ingestion_job", selection=["transactions_landing"], partitions_def=landing_file_partitions
)

LANDING_SHA256_TAG = "rtml/landing_sha256"
"""The content a landing run was requested for; the asset refuses to load other content."""

_ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


@dg.sensor(job=landing_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def landing_files_sensor(
    context: dg.SensorEvaluationContext, settings: dg.ResourceParam[Settings]
) -> dg.SensorResult:
    """One run per drop of a file into the landing folder (``rtml.ingest.landing`` has the conventions).

    - **Complete files only**: a file is requested once it has not been modified for
      ``landing_settle_seconds`` (default 5 s; a writer keeps changing the modification time). A producer
      that may pause longer mid-write writes ``.name.csv`` or ``name.csv.part`` (both ignored) and renames
      the finished file into place.
    - **Run key** ``<name>@<sha256 of the content>@<change time>``: a corrected file dropped again under
      the same name (new content), or the same file dropped again (a copy or a rename renews the change
      time), gets a new run; a file waiting for its run is never requested twice, and neither is one
      whose partition has a run queued or in progress.
    - The cursor keeps the content hashes of the waiting files (hashed once, not every tick), the run
      keys already requested and when each waiting file was first seen.
    - Every tick pushes ``rtml_landing_files_waiting`` and ``rtml_landing_oldest_waiting_timestamp_seconds``
      (alert ``LandingFileStuck``): a file whose run failed on a database outage longer than the retries,
      or that never stops changing, stays in the folder and must not go unnoticed.
    """
    now = time.time()
    cursor = json.loads(context.cursor) if context.cursor else {}
    seen = cursor.get("first_seen", {})
    first_seen = {path.name: seen.get(path.name, now) for path in list_landing_files(settings)}
    metrics.publish(
        "landing_files",
        [
            metrics.Sample("rtml_landing_files_waiting", len(first_seen)),
            metrics.Sample(
                "rtml_landing_oldest_waiting_timestamp_seconds", min(first_seen.values(), default=now)
            ),
        ],
        settings.monitoring.pushgateway_url,
    )
    digests: dict[str, str] = cursor.get("digests", {})
    requested = set(cursor.get("requested", []))
    files = ready_files(settings, digests, now)
    active = {
        run.tags.get("dagster/partition")
        for run in context.instance.get_runs(dg.RunsFilter(job_name=landing_job.name, statuses=_ACTIVE))
    }
    new = [file for file in files if file.drop_key not in requested and file.name not in active]
    known = set(context.instance.get_dynamic_partitions(landing_file_partitions.name or ""))
    unknown = sorted({file.name for file in new} - known)
    waiting = {file.drop_key for file in files}
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=file.drop_key,
                partition_key=file.name,
                tags={LANDING_SHA256_TAG: file.sha256, TRIGGER_TAG: f"landing file {file.name}"},
            )
            for file in new
        ],
        dynamic_partitions_requests=[landing_file_partitions.build_add_request(unknown)] if unknown else [],
        # Only the keys of files still waiting: a processed file's key is forgotten with it.
        cursor=json.dumps(
            {
                "digests": digests,
                "requested": sorted((requested & waiting) | {f.drop_key for f in new}),
                "first_seen": first_seen,
            }
        ),
    )

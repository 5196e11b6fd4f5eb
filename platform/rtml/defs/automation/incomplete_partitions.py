"""Hours left half-built are rebuilt: ``incomplete_partitions_sensor``.

An ``hourly_refresh_job`` run that dies (killed, its code server gone, a failed step) can leave an hour
with its transactions loaded but not all the features built from them, e.g. ``customer_features`` with
the hour and ``merchant_features`` and the ``*_latest`` tables without it: that hour's transactions would
be scored and trained on without merchant features. The sensor looks at the hours of the last
``incomplete_partitions_lookback_hours``: an hour whose newest ``transactions_raw`` materialization is
newer than the hour's materialization of an incremental feature model (or than the newest
``*_latest``/``online_features``, rebuilt whole by every run) is incomplete. It requests ONE
``hourly_refresh_job`` run from the first incomplete hour through the newest loaded one: the hours after
it were built on a history that lacked it (the features look back over earlier transactions).

Once per state: the run key holds the range and the newest ``transactions_raw`` materialization id in it,
so the same half-built state is never requested twice; and a rebuild that itself ends incomplete is not
requested again (its failure notifies like any failed run; ``rtml backfill START END --job
hourly_refresh_job`` retries by hand). Nothing is requested while a refresh run is in progress, nor while
the run that loaded the hour is (a run whose worker died is first marked failed by run monitoring).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

import dagster as dg

from rtml.config import Settings
from rtml.defs.automation.jobs import HOURLY_FEATURES, HOURLY_LATEST, HOURLY_RAW, hourly_refresh_job
from rtml.defs.automation.sensors import ACTIVE, TRIGGER_TAG
from rtml.defs.automation.tags import range_tags
from rtml.defs.clock import world_now
from rtml.defs.ingestion.partitions import transactions_partitions

SENSOR_NAME = "incomplete_partitions_sensor"
SENSOR_TAG = "dagster/sensor_name"  # Dagster tags every run a sensor requests with the sensor's name


@dg.sensor(
    name=SENSOR_NAME,
    job=hourly_refresh_job,
    minimum_interval_seconds=120,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Hours whose transactions_raw is newer than their features (an interrupted hourly refresh): "
    "one hourly_refresh_job run rebuilds them and the hours after them.",
)
def incomplete_partitions_sensor(
    context: dg.SensorEvaluationContext, settings: dg.ResourceParam[Settings]
) -> dg.RunRequest | dg.SkipReason:
    lookback = settings.automation.incomplete_partitions_lookback_hours
    return incomplete_partitions_request(
        context.instance, context.log, now=world_now(), lookback_hours=lookback
    )


def incomplete_partitions_request(
    instance: dg.DagsterInstance,
    log: logging.Logger | dg.DagsterLogManager,
    *,
    now: datetime,
    lookback_hours: int,
) -> dg.RunRequest | dg.SkipReason:
    """The sensor's decision at ``now`` over the ``lookback_hours`` before it: the sensor passes world time
    (``rtml.defs.clock``), tests a time of their pinned world."""
    active = instance.get_run_records(
        dg.RunsFilter(job_name=hourly_refresh_job.name, statuses=ACTIVE), limit=1
    )
    if active:
        return dg.SkipReason(f"{hourly_refresh_job.name} run {active[0].dagster_run.run_id} is in progress")
    hours = transactions_partitions.get_partition_keys_in_time_window(
        dg.TimeWindow(now - timedelta(hours=lookback_hours), now)
    )
    raw = newest_ids(instance, HOURLY_RAW, hours)
    features = {key: newest_ids(instance, key, hours) for key in HOURLY_FEATURES}
    latest = min(_newest_id(instance, key) for key in HOURLY_LATEST)  # built from every loaded hour

    def complete(hour: str) -> bool:
        return latest > raw[hour] and all(built.get(hour, 0) > raw[hour] for built in features.values())

    incomplete = [hour for hour in hours if hour in raw and not complete(hour)]
    if not incomplete:
        return dg.SkipReason(f"every loaded hour of the last {lookback_hours} h has its features")
    first, last = incomplete[0], max(raw)
    [loaded] = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=HOURLY_RAW, asset_partitions=[first]), limit=1
    ).records
    loader = instance.get_run_by_id(loaded.run_id)
    if loader is not None and not loader.is_finished:
        return dg.SkipReason(f"{first} is incomplete, but run {loader.run_id} that loaded it is in progress")
    if loader is not None and loader.tags.get(SENSOR_TAG) == SENSOR_NAME:
        return dg.SkipReason(
            f"{first} is incomplete after the rebuild run {loader.run_id} ({loader.status.value}); not "
            "requested again: see that run, then `rtml backfill` the hours with --job hourly_refresh_job"
        )
    newest = max(storage_id for hour, storage_id in raw.items() if hour >= first)
    log.info(f"incomplete hours: {', '.join(incomplete)}; rebuilding {first} ... {last}")
    return dg.RunRequest(
        run_key=f"{first}...{last}:transactions_raw:{newest}",
        tags={**range_tags(first, last), TRIGGER_TAG: f"incomplete partition {first}"},
    )


def newest_ids(instance: dg.DagsterInstance, key: dg.AssetKey, partitions: Sequence[str]) -> dict[str, int]:
    """The storage id of the newest materialization of each of ``partitions`` of ``key`` that has one
    (storage ids grow with time across all assets, so they order materializations of different assets)."""
    return dict(
        instance.get_latest_storage_id_by_partition(
            key, dg.DagsterEventType.ASSET_MATERIALIZATION, set(partitions)
        )
    )


def _newest_id(instance: dg.DagsterInstance, key: dg.AssetKey) -> int:
    records = instance.fetch_materializations(key, limit=1).records
    return records[0].storage_id if records else 0

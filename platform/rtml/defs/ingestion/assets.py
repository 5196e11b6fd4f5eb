"""Raw streams as partitioned assets: simulator transactions (hourly), labels (daily), landing files."""

import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import dagster as dg
import pyarrow as pa

from rtml.config import Settings
from rtml.defs.clock import world_now
from rtml.defs.ingestion.checks import quarantine_share_check, raw_check_specs, row_count_checks
from rtml.defs.ingestion.partitions import (
    labels_partitions,
    landing_file_partitions,
    transactions_partitions,
)
from rtml.defs.ingestion.sensors import LANDING_SHA256_TAG
from rtml.defs.resources import PostgresResource
from rtml.features.late_rows import loaded_event_range
from rtml.ingest.landing import LandingFileChanged, UnsafeLandingName, ingest_landing_file
from rtml.ingest.loader import LoadResult, TransientDatabaseError, load_labels, load_transactions
from rtml.monitoring import metrics
from rtml.sources.scenarios import timeline_path
from rtml.sources.simulator import Simulator
from rtml.streaming.lander import landed_between

EVENT_TS_MIN = "event_ts_min"
EVENT_TS_MAX = "event_ts_max"
"""Metadata of a landing file's materialization: first and last event time of the transactions it loaded."""

DATABASE_RETRIES = 3
DATABASE_RETRY_DELAY_S = 2


def _retry(context: dg.AssetExecutionContext) -> dg.RetryRequested:
    """Run the step again after a transient database error (dropped connection, serialization failure:
    the load rolled back, so it is safe to retry) 2, 4, then 8 s later; anything else fails at once
    (``dg.Failure(allow_retries=False)``) with the loader's message.

    Raised rather than declared as a ``dg.RetryPolicy``: under a policy Dagster also retries a step that
    was interrupted, so a run terminated from the UI, or by Ctrl-C of ``rtml backfill``, went on loading
    (and could even succeed) instead of ending canceled."""
    delay = DATABASE_RETRY_DELAY_S * 2**context.retry_number
    return dg.RetryRequested(max_retries=DATABASE_RETRIES, seconds_to_wait=delay)


def _load_metadata(result: LoadResult, partitions: int) -> dict[str, Any]:
    return {
        "rows_read": result.rows_read,
        "rows_loaded": result.rows_loaded,
        "rows_quarantined": result.rows_quarantined,
        "quarantine_by_rule": dg.MetadataValue.json(dict(result.quarantine_by_rule)),
        # The platform's promise: nothing is silently lost.
        "rows_read_equals_loaded_plus_quarantined": result.rows_read
        == result.rows_loaded + result.rows_quarantined,
        "partitions": partitions,
        "seconds": round(result.seconds, 3),
    }


def _publish(asset: str, total: LoadResult, partition_keys: list[str], gateway: str | None) -> None:
    """The load's figures to the Pushgateway (when configured): the rows of the run's partition, or
    of its range (``first...last``) in a single-run backfill."""
    partition = (
        partition_keys[0] if len(partition_keys) == 1 else f"{partition_keys[0]}...{partition_keys[-1]}"
    )
    samples = metrics.run_samples(
        asset,
        total.seconds,
        loaded=total.rows_loaded,
        quarantined=total.rows_quarantined,
        partition=partition,
    )
    metrics.publish(asset, samples, gateway)


def _load_each(
    context: dg.AssetExecutionContext, load_one: Callable[[str], LoadResult]
) -> Iterator[tuple[str, LoadResult]]:
    """Load partition by partition: each replaces exactly its own rows in its own transaction."""
    for key in context.partition_keys:
        try:
            yield key, load_one(key)
        except TransientDatabaseError as error:
            raise _retry(context) from error
        except Exception as error:
            raise dg.Failure(f"Loading partition {key} failed: {error}", allow_retries=False) from error


def _total(results: list[LoadResult]) -> LoadResult:
    by_rule: Counter[str] = Counter()
    for result in results:
        by_rule.update(result.quarantine_by_rule)
    return LoadResult(
        rows_read=sum(r.rows_read for r in results),
        rows_loaded=sum(r.rows_loaded for r in results),
        rows_quarantined=sum(r.rows_quarantined for r in results),
        quarantine_by_rule=dict(by_rule),
        seconds=sum(r.seconds for r in results),
    )


@dg.asset(
    key="transactions_raw",
    group_name="ingestion",
    partitions_def=transactions_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    check_specs=raw_check_specs("transactions_raw", row_count=True),
    kinds={"postgres", "python"},
    description="Card transactions from the seeded simulator, validated; good rows in "
    "`raw.transactions`, bad rows in `raw.transactions_quarantine` with the rule they failed. With "
    "`RTML_TRANSACTIONS_FEED=stream` nothing is loaded here: the lander (`rtml stream land`) loads the "
    "stream's events and each partition reports the rows it landed for that hour.",
)
def transactions_raw(
    context: dg.AssetExecutionContext, postgres: PostgresResource, settings: dg.ResourceParam[Settings]
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    simulator = Simulator(settings.simulator, settings.ingest, timeline_path(settings.services))
    url = postgres.database_url()
    now = world_now()  # the time the partitions exist at: their rows are not "in the future" then

    def load_hour(key: str) -> LoadResult:
        window = transactions_partitions.time_window_for_partition_key(key)
        if (
            settings.stream.transactions_feed == "stream"
        ):  # the lander loads; loading the simulator too doubles
            return landed_between(url, window.start, window.end)
        rows: pa.Table = simulator.transactions(window.start, window.end)
        return load_transactions(url, [rows], source=key, ingest=settings.ingest, now=now)

    per_partition = dict(_load_each(context, load_hour))
    total = _total(list(per_partition.values()))
    context.log.info(f"{len(per_partition)} partition(s): {total}")
    _publish("transactions_raw", total, context.partition_keys, settings.monitoring.pushgateway_url)
    # The drift scenarios (pinned or switched with `rtml scenario`) on during the loaded hours.
    window = context.partition_time_window
    scenarios = simulator.scenarios_between(window.start, window.end)
    metadata = {
        **_load_metadata(total, len(per_partition)),
        "drift_scenarios": ", ".join(scenarios) or "none",
        "transactions_feed": settings.stream.transactions_feed,
    }
    yield dg.MaterializeResult(metadata=metadata)
    yield quarantine_share_check("transactions_raw", total, settings)
    yield row_count_checks(
        "transactions_raw", {key: r.rows_loaded for key, r in per_partition.items()}, settings
    )


@dg.asset(
    key="labels_raw",
    group_name="ingestion",
    partitions_def=labels_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    check_specs=raw_check_specs("labels_raw", row_count=False),
    kinds={"postgres", "python"},
    description="Fraud labels by the day they became known (chargebacks arrive days after the "
    "transaction), validated into `raw.labels`.",
)
def labels_raw(
    context: dg.AssetExecutionContext, postgres: PostgresResource, settings: dg.ResourceParam[Settings]
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    simulator = Simulator(settings.simulator, settings.ingest, timeline_path(settings.services))
    url = postgres.database_url()
    now = world_now()

    def load_day(key: str) -> LoadResult:
        window = labels_partitions.time_window_for_partition_key(key)
        labels = simulator.labels(window.start, window.end)
        return load_labels(url, [labels], source=f"labels/{key}", ingest=settings.ingest, now=now)

    total = _total([result for _, result in _load_each(context, load_day)])
    _publish("labels_raw", total, context.partition_keys, settings.monitoring.pushgateway_url)
    yield dg.MaterializeResult(metadata=_load_metadata(total, len(context.partition_keys)))
    yield quarantine_share_check("labels_raw", total, settings)


@dg.asset(
    key="transactions_landing",
    group_name="ingestion",
    partitions_def=landing_file_partitions,
    kinds={"postgres", "parquet", "csv"},
    description="CSV or Parquet files dropped in `<data dir>/landing/`: one partition per file. Each "
    "file ends in `processed/` or `rejected/` with a JSON receipt; nothing is deleted.",
)
def transactions_landing(
    context: dg.AssetExecutionContext, postgres: PostgresResource, settings: dg.ResourceParam[Settings]
) -> dg.MaterializeResult:
    started = time.perf_counter()
    try:
        receipt = ingest_landing_file(
            context.partition_key,
            postgres.database_url(),
            settings,
            expected_sha256=context.run.tags.get(LANDING_SHA256_TAG),
            now=world_now(),
        )
    except (UnsafeLandingName, LandingFileChanged) as error:
        raise dg.Failure(str(error), allow_retries=False) from error
    except TransientDatabaseError as error:
        raise _retry(context) from error
    if receipt.status != "processed":
        raise dg.Failure(
            f"Landing file {context.partition_key} was rejected: {'; '.join(receipt.errors)}",
            metadata={"receipt": dg.MetadataValue.path(str(receipt.path))},
            allow_retries=False,
        )
    samples = metrics.run_samples(
        "transactions_landing",
        time.perf_counter() - started,
        loaded=receipt.rows_loaded,
        quarantined=receipt.rows_quarantined,
        partition=context.partition_key,
    )
    metrics.publish("transactions_landing", samples, settings.monitoring.pushgateway_url)
    metadata: dict[str, Any] = {
        "kind": receipt.kind,
        "rows_read": receipt.rows_read,
        "rows_loaded": receipt.rows_loaded,
        "rows_quarantined": receipt.rows_quarantined,
        "quarantine_by_rule": dg.MetadataValue.json(dict(receipt.quarantine_by_rule)),
        "receipt": dg.MetadataValue.path(str(receipt.path)),
    }
    # The event-time range of the loaded transactions (the loader's exact log): the late-rows sensor
    # (rtml.defs.features.sensors) rebuilds the features of the hours it touches if they are built.
    loaded = (
        loaded_event_range(postgres.database_url(), context.partition_key)
        if receipt.kind == "transactions"
        else None
    )
    if loaded:
        metadata[EVENT_TS_MIN] = dg.MetadataValue.timestamp(loaded[0])
        metadata[EVENT_TS_MAX] = dg.MetadataValue.timestamp(loaded[1])
    return dg.MaterializeResult(metadata=metadata)

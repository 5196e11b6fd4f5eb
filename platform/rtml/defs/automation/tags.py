"""Tags every automated run carries (the Runs page of the Dagster UI filters on them), and the partition
tags Dagster reads and writes on runs."""

from collections.abc import Mapping

from rtml.defs import dagster_internals

TRIGGER_TAG = "rtml/trigger"
"""Why a run was requested: the schedule, the failed check, the finished run or the file behind it."""

# A run's partition, and a single-run backfill's first and last partition: Dagster 1.13 exports no public
# name for these tags and no public way to request a range of a named job (``dagster job execute`` takes
# tags only), so they come from Dagster's own constants through the adapter.
PARTITION_TAG, RANGE_TAGS = dagster_internals.PARTITION_TAG, dagster_internals.RANGE_TAGS


def range_tags(first: str, last: str) -> dict[str, str]:
    """The tags of a run over the partitions ``first`` to ``last`` (one run: a single-run backfill)."""
    return dict(zip(RANGE_TAGS, (first, last), strict=True))


def partitions_of(tags: Mapping[str, str]) -> str | None:
    """The partition (``key``) or range (``first...last``) a run's tags name; None: not partitioned."""
    return tags.get(PARTITION_TAG) or "...".join(filter(None, (tags.get(tag) for tag in RANGE_TAGS))) or None

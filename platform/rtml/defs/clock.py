"""The Dagster layer's "now": :func:`world_now`, the time Dagster evaluates time partitions at.

Two kinds of time meet in this layer. *World time* says which hours and days exist as partitions, which
rows are "in the future" for validation, and where the incomplete-partitions sensor's look-back ends.
*Wall-clock time* says when runs happened (the drift cool-down), when a landing file last changed (it
must settle), and stamps metrics and records. Live, the two are the same. A reproducible world (tests,
benchmarks) has fixed dates: its world time must not depend on the host's date; its wall clock still is
the host's.

Dagster decides which time partitions exist from the effective time of its partition-loading context
(``dg.partition_loading_context``): the current time unless a caller pinned one; a schedule's tick pins
its own. The platform reads world time from that same place, so the partitions, the ingestion assets'
validation and the incomplete-partitions sensor always agree, and ONE
``with dg.partition_loading_context(effective_dt=...)`` runs a fixed-date world at a time of its own
(the test session does: ``tests/conftest.py``). The pin holds in the calling thread and what runs in it
(``dg.materialize``, ``execute_in_process``, a sensor or schedule evaluated directly); a process that
the daemon or a CLI starts runs at the current time.

Not taken: an ``end_date`` on the partitions definitions never extends them past the current time (it
only ends them earlier); mocking Dagster's clock (``dagster._time``) would also move run timestamps and
freshness checks, which are wall-clock; a pinned "now" setting would not reach the partitions that the
daemon and the webserver evaluate at their own current time, so partitions and validation could disagree.
"""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg


def world_now() -> datetime:
    """The effective time of the caller's partition-loading context (UTC), or the current time."""
    # Without arguments the context manager changes nothing: it yields the caller's context, or a new
    # one at the current time. Its `effective_dt` is the value Dagster's time partitions read
    # (TimeWindowPartitionsDefinition._get_current_timestamp); the context's class is not exported.
    with dg.partition_loading_context() as loading:
        effective = loading.effective_dt
    # a naive pin means the partitions' timezone, which is UTC here (as Dagster reads it)
    return effective.replace(tzinfo=UTC) if effective.tzinfo is None else effective.astimezone(UTC)

"""World time is the clock passed to Dagster (``rtml.defs.clock``), not the host's date.

A fixed-date hour is run at world times before and after it: which hours are partitions, which rows
validation quarantines as "in the future" and which hours the incomplete-partitions sensor looks at all
follow the one clock passed in (``dg.partition_loading_context``), as the whole session does with
``TEST_NOW`` (``tests/conftest.py``). Under ``faketime`` a host clock before the tests' world is
overridden by the pin, and without a pin world time is the host's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import psycopg
import pytest

from rtml.config import get_settings
from rtml.defs.automation.incomplete_partitions import incomplete_partitions_sensor
from rtml.defs.automation.tags import RANGE_TAGS
from rtml.defs.clock import world_now
from rtml.defs.ingestion.assets import transactions_raw
from rtml.defs.ingestion.partitions import transactions_partitions
from rtml.defs.resources import PostgresServer
from rtml.ingest.tables import ensure_tables
from tests.isolation import TEST_NOW

HOUR = datetime(2026, 11, 20, 10, tzinfo=UTC)  # an hour of the session's world, 10 days before TEST_NOW
KEY, PREVIOUS = "2026-11-20-10:00", "2026-11-20-09:00"
FUTURE = "event_ts_in_future"


def at(moment: datetime) -> AbstractContextManager[object]:
    """Dagster's partition clock (and so world time) pinned to ``moment``, as the session pins it."""
    return dg.partition_loading_context(effective_dt=moment)


def test_world_now_is_the_pinned_clock() -> None:
    assert world_now() == TEST_NOW  # the session's pin
    with at(HOUR + timedelta(minutes=30)):
        assert world_now() == HOUR + timedelta(minutes=30)
        assert transactions_partitions.get_last_partition_key() == PREVIOUS  # 10:00 is not complete
    with at(HOUR.replace(tzinfo=None)):  # naive: UTC, as the partitions read it
        assert world_now() == HOUR


def test_an_hour_loads_and_is_watched_at_the_clock_passed_in(
    scratch_database: Callable[[str], str],
) -> None:
    url = scratch_database("clock")
    with psycopg.connect(url) as conn:
        ensure_tables(conn)
    instance = dg.DagsterInstance.ephemeral()
    resources = {"postgres": PostgresServer(url=url), "settings": get_settings()}

    def load(**run: Any) -> dict[str, Any]:
        result = dg.materialize([transactions_raw], instance=instance, resources=resources, **run)
        assert result.success
        [materialization] = result.asset_materializations_for_node("transactions_raw")[:1]
        return {key: value.value for key, value in materialization.metadata.items()}

    # Half an hour into the hour: it is not a partition yet, and its rows after that time (and the
    # allowed skew) are "in the future" for validation (a range run is not checked against the partitions).
    during = HOUR + timedelta(minutes=30)
    with at(during):
        with pytest.raises(dg.DagsterUnknownPartitionError):
            load(partition_key=KEY)
        early = load(tags=dict(zip(RANGE_TAGS, (PREVIOUS, KEY), strict=True)))
    early_future = early["quarantine_by_rule"].get(FUTURE, 0)
    loaded_early = _loaded(url, KEY)
    assert early_future > 1_000, early  # about half of the hour's rows

    # Shortly after the hour: a partition, and none of its rows is in the future. The sensor at that time
    # finds both hours half-built (no features), at the session's time (11 days on) neither.
    after = HOUR + timedelta(hours=1, minutes=30)
    with at(after):
        late = load(partition_key=KEY)
        request = incomplete_partitions_sensor(
            dg.build_sensor_context(instance=instance, resources=resources)
        )
    assert late["quarantine_by_rule"].get(FUTURE, 0) == 0, late
    # the same rows: those in the future before are loaded now (a few fail another rule too)
    assert late["rows_loaded"] == _loaded(url, KEY)
    assert loaded_early + early_future - 20 <= late["rows_loaded"] <= loaded_early + early_future
    assert isinstance(request, dg.RunRequest), request
    assert (request.tags[RANGE_TAGS[0]], request.tags[RANGE_TAGS[1]]) == (PREVIOUS, KEY)
    skipped = incomplete_partitions_sensor(dg.build_sensor_context(instance=instance, resources=resources))
    assert isinstance(skipped, dg.SkipReason) and "has its features" in (skipped.skip_message or "")


def _loaded(url: str, key: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("select count(*) from raw.transactions where source = %s", (key,)).fetchone()
    assert row is not None
    return int(row[0])


def host_env() -> dict[str, str]:
    """This process's environment without a faketime of its own (the suite itself may run under one)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("FAKETIME") and k != "LD_PRELOAD"}


def test_a_pin_overrides_a_host_clock_before_the_world() -> None:
    """Under ``faketime`` a day the session's world has not reached: unpinned, world time is the host's;
    pinned, the world's hours exist whatever the host's date."""
    if shutil.which("faketime") is None:
        pytest.skip("faketime is not installed (Debian: apt-get install faketime)")
    probe = (
        "import dagster as dg\n"
        "from datetime import datetime\n"
        "from rtml.defs.clock import world_now\n"
        "from rtml.defs.ingestion.partitions import transactions_partitions as hours\n"
        "print(world_now().isoformat(), hours.get_last_partition_key())\n"
        f"with dg.partition_loading_context(effective_dt=datetime.fromisoformat({TEST_NOW.isoformat()!r})):\n"
        "    print(world_now().isoformat(), hours.get_last_partition_key())\n"
    )
    proc = subprocess.run(
        ["faketime", "2026-11-10 12:30:00", sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        env={**host_env(), "TZ": "UTC"},  # faketime's date is local time
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    host, pinned = proc.stdout.split("\n")[:2]
    assert host.split()[1] == "2026-11-10-11:00" and host.startswith("2026-11-10T12:30"), host
    assert pinned.split() == [TEST_NOW.isoformat(), "2026-11-30-23:00"], pinned

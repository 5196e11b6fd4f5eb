"""The live demo window: history that ends at the current hour, a live `sim_start` fixed once per stack,
a pinned one unchanged, and the hourly schedule continuing where the window ends (no gap)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from rtml.cli import demo_window
from rtml.config import ServicesSettings, Settings, SimulatorSettings, floor_hour, live_sim_start
from rtml.stack.local import StackInfo
from rtml.stack.state import record_live_start

PINNED = datetime(2026, 11, 1, tzinfo=UTC)


def live_settings(data_dir: Path, **simulator: Any) -> Settings:
    return Settings(services=ServicesSettings(data_dir=data_dir), simulator=SimulatorSettings(**simulator))


def next_tick(after: datetime) -> datetime:
    """The first :05 (the hourly schedule's minute) strictly after ``after``."""
    tick = floor_hour(after) + timedelta(minutes=5)
    return tick if tick > after else tick + timedelta(hours=1)


def test_the_demo_window_ends_at_the_current_hour(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RTML_SIM_START", raising=False)
    settings = live_settings(tmp_path, demo_days=7)
    now = datetime.now(UTC)
    window = demo_window(settings, now)
    assert settings.simulator.start_is_live
    assert window.end == floor_hour(now) and now - window.end < timedelta(hours=1)
    assert window.start == settings.simulator.start == window.end - timedelta(days=7)
    assert window.hours[1] == f"{window.end - timedelta(hours=1):%Y-%m-%d-%H:%M}"  # the last complete hour
    assert window.label_days == (f"{window.start:%Y-%m-%d}", f"{now - timedelta(days=1):%Y-%m-%d}")


def test_a_live_start_is_fixed_when_the_stack_first_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RTML_SIM_START", raising=False)
    first = live_settings(tmp_path)
    record_live_start(first)
    later = first.simulator.start + timedelta(days=2, hours=5)
    assert (
        live_sim_start(tmp_path, first.simulator.demo_days, now=later) == first.simulator.start
    )  # a restart keeps it
    assert live_settings(tmp_path).simulator.start == first.simulator.start
    # After the restart the window still ends now: it follows the start by the time that passed.
    assert demo_window(live_settings(tmp_path), later).end == floor_hour(later)
    # Another data directory (another stack) has a start of its own.
    assert live_sim_start(tmp_path / "other", 7, now=later) == floor_hour(later) - timedelta(days=7)


def test_a_pinned_start_is_kept_and_never_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTML_SIM_START", PINNED.isoformat())
    settings = live_settings(tmp_path)
    assert settings.simulator.start == PINNED and not settings.simulator.start_is_live
    record_live_start(settings)
    assert not settings.services.live_window_file.exists()
    window = demo_window(settings, PINNED + timedelta(days=3, minutes=20))  # younger than demo_days
    assert (window.start, window.end) == (PINNED, PINNED + timedelta(days=3))


@pytest.mark.parametrize("minute", [3, 50], ids=["before-the-tick", "after-the-tick"])
def test_the_hourly_schedule_continues_where_the_window_ends(minute: int) -> None:
    from rtml.defs.automation.schedules import hourly_refresh_schedule
    from rtml.defs.ingestion.partitions import transactions_partitions

    started = floor_hour(datetime.now(UTC)) - timedelta(hours=3) + timedelta(minutes=minute)
    window = demo_window(Settings(simulator=SimulatorSettings(start=transactions_partitions.start)), started)
    tick = next_tick(started)
    context = dg.build_schedule_context(scheduled_execution_time=tick)
    [request] = hourly_refresh_schedule.evaluate_tick(context).run_requests or []
    loaded = window.hours[1]  # the window's last hour
    follows = f"{window.end:%Y-%m-%d-%H:%M}"  # the hour right after it
    # Before :05 the tick reloads the window's last hour; after it, the tick loads the hour that follows.
    assert request.partition_key == (loaded if minute < 5 else follows), (started, tick)
    hours = transactions_partitions.get_partition_keys(current_time=tick)
    assert hours.index(request.partition_key) <= hours.index(loaded) + 1  # no hour left out


def test_rtml_up_creates_the_landing_folder(stack: StackInfo) -> None:
    assert (Path(stack.dagster_home).parent / "landing").is_dir()


def test_the_bootstrap_catches_up_with_hours_completed_while_it_ran() -> None:
    """The daemon starts after the bootstrap: an hour whose :05 tick passed meanwhile is loaded by the
    bootstrap itself (``hourly_refresh_job``), so the daemon's next tick follows without a gap."""
    from rtml.demo_bootstrap import completed_since

    end = datetime(2026, 12, 5, 16, tzinfo=UTC)  # the window ends at 16:00 (its last hour is 15:00)
    assert completed_since(end, end + timedelta(minutes=59)) is None  # 16:00 is not complete yet
    assert completed_since(end, end + timedelta(hours=1, minutes=8)) == (
        "2026-12-05-16:00",
        "2026-12-05-16:00",
    )
    assert completed_since(end, end + timedelta(hours=3, minutes=1)) == (
        "2026-12-05-16:00",
        "2026-12-05-18:00",
    )

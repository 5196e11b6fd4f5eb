"""The run-time timeline of the simulator's drift scenarios: which scenario was on when.

``rtml scenario start NAME`` / ``stop`` append to a small JSON file under the data directory
(``<data_dir>/scenarios.json``, next to the stack's state). Every process that generates rows reads it
when it builds a :class:`~rtml.sources.simulator.Simulator` (the Dagster runs of the hourly ingestion, the
traffic generator, ``rtml simulate``), so a switch takes effect without a restart, and an hour generated
again later still sees what was on at the time (the timeline keeps every interval, closed ones too).

The pinned settings ``simulator.drift_scenario`` / ``drift_start`` are one more open interval on top of it
(reproducible runs pin their window and scenario in settings, not here).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from rtml.config import ServicesSettings
from rtml.stack.state import locked

FILE_NAME = "scenarios.json"


def timeline_path(services: ServicesSettings) -> Path:
    return services.home / FILE_NAME


@dataclass(frozen=True)
class ScenarioInterval:
    """One scenario switched on at ``start`` and off at ``stop`` (None: still on). Rows whose event time
    lies in [start, stop) are generated with the scenario."""

    scenario: str
    start: datetime
    stop: datetime | None = None

    @property
    def active(self) -> bool:
        return self.stop is None

    def covers(self, at: datetime) -> bool:
        return self.start <= at and (self.stop is None or at < self.stop)

    def as_json(self) -> dict[str, str | None]:
        raw = asdict(self)
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in raw.items()}


@dataclass(frozen=True)
class ScenarioTimeline:
    intervals: tuple[ScenarioInterval, ...] = ()

    @classmethod
    def load(cls, path: Path) -> ScenarioTimeline:
        if not path.exists():
            return cls()
        raw = json.loads(path.read_text() or "{}")
        return cls(
            tuple(
                ScenarioInterval(
                    item["scenario"],
                    datetime.fromisoformat(item["start"]),
                    datetime.fromisoformat(item["stop"]) if item.get("stop") else None,
                )
                for item in raw.get("intervals", [])
            )
        )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"intervals": [i.as_json() for i in self.intervals]}, indent=2) + "\n")
        os.replace(tmp, path)  # atomic: a process generating rows never reads half a file

    def active(self, at: datetime | None = None) -> list[str]:
        """Scenarios on at ``at`` (default: now), in the order they were switched on."""
        at = at or datetime.now(UTC)
        return list(dict.fromkeys(i.scenario for i in self.intervals if i.covers(at)))

    def started(self, scenario: str, at: datetime) -> ScenarioTimeline:
        if any(i.scenario == scenario and i.active for i in self.intervals):
            return self  # already on: the interval that is open stays as it is
        return ScenarioTimeline((*self.intervals, ScenarioInterval(scenario, at)))

    def stopped(self, scenario: str | None, at: datetime) -> ScenarioTimeline:
        """Every open interval (or only ``scenario``'s) closed at ``at``."""
        return ScenarioTimeline(
            tuple(
                replace(i, stop=max(at, i.start)) if i.active and scenario in (None, i.scenario) else i
                for i in self.intervals
            )
        )


def switch(
    services: ServicesSettings, scenario: str | None, on: bool, at: datetime | None = None
) -> ScenarioTimeline:
    """Switch ``scenario`` on (or off; ``None`` with ``on=False``: every scenario) from ``at`` (default
    now) and save the timeline; returns the timeline before the switch (to tell what changed)."""
    from rtml.sources.simulator import DRIFT_SCENARIOS

    if scenario is not None and scenario not in DRIFT_SCENARIOS:
        raise ValueError(f"unknown drift scenario {scenario!r}; valid: {', '.join(DRIFT_SCENARIOS)}")
    if on and scenario is None:
        raise ValueError("name the scenario to switch on")
    at = at or datetime.now(UTC)
    path = timeline_path(services)
    with locked(path.with_name(FILE_NAME + ".lock")):  # two switches at once must not lose one
        before = ScenarioTimeline.load(path)
        after = before.started(scenario, at) if on and scenario else before.stopped(scenario, at)
        if after != before:
            after.save(path)
    return before

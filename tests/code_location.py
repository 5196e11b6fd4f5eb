"""The code location as a run worker loads it, for tests that execute its jobs in process.

``rtml.definitions.defs`` was loaded when the test modules were collected, so its ``settings`` resource holds
the environment of that moment; a run worker loads the definitions when the run starts. Tests whose
fixtures set the environment (the session's data directory, a world's simulator) build the code location
here, after them: its settings are read now, and any resource can be replaced (a test database, a model
name, a Redis namespace).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg

from rtml.config import get_settings
from rtml.definitions import defs


def code_location(resources: Mapping[str, Any] | None = None) -> dg.Definitions:
    return dg.Definitions(
        assets=defs.assets,
        asset_checks=defs.asset_checks,
        jobs=defs.jobs,
        schedules=defs.schedules,
        sensors=defs.sensors,
        resources={**(defs.resources or {}), "settings": get_settings(), **(resources or {})},
    )

"""What every benchmark's JSON line says about the machine it ran on: the load average (1, 5 and 15
minutes) at its start and at its end. Figures from a shared 2-core machine are read against it."""

from __future__ import annotations

import json
import math
import os
from typing import Any


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def json_line(figures: dict[str, Any], load_average_start: list[float]) -> str:
    """The benchmark's last line: its figures between the load average at its start and now. A figure
    that could not be measured (a NaN or infinite float: no 2xx answer to take a latency of) is ``null``,
    which strict JSON parsers read (they refuse ``NaN``)."""
    line = {"load_average_start": load_average_start, **figures, "load_average_end": load_average()}
    return json.dumps(_finite(line), default=str, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value

"""What every benchmark's JSON line says about the machine it ran on: the load average (1, 5 and 15
minutes) at its start and at its end. Figures from a shared 2-core machine are read against it."""

from __future__ import annotations

import json
import os
from typing import Any


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def json_line(figures: dict[str, Any], load_average_start: list[float]) -> str:
    """The benchmark's last line: its figures between the load average at its start and now."""
    return json.dumps(
        {"load_average_start": load_average_start, **figures, "load_average_end": load_average()},
        default=str,
    )

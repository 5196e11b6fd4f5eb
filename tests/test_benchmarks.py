"""Every benchmark script ends with one JSON line that carries the load average at its start and its
end (issue 20: figures of a shared 2-core machine are read against its load)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
SERVICES = {"floor_service.py"}  # a BentoML service the serving benchmarks start, not a benchmark


def scripts() -> list[Path]:
    return sorted(p for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_") and p.name not in SERVICES)


@pytest.mark.parametrize("script", scripts(), ids=lambda p: p.name)
def test_each_benchmark_prints_its_figures_through_json_line(script: Path) -> None:
    source = script.read_text()
    assert "from _machine import json_line, load_average" in source and "json_line(" in source, script.name
    assert source.count("json_line(") == 1, f"{script.name}: one JSON line, the last"


def test_json_line_puts_the_figures_between_the_load_averages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("_machine", None)
    import _machine

    line = json.loads(_machine.json_line({"p99_ms": 1.5}, [0.5, 0.4, 0.3]))
    assert list(line) == ["load_average_start", "p99_ms", "load_average_end"]
    assert line["load_average_start"] == [0.5, 0.4, 0.3] and len(line["load_average_end"]) == 3


def test_a_figure_that_could_not_be_measured_is_null_not_nan(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fail-closed service answers every request of a Redis hang with 503: no latency to report."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("_machine", None)
    import _machine

    text = _machine.json_line({"p99_ms": float("nan"), "rounds": [1.5, float("inf")]}, [0.5, 0.4, 0.3])
    line = json.loads(text, parse_constant=lambda name: pytest.fail(f"not JSON: {name}"))
    assert line["p99_ms"] is None and line["rounds"] == [1.5, None]

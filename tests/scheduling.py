"""How `make test` shares the modules between its workers (pytest-xdist's scheduler hook).

Like ``--dist loadfile`` (a module runs whole on one worker, so its module fixtures are built once), with
two changes:

* Modules that use the same session-scoped world run on the same worker, which builds it once: the
  training world (``training_db``: three weeks simulated, loaded and built with dbt, about 40 s) and the
  model trained on it (``trained_model``, 20-40 s).
* The heaviest go first (longest-processing-time-first), so that both workers finish together instead of
  one waiting on a late 3-minute module. xdist's own order is by number of tests, which says little about
  time here: 38 tests of ``test_cicd.py`` take 10 s, 3 of ``test_demo_lifecycle.py`` take 170 s.
"""

from __future__ import annotations

import random

import pytest
from xdist.remote import Producer
from xdist.scheduler import LoadScopeScheduling
from xdist.workermanage import WorkerController

SHARED_WORLDS = {
    "training_db": (
        "tests/test_serving.py",
        "tests/test_training.py",
        "tests/test_training_assets.py",
        "tests/test_request_features.py",
    ),
}
"""Session fixture → the modules that use it (tests/test_scheduling.py checks the list is complete)."""

HEAVIEST_FIRST = (
    "training_db",
    "tests/test_demo_lifecycle.py",
    "tests/test_automation.py",
    "tests/test_stack.py",
    "tests/test_serving_lifecycle.py",
    "tests/test_drift.py",
    "tests/test_feature_assets.py",
    "tests/test_traffic.py",
    "tests/test_dbt_features.py",
    "tests/test_dagster_ui.py",
    "tests/test_dvc.py",
    "tests/test_online_store.py",
    "tests/test_streaming_features.py",
    "tests/test_speed_read.py",
    "tests/test_late_rows.py",
    "tests/test_landing.py",
)
"""Work units by measured time, longest first (`make test PYTEST_ARGS=--durations=0`, 2026-12-06); the
rest follow in collection order. A wrong guess costs balance, never correctness."""

_WORLD_OF = {module: world for world, modules in SHARED_WORLDS.items() for module in modules}


def work_unit(nodeid: str) -> str:
    """The work unit of a test: its module, or the shared world its module belongs to."""
    module = nodeid.split("::", 1)[0]
    return _WORLD_OF.get(module, module)


def rank(unit: str) -> int:
    return HEAVIEST_FIRST.index(unit) if unit in HEAVIEST_FIRST else len(HEAVIEST_FIRST)


def shuffled_modules(items: list[pytest.Item], seed: int) -> list[pytest.Item]:
    """The items with their modules in an order shuffled by ``seed`` (``--shuffle-modules``), each
    module's tests in their own order: every worker computes the same order from the same seed."""
    modules = list(dict.fromkeys(item.nodeid.split("::", 1)[0] for item in items))
    random.Random(seed).shuffle(modules)
    position = {module: i for i, module in enumerate(modules)}
    return sorted(items, key=lambda item: position[item.nodeid.split("::", 1)[0]])


class WorldsTogetherHeaviestFirst(LoadScopeScheduling):
    def __init__(self, config: pytest.Config, log: Producer | None = None) -> None:
        super().__init__(config, log)
        config.option.loadscopereorder = False  # the order is ours (below), not by number of tests
        self.shuffled = config.getoption("shuffle_modules") is not None  # then the collection's order

    def _split_scope(self, nodeid: str) -> str:
        return work_unit(nodeid)

    def _assign_work_unit(self, node: WorkerController) -> None:
        # a stable sort: the unlisted (or, shuffled, all) keep the collection's order
        for unit in sorted(self.workqueue, key=lambda unit: 0 if self.shuffled else rank(unit)):
            self.workqueue.move_to_end(unit)
        super()._assign_work_unit(node)

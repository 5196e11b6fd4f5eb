"""`make test`'s scheduler (tests/scheduling.py): its lists name real modules, and every module that uses
a shared session world is listed with it, so that world is built once."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

from tests.scheduling import HEAVIEST_FIRST, SHARED_WORLDS, rank, shuffled_modules, work_unit

ROOT = Path(__file__).resolve().parents[1]


def test_every_module_that_uses_a_shared_world_runs_with_it() -> None:
    for world, modules in SHARED_WORLDS.items():
        users = {
            str(path.relative_to(ROOT))
            for path in (ROOT / "tests").glob("test_*.py")
            if path.name != Path(__file__).name
            if re.search(rf"\b{world}\b", path.read_text())
        }
        assert users <= set(modules), f"add {sorted(users - set(modules))} to SHARED_WORLDS[{world!r}]"
        assert users, f"no module uses {world}: remove it from SHARED_WORLDS"


def test_the_lists_name_modules_that_exist() -> None:
    for unit in (*HEAVIEST_FIRST, *(m for modules in SHARED_WORLDS.values() for m in modules)):
        assert unit in SHARED_WORLDS or (ROOT / unit).is_file(), unit


def test_a_world_s_modules_form_one_unit_ranked_before_the_unlisted() -> None:
    units = {work_unit(f"{module}::test_x") for module in SHARED_WORLDS["training_db"]}
    assert units == {"training_db"}
    assert work_unit("tests/test_cicd.py::test_x[param::y]") == "tests/test_cicd.py"
    assert rank("training_db") < rank("tests/test_demo_lifecycle.py") < rank("tests/test_cicd.py")


def test_a_shuffle_moves_whole_modules_and_is_the_same_on_every_worker() -> None:
    @dataclass
    class Item:
        nodeid: str

    items = [Item(f"tests/test_{m}.py::test_{i}") for m in "abcdefgh" for i in range(3)]
    shuffled = shuffled_modules(items, seed=7)  # type: ignore[arg-type]
    assert shuffled == shuffled_modules(items, seed=7) != items  # type: ignore[arg-type]
    modules = [item.nodeid.split("::")[0] for item in shuffled]
    assert len(list(itertools.groupby(modules))) == 8  # each module's tests stay together, in order
    assert all(a.nodeid < b.nodeid for a, b in itertools.pairwise(shuffled) if a.nodeid[:15] == b.nodeid[:15])


def test_xdist_still_calls_the_two_private_methods_the_scheduler_overrides() -> None:
    """``WorldsTogetherHeaviestFirst`` overrides ``_split_scope`` and ``_assign_work_unit`` of xdist's
    ``LoadScopeScheduling``: a pinned xdist that stopped calling them would quietly schedule module by
    module again (each shared world built on both workers)."""
    import inspect

    import xdist
    from xdist.scheduler import LoadScopeScheduling

    source = inspect.getsource(LoadScopeScheduling)
    for name in ("_split_scope", "_assign_work_unit"):
        assert f"self.{name}(" in source, f"pytest-xdist {xdist.__version__} no longer calls {name}"

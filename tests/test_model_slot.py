"""``rtml.serving.lifecycle.ModelSlot``, the model lifecycle production and the shadow share, without a
registry or a server: the registry lookup is a stub, models are stubs that score zeros (or raise). The
served behaviour end to end is in tests/test_serving.py and tests/test_serving_lifecycle.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from rtml.serving import lifecycle
from rtml.serving.lifecycle import ModelSlot
from rtml.serving.scoring import ServedModel
from rtml.training.loading import ModelRefused


class Compiled:
    def __init__(self, fails: bool) -> None:
        self.fails = fails

    def predict(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        if self.fails:
            raise RuntimeError("cannot score")
        return np.zeros(len(rows))


class World:
    """The alias (what the registry answers), which versions load, and what the slot reported."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.alias: tuple[str, dict[str, str]] | None = None
        self.unsafe: set[str] = set()  # versions refused at load
        self.broken: set[str] = set()  # versions that load but cannot score (refused at warm-up)
        self.loads: list[str] = []
        self.changes: list[tuple[str | None, str | None]] = []
        self.refusals: list[tuple[str, str]] = []
        self.cleared = 0
        monkeypatch.setattr(lifecycle, "production_version", lambda uri, name, alias: self.alias)

    def load(self, uri: str, name: str, version: str, tags: dict[str, str]) -> ServedModel:
        self.loads.append(version)
        if version in self.unsafe:
            raise ModelRefused("format", f"{name} v{version} is pickled")
        return ServedModel(name, version, None, 0.5, 0.9, "registry", tags, Compiled(version in self.broken))

    def slot(self, keep_last: bool) -> ModelSlot:
        def changed(previous: ServedModel | None, current: ServedModel | None) -> None:
            self.changes.append((previous and previous.version, current and current.version))

        def cleared() -> None:
            self.cleared += 1

        return ModelSlot(
            "http://registry",
            "fraud",
            "production",
            load=self.load,
            features=([], []),
            keep_last=keep_last,
            on_change=changed,
            on_refused=lambda version, refusal: self.refusals.append((version, refusal.reason)),
            on_refusal_cleared=cleared,
        )


def version(slot: ModelSlot) -> str | None:
    return None if slot.model is None else slot.model.version


def test_production_keeps_what_it_serves_and_refuses_a_version_once(monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(monkeypatch)
    slot = world.slot(keep_last=True)
    assert not slot.poll() and version(slot) is None  # no version holds the alias yet

    world.alias = ("1", {"approved_by": "a"})
    assert slot.poll() and version(slot) == "1"
    assert not slot.poll() and world.loads == ["1"]  # the same version is not loaded again

    world.alias = None  # the alias removed: production keeps serving
    assert not slot.poll() and version(slot) == "1"

    world.alias, world.unsafe = ("2", {"approved_by": "a"}), {"2"}
    assert not slot.poll() and not slot.poll()
    assert version(slot) == "1" and world.loads == ["1", "2"]  # refused once per (version, tags)
    assert world.refusals == [("2", "format")] and slot.refused and slot.refused["version"] == "2"

    world.alias = ("2", {"approved_by": "b"})  # its tags changed: tried again
    assert not slot.poll() and world.loads == ["1", "2", "2"] and len(world.refusals) == 2

    world.alias, world.broken = ("3", {}), {"3"}  # loads, but cannot score the warm-up row
    assert not slot.poll() and world.refusals[-1] == ("3", "invalid") and version(slot) == "1"

    world.alias = ("4", {})
    assert slot.poll() and version(slot) == "4"
    assert slot.refused is None and world.cleared == 1
    assert world.changes == [(None, "1"), ("1", "4")]


def test_the_shadow_is_what_its_alias_names_or_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(monkeypatch)
    slot = world.slot(keep_last=False)
    world.alias = ("5", {})
    assert slot.poll(skip="4") and version(slot) == "5"
    assert not slot.poll(skip="5") and version(slot) is None  # promoted: production serves it now

    world.alias = ("6", {})
    assert slot.poll(skip="5") and version(slot) == "6"
    world.alias, world.unsafe = ("7", {}), {"7"}
    assert not slot.poll(skip="5") and version(slot) is None  # never a stale candidate
    assert world.refusals == [("7", "format")]

    world.alias = None
    assert not slot.poll() and slot.refused is None
    assert world.changes == [(None, "5"), ("5", None), (None, "6"), ("6", None)]


def test_a_swap_outside_the_registry_clears_a_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(monkeypatch)
    slot = world.slot(keep_last=True)
    slot.refuse("1", {}, ModelRefused("untrusted_types", "needs os.system"))  # the bento's copy, refused
    assert slot.refused and world.refusals == [("1", "untrusted_types")]
    slot.swap(world.load("", "fraud", "2", {}))
    assert version(slot) == "2" and slot.refused is None and world.cleared == 1
    slot.unload()
    assert world.changes == [(None, "2"), ("2", None)]

"""The model lifecycle of the scorer: one ``ModelSlot`` per registry alias a worker follows — production
(``RTML_SERVING_MODEL_ALIAS``) and the shadow (``RTML_SERVING_SHADOW_ALIAS``, ``shadow.py``).

A slot loads the version its alias names (safely, ``scoring.load_version``, then warmed), swaps it in as
one reference assignment (a request scores with the old model or the new one, never half of each, and
none is dropped), and unloads it. A version that is refused (``ModelRefused``) is remembered with its
tags, so it is tried again only when the alias moves or the tags change, not on every poll.

Where the two differ is a choice, not a second copy: production keeps serving the version it has when
its alias is gone or names a refused version (``keep_last``); the shadow is what its alias names, or
nothing. What each reports (metrics, logs) is its owner's, through ``on_change`` and ``on_refused``.

No BentoML here; ``service.py`` polls the slots on its registry thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from rtml.serving.scoring import Lookup, ServedModel, score_rows
from rtml.training.loading import ModelRefused
from rtml.training.model_registry import production_version

Loader = Callable[[str, str, str, dict[str, str]], ServedModel]
"""``(tracking_uri, name, version, tags) → ServedModel`` or ``ModelRefused`` (``scoring.load_version``)."""


class ModelSlot:
    """The version of ``name`` that ``alias`` names, as served by this worker (``model``; None before
    the first load); ``features``: the model's (numeric, categorical) inputs, for the warm-up row.
    ``on_change(previous, current)`` runs after each swap or unload; ``on_refused``
    once per refused (version, tags); ``on_refusal_cleared`` when the refusal no longer applies."""

    def __init__(
        self,
        tracking_uri: str | None,
        name: str,
        alias: str,
        *,
        load: Loader,
        features: tuple[Sequence[str], Sequence[str]],
        keep_last: bool,
        on_change: Callable[[ServedModel | None, ServedModel | None], None],
        on_refused: Callable[[str, ModelRefused], None],
        on_refusal_cleared: Callable[[], None] = lambda: None,
    ) -> None:
        self.tracking_uri, self.name, self.alias = tracking_uri, name, alias
        self._load, self.keep_last = load, keep_last
        self.numeric, self.categorical = list(features[0]), list(features[1])
        self._on_change, self._on_refused = on_change, on_refused
        self._on_refusal_cleared = on_refusal_cleared
        self.model: ServedModel | None = None  # replaced as one reference
        self.refused: dict[str, str] | None = None  # the version refused last, and why
        self._refused_key: tuple[str, frozenset[tuple[str, str]]] | None = None
        self._lock = threading.Lock()

    def poll(self, skip: str | None = None) -> bool:
        """Look the alias up in the registry (one cheap call) and follow it; ``skip``: a version not to
        load here (the shadow skips the one production serves). True when a version was swapped in."""
        assert self.tracking_uri, "no registry to poll (RTML_MLFLOW_TRACKING_URI)"
        found = production_version(self.tracking_uri, self.name, self.alias)
        if found is None or found[0] == skip:
            if not self.keep_last:
                self.unload()  # promoted (production serves it now) or unstaged: nothing to shadow
            self._clear_refusal()
            return False
        version, tags = found
        current = self.model
        if current is not None and current.version == version and current.name == self.name:
            self._clear_refusal()
            return False
        if self._refused_key == (version, frozenset(tags.items())):
            return False  # refused already: tried again once the alias moves or the tags change
        try:
            served = self._load(self.tracking_uri, self.name, version, tags)
            warm(served, self.numeric, self.categorical)
        except ModelRefused as exc:
            if not self.keep_last:
                self.unload()  # what the alias names, or nothing: never a stale candidate
            self.refuse(version, tags, exc)
            return False
        self.swap(served)
        return True

    def swap(self, served: ServedModel) -> None:
        """Serve ``served`` from the next request on (it is loaded and warmed already)."""
        self._clear_refusal()  # first: whoever sees the new model sees no refusal
        self._set(served)

    def unload(self) -> None:
        self._set(None)

    def refuse(self, version: str, tags: dict[str, str], refusal: ModelRefused) -> None:
        """Keep what is served (or, without ``keep_last``, nothing); say why once per (version, tags)."""
        self._on_refused(version, refusal)  # metrics and log first: whoever sees `refused` sees them
        self._refused_key = (version, frozenset(tags.items()))
        self.refused = {
            "version": version,
            "reason": refusal.reason,
            "error": str(refusal),
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    def _set(self, served: ServedModel | None) -> None:
        with self._lock:
            previous = self.model
            if previous is not served:
                self._on_change(previous, served)  # gauges first: whoever sees the new model sees them
            self.model = served  # one reference assignment: old or new, never half

    def _clear_refusal(self) -> None:
        if self._refused_key is not None:
            self._on_refusal_cleared()
            self._refused_key, self.refused = None, None


def warm(served: ServedModel, numeric: Sequence[str], categorical: Sequence[str]) -> None:
    """Score one all-missing row before the swap, so the first real request pays no lazy set-up; a model
    that cannot score it is refused (``invalid``)."""
    txn = {"amount": 1.0, "timestamp": datetime.now(UTC), "merchant_id": "warm-up"}
    try:
        score_rows(served, [txn], [Lookup({}, {}, [])], list(numeric), list(categorical))
    except Exception as exc:
        message = f"{served.name} v{served.version} cannot score a request: {exc}"
        raise ModelRefused("invalid", message) from exc

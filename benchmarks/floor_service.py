"""A do-nothing BentoML service: the framework's floor for ``benchmarks/serving.py`` and ``soak.py``.

Same request shape as ``rtml.serving.service``'s ``POST /score`` (``{"transaction": {...}}`` validated by
the same pydantic model, ``rtml.serving.schemas``), same worker count (``RTML_SERVING_WORKERS``), same
traffic timeout; the answer is a constant ``Score``. What the real service costs on top of this is
its own work (Redis lookup, request features, model, prediction log, metrics).

    bentoml serve benchmarks.floor_service:FloorScorer --port 3101      (from the repository root)

``RTML_BENCH_TRACEMALLOC=1`` starts ``tracemalloc`` in the worker and adds ``GET /debug/memory``
(top allocation sites, gc object counts by type, gc pause statistics): used by the memory
investigation (``docs/serving-memory.md``). ``RTML_BENTOML_MEMORY_FIX`` = ``both`` (default: the
configuration and the patch of ``rtml.serving.bentoml_adapter``, as the real service), ``config``,
``patch`` or ``none`` (reproduces the growth).
"""

from __future__ import annotations

import os
from typing import Any

import bentoml

from rtml.serving.bentoml_adapter import SERVICE_CONFIG, apply_bentoml_memory_fix
from rtml.serving.schemas import Score, Transaction

# which part of the memory fix to apply: both (default, like the real service), config, patch, none
MEMORY_FIX = os.environ.get("RTML_BENTOML_MEMORY_FIX", "both")
if MEMORY_FIX in ("both", "patch"):
    apply_bentoml_memory_fix()
FIX_CONFIG = SERVICE_CONFIG if MEMORY_FIX in ("both", "config") else {}

WORKERS = int(os.environ.get("RTML_SERVING_WORKERS", "1"))

if os.environ.get("RTML_BENCH_TRACEMALLOC") == "1":
    import tracemalloc

    tracemalloc.start(int(os.environ.get("RTML_BENCH_TRACEMALLOC_FRAMES", "8")))


@bentoml.service(name="floor_scorer", workers=WORKERS, traffic={"timeout": 30}, **FIX_CONFIG)
class FloorScorer:
    def __init__(self) -> None:
        import gc
        import time

        self._gc_pauses: list[float] = []
        self._gc_started = 0.0

        def on_gc(phase: str, info: dict[str, Any]) -> None:
            if phase == "start":
                self._gc_started = time.perf_counter()
            elif info.get("generation") == 2:
                self._gc_pauses.append(time.perf_counter() - self._gc_started)

        gc.callbacks.append(on_gc)

    # async like FraudScorer's /score: runs on the event loop, no hop to BentoML's thread pool
    @bentoml.api(route="/score")
    async def score(self, transaction: Transaction) -> Score:
        return Score(
            transaction_id=transaction.transaction_id,
            fraud_probability=0.01,
            decision="approve",
            model_version="floor",
            features_missing=[],
            degraded=False,
            request_id="0",
        )

    @bentoml.api(route="/debug/memory")
    def debug_memory(self, top: int = 15) -> dict[str, Any]:
        """Allocation sites (tracemalloc, when enabled), gc object counts, full-collection pauses."""
        import collections
        import gc

        import psutil

        out: dict[str, Any] = {"rss_mib": psutil.Process().memory_info().rss / 2**20}
        counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
        out["gc_types"] = counts.most_common(top)
        out["gc_objects"] = sum(counts.values())
        out["otel_spans"] = counts.get("_Span", 0)
        out["gen2_pauses"] = len(self._gc_pauses)
        out["gen2_pause_max_ms"] = max(self._gc_pauses, default=0.0) * 1000
        out["gen2_pause_last_ms"] = (self._gc_pauses[-1] if self._gc_pauses else 0.0) * 1000
        try:
            import tracemalloc

            if tracemalloc.is_tracing():
                snap = tracemalloc.take_snapshot()
                out["tracemalloc_mib"] = tracemalloc.get_traced_memory()[0] / 2**20
                out["top_lines"] = [
                    [str(s.traceback[0]), s.size, s.count] for s in snap.statistics("lineno")[:top]
                ]
                out["top_traces"] = [
                    [s.traceback.format()[-12:], s.size, s.count] for s in snap.statistics("traceback")[:5]
                ]
        except Exception as exc:  # pragma: no cover - diagnostic only
            out["tracemalloc_error"] = repr(exc)
        return out

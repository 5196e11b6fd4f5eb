"""``rtml.serving.bentoml_adapter``: the scorer's one use of BentoML's private API (the timeout timer of
``bentoml._internal.server.http.traffic``, ``docs/serving-memory.md``). These tests fail, naming the
pinned version, when an upgrade of BentoML changes what the patch replaces: re-read ``traffic.py``, re-run
the memory benchmark of ``docs/serving-memory.md``, then update ``PATCHED_VERSIONS`` and
``TRAFFIC_SHA256`` (or drop the patch if BentoML cancels the timer itself)."""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path
from typing import Any

import bentoml
from bentoml._internal.server.http import traffic

from rtml.serving.bentoml_adapter import PATCHED_VERSIONS, TRAFFIC_SHA256, apply_bentoml_memory_fix

ROOT = Path(__file__).resolve().parents[1]


def test_the_pinned_bentoml_is_the_version_the_patch_was_checked_against() -> None:
    match = re.search(r'"bentoml==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert match, "pyproject.toml no longer pins bentoml exactly: the private-API patch needs a pin"
    pinned = match.group(1)
    assert bentoml.__version__ == pinned, f"bentoml {bentoml.__version__} installed, {pinned} pinned"
    assert pinned in PATCHED_VERSIONS, (
        f"bentoml {pinned} is pinned, but rtml/serving/bentoml_adapter.py's patch of "
        f"TimeoutMiddleware was checked against {PATCHED_VERSIONS} only: the service would run without it"
    )
    digest = hashlib.sha256(Path(traffic.__file__).read_bytes()).hexdigest()
    assert digest == TRAFFIC_SHA256, (
        f"bentoml {pinned}: bentoml/_internal/server/http/traffic.py is not the file the patch of "
        "rtml/serving/bentoml_adapter.py replaces (TRAFFIC_SHA256): re-check TimeoutMiddleware.__call__"
    )


def test_the_patch_cancels_the_timeout_timer_when_the_request_is_answered() -> None:
    assert apply_bentoml_memory_fix(), f"patch not applied on bentoml {bentoml.__version__}"
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def request() -> list[asyncio.TimerHandle]:
        loop = asyncio.get_running_loop()
        timers: list[asyncio.TimerHandle] = []
        call_later = loop.call_later

        def spy(*args: Any, **kwargs: Any) -> asyncio.TimerHandle:
            timers.append(call_later(*args, **kwargs))
            return timers[-1]

        loop.call_later = spy  # type: ignore[method-assign]
        await traffic.TimeoutMiddleware(app, timeout=30)({"type": "http"}, receive, send)
        return timers

    timers = asyncio.run(request())
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert len(timers) == 1 and timers[0].cancelled(), "the request's timer (and its context) outlives it"

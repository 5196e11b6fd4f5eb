"""The one place that touches BentoML's private API (``bentoml._internal.server.http.traffic``): the fix for
the per-request memory retention of BentoML 1.4.40 (see ``docs/serving-memory.md``). Kept because the
benchmark there shows it matters: with the configuration alone a worker still grows +7.9 MiB and +65k gc
objects per 30,000 requests, with the patch +0.9 MiB and none. ``tests/test_bentoml_adapter.py`` fails,
naming the pinned version, when an upgrade of BentoML changes what the patch replaces.

Cause, in short: BentoML's ``TimeoutMiddleware`` arms ``loop.call_later(traffic.timeout, ...)`` for
every request and never cancels it. The timer handle holds a copy of the request's ``contextvars``
context, which holds the request's OpenTelemetry span (the OTel ASGI middleware runs outside the
timeout middleware). BentoML's sampler records every span even at ``sample_rate`` 0
(``TraceIdRatioBasedAlwaysRecording`` → ``RECORD_ONLY``), so each one is a full SDK ``_Span`` (about
4.5 KB with its attributes, bounded lists, lock and context). Every request's span therefore lives
``traffic.timeout`` seconds after the response: ``rate x timeout`` spans alive at once (6,000 at
200 requests/s with the 30 s timeout, 30,000+ at full speed), memory climbing with the request rate
and the full garbage collections walking all of them.

Two parts, both applied by ``rtml.serving.service``:

* configuration, ``SERVICE_CONFIG`` — passed to ``@bentoml.service(**SERVICE_CONFIG, ...)``:
  ``tracing.excluded_urls`` lists the scoring routes, so the OTel middleware creates no span for them
  (no span is exported anyway: ``sample_rate`` is 0 and no exporter is configured). To trace them
  one day, drop the exclusion *and* keep the patch below;
* ``apply_bentoml_memory_fix()`` — cancels the timeout timer when the request finishes (a 10-line
  replacement of ``TimeoutMiddleware.__call__``, same behaviour otherwise; applied only to the
  BentoML versions it was checked against). Without it the (now small) context of each request
  still lives ``traffic.timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("rtml.serving")

# Routes the OpenTelemetry middleware must not create a span for (regular expressions searched in the
# request URL, as OTel's ExcludeList does). The probes and /metrics are cheap but just as frequent.
TRACING_EXCLUDED_URLS = [
    r"/score$",
    r"/score_batch$",
    r"/metrics$",
    r"/healthz$",
    r"/livez$",
    r"/readyz$",
]

# Keyword arguments for @bentoml.service (merge with the service's own: workers, traffic, http, ...).
SERVICE_CONFIG: dict[str, Any] = {"tracing": {"excluded_urls": TRACING_EXCLUDED_URLS}}

PATCHED_VERSIONS = ("1.4.40",)
TRAFFIC_SHA256 = "8c3d38ce4e1457e6b8d41be20de48378c4693376018b6df17c4d98b34000de2a"
"""SHA-256 of ``bentoml/_internal/server/http/traffic.py`` in those versions: the code the patch replaces
(``tests/test_bentoml_adapter.py`` compares it with the installed file)."""
_applied = False


def apply_bentoml_memory_fix() -> bool:
    """Cancel BentoML's per-request timeout timer once the request is answered. Idempotent; returns
    whether the patch is in place (False, with a warning, on an unchecked BentoML version)."""
    global _applied
    if _applied:
        return True
    import bentoml
    from bentoml._internal.server.http import traffic

    if bentoml.__version__ not in PATCHED_VERSIONS:
        log.warning(
            "bentoml %s: TimeoutMiddleware timer patch not applied (checked: %s); see docs/serving-memory.md",
            bentoml.__version__,
            ", ".join(PATCHED_VERSIONS),
        )
        return False

    from starlette.responses import JSONResponse

    async def __call__(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

        async def _send(message: Any) -> None:
            if not waiter.done():
                waiter.set_result(None)
            await send(message)

        fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
        try:
            await waiter
        except TimeoutError:
            if fut.cancel():
                resp = JSONResponse(
                    {"error": f"Not able to process the request in {self.timeout} seconds"},
                    status_code=504,
                )
                await resp(scope, receive, send)
        else:
            await fut  # wait for the future to finish
        finally:
            timer.cancel()  # the fix: handle and request context released now, not `timeout` s later

    traffic.TimeoutMiddleware.__call__ = __call__  # type: ignore[method-assign]
    _applied = True
    return True

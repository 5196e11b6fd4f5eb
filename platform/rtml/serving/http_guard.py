"""ASGI middleware of the scoring routes (``POST /score``, ``/score_batch``): what BentoML leaves open.

* **JSON only** (415): BentoML parses other content types itself and answers, e.g.,
  ``multipart/form-data`` without a boundary with a 500 (found by Schemathesis). No Content-Type is
  read as JSON, as BentoML does.
* **Body size** (413): a ``Content-Length`` over the limit is refused before a byte of the body is
  read; a body without one (chunked) is counted as it streams in and refused as soon as it passes the
  limit. Either way the connection is closed (``Connection: close``), so the server does not go on
  reading (and discarding) the rest. The body, at most the limit, is buffered here and handed to BentoML.
* **Client gone**: a client that disconnects before its body is read is not answered
  (``on_abandoned``); once the body is read, a watcher task waits for the client to disconnect and
  sets the request's ``gone`` event (``client_gone()`` in the handler), which the micro-batcher checks
  before it scores a waiting request (``batching.MicroBatcher``).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import Any

from starlette.responses import JSONResponse

_CLIENT_GONE: contextvars.ContextVar[asyncio.Event | None] = contextvars.ContextVar(
    "rtml_client_gone", default=None
)


def client_gone() -> asyncio.Event | None:
    """The current scoring request's disconnect event (None outside the middleware)."""
    return _CLIENT_GONE.get()


class ScoringRequestGuard:
    ROUTES = ("/score", "/score_batch")

    def __init__(self, app: Any, max_body_bytes: int, on_abandoned: Callable[[], None] | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.on_abandoned = on_abandoned

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if not (
            scope["type"] == "http" and scope.get("method") == "POST" and scope.get("path") in self.ROUTES
        ):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        media_type = headers.get(b"content-type", b"").decode("latin-1").split(";", 1)[0].strip().lower()
        if media_type not in ("", "application/json"):
            await _refuse(
                415, f"Content-Type must be application/json, not {media_type!r}", scope, receive, send
            )
            return
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large(f"Content-Length {int(declared)}", scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":  # the client left: nothing to score, no one to answer
                if self.on_abandoned is not None:
                    self.on_abandoned()
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._too_large(f"more than {self.max_body_bytes} bytes", scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self._forward(b"".join(chunks), scope, receive, send)

    async def _forward(self, body: bytes, scope: Any, receive: Any, send: Any) -> None:
        gone = asyncio.Event()
        sent = False

        async def replay() -> Any:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.ensure_future(watch())
        token = _CLIENT_GONE.set(gone)
        try:
            await self.app(scope, replay, send)
        finally:
            _CLIENT_GONE.reset(token)
            watcher.cancel()

    async def _too_large(self, what: str, scope: Any, receive: Any, send: Any) -> None:
        message = (
            f"request body too large ({what}); at most {self.max_body_bytes} bytes "
            "(RTML_SERVING_MAX_BODY_BYTES): send fewer transactions per /score_batch request"
        )
        await _refuse(413, message, scope, receive, send)


async def _refuse(status: int, message: str, scope: Any, receive: Any, send: Any) -> None:
    # Connection: close — the server stops reading a body it will not use, instead of draining it
    response = JSONResponse({"error": message}, status_code=status, headers={"Connection": "close"})
    await response(scope, receive, send)

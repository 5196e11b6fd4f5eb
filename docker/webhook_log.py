"""The compose stack's stand-in webhook receiver (service ``notify``): Alertmanager's alerts
(``/alerts``) and the platform's notices (``RTML_ALERT_WEBHOOK_URL``, default ``/notices``) are printed
as one JSON line each, so ``docker compose logs -f notify`` shows every notification. Point Alertmanager
and ``ALERT_WEBHOOK_URL`` at a real receiver (chat, paging) for anything beyond one machine.

Standard library only; ``GET /`` answers 200 for the healthcheck.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 1 << 20  # Alertmanager batches are small; refuse anything absurd


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.send_error(413)
            return
        raw = self.rfile.read(length)
        try:
            body: object = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", errors="replace")
        line = {"received": datetime.now(UTC).isoformat(), "path": self.path, "body": body}
        print(json.dumps(line), flush=True)
        self._answer(200, b'{"ok": true}\n')

    def do_GET(self) -> None:
        self._answer(200, b'{"ok": true}\n')

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # the JSON lines are the log


def main() -> None:
    # an explicit handler: as a container's PID 1, or started with SIGTERM ignored, the default would
    # leave `docker compose stop` (and tests) waiting for a kill
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    port = int(os.environ.get("WEBHOOK_PORT", "8765"))
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    print(f"webhook receiver on :{port} (POST bodies are printed as JSON lines)", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

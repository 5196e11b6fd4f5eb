"""The feature catalogue: the dbt docs site (descriptions, meta, lineage of every feature)."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

from rtml.features.dbt import run_dbt, target_dir


def generate_docs(database_url: str) -> Path:
    """Run ``dbt docs generate`` (reads column types from the database); returns ``target/``."""
    run_dbt(["docs", "generate"], database_url)
    return target_dir()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def docs_server(port: int = 8080, host: str = "127.0.0.1") -> http.server.ThreadingHTTPServer:
    """An HTTP server for the generated site (``target/index.html`` + manifest and catalog JSON).
    Not started: call ``serve_forever()`` (or use :func:`serve_docs`)."""
    site = target_dir()
    if not (site / "index.html").exists():
        raise FileNotFoundError(f"{site / 'index.html'} missing: run generate_docs() first")
    handler = functools.partial(_QuietHandler, directory=str(site))
    return http.server.ThreadingHTTPServer((host, port), handler)


def serve_docs(
    port: int = 8080, host: str = "127.0.0.1", *, background: bool = False
) -> http.server.ThreadingHTTPServer:
    """Serve the catalogue on ``http://host:port/``; blocks unless ``background`` (then a daemon thread
    serves and the caller stops it with ``server.shutdown()``)."""
    server = docs_server(port, host)
    if background:
        threading.Thread(target=server.serve_forever, name="dbt-docs", daemon=True).start()
    else:
        try:
            server.serve_forever()
        finally:
            server.server_close()
    return server

"""The PostgreSQL and Redis a benchmark runs against: the ones it is given when both answer, else
embedded ones in a temporary folder (the local stack ``rtml up`` starts), stopped at the end. A fresh
clone needs no server of its own (issue 20: every benchmark provisions what it needs)."""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from rtml.config import ServicesSettings, Settings, StackSettings
from rtml.stack import postgres
from rtml.stack import redis as redis_service
from rtml.stack.local import LocalStack
from rtml.stack.processes import free_port

DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"


@contextlib.contextmanager
def servers(database_url: str = DATABASE_URL, redis_url: str = REDIS_URL) -> Iterator[tuple[str, str]]:
    """(PostgreSQL URL, Redis URL) for the benchmark's own databases and keys."""
    if postgres.answers(database_url) and redis_service.answers(redis_url):
        yield database_url, redis_url
        return
    with tempfile.TemporaryDirectory(prefix="rtml-bench-stack-") as folder:
        local = LocalStack(
            Settings(
                # embedded ones, whatever RTML_DATABASE_URL / RTML_REDIS_URL say (they did not answer)
                services=ServicesSettings(data_dir=Path(folder), database_url=None, redis_url=None),
                stack=StackSettings(mlflow_port=free_port()),
            )
        )
        info = local.up()
        print(f"no server at {database_url} / {redis_url}: embedded ones in {folder}", file=sys.stderr)
        try:
            yield info.database_url, info.redis_url
        finally:
            local.down()

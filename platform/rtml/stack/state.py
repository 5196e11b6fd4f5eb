"""The state file of the embedded servers, so that `rtml down` / `status` in another process find them."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from rtml.config import Settings


@dataclass
class EmbeddedServer:
    """One server that `rtml up` started: enough to reach it, recognise it and stop it."""

    pid: int
    url: str
    data_dir: str  # also the marker in its command line that guards against pid reuse (for MLflow: the
    # artifacts URI, the part of its command line that names the data directory)
    log: str


@dataclass
class StackState:
    postgres: EmbeddedServer | None = None
    redis: EmbeddedServer | None = None
    mlflow: EmbeddedServer | None = None

    @classmethod
    def load(cls, path: Path) -> StackState:
        if not path.exists():
            return cls()
        raw = json.loads(path.read_text())
        return cls(
            postgres=EmbeddedServer(**raw["postgres"]) if raw.get("postgres") else None,
            redis=EmbeddedServer(**raw["redis"]) if raw.get("redis") else None,
            mlflow=EmbeddedServer(**raw["mlflow"]) if raw.get("mlflow") else None,
        )

    def save(self, path: Path) -> None:
        if self.postgres is None and self.redis is None and self.mlflow is None:
            path.unlink(missing_ok=True)
            return
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive inter-process lock: two `rtml up` at once must not start two servers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def record_live_start(settings: Settings) -> None:
    """Fix a live ``sim_start`` (left unset) for this data directory the first time its stack starts, so
    that partitions stay the same across restarts and every process reads the same start (a pinned one
    is never recorded). The value is the caller's, which it computed as the current hour minus
    ``demo_days``."""
    if not settings.simulator.start_is_live or settings.services.live_window_file.exists():
        return
    settings.services.live_window_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = settings.services.live_window_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"sim_start": settings.simulator.start.isoformat()}) + "\n")
    os.replace(tmp, settings.services.live_window_file)

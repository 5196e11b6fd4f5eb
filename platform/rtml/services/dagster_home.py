"""DAGSTER_HOME: a dagster.yaml with run, event and schedule storage in PostgreSQL (dagster-postgres).

Written as YAML text: the core library does not import Dagster.
"""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy.engine import make_url


def dagster_postgres_url(url: str) -> str:
    """The URL with an explicit psycopg2 driver: dagster-postgres breaks on psycopg 3 (STACK.md), which
    SQLAlchemy 2.1 would pick for a bare ``postgresql://``. Unix-socket URLs (``?host=/dir``) work as is."""
    return make_url(url).set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)


def dagster_yaml(postgres_url: str, dagster_home: Path) -> str:
    # json.dumps gives double-quoted strings, which are valid YAML scalars whatever the characters.
    return (
        "# Written by `rtml up` (rtml.services.dagster_home); rewritten on every `rtml up`.\n"
        "storage:\n"
        "  postgres:\n"
        f"    postgres_url: {json.dumps(dagster_postgres_url(postgres_url))}\n"
        "local_artifact_storage:\n"
        "  module: dagster._core.storage.root\n"
        "  class: LocalArtifactStorage\n"
        "  config:\n"
        f"    base_dir: {json.dumps(str(dagster_home / 'storage'))}\n"
        "telemetry:\n"
        "  enabled: false\n"
    )


def write_dagster_yaml(dagster_home: Path, postgres_url: str) -> Path:
    """Write ``<dagster_home>/dagster.yaml`` (only when its content changes, so a running Dagster does
    not see a modified file for nothing)."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    path = dagster_home / "dagster.yaml"
    text = dagster_yaml(postgres_url, dagster_home)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path

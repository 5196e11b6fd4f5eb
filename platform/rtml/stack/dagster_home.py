"""DAGSTER_HOME: a dagster.yaml with run, event and schedule storage in PostgreSQL (dagster-postgres), and
run monitoring that marks a run failed when its worker is gone.

Written as YAML text: the core library does not import Dagster.
"""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy.engine import make_url

# Dagster's DefaultRunLauncher (runs execute as processes of the code server that launched them) plus
# the worker health check that run monitoring needs and DefaultRunLauncher lacks.
RUN_LAUNCHER = ("rtml.defs.automation.runs", "MonitoredRunLauncher")
RUN_START_TIMEOUT_S = 180  # a launched run whose worker never reports STARTED is failed
RUN_CANCEL_TIMEOUT_S = 60  # a run stuck in CANCELING (its worker died first) is marked canceled


def dagster_postgres_url(url: str) -> str:
    """The URL with an explicit psycopg2 driver: dagster-postgres breaks on psycopg 3 (STACK.md), which
    SQLAlchemy 2.1 would pick for a bare ``postgresql://``. Unix-socket URLs (``?host=/dir``) work as is."""
    return make_url(url).set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)


def dagster_yaml(postgres_url: str, dagster_home: Path, monitoring_interval_s: int = 30) -> str:
    # json.dumps gives double-quoted strings, which are valid YAML scalars whatever the characters.
    module, cls = RUN_LAUNCHER
    return (
        "# Written by `rtml up` (rtml.stack.dagster_home); rewritten on every `rtml up`.\n"
        "storage:\n"
        "  postgres:\n"
        f"    postgres_url: {json.dumps(dagster_postgres_url(postgres_url))}\n"
        "local_artifact_storage:\n"
        "  module: dagster._core.storage.root\n"
        "  class: LocalArtifactStorage\n"
        "  config:\n"
        f"    base_dir: {json.dumps(str(dagster_home / 'storage'))}\n"
        "run_launcher:\n"
        f"  module: {module}\n"
        f"  class: {cls}\n"
        "# The daemon checks every in-flight run: one whose worker is gone (its code server crashed or was\n"
        "# killed) is marked failed, so no partition is left half-built behind a run shown as STARTED.\n"
        "run_monitoring:\n"
        "  enabled: true\n"
        f"  poll_interval_seconds: {int(monitoring_interval_s)}\n"
        f"  start_timeout_seconds: {RUN_START_TIMEOUT_S}\n"
        f"  cancel_timeout_seconds: {RUN_CANCEL_TIMEOUT_S}\n"
        "  max_resume_run_attempts: 0  # failed, not resumed: the launcher cannot resume a run\n"
        "telemetry:\n"
        "  enabled: false\n"
    )


def write_dagster_yaml(dagster_home: Path, postgres_url: str, monitoring_interval_s: int = 30) -> Path:
    """Write ``<dagster_home>/dagster.yaml`` (only when its content changes, so a running Dagster does
    not see a modified file for nothing)."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    path = dagster_home / "dagster.yaml"
    text = dagster_yaml(postgres_url, dagster_home, monitoring_interval_s)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path

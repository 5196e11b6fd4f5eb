"""Running the dbt project (``dbt_project/``) against the platform database.

dbt reads its connection from environment variables (``dbt_project/profiles.yml``); :func:`dbt_env`
derives them from the platform's psycopg URL, including the embedded PostgreSQL's Unix-socket form
``postgresql://postgres:@/rtml?host=/path/to/socket``.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

PROJECT_DIR = Path(__file__).resolve().parents[3] / "dbt_project"
"""The dbt project (``dbt_project/`` at the repository root)."""


def project_dir() -> Path:
    """The dbt project folder; ``RTML_DBT_PROJECT_DIR`` overrides it (an installed wheel has no repo)."""
    return Path(os.environ.get("RTML_DBT_PROJECT_DIR") or PROJECT_DIR)


def target_dir() -> Path:
    """The project's ``target/``; ``DBT_TARGET_PATH`` (dbt's own variable) moves it, a relative one from
    the project's folder as dbt reads it. Tests that build other databases use their own, so the
    platform's manifest always names the platform database."""
    return project_dir() / (os.environ.get("DBT_TARGET_PATH") or "target")


INVOCATIONS_KEPT = 24
"""dbt commands of a Dagster dbt asset whose folders are kept (see :func:`prune_invocations`)."""


def prune_invocations(folder: Path, prefix: str, keep: int = INVOCATIONS_KEPT) -> list[Path]:
    """Remove all but the newest ``keep`` folders ``<prefix>-*`` in ``folder``; the removed ones.

    dagster-dbt gives every dbt command a Dagster run makes a folder of its own in ``target/``
    (``<asset>-<run id>-<random>``: its manifest, compiled SQL, results and debug log, about 4 MB) and
    never removes it: the hourly refresh alone left about 180 MB a day. The newest stay for whoever
    investigates a run; a folder still being written is among them (its command started last)."""

    def modified(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except FileNotFoundError:  # removed meanwhile by another run's prune
            return float("-inf")

    folders = sorted((path for path in folder.glob(f"{prefix}-*") if path.is_dir()), key=modified)
    old = folders[: max(len(folders) - keep, 0)]
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
    return old


def manifest_path() -> Path:
    return target_dir() / "manifest.json"


# dbt must never try to reach PyPI or the telemetry endpoint from here (STACK.md: known traps).
QUIET_ENV = {
    "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    "DBT_VERSION_CHECK": "false",
    "DO_NOT_TRACK": "1",
}


def dbt_env(database_url: str, *, threads: int | None = None) -> dict[str, str]:
    """Environment variables for ``profiles.yml`` from a psycopg/libpq URL.

    ``postgresql://user:pw@host:5432/db`` and the socket form ``postgresql://user:@/db?host=/socket/dir``
    are both understood; a ``host`` query parameter wins over the URL's host (libpq's rule).
    """
    parts = urlsplit(database_url)
    if parts.scheme.split("+")[0] not in {"postgresql", "postgres"}:
        raise ValueError(f"not a PostgreSQL URL: {parts.scheme}://...")
    query = parse_qs(parts.query)
    host = query.get("host", [parts.hostname or ""])[0] or "127.0.0.1"
    port = query.get("port", [str(parts.port or 5432)])[0]
    env = {
        "DBT_HOST": unquote(host),
        "DBT_PORT": str(port),
        "DBT_USER": unquote(parts.username or query.get("user", ["postgres"])[0]),
        "DBT_PASSWORD": unquote(parts.password or query.get("password", [""])[0]),
        "DBT_DBNAME": unquote(parts.path.lstrip("/") or query.get("dbname", ["postgres"])[0]),
        "DBT_PROFILES_DIR": str(project_dir()),
        "DBT_PROJECT_DIR": str(project_dir()),
        **QUIET_ENV,
    }
    if threads is not None:
        env["DBT_THREADS"] = str(threads)
    return env


def dbt_executable() -> str:
    """The ``dbt`` next to the running interpreter (the venv's), else whatever is on PATH."""
    candidate = Path(sys.executable).with_name("dbt")
    return str(candidate) if candidate.exists() else "dbt"


def dbt_vars(values: Mapping[str, Any]) -> list[str]:
    """``--vars`` arguments (JSON is valid YAML); empty when there is nothing to pass."""
    clean = {key: value for key, value in values.items() if value is not None}
    return ["--vars", json.dumps(clean, default=str)] if clean else []


WINDOW_ENV = {"min_ts": "RTML_DBT_MIN_TS", "max_ts": "RTML_DBT_MAX_TS"}
"""Environment variables the incremental models read their event-time window from (macro
``window_bound``) when the vars ``min_ts``/``max_ts`` are unset."""


def window_env(min_ts: Any, max_ts: Any) -> dict[str, str]:
    """The run window as environment variables instead of ``--vars``.

    A changed ``--vars`` value invalidates dbt's partial parsing (a full re-parse, ~8 s); these
    variables are read only at execution time, so an hourly run keeps the saved parse.
    """
    values = {"min_ts": min_ts, "max_ts": max_ts}
    return {
        WINDOW_ENV[key]: (v.isoformat() if hasattr(v, "isoformat") else str(v)) for key, v in values.items()
    }


_IN_PROCESS = threading.Lock()
"""dbt's programmatic runner is not re-entrant (global flags, adapters, invocation context): one
invocation at a time per process."""


def run_dbt(
    args: Sequence[str],
    database_url: str,
    *,
    check: bool = True,
    extra_env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run one dbt command in the project with the connection from ``database_url``.

    It runs in this process through dbt's programmatic API (``dbtRunner``): a ``dbt`` process pays
    3.5-5 s of imports per command before any work, this process pays them once. dbt reads its
    connection and flags from the environment (``profiles.yml``, ``env_var()``, ``DBT_*`` flags), so
    the variables are set for the invocation and restored after it. The result has the shape of a
    finished ``dbt`` process: exit code 0 (success), 1 (a model or test failed) or 2 (dbt could not
    run), and the log lines a terminal would show as ``stdout``.
    """
    from dbt.cli.main import dbtRunner
    from dbt_common.events.base_types import EventMsg

    from rtml.features.dbt_internals import stop_flag_source_stack_walk

    stop_flag_source_stack_walk()  # dbt-common would walk the whole stack's source for every flag

    command = ["--no-version-check", "--log-level", "none", *args]
    lines: list[str] = []

    def collect(event: EventMsg) -> None:
        text: str = event.info.msg  # type: ignore[attr-defined]  # the message's field; dbt's Protocol omits it
        if text and event.info.level in {"info", "warn", "error"}:
            lines.append(text)

    with _IN_PROCESS, _environment({**dbt_env(database_url), **(extra_env or {})}):
        result = dbtRunner(callbacks=[collect]).invoke(command)
    if result.exception is not None:
        lines.append(f"{type(result.exception).__name__}: {result.exception}")
    returncode = 0 if result.success else (2 if result.exception is not None else 1)
    output = "\n".join(lines)
    if check and returncode != 0:
        raise RuntimeError(f"dbt {' '.join(args)} failed ({returncode}):\n{output[-6000:]}")
    return subprocess.CompletedProcess(["dbt", *command], returncode, output, "")


@contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


SOURCE_FOLDERS = ("models", "macros", "tests", "seeds", "snapshots", "analyses")


def manifest_is_stale(path: Path) -> bool:
    """Whether a project file is newer than the manifest (after a ``git pull``, an edit): a stale
    manifest lacks new tests, and Dagster then fails on the events of tests it does not know."""
    built = path.stat().st_mtime
    root = project_dir()
    files = [
        root / "dbt_project.yml",
        *(f for d in SOURCE_FOLDERS for f in (root / d).rglob("*") if f.is_file()),
    ]
    return any(f.stat().st_mtime > built for f in files if f.exists())


def ensure_manifest(database_url: str | None = None, *, force: bool = False) -> Path:
    """``target/manifest.json``, running ``dbt parse`` first when it is missing or older than a project
    file (or ``force``).

    Parsing needs no database connection; a placeholder URL is used when none is given. One process
    at a time (a lock file in ``target/``): processes loading the definitions together (test workers, a
    code server beside a CLI) would otherwise each parse, and one could read the manifest while another
    writes it. The check is repeated under the lock, so the others find it fresh and do not parse again.
    """
    path = manifest_path()
    if not force and path.exists() and not manifest_is_stale(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / ".rtml-parse.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if force or not path.exists() or manifest_is_stale(path):
            run_dbt(["parse"], database_url or "postgresql://postgres@127.0.0.1:5432/rtml")
    return path

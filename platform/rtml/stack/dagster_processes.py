"""The Dagster webserver and daemon of the local stack, as child processes in sessions of their own.

They are started directly rather than through ``dagster dev``, which ignores SIGTERM when run in the
background (STACK.md). Each one starts a code server (``dagster api grpc``) that launches the runs as
processes of its own (run workers; their step workers are processes of those): all stay in the session
of the webserver or daemon, which is how ``stop`` finds them (``rtml.stack.processes.Sessions``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path

from rtml.stack.processes import Sessions, spawn

CODE_LOCATION = "rtml.definitions"


def dagster_env(
    dagster_home: Path, database_url: str, redis_url: str, sim_start: datetime | None = None
) -> dict[str, str]:
    """Environment for every Dagster process: the same home and servers as the caller, and its
    ``sim_start`` (explicit: the partitions of every process start there, live or pinned)."""
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "RTML_DATABASE_URL": database_url,
        "RTML_REDIS_URL": redis_url,
    }
    if sim_start is not None:
        env["RTML_SIM_START"] = sim_start.isoformat()
    return env


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def start_webserver(env: dict[str, str], port: int, log_dir: Path) -> subprocess.Popen[bytes]:
    command = [_bin("dagster-webserver"), "-m", CODE_LOCATION, "-h", "127.0.0.1", "-p", str(port)]
    return spawn(command, env, log_dir / "dagster-webserver.log")


def start_daemon(env: dict[str, str], log_dir: Path) -> subprocess.Popen[bytes]:
    return spawn([_bin("dagster-daemon"), "run", "-m", CODE_LOCATION], env, log_dir / "dagster-daemon.log")


def wait_for_http(url: str, process: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
    """Wait until ``url`` answers 200, failing early (with the log hint) if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with code {process.returncode}; see its log")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def stop(processes: list[subprocess.Popen[bytes]], timeout: float = 10.0) -> list[int]:
    """Stop the processes and everything in their sessions (code servers, runs): SIGTERM, then SIGKILL
    after ``timeout`` s. Returns the pids that had to be killed."""
    return Sessions(processes).stop(timeout)

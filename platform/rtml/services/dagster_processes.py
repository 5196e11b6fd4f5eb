"""The Dagster webserver and daemon of the local stack, as child processes stopped by process id.

They are started directly rather than through ``dagster dev``, which ignores SIGTERM when run in the
background (STACK.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CODE_LOCATION = "rtml.definitions"


def dagster_env(dagster_home: Path, database_url: str, redis_url: str) -> dict[str, str]:
    """Environment for every Dagster process: the same home and servers as the caller."""
    return {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "RTML_DATABASE_URL": database_url,
        "RTML_REDIS_URL": redis_url,
    }


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def start_webserver(env: dict[str, str], port: int, log_dir: Path) -> subprocess.Popen[bytes]:
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "dagster-webserver.log", "ab") as log:
        return subprocess.Popen(
            [_bin("dagster-webserver"), "-m", CODE_LOCATION, "-h", "127.0.0.1", "-p", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def start_daemon(env: dict[str, str], log_dir: Path) -> subprocess.Popen[bytes]:
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "dagster-daemon.log", "ab") as log:
        return subprocess.Popen(
            [_bin("dagster-daemon"), "run", "-m", CODE_LOCATION],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


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


def stop(processes: list[subprocess.Popen[bytes]], timeout: float = 15.0) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

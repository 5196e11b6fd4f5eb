"""The MLflow tracking server of the local stack: ``mlflow server`` in its own session, stopped by pid.

Its backend store (runs and model registry) is the ``mlflow`` database on the stack's PostgreSQL; its
artifacts live under ``<data dir>/mlflow-artifacts`` and are served through the server
(``--serve-artifacts``), so a client needs nothing but the server's URL.

``mlflow server`` is a launcher: it migrates the database, then runs ``python -m uvicorn`` as a child and
forwards SIGTERM/SIGINT to it. The launcher's pid is recorded; stopping stops the child too. The
launcher's command line names the artifacts URI, which is the marker that tells our server from a reused
pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from rtml.stack.dagster_processes import wait_for_http
from rtml.stack.processes import port_free, stop_tree
from rtml.stack.state import EmbeddedServer

HOST = "127.0.0.1"

# Light and offline: no usage telemetry; no job runner (a huey consumer process for GenAI scorers and
# trace roll-ups, which the model registry does not need).
SERVER_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}

# The launchers this process started: kept so that they are reaped once stopped (no zombie, no
# "subprocess is still running" warning when a Popen object is collected while its server runs on).
_launched: dict[int, subprocess.Popen[bytes]] = {}


class MlflowServerError(RuntimeError):
    pass


def server_url(port: int) -> str:
    return f"http://{HOST}:{port}"


def port_of(url: str) -> int | None:
    return urlsplit(url).port


def marker(artifacts_dir: Path) -> str:
    """What the launcher's command line contains: the artifacts destination of this data directory."""
    return artifacts_dir.as_uri()


def answers(url: str, timeout: float = 2.0) -> bool:
    """Whether the tracking server at ``url`` answers its health check."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):
        return False


def command(port: int, artifacts_dir: Path) -> list[str]:
    """The backend store URI goes in the environment (``server_env``): it may hold a password, and a
    command line is visible to every user of the machine."""
    return [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--host", HOST,
        "--port", str(port),
        "--serve-artifacts",
        "--artifacts-destination", marker(artifacts_dir),
        "--workers", "1",
    ]  # fmt: skip


def server_env(backend_store_uri: str) -> dict[str, str]:
    return {
        **os.environ,
        **SERVER_ENV,
        "MLFLOW_BACKEND_STORE_URI": backend_store_uri,  # = --backend-store-uri
        "MLFLOW_REGISTRY_STORE_URI": backend_store_uri,  # the model registry in the same database
    }


def start(
    backend_store_uri: str, port: int, artifacts_dir: Path, log: Path, cwd: Path, timeout: float = 120.0
) -> EmbeddedServer:
    """Start the server in its own session (it outlives this process) and wait until it answers.

    ``cwd``, the data directory, is where stray files would land, and how a leftover process is found."""
    if not port_free(port, HOST):
        raise MlflowServerError(
            f"port {port} on {HOST} is taken by another program, so the MLflow server cannot start there.\n"
            "  fix: set RTML_MLFLOW_PORT to a free port, or RTML_MLFLOW_TRACKING_URI to use a running "
            "MLflow server."
        )
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as log_handle:
        process = subprocess.Popen(
            command(port, artifacts_dir),
            stdin=subprocess.DEVNULL,
            stdout=log_handle,
            stderr=subprocess.STDOUT,
            env=server_env(backend_store_uri),
            cwd=cwd,
            start_new_session=True,  # not stopped by a Ctrl-C meant for `rtml up` / `rtml demo`
        )
    _launched[process.pid] = process
    url = server_url(port)
    try:
        wait_for_http(f"{url}/health", process, timeout)
    except (RuntimeError, TimeoutError) as exc:
        stop(process.pid)
        raise MlflowServerError(
            f"the MLflow server failed to start on {HOST}:{port}: {exc}\n"
            f"  log: {log}\n"
            "  fix: read the log; or set RTML_MLFLOW_TRACKING_URI to use a running MLflow server."
        ) from exc
    return EmbeddedServer(pid=process.pid, url=url, data_dir=marker(artifacts_dir), log=str(log))


def running(artifacts_dir: Path, home: Path) -> list[int]:
    """Pids of our live server processes, launchers first: a launcher names ``artifacts_dir`` in its
    command line; its uvicorn worker (orphaned if the launcher was killed) runs ``mlflow.server`` in
    ``home``."""
    needle = marker(artifacts_dir)
    launchers, workers = [], []
    for process in psutil.process_iter(["cmdline", "cwd", "status"]):
        if process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        command_line = " ".join(process.info["cmdline"] or [])
        if needle in command_line:
            launchers.append(process.pid)
        elif process.info["cwd"] == str(home) and "mlflow.server" in command_line:
            workers.append(process.pid)
    return launchers + workers


def stop(pid: int) -> None:
    """Stop the launcher ``pid`` and its server process. SIGTERM: the launcher forwards it to uvicorn,
    which shuts down gracefully."""
    stop_tree(pid, signal.SIGTERM)
    process = _launched.pop(pid, None)
    if process is not None:
        process.wait(timeout=5)  # reap it
    for launched_pid, launched in list(_launched.items()):  # and any launcher that died otherwise
        if launched.poll() is not None:
            del _launched[launched_pid]

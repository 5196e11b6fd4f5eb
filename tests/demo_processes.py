"""The processes a running ``rtml demo`` started, found from outside it (a process the demo orphaned
included): ``tests/test_demo_lifecycle.py`` lists them, ``benchmarks/demo_lifecycle.py`` counts them."""

from __future__ import annotations

import subprocess
from contextlib import suppress

import psutil


def started_by(
    demo: subprocess.Popen[bytes], dagster_home: str, seen: dict[int, psutil.Process]
) -> list[psutil.Process]:
    """The live processes ``demo`` started: its descendants now or ``seen`` before (an orphan is no
    descendant any more), and any process whose environment names its DAGSTER_HOME (an orphan started
    after we last looked)."""
    with suppress(psutil.Error):
        for child in psutil.Process(demo.pid).children(recursive=True):
            seen.setdefault(child.pid, child)
    for process in psutil.process_iter():
        with suppress(psutil.Error, OSError):
            if process.pid not in seen and process.environ().get("DAGSTER_HOME") == dagster_home:
                seen[process.pid] = process
    return [process for process in seen.values() if alive(process)]


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False

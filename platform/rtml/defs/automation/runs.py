"""Runs whose worker is gone: found, and marked failed (or canceled), so that no run shows STARTED forever
over a partition it left half-built (``incomplete_partitions_sensor`` then rebuilds the partition).

Runs launched by the daemon or the UI execute as processes of the code server that launched them
(Dagster's ``DefaultRunLauncher``). A run worker killed under a live code server is reported failed by
that code server (within half a second). But when the code server dies too (killed, out of memory, a
machine that went down), nothing reports the run's end. Dagster's run monitoring (enabled in the
dagster.yaml that ``rtml up`` writes) checks in-flight runs by asking the run launcher whether a run's
worker is alive, which ``DefaultRunLauncher`` cannot answer. ``MonitoredRunLauncher`` answers it: it asks
the code server named in the run's ``.dagster/grpc_info`` tag which runs it executes. A run it no longer
executes is a dead worker, and so is one whose code server is gone, unless the worker outlived it (on
this machine, by its pid); run monitoring then marks the run failed.

A run executed by a CLI process (``dagster asset materialize`` of the demo's bootstrap, ``rtml backfill``)
has no code server to ask, only the pid in its event log, which says nothing about a process on another
machine; such runs are left to the command that started them: ``rtml demo`` cancels them on Ctrl-C
(``cancel_runs``).

The daemon runs the check when it starts and every ``run_monitoring_interval_s``; ``rtml demo`` runs it
once more when it stops (``mark_dead_runs``), for the runs whose workers it had to kill.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Collection, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass

import dagster as dg
import grpc
import psutil

from rtml.defs.dagster_internals import (
    GRPC_INFO_TAG,
    CheckRunHealthResult,
    DagsterUserCodeUnreachableError,
    WorkerStatus,
    current_runs,
)
from rtml.stack.processes import pid_alive

IN_FLIGHT = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


class MonitoredRunLauncher(dg.DefaultRunLauncher):
    """Dagster's ``DefaultRunLauncher`` with the worker health check that run monitoring calls."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        verdict = code_server_verdict(run, worker_pid(self._instance, run.run_id))
        return verdict or CheckRunHealthResult(
            WorkerStatus.RUNNING, "not launched through a code server: its worker cannot be checked here"
        )


def code_server_verdict(run: dg.DagsterRun, pid: int | None) -> CheckRunHealthResult | None:
    """Whether the run's worker is alive, by the code server that launched it (None: none launched it).

    Unreachable means gone (a refused connection, a socket file that no longer exists); a code server
    that does not answer in time (busy, or stopped by a debugger) is given the benefit of the doubt. A
    worker can outlive its code server (it is a process of its own): one on a Unix socket is on this
    machine, so its worker's pid (``pid``) tells whether it still runs."""
    server = CodeServer.of(run)
    if server is None:
        return None
    where = server.address
    try:
        executing = server.current_runs()
    except DagsterUserCodeUnreachableError as error:
        cause = error.__cause__
        if not (isinstance(cause, grpc.RpcError) and cause.code() == grpc.StatusCode.UNAVAILABLE):
            return CheckRunHealthResult(
                WorkerStatus.RUNNING, f"its code server ({where}): {error}", transient=True
            )
        if server.socket and pid_alive(pid):
            return CheckRunHealthResult(
                WorkerStatus.RUNNING, f"its code server is gone, its worker {pid} runs"
            )
        return CheckRunHealthResult(WorkerStatus.NOT_FOUND, f"its code server ({where}) is gone")
    if run.run_id in executing:
        return CheckRunHealthResult(WorkerStatus.RUNNING, f"executed by its code server ({where})")
    return CheckRunHealthResult(WorkerStatus.NOT_FOUND, f"its code server ({where}) no longer executes it")


def worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The pid of the run's main process, from the first engine event that records one ("Started process
    for run (pid: N)" of a code server's run worker; "parent process (pid: N)" of a CLI run's executor)."""
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        event = entry.dagster_event
        data = event.engine_event_data if event else None
        if data is not None and "pid" in data.metadata:
            return int(str(data.metadata["pid"].value))
    return None


def cancel_runs(instance: dg.DagsterInstance, processes: Sequence[psutil.Process]) -> list[str]:
    """Ask the in-flight runs that ``processes`` execute to stop, as the UI's Terminate does: through the
    code server that launched the run; else (a run of a CLI process, or one whose code server is gone) by
    marking it canceling and interrupting its worker, the Ctrl-C Dagster expects: it then stops the
    steps and records the run as canceled. Returns the ids of those runs."""
    pids = {process.pid for process in processes}
    command_lines = [" ".join(_command_line(process)) for process in processes]
    canceled = []
    for run in _in_flight(instance):
        pid = worker_pid(instance, run.run_id)
        server = CodeServer.of(run)
        ours = pid in pids or (server is not None and any(server.marker in line for line in command_lines))
        if not ours:
            continue
        canceled.append(run.run_id)
        if server is not None:
            with suppress(DagsterUserCodeUnreachableError):  # its code server is gone
                if instance.run_launcher.terminate(run.run_id):  # marks it canceling, interrupts the worker
                    continue
        else:
            instance.report_run_canceling(run, message="Canceling: the process running it is stopping.")
        if pid is not None and pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
    return canceled


def all_finished(instance: dg.DagsterInstance, run_ids: Collection[str]) -> bool:
    return all((run := instance.get_run_by_id(run_id)) is None or run.is_finished for run_id in run_ids)


def mark_dead_runs(
    instance: dg.DagsterInstance, gone: Collection[int] = (), how: str = "ended", stopped: bool = False
) -> list[str]:
    """Mark every in-flight run whose worker is gone and return their ids: a run whose worker is one of
    the processes ``gone`` (which ``how`` ended), or whose code server is gone or no longer executes it.
    Canceled if it was being canceled, or ``stopped`` (its worker was stopped on purpose); failed
    otherwise, which notifies like any failed run."""
    marked = []
    for run in _in_flight(instance):
        pid = worker_pid(instance, run.run_id)
        verdict = code_server_verdict(run, pid)
        ours = pid is not None and pid in gone
        if ours:
            reason = f"its worker (pid {pid}) {how}"
        elif verdict is not None and verdict.status == WorkerStatus.NOT_FOUND:
            reason = verdict.msg or "its worker is gone"
        else:
            continue
        current = instance.get_run_by_id(run.run_id)  # it may have finished meanwhile
        if current is None or current.is_finished:
            continue
        if (ours and stopped) or current.status == dg.DagsterRunStatus.CANCELING:
            instance.report_run_canceled(current, f"Run canceled: {reason}.")
        else:
            instance.report_run_failed(current, f"Run failed: {reason}; no process executes it any more.")
        marked.append(run.run_id)
    return marked


def _in_flight(instance: dg.DagsterInstance) -> Iterator[dg.DagsterRun]:
    for record in instance.get_run_records(dg.RunsFilter(statuses=IN_FLIGHT)):
        yield record.dagster_run


@dataclass(frozen=True)
class CodeServer:
    """The code server that launched a run, from the run's ``.dagster/grpc_info`` tag."""

    host: str
    port: int | None
    socket: str | None
    use_ssl: bool

    @classmethod
    def of(cls, run: dg.DagsterRun) -> CodeServer | None:
        info = run.tags.get(GRPC_INFO_TAG)
        if not info:
            return None
        address = json.loads(info)
        return cls(
            address.get("host", "localhost"),
            address.get("port"),
            address.get("socket"),
            bool(address.get("use_ssl")),
        )

    @property
    def address(self) -> str:
        return self.socket or f"{self.host}:{self.port}"

    @property
    def marker(self) -> str:
        """What its command line (``dagster api grpc --socket PATH`` or ``--port N``) contains."""
        return self.socket or f"--port {self.port}"

    def current_runs(self) -> Sequence[str]:
        return current_runs(self.host, self.port, self.socket, self.use_ssl)


def _command_line(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []

"""`rtml demo` under Ctrl-C and kills, with real processes: the real `rtml demo` command (its own data
directory, databases and ports; the session's Redis and MLflow), its Dagster webserver, daemon and code
servers, and runs launched through the UI's GraphQL API, which the daemon then launches.

* A run whose worker is SIGKILLed together with its code server is marked failed by the daemon's run
  monitoring (``MonitoredRunLauncher``); a run whose worker outlived that code server is left running.
  The killed run's worker is a fork of its code server's forkserver (``rtml.defs.executor``).
  (A worker killed under a live code server is reported by the code server itself: Dagster's own.)
* Ctrl-C stops every process the demo started within 15 s, the in-flight run included, which ends
  CANCELED; so does Ctrl-C of ``rtml backfill`` (its run executes in a ``dagster`` CLI process).

``rtml demo --no-load`` rather than the full demo (about 7 minutes here). Loading adds runs of
``dagster asset materialize`` to what the demo supervises, stopped like the backfill's ``dagster job
execute`` (the same code: ``rtml.cli._supervised``), whose test is cheaper. Every Dagster process imports
the code location (10-20 s of CPU here), so the runs are few, and each executes its steps in its own
process (``rtml.defs.executor``, as every run): ``ingestion_job`` over three days of simulated
transactions, one step busy long enough to be stopped.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import psutil
import pytest
from dagster_graphql import DagsterGraphQLClient
from sqlalchemy.engine import make_url

from rtml.defs.automation.runs import CodeServer, code_server_verdict, worker_pid
from rtml.defs.automation.tags import RANGE_TAGS
from rtml.stack.local import StackInfo
from rtml.stack.processes import free_port
from tests.demo_processes import started_by

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STOP_LIMIT_S = 15.0  # every process the demo started must be gone this long after Ctrl-C
# (first day, days): the run in flight must outlast the first test's minute and more of waiting (three days
# of ingestion no longer did on the machine's PostgreSQL); both end before the backfill's days
RUN_DAYS = {"server_killed": ("2026-11-02", 3), "in_flight": ("2026-11-05", 7)}


@dataclass
class Demo:
    """A running `rtml demo` and what it started (recorded as seen, so that orphans are still known)."""

    process: subprocess.Popen[bytes]
    env: dict[str, str]
    output: Path
    instance: dg.DagsterInstance
    seen: dict[int, psutil.Process] = field(default_factory=dict)

    @property
    def dagster_home(self) -> str:
        return self.env["DAGSTER_HOME"]

    def submit(self, job: str, day: str, days: int) -> str:
        """A run of ``job`` over ``days`` days from ``day``, launched as the UI launches one."""
        client = DagsterGraphQLClient("127.0.0.1", port_number=int(self.env["RTML_DAGSTER_PORT"]))
        last = (date.fromisoformat(day) + timedelta(days=days - 1)).isoformat()
        tags = dict(zip(RANGE_TAGS, (f"{day}-00:00", f"{last}-23:00"), strict=True))
        return client.submit_job_execution(job, tags=tags)

    def processes(self) -> list[psutil.Process]:
        return started_by(self.process, self.dagster_home, self.seen)

    def run(self, run_id: str) -> dg.DagsterRun:
        run = self.instance.get_run_by_id(run_id)
        assert run is not None
        return run

    def wait_for(self, what: str, condition: Callable[[], bool], timeout: float) -> float:
        """Seconds until ``condition()`` holds (watching the demo's processes meanwhile)."""
        began = time.monotonic()
        while not condition():
            self.processes()
            assert time.monotonic() - began < timeout, f"{what}: not within {timeout:.0f} s\n{self.tail()}"
            time.sleep(0.25)
        return time.monotonic() - began

    def step_started(self, run_id: str) -> bool:
        events = self.instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)
        return bool(events) and worker_pid(self.instance, run_id) is not None

    def messages(self, run_id: str) -> str:
        return "\n".join(entry.message for entry in self.instance.all_logs(run_id))

    def tail(self) -> str:
        return self.output.read_text()[-3000:] if self.output.exists() else ""


@pytest.fixture(scope="module")
def demo_env(
    stack: StackInfo,
    scratch_database: Callable[[str], str],
    separate_dbt_target: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    """The demo's own data directory, platform and Dagster databases and ports; the session's Redis and
    MLflow server (nothing here writes to them)."""
    data_dir = tmp_path_factory.mktemp("demo")
    dagster_database = make_url(scratch_database("demo_dagster")).database
    env = {
        **os.environ,
        "RTML_DATA_DIR": str(data_dir),
        "RTML_DATABASE_URL": scratch_database("demo"),
        "RTML_DAGSTER_DATABASE": str(dagster_database),
        "RTML_DAGSTER_PORT": str(free_port()),
        "RTML_DOCS_PORT": str(free_port()),
        "RTML_SERVING_PORT": str(free_port()),
        "RTML_STREAM_WORKER_METRICS_PORT": str(free_port()),
        "RTML_RUN_MONITORING_INTERVAL_S": "2",
        "RTML_SIM_TRANSACTIONS_PER_DAY": "300000",  # a step busy for a while
        "RTML_SIM_START": "2026-11-01T00:00:00+00:00",  # pinned: the runs below load RUN_DAYS
        "DAGSTER_HOME": str(data_dir / "dagster"),
        "DBT_TARGET_PATH": str(separate_dbt_target),
    }
    env.pop("RTML_PUSHGATEWAY_URL", None)
    env.pop("RTML_ALERT_WEBHOOK_URL", None)
    return env


def start_demo(env: dict[str, str], *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    output = Path(env["RTML_DATA_DIR"]) / f"demo-{time.monotonic_ns()}.out"
    with output.open("wb") as out:
        command = [str(Path(sys.executable).with_name("rtml")), "demo", *args]
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT), output


@pytest.fixture(scope="module")
def demo(demo_env: dict[str, str]) -> Iterator[Demo]:
    process, output = start_demo(demo_env, "--no-load")
    instance = None
    try:
        deadline = time.monotonic() + 300
        while "Dagster UI" not in output.read_text():
            assert process.poll() is None, output.read_text()
            assert time.monotonic() < deadline, output.read_text()
            time.sleep(0.5)
        instance = dg.DagsterInstance.from_config(demo_env["DAGSTER_HOME"])
        running = Demo(process, demo_env, output, instance)
        yield running
    finally:
        if instance is not None:
            instance.dispose()
        _kill_all(process, demo_env["DAGSTER_HOME"])


@pytest.fixture(scope="module")
def runs(demo: Demo) -> dict[str, str]:
    """Two runs in flight at once, each busy in its step (started together: each takes a while)."""
    launched = {name: demo.submit("ingestion_job", *days) for name, days in RUN_DAYS.items()}
    for name, run_id in launched.items():
        demo.wait_for(f"run {name} in its step", lambda run_id=run_id: demo.step_started(run_id), 300)
    demo.processes()
    return launched


def test_a_run_whose_code_server_dies_with_it_is_marked_failed_by_run_monitoring(
    demo: Demo, runs: dict[str, str]
) -> None:
    run_id, survivor = runs["server_killed"], runs["in_flight"]
    server = CodeServer.of(demo.run(run_id))
    assert server is not None and server.socket, "the daemon's code servers listen on Unix sockets"
    [code_server] = [p for p in demo.processes() if server.socket in " ".join(_command_line(p))]
    pid = worker_pid(demo.instance, run_id)
    assert pid is not None
    # launched without run config: the code location's executor runs the steps in the worker itself
    assert f"Executing steps in process (pid: {pid})" in demo.messages(run_id)
    # forked by the code server's forkserver, which imported the code location and the drift check's
    # libraries once (rtml.defs.executor.RUN_WORKER_PRELOAD)
    forkserver = " ".join(_command_line(psutil.Process(pid).parent()))
    assert "multiprocessing.forkserver" in forkserver and "'rtml.definitions', 'evidently'" in forkserver
    assert psutil.Process(pid).parent().parent().pid == code_server.pid
    for process in [code_server, psutil.Process(pid)]:  # not the other run's worker
        process.kill()
    try:
        seconds = demo.wait_for(
            "marked failed", lambda: demo.run(run_id).status == dg.DagsterRunStatus.FAILURE, 60
        )
    except AssertionError as error:  # what the check sees now
        verdict = code_server_verdict(demo.run(run_id), pid)
        raise AssertionError(f"worker {pid}: {_state(pid)}; {verdict}\n{error}") from None
    assert f"its code server ({server.socket}) is gone" in demo.messages(run_id)
    print(f"code server and run worker SIGKILLed: marked failed after {seconds:.1f} s")
    # A run whose worker outlived that code server (or runs in another one) is not failed by mistake.
    time.sleep(5)  # two more monitoring rounds
    assert demo.run(survivor).status == dg.DagsterRunStatus.STARTED, demo.messages(survivor)


def test_ctrl_c_stops_every_process_of_the_demo_and_cancels_its_run(demo: Demo, runs: dict[str, str]) -> None:
    run_id = runs["in_flight"]
    assert demo.run(run_id).status == dg.DagsterRunStatus.STARTED
    before = demo.processes()
    assert len(before) >= 4, before  # webserver, daemon, their code servers, the run worker
    demo.process.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C sends `rtml demo`
    seconds = demo.wait_for("every process gone", lambda: not demo.processes(), STOP_LIMIT_S)
    print(f"Ctrl-C: all {len(demo.seen)} processes gone after {seconds:.1f} s")
    assert demo.process.wait(10) == 0, demo.tail()
    assert demo.run(run_id).status == dg.DagsterRunStatus.CANCELED, demo.messages(run_id)
    in_flight = demo.instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    assert not in_flight, [run.run_id for run in in_flight]


def test_ctrl_c_of_a_backfill_cancels_its_run(demo_env: dict[str, str], demo: Demo) -> None:
    """`rtml backfill` executes its run in a `dagster job execute` process, as the demo's bootstrap does
    in `dagster asset materialize` processes: Ctrl-C cancels the run and leaves no process."""
    assert demo.process.poll() is not None  # the demo has stopped: its instance is ours alone
    rtml = str(Path(sys.executable).with_name("rtml"))
    output = Path(demo_env["RTML_DATA_DIR"]) / "backfill.out"
    with output.open("wb") as out:
        command = [rtml, "backfill", "2026-11-12T00:00", "2026-11-15T00:00"]
        process = subprocess.Popen(command, env=demo_env, stdout=out, stderr=subprocess.STDOUT)
    backfill = Demo(process, demo_env, output, demo.instance)
    tags = {"rtml/backfill": "2026-11-12-00:00...2026-11-14-23:00"}
    try:

        def run_id() -> str | None:
            records = demo.instance.get_run_records(dg.RunsFilter(tags=tags), limit=1)
            return records[0].dagster_run.run_id if records else None

        backfill.wait_for(
            "the backfill run in its step", lambda: bool((r := run_id()) and backfill.step_started(r)), 240
        )
        process.send_signal(signal.SIGINT)
        seconds = backfill.wait_for("every process gone", lambda: not backfill.processes(), STOP_LIMIT_S)
        print(f"Ctrl-C of rtml backfill: all processes gone after {seconds:.1f} s")
        assert process.wait(10) != 0  # interrupted
        assert re.search(r"stopping \d+ process\(es\) and their runs", output.read_text()), output.read_text()
        canceled = backfill.run(run_id() or "")
        assert canceled.status == dg.DagsterRunStatus.CANCELED, backfill.messages(canceled.run_id)
        assert "requested a retry" not in backfill.messages(canceled.run_id)  # a stop is not retried
    finally:
        _kill_all(process, demo_env["DAGSTER_HOME"])


# --- helpers ---------------------------------------------------------------------------------------------
def _state(pid: int) -> str:
    try:
        return psutil.Process(pid).status()
    except psutil.Error as error:
        return repr(error)


def _command_line(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def _kill_all(demo: subprocess.Popen[bytes], dagster_home: str) -> None:
    """Safety net for a failed test: nothing of the demo may outlive the module."""
    for process in started_by(demo, dagster_home, {}):
        with suppress(psutil.Error):
            process.kill()
    demo.kill()
    demo.wait(10)

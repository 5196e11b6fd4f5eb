"""The local stack (`rtml up / down / status`) against real servers: embedded and external, and the
MLflow tracking server it runs on top of PostgreSQL.

The proof that `rtml up/down` leave no process behind: after `down()` (run in another process) no pid
of ours runs and no process references the data folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
import redis
from sqlalchemy.engine import make_url

from rtml.config import ServicesSettings, Settings, StackSettings, TrainingSettings, redact
from rtml.stack import LocalStack, StackError, StackInfo, StackNotRunningError, mlflow_server
from rtml.stack.processes import free_port, pid_alive

pytestmark = pytest.mark.integration

SCHEMAS = {"raw", "staging", "features", "monitoring"}


def embedded_settings(data_dir: Path, mlflow_port: int) -> Settings:
    # Explicit None: pydantic-settings would otherwise take RTML_DATABASE_URL / RTML_REDIS_URL /
    # RTML_MLFLOW_TRACKING_URI from the env (the session's stack sets them).
    return Settings(
        services=ServicesSettings(data_dir=data_dir, database_url=None, redis_url=None),
        training=TrainingSettings(mlflow_tracking_uri=None),
        stack=StackSettings(mlflow_port=mlflow_port),
    )


def run_in_subprocess(data_dir: Path, mlflow_port: int, call: str) -> subprocess.CompletedProcess[str]:
    """Run ``LocalStack(...).<call>`` in a fresh interpreter, as the `rtml` CLI would."""
    code = textwrap.dedent(f"""
        from pathlib import Path
        from rtml.config import ServicesSettings, Settings, StackSettings, TrainingSettings, redact
        from rtml.stack import LocalStack
        stack = LocalStack(Settings(
            services=ServicesSettings(data_dir=Path({str(data_dir)!r}), database_url=None, redis_url=None),
            training=TrainingSettings(mlflow_tracking_uri=None),
            stack=StackSettings(mlflow_port={mlflow_port}),
        ))
        print(repr(stack.{call}))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result


def processes_referencing(folder: Path) -> list[str]:
    """Live processes whose command line or working directory lies in ``folder``."""
    found = []
    for process in psutil.process_iter(["pid", "status", "cmdline", "cwd"]):
        if process.info["status"] == psutil.STATUS_ZOMBIE or process.pid == psutil.Process().pid:
            continue
        text = " ".join(process.info["cmdline"] or []) + " " + (process.info["cwd"] or "")
        if str(folder) in text:
            found.append(f"{process.pid}: {text}")
    return found


def embedded_pids(data_dir: Path) -> list[int]:
    state = json.loads((data_dir / "stack.json").read_text())
    return [state["postgres"]["pid"], state["redis"]["pid"], state["mlflow"]["pid"]]


def databases_and_schemas(info: StackInfo) -> tuple[set[str], set[str]]:
    with psycopg.connect(info.database_url) as conn:
        databases = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
        schemas = {row[0] for row in conn.execute("SELECT schema_name FROM information_schema.schemata")}
    return databases, schemas


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, StackInfo]]:
    local = LocalStack(embedded_settings(tmp_path_factory.mktemp("stack"), free_port()))
    info = local.up()
    try:
        yield local, info
    finally:
        local.down()


def test_up_starts_postgres_redis_and_mlflow_with_databases_schemas_and_dagster_home(
    embedded: tuple[LocalStack, StackInfo],
) -> None:
    local, info = embedded
    assert info.embedded
    assert info.mlflow_tracking_uri == f"http://127.0.0.1:{local.settings.stack.mlflow_port}"
    assert mlflow_server.answers(info.mlflow_tracking_uri)
    databases, schemas = databases_and_schemas(info)
    assert {"rtml", info.dagster_database, info.mlflow_database} <= databases
    assert schemas >= SCHEMAS
    assert redis.Redis.from_url(info.redis_url).ping()
    for url in (info.dagster_database_url, info.mlflow_database_url):
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_dagster_home_opens_postgres_storage_with_run_monitoring(
    embedded: tuple[LocalStack, StackInfo],
) -> None:
    from dagster import DagsterInstance
    from dagster_postgres import PostgresRunStorage

    from rtml.defs.automation.runs import MonitoredRunLauncher

    local, info = embedded
    assert (info.dagster_home / "dagster.yaml").exists()
    with DagsterInstance.from_config(str(info.dagster_home)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert instance.get_runs() == []
        # The daemon checks in-flight runs, asking the launcher whether their worker is alive
        # (tests/test_demo_lifecycle.py shows it on real runs).
        assert isinstance(instance.run_launcher, MonitoredRunLauncher)
        assert instance.run_launcher.supports_check_run_worker_health
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_poll_interval_seconds == local.settings.stack.run_monitoring_interval_s
        assert instance.run_monitoring_max_resume_run_attempts == 0


def test_up_twice_is_idempotent(embedded: tuple[LocalStack, StackInfo]) -> None:
    local, info = embedded
    pids = [status.pid for status in local.status()]
    assert local.up() == info
    assert [status.pid for status in local.status()] == pids
    assert local.info() == info


def test_status_reports_running_servers(embedded: tuple[LocalStack, StackInfo]) -> None:
    local, info = embedded
    statuses = {status.name: status for status in local.status()}
    assert set(statuses) == {"postgres", "redis", "mlflow"}
    assert all(status.answers for status in statuses.values())
    assert statuses["postgres"].url == info.database_url
    assert statuses["redis"].url == info.redis_url
    assert statuses["mlflow"].url == info.mlflow_tracking_uri
    assert all(pid_alive(status.pid) for status in statuses.values())


def test_mlflow_server_keeps_runs_in_postgres_and_artifacts_in_the_data_dir(
    embedded: tuple[LocalStack, StackInfo],
) -> None:
    from mlflow.tracking import MlflowClient

    local, info = embedded
    client = MlflowClient(info.mlflow_tracking_uri)
    experiment_id = client.create_experiment(f"stack-test-{secrets.token_hex(4)}")
    run = client.create_run(experiment_id)
    client.log_param(run.info.run_id, "answer", "42")
    client.log_text(run.info.run_id, "hello", "note.txt")  # uploaded through the server's artifact proxy
    client.set_terminated(run.info.run_id)
    with psycopg.connect(info.mlflow_database_url) as conn:
        row = conn.execute("SELECT status FROM runs WHERE run_uuid = %s", [run.info.run_id]).fetchone()
    assert row == ("FINISHED",)
    assert [path.read_text() for path in local.settings.services.mlflow_artifacts_dir.rglob("note.txt")] == [
        "hello"
    ]


def test_mlflow_server_accepts_localhost_and_127_0_0_1_host_headers(
    embedded: tuple[LocalStack, StackInfo],
) -> None:
    # MLflow's security middleware rejects Host headers it does not allow (DNS rebinding protection).
    _, info = embedded
    port = mlflow_server.port_of(info.mlflow_tracking_uri)
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        request = urllib.request.Request(
            f"{info.mlflow_tracking_uri}/api/2.0/mlflow/experiments/search?max_results=1",
            headers={"Host": host},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200, host


def test_up_restarts_a_server_whose_process_died(embedded: tuple[LocalStack, StackInfo]) -> None:
    local, _ = embedded
    redis_status = next(status for status in local.status() if status.name == "redis")
    assert redis_status.pid is not None and redis_status.url is not None
    # a client connected at the crash (as the scorer is): the dead server's sockets linger on the port
    held = redis.Redis.from_url(redis_status.url)
    assert held.ping()
    psutil.Process(redis_status.pid).send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pid_alive(redis_status.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(StackNotRunningError, match="rtml up"):
        local.info()
    assert local.revive() == ["redis"]  # what the demo does every few seconds
    assert local.revive() == []
    info = local.info()
    assert redis.Redis.from_url(info.redis_url).ping()
    assert info.redis_url == redis_status.url  # the port is kept: the scorer's URL still works
    assert held.ping()  # the old client reconnects by itself
    assert next(status for status in local.status() if status.name == "redis").pid != redis_status.pid


def test_up_replaces_an_mlflow_server_whose_launcher_was_killed(
    embedded: tuple[LocalStack, StackInfo],
) -> None:
    """SIGKILL on `mlflow server` orphans its uvicorn worker, which keeps the port: up() stops it too."""
    local, info = embedded
    launcher = next(status for status in local.status() if status.name == "mlflow").pid
    assert launcher is not None
    worker = psutil.Process(launcher).children()[0].pid
    psutil.Process(launcher).send_signal(signal.SIGKILL)
    assert pid_alive(worker)
    assert local.up() == info  # same port, hence same URL
    assert not pid_alive(launcher) and not pid_alive(worker)
    assert next(status for status in local.status() if status.name == "mlflow").answers


def test_mlflow_port_taken_by_another_program_says_what_to_set(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        local = LocalStack(embedded_settings(tmp_path, other.getsockname()[1]))
        try:
            with pytest.raises(StackError, match="RTML_MLFLOW_PORT"):
                local.up()
        finally:
            local.down()
    assert processes_referencing(tmp_path) == []


def test_servers_outlive_up_and_down_in_another_process_leaves_nothing(tmp_path: Path) -> None:
    port = free_port()
    run_in_subprocess(tmp_path, port, "up()")  # that process has exited now
    local = LocalStack(embedded_settings(tmp_path, port))
    pids = embedded_pids(tmp_path)
    assert all(pid_alive(pid) for pid in pids)
    assert all(status.answers for status in local.status())
    assert local.up().embedded  # same servers, found through the state file

    run_in_subprocess(tmp_path, port, "down()")
    assert not any(pid_alive(pid) for pid in pids)
    # Independently of pid_alive: a pid may linger only as a zombie (this sandbox's pid 1 reaps none).
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert processes_referencing(tmp_path) == []
    assert not any(status.answers for status in local.status())
    with pytest.raises(StackNotRunningError, match="rtml up"):
        local.info()
    run_in_subprocess(tmp_path, port, "down()")  # idempotent


def test_status_and_up_print_urls_without_their_passwords(stack: StackInfo, tmp_path: Path) -> None:
    """Through the real CLI (the deploy workflow prints `rtml status` into CI logs): every URL is shown
    with its password replaced, in the listing and in an error."""
    password = "s3cr3tPW"
    rtml = str(Path(sys.executable).with_name("rtml"))
    database_url = make_url(stack.database_url).set(password=password).render_as_string(hide_password=False)
    redis_host = stack.redis_url.removeprefix("redis://")
    env = {
        **os.environ,
        "RTML_DATA_DIR": str(tmp_path),
        "RTML_DATABASE_URL": database_url,  # the session's server trusts local connections: it answers
        "RTML_REDIS_URL": f"redis://:{password}@{redis_host}",  # AUTH refused: no password set there
        "RTML_MLFLOW_TRACKING_URI": stack.mlflow_tracking_uri.replace("http://", f"http://rtml:{password}@"),
    }
    status = subprocess.run([rtml, "status"], env=env, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    assert password not in status.stdout + status.stderr
    lines = {line.split()[0]: line.split()[1:] for line in status.stdout.splitlines()}
    assert lines["postgres"] == ["up", redact(database_url)] and ":***@" in lines["postgres"][1]
    assert lines["redis"][1] == f"redis://:***@{redis_host}"
    assert lines["mlflow"][1].startswith("http://rtml:***@127.0.0.1:")

    up = subprocess.run([rtml, "up"], env=env, capture_output=True, text=True, timeout=120)
    assert up.returncode == 0 and password not in up.stdout + up.stderr, up.stdout + up.stderr
    assert f"PostgreSQL  {redact(database_url)}" in up.stdout

    env["RTML_DATABASE_URL"] = f"postgresql://rtml:{password}@127.0.0.1:{free_port()}/rtml"  # no server
    failed = subprocess.run([rtml, "up"], env=env, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1 and password not in failed.stdout + failed.stderr, failed.stderr
    assert "rtml up failed: could not create databases" in failed.stderr
    assert "postgresql://rtml:***@127.0.0.1:" in failed.stderr


def test_info_without_a_running_stack_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(StackNotRunningError, match=r"Run `rtml up` first"):
        LocalStack(embedded_settings(tmp_path, free_port())).info()


def _machine_postgres_answers() -> bool:
    try:
        psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", connect_timeout=2).close()
        return True
    except psycopg.Error:
        return False


@pytest.mark.skipif(
    not _machine_postgres_answers(), reason="no PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth)"
)
def test_configured_urls_start_nothing_and_create_databases(
    tmp_path: Path, embedded: tuple[LocalStack, StackInfo]
) -> None:
    mlflow_url = embedded[1].mlflow_tracking_uri  # a running MLflow server that is not this stack's
    suffix = secrets.token_hex(4)
    names = [
        f"rtml_stacktest_{suffix}",
        f"rtml_stacktest_{suffix}_dagster",
        f"rtml_stacktest_{suffix}_mlflow",
    ]
    settings = Settings(
        services=ServicesSettings(
            data_dir=tmp_path,
            database_url=f"postgresql://postgres@127.0.0.1:5432/{names[0]}",
            redis_url="redis://127.0.0.1:6379/0",
            dagster_database=names[1],
            mlflow_database=names[2],
        ),
        training=TrainingSettings(mlflow_tracking_uri=mlflow_url),
    )
    local = LocalStack(settings)
    try:
        info = local.up()
        assert not info.embedded
        assert info.mlflow_tracking_uri == mlflow_url
        assert not (tmp_path / "stack.json").exists()
        assert processes_referencing(tmp_path) == []
        databases, schemas = databases_and_schemas(info)
        assert set(names) <= databases
        assert schemas >= SCHEMAS
        assert f"/{names[1]}" in (info.dagster_home / "dagster.yaml").read_text()
        assert [status.pid for status in local.status()] == [None, None, None]
        assert all(status.answers for status in local.status())
        local.down()  # must not touch the machine's servers
        assert all(status.answers for status in local.status())
    finally:
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_free_ports_lie_below_the_ephemeral_range() -> None:
    """A port the kernel hands out (bind to 0) may be any process's next outgoing connection: the demo's
    docs server found its port taken a minute later while another test worker ran."""
    import socket

    from rtml.stack.processes import _ephemeral_low, free_port

    ports = {free_port() for _ in range(20)}
    assert all(1024 <= port < _ephemeral_low() for port in ports), ports
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", min(ports)))
        taken.listen()
        assert free_port(min(ports)) != min(ports)  # a taken preferred port is not returned

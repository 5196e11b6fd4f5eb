"""The private APIs rtml uses, one adapter per library, each exercised against the pinned version: a new
version that changes one fails here, by name, rather than in the scorer, a push or a run.

* redis-py: ``rtml.features.online.redis_wire`` (the online read, the bulk push)
* treelite: ``rtml.training.treelite_gtil`` (the compiled model's prediction)
* Dagster: ``rtml.defs.dagster_internals`` (run monitoring, the demo's bootstrap, pooled event writes,
  forked run workers)
* dagster-dbt: ``rtml.defs.dagster_dbt_internals`` (its wait, its manifest's database, its dbt version)
* dbt-common: ``rtml.features.dbt_internals`` (the source of a behaviour flag)
* scikit-learn: ``rtml.training.sklearn_internals`` (the booster's bin thresholds under sample weights)
* MLflow: ``rtml.training.mlflow_internals`` (the map of installed packages, built before logging)

Each test calls the private path and compares it with the public API's result (or, where Dagster has
none, with what the caller relies on). ``test_nothing_else_touches_them`` keeps the private names in
their adapters."""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pyarrow as pa
import pytest
import redis

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def private_api(library: str, symbols: str, code_path: str) -> Iterator[None]:
    """Any error or wrong result inside becomes one message naming the library, its installed (pinned)
    version, the private symbols and the code that depends on them."""
    try:
        yield
    except (Exception, pytest.fail.Exception) as error:  # pytest.raises' "DID NOT RAISE" too
        pytest.fail(
            f"{library} {version(library)} (pinned in pyproject.toml) changed its private {symbols}, "
            f"which {code_path} depends on: {type(error).__name__}: {error}"
        )


# --- redis-py ------------------------------------------------------------------------------------
def test_redis_wire_reads_like_the_public_client(redis_url: str) -> None:
    from rtml.features.online.redis_wire import DirectConnection

    client = redis.Redis.from_url(redis_url)
    key = "rtml-test:private-apis:read"
    client.hset(key, mapping={"a": "1", "b": "2"})
    script = client.register_script("return {KEYS[1], redis.call('HGET', KEYS[1], ARGV[1])}")
    with private_api(
        "redis",
        "ConnectionPool.connection_class/connection_kwargs, Connection.send_command/read_response/disconnect",
        "OnlineStore._evalsha (the scorer's online read, rtml.features.online.redis_wire)",
    ):
        connection = DirectConnection(client)
        public = script(keys=[key], args=["b"])
        assert connection.execute("EVALSHA", script.sha, 1, key, "b") == public == [key.encode(), b"2"]
        with pytest.raises(redis.exceptions.NoScriptError):  # the read loads a lost script again
            connection.execute("EVALSHA", "0" * 40, 0)
        # a connection of its own, outside the pool; a killed one raises ConnectionError, and after
        # close the next command connects again (the read's reconnect)
        connection_id = connection.execute("CLIENT", "ID")
        assert connection_id != client.client_id()
        assert client.client_kill_filter(_id=connection_id) == 1
        with pytest.raises(redis.exceptions.ConnectionError):
            connection.execute("CLIENT", "ID")
        connection.close()
        assert connection.execute("CLIENT", "ID") != connection_id
        connection.close()
    client.delete(key)
    client.close()


def test_redis_wire_sends_packed_batches_and_reads_raw_replies(redis_url: str) -> None:
    from rtml.features.online import resp
    from rtml.features.online.redis_wire import DirectConnection

    client = redis.Redis.from_url(redis_url)
    key = "rtml-test:private-apis:bulk"
    client.delete(key)
    payload = resp.variadic_command("HSET", [key], [pa.array(["f1", "f2"]), pa.array(["v1", "v2"])])
    with private_api(
        "redis",
        "Connection.connect/send_packed_command, Connection._sock",
        "the online store's bulk push (OnlineWriter._send_batches → resp.BulkChannel)",
    ):
        connection = DirectConnection(client)
        connection.connect()
        connection.send_packed(payload + payload)  # two commands at once: two one-line replies
        replies = b""
        while replies.count(b"\r\n") < 2:
            replies += connection.recv(1 << 16)
        assert replies == b":2\r\n:0\r\n"
        assert client.hgetall(key) == {b"f1": b"v1", b"f2": b"v2"}
        # the channel tells a closed connection by an empty read
        assert client.client_kill_filter(_id=connection.execute("CLIENT", "ID")) == 1
        assert connection.recv(1 << 16) == b""
        connection.close()
    client.delete(key)
    client.close()


# --- treelite ------------------------------------------------------------------------------------
def test_treelite_gtil_predicts_like_the_public_api() -> None:
    import treelite
    from sklearn.ensemble import HistGradientBoostingClassifier

    from rtml.training import treelite_gtil

    rng = np.random.default_rng(0)
    features = rng.normal(size=(2_000, 4))
    labels = (features[:, 0] + features[:, 1] > 0.5).astype(int)
    binary = treelite.sklearn.import_model(HistGradientBoostingClassifier(max_iter=10).fit(features, labels))
    three_classes = treelite.sklearn.import_model(
        HistGradientBoostingClassifier(max_iter=3).fit(features, labels + (features[:, 2] > 1))
    )
    rows = rng.normal(size=(257, 4))
    rows[::5, 3] = np.nan
    with private_api(
        "treelite",
        "treelite.core._LIB.TreeliteGTILPredict, treelite.core._check_call, treelite.gtil.gtil.GTILConfig",
        "CompiledModel.predict (the scorer's compiled model, rtml.training.treelite_gtil)",
    ):
        assert treelite_gtil.unsupported(binary) is None
        assert treelite_gtil.unsupported(three_classes) is not None  # (rows, 1, 3): not one value a row
        public = treelite.gtil.predict(binary, rows, nthread=1)[:, 0, 0]
        np.testing.assert_array_equal(treelite_gtil.predict(binary, rows), public)
        np.testing.assert_array_equal(treelite_gtil.predict(binary, rows[:1]), public[:1])
        assert treelite_gtil.predict(binary, rows[:0]).shape == (0,)


# --- Dagster -------------------------------------------------------------------------------------
TINY_DEFINITIONS = """
import dagster as dg

@dg.asset
def numbers() -> list[int]:
    return [1, 2, 3]

@dg.asset
def total(numbers: list[int]) -> int:
    return sum(numbers)

defs = dg.Definitions(assets=[numbers, total])
"""


@pytest.fixture(scope="module")
def tiny_location(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("tiny-location")
    (directory / "rtml_tiny_location.py").write_text(TINY_DEFINITIONS)
    yield directory
    sys.modules.pop("rtml_tiny_location", None)


def test_dagster_internals_execute_a_code_locations_runs_in_process(
    tiny_location: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rtml.defs import dagster_internals as internals

    monkeypatch.chdir(tiny_location)  # the origin's working directory, as `rtml demo` starts the bootstrap
    monkeypatch.syspath_prepend(str(tiny_location))
    with (
        private_api(
            "dagster",
            "dagster._cli.workspace.cli_target.get_repository_python_origin_from_cli_opts, "
            "dagster._utils.hosted_user_process.recon_repository_from_origin / recon_job_from_origin, "
            "dagster._core.origin.JobPythonOrigin, dagster._utils.interrupts.capture_interrupts",
            "the demo's bootstrap (rtml.demo_bootstrap)",
        ),
        dg.DagsterInstance.ephemeral() as instance,
    ):
        origin = internals.repository_origin("rtml_tiny_location")
        repository = internals.load_repository(origin)
        from rtml_tiny_location import defs  # type: ignore[import-not-found]

        public_keys = set(defs.resolve_asset_graph().get_all_asset_keys())
        assert set(repository.asset_graph.get_all_asset_keys()) == public_keys
        keys = dg.AssetSelection.assets("numbers", "total").resolve(repository.asset_graph)
        job = repository.get_implicit_job_def_for_assets(keys)
        assert job is not None
        result = dg.execute_job(
            internals.reconstructable_job(origin, job.name),
            instance=instance,
            asset_selection=sorted(keys),
            run_config={"execution": {"config": {"in_process": {}}}},
        )
        public = dg.materialize(defs.assets[:2], instance=instance)  # type: ignore[index]
        assert result.success and public.success

        def materialized(run: dg.ExecutionResult) -> set[dg.AssetKey]:
            return {event.asset_key for event in run.get_asset_materialization_events()}

        assert materialized(result) == materialized(public) == keys
        run = instance.get_run_by_id(result.run_id)
        assert run is not None and run.job_code_origin is not None
        assert run.job_code_origin.repository_origin == origin  # recorded against the code location
        # Ctrl-C between two runs: captured (no KeyboardInterrupt wherever the bootstrap is), raised in
        # the next run as Dagster's interrupt, so that no further run goes on. Python's own handler first:
        # a session started in the background inherits SIGINT ignored.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with internals.capture_interrupts():
            # else the signal below would end this test session with a KeyboardInterrupt
            assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler, "SIGINT not captured"
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
            stopped = dg.execute_job(
                internals.reconstructable_job(origin, job.name),
                instance=instance,
                asset_selection=sorted(keys),
                run_config={"execution": {"config": {"in_process": {}}}},
                raise_on_error=False,
            )
        assert not stopped.success and not materialized(stopped)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_dagster_internals_name_the_partition_tags_dagster_reads() -> None:
    """A run tagged with the adapter's range tags materializes that range of partitions (what the CLI's
    backfill and the sensors ask for), and a run's partition tag is the one Dagster writes."""
    from rtml.defs import dagster_internals as internals

    @dg.asset(partitions_def=dg.DailyPartitionsDefinition("2026-11-01"))
    def daily(context) -> None:  # type: ignore[no-untyped-def]  # Dagster reads the bare name
        seen.append(list(context.partition_keys))

    seen: list[list[str]] = []

    with private_api(
        "dagster",
        "dagster._core.storage.tags.ASSET_PARTITION_RANGE_START_TAG / _END_TAG / PARTITION_NAME_TAG",
        "the CLI's backfill and the sensors' range requests (rtml.defs.automation.tags)",
    ):
        ranged = dg.materialize(
            [daily], tags=dict(zip(internals.RANGE_TAGS, ("2026-11-02", "2026-11-04"), strict=True))
        )
        assert ranged.success and seen == [["2026-11-02", "2026-11-03", "2026-11-04"]]
        single = dg.materialize([daily], partition_key="2026-11-05")
        assert single.dagster_run.tags[internals.PARTITION_TAG] == "2026-11-05"


def test_dagster_internals_pool_an_instance_s_storage_connections(
    scratch_database: Callable[[str], str], tmp_path: Path
) -> None:
    """Once pooled, the run, event and schedule storages each answer from one kept server process, and a
    run's events are written and read back through them; before, every call connected anew (the
    default that the demo's bootstrap paid for each of its thousands of events)."""
    from sqlalchemy import text

    from rtml.defs import dagster_internals as internals
    from rtml.stack.dagster_home import write_dagster_yaml

    write_dagster_yaml(tmp_path, scratch_database("dagster_pooled"))

    @dg.asset
    def pooled() -> int:
        return 1

    def server_processes(connect: Callable[[], Any]) -> set[int]:
        pids = set()
        for _ in range(3):
            with connect() as conn:
                pids.add(conn.execute(text("select pg_backend_pid()")).scalar())
        return pids

    with (
        dg.DagsterInstance.from_config(str(tmp_path)) as instance,
        private_api(
            "dagster",
            "DagsterInstance.optimize_for_webserver (dagster-postgres's pooled engine)",
            "the demo's bootstrap (rtml.demo_bootstrap)",
        ),
    ):
        storages = (
            instance.run_storage.connect,  # type: ignore[attr-defined]
            instance.event_log_storage.index_connection,  # type: ignore[attr-defined]
            instance.schedule_storage.connect,  # type: ignore[union-attr]
        )
        assert [len(server_processes(connect)) for connect in storages] == [3, 3, 3]
        internals.pool_storage_connections(instance)
        assert [len(server_processes(connect)) for connect in storages] == [1, 1, 1]
        result = dg.materialize([pooled], instance=instance)
        assert result.success and instance.get_latest_materialization_event(dg.AssetKey("pooled"))
        assert instance.get_run_by_id(result.run_id) is not None


def test_dagster_internals_fork_a_code_server_s_run_workers_from_its_preloaded_forkserver(
    tmp_path: Path,
) -> None:
    """A real code server (``dagster api grpc``, as the webserver and the daemon start one) whose code
    location calls ``fork_run_workers`` starts a launched run in a process forked from a forkserver that
    had imported the location: the run's op finds its module imported by its parent, not by itself. A
    forkserver that dies (killed, out of memory) is started again for the next run."""
    socket = tmp_path / "code.sock"
    (tmp_path / "dagster.yaml").write_text(
        "run_coordinator:\n  module: dagster._core.run_coordinator\n  class: DefaultRunCoordinator\n"
        "telemetry:\n  enabled: false\n"
    )
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(f"load_from:\n  - grpc_server:\n      socket: {socket}\n      host: localhost\n")
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    dagster = str(Path(sys.executable).with_name("dagster"))
    dg.DagsterInstance.from_config(str(tmp_path)).dispose()  # the storage, before two processes race for it
    server = subprocess.Popen(
        [dagster, "api", "grpc", "--socket", str(socket), "-m", "tests.forked_location"],
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )

    def launched_run(instance: dg.DagsterInstance) -> tuple[int, int, int]:
        """Launch the job and wait for its run: (worker, its parent, the module's importer)."""
        deadline = time.monotonic() + 90
        launch = [dagster, "job", "launch", "-w", str(workspace), "-j", "where_am_i_job"]
        while subprocess.run(launch, env=env, cwd=ROOT, capture_output=True).returncode != 0:
            assert time.monotonic() < deadline and server.poll() is None, "the code server did not serve"
            time.sleep(0.5)
        run = instance.get_runs(limit=1)[0]
        while not (run := instance.get_run_by_id(run.run_id)).is_finished:  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the run did not finish"
            time.sleep(0.25)
        logs = " ".join(entry.user_message for entry in instance.all_logs(run.run_id))
        assert run.status == dg.DagsterRunStatus.SUCCESS, logs[-3000:]
        found = re.search(r"run worker (\d+), child of (\d+), module imported by (\d+)", logs)
        assert found, logs[-3000:]
        worker, parent, importer = map(int, found.groups())
        return worker, parent, importer

    try:
        with (
            dg.DagsterInstance.from_config(str(tmp_path)) as instance,
            private_api(
                "dagster",
                "DagsterApiServer._mp_ctx (how StartRun starts a run's process)",
                "the code servers' run workers (rtml.defs.executor)",
            ),
        ):
            worker, forkserver, importer = launched_run(instance)
            assert importer == forkserver != worker  # imported once, in the forkserver, before the fork
            os.kill(forkserver, signal.SIGKILL)
            _, again, importer = launched_run(instance)
            assert importer == again != forkserver  # a new forkserver, preloaded in its turn
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def test_dagster_internals_validate_a_dagster_yaml_as_the_instance_reads_it(tmp_path: Path) -> None:
    from rtml.defs import dagster_internals as internals

    (tmp_path / "dagster.yaml").write_text(
        "run_monitoring:\n  enabled: true\n  poll_interval_seconds: 7\ntelemetry:\n  enabled: false\n"
    )
    with private_api(
        "dagster",
        "dagster._core.instance.config.dagster_instance_config",
        "CI's check of docker/dagster.yaml (tests/test_cicd.py)",
    ):
        config = internals.instance_config(str(tmp_path))
        with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
            assert config["run_monitoring"]["poll_interval_seconds"] == 7
            assert instance.run_monitoring_poll_interval_seconds == 7
        (tmp_path / "dagster.yaml").write_text("run_monitoring:\n  enabled: maybe\n")
        with pytest.raises(dg.DagsterInvalidConfigError):
            internals.instance_config(str(tmp_path))


def test_dagster_internals_ask_a_code_server_for_its_runs(tiny_location: Path, tmp_path: Path) -> None:
    from rtml.defs import dagster_internals as internals
    from rtml.defs.automation.runs import code_server_verdict

    socket_path, log = tmp_path / "grpc.sock", tmp_path / "grpc.log"
    with log.open("wb") as output:  # the child keeps its own copy of the file
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "dagster", "api", "grpc", "--python-file", "rtml_tiny_location.py"),
                *("--socket", str(socket_path)),
            ],
            cwd=tiny_location,
            stdout=output,
            stderr=output,
        )
    info = json.dumps({"host": "localhost", "socket": str(socket_path)})
    run = dg.DagsterRun(job_name="__ASSET_JOB", run_id="0" * 36, tags={internals.GRPC_INFO_TAG: info})
    with private_api(
        "dagster",
        "dagster._grpc.client.DagsterGrpcClient.get_current_runs, dagster._grpc.types.GetCurrentRunsResult, "
        "dagster._core.errors.DagsterUserCodeUnreachableError, dagster._core.launcher.CheckRunHealthResult/"
        "WorkerStatus, dagster._core.storage.tags.GRPC_INFO_TAG",
        "run monitoring (rtml.defs.automation.runs.MonitoredRunLauncher) and `rtml demo`'s stop",
    ):
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    executing = internals.current_runs("localhost", None, str(socket_path), False)
                    break
                except internals.DagsterUserCodeUnreachableError:
                    assert server.poll() is None and time.monotonic() < deadline, (
                        tmp_path / "grpc.log"
                    ).read_text()
                    time.sleep(0.5)
            assert list(executing) == []
            verdict = code_server_verdict(run, None)
            assert verdict is not None and verdict.status == internals.WorkerStatus.NOT_FOUND
            assert verdict.msg == f"its code server ({socket_path}) no longer executes it"
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:  # a loaded machine: what follows needs it gone, not graceful
                server.kill()
                server.wait(10)
        with pytest.raises(internals.DagsterUserCodeUnreachableError):
            internals.current_runs("localhost", None, str(socket_path), False)
        verdict = code_server_verdict(run, os.getpid())  # this process is alive, but not on its socket
        assert verdict is not None and verdict.status == internals.WorkerStatus.RUNNING
        assert verdict.msg == f"its code server is gone, its worker {os.getpid()} runs"
        # the launcher's hook that run monitoring calls is still the one MonitoredRunLauncher overrides
        assert dg.DefaultRunLauncher.check_run_worker_health.__name__ == "check_run_worker_health"
        assert "supports_check_run_worker_health" in dir(dg.DefaultRunLauncher)


def test_dagster_dbt_internals_point_a_dbt_run_s_events_at_its_own_database() -> None:
    """dagster-dbt takes a run's relations from the invocation's ``manifest`` (a settable field), and
    after the adapter they name the run's database: its ``information_schema`` is the one dagster-dbt
    then reads column schemas from (the whole path: tests/test_automation.py, a world not named "rtml")."""
    import dataclasses
    from types import SimpleNamespace

    from dagster_dbt.core.dbt_cli_invocation import DbtCliInvocation
    from dagster_dbt.core.dbt_event_iterator import _get_dbt_resource_props_from_event

    from rtml.defs import dagster_dbt_internals as internals

    model = "model.rtml.customer_features"
    manifest = {
        "metadata": {"adapter_type": "postgres"},
        "nodes": {
            model: {
                "unique_id": model,
                "database": "rtml",
                "schema": "features",
                "alias": "customer_features",
                "relation_name": '"rtml"."features"."customer_features"',
            }
        },
        "sources": {
            "source.rtml.raw.transactions": {
                "database": "rtml",
                "relation_name": '"rtml"."raw"."transactions"',
            }
        },
    }
    invocation = SimpleNamespace(manifest=manifest)
    event = SimpleNamespace(metadata={"unique_id": dg.TextMetadataValue(model)})
    with private_api(
        "dagster-dbt",
        "DbtCliInvocation.manifest, dbt_event_iterator._get_dbt_resource_props_from_event",
        "the dbt assets' column metadata (rtml.defs.features.assets._dbt_build)",
    ):
        fields = {field.name for field in dataclasses.fields(DbtCliInvocation)}
        assert "manifest" in fields and not DbtCliInvocation.__dataclass_params__.frozen  # type: ignore[attr-defined]
        internals.retarget_dbt_invocation(invocation, "fraud")
        props = _get_dbt_resource_props_from_event(invocation, event)  # type: ignore[arg-type]
        relation = '"fraud"."features"."customer_features"'
        assert (props["database"], props["relation_name"]) == ("fraud", relation)
    source = invocation.manifest["sources"]["source.rtml.raw.transactions"]
    assert source["relation_name"] == '"fraud"."raw"."transactions"'
    assert manifest["nodes"][model]["database"] == "rtml"  # a copy: the definitions' manifest is untouched
    same = SimpleNamespace(manifest=manifest)
    internals.retarget_dbt_invocation(same, "rtml")
    assert same.manifest is manifest  # already its database: nothing copied


def _trickling(n: int, gap: float) -> Iterator[int]:
    """Events as dbt emits them while it builds: one every ``gap`` seconds."""
    for i in range(n):
        time.sleep(gap)
        yield i


def _consumer_cpu(imap: Any) -> tuple[list[int], float]:
    """The results and the consuming thread's CPU time while 5 items trickle in over 1 s."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=4) as executor:
        began = time.thread_time()
        results = list(imap(executor=executor, iterable=_trickling(5, 0.2), func=lambda i: i * i))
        return results, time.thread_time() - began


def test_dagster_dbt_internals_wait_for_dbt_s_events_without_spinning() -> None:
    from dagster._core.utils import imap
    from dagster_dbt.core import dbt_event_iterator

    from rtml.defs import dagster_dbt_internals as internals

    with private_api(
        "dagster",
        "dagster._core.utils.imap (as dagster_dbt.core.dbt_event_iterator calls it)",
        "stop_dbt_busy_wait (the dbt assets' fetch_column_metadata, rtml.defs.dagster_dbt_internals)",
    ):
        # the cause, measured: the pinned version's consumer burns CPU the whole time it waits (a loaded
        # machine gives the spinning thread less than the whole second: the bar is low) ...
        results, spinning = _consumer_cpu(imap)
        assert results == [0, 1, 4, 9, 16]
        assert spinning > 0.25, f"dagster's imap used {spinning:.2f} s of CPU in 1 s: drop the fix?"
        # ... the replacement: the same results, next to no CPU
        results, blocking = _consumer_cpu(internals.imap_blocking)
        assert results == [0, 1, 4, 9, 16]
        assert blocking < 0.1, f"imap_blocking used {blocking:.2f} s of CPU while waiting"
        # and it is the one dagster-dbt calls once the dbt assets are loaded (by the module-level name
        # the fix replaces: were dagster-dbt to stop calling it so, the fix would replace nothing)
        import inspect

        import rtml.defs.features.assets  # noqa: F401

        assert "yield from imap(" in inspect.getsource(dbt_event_iterator)

        assert dbt_event_iterator.imap is internals.imap_blocking


def test_dagster_dbt_internals_know_the_environment_s_dbt_version_without_asking_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dbt assets' resource answers dagster-dbt's ``_cli_version`` with what ``dbt --version`` prints,
    without starting it; another executable is still asked (a stand-in script that prints a version)."""
    import inspect

    import dagster_dbt
    from dagster_dbt.core import resource as dbt_resource

    from rtml.defs import dagster_dbt_internals as internals
    from rtml.defs.features.assets import defs
    from rtml.features.dbt import dbt_executable, project_dir

    with private_api(
        "dagster-dbt",
        "DbtCliResource._cli_version (a cached property that cli() reads before every command)",
        "the dbt assets' resource (rtml.defs.dagster_dbt_internals.DbtCliResource)",
    ):
        assert "self._cli_version" in inspect.getsource(dagster_dbt.DbtCliResource.cli)
        asked: list[list[str]] = []
        real_check_output = dbt_resource.check_output

        def recorded(args: list[str], *rest: Any, **options: Any) -> bytes:
            asked.append(list(args))
            return real_check_output(args, *rest, **options)

        monkeypatch.setattr(dbt_resource, "check_output", recorded)
        printed = dagster_dbt.DbtCliResource(project_dir=str(project_dir()), dbt_executable=dbt_executable())
        assert printed._cli_version.major == 1 and asked == [[dbt_executable(), "--version"]]
        resource = defs.resources["dbt"]
        assert isinstance(resource, internals.DbtCliResource)
        assert resource.dbt_executable == dbt_executable()
        assert resource._cli_version == printed._cli_version and len(asked) == 1
        other = tmp_path / "dbt"
        other.write_text("#!/bin/sh\necho 'Core:\n  - installed: 1.10.3'\n")
        other.chmod(0o755)
        asked_other = internals.DbtCliResource(project_dir=str(project_dir()), dbt_executable=str(other))
        assert str(asked_other._cli_version) == "1.10.3" and asked[-1] == [str(other), "--version"]


def test_imap_blocking_keeps_the_order_and_raises_what_failed() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from rtml.defs.dagster_dbt_internals import imap_blocking

    def first_finishes_last(i: int) -> int:
        time.sleep(0.05 * (5 - i))
        return i

    def fails_on_three(i: int) -> int:
        if i == 3:
            raise ValueError("three")
        return i

    def broken_feed() -> Iterator[int]:
        yield 1
        raise RuntimeError("the dbt event stream broke")

    with ThreadPoolExecutor(max_workers=6) as executor:
        assert list(imap_blocking(executor, range(5), first_finishes_last)) == [0, 1, 2, 3, 4]
        for items, func, error in ((range(5), fails_on_three, "three"), (broken_feed(), int, "broke")):
            seen: list[int] = []
            with pytest.raises((ValueError, RuntimeError), match=error):
                for result in imap_blocking(executor, items, func):
                    seen.append(result)
            assert seen == ([0, 1, 2] if error == "three" else [1])  # what came before, first


# --- dbt ---------------------------------------------------------------------------------------------
def test_dbt_internals_name_a_behaviour_flag_s_source_as_dbt_common_does() -> None:
    from dbt_common.behavior_flags import BehaviorFlagRendered

    from rtml.features import dbt_internals

    with private_api(
        "dbt-common",
        "dbt_common.behavior_flags.BehaviorFlagRendered._default_source (a staticmethod, called with no "
        "arguments from __init__)",
        "stop_flag_source_stack_walk (run_dbt and the dbt assets, rtml.features.dbt_internals)",
    ):
        dbt_internals.stop_flag_source_stack_walk()
        dbt_common_s = dbt_internals.stack_walking_source
        assert dbt_common_s is not None and dbt_common_s is not dbt_internals.flag_source
        # called from here, both name this module
        assert dbt_common_s() == dbt_internals.flag_source() == __name__
        # and a flag created here is told so, through the replacement
        flag = BehaviorFlagRendered({"name": "rtml_probe", "default": False, "description": "probe"}, {})
        assert flag._behavior_change_event.flag_source == __name__
        assert BehaviorFlagRendered._default_source is dbt_internals.flag_source


# --- scikit-learn ------------------------------------------------------------------------------------
def test_sklearn_internals_find_the_same_bins_in_one_pass() -> None:
    import inspect

    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.ensemble._hist_gradient_boosting import binning

    from rtml.training import sklearn_internals

    rng = np.random.default_rng(7)
    X = rng.normal(size=(3_000, 4))
    X[rng.random(X.shape) < 0.1] = np.nan  # missing values are left out of the percentiles
    X[:, 2] = np.round(X[:, 2])  # few distinct values: midpoints, no percentiles
    y = (np.nan_to_num(X[:, 0]) + rng.normal(size=len(X)) > 1.5).astype(int)
    weights = np.where(y == 1, 7.0, 1.0)
    weights[:50] = 0.0  # zero weights are dropped first
    with private_api(
        "scikit-learn",
        "sklearn.ensemble._hist_gradient_boosting.binning._find_binning_thresholds(col_data, max_bins, "
        "sample_weight) calling its module's _weighted_percentile once per percentile of "
        "np.linspace(0, 100, max_bins + 1)[1:-1]",
        "fix_bin_thresholds (build_pipeline, rtml.training.sklearn_internals)",
    ):
        sklearn_internals.fix_bin_thresholds()  # already, if this process trained a model
        original = sklearn_internals.sklearn_s["find_binning_thresholds"]
        assert binning._find_binning_thresholds is sklearn_internals.find_binning_thresholds
        # the loop this adapter removes is still there: once scikit-learn fixes it, the adapter goes
        assert original.__module__ == binning.__name__
        assert "for percentile in percentiles" in inspect.getsource(original)
        for column in range(X.shape[1]):
            for max_bins in (255, 16):
                ours = binning._find_binning_thresholds(X[:, column], max_bins, weights)
                theirs = original(X[:, column], max_bins, weights)
                assert ours.tobytes() == theirs.tobytes(), (column, max_bins)
        # through the estimator: one percentile call per feature instead of one per percentile
        calls: list[object] = []
        own_percentile = sklearn_internals.sklearn_s["weighted_percentile"]

        def counted(*args: Any, **kwargs: Any) -> Any:
            calls.append(args[2])
            return own_percentile(*args, **kwargs)

        sklearn_internals.sklearn_s["weighted_percentile"] = counted
        try:
            HistGradientBoostingClassifier(max_iter=3, class_weight="balanced").fit(X, y)
        finally:
            sklearn_internals.sklearn_s["weighted_percentile"] = own_percentile
        assert len(calls) == 3  # the three features with more distinct values than bins
        assert all(np.ndim(rank) == 1 for rank in calls)


def test_sklearn_internals_bin_a_column_without_values_as_earlier_releases_did() -> None:
    from sklearn.ensemble._hist_gradient_boosting import binning

    from rtml.training import sklearn_internals

    column = np.full(500, np.nan)
    weights = np.ones(500)
    present_but_weightless = np.arange(500.0)
    with private_api(
        "scikit-learn",
        "sklearn.ensemble._hist_gradient_boosting.binning._find_binning_thresholds failing on a column "
        "without a non-missing, non-zero-weight value (1.9.1: sliding_window_view of an empty array)",
        "find_binning_thresholds (rtml.training.sklearn_internals)",
    ):
        sklearn_internals.fix_bin_thresholds()
        original = sklearn_internals.sklearn_s["find_binning_thresholds"]
        # scikit-learn's own still fails: once it does not, this part of the adapter goes
        cases = ((column, None), (column, weights), (present_but_weightless, 0 * weights))
        for values, sample_weight in cases:
            with pytest.raises(ValueError, match="window shape"):
                original(values, 255, sample_weight)
            ours = binning._find_binning_thresholds(values, 255, sample_weight)
            assert ours.shape == (0,) and ours.dtype == np.float64
        # a single distinct value: scikit-learn's own answer, which the empty column now shares
        assert original(np.ones(10), 255).shape == (0,)


# --- MLflow --------------------------------------------------------------------------------------
def test_mlflow_internals_build_the_map_that_log_model_s_requirement_check_uses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once built, ``log_model``'s check of the pip requirements reads the installed packages no more."""
    from mlflow.utils import requirements_utils

    from rtml.training import mlflow_internals

    calls = []
    packages_distributions = requirements_utils.importlib_metadata.packages_distributions

    def counted() -> Any:
        calls.append(1)
        return packages_distributions()

    with private_api(
        "mlflow",
        "mlflow.utils.requirements_utils._init_modules_to_packages_map and its cached map",
        "load_installed_packages (rtml.training.mlflow_internals)",
    ):
        monkeypatch.setattr(requirements_utils, "_MODULES_TO_PACKAGES", None)
        monkeypatch.setattr(requirements_utils.importlib_metadata, "packages_distributions", counted)
        mlflow_internals.load_installed_packages()
        assert calls == [1] and requirements_utils._MODULES_TO_PACKAGES
        requirements_utils.warn_dependency_requirement_mismatches([f"numpy=={version('numpy')}"])
        assert calls == [1]


# --- the adapters are the only users ---------------------------------------------------------------
ADAPTERS = {
    "redis_wire": "platform/rtml/features/online/redis_wire.py",
    "treelite_gtil": "platform/rtml/training/treelite_gtil.py",
    "dagster_internals": "platform/rtml/defs/dagster_internals.py",
    "dagster_dbt_internals": "platform/rtml/defs/dagster_dbt_internals.py",
    "dbt_internals": "platform/rtml/features/dbt_internals.py",
    "sklearn_internals": "platform/rtml/training/sklearn_internals.py",
    "mlflow_internals": "platform/rtml/training/mlflow_internals.py",
}
PRIVATE_ATTRIBUTES = {
    "redis_wire": {
        "send_packed_command",
        "send_command",
        "read_response",
        "make_connection",
        "connection_class",
        "connection_kwargs",
        "_sock",
    },
    "treelite_gtil": {"_LIB", "_check_call", "GTILConfig"},
    "dagster_internals": {"optimize_for_webserver", "_mp_ctx"},
    "dagster_dbt_internals": {"_cli_version"},
    "dbt_internals": {"_default_source"},
    "sklearn_internals": {"_find_binning_thresholds", "_weighted_percentile"},
    "mlflow_internals": {"_init_modules_to_packages_map"},
}


def _private_uses(tree: ast.AST) -> Iterator[tuple[str, str]]:
    """(adapter, what) for every import or attribute in ``tree`` that only that adapter may use."""
    for node in ast.walk(tree):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module]
            for alias in node.names:
                for adapter, names in PRIVATE_ATTRIBUTES.items():
                    if alias.name in names:
                        yield adapter, f"from {node.module} import {alias.name}"
        elif isinstance(node, ast.Attribute):
            for adapter, names in PRIVATE_ATTRIBUTES.items():
                if node.attr in names:
                    yield adapter, f".{node.attr}"
        for module in modules:
            if module.startswith("dagster._"):
                yield "dagster_internals", f"import {module}"
            if module.startswith(("treelite.core", "treelite.gtil.gtil")):
                yield "treelite_gtil", f"import {module}"
            if module.startswith("sklearn.ensemble._hist_gradient_boosting"):
                yield "sklearn_internals", f"import {module}"


def test_nothing_else_touches_them() -> None:
    """Only the adapter imports or calls its library's private names, in the package, the service, the
    tests and the benchmarks (text aside: dagster.yaml's documented ``module: dagster._core.storage.root``
    line in ``rtml.stack.dagster_home``)."""
    offenders = []
    patterns = ("platform/rtml/**/*.py", "serving/*.py", "tests/*.py", "benchmarks/*.py")
    paths = [path for pattern in patterns for path in ROOT.glob(pattern)]
    for path in sorted(paths):
        relative = path.relative_to(ROOT).as_posix()
        if relative == "tests/test_private_apis.py":
            continue
        for adapter, what in _private_uses(ast.parse(path.read_text())):
            if relative != ADAPTERS[adapter]:
                offenders.append(f"{relative}: {what} (only {ADAPTERS[adapter]} may)")
    assert offenders == []

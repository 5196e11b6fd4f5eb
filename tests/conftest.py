"""Shared fixtures: one platform stack per test session.

The session starts from a clean environment (tests/isolation.py, applied below before any setting is
read): no ambient ``RTML_*`` variable, ``MLFLOW_TRACKING_URI`` or ``.env``, and the simulator's start
pinned. By default it starts the embedded servers — the same ``LocalStack`` that ``rtml up`` uses — in a
temporary data directory, with its own MLflow server on a free port. CI's second pass runs the
integration tests against the machine's PostgreSQL and Redis through an explicit opt-in
(``RTML_TEST_DATABASE_URL``, ``RTML_TEST_REDIS_URL``, ``RTML_TEST_DAGSTER_DATABASE``,
``RTML_TEST_MLFLOW_DATABASE``), whose database names must look disposable (``rtml_ci_*``, ``rtml_test_*``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis

from rtml.config import (
    SLICES,
    ServicesSettings,
    Settings,
    SimulatorSettings,
    StackSettings,
    TrainingSettings,
    get_settings,
)
from rtml.stack.local import LocalStack, StackInfo
from rtml.stack.processes import free_port
from tests.isolation import TEST_NOW, NotDisposable, isolate

if TYPE_CHECKING:
    from rtml.training.tracking import TrainingResult

AMBIENT: dict[str, str] = {}
"""What the developer had exported (removed for the session)."""


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Before any test module is imported (the Dagster definitions read settings at import)."""
    try:
        AMBIENT.update(isolate(os.environ))
    except NotDisposable as refused:
        raise pytest.UsageError(str(refused)) from None
    get_settings.cache_clear()


# rtml.config was imported above, before RTML_ENV_FILE was cleared: no .env in this process either
for _slice in SLICES:
    _slice.model_config["env_file"] = None


@pytest.fixture(scope="session", autouse=True)
def world_clock() -> Iterator[datetime]:
    """Dagster's partition clock pinned to ``TEST_NOW`` for the whole session, before any other fixture:
    the fixed-date worlds' hours exist as partitions and their rows are not "in the future"
    (``rtml.defs.clock``), whatever the host's date. It holds in this process's main thread, where the
    tests run Dagster (``materialize``, ``execute_in_process``, sensors and schedules evaluated directly);
    processes a test starts (the daemon, the ``dagster`` CLI) run at the host's time. A test needing
    another time nests ``dg.partition_loading_context(effective_dt=...)``; wall-clock time (run
    timestamps, freshness checks, files' modification times) is never pinned."""
    import dagster as dg

    with dg.partition_loading_context(effective_dt=TEST_NOW):
        yield TEST_NOW


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    data_dir = tmp_path_factory.mktemp("rtml-data")  # never a developer's: RTML_DATA_DIR was cleared
    os.environ["RTML_DATA_DIR"] = str(data_dir)
    get_settings.cache_clear()
    # A port of its own: a developer's `make demo` may hold the default MLflow port.
    local = LocalStack(
        Settings(services=ServicesSettings(data_dir=data_dir), stack=StackSettings(mlflow_port=free_port()))
    )
    info = local.up()
    # Subprocesses (dbt, dagster, bentoml, mlflow clients) find the same servers through the environment.
    os.environ["RTML_DATABASE_URL"] = info.database_url
    os.environ["RTML_REDIS_URL"] = info.redis_url
    os.environ["RTML_MLFLOW_TRACKING_URI"] = info.mlflow_tracking_uri
    os.environ["MLFLOW_TRACKING_URI"] = info.mlflow_tracking_uri
    get_settings.cache_clear()
    try:
        yield info
    finally:
        local.down()


@pytest.fixture(scope="session")
def database_url(stack: StackInfo) -> str:
    """psycopg URL of the platform database (``rtml``), with tables created."""
    return stack.database_url


@pytest.fixture(scope="session")
def redis_url(stack: StackInfo) -> str:
    return stack.redis_url


@pytest.fixture(scope="session")
def mlflow_tracking_uri(stack: StackInfo) -> str:
    """http URL of the session's MLflow tracking server and model registry (shared by all tests)."""
    return stack.mlflow_tracking_uri


@pytest.fixture(scope="session")
def scratch_database(database_url: str) -> Iterator[Callable[[str], str]]:
    """``make(name)`` → URL of a fresh database of a test's own on the session's server. Named after the
    session's database (CI's second pass shares a server: ``rtml_ci_<pid>_<name>``) and dropped when the
    session ends."""
    import psycopg
    from sqlalchemy.engine import make_url

    from rtml.features.sample_data import create_database

    made: list[str] = []

    def make(name: str) -> str:
        full = f"{make_url(database_url).database}_{name}"
        made.append(full)
        return create_database(database_url, full)

    yield make
    with psycopg.connect(database_url, autocommit=True) as conn:
        for name in made:
            conn.execute(f'drop database if exists "{name}" with (force)')


TRAINING_START = datetime(2026, 9, 1, tzinfo=UTC)
TRAINING_DAYS = 21
LABEL_DAYS = 10  # labels arriving up to 10 days after the last transaction are known


@pytest.fixture(scope="session")
def training_settings(tmp_path_factory: pytest.TempPathFactory, stack: StackInfo) -> Settings:
    """A smaller simulated world for the training tests (its own data directory for snapshots)."""
    return Settings(
        services=ServicesSettings(data_dir=tmp_path_factory.mktemp("rtml-training")),
        simulator=SimulatorSettings(start=TRAINING_START, customers=2_000, transactions_per_day=8_000),
        training=TrainingSettings(mlflow_tracking_uri=stack.mlflow_tracking_uri),
    )


@pytest.fixture(scope="session")
def training_db(
    scratch_database: Callable[[str], str],
    training_settings: Settings,
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    """A database (``<session db>_training``) with three weeks of simulated transactions and their
    labels through the ingest loader, then ``dbt run`` of everything ``training_set`` needs."""

    from rtml.features.dbt import run_dbt
    from rtml.features.sample_data import load_simulated

    url = scratch_database("training")
    end = TRAINING_START + timedelta(days=TRAINING_DAYS)
    load_simulated(url, training_settings, TRAINING_START, end, labels_until=end + timedelta(days=LABEL_DAYS))
    with pytest.MonkeyPatch.context() as patch:  # keep this database's manifest out of the project's target/
        patch.setenv("DBT_TARGET_PATH", str(tmp_path_factory.mktemp("dbt-target-training")))
        proc = run_dbt(["run", "--full-refresh", "--select", "+training_set"], url, check=False)
    assert proc.returncode == 0, proc.stdout[-5000:]
    return url


@pytest.fixture(scope="session")
def trained_model(training_db: str, mlflow_tracking_uri: str, training_settings: Settings) -> TrainingResult:
    """One model trained on the training world and registered as a version of ``TRAINED_MODEL``, for the
    modules that need one (training takes 20-40 s here). A module that moves aliases works on a copy of
    the version under a name of its own (``tests.model_versions.copied``), so none sees another's."""
    from rtml.training.tracking import train_and_register
    from tests.model_versions import TRAINED_MODEL

    return train_and_register(training_db, mlflow_tracking_uri, training_settings, model_name=TRAINED_MODEL)


@pytest.fixture(scope="module")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis Cluster of three masters on loopback, for the module (``tests/redis_cluster.py``)."""
    from tests.redis_cluster import running_cluster

    with running_cluster(tmp_path_factory.mktemp("cluster")) as url:
        yield url


@pytest.fixture(scope="module")
def redis_cluster(redis_cluster_url: str) -> Iterator[redis.RedisCluster]:
    cluster = redis.RedisCluster.from_url(redis_cluster_url)
    yield cluster
    cluster.close()


@pytest.fixture(scope="module")
def separate_dbt_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A module that builds dbt into its own database keeps dbt's ``target/`` (whose manifest names that
    database) out of the project's, which the code location reads."""
    target = tmp_path_factory.mktemp("dbt-target")
    patch = pytest.MonkeyPatch()
    patch.setenv("DBT_TARGET_PATH", str(target))
    yield target
    patch.undo()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--shuffle-modules",
        type=int,
        metavar="SEED",
        help="run the modules in an order shuffled with SEED (tests keep their order within a module): "
        "no module may depend on what ran before it in the session's databases",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Tests that use the stack talk to PostgreSQL/Redis: CI runs them a second time against the
    # machine's servers (`pytest -m integration`).
    for item in items:
        if "stack" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)
    seed = config.getoption("shuffle_modules")
    if seed is not None:
        from tests.scheduling import shuffled_modules

        items[:] = shuffled_modules(items, seed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """In CI a skip is a failure: a missing program there is a broken CI, not a user's machine."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (CI never skips): {report.longrepr}"


@pytest.hookimpl(optionalhook=True)  # a session without xdist (-p no:xdist) has no such hook
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """``--dist loadfile`` (`make test`): whole modules per worker, the users of one session world
    together, the heaviest first (tests/scheduling.py). Other modes keep xdist's own scheduler."""
    if config.getvalue("dist") != "loadfile":
        return None
    from tests.scheduling import WorldsTogetherHeaviestFirst

    return WorldsTogetherHeaviestFirst(config, log)  # type: ignore[arg-type]

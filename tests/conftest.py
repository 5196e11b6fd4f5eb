"""Shared fixtures: one platform stack per test session.

With ``RTML_DATABASE_URL`` and ``RTML_REDIS_URL`` set, tests use those servers (CI's second pass runs
the integration tests against the machine's PostgreSQL and Redis). Without them, the session starts
the embedded default — the same ``LocalStack`` that ``rtml up`` uses — in a temporary data directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from rtml.config import Settings, get_settings
from rtml.services.stack import LocalStack, StackInfo


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackInfo]:
    data_dir = Path(os.environ.get("RTML_DATA_DIR") or tmp_path_factory.mktemp("rtml-data"))
    os.environ["RTML_DATA_DIR"] = str(data_dir)
    get_settings.cache_clear()
    local = LocalStack(Settings(data_dir=data_dir))
    info = local.up()
    # Subprocesses (dbt, dagster, bentoml) find the same servers through the environment.
    os.environ["RTML_DATABASE_URL"] = info.database_url
    os.environ["RTML_REDIS_URL"] = info.redis_url
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


@pytest.fixture(scope="module")
def separate_dbt_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A module that builds dbt into its own database keeps dbt's ``target/`` (whose manifest names that
    database) out of the project's, which the code location reads."""
    target = tmp_path_factory.mktemp("dbt-target")
    patch = pytest.MonkeyPatch()
    patch.setenv("DBT_TARGET_PATH", str(target))
    yield target
    patch.undo()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests that use the stack talk to PostgreSQL/Redis: CI runs them a second time against the
    # machine's servers (`pytest -m integration`).
    for item in items:
        if "stack" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """In CI a skip is a failure: a missing program there is a broken CI, not a user's machine."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (CI never skips): {report.longrepr}"

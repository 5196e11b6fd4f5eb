"""The test session is independent of the developer's environment (tests/isolation.py): ambient
``RTML_*`` variables, ``MLFLOW_TRACKING_URI`` and ``.env`` are ignored, existing servers are used only
through the explicit ``RTML_TEST_*`` opt-in, and only with disposable database names."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.isolation import NotDisposable, check_disposable, isolate
from tests.isolation_probe import DOTENV, EXPORTED

PROJECT = Path(__file__).resolve().parents[1]


def test_isolate_removes_ambient_settings_and_maps_the_opt_in() -> None:
    environ = {
        "PATH": "/usr/bin",
        "RTML_DATA_DIR": "/home/dev/.rtml",
        "RTML_MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
        "RTML_TEST_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/rtml_ci_42",
        "RTML_TEST_DAGSTER_DATABASE": "rtml_ci_42_dagster",
        "RTML_TEST_MLFLOW_DATABASE": "rtml_ci_42_mlflow",
        "RTML_TEST_REDIS_URL": "redis://127.0.0.1:6379/0",
    }
    removed = isolate(environ)
    assert set(removed) == {"RTML_DATA_DIR", "RTML_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI"}
    assert environ["RTML_DATABASE_URL"] == "postgresql://postgres@127.0.0.1:5432/rtml_ci_42"
    assert environ["RTML_DAGSTER_DATABASE"] == "rtml_ci_42_dagster"
    assert environ["RTML_MLFLOW_DATABASE"] == "rtml_ci_42_mlflow"
    assert environ["RTML_REDIS_URL"] == "redis://127.0.0.1:6379/0"
    assert environ["RTML_ENV_FILE"] == "" and environ["RTML_SIM_START"].startswith("2026-11-01T00:00")
    assert "RTML_DATA_DIR" not in environ and "MLFLOW_TRACKING_URI" not in environ
    again = dict(environ)
    isolate(again)  # what an xdist worker or a subprocess does with the session's environment
    assert again == environ


@pytest.mark.parametrize(
    ("settings", "refused"),
    [
        ({"RTML_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/rtml"}, "'rtml'"),
        ({"RTML_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/rtml_ci_1"}, "'dagster'"),
        (
            {
                "RTML_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/rtml_test_me",
                "RTML_DAGSTER_DATABASE": "rtml_test_me_dagster",
                "RTML_MLFLOW_DATABASE": "mlflow",
            },
            "'mlflow'",
        ),
        ({"RTML_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/production"}, "'production'"),
    ],
)
def test_non_disposable_databases_are_refused(settings: dict[str, str], refused: str) -> None:
    with pytest.raises(NotDisposable, match="refusing to run the tests against") as caught:
        check_disposable(settings)
    assert refused in str(caught.value)


def test_disposable_databases_pass() -> None:
    check_disposable({})  # the embedded default: a server of the session's own
    check_disposable(
        {
            "RTML_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/rtml_ci_1234",
            "RTML_DAGSTER_DATABASE": "rtml_ci_1234_dagster",
            "RTML_MLFLOW_DATABASE": "rtml_ci_1234_mlflow",
        }
    )


def _pytest(cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RTML_") and k != "PYTEST_XDIST_WORKER"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(PROJECT / "tests" / "isolation_probe.py"),
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            f"--rootdir={PROJECT}",
            f"--basetemp={cwd / 'basetemp'}",
        ],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_session_ignores_exported_settings_and_dotenv(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(DOTENV)
    # without the isolation, the platform would adopt both (the probe's setting is real)
    plain = {k: v for k, v in os.environ.items() if not k.startswith("RTML_")}
    adopted = subprocess.run(
        [sys.executable, "-c", "from rtml.config import Settings; print(Settings().simulator.seed)"],
        cwd=tmp_path,
        env={**plain, **EXPORTED},
        capture_output=True,
        text=True,
        check=True,
    )
    assert adopted.stdout.strip() == "4242"

    proc = _pytest(tmp_path, **EXPORTED)
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_a_session_refuses_a_non_disposable_database(tmp_path: Path) -> None:
    proc = _pytest(tmp_path, RTML_TEST_DATABASE_URL="postgresql://postgres@127.0.0.1:5432/rtml")
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "ERROR: refusing to run the tests against" in output, output[-3000:]
    assert "RTML_TEST_DATABASE_URL → database 'rtml'" in output, output[-3000:]

"""Run by tests/test_isolation.py in a pytest session of its own, with a developer's settings exported
and a ``.env`` in the working directory: none of them may reach the session or its subprocesses.
Not collected by default (the file name does not start with ``test_``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rtml.config import get_settings
from tests.isolation import TEST_SIM_START

EXPORTED = {
    "RTML_DATA_DIR": "/nonexistent/developer-stack",
    "RTML_MLFLOW_TRACKING_URI": "http://developer-mlflow.invalid:5000",
    "MLFLOW_TRACKING_URI": "http://developer-mlflow.invalid:5000",
    "RTML_SIM_START": "2031-01-01T00:00:00+00:00",
}
DOTENV = "RTML_SIM_SEED=4242\nRTML_REDIS_URL=redis://developer.invalid:6379/0\n"


def test_the_session_sees_no_exported_setting_and_no_dotenv() -> None:
    assert Path(".env").read_text() == DOTENV  # the probe runs where the developer's .env is
    for name, value in EXPORTED.items():
        assert os.environ.get(name) != value, name
    get_settings.cache_clear()
    settings = get_settings()
    assert settings.services.data_dir != Path(EXPORTED["RTML_DATA_DIR"])
    assert settings.training.mlflow_tracking_uri is None
    assert settings.simulator.start == TEST_SIM_START
    assert (settings.simulator.seed, settings.services.redis_url) != (
        4242,
        "redis://developer.invalid:6379/0",
    )
    # the session's subprocesses (dbt, dagster, bentoml, the CLI) inherit the clean environment
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "from rtml.config import Settings; s = Settings(); print(s.simulator.seed, s.services.redis_url)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert child.stdout.split() == [str(settings.simulator.seed), "None"], child.stdout

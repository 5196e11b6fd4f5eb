"""A test session independent of what a developer exported: the environment the suite starts from.

``tests/conftest.py`` calls :func:`isolate` before any setting is read. It removes every ``RTML_*``
variable and MLflow's own ``MLFLOW_TRACKING_URI`` (an exported ``RTML_DATA_DIR`` made the session adopt
— and stop — a developer's running stack, an exported tracking URI promoted toy models of the real
``fraud-detector``), switches the ``.env`` file off, and pins the simulator's start (the platform's
default follows the current day; the tests' partitions and data are fixed dates). The world time they are
run at, :data:`TEST_NOW`, is pinned in the test process by ``tests/conftest.py``.

Running against existing servers is an explicit opt-in, as CI's second pass does (``.ci/run``):
``RTML_TEST_DATABASE_URL``, ``RTML_TEST_REDIS_URL``, ``RTML_TEST_DAGSTER_DATABASE`` and
``RTML_TEST_MLFLOW_DATABASE`` become the session's ``RTML_DATABASE_URL`` ... ``RTML_MLFLOW_DATABASE``.
Tests create, fill and drop databases, so every database named that way must look disposable
(:data:`DISPOSABLE`, e.g. ``rtml_ci_1234`` or ``rtml_test_mine``); anything else stops the session.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from datetime import UTC, datetime

from sqlalchemy.engine import make_url

OPT_IN = {
    "RTML_TEST_DATABASE_URL": "RTML_DATABASE_URL",
    "RTML_TEST_REDIS_URL": "RTML_REDIS_URL",
    "RTML_TEST_DAGSTER_DATABASE": "RTML_DAGSTER_DATABASE",
    "RTML_TEST_MLFLOW_DATABASE": "RTML_MLFLOW_DATABASE",
}
"""Opt-in variables for existing servers → the settings they become inside the session."""
AMBIENT_PREFIXES = ("RTML_",)
AMBIENT_NAMES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
DISPOSABLE = re.compile(r"^rtml_(ci|test)_[a-z0-9_]+$")
"""Names of databases a test session may create, fill and drop on a shared server."""
TEST_SIM_START = datetime(2026, 11, 1, tzinfo=UTC)
"""The simulated history the tests' partitions and fixtures are written for (``RTML_SIM_START``)."""
TEST_NOW = datetime(2026, 12, 1, tzinfo=UTC)
"""The world time the tests run their fixed-date worlds at, whatever the host's date (``tests/conftest.py``
pins Dagster's partition clock to it, ``rtml.defs.clock``): after the newest day a test loads through
Dagster (labels until 2026-11-20), so its partitions exist and its rows are not "in the future"."""
ENV_FILE_OFF = ""
"""``RTML_ENV_FILE`` set empty: no ``.env`` (``rtml.config``), in this process and its subprocesses."""


class NotDisposable(ValueError):
    pass


def isolate(environ: MutableMapping[str, str]) -> dict[str, str]:
    """Clean ``environ`` in place as described above; returns what was removed (name → value).

    Raises :class:`NotDisposable` when an opted-in database is not named like a disposable one."""
    opted_in = {setting: environ[name] for name, setting in OPT_IN.items() if environ.get(name)}
    check_disposable(opted_in)
    removed = {
        name: environ.pop(name)
        for name in list(environ)
        if (name.startswith(AMBIENT_PREFIXES) or name in AMBIENT_NAMES) and name not in OPT_IN
    }  # the opt-in stays: pytest-xdist's workers and subprocesses isolate again and must agree
    environ.update(opted_in)
    environ["RTML_ENV_FILE"] = ENV_FILE_OFF
    environ["RTML_SIM_START"] = TEST_SIM_START.isoformat()
    return removed


def check_disposable(settings: dict[str, str]) -> None:
    """Every database the settings name (the URL's, Dagster's, MLflow's) must match :data:`DISPOSABLE`."""
    names: dict[str, str] = {}
    if url := settings.get("RTML_DATABASE_URL"):
        names["RTML_TEST_DATABASE_URL"] = make_url(url).database or ""
    for setting, default in (("RTML_DAGSTER_DATABASE", "dagster"), ("RTML_MLFLOW_DATABASE", "mlflow")):
        if setting in settings or "RTML_DATABASE_URL" in settings:
            # unset, the platform would use its fixed default name on that server
            names[setting.replace("RTML_", "RTML_TEST_")] = settings.get(setting, default)
    bad = {variable: name for variable, name in names.items() if not DISPOSABLE.match(name)}
    if bad:
        listed = ", ".join(f"{variable} → database {name!r}" for variable, name in sorted(bad.items()))
        raise NotDisposable(
            f"refusing to run the tests against {listed}: tests create, fill and drop databases, so on an "
            f"existing server they only use ones named like a disposable database ({DISPOSABLE.pattern}, "
            "e.g. rtml_test_mine, rtml_test_mine_dagster, rtml_test_mine_mlflow). Set "
            "RTML_TEST_DATABASE_URL, RTML_TEST_DAGSTER_DATABASE and RTML_TEST_MLFLOW_DATABASE to such names, "
            "or unset them to use the embedded servers."
        )


__all__ = [
    "DISPOSABLE",
    "OPT_IN",
    "TEST_NOW",
    "TEST_SIM_START",
    "NotDisposable",
    "check_disposable",
    "isolate",
]

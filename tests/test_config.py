"""Settings: environment overrides, and the generated reference stays in step with the class."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtml.cli import settings_reference
from rtml.config import Settings, database_url_for

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTML_QUARANTINE_SHARE_MAX", "0.05")
    monkeypatch.setenv("RTML_CURRENCIES", '["EUR"]')
    settings = Settings()
    assert settings.quarantine_share_max == 0.05
    assert settings.currencies == ["EUR"]


def test_sibling_database_url_keeps_server_and_socket() -> None:
    url = database_url_for("postgresql://postgres:@/rtml?host=/tmp/pg", "dagster")
    assert url.startswith("postgresql://postgres:@/dagster?host=")
    assert database_url_for("postgresql://u:p@db:5432/rtml", "mlflow") == "postgresql://u:p@db:5432/mlflow"


def test_configuration_reference_is_generated_from_the_settings() -> None:
    reference = settings_reference()
    for name in Settings.model_fields:
        assert f"`RTML_{name.upper()}`" in reference
    assert DOCS.read_text() == reference, "docs/configuration.md is stale: run `make docs-config`"


def test_a_currency_dbt_would_truncate_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    monkeypatch.setenv("RTML_CURRENCIES", '["EUR", "EURO"]')
    with pytest.raises(ValidationError, match="currencies"):
        Settings()

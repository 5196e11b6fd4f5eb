"""Settings: environment overrides (the variables' names unchanged by the slices), ``.env``, the live
start, and the generated reference stays in step with the classes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from rtml.cli import settings_reference
from rtml.config import (
    SLICES,
    IngestSettings,
    ServicesSettings,
    ServingSettings,
    Settings,
    SimulatorSettings,
    StreamSettings,
    database_url_for,
    live_sim_start,
)

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTML_QUARANTINE_SHARE_MAX", "0.05")
    monkeypatch.setenv("RTML_CURRENCIES", '["EUR"]')
    settings = Settings()
    assert settings.ingest.quarantine_share_max == 0.05
    assert settings.ingest.currencies == ["EUR"]


# A variable per way a slice names it: the slice's prefix (RTML_SERVING_), the shared RTML_, and an alias
# for a field whose variable does not follow its slice's prefix.
VARIABLES = [
    ("RTML_SERVING_MAX_BATCH", "7", ("serving", "max_batch"), 7),
    ("RTML_SERVED_FEATURES_RETENTION_DAYS", "3.5", ("serving", "served_features_retention_days"), 3.5),
    ("RTML_INGEST_CHUNK_ROWS", "9", ("ingest", "chunk_rows"), 9),
    ("RTML_SIM_SEED", "12", ("simulator", "seed"), 12),
    ("RTML_DEMO_DAYS", "3", ("simulator", "demo_days"), 3),
    ("RTML_ONLINE_KEY_PREFIX", "mine", ("online", "key_prefix"), "mine"),
    ("RTML_SPEED_LAYER_ENABLED", "false", ("online", "speed_layer_enabled"), False),
    ("RTML_TRANSACTIONS_FEED", "stream", ("stream", "transactions_feed"), "stream"),
    ("RTML_STREAM_KEY", "k", ("stream", "key"), "k"),
    ("RTML_TRAFFIC_RATE", "2.5", ("traffic", "rate"), 2.5),
    ("RTML_DAGSTER_PORT", "3333", ("stack", "dagster_port"), 3333),
]


@pytest.mark.parametrize(("variable", "value", "field", "expected"), VARIABLES, ids=[v[0] for v in VARIABLES])
def test_each_slice_reads_its_variables(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: tuple[str, str], expected: object
) -> None:
    monkeypatch.setenv(variable, value)
    slice_name, name = field
    assert getattr(getattr(Settings(), slice_name), name) == expected


def test_every_slice_reads_the_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{variable}={value}\n" for variable, value, _, _ in VARIABLES))
    by_slice = {cls: cls(_env_file=env_file) for cls in SLICES}  # type: ignore[call-arg]
    for _, _, (slice_name, name), expected in VARIABLES:
        cls = Settings.model_fields[slice_name].annotation
        assert getattr(by_slice[cls], name) == expected, (slice_name, name)  # type: ignore[index]


def test_slices_are_constructed_by_field_name() -> None:
    assert ServingSettings(max_batch=3).max_batch == 3
    assert IngestSettings(chunk_rows=4).chunk_rows == 4  # aliased to RTML_INGEST_CHUNK_ROWS
    assert StreamSettings(transactions_feed="stream").transactions_feed == "stream"
    settings = Settings(ingest=IngestSettings(chunk_rows=5))
    assert settings.ingest.chunk_rows == 5 and settings.serving == ServingSettings()


def test_a_live_start_follows_the_data_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Unset, ``sim_start`` is the start recorded under the data directory of the settings (another
    slice's), not of the environment."""
    monkeypatch.delenv("RTML_SIM_START", raising=False)
    recorded = tmp_path / "live-window.json"
    recorded.write_text('{"sim_start": "2026-10-05T00:00:00+00:00"}')
    settings = Settings(
        services=ServicesSettings(data_dir=tmp_path), simulator=SimulatorSettings(demo_days=3)
    )
    assert settings.simulator.start_is_live
    assert settings.simulator.start == live_sim_start(tmp_path, 3) == datetime(2026, 10, 5, tzinfo=UTC)
    pinned = Settings(simulator=SimulatorSettings(start=datetime(2026, 11, 1, tzinfo=UTC)))
    assert not pinned.simulator.start_is_live


def test_sibling_database_url_keeps_server_and_socket() -> None:
    url = database_url_for("postgresql://postgres:@/rtml?host=/tmp/pg", "dagster")
    assert url.startswith("postgresql://postgres:@/dagster?host=")
    assert database_url_for("postgresql://u:p@db:5432/rtml", "mlflow") == "postgresql://u:p@db:5432/mlflow"


def test_configuration_reference_is_generated_from_the_settings() -> None:
    reference = settings_reference()
    for cls in SLICES:
        for name in cls.model_fields:
            assert f"`{cls.env_var(name)}`" in reference
    assert DOCS.read_text() == reference, "docs/configuration.md is stale: run `make docs-config`"


def test_a_currency_dbt_would_truncate_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    monkeypatch.setenv("RTML_CURRENCIES", '["EUR", "EURO"]')
    with pytest.raises(ValidationError, match="currencies"):
        Settings()

"""Drift scenarios switched at run time (``rtml scenario``): the simulator applies them per row from the
switch on, from random streams of their own, so the output without a scenario stays bit for bit what it
was, rows before a switch do not change, and an hour generated again later sees what was on then. The
hourly ingestion (a Dagster run) reads the timeline when it generates, without a restart."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from rtml.config import ServicesSettings, get_settings
from rtml.sources.scenarios import ScenarioInterval, ScenarioTimeline, timeline_path
from rtml.sources.simulator import DRIFT_SCENARIOS, Simulator
from rtml.stack.local import StackInfo
from tests.test_simulator import DAY, START, simulator  # the same small world

SWITCH = START + DAY + timedelta(hours=10, minutes=30, seconds=7)  # mid-hour, in daytime
STOP = SWITCH + timedelta(hours=3, minutes=10)
WINDOW = (START + DAY + timedelta(hours=8), START + DAY + timedelta(hours=16))

# sha256 of transactions + labels + truth (Arrow IPC) of one day, computed with the simulator of main
# before scenarios became per-row (commit 402f0a7): the output without a scenario must not move.
NO_SCENARIO_DIGEST = "8fa09dc6a6329179454699ce77b6a63a2aacc202d2e575f644e08d6c1449a437"


def timeline(scenario: str, start: datetime = SWITCH, stop: datetime | None = None) -> ScenarioTimeline:
    return ScenarioTimeline((ScenarioInterval(scenario, start, stop),))


def digest(*tables: pa.Table) -> str:
    out = hashlib.sha256()
    for table in tables:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table.combine_chunks())
        out.update(sink.getvalue().to_pybytes())
    return out.hexdigest()


@pytest.fixture(scope="module")
def base() -> Simulator:
    return simulator(ScenarioTimeline())


def rows(sim: Simulator) -> pd.DataFrame:
    tx = sim.transactions(*WINDOW).to_pandas()
    truth = sim.truth(*WINDOW).to_pandas()
    return tx.assign(pattern=truth.pattern.values, dirty=truth.dirty_kind.values).set_index("transaction_id")


def test_output_without_a_scenario_is_unchanged(base: Simulator) -> None:
    day = (START, START + DAY)
    labels = base.labels(START, START + 31 * DAY)
    assert digest(base.transactions(*day), labels, base.truth(*day)) == NO_SCENARIO_DIGEST
    # A timeline whose intervals lie elsewhere changes nothing either.
    elsewhere = simulator(timeline("amount_inflation", START + 40 * DAY))
    assert elsewhere.transactions(*day).equals(base.transactions(*day))


@pytest.mark.parametrize("scenario", DRIFT_SCENARIOS)
def test_a_switch_changes_rows_from_its_time_on_and_stop_restores(base: Simulator, scenario: str) -> None:
    plain = rows(base)
    drifted = rows(simulator(timeline(scenario, SWITCH, STOP)))
    clean = drifted[drifted.dirty == ""]
    assert clean.index.is_unique
    before, after = plain.event_ts < SWITCH, plain.event_ts >= STOP
    # Rows before the switch and after the stop: the same ids and values.
    pd.testing.assert_frame_equal(drifted[drifted.event_ts < SWITCH], plain[before])
    pd.testing.assert_frame_equal(drifted[drifted.event_ts >= STOP], plain[after])

    during = plain[~before & ~after]
    changed = drifted[(drifted.event_ts >= SWITCH) & (drifted.event_ts < STOP)]
    if scenario == "amount_inflation":
        assert (changed.index == during.index).all()
        ok = (during.dirty == "") & during.amount.between(5, 5_000)
        ratio = changed.amount[ok] / during.amount[ok]
        assert ratio.between(1.59, 1.61).mean() > 0.99
    elif scenario == "new_fraud_pattern":
        # Every original row stays with its id; the new pattern's rows come on top, in daytime.
        assert set(during.index) < set(changed.index)
        new = changed[changed.pattern == "daytime_low_risk"]
        assert len(new) >= 10 and set(new.index).isdisjoint(plain.index)
        assert new.merchant_category.isin(["grocery", "fashion"]).all()
    else:

        def share(frame: pd.DataFrame) -> float:
            return float(frame.merchant_category.isin(["digital_goods", "travel"]).mean())

        assert (changed.index == during.index).all()
        assert share(changed) > 1.5 * share(during)


@pytest.mark.parametrize("scenario", DRIFT_SCENARIOS)
def test_a_row_after_the_switch_does_not_depend_on_when_it_came(scenario: str) -> None:
    """Regenerating an hour later gives the same rows: a row under the scenario is the same whether the
    switch came a minute or an hour before it."""
    early = rows(simulator(timeline(scenario, SWITCH - timedelta(hours=1))))
    late = rows(simulator(timeline(scenario, SWITCH)))
    pd.testing.assert_frame_equal(early[early.event_ts >= SWITCH], late[late.event_ts >= SWITCH])


def test_labels_follow_the_rows_a_scenario_adds(base: Simulator) -> None:
    drifted = simulator(timeline("new_fraud_pattern", SWITCH, WINDOW[1]))
    truth = drifted.truth(*WINDOW).to_pandas()
    new = set(truth.transaction_id[truth.pattern == "daytime_low_risk"])
    labels = drifted.labels(WINDOW[0], WINDOW[1] + 31 * DAY).to_pandas()
    labelled = labels.set_index("transaction_id").loc[sorted(new)]
    assert labelled.is_fraud.all() and (labelled.label_source == "chargeback").all()
    plain_labels = base.labels(WINDOW[0], WINDOW[1] + 31 * DAY).to_pandas()
    assert set(labels.transaction_id) - set(plain_labels.transaction_id) == new


# --- the command and the timeline file -------------------------------------------------------------
@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A data directory of the test's own (its timeline), as `rtml` and the Dagster runs read it."""
    monkeypatch.setenv("RTML_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def rtml(*args: str) -> str:
    from rtml.cli import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_start_status_stop_and_a_new_simulator_reads_it(data_dir: Path) -> None:
    assert "active: none" in rtml("scenario", "status")
    began = datetime.now(UTC)
    assert "amount_inflation started" in rtml("scenario", "start", "amount_inflation")
    assert "nothing to change" in rtml("scenario", "start", "amount_inflation")
    assert "active: amount_inflation" in rtml("scenario", "status")
    stored = ScenarioTimeline.load(timeline_path(ServicesSettings(data_dir=data_dir)))
    assert [i.scenario for i in stored.intervals] == ["amount_inflation"]
    assert began <= stored.intervals[0].start <= datetime.now(UTC)
    # No restart: a simulator built now (as every ingestion run builds one) sees it.
    sim = simulator(timeline_path(ServicesSettings(data_dir=data_dir)))
    assert sim.scenarios_at(datetime.now(UTC)) == ["amount_inflation"]
    assert sim.scenarios_at(began - timedelta(seconds=1)) == []
    # A long-lived one (the traffic) picks up the stop when it reloads.
    assert "amount_inflation stopped" in rtml("scenario", "stop")
    assert sim.reload_scenarios()
    assert sim.scenarios_at(datetime.now(UTC) + timedelta(seconds=1)) == []
    assert "active: none" in rtml("scenario", "status")
    assert "amount_inflation" in rtml("scenario", "status")  # the past interval is listed

    from rtml.cli import app

    refused = CliRunner().invoke(app, ["scenario", "start", "solar_flare"])
    assert refused.exit_code != 0 and "amount_inflation" in refused.output


def test_the_hourly_ingestion_reads_the_timeline_without_a_restart(
    data_dir: Path, stack: StackInfo, database_url: str
) -> None:
    """A switch written to the timeline (as `rtml scenario start` does) changes what the next run of
    `ingestion_job` loads for the hour, from the switch on; the run's materialization names it."""
    from tests.code_location import code_location

    hour = datetime(2026, 11, 3, 10, tzinfo=UTC)
    switch_at = hour + timedelta(minutes=20)
    timeline("amount_inflation", switch_at).save(timeline_path(ServicesSettings(data_dir=data_dir)))
    key = f"{hour:%Y-%m-%d-%H:%M}"
    with dg.DagsterInstance.from_config(str(stack.dagster_home)) as instance:
        result = (
            code_location()
            .resolve_job_def("ingestion_job")
            .execute_in_process(instance=instance, partition_key=key)
        )
    assert result.success
    (materialization,) = result.asset_materializations_for_node("transactions_raw")
    assert materialization.metadata["drift_scenarios"].value == "amount_inflation"

    with psycopg.connect(database_url) as conn:
        loaded = pd.DataFrame(
            conn.execute(
                "select transaction_id, event_ts, amount from raw.transactions where source = %s", (key,)
            ).fetchall(),
            columns=["transaction_id", "event_ts", "amount"],
        ).set_index("transaction_id")
    plain = Simulator(get_settings().simulator, get_settings().ingest, ScenarioTimeline()).transactions(
        hour, hour + timedelta(hours=1)
    )
    plain_amount = plain.to_pandas().set_index("transaction_id").amount
    plain_amount = plain_amount[~plain_amount.index.duplicated()].reindex(loaded.index)
    ok = plain_amount.between(5, 5_000)
    before = (loaded.event_ts < switch_at) & ok
    after = (loaded.event_ts >= switch_at) & ok
    assert before.sum() > 100 and after.sum() > 100
    assert np.allclose(loaded.amount[before], plain_amount[before])
    assert np.allclose(loaded.amount[after] / plain_amount[after], 1.6, atol=0.01)

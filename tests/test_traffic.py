"""`rtml traffic` against a real scorer (``bentoml serve`` of ``rtml.serving.service`` with a model from the
session's MLflow registry): it scores at the asked rate, across an hour boundary, and what it sent is the
hourly ingestion's rows by id (loaded into ``raw.transactions`` with the real loader), the scored ones in
the prediction log; the scorer down is counted and backed off, and SIGTERM stops the command at once."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from rtml.config import ServicesSettings, ServingSettings, Settings, SimulatorSettings
from rtml.ingest.loader import load_transactions
from rtml.live_cli import start_demo_traffic
from rtml.sources.scenarios import ScenarioTimeline, switch, timeline_path
from rtml.sources.simulator import Simulator
from rtml.stack.processes import Sessions, free_port
from rtml.stack.scorer_process import SERVICE
from rtml.traffic import Traffic, TrafficStats, keep_share
from rtml.training import model_registry
from rtml.training.dataset import feature_spec
from tests.model_versions import gated, log_version, promote
from tests.test_serving import Server, Valkey, _env, start_server
from tests.test_serving_lifecycle import THRESHOLDS, fitted

# A pinned replay clock: wall-clock pace from six seconds before 13:00 of a past Tuesday, so the run
# crosses into the next hour and does not depend on the day it runs.
CLOCK_START = datetime(2026, 11, 10, 12, 59, 54, tzinfo=UTC)
RATE = 8.0  # requests/s
SECONDS = 14.0


def sim_settings(data_dir: Path) -> Settings:
    """A busy stream (about 17 transactions/s at this hour), so that RATE is a share of it."""
    return Settings(
        services=ServicesSettings(data_dir=data_dir),
        simulator=SimulatorSettings(
            start=datetime(2026, 11, 2, tzinfo=UTC),
            transactions_per_day=1_000_000,
            drift_scenario=None,
            drift_start=None,
        ),
    )


def replay_clock() -> Callable[[], datetime]:
    began = time.monotonic()
    return lambda: CLOCK_START + timedelta(seconds=time.monotonic() - began)


@dataclass
class Scorer:
    server: Server
    database_url: str


@pytest.fixture(scope="module")
def scorer(
    scratch_database: Callable[[str], str], mlflow_tracking_uri: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scorer]:
    """The real scoring service with a small production model, its prediction log in a database of the
    module's own, an empty online store (unknown entities score with defaults)."""
    work = tmp_path_factory.mktemp("traffic-scorer")
    database_url = scratch_database("traffic")
    name = f"fraud-detector-traffic-{uuid.uuid4().hex[:8]}"
    version = log_version(fitted(feature_spec(), compilable=True), name, gated(THRESHOLDS))
    promote(model_registry.client_for(mlflow_tracking_uri), name, version, "traffic tests")
    valkey = Valkey(work / "valkey", port=free_port())
    valkey.data_dir.mkdir()
    valkey.start()
    env = _env(
        RTML_REDIS_URL=valkey.url,
        RTML_DATABASE_URL=database_url,
        RTML_DATA_DIR=str(work / "data"),
        RTML_MLFLOW_TRACKING_URI=mlflow_tracking_uri,
        RTML_MODEL_NAME=name,
        RTML_PREDICTIONS_FLUSH_MS="100",
        BENTOML_HOME=str(work / "bentoml-home"),
        BENTOML_DO_NOT_TRACK="true",
    )
    server = start_server("scorer-traffic", SERVICE, env, work)
    try:
        yield Scorer(server, database_url)
    finally:
        server.stop()
        valkey.stop()


def run(traffic: Traffic) -> TrafficStats:
    return asyncio.run(traffic.run())


def ids(database_url: str, sql: str, params: tuple[Any, ...] = ()) -> set[str]:
    with psycopg.connect(database_url) as conn:
        return {row[0] for row in conn.execute(sql, params).fetchall()}


def test_traffic_scores_at_the_rate_and_sends_the_ingested_transactions(
    scorer: Scorer, tmp_path: Path
) -> None:
    settings = sim_settings(tmp_path)
    lines: list[str] = []
    clock = replay_clock()
    traffic = Traffic(
        settings,
        scorer.server.url,
        rate=RATE,
        duration=SECONDS,
        progress_seconds=5,
        clock=clock,
        echo=lines.append,
        record_outcomes=True,
    )
    # Mid-run, as `rtml scenario start amount_inflation` would (a second ahead: no row is due then).
    switched_at: list[datetime] = []

    def switch_on() -> None:
        switched_at.append(clock() + timedelta(seconds=1))
        switch(settings.services, "amount_inflation", True, switched_at[0])

    timer = threading.Timer(4.0, switch_on)
    timer.start()
    stats = run(traffic)
    timer.join()
    outcomes = stats.outcomes or {}
    assert traffic.started is not None and traffic.cursor is not None
    assert traffic.cursor >= CLOCK_START.replace(minute=0, second=0) + timedelta(hours=1)  # next hour

    # The rate: requests sent over the run, within the Poisson noise of the stream (about ±10 %).
    assert RATE * SECONDS * 0.7 <= stats.sent <= RATE * SECONDS * 1.3, lines
    assert stats.sent == len(outcomes) == stats.ok + stats.rejected
    assert stats.server_errors == stats.connection_errors == stats.missed == 0, lines
    assert any("req/s" in line and "p99" in line for line in lines[1:-1]), lines  # a progress line
    assert lines[-1].startswith("traffic stopped after") and f"sent {stats.sent}" in lines[-1]

    # The hourly ingestion of the same two hours, with the real loader: what was sent is those rows.
    hour = CLOCK_START.replace(minute=0, second=0)
    table = Simulator(settings.simulator, settings.ingest, timeline_path(settings.services)).transactions(
        hour, hour + timedelta(hours=2)
    )
    load_transactions(scorer.database_url, [table], source="traffic-test", ingest=settings.ingest)
    window = (traffic.started, traffic.cursor)
    ingested = ids(
        scorer.database_url,
        "select transaction_id from raw.transactions where event_ts > %s and event_ts <= %s",
        window,
    )
    quarantined = ids(scorer.database_url, "select transaction_id from raw.transactions_quarantine")
    assert len(ingested) > 150
    kept = set()
    for start, share in traffic.shares.items():  # a rate is a share of each hour's stream
        in_hour = sorted(i for i in ingested if i.startswith(f"t{start.timestamp() // 3600:07.0f}"))
        kept |= {i for i, keep in zip(in_hour, keep_share(in_hour, share), strict=True) if keep}
    scored = {i for i, status in outcomes.items() if status == 200}
    rejected = {i for i, status in outcomes.items() if 400 <= status < 500}
    assert scored & ingested == kept  # every clean row of the share, and only those, was scored
    assert scored - ingested <= quarantined  # a dirty amount over max_amount: scored, then quarantined
    assert rejected <= quarantined  # the dirty rows the API refuses

    # Each scored transaction is in the prediction log (flushed every 100 ms).
    deadline = time.monotonic() + 15
    while (logged := ids(scorer.database_url, "select transaction_id from monitoring.predictions")) != scored:
        assert time.monotonic() < deadline, (len(logged), len(scored))
        time.sleep(0.3)

    # The scenario switched mid-run: the traffic sent the rows after it as the ingestion loaded them
    # (amounts times 1.6), and those before it unchanged.
    assert any("scenarios changed: for the rest of the hour amount_inflation" in x for x in lines), lines
    with psycopg.connect(scorer.database_url) as conn:
        pairs = conn.execute(
            "select p.event_ts, p.amount::float8, t.amount from monitoring.predictions p "
            "join raw.transactions t using (transaction_id)"
        ).fetchall()
    plain = Simulator(settings.simulator, settings.ingest, ScenarioTimeline()).transactions(
        hour, hour + timedelta(hours=2)
    )
    plain_amount = dict(
        zip(plain.column("transaction_id").to_pylist(), plain.column("amount").to_pylist(), strict=True)
    )
    assert all(abs(sent - loaded) < 0.006 for _, sent, loaded in pairs)
    with psycopg.connect(scorer.database_url) as conn:
        by_time = conn.execute(
            "select event_ts >= %s, transaction_id, amount::float8 from monitoring.predictions", switched_at
        ).fetchall()
    after = [amount / plain_amount[i] for late, i, amount in by_time if late and plain_amount[i] >= 5]
    before = [amount / plain_amount[i] for late, i, amount in by_time if not late and plain_amount[i] >= 5]
    assert len(after) >= 10 and len(before) >= 10
    assert all(abs(ratio - 1.6) < 0.01 for ratio in after) and all(ratio == 1 for ratio in before)


def test_the_share_is_a_fixed_subset_by_id() -> None:
    sample = [f"t{n:014d}" for n in range(20_000)]
    small, large = keep_share(sample, 0.05), keep_share(sample, 0.2)
    assert 0.04 < small.mean() < 0.06 and 0.18 < large.mean() < 0.22
    assert not (small & ~large).any()  # a larger share contains the smaller one
    assert (keep_share(sample, 0.05) == small).all()


def test_a_scorer_that_is_down_is_counted_and_backed_off(tmp_path: Path) -> None:
    lines: list[str] = []
    traffic = Traffic(
        sim_settings(tmp_path),
        f"http://127.0.0.1:{free_port()}",  # nothing listens
        rate_multiplier=1.0,
        duration=4,
        clock=replay_clock(),
        echo=lines.append,
    )
    began = time.monotonic()
    stats = run(traffic)
    assert time.monotonic() - began < 8
    assert stats.connection_errors >= 1 and stats.ok == 0
    assert stats.missed > stats.connection_errors  # backing off: most due rows were not even sent
    assert "connection" in lines[-1]


def test_the_demo_starts_it_as_a_child_that_its_stop_ends_with_a_summary(tmp_path: Path) -> None:
    """`rtml demo` starts `rtml traffic` among its children (once a scorer runs); the demo's stop (SIGTERM
    to each child, as on Ctrl-C) ends it at once, with its summary line in the log."""
    settings = Settings(
        services=ServicesSettings(data_dir=tmp_path), serving=ServingSettings(port=free_port())
    )  # nothing listens
    children = Sessions()
    start_demo_traffic(settings, None, tmp_path, children)  # no scorer: no traffic
    assert not children.leaders
    start_demo_traffic(settings, object(), tmp_path, children)
    log = tmp_path / "traffic.log"
    deadline = time.monotonic() + 60
    while "traffic to" not in (log.read_text() if log.exists() else ""):
        assert children.leaders[0].poll() is None, log.read_text()
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert f"http://127.0.0.1:{settings.serving.port}/score" in log.read_text()
    time.sleep(1)
    began = time.monotonic()
    assert children.stop(5) == []  # none had to be killed
    assert time.monotonic() - began < 4
    assert children.leaders[0].returncode == 0
    assert log.read_text().splitlines()[-1].startswith("traffic stopped after")

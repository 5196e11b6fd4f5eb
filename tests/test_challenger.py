"""The live challenger comparison on real PostgreSQL, dbt and MLflow: production's answers to 4,000
requests in ``monitoring.predictions``, the shadow scores of three staged versions of the same requests
in ``monitoring.shadow_predictions`` — one that separates frauds better than production, one that
separates them worse, one that shadowed only a few requests — and the labels of most of them through the
ingest loader and dbt's ``stg_labels``. Every figure must equal scikit-learn's on the same rows; the
asset's metadata, the version's ``live_*`` tags, the notification and ``rtml promote`` / ``rtml models``
must say the same. The versions are registry entries without a model (nothing here loads one).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pytest
from mlflow.tracking import MlflowClient
from sklearn.metrics import average_precision_score, roc_auc_score

from rtml.config import get_settings
from rtml.defs.monitoring.assets import ChallengerConfig, challenger_comparison
from rtml.defs.resources import PostgresServer
from rtml.defs.training.resources import MlflowServer
from rtml.monitoring import challenger
from rtml.monitoring.predictions import ensure_table, prediction_row, write_rows
from rtml.sources.schema import LABELS
from rtml.stack.local import StackInfo

START = datetime(2026, 9, 1, tzinfo=UTC)
REQUESTS = 4_000
FRAUD_RATE = 0.05
LABELLED_SHARE = 0.8
REVIEW, DECLINE = 0.5, 0.7
# (mean score of a fraud, of a legitimate request, spread): better separates the classes more than
# production, worse less
PRODUCTION = (0.62, 0.30, 0.17)
BETTER = (0.68, 0.27, 0.16)
WORSE = (0.55, 0.33, 0.18)
FEW = 300  # requests the third staged version shadowed: < challenger_min_labelled (1,000) labelled


def decide(probability: float) -> str:
    return "decline" if probability >= DECLINE else "review" if probability >= REVIEW else "approve"


@dataclass(frozen=True)
class World:
    url: str
    model: str
    versions: dict[str, str]
    """role (production, better, worse, few) → registered version."""
    truth: pd.DataFrame
    """Per compared transaction: production's and each staged version's score and decision, the label
    (None: not arrived)."""


def _register(client: MlflowClient, model: str) -> dict[str, str]:
    """Four registry entries, each from a run of its own without artifacts (nothing loads them here)."""
    experiment = client.get_experiment_by_name("rtml-challenger-test")
    experiment_id = (
        experiment.experiment_id if experiment else client.create_experiment("rtml-challenger-test")
    )
    client.create_registered_model(model)
    versions = {}
    for role in ("production", "better", "worse", "few"):
        run = client.create_run(experiment_id)
        source = f"{run.info.artifact_uri}/model"
        versions[role] = str(client.create_model_version(model, source, run_id=run.info.run_id).version)
    return versions


@pytest.fixture(scope="module")
def world(
    scratch_database: Callable[[str], str], mlflow_tracking_uri: str, separate_dbt_target: Path
) -> World:
    from rtml.features.dbt import run_dbt
    from rtml.ingest.loader import load_labels
    from rtml.ingest.tables import ensure_tables

    url = scratch_database("challenger")
    model = f"challenger-test-{uuid.uuid4().hex[:8]}"
    versions = _register(MlflowClient(mlflow_tracking_uri), model)
    rng = np.random.default_rng(17)
    fraud = rng.random(REQUESTS) < FRAUD_RATE
    labelled = rng.random(REQUESTS) < LABELLED_SHARE
    ids = [f"t{i:05d}" for i in range(REQUESTS)]

    def scores(shape: tuple[float, float, float]) -> np.ndarray:
        means = np.where(fraud, shape[0], shape[1])
        return np.clip(rng.normal(means, shape[2]), 0.0, 1.0)

    truth = pd.DataFrame(
        {
            "transaction_id": ids,
            "is_fraud": [bool(f) if known else None for f, known in zip(fraud, labelled, strict=True)],
            "production": scores(PRODUCTION),
            "better": scores(BETTER),
            "worse": scores(WORSE),
            "few": scores(BETTER),
        }
    )
    with psycopg.connect(url) as conn:
        ensure_tables(conn)
    known = truth[truth["is_fraud"].notna()]
    label_rows = [
        {
            "transaction_id": txn,
            "is_fraud": bool(is_fraud),
            "label_ts": START + timedelta(days=5),
            "label_source": "chargeback" if is_fraud else "confirmed",
        }
        for txn, is_fraud in zip(known["transaction_id"], known["is_fraud"], strict=True)
    ]
    # an earlier label event saying the opposite: only the newest one counts
    overturned = str(known.loc[known["is_fraud"] == True, "transaction_id"].iloc[0])  # noqa: E712
    label_rows.append(
        {"transaction_id": overturned, "is_fraud": False, "label_ts": START, "label_source": "confirmed"}
    )
    load_labels(
        url, [pa.Table.from_pylist(label_rows, schema=LABELS)], "challenger-test", get_settings().ingest
    )
    proc = run_dbt(["run", "--select", "stg_labels"], url, check=False)
    assert proc.returncode == 0, proc.stdout[-5000:]

    production, shadow = [], []
    for i, row in enumerate(truth.itertuples()):
        event_ts = START + timedelta(seconds=40 * i)  # 4,000 requests over about 44 hours
        request = prediction_row(
            {
                "transaction_id": row.transaction_id,
                "customer_id": "c1",
                "merchant_id": "m1",
                "amount": 10.0,
                "currency": "EUR",
                "channel": "online",
                "timestamp": event_ts,
            },
            request_id=f"r{i:05d}",
            model_version=versions["production"],
            probability=float(row.production),
            decision=decide(row.production),
            scored_at=event_ts + timedelta(milliseconds=5),
        )
        production.append(request)
        for role in ("better", "worse") + (("few",) if i < FEW else ()):
            probability = float(getattr(row, role))
            shadow.append((request.request_id, row.transaction_id, versions[role], probability, event_ts))
    # a client retry of the first transaction, answered later with other scores: it counts once, as the
    # later pair (production 0.99 and the staged versions' 0.01)
    retry = replace(production[0], request_id="r-retry", probability=0.99, decision="decline")
    retry = replace(retry, scored_at=production[0].event_ts + timedelta(seconds=3))
    production.append(retry)
    for role in ("better", "worse", "few"):
        shadow.append(("r-retry", retry.transaction_id, versions[role], 0.01, retry.event_ts))
    truth.loc[0, ["production", "better", "worse", "few"]] = [0.99, 0.01, 0.01, 0.01]
    ensure_table(url)
    with psycopg.connect(url) as conn:
        write_rows(conn, production)
        with conn.cursor() as cur:
            cur.executemany(
                "insert into monitoring.shadow_predictions (request_id, transaction_id, model_version,"
                " probability, decision, scored_at) values (%s, %s, %s, %s, %s, %s + interval '8 ms')",
                [(r, t, v, p, decide(p), ts) for r, t, v, p, ts in shadow],
            )
    return World(url, model, versions, truth)


def expected(world: World, role: str, rows: int = REQUESTS) -> dict[str, float]:
    """scikit-learn's figures of ``role`` and production on the same labelled requests, and recall at
    production's decline rate computed from scratch (the challenger declines its top ``rate x n``)."""
    truth = world.truth.iloc[:rows]
    declined = truth["production"] >= DECLINE
    rate = declined.mean()
    top = round(rate * len(truth))
    threshold = np.sort(truth[role].to_numpy())[::-1][top - 1]
    known = truth[truth["is_fraud"].notna()]
    y = known["is_fraud"].astype(bool).to_numpy()
    return {
        "labelled": len(known),
        "frauds": int(y.sum()),
        "pr_auc": average_precision_score(y, known[role]),
        "production_pr_auc": average_precision_score(y, known["production"]),
        "roc_auc": roc_auc_score(y, known[role]),
        "production_roc_auc": roc_auc_score(y, known["production"]),
        "recall_at_decline_rate": (y & (known[role] >= threshold).to_numpy()).sum() / y.sum(),
        "production_recall_at_decline_rate": (y & (known["production"] >= DECLINE).to_numpy()).sum()
        / y.sum(),
        "agreement": (truth["production"].map(decide) == truth[role].map(decide)).mean(),
        "decline_rate": rate,
    }


def test_the_figures_equal_sklearn_on_the_same_requests(world: World) -> None:
    for role, verdict in (("better", challenger.BETTER), ("worse", challenger.WORSE)):
        pairs, start, end = challenger.fetch(world.url, world.versions[role], days=7)
        assert len(pairs) == REQUESTS  # the retried transaction once
        assert end - start == timedelta(days=7) and end > START + timedelta(hours=44)
        got = challenger.evaluate(pairs, world.versions[role], 1_000, (start, end))
        want = expected(world, role)
        assert got.verdict == verdict, got.summary
        assert got.production_version == world.versions["production"]
        assert (got.requests, got.labelled, got.frauds) == (REQUESTS, want["labelled"], want["frauds"])
        assert got.challenger is not None and got.production is not None
        assert got.challenger.pr_auc == pytest.approx(want["pr_auc"])
        assert got.production.pr_auc == pytest.approx(want["production_pr_auc"])
        assert got.challenger.roc_auc == pytest.approx(want["roc_auc"])
        assert got.production.roc_auc == pytest.approx(want["production_roc_auc"])
        assert got.decline_rate == pytest.approx(want["decline_rate"]) and 0.01 < want["decline_rate"] < 0.2
        assert got.challenger.recall_at_decline_rate == pytest.approx(want["recall_at_decline_rate"])
        assert got.production.recall_at_decline_rate == pytest.approx(
            want["production_recall_at_decline_rate"]
        )
        assert got.agreement == pytest.approx(want["agreement"])
        assert sum(got.decision_pairs.values()) == REQUESTS
        # the worlds are what they claim: the better one also catches more at the same decline rate
        ahead = want["recall_at_decline_rate"] > want["production_recall_at_decline_rate"]
        assert ahead == (role == "better")


def test_too_few_labelled_requests_give_no_verdict(world: World) -> None:
    pairs, start, end = challenger.fetch(world.url, world.versions["few"], days=7)
    got = challenger.evaluate(pairs, world.versions["few"], 1_000, (start, end))
    labelled = expected(world, "few", FEW)["labelled"]
    assert got.verdict == challenger.TOO_FEW and got.labelled == labelled < 1_000
    assert f"too few labelled requests ({labelled} of 1000)" in got.summary
    assert "preliminary PR AUC" in got.summary  # the figures, shown for what they are
    assert challenger.samples(got)[0].name == "rtml_challenger_labelled_requests"
    assert "rtml_challenger_worse" not in {sample.name for sample in challenger.samples(got)}
    # one class only among the labelled requests: no verdict either, however many there are
    legit = pairs[pairs["is_fraud"] == False]  # noqa: E712
    one_class = challenger.evaluate(legit, world.versions["few"], 10, (start, end))
    assert one_class.verdict == challenger.TOO_FEW and "one class only" in one_class.summary
    nothing = challenger.evaluate(pairs.iloc[:0], "99", 10, (start, end))
    assert nothing.verdict == challenger.TOO_FEW and "no request shadow-scored by v99" in nothing.summary


def materialize(world: World, stack: StackInfo, run_config: dg.RunConfig | None = None) -> dict[str, object]:
    result = dg.materialize(
        [challenger_comparison],
        instance=dg.DagsterInstance.from_config(str(stack.dagster_home)),
        resources={
            "postgres": PostgresServer(url=world.url),
            "settings": get_settings(),
            "mlflow": MlflowServer(tracking_uri=stack.mlflow_tracking_uri, model_name=world.model),
        },
        run_config=run_config,
    )
    assert result.success
    [materialization] = result.asset_materializations_for_node("challenger_comparison")
    return {key: value.value for key, value in materialization.metadata.items()}


def test_the_asset_describes_stores_tags_and_notifies_its_verdict(world: World, stack: StackInfo) -> None:
    client = MlflowClient(stack.mlflow_tracking_uri)
    nothing = materialize(world, stack)  # no version holds `staging`: said, not failed
    assert nothing["verdict"] == "nothing_staged" and "holds `staging`" in str(nothing["summary"])

    client.set_registered_model_alias(world.model, "staging", world.versions["better"])
    better = materialize(world, stack)  # the staged version by default
    worse = materialize(
        world,
        stack,
        dg.RunConfig(ops={"challenger_comparison": ChallengerConfig(version=world.versions["worse"])}),
    )
    for role, metadata in (("better", better), ("worse", worse)):
        want = expected(world, role)
        assert metadata["verdict"] == role and metadata["challenger_version"] == world.versions[role]
        assert metadata["production_version"] == world.versions["production"]
        assert (metadata["requests"], metadata["labelled"]) == (REQUESTS, want["labelled"])
        assert metadata["challenger/pr_auc"] == pytest.approx(want["pr_auc"], abs=1e-5)
        assert metadata["production/pr_auc"] == pytest.approx(want["production_pr_auc"], abs=1e-5)
        assert metadata["challenger/recall_at_decline_rate"] == pytest.approx(
            want["recall_at_decline_rate"], abs=1e-5
        )
        assert metadata["decision_agreement"] == pytest.approx(want["agreement"], abs=1e-5)
        html = Path(str(metadata["scores/html"]))
        assert (
            html.is_file()
            and html.parent.name == "challenger"
            and "Wasserstein" in str(metadata["scores/method"])
        )
        tags = client.get_model_version(world.model, world.versions[role]).tags
        assert tags["live_verdict"] == role and tags["live_compared_with"] == world.versions["production"]
        assert float(tags["live_pr_auc"]) == pytest.approx(want["pr_auc"], abs=1e-6)
        assert tags["live_summary"] == metadata["summary"]
    assert better["scores/challenger_mean"] != better["scores/production_mean"]

    few = materialize(
        world,
        stack,
        dg.RunConfig(ops={"challenger_comparison": ChallengerConfig(version=world.versions["few"])}),
    )
    assert few["verdict"] == challenger.TOO_FEW and "too few labelled requests" in str(few["summary"])

    with psycopg.connect(world.url) as conn:
        stored = conn.execute(
            "select challenger_version, verdict, html_path from monitoring.challenger_comparisons"
            " order by computed_at"
        ).fetchall()
        notices = conn.execute(
            "select title, text, fields from monitoring.notifications where kind = 'retraining' order by id"
        ).fetchall()
    assert [(v, verdict) for v, verdict, _ in stored] == [
        (world.versions[role], verdict)
        for role, verdict in (("better", "better"), ("worse", "worse"), ("few", challenger.TOO_FEW))
    ]
    # a notice per new verdict (none for too few, none for the same verdict again)
    assert [title for title, _, _ in notices] == [
        f"{world.model} v{world.versions['better']} is better live than production",
        f"{world.model} v{world.versions['worse']} is worse live than production",
    ]
    assert notices[1][2]["live_verdict"] == "worse" and "think twice" in notices[1][1]
    materialize(
        world,
        stack,
        dg.RunConfig(ops={"challenger_comparison": ChallengerConfig(version=world.versions["worse"])}),
    )
    with psycopg.connect(world.url) as conn:
        count = conn.execute("select count(*) from monitoring.notifications").fetchone()
    assert count == (2,)
    # the retraining notification's line: the newest comparison (the third run of `worse`)
    assert challenger.notice(world.url, 1_000).endswith(str(worse["summary"]))


@pytest.fixture
def cli_model(world: World, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The command line on the world's registered model (RTML_MODEL_NAME)."""
    monkeypatch.setenv("RTML_MODEL_NAME", world.model)
    get_settings.cache_clear()
    yield world.model
    monkeypatch.undo()
    get_settings.cache_clear()


def rtml(*args: str) -> tuple[str, str]:
    from typer.testing import CliRunner

    from rtml.cli import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, (args, result.output)
    return result.stdout, result.stderr


def test_promote_shows_the_comparison_and_warns_when_worse_live(
    world: World, stack: StackInfo, cli_model: str
) -> None:
    """Runs after the asset test (the versions' live tags)."""
    versions = world.versions
    out, err = rtml("promote", versions["production"], "--approver", "alice", "--reason", "first")
    assert f"live comparison: none for v{versions['production']}" in out and err == ""
    out, err = rtml("promote", versions["worse"], "--approver", "bob", "--reason", "try it")
    assert f"WARNING: v{versions['worse']} is worse live than production v{versions['production']}" in err
    assert "live comparison (" in out and "worse live than production" in out
    assert (
        f"{cli_model} v{versions['worse']} is in production (was: {versions['production']})" in out
    )  # not blocked
    out, err = rtml("promote", versions["better"], "--approver", "bob", "--reason", "the better one")
    assert "better live than production" in out and err == ""
    assert f"[compared with v{versions['production']}; production is now v{versions['worse']}]" in out

    listed = {line.split()[0]: line for line in rtml("models")[0].splitlines()[1:]}
    assert "live (PR AUC)" in rtml("models")[0].splitlines()[0]
    assert (
        "worse -0." in listed[versions["worse"]]
        and f"vs v{versions['production']}" in listed[versions["worse"]]
    )
    assert "better +0." in listed[versions["better"]]
    assert "too few (" in listed[versions["few"]] and listed[versions["production"]].rstrip().endswith("-")


def test_an_empty_database_says_what_is_missing(scratch_database: Callable[[str], str]) -> None:
    empty = scratch_database("challenger_empty")
    assert challenger.notice(empty, 1_000).startswith("no live comparison yet (a staged version needs 1000")
    with pytest.raises(challenger.ChallengerError, match=r"staging.stg_labels does not exist.*stg_labels"):
        challenger.fetch(empty, "1", days=7)
    with pytest.raises(challenger.ChallengerError, match="must be positive"):
        challenger.fetch(empty, "1", days=0)

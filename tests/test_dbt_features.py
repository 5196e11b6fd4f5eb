"""The dbt feature store on real PostgreSQL with real dbt: build + dbt tests + unit tests pass on
simulated data; features match an independent pandas computation; rows at or after a transaction's
timestamp never change its features; an hourly incremental run equals the full build; the docs site
shows the feature catalogue in a browser.

Runs in its own database on the session's server (``rtml_dbt_test``) so that truncating and
rebuilding never disturbs other tests.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pytest

from rtml.features.dbt import dbt_vars, project_dir, prune_invocations, run_dbt, target_dir
from rtml.features.feature_registry import load_registry
from rtml.features.sample_data import load_sample, simulated_frames

START = datetime(2026, 11, 1, tzinfo=UTC)
DAYS = 4
WINDOWS = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7)}


def query(url: str, sql: str) -> pd.DataFrame:
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.execute(sql)  # type: ignore[arg-type]
        columns = [d.name for d in cur.description or []]
        return pd.DataFrame(cur.fetchall(), columns=columns)


def with_ties(transactions: pd.DataFrame, n: int, seed: int = 3) -> pd.DataFrame:
    """Add ``n`` transactions at exactly the same instant as another of the same customer."""
    rng = np.random.default_rng(seed)
    twins = transactions.iloc[rng.choice(len(transactions), size=n, replace=False)].copy()
    twins["transaction_id"] = "tie-" + twins["transaction_id"]
    twins["amount"] = np.round(twins["amount"] * 1.5 + 1, 2)
    return pd.concat([transactions, twins], ignore_index=True)


@pytest.fixture(scope="module")
def built(scratch_database: Callable[[str], str], separate_dbt_target: Path) -> Iterator[str]:
    """A database with a few simulated days, built with ``dbt build`` (models, dbt tests, unit tests)."""
    url = scratch_database("dbt")
    transactions, labels = simulated_frames(START, DAYS)
    load_sample(url, with_ties(transactions, 150), labels)
    proc = run_dbt(["build", "--full-refresh"], url, check=False)
    assert proc.returncode == 0, proc.stdout[-5000:]
    results = json.loads((target_dir() / "run_results.json").read_text())["results"]
    statuses = {r["unique_id"]: r["status"] for r in results}
    # every model built, every data test and unit test passed (warnings allowed: freshness of old data)
    assert all(s in {"success", "pass", "warn"} for s in statuses.values()), statuses
    assert sum(uid.startswith("unit_test.") for uid in statuses) >= 4
    assert sum(uid.startswith("test.") for uid in statuses) >= 50
    yield url


def pandas_features(stg: pd.DataFrame, sample: pd.DataFrame) -> pd.DataFrame:
    """Independent recomputation: for each sampled transaction, filter the customer's rows strictly
    before it and aggregate."""
    stg = stg.sort_values("event_ts")
    by_customer = {c: g for c, g in stg.groupby("customer_id")}
    rows = []
    for tx in sample.itertuples():
        hist = by_customer[tx.customer_id]
        earlier = hist[hist["event_ts"] < tx.event_ts]
        out: dict[str, object] = {"transaction_id": tx.transaction_id}
        for name, width in WINDOWS.items():
            win = earlier[earlier["event_ts"] >= tx.event_ts - width]
            out[f"txn_count_{name}"] = len(win)
            out[f"amount_sum_{name}"] = sum(win["amount"], Decimal(0))
        last30 = earlier[earlier["event_ts"] >= tx.event_ts - timedelta(days=30)]
        amounts = last30["amount"].astype(float)
        out["txn_count_30d"] = len(last30)
        out["amount_mean_30d"] = amounts.mean() if len(amounts) else np.nan
        out["amount_std_30d"] = amounts.std(ddof=1) if len(amounts) > 1 else np.nan
        std = out["amount_std_30d"]
        out["amount_zscore_30d"] = (
            (float(tx.amount) - out["amount_mean_30d"]) / std if std == std and std > 0 else np.nan  # type: ignore[operator]
        )
        day = earlier[earlier["event_ts"] >= tx.event_ts - timedelta(hours=24)]
        out["distinct_merchants_24h"] = day["merchant_id"].nunique()
        out["seconds_since_prev_txn"] = (
            (tx.event_ts - earlier["event_ts"].max()).total_seconds() if len(earlier) else np.nan
        )
        week = earlier[earlier["event_ts"] >= tx.event_ts - timedelta(days=7)]
        night = week["event_ts"].dt.tz_convert("UTC").dt.hour < 6
        out["night_share_7d"] = night.mean() if len(week) else np.nan
        out["is_new_merchant"] = not (earlier["merchant_id"] == tx.merchant_id).any()
        rows.append(out)
    return pd.DataFrame(rows).set_index("transaction_id")


def test_features_match_independent_pandas_computation(built: str) -> None:
    stg = query(
        built,
        "select transaction_id, event_ts, customer_id, merchant_id, amount from staging.stg_transactions",
    )
    features = query(built, "select * from features.customer_features").set_index("transaction_id")
    assert len(features) == len(stg)
    rng = np.random.default_rng(11)
    ties = stg[stg["transaction_id"].str.startswith("tie-")]
    sample = pd.concat([stg.sample(250, random_state=5), ties.iloc[rng.choice(len(ties), 50, replace=False)]])
    expected = pandas_features(stg, sample)
    actual = features.loc[expected.index]
    for column in expected.columns:
        want, got = expected[column], actual[column]
        if column.startswith(("txn_count", "distinct", "amount_sum")) or column == "is_new_merchant":
            # integers, exact decimals (numeric) and booleans: exactly equal
            mismatched = [i for i in want.index if want[i] != got[i]]
        else:
            both_null = want.isna() & got.isna()
            close = np.isclose(want.astype(float), got.astype(float), rtol=1e-9, atol=1e-9)
            mismatched = list(want.index[~(both_null | close)])
        assert not mismatched, f"{column}: {[(i, want[i], got[i]) for i in mismatched[:5]]}"
    # the sample exercises the interesting cases
    assert (expected["txn_count_1h"] > 0).any() and (~expected["is_new_merchant"]).any()


def test_later_rows_never_change_a_transactions_features(built: str) -> None:
    """Rewrite every row at or after a transaction's timestamp (other than itself), rebuild from
    scratch, compare: its features and those of every earlier transaction are unchanged."""
    stg = query(
        built,
        "select transaction_id, event_ts, customer_id, merchant_id"
        " from staging.stg_transactions order by event_ts",
    )
    pivot = stg.iloc[len(stg) // 2]
    before = query(built, "select * from features.customer_features").set_index("transaction_id")
    merchants_before = query(built, "select * from features.merchant_features").set_index(
        ["merchant_id", "feature_date"]
    )
    with psycopg.connect(built) as conn:
        params = {
            "ts": pivot.event_ts,
            "id": pivot.transaction_id,
            "c": pivot.customer_id,
            "m": pivot.merchant_id,
        }
        # later rows: other amounts, half of them moved to the pivot's customer and merchant
        conn.execute(
            """update raw.transactions set amount = amount * 7 + 1,
                   customer_id = case when hashtext(transaction_id) %% 2 = 0 then %(c)s else customer_id end,
                   merchant_id = case when hashtext(transaction_id) %% 3 = 0 then %(m)s else merchant_id end
               where event_ts >= %(ts)s and transaction_id <> %(id)s""",
            params,
        )
        # ties at exactly the pivot's timestamp, same customer and merchant, and some deletions
        conn.execute(
            """insert into raw.transactions (transaction_id, event_ts, customer_id, merchant_id,
                   merchant_category, amount, currency, channel, country, source)
               select 'inserted-' || g, %(ts)s, %(c)s, %(m)s, 'fashion', 999.99, 'EUR', 'online', 'DE', 'test'
               from generate_series(1, 5) as g""",
            params,
        )
        conn.execute(
            "delete from raw.transactions where event_ts > %(ts)s and hashtext(transaction_id) %% 5 = 0",
            params,
        )
        conn.execute(
            "update raw.labels set label_ts = %(ts)s, is_fraud = not is_fraud where label_ts >= %(ts)s",
            params,
        )
    run_dbt(["run", "--full-refresh", "--select", "+customer_features", "+merchant_features"], built)
    after = query(built, "select * from features.customer_features").set_index("transaction_id")
    keep = [*stg.loc[stg["event_ts"] < pivot.event_ts, "transaction_id"], pivot.transaction_id]
    pd.testing.assert_frame_equal(
        before.loc[keep].drop(columns="loaded_at"), after.loc[keep].drop(columns="loaded_at")
    )
    # the change is real: later features of the pivot's customer did move
    later = [t for t in after.index if t.startswith("inserted-")]
    assert (
        len(later) == 5
        and (after.loc[later, "txn_count_1h"] == before.loc[pivot.transaction_id, "txn_count_1h"]).all()
    )
    merchants_after = query(built, "select * from features.merchant_features").set_index(
        ["merchant_id", "feature_date"]
    )
    # merchant rows as of a time at or before the pivot: unchanged (a merchant-day whose only activity
    # was deleted has no row any more; rows of earlier days all remain)
    asof = merchants_before[merchants_before["feature_ts"] <= pivot.event_ts].index
    common = asof.intersection(merchants_after.index)
    pd.testing.assert_frame_equal(merchants_before.loc[common], merchants_after.loc[common])
    dates = merchants_before.index.get_level_values("feature_date")
    earlier_days = merchants_before[dates < pivot.event_ts.astimezone(UTC).date()].index
    assert earlier_days.isin(merchants_after.index).all()


def test_hourly_incremental_run_equals_full_build(built: str) -> None:
    """Delete one hour of features, run with that hour as the partition window: identical rows."""
    lo = START + timedelta(days=2, hours=13)
    hi = lo + timedelta(hours=1)
    full = query(built, "select * from features.customer_features order by transaction_id")
    with psycopg.connect(built) as conn:
        conn.execute(
            "delete from features.customer_features where event_ts >= %s and event_ts < %s", (lo, hi)
        )
    proc = run_dbt(
        [
            "run",
            "--select",
            "stg_transactions",
            "customer_features",
            "merchant_features",
            *dbt_vars({"min_ts": lo.isoformat(), "max_ts": hi.isoformat()}),
        ],
        built,
    )
    assert "INSERT 0" in proc.stdout
    incremental = query(built, "select * from features.customer_features order by transaction_id")
    pd.testing.assert_frame_equal(full.drop(columns="loaded_at"), incremental.drop(columns="loaded_at"))


def test_an_hourly_build_tests_the_rows_of_its_window(built: str) -> None:
    """A windowed ``dbt build`` (Dagster's hourly runs) tests the rows it wrote: a bad row of another
    hour fails the full test run, not the hourly build of this hour, whose row-level tests read only
    the window (macros/test_window.sql); a whole-table test (``unique``) still reads every row."""
    lo = START + timedelta(days=2, hours=14)
    window = dbt_vars({"min_ts": lo.isoformat(), "max_ts": (lo + timedelta(hours=1)).isoformat()})
    with psycopg.connect(built) as conn:
        row = conn.execute(
            "select transaction_id, txn_count_1h from features.customer_features where event_ts < %s"
            " order by event_ts limit 1",
            (lo - timedelta(days=1),),
        ).fetchone()
        assert row is not None
        conn.execute(
            "update features.customer_features set txn_count_1h = -1 where transaction_id = %s", (row[0],)
        )
    try:
        hourly = run_dbt(["build", "--select", "customer_features", *window], built, check=False)
        assert hourly.returncode == 0, hourly.stdout[-3000:]
        tests = {
            r["unique_id"]: r for r in json.loads((target_dir() / "run_results.json").read_text())["results"]
        }
        ranged = [
            uid for uid in tests if "expect_column_values_to_be_between_customer_features_txn_count_1h" in uid
        ]
        assert ranged and all(tests[uid]["status"] == "pass" for uid in ranged)
        compiled = {uid: str(tests[uid].get("compiled_code") or "") for uid in tests}
        [unique] = [
            uid for uid in tests if uid.startswith("test.rtml.unique_customer_features_transaction_id")
        ]
        assert lo.isoformat() in compiled[ranged[0]] and lo.isoformat() not in compiled[unique]

        full = run_dbt(["test", "--select", "customer_features"], built, check=False)
        assert full.returncode != 0, "the full test run should fail on the bad row"
        failed = failed_tests(target_dir())
        assert any("customer_features_txn_count_1h" in name for name in failed), failed
    finally:
        with psycopg.connect(built) as conn:
            conn.execute(
                "update features.customer_features set txn_count_1h = %s where transaction_id = %s",
                (row[1], row[0]),
            )


def test_latest_state_is_features_of_a_transaction_right_after_the_newest(built: str) -> None:
    run_dbt(["run", "--select", "customer_features_latest"], built)
    latest = query(built, "select * from features.customer_features_latest").set_index("customer_id")
    stg = query(
        built,
        "select transaction_id, event_ts, customer_id, merchant_id, amount from staging.stg_transactions",
    )
    as_of = latest["as_of_ts"].iloc[0]
    assert as_of == stg["event_ts"].max() + timedelta(microseconds=1)
    customers = latest.sample(20, random_state=1).index
    probe = pd.DataFrame(
        {
            "transaction_id": customers,
            "customer_id": customers,
            "event_ts": as_of,
            "merchant_id": "none",
            "amount": Decimal(0),
        }
    )
    expected = pandas_features(stg, probe)
    for column in [
        "txn_count_1h",
        "txn_count_24h",
        "amount_sum_7d",
        "txn_count_30d",
        "distinct_merchants_24h",
    ]:
        assert (expected[column] == latest.loc[customers, column]).all(), column
    assert np.allclose(
        expected["amount_mean_30d"], latest.loc[customers, "amount_mean_30d"].astype(float), equal_nan=True
    )


def test_training_set_uses_labels_known_at_the_cutoff(built: str) -> None:
    cutoff = START + timedelta(days=3)
    run_dbt(["run", "--select", "training_set", *dbt_vars({"training_cutoff": cutoff.isoformat()})], built)
    training = query(built, "select * from features.training_set")
    assert len(training) > 0
    assert (training["label_ts"] <= cutoff).all() and (training["event_ts"] <= cutoff).all()
    assert training["is_fraud"].any() and (~training["is_fraud"]).any()
    registry = load_registry()
    assert set(registry.view("customer_features").feature_names) <= set(training.columns)


def test_source_freshness_reads_the_load_time_of_raw_rows(built: str, separate_dbt_target: Path) -> None:
    proc = run_dbt(["source", "freshness"], built, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:]
    results = json.loads((separate_dbt_target / "sources.json").read_text())["results"]
    assert {r["unique_id"].split(".")[-1]: r["status"] for r in results} == {
        "transactions": "pass",  # loaded_at = when the sample was just loaded
        "labels": "pass",
    }


@pytest.mark.browser
def test_docs_site_shows_the_feature_catalogue(built: str) -> None:
    from rtml.features.docs import generate_docs, serve_docs
    from tests.browser import chromium_page, screenshot

    generate_docs(built)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = serve_docs(port, background=True)
    description = load_registry().view("customer_features").feature("distinct_merchants_24h").description
    try:
        with chromium_page() as page:
            page.goto(
                f"http://127.0.0.1:{port}/#!/model/model.rtml.customer_features", wait_until="networkidle"
            )
            page.get_by_text("Customer feature view", exact=False).first.wait_for(timeout=20_000)
            page.get_by_text("distinct_merchants_24h").first.wait_for(timeout=10_000)
            page.get_by_text(description[:40], exact=False).first.wait_for(timeout=10_000)  # visible
            screenshot(page, "dbt-docs-customer-features.png")
    finally:
        server.shutdown()
        server.server_close()


CAUTIOUS = [
    "--indirect-selection",
    "cautious",
]  # only the tests of the selected models, not their neighbours'


def failed_tests(target: Path) -> dict[str, int]:
    """Data tests that failed in the last dbt invocation: test name → failing rows."""
    results = json.loads((target / "run_results.json").read_text())["results"]
    return {
        r["unique_id"].split(".")[2]: r["failures"]
        for r in results
        if r["unique_id"].startswith("test.") and r["status"] in {"fail", "error"}
    }


def test_rows_at_the_boundaries_pass_ingest_and_then_dbt(
    scratch_database: Callable[[str], str], separate_dbt_target: Path
) -> None:
    """Issue 14, item 7: a row ingest accepts never fails a dbt test (which would halt the hourly build);
    one dbt would refuse is quarantined by ingest, with its rule."""
    import math

    import pyarrow as pa

    from rtml.config import IngestSettings, Settings
    from rtml.ingest.loader import load_labels, load_transactions
    from rtml.ingest.tables import ensure_tables
    from rtml.sources.schema import LABELS, TRANSACTIONS

    url = scratch_database("dbt_boundary")
    with psycopg.connect(url) as conn:
        ensure_tables(conn)
    settings = Settings(ingest=IngestSettings(max_amount=999_999.99))  # the highest ceiling allowed
    amounts = {
        "b-0.004": 0.004,
        "b-0.005": 0.005,
        "b-5e-324": 5e-324,
        "b-below-0.005": math.nextafter(0.005, 0),
        "b-0.01": 0.01,
        "b-max": 999_999.99,
        "b-above-max": math.nextafter(999_999.99, math.inf),
    }
    row = {"customer_id": "c1", "merchant_id": "m1", "merchant_category": "grocery", "currency": "EUR"}
    transactions = pa.Table.from_pylist(
        [
            {
                **row,
                "transaction_id": tid,
                "event_ts": START,
                "amount": amount,
                "channel": "pos",
                "country": "FR",
            }
            for tid, amount in amounts.items()
        ]
        + [
            {
                **row,
                "transaction_id": "b-lower",
                "event_ts": START,
                "amount": 5.0,
                "channel": "POS",
                "country": "fr",
            }
        ],
        schema=TRANSACTIONS,
    )
    result = load_transactions(url, [transactions], "boundary", settings.ingest)
    assert result.quarantine_by_rule == {
        "amount_rounds_to_zero": 2,
        "amount_above_max": 1,
        "channel_not_allowed": 1,
    }
    labels = pa.Table.from_pylist(
        [
            {
                "transaction_id": tid,
                "is_fraud": False,
                "label_ts": START + timedelta(days=1),
                "label_source": source,
            }
            for tid, source in (("b-0.005", "confirmed"), ("b-0.01", "refund"), ("b-max", "Chargeback"))
        ],
        schema=LABELS,
    )
    assert load_labels(url, [labels], "boundary-labels", settings.ingest).quarantine_by_rule == {
        "label_source_not_allowed": 2
    }

    proc = run_dbt(["build", "--select", "stg_transactions", "stg_labels", *CAUTIOUS], url, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert failed_tests(separate_dbt_target) == {}
    stg = dict(query(url, "select transaction_id, amount from staging.stg_transactions").values.tolist())
    assert stg == {
        "b-0.005": Decimal("0.01"),
        "b-below-0.005": Decimal("0.01"),
        "b-0.01": Decimal("0.01"),
        "b-max": Decimal("999999.99"),
    }


def test_training_set_fails_loudly_when_merchant_features_miss_an_hour(
    built: str, separate_dbt_target: Path
) -> None:
    """The killed hourly refresh of issue 14: stg_transactions and customer_features got the hour,
    merchant_daily and merchant_features did not. training_set (which left-joins the feature views) must
    not quietly hold NULL merchant features for that hour: its not_null tests fail, naming the columns."""
    from sqlalchemy.engine import make_url

    from rtml.config import database_url_for
    from rtml.features.dbt import window_env
    from rtml.features.sample_data import copy_frame

    source, copy = make_url(built).database, f"{make_url(built).database}_gap"
    with psycopg.connect(built, autocommit=True) as conn:  # a copy: the module's other tests keep theirs
        conn.execute(f'drop database if exists "{copy}" with (force)')
        conn.execute(f'create database "{copy}" template "{source}"')
    url = database_url_for(built, copy)
    try:
        hour = START + timedelta(days=DAYS)
        transactions, _ = simulated_frames(START, DAYS + 1)
        in_hour = (transactions["event_ts"] >= hour) & (transactions["event_ts"] < hour + timedelta(hours=1))
        late = transactions[in_hour]
        # labelled by the end of the hour, so they belong in the training set of the default cut-off
        labels = pd.DataFrame(
            {
                "transaction_id": late["transaction_id"],
                "is_fraud": False,
                "label_ts": hour + timedelta(hours=1),
                "label_source": "confirmed",
                "source": "labels/late",
            }
        )
        with psycopg.connect(url) as conn:
            copy_frame(conn, "raw.transactions", late)
            copy_frame(conn, "raw.labels", labels)
            conn.commit()
        # One dbt invocation, as Dagster runs it (no unit tests): the hour's staging and customer
        # features, the labels, and training_set with its tests; merchant_daily/_features are left out.
        selection = ["stg_transactions", "customer_features", "stg_labels", "training_set"]
        proc = run_dbt(
            ["build", "--select", *selection, *CAUTIOUS, "--exclude-resource-type", "unit_test"],
            url,
            check=False,
            extra_env=window_env(hour, hour + timedelta(hours=1)),
        )
        assert proc.returncode != 0, proc.stdout[-3000:]
        assert failed_tests(separate_dbt_target) == {
            "not_null_training_set_merchant_txn_count_7d": len(late),
            "not_null_training_set_merchant_txn_count_30d": len(late),
            "not_null_training_set_merchant_fraud_count_30d": len(late),
        }
    finally:
        with psycopg.connect(built, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{copy}" with (force)')


def test_dbt_runs_in_process_with_the_exit_codes_and_output_of_its_cli(
    scratch_database: Callable[[str], str], separate_dbt_target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``run_dbt`` invokes dbt in this process (dbtRunner): a failed model is exit code 1 with dbt's
    message, a command dbt cannot run is 2, and the connection it was given leaves the environment."""
    empty = scratch_database("dbt_exit_codes")  # no raw tables: staging cannot build
    monkeypatch.setenv("DBT_DBNAME", "the-caller-s")
    monkeypatch.delenv("DBT_HOST", raising=False)
    failed = run_dbt(["run", "--select", "stg_transactions"], empty, check=False)
    assert failed.returncode == 1
    assert 'relation "raw.transactions" does not exist' in failed.stdout and "ERROR=1" in failed.stdout
    with pytest.raises(RuntimeError, match=r"dbt run --select stg_transactions failed \(1\)"):
        run_dbt(["run", "--select", "stg_transactions"], empty)
    assert run_dbt(["no-such-command"], empty, check=False).returncode == 2
    assert "rtml.staging.stg_labels" in run_dbt(["ls", "--select", "stg_labels"], empty).stdout.splitlines()
    assert os.environ["DBT_DBNAME"] == "the-caller-s" and "DBT_HOST" not in os.environ


def test_only_the_newest_folders_of_an_asset_s_dbt_commands_are_kept(tmp_path: Path) -> None:
    """dagster-dbt's folder per dbt command (``<asset>-<run>-<id>``): the newest ``keep`` of the asset stay;
    other assets' folders and the project's own files in target/ are not touched."""
    for name in ("manifest.json", "partial_parse.msgpack"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "compiled").mkdir()
    other = tmp_path / "dbt_feature_tables-1111111-aaaaaaa"
    other.mkdir()
    folders = [tmp_path / f"dbt_incremental_features-{i:07d}-bbbbbbb" for i in range(5)]
    for i, folder in enumerate(folders):
        folder.mkdir()
        (folder / "run_results.json").write_text("{}")
        os.utime(folder, (1_000_000 + i, 1_000_000 + i))
    os.utime(folders[0], (2_000_000, 2_000_000))  # modified last: the newest whatever its name

    assert prune_invocations(tmp_path, "dbt_incremental_features", keep=2) == folders[1:4]
    assert [folder.exists() for folder in folders] == [True, False, False, False, True]
    assert other.exists() and (tmp_path / "compiled").exists() and (tmp_path / "manifest.json").exists()
    assert prune_invocations(tmp_path, "dbt_incremental_features", keep=2) == []  # nothing more to do


def test_the_target_folder_is_where_dbt_writes_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``DBT_TARGET_PATH`` as dbt resolves it (``Project.project_target_path``): a relative one from the
    project's folder, whatever the working directory; an absolute one as it is."""
    monkeypatch.delenv("DBT_TARGET_PATH", raising=False)
    assert target_dir() == project_dir() / "target"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DBT_TARGET_PATH", "elsewhere/target")
    assert target_dir() == project_dir() / "elsewhere" / "target"
    monkeypatch.setenv("DBT_TARGET_PATH", str(tmp_path / "absolute"))
    assert target_dir() == tmp_path / "absolute"

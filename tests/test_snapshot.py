"""Training-set snapshots on real PostgreSQL: three simulated days through the ingest loader and ``dbt run
--select +training_set`` (with unlabelled rows included, so the export's label filter matters) in a
database of its own, then ``export_snapshot`` / ``read_snapshot``: the window and the label filter are
honoured, the same rows give the same bytes, the md5 is DVC's own hash of the file, and the frame read
back is exactly what the row-by-row path (``prepare``) gives."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from rtml.config import ServicesSettings, Settings, SimulatorSettings
from rtml.features.dbt import dbt_vars, run_dbt
from rtml.features.sample_data import load_simulated
from rtml.training.dataset import TARGET, TIME, FeatureSpec, feature_spec, load_training_set, prepare
from rtml.training.snapshot import (
    Snapshot,
    describe_snapshot,
    export_snapshot,
    file_md5,
    read_snapshot,
    snapshot_spec,
    write_parquet,
)

START = datetime(2026, 9, 1, tzinfo=UTC)
DAYS = 3
LABEL_DAYS = 3  # labels known up to 3 days after the last transaction: the newest rows stay unlabelled
WINDOW = (START + timedelta(days=1), START + timedelta(days=2, hours=12))


@pytest.fixture(scope="module")
def snapshot_db(
    scratch_database: Callable[[str], str],
    separate_dbt_target: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    settings = Settings(
        services=ServicesSettings(data_dir=tmp_path_factory.mktemp("rtml-snapshot")),
        simulator=SimulatorSettings(start=START, customers=1_000, merchants=200, transactions_per_day=3_000),
    )
    url = scratch_database("snapshot")
    end = START + timedelta(days=DAYS)
    load_simulated(url, settings, START, end, labels_until=end + timedelta(days=LABEL_DAYS))
    args = ["run", "--full-refresh", "--select", "+training_set"]
    proc = run_dbt([*args, *dbt_vars({"training_include_unlabelled": True})], url, check=False)
    assert proc.returncode == 0, proc.stdout[-5000:]
    return url


@pytest.fixture(scope="module")
def spec(snapshot_db: str) -> FeatureSpec:
    return feature_spec()


@pytest.fixture(scope="module")
def snapshot(snapshot_db: str, spec: FeatureSpec, tmp_path_factory: pytest.TempPathFactory) -> Snapshot:
    return export_snapshot(
        snapshot_db, tmp_path_factory.mktemp("snap") / "a" / "training_set.parquet", *WINDOW, spec
    )


def count(url: str, where: str = "true", params: tuple[object, ...] = ()) -> tuple[int, int]:
    """(rows, fraud rows) of features.training_set matching ``where``."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            f"select count(*), count(*) filter (where is_fraud) from features.training_set where {where}",
            params,
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_window_and_labels_are_honoured(snapshot: Snapshot, snapshot_db: str, spec: FeatureSpec) -> None:
    in_window = "event_ts >= %s and event_ts < %s"
    assert count(snapshot_db, f"not is_labelled and {in_window}", WINDOW)[0] > 0  # the filter matters
    assert count(snapshot_db, f"is_labelled and not ({in_window})", WINDOW)[0] > 0  # so does the window
    rows, fraud = count(snapshot_db, f"is_labelled and {in_window}", WINDOW)
    assert (snapshot.rows, snapshot.fraud_rows) == (rows, fraud) and rows > 1_000 and fraud > 0
    assert (snapshot.start, snapshot.end) == WINDOW
    assert snapshot.columns == ("transaction_id", TIME, *spec.columns, TARGET)

    table = pq.read_table(snapshot.path)
    assert table.column_names == list(snapshot.columns) and table.num_rows == rows
    ts = table[TIME]
    assert pc.min(ts).as_py() >= WINDOW[0] and pc.max(ts).as_py() < WINDOW[1]
    keys = list(zip(ts.to_pylist(), table["transaction_id"].to_pylist(), strict=True))
    assert keys == sorted(keys) and len(set(keys)) == rows  # ordered by (event_ts, transaction_id)
    with psycopg.connect(snapshot_db) as conn:
        labelled = conn.execute(
            f"select transaction_id from features.training_set where is_labelled and {in_window}", WINDOW
        ).fetchall()
    assert {r[0] for r in labelled} == set(table["transaction_id"].to_pylist())


def test_same_rows_same_bytes_and_dvc_hash(
    snapshot: Snapshot, snapshot_db: str, spec: FeatureSpec, tmp_path: Path
) -> None:
    again = export_snapshot(snapshot_db, tmp_path / "b.parquet", *WINDOW, spec)
    assert again.path.read_bytes() == snapshot.path.read_bytes()
    assert again.md5 == snapshot.md5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.parquet"]  # no temporary file left behind

    # the bytes follow the rows, not how they arrived: the same rows in other Arrow chunks, rewritten
    rows = pq.read_table(snapshot.path)
    write_parquet(pa.Table.from_batches(rows.to_batches(max_chunksize=777)), tmp_path / "c.parquet")
    assert file_md5(tmp_path / "c.parquet") == snapshot.md5

    from dvc_data.hashfile.hash import hash_file
    from dvc_objects.fs import localfs

    _, info = hash_file(str(snapshot.path), localfs, "md5")  # what `dvc add` / dvc.lock record (DVC 3)
    assert (info.name, info.value) == ("md5", snapshot.md5)
    assert describe_snapshot(snapshot.path).md5 == snapshot.md5


def test_read_back_matches_prepare(snapshot: Snapshot, snapshot_db: str, spec: FeatureSpec) -> None:
    columns = [TIME, *spec.columns, TARGET]
    with psycopg.connect(snapshot_db) as conn:
        rows = conn.execute(
            f"select {', '.join(columns)} from features.training_set"
            " where is_labelled and event_ts >= %s and event_ts < %s order by event_ts, transaction_id",
            WINDOW,
        ).fetchall()
    expected = prepare(pd.DataFrame(rows, columns=columns), spec)

    frame = read_snapshot(snapshot.path, spec)
    pd.testing.assert_frame_equal(frame, expected)
    assert str(frame[TIME].dtype) == "datetime64[ns, UTC]" and frame[TARGET].dtype == bool
    assert frame[spec.numeric].isna().any().any()  # NaN survives (e.g. no merchant row yet)
    assert snapshot_spec(snapshot.path) == spec
    pd.testing.assert_frame_equal(read_snapshot(snapshot.path), expected)  # the file's own spec
    loaded, _ = load_training_set(snapshot_db, *WINDOW, spec)
    pd.testing.assert_frame_equal(loaded, expected)


def test_unbounded_window_is_the_data_range(snapshot_db: str, spec: FeatureSpec, tmp_path: Path) -> None:
    snap = export_snapshot(snapshot_db, tmp_path / "all.parquet", spec=spec)
    with psycopg.connect(snapshot_db) as conn:
        first, last = conn.execute(
            "select min(event_ts), max(event_ts) from features.training_set where is_labelled"
        ).fetchone() or (None, None)
    assert (snap.rows, snap.fraud_rows) == count(snapshot_db, "is_labelled")
    assert (snap.start, snap.end) == (first, last)
    assert describe_snapshot(snap.path) == snap


def test_empty_window_raises(snapshot_db: str, spec: FeatureSpec, tmp_path: Path) -> None:
    later = START + timedelta(days=365)
    with pytest.raises(ValueError, match=r"no labelled rows in features\.training_set"):
        export_snapshot(snapshot_db, tmp_path / "empty.parquet", later, later + timedelta(days=1), spec)
    assert list(tmp_path.iterdir()) == []
    assert load_training_set(snapshot_db, later, later + timedelta(days=1), spec)[0].empty


EDGE_ROWS = """
insert into features.training_set values
    ('t3', '2026-09-01 00:00:02+00', 'a,b "quoted"', true, 1, 'NaN', 1.50, false, true),
    ('t1', '2026-09-01 00:00:01+00', null, null, null, 'Infinity', null, true, true),
    ('t2', '2026-09-01 00:00:01+00', '', false, 2147483647, '-Infinity', -0.01, false, true),
    ('t4', '2026-09-01 02:00:03.000001+02', e'line\\nbreak', true, -3, 1e-300, 12345678.99, true, true),
    ('t5', '2026-09-01 00:00:01+00', 'unlabelled', true, 0, 0, 0, false, false)
"""


def test_edge_values_survive_like_row_by_row(scratch_database: Callable[[str], str], tmp_path: Path) -> None:
    """Awkward values through COPY CSV → pyarrow, compared with the row-by-row path: NULL vs empty string,
    quotes, commas and newlines in strings, NaN/±Infinity, a boolean feature (with NULL), integers and
    numeric, a non-UTC offset, ties on event_ts broken by transaction_id."""
    url = scratch_database("snapshot_edge")
    with psycopg.connect(url) as conn:
        conn.execute(
            "create schema features; create table features.training_set (transaction_id text, event_ts"
            " timestamptz, channel text, is_new_merchant boolean, txn_count_1h integer, amount_std_30d"
            " double precision, amount numeric(12, 2), is_fraud boolean, is_labelled boolean)"
        )
        conn.execute(EDGE_ROWS)
    spec = FeatureSpec(
        numeric=["is_new_merchant", "txn_count_1h", "amount_std_30d", "amount"], categorical=["channel"]
    )
    columns = [TIME, *spec.columns, TARGET]
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            f"select {', '.join(columns)} from features.training_set where is_labelled"
            " order by event_ts, transaction_id"
        ).fetchall()
    expected = prepare(pd.DataFrame(rows, columns=columns), spec)
    assert expected["channel"].tolist() == [None, "", 'a,b "quoted"', "line\nbreak"]

    snap = export_snapshot(url, tmp_path / "edge.parquet", spec=spec)
    assert (snap.rows, snap.fraud_rows) == (4, 2)
    assert pq.read_table(snap.path)["transaction_id"].to_pylist() == ["t1", "t2", "t3", "t4"]
    pd.testing.assert_frame_equal(read_snapshot(snap.path, spec), expected)
    pd.testing.assert_frame_equal(load_training_set(url, spec=spec)[0], expected)

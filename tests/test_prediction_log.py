"""The prediction-log writer (``rtml.monitoring.predictions``) against real PostgreSQL: the session's
server for the basics, and a server of this module's own that the tests stop, restart and hang
(SIGSTOP) — never the session's. What they prove: ``put`` never waits, and every accepted row ends in
the table exactly once whatever PostgreSQL does, or is counted as dropped (only past the spill's size
limit, or an unreadable spilled line)."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from rtml.monitoring import retention
from rtml.monitoring.prediction_spill import Spill
from rtml.monitoring.predictions import (
    PredictionRow,
    PredictionWriter,
    ServedFeaturesRow,
    ShadowRow,
    ensure_table,
    prediction_row,
    write_rows,
)
from rtml.serving.sidecar import Sidecar, StreamTarget
from rtml.stack.processes import free_port
from rtml.streaming.events import TransactionEvent, to_us
from tests.own_postgres import OwnPostgres


@pytest.fixture(scope="module")
def own_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnPostgres]:
    server = OwnPostgres(tmp_path_factory.mktemp("pg-predictions"))
    try:
        yield server
    finally:
        server.stop()


TRANSACTION = {
    "transaction_id": "t",
    "customer_id": "c",
    "merchant_id": "m",
    "amount": 1.0,
    "currency": "EUR",
    "channel": "pos",
}


def prediction(request_id: str, now: datetime, probability: float = 0.1, **fields: Any) -> PredictionRow:
    """A prediction-log row for a constant transaction."""
    return prediction_row(
        {**TRANSACTION, "timestamp": now},
        request_id=request_id,
        model_version="1",
        probability=probability,
        decision="approve",
        **fields,
    )


def shadow_and_features(request_id: str, now: datetime) -> tuple[ShadowRow, ServedFeaturesRow]:
    """The staged version's score of ``request_id`` and its logged model row (a NaN, an infinity, a
    numpy float, a None)."""
    return (
        ShadowRow(request_id, "t", "2", 0.5, "review", now),
        ServedFeaturesRow(
            request_id,
            "t",
            "1",
            now,
            now,
            "merged",
            {"customer_features": "ns:c:1"},
            {
                "amount": 1.0,
                "amount_zscore_30d": math.nan,
                "amount_to_avg_ratio_30d": math.inf,
                "merchant_amount_avg_7d": np.float64(2.5),
                "channel": "pos",
                "country": None,
            },
        ),
    )


def count_in(database_url: str, table: str, ids: list[str]) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(f"select count(*) from {table} where request_id = any(%s)", (ids,)).fetchone()
    return int(row[0]) if row else 0


def in_table(database_url: str, ids: list[str]) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "select count(*) from monitoring.predictions where request_id = any(%s)", (ids,)
        ).fetchone()
    return int(row[0]) if row else 0


def wait_until(condition: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_prediction_writer_flushes_everything_on_close(database_url: str, tmp_path: Path) -> None:
    writer = PredictionWriter(
        database_url, spill_dir=tmp_path, flush_rows=10_000, flush_ms=60_000
    )  # no flush before close
    ids = [f"writer-test-{uuid.uuid4().hex}" for _ in range(1234)]
    now = datetime.now(UTC)
    for request_id in ids:
        assert writer.put(
            prediction(
                request_id, now, features_missing=["merchant"], degraded=False, scored_at=now, latency_ms=1.5
            )
        )
    writer.close()
    assert in_table(database_url, ids) == len(ids)
    assert writer.written == len(ids) and writer.dropped == 0 and writer.spilled == 0


def test_a_retried_batch_is_written_once(database_url: str) -> None:
    """The connection may break while committing: the writer retries a batch that had landed."""
    ensure_table(database_url)
    now = datetime.now(UTC)
    rows = [prediction(f"retry-{uuid.uuid4().hex}", now, 0.2, scored_at=now) for _ in range(50)]
    ids = [row.request_id for row in rows]
    with psycopg.connect(database_url) as conn:
        write_rows(conn, rows[:20])
        write_rows(conn, rows)  # the first 20 again, with 30 new ones
    assert in_table(database_url, ids) == 50


def test_a_row_the_table_refuses_is_skipped_and_counted(database_url: str, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    rows = [prediction(f"refused-{uuid.uuid4().hex}", now, scored_at=now) for _ in range(10)]
    rows[3] = PredictionRow(**{**rows[3].__dict__, "amount": 1e20})  # numeric(14, 2) overflows
    writer = PredictionWriter(database_url, spill_dir=tmp_path)
    for row in rows:
        writer.put(row)
    writer.close()
    assert in_table(database_url, [r.request_id for r in rows]) == 9
    assert (writer.written, writer.rejected, writer.dropped) == (9, 1, 0)


def test_nothing_is_lost_across_an_outage_and_a_hang(own_postgres: OwnPostgres, tmp_path: Path) -> None:
    """Starts with PostgreSQL stopped (rows spill to disk), PostgreSQL starts (the spill is drained),
    hangs (SIGSTOP: the write in flight stalls, new rows spill) and resumes. ``put`` never waits."""
    own_postgres.stop()
    writer = PredictionWriter(
        own_postgres.url,
        spill_dir=tmp_path / "spill",
        queue_max=200,
        flush_rows=50,
        flush_ms=50,
        stall_seconds=0.5,
    )
    ids: list[str] = []
    slowest = 0.0

    def feed(seconds: float, rate: float = 400) -> None:
        nonlocal slowest
        start = time.monotonic()
        for i in range(int(seconds * rate)):
            time.sleep(max(0.0, start + i / rate - time.monotonic()))
            now = datetime.now(UTC)
            row = prediction(uuid.uuid4().hex, now, scored_at=now)
            began = time.perf_counter()
            assert writer.put(row)
            slowest = max(slowest, time.perf_counter() - began)
            ids.append(row.request_id)

    try:
        feed(1.5)
        status = writer.status()
        assert status["database"] == "unavailable" and status["spill_bytes"] > 0, status
        assert writer.written == 0 and writer.spilled > 0

        own_postgres.start()
        feed(1.5)
        wait_until(lambda: writer.drained == writer.spilled, f"spill not drained: {writer.status()}")
        assert writer.written > 0

        own_postgres.hang()
        spilled_before = writer.spilled
        try:
            feed(2.0)
            assert writer.status()["database"] == "stalled", writer.status()
            assert writer.spilled > spilled_before
        finally:
            own_postgres.resume()
        feed(1.0)
        wait_until(lambda: writer.drained == writer.spilled, f"spill not drained: {writer.status()}")
    finally:
        writer.close()
    assert in_table(own_postgres.url, ids) == len(ids)
    assert writer.dropped == 0 and writer.written + writer.drained == len(ids), writer.status()
    assert slowest < 0.02, f"put took {slowest * 1000:.1f} ms"
    assert not list((tmp_path / "spill").iterdir())


def test_a_stop_while_postgres_hangs_spills_and_returns(own_postgres: OwnPostgres, tmp_path: Path) -> None:
    """The scorer stopping (SIGTERM) while PostgreSQL hangs: ``close`` does not wait for it; the rows in
    memory and the batch stuck in its write go to disk, and the next writer drains them."""
    own_postgres.start()
    writer = PredictionWriter(own_postgres.url, spill_dir=tmp_path, flush_ms=50, stall_seconds=0.5)
    wait_until(lambda: writer._conn is not None, "writer not connected")
    now = datetime.now(UTC)
    ids = [uuid.uuid4().hex for _ in range(500)]
    own_postgres.hang()
    try:
        for request_id in ids:
            writer.put(prediction(request_id, now, scored_at=now))
        began = time.monotonic()
        writer.close(timeout=30)
        assert time.monotonic() - began < 5
        assert writer.written == 0 and writer.spilled == len(ids) and writer.dropped == 0, writer.status()
    finally:
        own_postgres.resume()
    successor = PredictionWriter(own_postgres.url, spill_dir=tmp_path)
    try:
        wait_until(lambda: successor.drained == len(ids), f"not drained: {successor.status()}")
    finally:
        successor.close()
    assert in_table(own_postgres.url, ids) == len(ids)


def test_past_the_spill_limit_rows_are_dropped_and_counted(own_postgres: OwnPostgres, tmp_path: Path) -> None:
    own_postgres.stop()
    writer = PredictionWriter(own_postgres.url, spill_dir=tmp_path, spill_max_bytes=20_000, queue_max=100)
    now = datetime.now(UTC)
    ids = [uuid.uuid4().hex for _ in range(300)]
    try:
        for request_id in ids:
            writer.put(prediction(request_id, now, scored_at=now))
            time.sleep(0.001)
        wait_until(lambda: writer.pending == 0, "rows left in memory")
        assert writer.dropped > 0 and writer.spilled + writer.dropped == len(ids), writer.status()
        assert writer.status()["spill_bytes"] <= 20_000
        own_postgres.start()
        wait_until(lambda: writer.drained == writer.spilled, f"spill not drained: {writer.status()}")
    finally:
        writer.close()
    assert in_table(own_postgres.url, ids) == writer.spilled


KILLED_WRITER = textwrap.dedent(
    """
    import sys, time, uuid
    from datetime import UTC, datetime
    from pathlib import Path
    from rtml.monitoring.predictions import PredictionWriter, prediction_row

    writer = PredictionWriter(sys.argv[1], spill_dir=Path(sys.argv[2]))
    now = datetime.now(UTC)
    for _ in range(1000):
        request = {"transaction_id": sys.argv[3], "customer_id": "c", "merchant_id": "m", "amount": 1.0,
                   "currency": "EUR", "channel": "pos", "timestamp": now}
        writer.put(prediction_row(request, request_id=uuid.uuid4().hex, model_version="1", probability=0.1,
                                  decision="approve", scored_at=now, latency_ms=1.0))
    while writer.spilled < 1000:
        time.sleep(0.01)
    print("spilled", flush=True)
    time.sleep(600)
    """
)


def test_a_killed_writers_spill_is_drained_by_the_next(own_postgres: OwnPostgres, tmp_path: Path) -> None:
    """A scorer killed (-9) during an outage: its segment, still locked by the dead process, is drained
    by the next writer; a line torn by the crash is skipped and counted as dropped."""
    own_postgres.stop()
    spill = tmp_path / "spill"
    marker = f"killed-{uuid.uuid4().hex}"  # the transaction_id of the killed writer's rows
    with subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, own_postgres.url, str(spill), marker],
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "spilled"
        finally:
            os.kill(proc.pid, signal.SIGKILL)
    (segment,) = spill.glob("*.jsonl")
    with open(segment, "ab") as torn:
        torn.write(b'{"request_id":"torn-by-the-cra')
    own_postgres.start()
    writer = PredictionWriter(own_postgres.url, spill_dir=spill)
    try:
        wait_until(lambda: writer.drained == 1000, f"not drained: {writer.status()}")
    finally:
        writer.close()
    with psycopg.connect(own_postgres.url) as conn:
        row = conn.execute(
            "select count(*) from monitoring.predictions where transaction_id = %s", (marker,)
        ).fetchone()
    assert row == (1000,)
    assert writer.dropped == 1 and not list(spill.glob("*.jsonl"))


def test_rows_on_their_way_to_disk_stay_pending_until_they_are_spilled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While PostgreSQL is away, the writer and the spiller move rows from memory to disk: rows they hold
    while the disk write takes its time are still counted as pending (a caller waiting for ``pending ==
    0`` then finds them counted as spilled, never in neither)."""
    unreachable = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"  # refused at once
    disk = threading.Event()
    appending = threading.Event()
    append = Spill.append

    def slow_append(spill: Spill, rows: Any) -> int:
        appending.set()
        disk.wait(30)
        return append(spill, rows)

    monkeypatch.setattr(Spill, "append", slow_append)
    writer = PredictionWriter(unreachable, spill_dir=tmp_path, flush_ms=50)
    now = datetime.now(UTC)
    try:
        for _ in range(100):
            writer.put(prediction(uuid.uuid4().hex, now, scored_at=now))
        wait_until(appending.is_set, "no row reached the spill")
        for _ in range(10):  # the writes to disk wait: every row is still in memory
            assert (writer.pending, writer.spilled) == (100, 0), writer.status()
            time.sleep(0.02)
        disk.set()
        wait_until(lambda: writer.pending == 0, f"rows left in memory: {writer.status()}")
        assert writer.spilled == 100, writer.status()
    finally:
        disk.set()
        writer.close()


def test_shadow_and_feature_rows_share_the_writer_spill_and_transaction(
    own_postgres: OwnPostgres, tmp_path: Path
) -> None:
    """The three kinds of rows, spilled while PostgreSQL is down, drained once it is back: each in its
    table once (retried: still once), counted per table; NaN stored as JSON null."""
    own_postgres.stop()
    writer = PredictionWriter(own_postgres.url, spill_dir=tmp_path, flush_ms=50)
    now = datetime.now(UTC)
    ids = [uuid.uuid4().hex for _ in range(100)]
    try:
        for request_id in ids:
            writer.put(prediction(request_id, now, scored_at=now))
            for row in shadow_and_features(request_id, now):
                writer.put(row)
        wait_until(lambda: writer.pending == 0, f"rows left in memory: {writer.status()}")
        status = writer.status()
        assert status["spilled"] == 100 and status["shadow_predictions"]["spilled"] == 100, status
        assert status["served_features"]["spilled"] == 100, status
        own_postgres.start()
        wait_until(
            lambda: writer.counts["served_features"]["drained"] == 100, f"not drained: {writer.status()}"
        )
    finally:
        writer.close()
    assert writer.drained == 100 and writer.counts["shadow_predictions"]["drained"] == 100
    assert sum(writer.counts[kind]["dropped"] for kind in writer.counts) == 0
    with psycopg.connect(own_postgres.url) as conn:
        rows = [shadow_and_features(ids[0], now)[0], *shadow_and_features(ids[1], now)]
        write_rows(conn, rows)  # a retried batch: written once
        features = conn.execute(
            "select features, feature_versions, speed_layer from monitoring.served_features "
            "where request_id = %s",
            (ids[0],),
        ).fetchone()
    for table in ("monitoring.predictions", "monitoring.shadow_predictions", "monitoring.served_features"):
        assert count_in(own_postgres.url, table, ids) == 100, table
    assert features == (  # NaN and infinities (not JSON) stored as null
        {
            "amount": 1.0,
            "amount_zscore_30d": None,
            "amount_to_avg_ratio_30d": None,
            "merchant_amount_avg_7d": 2.5,
            "channel": "pos",
            "country": None,
        },
        {"customer_features": "ns:c:1"},
        "merged",
    )


def test_retention_deletes_only_rows_past_it(database_url: str) -> None:
    ensure_table(database_url)
    now = datetime.now(UTC)
    old, recent = uuid.uuid4().hex, uuid.uuid4().hex
    with psycopg.connect(database_url) as conn:
        write_rows(conn, [*shadow_and_features(old, now - timedelta(days=20))])
        write_rows(conn, [*shadow_and_features(recent, now - timedelta(days=5))])
    deleted = retention.purge_all(
        database_url, {"monitoring.served_features": 14, "monitoring.shadow_predictions": 30}
    )
    assert deleted["monitoring.served_features"] >= 1 and deleted["monitoring.shadow_predictions"] >= 0
    assert count_in(database_url, "monitoring.served_features", [old, recent]) == 1
    assert count_in(database_url, "monitoring.shadow_predictions", [old, recent]) == 2
    with psycopg.connect(database_url, autocommit=True) as conn, pytest.raises(ValueError):
        retention.purge(conn, "monitoring.predictions", 1)


# --- the writer in a process of its own (the scorer's sidecar, rtml.serving.sidecar) --------------
def test_the_log_process_writes_every_row_and_reports_its_counts(database_url: str, tmp_path: Path) -> None:
    counted: dict[tuple[str, str], int] = {}

    def on_count(kind: str, outcome: str, rows: int) -> None:
        counted[kind, outcome] = counted.get((kind, outcome), 0) + rows

    log = Sidecar(database_url, spill_dir=tmp_path, flush_ms=20, on_count=on_count)
    now = datetime.now(UTC)
    ids = [f"process-{uuid.uuid4().hex}" for _ in range(1500)]
    for request_id in ids:
        assert log.put(prediction(request_id, now, scored_at=now))
        for row in shadow_and_features(request_id, now):
            assert log.put(row)
    wait_until(lambda: log.status()["pending"] == 0, f"rows still pending: {log.status()}")
    status = log.status()
    assert status["database"] == "ok" and status["process"]["received"] == 3 * len(ids), status
    child = log._child
    log.close()
    assert child is not None and child.returncode == 0
    assert in_table(database_url, ids) == len(ids)
    assert count_in(database_url, "monitoring.shadow_predictions", ids) == len(ids)
    assert count_in(database_url, "monitoring.served_features", ids) == len(ids)
    assert counted == {
        ("predictions", "written"): len(ids),
        ("shadow_predictions", "written"): len(ids),
        ("served_features", "written"): len(ids),
    }
    assert log.written == len(ids) and log.counts["served_features"]["written"] == len(ids)
    assert not log.put(prediction("after-close", now)) and log.dropped == 1


def test_a_killed_log_process_is_replaced_and_its_unwritten_rows_are_counted(
    database_url: str, tmp_path: Path
) -> None:
    """Rows the child held in memory die with it: counted as dropped, never silently; the next child
    takes the rows that follow."""
    restarts: list[int] = []
    log = Sidecar(
        database_url,
        spill_dir=tmp_path,
        flush_rows=10_000,
        flush_ms=600_000,
        on_restart=lambda: restarts.append(1),
    )
    try:
        now = datetime.now(UTC)
        held = [f"held-{uuid.uuid4().hex}" for _ in range(100)]
        for request_id in held:
            log.put(prediction(request_id, now, scored_at=now))
        wait_until(lambda: log.status()["process"]["received"] == 100, f"not received: {log.status()}")
        first = log.status()["process"]["pid"]
        os.kill(first, signal.SIGKILL)  # with no traffic: the worker notices the exit by itself
        wait_until(lambda: log.status()["process"]["restarts"] == 1, f"not restarted: {log.status()}")
        assert log.status()["process"]["pid"] not in (None, first)
        assert log.dropped == 100, log.status()
        after = [f"after-{uuid.uuid4().hex}" for _ in range(10)]
        for request_id in after:
            log.put(prediction(request_id, now, scored_at=now))
    finally:
        log.close()
    assert in_table(database_url, after) == 10 and in_table(database_url, held) == 0
    assert log.written == 10 and log.dropped == 100 and restarts == [1]


def test_a_redis_cluster_away_when_the_sidecar_starts_costs_the_log_nothing(
    database_url: str, tmp_path: Path
) -> None:
    """A Redis Cluster client needs a node when it is made: with none answering, the sidecar drops and
    counts the stream's events and keeps writing the prediction log (its process neither dies nor
    restarts)."""
    stream_counts: list[tuple[str, int]] = []
    sidecar = Sidecar(
        database_url,
        spill_dir=tmp_path,
        flush_ms=20,
        stream=StreamTarget(
            redis_url=f"redis://127.0.0.1:{free_port()}/0", key="k", retention_s=60, cluster=True
        ),
        on_stream_count=lambda outcome, n: stream_counts.append((outcome, n)),
    )
    try:
        now = datetime.now(UTC)
        ids = [f"no-cluster-{uuid.uuid4().hex}" for _ in range(20)]
        for i, request_id in enumerate(ids):
            assert sidecar.put(prediction(request_id, now, scored_at=now))
            sidecar.publish(TransactionEvent(f"t{i}", "c", "m", 1.0, to_us(now)))
        wait_until(lambda: sidecar.status()["pending"] == 0, f"rows pending: {sidecar.status()}")
        wait_until(lambda: sidecar.stream_status()["pending"] == 0, f"events: {sidecar.stream_status()}")
        stream = sidecar.stream_status()
        assert stream["redis"] == "unavailable" and "RedisClusterException" in stream["last_error"], stream
        assert stream["dropped"] == 20 and stream["published"] == 0
        assert sum(n for outcome, n in stream_counts if outcome == "dropped") == 20
        assert sidecar.restarts == 0 and sidecar.status()["database"] == "ok"
    finally:
        sidecar.close()
    assert in_table(database_url, ids) == 20 and sidecar.written == 20


WORKER_KILLED = textwrap.dedent(
    """
    import sys, time
    from datetime import UTC, datetime
    from pathlib import Path
    from rtml.serving.sidecar import Sidecar
    from rtml.monitoring.predictions import prediction_row
    url, spill, marker = sys.argv[1:]
    log = Sidecar(url, spill_dir=Path(spill), flush_rows=10_000, flush_ms=600_000)
    now = datetime.now(UTC)
    txn = {"transaction_id": marker, "customer_id": "c", "merchant_id": "m", "amount": 1.0,
           "currency": "EUR", "channel": "pos", "timestamp": now}
    for i in range(500):
        log.put(prediction_row(txn, request_id=f"{marker}-{i}", model_version="1", probability=0.1,
                               decision="approve", scored_at=now))
    while log.status()["process"]["received"] < 500:
        time.sleep(0.02)
    print(log.status()["process"]["pid"], flush=True)
    time.sleep(60)
    """
)


def test_the_log_process_writes_what_it_holds_when_the_worker_is_killed(
    database_url: str, tmp_path: Path
) -> None:
    """The scoring worker killed (-9) with rows in its sidecar: the child sees its stdin end,
    writes them all and exits."""
    marker = f"orphaned-{uuid.uuid4().hex}"
    with subprocess.Popen(
        [sys.executable, "-c", WORKER_KILLED, database_url, str(tmp_path), marker],
        stdout=subprocess.PIPE,
        text=True,
    ) as worker:
        try:
            assert worker.stdout is not None
            child = int(worker.stdout.readline())
        finally:
            os.kill(worker.pid, signal.SIGKILL)

    def child_gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{child}/stat").read_text().split()[2] == "Z"  # exited, not yet reaped

    wait_until(child_gone, "the sidecar did not exit after its worker was killed")
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "select count(*) from monitoring.predictions where transaction_id = %s", (marker,)
        ).fetchone()
    assert row == (500,)

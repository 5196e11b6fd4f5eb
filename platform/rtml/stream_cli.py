"""`rtml stream publish` and `rtml stream land`: events into the transaction stream, and the stream into
`raw.transactions`. Registered on the `rtml` app by ``rtml.cli``."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from rtml.config import Settings, get_settings, redact
from rtml.redis_client import connect
from rtml.stack.processes import Sessions, spawn

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

stream_app = typer.Typer(
    help="The transaction stream (RTML_STREAM_KEY on RTML_REDIS_URL): publish events, land them.",
    no_args_is_help=True,
)


def _redis(settings: Settings) -> Any:

    if not settings.services.redis_url:
        raise typer.BadParameter("RTML_REDIS_URL is not set (the stream lives on the online store's Redis)")
    return connect(
        settings.services.redis_url,
        cluster=settings.services.redis_cluster,
        socket_timeout=10,
        socket_connect_timeout=5,
    )


@stream_app.command("publish")
def publish_command(
    file: Path | None = typer.Option(
        None, "--file", help="CSV or Parquet file of transactions (the landing-file schema)."
    ),
    start: datetime | None = typer.Option(
        None, "--start", help="The simulator's transactions from this time (UTC)..."
    ),
    end: datetime | None = typer.Option(None, "--end", help="... up to this time (UTC, excluded)."),
) -> None:
    """Publish transactions as events: rows of FILE, or the simulator's between --start and --end. Rows
    that ingestion would quarantine are not published (counted by rule)."""
    from datetime import UTC

    from rtml.streaming import replay, stream

    settings = get_settings()
    if (file is None) == (start is None or end is None):
        raise typer.BadParameter("give --file, or --start and --end (the simulator)")
    if file is not None:
        tables = replay.file_tables(file, settings.ingest.chunk_rows)
    else:
        assert start is not None and end is not None
        tables = replay.simulator_tables(
            settings, start.replace(tzinfo=start.tzinfo or UTC), end.replace(tzinfo=end.tzinfo or UTC)
        )
    client = _redis(settings)
    invalid: Counter[str] = Counter()
    published = 0
    retention_s = settings.stream.retention_hours * 3600
    for events in replay.valid_events(tables, settings, invalid):
        for at in range(0, len(events), settings.stream.publish_batch):
            chunk = events[at : at + settings.stream.publish_batch]
            published += len(stream.publish(client, settings.stream.key, chunk, retention_s))
    skipped = ", ".join(f"{rule} {n}" for rule, n in sorted(invalid.items())) or "none"
    typer.echo(f"published {published} events to {settings.stream.key}; not published (invalid): {skipped}")


@stream_app.command("land")
def land_command(
    consumer: str | None = typer.Option(
        None,
        "--consumer",
        help="Consumer name in the lander's group (default: host name). A lander restarted under the "
        "same name lands what it had read and not acknowledged first.",
    ),
    metrics_port: int | None = typer.Option(
        None, "--metrics-port", help="Port of /metrics (default: RTML_STREAM_LANDER_METRICS_PORT; 0: none)."
    ),
) -> None:
    """Write the stream's events to raw.transactions in micro-batches through the validated loader, until
    Ctrl-C or SIGTERM. Only with RTML_TRANSACTIONS_FEED=stream: in the demo the simulator's hourly
    ingestion loads the same transactions, and landing them too would load each twice."""
    from rtml.streaming.lander import Lander

    settings = get_settings()
    if settings.stream.transactions_feed != "stream":
        typer.echo(
            "RTML_TRANSACTIONS_FEED is 'simulator': raw.transactions is fed by the hourly ingestion, which "
            "loads the same transactions the scorer publishes. Set RTML_TRANSACTIONS_FEED=stream in a "
            "deployment where the stream is the source.",
            err=True,
        )
        raise typer.Exit(2)
    if not settings.services.database_url:
        raise typer.BadParameter("RTML_DATABASE_URL is not set")
    name = consumer or socket.gethostname() or f"lander-{os.getpid()}"
    lander = Lander(
        _redis(settings), settings.services.database_url, settings, consumer=name, echo=typer.echo
    )
    port = settings.stream.lander_metrics_port if metrics_port is None else metrics_port
    _serve_metrics(port, lander.metrics.registry, "lander")
    stop = _stop_on_signals()
    typer.echo(
        f"landing {settings.stream.key} (group {settings.stream.lander_group}, consumer {name}) into "
        f"raw.transactions of {redact(settings.services.database_url)} "
        f"(metrics: {f'http://0.0.0.0:{port}/metrics' if port else 'off'})"
    )
    counts = lander.run(stop)
    typer.echo(f"stopped: {counts}")


def _stop_on_signals() -> threading.Event:
    """An event set by Ctrl-C or SIGTERM: the long-running consumers finish the batch in hand and return."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    return stop


@stream_app.command("status")
def status_command(
    group: str | None = typer.Option(None, help="Consumer group (default: RTML_STREAM_LANDER_GROUP)."),
    alive: str | None = typer.Option(
        None,
        "--alive",
        help="Exit 1 unless consumer ALIVE said it runs within --within seconds (a healthcheck: a running "
        "lander records a heartbeat every second or after each batch).",
    ),
    within: float = typer.Option(30.0, "--within", help="Seconds for --alive."),
) -> None:
    """The stream's length, and a consumer group's lag, pending entries and consumers, as JSON."""
    import json

    from rtml.streaming import stream

    settings = get_settings()
    client, group = _redis(settings), group or settings.stream.lander_group
    found = stream.group_status(client, settings.stream.key, group)
    typer.echo(json.dumps(found, indent=2))
    if alive is not None:
        age = stream.heartbeat_age_s(client, settings.stream.key, group, alive)
        if age is None or age > within:
            typer.echo(f"consumer {alive}: no heartbeat within {within:g} s", err=True)
            raise typer.Exit(1)


@stream_app.command("run")
def run_command(
    consumer: str | None = typer.Option(
        None,
        "--consumer",
        help="Consumer name in the workers' group (default: <host>-<pid>, unique per process). A worker "
        "restarted under the same name applies what it had read and not acknowledged first.",
    ),
    metrics_port: int | None = typer.Option(
        None, "--metrics-port", help="Port of /metrics (default: RTML_STREAM_WORKER_METRICS_PORT; 0: none)."
    ),
) -> None:
    """Apply the stream's events to the speed layer's per-customer state in Redis (a consumer-group worker;
    run several to share the work) until Ctrl-C or SIGTERM, which finish the batch in hand first."""
    import logging

    from rtml.streaming.worker import StreamWorker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    name = consumer or f"{socket.gethostname() or 'worker'}-{os.getpid()}"
    worker = StreamWorker(_redis(settings), settings, consumer=name)
    port = settings.stream.worker_metrics_port if metrics_port is None else metrics_port
    _serve_metrics(port, worker.metrics.registry, "worker")
    stop = _stop_on_signals()
    typer.echo(
        f"applying {settings.stream.key} to the speed layer (group {settings.stream.worker_group}, consumer "
        f"{name}; metrics: {f'http://0.0.0.0:{port}/metrics' if port else 'off'})"
    )
    counts = worker.run(stop)
    typer.echo(f"stopped: {counts}")


def _serve_metrics(port: int, registry: CollectorRegistry, kind: str) -> None:
    """``/metrics`` of ``registry`` on ``port`` (all interfaces) in a background thread; 0: none."""
    from prometheus_client import start_http_server

    if not port:
        return
    try:
        start_http_server(port, registry=registry)
    except OSError as exc:
        raise typer.BadParameter(
            f"metrics port {port}: {exc} (another {kind} on this host? give each its own --metrics-port, "
            "or 0 for none)"
        ) from exc


def start_demo_worker(settings: Settings, redis_url: str, log_dir: Path, children: Sessions) -> None:
    """`rtml demo`: one `rtml stream run` as one of the demo's children (Ctrl-C stops it with the rest): the
    events the scorer publishes reach the speed layer's state. Its log: ``log_dir/stream-worker.log``."""
    command = [sys.executable, "-m", "rtml.cli", "stream", "run"]
    env = {**os.environ, "RTML_REDIS_URL": redis_url}
    children.add(spawn(command, env, log_dir / "stream-worker.log"))
    port = settings.stream.worker_metrics_port
    metrics = f"http://127.0.0.1:{port}/metrics" if port else "no metrics"
    typer.echo(f"stream worker      {metrics} (log: {log_dir / 'stream-worker.log'})")

"""The live platform's commands: `rtml traffic` (the simulator's current transactions to the scoring API)
and `rtml scenario start|stop|status` (drift scenarios switched at run time). Registered on the `rtml`
app by ``rtml.cli``."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import typer

from rtml.config import Settings, get_settings, redact
from rtml.stack.local import LocalStack, StackError
from rtml.stack.processes import Sessions, spawn


def default_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.serving.port}"


def traffic(
    url: str | None = typer.Option(
        None, help="Scoring service (default: http://127.0.0.1:RTML_SERVING_PORT)."
    ),
    rate_multiplier: float | None = typer.Option(
        None,
        "--rate-multiplier",
        help="Share of the simulated stream to send, chosen by transaction id (e.g. 0.01 = 1 %, always "
        "the same subset). Default: RTML_TRAFFIC_RATE_MULTIPLIER.",
    ),
    rate: float | None = typer.Option(
        None, "--rate", help="Requests/s to aim at instead (the share of the stream that gives it)."
    ),
    duration: float | None = typer.Option(None, help="Stop after this many seconds (default: until Ctrl-C)."),
    concurrency: int | None = typer.Option(
        None, help="Requests in flight at most (RTML_TRAFFIC_CONCURRENCY)."
    ),
    publish: bool = typer.Option(
        False,
        "--publish",
        help="Append the transactions to the transaction stream (RTML_STREAM_KEY on RTML_REDIS_URL) as "
        "events instead of sending them to the scorer.",
    ),
) -> None:
    """Replay the simulator's transactions of the current time to POST /score at wall-clock pace (the
    same transactions, with the same ids, that the hourly ingestion loads afterwards), with a progress
    line every 5 s; Ctrl-C or SIGTERM stops it with a summary."""
    from rtml.traffic import Traffic, run_until_signalled

    settings = get_settings()
    publisher = None
    if publish:
        from rtml.redis_client import connect
        from rtml.streaming.publisher import EventPublisher, no_retries

        if not settings.services.redis_url:
            raise typer.BadParameter("--publish needs RTML_REDIS_URL (the stream's Redis)")
        publisher = EventPublisher(
            connect(
                settings.services.redis_url,
                cluster=settings.services.redis_cluster,
                socket_timeout=5,
                socket_connect_timeout=5,
                retry=no_retries(),
            ),
            settings.stream.key,
            retention_s=settings.stream.retention_hours * 3600,
            queue_max=settings.stream.publish_queue_max,
            batch=settings.stream.publish_batch,
        )
    try:
        replay = Traffic(
            settings,
            url or default_url(settings),
            rate_multiplier=rate_multiplier,
            rate=rate,
            duration=duration,
            concurrency=concurrency or settings.traffic.concurrency,
            echo=lambda line: typer.echo(line),
            publisher=publisher,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    run_until_signalled(replay)


def start_demo_traffic(settings: Settings, scorer: object, log_dir: Path, children: Sessions) -> None:
    """`rtml demo`: `rtml traffic` at the default rate as one of the demo's children (Ctrl-C stops it with
    the rest), once there is a scorer to send to; its progress lines go to ``log_dir/traffic.log``."""
    if scorer is None:
        return
    url = default_url(settings)
    command = [sys.executable, "-m", "rtml.cli", "traffic", "--url", url]
    children.add(spawn(command, dict(os.environ), log_dir / "traffic.log"))
    typer.echo(f"live traffic       {url}/score (log: {log_dir / 'traffic.log'})")


# --- drift scenarios at run time -------------------------------------------------------------------
scenario_app = typer.Typer(
    help="Switch a drift scenario of the simulator on or off from the next event on, for the traffic and "
    "the hourly ingestion alike, without a restart.",
    no_args_is_help=True,
)


def _record_in_dagster(
    settings: Settings, scenario: str, action: str, at: datetime, active: list[str]
) -> None:
    """The switch as an observation of `transactions_raw` in the stack's Dagster instance (the asset's
    Events tab shows it); without a running stack only the timeline has it."""
    try:
        info = LocalStack(settings).info()
    except StackError as exc:
        typer.echo(f"(not recorded in Dagster: {redact(str(exc))})")
        return
    if not (info.dagster_home / "dagster.yaml").is_file():  # servers configured, no instance made yet
        typer.echo(f"(not recorded in Dagster: no instance under {info.dagster_home} yet)")
        return
    import dagster as dg

    from rtml.defs.ingestion.scenario_events import record_switch

    with dg.DagsterInstance.from_config(str(info.dagster_home)) as instance:
        record_switch(instance, scenario, action, at, active)
    typer.echo("recorded as an observation of transactions_raw in Dagster")


def _switch(scenario: str | None, on: bool) -> None:
    from rtml.sources.scenarios import switch, timeline_path

    settings = get_settings()
    at = datetime.now(UTC)
    try:
        before = switch(settings.services, scenario, on, at)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    from rtml.sources.scenarios import ScenarioTimeline

    after = ScenarioTimeline.load(timeline_path(settings.services))
    changed = sorted(set(before.active(at)) ^ set(after.active(at)))
    if not changed:
        typer.echo(f"nothing to change: active {', '.join(after.active(at)) or 'none'}")
        return
    for name in changed:
        action = "started" if on else "stopped"
        typer.echo(f"{name} {action} at {at:%Y-%m-%d %H:%M:%S} UTC: rows with a later event time follow it")
        _record_in_dagster(settings, name, action, at, after.active(at))


@scenario_app.command("start")
def scenario_start(
    name: str = typer.Argument(..., help="amount_inflation, new_fraud_pattern or merchant_mix_shift"),
) -> None:
    """Switch scenario NAME on from now (rows with a later event time)."""
    _switch(name, True)


@scenario_app.command("stop")
def scenario_stop(
    name: str | None = typer.Argument(None, help="The scenario to stop (default: all)."),
) -> None:
    """Switch scenario NAME (default: every active one) off from now."""
    _switch(name, False)


@scenario_app.command("status")
def scenario_status() -> None:
    """The scenarios active now, and the timeline of switches."""
    from rtml.sources.scenarios import ScenarioTimeline, timeline_path

    settings = get_settings()
    timeline = ScenarioTimeline.load(timeline_path(settings.services))
    now = datetime.now(UTC)
    active = timeline.active(now)
    pinned = settings.simulator.drift_scenario
    if pinned and (settings.simulator.drift_start or settings.simulator.start) <= now:
        active.append(f"{pinned} (pinned by RTML_SIM_DRIFT_SCENARIO)")
    typer.echo(f"active: {', '.join(active) or 'none'}")
    for interval in timeline.intervals:
        stop = f"{interval.stop:%Y-%m-%d %H:%M:%S}" if interval.stop else "(on)"
        typer.echo(f"  {interval.scenario:<20} {interval.start:%Y-%m-%d %H:%M:%S} -> {stop}")

"""`rtml runs wait`: wait until the Dagster instance has no run in progress, so a deploy recreates the code
server (where runs execute as child processes) without killing runs half-way. Registered on the `rtml`
app by ``rtml.cli``.

The instance is ``DAGSTER_HOME``'s (the compose stack's containers set it). Runs that still get killed
(a timeout, the OOM killer) are marked failed by Dagster's run monitoring (``docker/dagster.yaml``), so they
never hold a slot of ``max_concurrent_runs``.
"""

from __future__ import annotations

import time

import typer

runs_app = typer.Typer(help="Dagster runs of the instance in DAGSTER_HOME.", no_args_is_help=True)


@runs_app.command("wait")
def wait(
    timeout: float = typer.Option(900, help="Seconds to wait at most."),
    poll: float = typer.Option(5, help="Seconds between checks."),
) -> None:
    """Exit 0 once no run is starting, running or cancelling; 1 (listing them) after TIMEOUT seconds. Stop
    the daemon first (`docker compose stop dagster-daemon`), or the queue keeps starting runs; queued runs
    wait in the database and start after the deploy."""
    import dagster as dg

    instance = dg.DagsterInstance.get()
    status = dg.DagsterRunStatus
    in_progress = dg.RunsFilter(statuses=[status.STARTING, status.STARTED, status.CANCELING])
    deadline = time.monotonic() + timeout
    while True:
        runs = instance.get_runs(filters=in_progress, limit=20)
        if not runs:
            typer.echo("no Dagster run in progress")
            return
        if time.monotonic() >= deadline:
            typer.echo(f"{len(runs)} Dagster run(s) still in progress after {timeout:.0f} s:", err=True)
            for run in runs:
                typer.echo(f"  {run.run_id} {run.job_name} {run.status.value}", err=True)
            raise typer.Exit(1)
        typer.echo(f"waiting for {len(runs)} Dagster run(s): {', '.join(r.job_name for r in runs)}")
        time.sleep(poll)

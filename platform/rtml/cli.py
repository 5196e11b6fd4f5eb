"""The ``rtml`` command: the local stack, the demo, and small tools around them."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from rtml.config import Settings, get_settings
from rtml.features.docs import generate_docs, serve_docs
from rtml.services import dagster_processes
from rtml.services.stack import LocalStack, StackInfo

if TYPE_CHECKING:
    from dagster import AssetsDefinition

app = typer.Typer(
    help="rtml: a real-time ML platform on Dagster, dbt, Redis, MLflow and BentoML.", no_args_is_help=True
)

# Labels arrive up to this long after the transaction (chargebacks): the demo loads them too.
LABEL_HORIZON = timedelta(days=30)


def _print_stack(info: StackInfo) -> None:
    typer.echo(f"PostgreSQL  {info.database_url}")
    typer.echo(f"Redis       {info.redis_url}")
    typer.echo(f"Dagster     DAGSTER_HOME={info.dagster_home}")


@app.command()
def up() -> None:
    """Start the stack: embedded PostgreSQL and Redis unless RTML_DATABASE_URL / RTML_REDIS_URL are set."""
    _print_stack(LocalStack(get_settings()).up())


@app.command()
def down() -> None:
    """Stop exactly what `rtml up` started."""
    LocalStack(get_settings()).down()
    typer.echo("stopped")


@app.command()
def status() -> None:
    """Each component of the local stack, its URL and whether it answers."""
    for component in LocalStack(get_settings()).status():
        state = "up" if component.answers else "DOWN"
        typer.echo(f"{component.name:<12} {state:<5} {component.url}")


def _materialize(select: str, env: dict[str, str], partition_range: tuple[str, str] | None = None) -> None:
    """One Dagster run through the CLI, recorded in the instance like a run launched from the UI."""
    command = [
        str(Path(sys.executable).with_name("dagster")),
        "asset", "materialize", "-m", dagster_processes.CODE_LOCATION, "--select", select,
    ]  # fmt: skip
    if partition_range:
        command += ["--partition-range", "...".join(partition_range)]
    typer.echo(f"materializing {select} {'...'.join(partition_range or ())}")
    if subprocess.run(command, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        typer.echo(f"materializing {select} failed; see the run in the Dagster UI", err=True)
        raise typer.Exit(1)


def load_demo_window(settings: Settings, env: dict[str, str]) -> None:
    """Materialize `demo_days` of transactions, the labels that have arrived for them (up to now), the
    incremental dbt models over the same hours, and the tables built on both. stg_labels comes before
    the incremental models because merchant_features reads it (label lag)."""
    from rtml.defs.features.assets import dbt_feature_tables, dbt_incremental_features

    def keys(assets: AssetsDefinition) -> list[str]:
        return sorted(key.to_user_string() for key in assets.keys)

    start = settings.sim_start
    end = start + timedelta(days=settings.demo_days)
    hours = (f"{start:%Y-%m-%d-%H:%M}", f"{end - timedelta(hours=1):%Y-%m-%d-%H:%M}")
    last_label_day = min(end + LABEL_HORIZON, datetime.now(UTC)) - timedelta(days=1)
    _materialize("transactions_raw", env, hours)
    _materialize("labels_raw", env, (f"{start:%Y-%m-%d}", f"{last_label_day:%Y-%m-%d}"))
    _materialize("stg_labels", env)
    _materialize(",".join(keys(dbt_incremental_features)), env, hours)
    _materialize(",".join(key for key in keys(dbt_feature_tables) if key != "stg_labels"), env)


@app.command()
def demo(load: bool = typer.Option(True, help="Materialize the demo window before serving the UIs.")) -> None:
    """Start the stack, load the demo window, and keep the UIs running until Ctrl-C."""
    settings = get_settings()
    stack = LocalStack(settings)
    already_up = all(component.answers for component in stack.status())
    info = stack.up()
    env = dagster_processes.dagster_env(info.dagster_home, info.database_url, info.redis_url)
    processes: list[subprocess.Popen[bytes]] = []
    docs = None
    try:
        if load:
            load_demo_window(settings, env)
        generate_docs(info.database_url)
        docs = serve_docs(settings.docs_port, background=True)
        log_dir = settings.home / "logs"
        webserver = dagster_processes.start_webserver(env, settings.dagster_port, log_dir)
        processes += [webserver, dagster_processes.start_daemon(env, log_dir)]
        url = f"http://127.0.0.1:{settings.dagster_port}"
        dagster_processes.wait_for_http(f"{url}/server_info", webserver)
        typer.echo(
            f"\nDagster UI         {url}"
            f"\nfeature catalogue  http://127.0.0.1:{settings.docs_port} (dbt docs)"
            f"\nlogs               {log_dir}\nCtrl-C stops everything `rtml demo` started."
        )
        while all(process.poll() is None for process in processes):
            time.sleep(1)
        typer.echo("a Dagster process exited; see its log", err=True)
    except KeyboardInterrupt:
        typer.echo("\nstopping")
    finally:
        if docs is not None:
            docs.shutdown()
        dagster_processes.stop(processes)
        if not already_up:
            stack.down()


@app.command()
def docs(port: int | None = typer.Option(None, help="Port (default: RTML_DOCS_PORT).")) -> None:
    """Generate and serve the feature catalogue (the dbt docs site) until Ctrl-C."""
    settings = get_settings()
    info = LocalStack(settings).info()
    generate_docs(info.database_url)
    port = port or settings.docs_port
    typer.echo(f"feature catalogue  http://127.0.0.1:{port}")
    serve_docs(port)


@app.command()
def simulate(
    start: datetime = typer.Argument(..., help="First hour (UTC), e.g. 2026-11-08T00:00"),
    end: datetime = typer.Argument(..., help="End (exclusive, UTC)"),
    fmt: str = typer.Option("parquet", "--format", help="parquet or csv"),
) -> None:
    """Write simulated transactions for [START, END) as a file in the landing folder."""
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    from rtml.sources.simulator import Simulator

    settings = get_settings()
    start, end = start.replace(tzinfo=start.tzinfo or UTC), end.replace(tzinfo=end.tzinfo or UTC)
    table = Simulator(settings).transactions(start, end)
    settings.landing_dir.mkdir(parents=True, exist_ok=True)
    path = settings.landing_dir / f"transactions_{start:%Y%m%dT%H%M}_{end:%Y%m%dT%H%M}.{fmt}"
    if fmt == "csv":
        pa_csv.write_csv(table, path)
    elif fmt == "parquet":
        pq.write_table(table, path)
    else:
        raise typer.BadParameter("use parquet or csv", param_hint="--format")
    typer.echo(f"wrote {table.num_rows} rows to {path}")


@app.command("config-docs")
def config_docs() -> None:
    """Print the settings reference (docs/configuration.md is this output)."""
    typer.echo(settings_reference(), nl=False)


def settings_reference() -> str:
    lines = [
        "# Configuration",
        "",
        "Every setting is an environment variable with the prefix `RTML_` (or a line in `.env`).",
        "Generated from `rtml.config.Settings` by `make docs-config` (`rtml config-docs`); "
        "a test keeps it current.",
        "",
        "| variable | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        kind = getattr(field.annotation, "__name__", None) or str(field.annotation).replace("typing.", "")
        default = "" if field.default is None else f"`{field.default}`"
        lines.append(f"| `RTML_{name.upper()}` | {kind} | {default} | {field.description or ''} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    app()

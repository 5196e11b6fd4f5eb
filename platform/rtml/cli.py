"""The ``rtml`` command: the local stack, the demo, and small tools around them."""

from __future__ import annotations

import inspect
import json
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from subprocess import Popen
from types import FrameType
from typing import TYPE_CHECKING, Any

import typer

from rtml.config import SLICES, Settings, floor_hour, get_settings, redact
from rtml.features.docs import generate_docs, serve_docs
from rtml.live_cli import scenario_app, start_demo_traffic, traffic
from rtml.runs_cli import runs_app
from rtml.stack import dagster_processes, scorer_process
from rtml.stack.local import LocalStack, StackError, StackInfo
from rtml.stack.processes import Sessions, spawn
from rtml.stream_cli import start_demo_worker, stream_app

if TYPE_CHECKING:
    from dagster import DagsterInstance
    from mlflow.tracking import MlflowClient

app = typer.Typer(
    help="rtml: a real-time ML platform on Dagster, dbt, Redis, MLflow and BentoML.", no_args_is_help=True
)

# Labels arrive up to this long after the transaction (chargebacks): the demo loads them too.
LABEL_HORIZON = timedelta(days=30)


def _print_stack(info: StackInfo) -> None:
    typer.echo(f"PostgreSQL  {redact(info.database_url)}")
    typer.echo(f"Redis       {redact(info.redis_url)}")
    typer.echo(f"MLflow      {redact(info.mlflow_tracking_uri)}")
    typer.echo(f"Dagster     DAGSTER_HOME={info.dagster_home}")


def _stack_up(command: str) -> StackInfo:
    try:
        return LocalStack(get_settings()).up()
    except StackError as exc:
        typer.echo(f"rtml {command} failed: {redact(str(exc))}", err=True)
        raise typer.Exit(1) from exc


def _instance(info: StackInfo) -> DagsterInstance:
    import dagster as dg

    return dg.DagsterInstance.from_config(str(info.dagster_home))


@app.command()
def up() -> None:
    """Start the stack: embedded PostgreSQL and Redis unless RTML_DATABASE_URL / RTML_REDIS_URL are set,
    and an MLflow server unless RTML_MLFLOW_TRACKING_URI is set."""
    _print_stack(_stack_up("up"))


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
        typer.echo(f"{component.name:<12} {state:<5} {redact(component.url or '(not running)')}")


# --- child processes and their runs -----------------------------------------------------------------
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _interruptible() -> dict[int, Any]:
    """Ctrl-C, SIGTERM and SIGHUP (the terminal closed) all raise KeyboardInterrupt, so that what was
    started gets stopped (a shell may also start us with SIGINT ignored). Returns the handlers before."""
    return {signum: signal.signal(signum, _raise_interrupt) for signum in STOP_SIGNALS}


@contextmanager
def _supervised(instance: DagsterInstance, stopped_by: str) -> Iterator[Sessions]:
    """Child processes (started with ``Sessions.add(spawn(...))``) that are stopped, with their in-flight
    runs, when the block ends, whatever ends it (Ctrl-C, SIGTERM and SIGHUP too: ``_interruptible``).

    The runs are canceled first, as Dagster's Terminate does (``cancel_runs``); what has not ended after
    ``demo_stop_grace_s`` is killed (SIGKILL), and runs whose worker was killed are marked canceled."""
    from rtml.defs.automation.runs import all_finished, cancel_runs, mark_dead_runs

    before = _interruptible()
    sessions = Sessions()
    try:
        yield sessions
    finally:
        for stop_signal in STOP_SIGNALS:  # the stop is bounded: a second Ctrl-C must not cut it short
            signal.signal(stop_signal, signal.SIG_IGN)
        members = sessions.members()
        if members:
            grace = get_settings().stack.demo_stop_grace_s
            typer.echo(f"stopping {len(members)} process(es) and their runs (at most {grace + 3:.0f} s)")
            canceling = cancel_runs(instance, members)
            killed = sessions.stop(grace, done=lambda: all_finished(instance, canceling))
            if killed:
                typer.echo(f"killed {len(killed)} process(es) that did not stop within {grace:.0f} s")
        # Also when nothing was left to stop: a child killed from outside left its run behind.
        how = f"was stopped with {stopped_by}" if members else "ended"
        for run_id in mark_dead_runs(instance, sessions.seen, how, stopped=bool(members)):
            run = instance.get_run_by_id(run_id)
            typer.echo(f"run {run_id}: its worker {how}: marked {run.status.value.lower() if run else '?'}")
        for restored, handler in before.items():
            signal.signal(restored, handler)


def _run_dagster(command: list[str], env: dict[str, str], log: Path, children: Sessions) -> int:
    """Run a ``dagster`` CLI command (it executes a run) as one of ``children``; its exit code."""
    return children.add(spawn(command, env, log)).wait()


@dataclass(frozen=True)
class DemoWindow:
    """What the demo loads: ``[start, end)`` of hourly transactions, ending at the current hour, and the
    days of labels that have arrived by then (daily partitions: up to the last complete day)."""

    start: datetime
    end: datetime
    last_label_day: date

    @property
    def hours(self) -> tuple[str, str]:
        """The first and last hourly partition keys."""
        return f"{self.start:%Y-%m-%d-%H:%M}", f"{self.end - timedelta(hours=1):%Y-%m-%d-%H:%M}"

    @property
    def label_days(self) -> tuple[str, str]:
        return f"{self.start:%Y-%m-%d}", f"{self.last_label_day:%Y-%m-%d}"


def demo_window(settings: Settings, now: datetime | None = None) -> DemoWindow:
    """The last `demo_days` whole days up to the current hour (not before `sim_start`): the hourly
    schedule's next run (at :05 of the next hour) loads the hour that starts where this ends, so live
    data follows without a gap. A live `sim_start` is that same start (the hour the stack first ran,
    minus `demo_days`); after a restart the window still ends now."""
    now = now or datetime.now(UTC)
    end = floor_hour(now)
    start = max(settings.simulator.start, end - timedelta(days=settings.simulator.demo_days))
    last_label_day = (min(end + LABEL_HORIZON, now) - timedelta(days=1)).date()
    return DemoWindow(start, end, max(last_label_day, start.date()))


def start_bootstrap(window: DemoWindow, env: dict[str, str], log: Path, children: Sessions) -> Popen[bytes]:
    """The demo window's runs, from raw data to a served model, in ONE process (``rtml.demo_bootstrap``)."""
    arguments = json.dumps({"hours": window.hours, "label_days": window.label_days})
    command = [sys.executable, "-m", "rtml.demo_bootstrap", arguments]
    typer.echo(
        f"loading {window.start:%Y-%m-%d %H:%M} ... {window.end:%Y-%m-%d %H:%M} UTC and its labels in the "
        f"background (the runs' progress: the Dagster UI's Runs page; log: {log})"
    )
    return children.add(spawn(command, env, log))


@app.command()
def demo(load: bool = typer.Option(True, help="Materialize the demo window (in the background).")) -> None:
    """Start the stack and its UIs, load the demo window while they answer, and keep everything running
    until Ctrl-C (or SIGTERM), which stops every process the demo started, their in-flight runs included."""
    _interruptible()
    settings = get_settings()
    stack = LocalStack(settings)
    already_up = all(component.answers for component in stack.status())
    log_dir = settings.services.home / "logs"
    docs = None
    try:
        info = _stack_up("demo")
        env = dagster_processes.dagster_env(
            info.dagster_home, info.database_url, info.redis_url, settings.simulator.start
        )
        with _instance(info) as instance, _supervised(instance, "rtml demo") as children:
            # The UIs first: they answer while the window loads (the bootstrap's runs show in Dagster's).
            webserver = children.add(
                dagster_processes.start_webserver(env, settings.stack.dagster_port, log_dir)
            )
            api, scorer = _start_scorer(settings, info, log_dir, children)
            start_demo_worker(settings, info.redis_url, log_dir, children)  # the scorer's events → state
            bootstrap, began = None, time.perf_counter()
            if load:
                bootstrap = start_bootstrap(demo_window(settings), env, log_dir / "demo-runs.log", children)
            generate_docs(info.database_url)  # before the tables exist: the models, their docs and lineage
            docs = serve_docs(settings.stack.docs_port, background=True)
            servers = [webserver, scorer]
            url = f"http://127.0.0.1:{settings.stack.dagster_port}"
            dagster_processes.wait_for_http(f"{url}/server_info", webserver)
            typer.echo(
                f"\nDagster UI         {url}"
                f"\nscoring API        {api}"
                f"\nMLflow UI          {redact(info.mlflow_tracking_uri)}"
                f"\nfeature catalogue  http://127.0.0.1:{settings.stack.docs_port} (dbt docs)"
                f"\nlogs               {log_dir}\nCtrl-C stops everything `rtml demo` started."
            )
            if bootstrap is not None and _wait_for_bootstrap(bootstrap, servers, log_dir):
                generate_docs(info.database_url)  # now with the tables' columns and statistics
                # the scorer loads production from the registry by itself (within its poll interval)
                dagster_processes.wait_for_http(
                    f"http://127.0.0.1:{settings.serving.port}/readyz",
                    scorer,
                    timeout=settings.serving.model_poll_seconds + 120,
                )
                typer.echo(
                    f"demo window loaded in {time.perf_counter() - began:.0f} s; the scorer serves production"
                )
            start_demo_traffic(settings, scorer, log_dir, children)  # `rtml traffic` at the default rate
            # The daemon (schedules, sensors) once the window is loaded: its sensors would otherwise react
            # to the half-built state (a missing model, features older than their raw hours).
            servers.append(children.add(dagster_processes.start_daemon(env, log_dir)))
            while all(server.poll() is None for server in servers):
                time.sleep(5)
                for name in stack.revive():  # an embedded server that died: back on its own port
                    typer.echo(f"the embedded {name} server had stopped: restarted")
            typer.echo(
                f"a process exited (Dagster or the scoring service); see the logs in {log_dir}", err=True
            )
    except KeyboardInterrupt:
        pass
    finally:
        if docs is not None:
            docs.shutdown()
        if not already_up:
            stack.down()


def _wait_for_bootstrap(bootstrap: Popen[bytes], servers: list[Popen[bytes]], log_dir: Path) -> bool:
    """Whether the bootstrap succeeded (False: a server exited meanwhile; the caller's loop reports it)."""
    while bootstrap.poll() is None:
        if any(server.poll() is not None for server in servers):
            return False
        time.sleep(1)
    if bootstrap.returncode != 0:
        typer.echo(
            f"loading the demo window failed; see {log_dir / 'demo-runs.log'} or the Runs page", err=True
        )
        raise typer.Exit(1)
    return True


def _start_scorer(
    settings: Settings, info: StackInfo, log_dir: Path, children: Sessions
) -> tuple[str, Popen[bytes]]:
    """The scoring service: the newest bento, or (none built yet) the service's source. It answers at
    once; ``/readyz`` says ready once a model is loaded (it polls the registry for `production`)."""
    api = f"http://127.0.0.1:{settings.serving.port}"
    scorer_env = scorer_process.serving_env(
        settings, info.database_url, info.redis_url, info.mlflow_tracking_uri
    )
    if scorer_process.has_bento(settings.services.bentoml_home):
        bento = f"{scorer_process.BENTO_NAME}:latest"
        scorer = scorer_process.start(scorer_env, bento, settings.serving.port, log_dir)
    else:
        scorer = scorer_process.start_from_source(scorer_env, settings.serving.port, log_dir)
    children.add(scorer)
    return f"{api}  (Swagger; POST /score, /score_batch; GET /metadata, /metrics; /readyz)", scorer


@app.command()
def docs(port: int | None = typer.Option(None, help="Port (default: RTML_DOCS_PORT).")) -> None:
    """Generate and serve the feature catalogue (the dbt docs site) until Ctrl-C."""
    settings = get_settings()
    info = LocalStack(settings).info()
    generate_docs(info.database_url)
    port = port or settings.stack.docs_port
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

    from rtml.sources.scenarios import timeline_path
    from rtml.sources.simulator import Simulator

    settings = get_settings()
    start, end = start.replace(tzinfo=start.tzinfo or UTC), end.replace(tzinfo=end.tzinfo or UTC)
    table = Simulator(settings.simulator, settings.ingest, timeline_path(settings.services)).transactions(
        start, end
    )
    settings.services.landing_dir.mkdir(parents=True, exist_ok=True)
    path = settings.services.landing_dir / f"transactions_{start:%Y%m%dT%H%M}_{end:%Y%m%dT%H%M}.{fmt}"
    if fmt == "csv":
        pa_csv.write_csv(table, path)
    elif fmt == "parquet":
        pq.write_table(table, path)
    else:
        raise typer.BadParameter("use parquet or csv", param_hint="--format")
    typer.echo(f"wrote {table.num_rows} rows to {path}")


# --- backfills ------------------------------------------------------------------------------------
def backfill_partition_keys(start: datetime, end: datetime) -> tuple[list[str], list[str]]:
    """The hourly partition keys of [start, end) (naive = UTC): those that exist, and those that do not
    (before the first partition, or hours not complete yet)."""
    import dagster as dg

    from rtml.defs.ingestion.partitions import transactions_partitions

    start, end = start.replace(tzinfo=start.tzinfo or UTC), end.replace(tzinfo=end.tzinfo or UTC)
    if end <= start:
        raise typer.BadParameter(f"END ({end:%Y-%m-%d %H:%M}) must be after START ({start:%Y-%m-%d %H:%M})")
    wanted = transactions_partitions.get_partition_keys_in_time_window(dg.TimeWindow(start, end))
    existing = set(transactions_partitions.get_partition_keys())
    return [key for key in wanted if key in existing], [key for key in wanted if key not in existing]


@app.command()
def backfill(
    start: datetime = typer.Argument(..., help="First hour (UTC), e.g. 2026-11-01T00:00"),
    end: datetime = typer.Argument(..., help="End (exclusive, UTC)"),
    job: str = typer.Option(
        "ingestion_job",
        help="An hourly partitioned job: ingestion_job (raw transactions) or hourly_refresh_job (also the "
        "incremental features, the latest-feature tables and the online store).",
    ),
) -> None:
    """Backfill the hourly partitions in [START, END) with JOB: ONE run for the whole range (a single-run
    backfill: the hourly assets load a range in one pass, each hour replacing its own rows), executed by
    this command, its steps in this one process, and recorded in the stack's Dagster instance (the Runs
    page; each hour's partition status on the asset pages)."""
    from rtml.defs.automation.tags import range_tags

    settings = get_settings()
    keys, outside = backfill_partition_keys(start, end)
    if not keys:
        raise typer.BadParameter(
            f"no hourly partition in [{start}, {end}): partitions start at "
            f"{settings.simulator.start:%Y-%m-%d %H:%M} UTC and end with the last complete hour"
        )
    if outside:
        typer.echo(f"skipping {len(outside)} hour(s) that are not partitions: {outside[0]} ... {outside[-1]}")
    try:
        info = LocalStack(settings).info()
    except StackError as exc:
        typer.echo(f"rtml backfill: {redact(str(exc))}", err=True)
        raise typer.Exit(1) from exc
    env = dagster_processes.dagster_env(
        info.dagster_home, info.database_url, info.redis_url, settings.simulator.start
    )
    tags = {**range_tags(keys[0], keys[-1]), "rtml/backfill": f"{keys[0]}...{keys[-1]}"}
    log = settings.services.home / "logs" / "backfill-runs.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [
        str(Path(sys.executable).with_name("dagster")),
        "job", "execute", "-m", dagster_processes.CODE_LOCATION, "-j", job, "--tags", json.dumps(tags),
    ]  # fmt: skip
    typer.echo(f"backfilling {job}: {len(keys)} hour(s), {keys[0]} ... {keys[-1]}, in one run (log: {log})")
    began = time.perf_counter()
    with _instance(info) as instance, _supervised(instance, "rtml backfill") as children:
        if _run_dagster(command, env, log, children) != 0:
            typer.echo(f"the backfill run of {job} failed; see {log} or the run in the Dagster UI", err=True)
            raise typer.Exit(1)
    typer.echo(f"  done in {time.perf_counter() - began:.0f} s")


# --- the model registry ---------------------------------------------------------------------------
def _registry_client() -> MlflowClient:
    from rtml.training.model_registry import client_for

    return client_for(LocalStack(get_settings()).info().mlflow_tracking_uri)


def _registry_action(action: Callable[[], object]) -> None:
    from rtml.training.model_registry import RegistryError

    try:
        action()
    except RegistryError as exc:
        typer.echo(f"error: {redact(str(exc))}", err=True)
        raise typer.Exit(1) from exc


@app.command()
def models() -> None:
    """Versions of fraud-detector: aliases, status, test metrics, lineage, live comparison."""
    from rtml.monitoring import challenger
    from rtml.training.model_registry import versions

    name = get_settings().training.model_name
    found = versions(_registry_client(), name)
    if not found:
        typer.echo(f"{name} has no versions yet: materialize fraud_model (training_job)")
        return
    row = "{:>7}  {:<11} {:<20} {:>7} {:>7}  {:<16}  {:<7}  {:<12}  {}"
    typer.echo(
        row.format(
            "version", "status", "aliases", "ROC AUC", "PR AUC", "created", "git", "snapshot", "live (PR AUC)"
        )
    )
    for info in found:
        typer.echo(
            row.format(
                info.version,
                info.status,
                ",".join(info.aliases) or "-",
                f"{info.metrics.get('test_roc_auc', float('nan')):.4f}",
                f"{info.metrics.get('test_pr_auc', float('nan')):.4f}",
                f"{info.created:%Y-%m-%d %H:%M}",
                info.tags.get("git_commit", "?")[:7],
                info.tags.get("dvc_snapshot_md5", "?")[:12],
                challenger.column(info.tags),
            )
        )
        if info.status == "rejected":
            typer.echo(f"{'':>9}rejected: {info.tags['rejected']}")


@app.command()
def promote(
    version: str = typer.Argument(..., help="The version to put in production (see `rtml models`)."),
    approver: str = typer.Option(..., help="Who approves the promotion."),
    reason: str = typer.Option(..., help="Why (recorded on the version)."),
    allow_rejected: bool = typer.Option(False, help="Override the evaluation gate's rejection."),
) -> None:
    """Manual approval: move the `production` alias to VERSION, recording approver and reason."""
    from rtml.training.model_registry import promote as promote_version

    def run() -> None:
        client, name = _registry_client(), get_settings().training.model_name
        _show_live_comparison(client, version)
        promoted = promote_version(client, version, approver, reason, name, allow_rejected=allow_rejected)
        previous = promoted.tags.get("previous_production_version", "none")
        typer.echo(f"{name} v{promoted.version} is in production (was: {previous})")

    _registry_action(run)


def _show_live_comparison(client: MlflowClient, version: str) -> None:
    """The version's live comparison with production, before the promotion acts (a warning on stderr
    when it was worse live); nothing when the version does not exist (``promote`` says so)."""
    from mlflow.exceptions import MlflowException

    from rtml.monitoring import challenger
    from rtml.training.model_registry import PRODUCTION, version_with_alias

    name = get_settings().training.model_name
    try:
        tags = dict(client.get_model_version(name, version).tags)
    except MlflowException:
        return
    production = version_with_alias(client, PRODUCTION, name)
    line, warning = challenger.before_promotion(tags, version, production.version if production else None)
    typer.echo(line)
    if warning:
        typer.secho(warning, err=True, fg=typer.colors.YELLOW, bold=True)


@app.command()
def rollback(
    approver: str = typer.Option(..., help="Who decides the rollback."),
    reason: str = typer.Option(..., help="Why (recorded on both versions)."),
) -> None:
    """Move `production` back to the version that held it before the current one."""
    from rtml.training.model_registry import rollback as rollback_version

    def run() -> None:
        name = get_settings().training.model_name
        restored = rollback_version(_registry_client(), approver, reason, name)
        typer.echo(f"{name} v{restored.version} is in production again")

    _registry_action(run)


@app.command("config-docs")
def config_docs() -> None:
    """Print the settings reference (docs/configuration.md is this output)."""
    typer.echo(settings_reference(), nl=False)


def settings_reference() -> str:
    lines = [
        "# Configuration",
        "",
        "Every setting is an environment variable with the prefix `RTML_` (or a line in `.env`).",
        "The code reads them as `rtml.config.Settings`, one slice per concern (a section below): the "
        "setting's field is `settings.<slice>.<name>`. "
        "Generated from `rtml.config` by `make docs-config` (`rtml config-docs`); a test keeps it current.",
    ]
    for slice_name, cls in zip(Settings.model_fields, SLICES, strict=True):
        lines += [
            "",
            f"## `{slice_name}` ({cls.__name__})",
            "",
            inspect.cleandoc(cls.__doc__ or ""),
            "",
            "| variable | field | type | default | meaning |",
            "|---|---|---|---|---|",
        ]
        for name, field in cls.model_fields.items():
            kind = getattr(field.annotation, "__name__", None) or str(field.annotation).replace("typing.", "")
            if field.default_factory is not None:
                default = "(computed)"  # from other settings: the description says how
            else:
                default = "" if field.default is None else f"`{field.default}`"
            meaning = field.description or ""
            variable = cls.env_var(name)
            lines.append(f"| `{variable}` | `{slice_name}.{name}` | {kind} | {default} | {meaning} |")
    return "\n".join(lines) + "\n"


# --- the live platform (rtml.live_cli) ------------------------------------------------------------
app.command()(traffic)
app.add_typer(scenario_app, name="scenario")
app.add_typer(stream_app, name="stream")
app.add_typer(runs_app, name="runs")

if __name__ == "__main__":
    app()

"""The local stack behind `rtml up / down / status`: PostgreSQL, Redis, the MLflow server, DAGSTER_HOME.

With ``RTML_DATABASE_URL`` / ``RTML_REDIS_URL`` / ``RTML_MLFLOW_TRACKING_URI`` set, those servers are used
and nothing is started for them. Unset, embedded servers from pip wheels (and ``mlflow server``, its
backend store in the stack's PostgreSQL) run under the data directory; they outlive `rtml up` and are
recorded (pid, URL, data folder) in ``<data dir>/stack.json``, so `rtml down` in another process stops
exactly them, by pid.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from rtml.config import Settings, database_url_for, redact
from rtml.stack import mlflow_server, postgres, redis, roles
from rtml.stack.dagster_home import write_dagster_yaml
from rtml.stack.processes import pid_alive, stop_pid
from rtml.stack.state import EmbeddedServer, StackState, locked, record_live_start


class StackError(RuntimeError):
    """A component of the stack failed; the message says what, where (log) and how to fix it."""


class StackNotRunningError(StackError):
    pass


@dataclass(frozen=True)
class StackInfo:
    database_url: str  # platform database, psycopg / libpq URL
    redis_url: str  # redis-py URL
    dagster_home: Path  # folder holding dagster.yaml
    embedded: bool  # True when (at least one) embedded server of ours serves the stack
    mlflow_tracking_uri: str  # http URL of the MLflow tracking server and model registry
    dagster_database: str = "dagster"
    mlflow_database: str = "mlflow"

    def url_for(self, database: str) -> str:
        """Another database on the platform's server."""
        return database_url_for(self.database_url, database)

    @property
    def dagster_database_url(self) -> str:
        return self.url_for(self.dagster_database)

    @property
    def mlflow_database_url(self) -> str:
        return self.url_for(self.mlflow_database)


@dataclass(frozen=True)
class ComponentStatus:
    name: str  # "postgres", "redis" or "mlflow"
    url: str | None  # None: neither configured nor running
    pid: int | None  # set when the server is our embedded one
    answers: bool


class LocalStack:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.home = settings.services.home
        self.state_file = self.home / "stack.json"
        self.lock_file = self.home / "stack.lock"
        self.pgdata = self.home / "postgres"
        self.valkey_dir = self.home / "valkey"
        self.mlflow_log = self.home / "logs" / "mlflow.log"

    # --- public API ---------------------------------------------------------------------------------
    def up(self) -> StackInfo:
        """Start what is missing, create databases and schemas, write dagster.yaml. Idempotent."""
        with locked(self.lock_file):
            state = StackState.load(self.state_file)
            # A configured URL wins; a record of an embedded server started earlier is kept, so that
            # down() still stops it.
            try:
                if self.settings.services.database_url:
                    database_url = postgres.libpq_url(self.settings.services.database_url)
                else:
                    state.postgres = self._running_or_started_postgres(state.postgres)
                    database_url = state.postgres.url
                if self.settings.services.redis_url:
                    redis_url = self.settings.services.redis_url
                else:
                    state.redis = self._running_or_started_redis(state.redis)
                    redis_url = state.redis.url
            finally:
                state.save(self.state_file)  # also on failure: what did start must be stoppable
            info = self._info(database_url, redis_url, state.mlflow)
            try:
                postgres.ensure_databases(
                    database_url,
                    [self._database_name(database_url), info.dagster_database, info.mlflow_database],
                )
                postgres.ensure_schemas(database_url)
                self._ensure_roles(database_url, info)
            except (postgres.PostgresError, psycopg.Error) as exc:
                raise StackError(str(exc)) from exc
            if (
                not self.settings.training.mlflow_tracking_uri
            ):  # after the databases: its backend store must exist
                try:
                    if not self._mlflow_serves(state.mlflow):
                        # Ours but on another port (RTML_MLFLOW_PORT changed), dead, or unrecorded: restart.
                        self._stop_mlflow()
                        state.mlflow = None
                        state.mlflow = self._started_mlflow(info.mlflow_database_url)
                finally:
                    state.save(self.state_file)
                info = self._info(database_url, redis_url, state.mlflow)
            write_dagster_yaml(
                info.dagster_home, info.dagster_database_url, self.settings.stack.run_monitoring_interval_s
            )
            record_live_start(self.settings)
            self.settings.services.landing_dir.mkdir(parents=True, exist_ok=True)  # where users drop files
            return info

    def _ensure_roles(self, database_url: str, info: StackInfo) -> None:
        """Each service's own PostgreSQL role whose password is set (least privilege, ``rtml.stack.roles``).
        The scorer's grants come first: the platform's role then takes over the tables they name."""
        settings = self.settings
        if settings.services.postgres_scorer_password:
            roles.ensure_scorer_role(
                database_url, settings.services.postgres_scorer_password.get_secret_value()
            )
        owners = (
            (settings.services.postgres_platform_password, database_url, roles.PLATFORM_ROLE),
            (settings.services.postgres_dagster_password, info.dagster_database_url, roles.DAGSTER_ROLE),
            (settings.services.postgres_mlflow_password, info.mlflow_database_url, roles.MLFLOW_ROLE),
        )
        for password, url, role in owners:
            if password:
                roles.ensure_owner_role(url, role, password.get_secret_value())

    def down(self) -> None:
        """Stop the embedded servers that up() started, by pid. Idempotent; leaves external servers alone."""
        with locked(self.lock_file):
            state = StackState.load(self.state_file)
            # MLflow first: it holds connections to PostgreSQL.
            self._stop_mlflow()
            redis_pid = state.redis.pid if state.redis else redis.embedded_pid_from_file(self.valkey_dir)
            if pid_alive(redis_pid, marker=self.valkey_dir):
                assert redis_pid is not None
                stop_pid(redis_pid, signal.SIGTERM)
            postgres.stop_embedded(self.pgdata, state.postgres.pid if state.postgres else None)
            self.state_file.unlink(missing_ok=True)

    def revive(self) -> list[str]:
        """Restart the embedded servers whose process died (a crash, the OOM killer), on their own ports,
        so their clients reconnect by themselves; the names restarted. A server that runs but does not
        answer (hung, busy) is left alone: clients time out and recover when it answers again. The demo
        calls this every few seconds; with configured URLs, the servers' own supervisor restarts them."""
        state = StackState.load(self.state_file)
        ours = [  # an embedded server recorded earlier but replaced by a configured URL is not in use
            ("postgres", None if self.settings.services.database_url else state.postgres),
            ("redis", None if self.settings.services.redis_url else state.redis),
            ("mlflow", None if self.settings.training.mlflow_tracking_uri else state.mlflow),
        ]
        dead = [
            name
            for name, server in ours
            if server is not None and not pid_alive(server.pid, marker=server.data_dir)
        ]
        if dead:
            self.up()
        return dead

    def status(self) -> list[ComponentStatus]:
        state = StackState.load(self.state_file)
        return [
            self._status("postgres", self.settings.services.database_url, state.postgres, postgres.answers),
            self._status("redis", self.settings.services.redis_url, state.redis, redis.answers),
            self._status(
                "mlflow", self.settings.training.mlflow_tracking_uri, state.mlflow, mlflow_server.answers
            ),
        ]

    def info(self) -> StackInfo:
        """The running stack, without starting anything: configured URLs, else the embedded servers."""
        state = StackState.load(self.state_file)
        database_url = self._resolved(
            "PostgreSQL", "RTML_DATABASE_URL", self.settings.services.database_url, state.postgres
        )
        redis_url = self._resolved("Redis", "RTML_REDIS_URL", self.settings.services.redis_url, state.redis)
        return self._info(postgres.libpq_url(database_url), redis_url, state.mlflow)

    # --- helpers ------------------------------------------------------------------------------------
    @property
    def _embedded(self) -> bool:
        return not (self.settings.services.database_url and self.settings.services.redis_url)

    @property
    def artifacts_dir(self) -> Path:
        return self.settings.services.mlflow_artifacts_dir

    def _mlflow_tracking_uri(self, recorded: EmbeddedServer | None) -> str:
        """The configured server, else ours. Not checked for liveness: Dagster resources call info() for
        the database alone, and an MLflow client names the URL it cannot reach."""
        if self.settings.training.mlflow_tracking_uri:
            return self.settings.training.mlflow_tracking_uri
        if recorded is not None:
            return recorded.url
        return mlflow_server.server_url(self.settings.stack.mlflow_port)  # where `rtml up` starts it

    def _info(self, database_url: str, redis_url: str, mlflow: EmbeddedServer | None) -> StackInfo:
        return StackInfo(
            database_url=database_url,
            redis_url=redis_url,
            dagster_home=self.settings.services.dagster_home,
            embedded=self._embedded,
            mlflow_tracking_uri=self._mlflow_tracking_uri(mlflow),
            dagster_database=self.settings.services.dagster_database,
            mlflow_database=self.settings.services.mlflow_database,
        )

    @staticmethod
    def _database_name(url: str) -> str:
        name = make_url(url).database
        if not name:
            raise StackError(f"the database URL names no database: {redact(url)}")
        return name

    def _running_or_started_postgres(self, known: EmbeddedServer | None) -> EmbeddedServer:
        if known and pid_alive(known.pid, marker=self.pgdata) and postgres.answers(known.url):
            return known  # fast path: nothing to start
        try:
            return postgres.start_embedded(self.pgdata)
        except postgres.PostgresError as exc:
            raise StackError(str(exc)) from exc

    def _running_or_started_redis(self, known: EmbeddedServer | None) -> EmbeddedServer:
        if known and pid_alive(known.pid, marker=self.valkey_dir) and redis.answers(known.url):
            return known
        orphan = redis.embedded_pid_from_file(self.valkey_dir)
        if pid_alive(orphan, marker=self.valkey_dir):
            assert orphan is not None
            stop_pid(orphan)  # ours but unrecorded or not answering: restart cleanly
        preferred_port = int(known.url.rsplit(":", 1)[1].split("/")[0]) if known else None
        try:
            return redis.start_embedded(self.valkey_dir, preferred_port)
        except redis.RedisError as exc:
            raise StackError(str(exc)) from exc

    def _mlflow_serves(self, known: EmbeddedServer | None) -> bool:
        return bool(
            known
            and mlflow_server.port_of(known.url) == self.settings.stack.mlflow_port
            and pid_alive(known.pid, marker=known.data_dir)
            and mlflow_server.answers(known.url)
        )

    def _started_mlflow(self, backend_store_uri: str) -> EmbeddedServer:
        try:
            return mlflow_server.start(
                backend_store_uri,
                self.settings.stack.mlflow_port,
                self.artifacts_dir,
                self.mlflow_log,
                self.home,
            )
        except mlflow_server.MlflowServerError as exc:
            raise StackError(str(exc)) from exc

    def _stop_mlflow(self) -> None:
        """Our MLflow server, found by its command line and folder: the recorded one, and any other
        serving this data directory (state file lost, a worker orphaned by a killed launcher)."""
        for pid in mlflow_server.running(self.artifacts_dir, self.home):
            mlflow_server.stop(pid)

    def _status(
        self, name: str, configured: str | None, embedded: EmbeddedServer | None, check: Callable[[str], bool]
    ) -> ComponentStatus:
        if configured:
            return ComponentStatus(name, configured, None, check(configured))
        if embedded is None:
            return ComponentStatus(name, None, None, False)
        running = pid_alive(embedded.pid, marker=embedded.data_dir)
        return ComponentStatus(name, embedded.url, embedded.pid, running and check(embedded.url))

    def _resolved(
        self, what: str, env_var: str, configured: str | None, embedded: EmbeddedServer | None
    ) -> str:
        if configured:
            return configured
        if embedded is None:
            raise StackNotRunningError(
                f"no {what}: {env_var} is not set and no embedded server runs under {self.home}. "
                "Run `rtml up` first."
            )
        if not pid_alive(embedded.pid, marker=embedded.data_dir):
            raise StackNotRunningError(
                f"the embedded {what} (pid {embedded.pid}, {embedded.data_dir}) is not running any more "
                f"(log: {embedded.log}). Run `rtml up` first."
            )
        return embedded.url

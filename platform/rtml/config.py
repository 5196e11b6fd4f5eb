"""The settings of rtml: one slice per concern (``ServicesSettings``, ``IngestSettings``, ...), held by
:class:`Settings`. Every value can be set through an ``RTML_`` environment variable (or a line in ``.env``).

The environment is read at the edges only (the CLI, the Dagster definitions, the scoring service's
start-up): they build :class:`Settings` and hand each library the slice it needs; tests and benchmarks
construct the slices they need. ``docs/configuration.md`` is generated from these classes
(``rtml config-docs``); do not document settings twice.
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, PrivateAttr, SecretStr, StringConstraints, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url


def _env_file() -> str | None:
    """``.env`` in the working directory; ``RTML_ENV_FILE`` names another file, or none when set empty
    (the test session: tests/isolation.py)."""
    return os.environ.get("RTML_ENV_FILE", ".env") or None


def _config(env_prefix: str) -> SettingsConfigDict:
    # A field whose variable does not follow its slice's prefix names it in ``validation_alias``; code
    # and tests construct slices by field name.
    return SettingsConfigDict(
        env_prefix=env_prefix,
        env_file=_env_file(),
        extra="ignore",
        validate_by_name=True,
        validate_by_alias=True,
    )


class _Slice(BaseSettings):
    """One concern's settings, read from the environment when constructed without values."""

    @classmethod
    def env_var(cls, name: str) -> str:
        """The environment variable of field ``name`` (``RTML_SERVING_MAX_BATCH``)."""
        alias = cls.model_fields[name].validation_alias
        return alias if isinstance(alias, str) else f"{cls.model_config.get('env_prefix', '')}{name}".upper()


class ServicesSettings(_Slice):
    """Where things live: the data directory and the servers (PostgreSQL, Redis)."""

    model_config = _config("RTML_")

    data_dir: Path = Field(
        Path(".rtml"),
        description="Folder for everything the platform writes: embedded servers, Dagster home, "
        "landing files, artifacts, reports.",
    )
    database_url: str | None = Field(
        None,
        description="PostgreSQL URL of the platform database (for example "
        "`postgresql://postgres@127.0.0.1:5432/rtml`). Databases `dagster` and `mlflow` are created "
        "next to it on the same server. Unset: `rtml up` starts an embedded PostgreSQL under the data "
        "directory.",
    )
    postgres_scorer_password: SecretStr | None = Field(
        None,
        description="Password of the scoring service's own PostgreSQL role `rtml_scorer`, which may write "
        "the prediction log and nothing else (`rtml.stack.roles`). Set: `rtml up` creates the role (or "
        "updates its password) and its grants on the platform database; the scorer then connects as it "
        "(its `RTML_DATABASE_URL` names user `rtml_scorer`; the compose stack does so). Unset: no role.",
    )
    postgres_platform_password: SecretStr | None = Field(
        None,
        description="Password of the platform's own PostgreSQL role `rtml_platform` (ingestion, dbt, "
        "training, monitoring). Set: `rtml up`, connected as a superuser, makes it the owner of the platform "
        "database and of everything in it, and revokes CONNECT from PUBLIC there (`rtml.stack.roles`); the "
        "platform's processes then connect as it (the compose stack does so). Unset: no role.",
    )
    postgres_dagster_password: SecretStr | None = Field(
        None,
        description="Password of Dagster's own PostgreSQL role `rtml_dagster`: as "
        "`postgres_platform_password`, owning the `dagster_database` (Dagster's run, event and schedule "
        "storage).",
    )
    postgres_mlflow_password: SecretStr | None = Field(
        None,
        description="Password of MLflow's own PostgreSQL role `rtml_mlflow`: as "
        "`postgres_platform_password`, owning the `mlflow_database` (MLflow's backend store).",
    )
    redis_url: str | None = Field(
        None,
        description="Redis URL of the online feature store (for example `redis://127.0.0.1:6379/0`). "
        "Unset: `rtml up` starts an embedded Redis-compatible server (Valkey) under the data directory.",
    )
    redis_cluster: bool = Field(
        False,
        description="`RTML_REDIS_URL` names a node of a Redis Cluster: the online store, the speed layer, "
        "the stream and its workers connect with redis-py's cluster client (each view's keys share one hash "
        'slot, each customer\'s speed-layer hash another; README, "Scaling out").',
    )
    environment: Literal["local", "servers"] = Field(
        "local",
        description="Where the Dagster resources find the servers (`rtml.defs.resources`): `local`, the "
        "stack `rtml up` / `rtml demo` run (embedded, or the servers its URLs name), looked up when a run "
        "first needs it; `servers` (the compose stack, your own servers), `RTML_DATABASE_URL`, "
        "`RTML_REDIS_URL` and `RTML_MLFLOW_TRACKING_URI` from the environment, nothing local.",
    )
    dagster_database: str = Field("dagster", description="Database for Dagster's run and event storage.")
    mlflow_database: str = Field(
        "mlflow",
        description="Database for MLflow's backend store (not Dagster's: both have a `runs` table).",
    )

    # --- derived ---------------------------------------------------------------------------------
    @property
    def home(self) -> Path:
        """Absolute data directory (Dagster and the embedded servers need absolute paths)."""
        return self.data_dir.expanduser().resolve()

    @property
    def live_window_file(self) -> Path:
        """Where the stack records its live ``simulator.start`` (``rtml.stack.state.record_live_start``)."""
        return self.home / LIVE_WINDOW_FILE

    @property
    def landing_dir(self) -> Path:
        return self.home / "landing"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def mlflow_artifacts_dir(self) -> Path:
        return self.home / "mlflow-artifacts"

    @property
    def bentoml_home(self) -> Path:
        """BentoML's model and bento store (``BENTOML_HOME``)."""
        return self.home / "bentoml"

    @property
    def predictions_spill_dir(self) -> Path:
        """Prediction-log rows waiting on disk for PostgreSQL (``rtml.monitoring.prediction_spill``)."""
        return self.home / "predictions-spill"

    @property
    def snapshots_dir(self) -> Path:
        """Training-set snapshots the training asset trained on, named by their DVC (md5) hash."""
        return self.home / "snapshots"


class SimulatorSettings(_Slice):
    """The transaction simulator and the window of simulated history."""

    model_config = _config("RTML_SIM_")

    seed: int = Field(7, description="Seed of the simulator: the same seed and window give the same rows.")
    demo_days: int = Field(
        7,
        ge=1,
        description="Days of history that `make demo` materializes: the last `RTML_DEMO_DAYS` whole days up "
        "to the current hour (not before `RTML_SIM_START`).",
        validation_alias="RTML_DEMO_DAYS",
    )
    # The live default reads the data directory of the environment; Settings recomputes it for its own.
    start: datetime = Field(
        default_factory=lambda data: live_sim_start(ServicesSettings().data_dir, data["demo_days"]),
        description="First hour of simulated history (UTC); the first partition of `transactions_raw` "
        "and `labels_raw`. Unset: live, the current hour minus `RTML_DEMO_DAYS`, fixed when the stack first "
        "starts (`rtml up` / `rtml demo` record it in `<data_dir>/live-window.json`, so partitions stay "
        "the same across restarts). Set it (e.g. `2026-11-01T00:00Z`) to pin the window: tests, "
        "benchmarks and the DVC pipeline do.",
    )
    customers: int = Field(20_000, description="Number of simulated card holders.")
    merchants: int = Field(2_000, description="Number of simulated merchants.")
    transactions_per_day: int = Field(
        100_000, description="Mean number of transactions per simulated day (before cycles and noise)."
    )
    dirty_share: float = Field(
        0.002,
        description="Share of simulated rows made deliberately invalid (bad amount, currency, ids, "
        "timestamps, duplicates) so that validation and quarantine are always exercised.",
    )
    drift_scenario: str | None = Field(
        None,
        description="Named drift scenario switched on at `RTML_SIM_DRIFT_START`: `amount_inflation`, "
        "`new_fraud_pattern` or `merchant_mix_shift`. Unset: no drift.",
    )
    drift_start: datetime | None = Field(
        None,
        description="When the drift scenario starts (UTC). Unset with a scenario: from `RTML_SIM_START`.",
    )
    _live: bool = PrivateAttr(False)

    @model_validator(mode="after")
    def _note_live(self) -> SimulatorSettings:
        self._live = "start" not in self.model_fields_set
        return self

    @property
    def start_is_live(self) -> bool:
        """Whether ``start`` was left unset (live) rather than pinned."""
        return self._live


class IngestSettings(_Slice):
    """Validation and loading of transactions and labels, and the ingestion asset checks."""

    model_config = _config("RTML_")

    max_amount: float = Field(
        50_000.0,
        gt=0,
        le=999_999.99,
        description="Largest valid transaction amount; larger is quarantined. At most 999,999.99: "
        "dbt's `stg_transactions` test requires amounts below 1,000,000.",
    )
    currencies: list[Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]] = Field(
        ["EUR", "USD", "GBP", "CHF", "PLN", "SEK"],
        description="Allowed ISO 4217 currency codes (three capital letters: dbt keeps them as `char(3)`).",
    )
    max_future_skew_seconds: int = Field(
        300, description="How far a transaction timestamp may lie in the future of load time."
    )
    landing_settle_seconds: float = Field(
        5.0,
        ge=0,
        description="A landing file is picked up once it has not been modified for this long (a file "
        "still being written keeps changing). Producers that may pause mid-write should write "
        "`.name.csv` or `name.csv.part` and rename it when complete.",
    )
    min_event_timestamp: datetime = Field(
        datetime(2000, 1, 1, tzinfo=UTC),
        description="Oldest event time the platform accepts: ingestion quarantines older transactions "
        "(`event_ts_before_floor`) and the scoring API answers 400 (a request dated 1970 would move the "
        "live-metrics window as much as one dated 9999).",
    )
    chunk_rows: int = Field(
        200_000,
        description="Rows validated and copied per chunk: bounds ingestion memory.",
        validation_alias="RTML_INGEST_CHUNK_ROWS",
    )
    quarantine_share_max: float = Field(
        0.01, description="Asset check threshold: largest acceptable share of quarantined rows."
    )
    partition_rows_min: int = Field(
        1, description="Asset check threshold: fewest rows a loaded hourly partition may hold."
    )
    partition_rows_max: int = Field(
        1_000_000, description="Asset check threshold: most rows a loaded hourly partition may hold."
    )


class TrainingSettings(_Slice):
    """Training, the MLflow registry and the evaluation gate."""

    model_config = _config("RTML_")

    mlflow_tracking_uri: str | None = Field(
        None,
        description="URL of the MLflow tracking server and model registry (for example "
        "`http://127.0.0.1:5000`). Unset: `rtml up` starts one on `RTML_MLFLOW_PORT`, its backend store in "
        "the `RTML_MLFLOW_DATABASE` and its artifacts under the data directory.",
    )
    model_name: str = Field("fraud-detector", description="Registered model name in the MLflow registry.")
    gate_metric: str = Field(
        "pr_auc",
        description="Evaluation gate: the metric on which a new model version must beat production "
        "(on the new version's test window) to get the `staging` alias.",
    )
    gate_min_improvement: float = Field(
        0.002, description="Evaluation gate: how much better than production `RTML_GATE_METRIC` must be."
    )
    gate_guarded_metrics: list[str] = Field(
        ["roc_auc", "recall_at_1pct_fpr"],
        description="Evaluation gate: metrics that may not regress against production by more than "
        "`RTML_GATE_TOLERANCE`.",
    )
    gate_tolerance: float = Field(
        0.01, description="Evaluation gate: largest acceptable drop of a guarded metric."
    )
    gate_min_roc_auc: float = Field(
        0.8,
        description="Evaluation gate: the ROC AUC a version needs on its test window when there is no "
        "production version to compare with.",
    )


class OnlineSettings(_Slice):
    """The online feature store (Redis), its push, checks and the speed layer's read."""

    model_config = _config("RTML_ONLINE_")

    key_prefix: str = Field(
        "rtml",
        description="Prefix of every Redis key of the online store (`{prefix}:{<view>}:current` points at "
        "the current namespace `{prefix}:{<view>}:v{version}:{fingerprint}:{build}`; the braces are "
        "literal: the view's hash tag on a Redis Cluster). No braces in the prefix itself.",
        pattern=r"^[^{}]+$",
    )
    ttl_seconds: int = Field(
        7 * 86_400,
        description="How long a push of the online store stays readable: the views' pointers expire "
        "unless the next push (full or incremental) refreshes them; then every entity reads as unknown "
        "(defaults, `missing`). 0: never expire.",
    )
    push_batch_entities: int = Field(
        10_000, description="Entities per protocol batch of the bulk writer (bounds its memory)."
    )
    parity_sample: int = Field(
        200, description="Asset check: entities per view compared between PostgreSQL and Redis."
    )
    skew_sample_size: int = Field(
        2_000,
        ge=1,
        description="Asset check `training_serving_skew`: the newest logged requests "
        "(`monitoring.served_features`) whose transactions are ingested, compared feature by feature "
        "with the offline store.",
        validation_alias="RTML_SKEW_SAMPLE_SIZE",
    )
    skew_lookback_hours: float = Field(
        48.0,
        gt=0,
        description="Asset check `training_serving_skew`: only requests scored within this many hours are "
        "sampled (and only the online pushes since, plus the one before, are looked up).",
        validation_alias="RTML_SKEW_LOOKBACK_HOURS",
    )
    max_removal_share: float = Field(
        0.5,
        description="Push guard: a push of the online store that would remove more than this share of a "
        "view's entities (an empty or truncated `*_latest` table) is refused before anything is written; "
        "`online_features` with run config `full_refresh: true, allow_mass_removal: true` overrides it. "
        "1: no guard.",
    )
    heal_interval_seconds: int = Field(
        30,
        description="How often `online_store_heal_sensor` checks that the views' pointers exist in Redis; "
        "when they are gone (restart, flush, TTL lapse) while the `*_latest` tables have rows, it "
        "requests one full push (`online_rebuild_job`). With a run's start-up and the push, the store is "
        "back within about two minutes.",
    )
    redis_socket_timeout_ms: float = Field(
        100.0,
        description="Socket timeout of the online reader (connect and each command), in milliseconds; "
        "a timeout raises `redis.exceptions.TimeoutError`.",
        validation_alias="RTML_REDIS_SOCKET_TIMEOUT_MS",
    )
    speed_layer_enabled: bool = Field(
        True,
        description="Speed layer (docs/streaming.md): the hourly `online_features` push also pushes dbt's "
        "`customer_stream_snapshot` (each customer's batch snapshot and the watermark), and the scoring "
        "service's one online read merges it with the stream's events since the watermark, so the "
        "customer features of a transaction at t are exactly `customer_features`' for t (z-score in "
        "numeric, bit-identical). Where it cannot answer exactly (past the snapshot's horizon, no "
        "snapshot yet) the batch values as of the last refresh are used, counted in "
        "`rtml_speed_layer_reads_total`. On by default: `rtml demo` runs a stream worker; without one the "
        "merged features see no events after the watermark (as the batch values). Off: the batch values, "
        "no snapshot push.",
        validation_alias="RTML_SPEED_LAYER_ENABLED",
    )


class TrafficSettings(_Slice):
    """Live traffic (`rtml traffic`, started by `rtml demo`)."""

    model_config = _config("RTML_TRAFFIC_")

    rate_multiplier: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Share of the simulated stream `rtml traffic` sends to the scoring API by default "
        "(chosen by transaction id: always the same subset). 1.0 at the default volume is about 1-2 "
        "requests/s.",
    )
    rate: float | None = Field(
        None,
        gt=0,
        description="Requests/s `rtml traffic` aims at by default instead of `RTML_TRAFFIC_RATE_MULTIPLIER` "
        "(the share of the stream that gives it; at most the whole stream).",
    )
    concurrency: int = Field(
        8, ge=1, description="Requests `rtml traffic` keeps in flight at most (its async pool)."
    )


class ServingSettings(_Slice):
    """The scoring service (BentoML `FraudScorer`) and its prediction log."""

    model_config = _config("RTML_SERVING_")

    port: int = Field(3001, description="Port of the BentoML scoring service (`FraudScorer`).")
    workers: int = Field(
        1, description="Worker processes of the scoring service (each about one core; each loads the model)."
    )
    fail_open: bool = Field(
        True,
        description="Redis unavailable: true scores with default features (`degraded: true` in the "
        "response, `rtml_scoring_degraded_total` incremented); false answers 503 with a message.",
    )
    max_batch: int = Field(
        256, description="Most transactions one `POST /score_batch` request may hold (more: 422)."
    )
    max_body_bytes: int = Field(
        1_048_576,
        description="Largest request body of `/score` and `/score_batch`, in bytes: a larger "
        "`Content-Length` is answered 413 before the body is read, a streamed body as soon as it passes "
        "the limit. A full `/score_batch` of 256 transactions is about 90 kB.",
    )
    max_concurrency: int = Field(
        512,
        description="Requests the scoring service handles at once (all workers together; BentoML's "
        "`traffic.max_concurrency`); more are answered 429 at once. Health and metrics routes are exempt.",
    )
    max_queue_rows: int = Field(
        1024,
        description="Transactions waiting for a micro-batch, per worker; a request that would exceed it is "
        'answered 503 with `Retry-After` at once (`rtml_scoring_unavailable_total{reason="queue_full"}`) '
        "rather than waiting behind seconds of work. Requests whose client disconnects while they wait "
        "are not scored (`rtml_scoring_abandoned_total`).",
    )
    breaker_probe_ms: float = Field(
        100.0,
        description="Circuit breaker of the online read: how often a background probe (one `MGET` of the "
        "views' pointers, timeout `RTML_REDIS_SOCKET_TIMEOUT_MS`) asks Redis whether it answers. A read that "
        "fails opens the breaker: requests are then answered without Redis (fail-open: degraded; "
        "fail-closed: 503) until a probe succeeds, so recovery takes at most about this long. The probe "
        "also tells `GET /health` which views are missing.",
    )
    model_poll_seconds: float = Field(
        30.0,
        description="How often the scoring service asks the MLflow registry which version holds the "
        "`production` alias; a new one is loaded and swapped in without dropping requests. 0: never.",
    )
    model_alias: str = Field(
        "production", description="Registry alias of the model version the scoring service serves."
    )
    shadow: bool = Field(
        True,
        description="Shadow scoring: while a version holds `RTML_SERVING_SHADOW_ALIAS` (and it is not the "
        "production version), every worker loads it beside production (gated and loaded safely, like "
        "production, but without a person's approval) and scores every request with it after the "
        "answer went out, on a background thread; its scores go to `monitoring.shadow_predictions`. "
        "The answer, its latency and its decision come from production alone. false: no shadow.",
    )
    shadow_alias: str = Field(
        "staging", description="Registry alias of the version the scoring service shadow-scores."
    )
    shadow_queue_max: int = Field(
        10_000,
        description="Transactions waiting for the shadow model, per worker; beyond it they are not "
        "shadow-scored (`rtml_scoring_shadow_dropped_total`): a slow shadow never holds memory or "
        "production back.",
    )
    feature_log_sample: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="Share of scored requests whose model input row is logged to "
        "`monitoring.served_features` (0: none, 1: all). Chosen by the transaction id (a hash), so a "
        "retried transaction is logged, or not, every time.",
    )
    served_features_retention_days: float = Field(
        14.0,
        description="Rows of `monitoring.served_features` older than this (by `scored_at`) are deleted "
        "hourly by the scoring service (about 1.3 kB per row with its indexes: 1.26 GB per million "
        "logged requests, docs/benchmarks.md). 0: kept forever.",
        validation_alias="RTML_SERVED_FEATURES_RETENTION_DAYS",
    )
    shadow_predictions_retention_days: float = Field(
        90.0,
        description="Rows of `monitoring.shadow_predictions` older than this are deleted hourly by the "
        "scoring service (long enough for the labels to arrive and the challenger comparison to read "
        "them; about 190 bytes per row with its index: 0.19 GB per million). 0: kept forever.",
        validation_alias="RTML_SHADOW_PREDICTIONS_RETENTION_DAYS",
    )
    predictions_queue_max: int = Field(
        100_000,
        description="Scored requests the prediction-log writer keeps in memory. From half of it (or "
        "while PostgreSQL is unreachable or stalled) rows are spilled to disk "
        "(`<data_dir>/predictions-spill/`) and written to `monitoring.predictions` once PostgreSQL is "
        "back; a row finding the queue full is dropped and counted (`rtml_predictions_dropped_total`).",
        validation_alias="RTML_PREDICTIONS_QUEUE_MAX",
    )
    predictions_spill_max_bytes: int = Field(
        1 << 30,
        description="Size limit of the prediction-log spill folder (bytes; about 350 per row, so 1 GiB "
        "keeps about 3M rows, over 4 hours at 200 requests/s). Beyond it rows are dropped and counted.",
        validation_alias="RTML_PREDICTIONS_SPILL_MAX_BYTES",
    )
    predictions_flush_rows: int = Field(
        500,
        description="The prediction-log writer flushes to `monitoring.predictions` at this many rows...",
        validation_alias="RTML_PREDICTIONS_FLUSH_ROWS",
    )
    predictions_flush_ms: float = Field(
        200.0,
        description="... or when the oldest unwritten row is this old (milliseconds).",
        validation_alias="RTML_PREDICTIONS_FLUSH_MS",
    )


class StreamSettings(_Slice):
    """The transactions stream, its lander and its speed-layer workers."""

    model_config = _config("RTML_STREAM_")

    key: str = Field(
        "rtml:transactions:v1",
        description="Redis Stream (on `RTML_REDIS_URL`) of authorised transactions, one entry per event "
        "(`rtml.streaming.events`, schema version in field `v`). A new event schema gets a new key.",
    )
    retention_hours: float = Field(
        48.0,
        gt=0,
        description="How long entries stay in the stream: every publish trims entries older than this "
        "(`XADD ... MINID ~`, by the entry id's arrival time; approximate, whole internal nodes). Trimming "
        "ignores consumer groups: a consumer (the lander) down for longer loses the events trimmed meanwhile "
        "(counted as `trimmed` when it claims them).",
    )
    publish: bool = Field(
        True,
        description="The scoring service publishes every transaction it scored to the stream, after the "
        "answer went out (a background thread; never in the request's latency path, never failing it).",
    )
    publish_queue_max: int = Field(
        100_000,
        ge=2,
        description="Events the scorer's publisher keeps in memory per worker while Redis is slow or away; "
        "an event finding the queue full is dropped and counted (`rtml_stream_events_dropped_total`).",
    )
    publish_batch: int = Field(
        500,
        ge=1,
        description="Events per pipelined round trip of `XADD`s (publisher, `rtml stream publish`).",
    )
    lander_group: str = Field(
        "lander", description="Consumer group of `rtml stream land` (its own: it acknowledges on its own)."
    )
    lander_batch_events: int = Field(
        5_000, ge=1, description="`rtml stream land` loads a micro-batch at this many events..."
    )
    lander_batch_ms: float = Field(
        1_000.0,
        gt=0,
        description="... or when its first event has waited this long (milliseconds): the time from XADD to "
        "`raw.transactions` is about this plus one load.",
    )
    lander_metrics_port: int = Field(
        9109,
        ge=0,
        description="Port of `rtml stream land`'s Prometheus metrics (`/metrics`: "
        "`rtml_stream_lander_events_total`, `rtml_stream_lander_lag_seconds`, ...), on all interfaces. "
        "0: no metrics server.",
    )
    claim_idle_ms: int = Field(
        60_000,
        ge=1,
        description="A consumer takes over another consumer's pending events (read, never acknowledged) once "
        "they have been idle this long (`XAUTOCLAIM`): the other consumer is taken to be dead.",
    )
    worker_group: str = Field(
        "features",
        description="Consumer group of `rtml stream run` (the speed layer's workers): workers of one group "
        "share the stream's events, each applied to the per-customer state once.",
    )
    worker_batch_events: int = Field(
        500,
        ge=1,
        description="Events `rtml stream run` reads per `XREADGROUP` and applies (with their `XACK`) in one "
        "pipelined round trip.",
    )
    worker_block_ms: int = Field(
        500,
        ge=1,
        description="How long `rtml stream run` waits for new events per read; also about how long a "
        "SIGTERM waits for an idle worker to stop.",
    )
    worker_metrics_port: int = Field(
        9108,
        ge=0,
        description="Port of `rtml stream run`'s Prometheus metrics (`/metrics`: "
        "`rtml_stream_events_processed_total`, `rtml_stream_consumer_lag_seconds`, ...), on all interfaces. "
        "0: no metrics server.",
    )
    transactions_feed: Literal["simulator", "stream"] = Field(
        "simulator",
        description="Which path feeds `raw.transactions`. `simulator` (the demo): the hourly ingestion "
        "loads the simulator's rows; the scorer's published events feed only the speed layer and are not "
        "landed (they are the same transactions: loading both would load each twice), and `rtml stream land` "
        "refuses to run. `stream` (a deployment without the simulator): `rtml stream land` writes the "
        "stream's events to `raw.transactions`.",
        validation_alias="RTML_TRANSACTIONS_FEED",
    )


class MonitoringSettings(_Slice):
    """Drift, live model performance, the challenger comparison and where figures and notices go."""

    model_config = _config("RTML_")

    pushgateway_url: str | None = Field(
        None,
        description="Prometheus Pushgateway (for example `http://127.0.0.1:9091`) that the pipeline assets "
        "push their figures to (`rtml.monitoring.metrics`). Unset: figures are asset metadata only.",
    )
    drift_threshold: float = Field(
        0.2,
        description="Drift check: the largest acceptable share of drifted columns (Evidently's per-column "
        "tests, as `DataDriftPreset` chooses them) between the training reference window and the current "
        "window. One upstream change moves several columns (a shift in amounts drifts about 6 of the 24: "
        "0.25), while a no-drift window stays below 0.15 here.",
    )
    drift_current_hours: int = Field(
        24, description="Drift report: the current window is the newest this many hours of features."
    )
    drift_recent_hours: int = Field(
        1,
        description="Hourly drift check (`recent_drift_report`, after every hourly refresh): the current "
        "window is the newest this many hours of features (about 4,000 rows at the simulator's default "
        "volume), against the reference's rows of the same hours of the day on the same day of the week "
        "(the same kind of day, weekday or weekend, when the reference has no such day; the hours on any "
        "day when it has no such kind of day either). Windowed features are compared only on rows whose "
        "window lies wholly after the oldest transaction (a 7-day count in the first week of history is a "
        "partial one).",
    )
    drift_recent_pvalue: float = Field(
        1e-6,
        gt=0,
        lt=1,
        description="Hourly drift check: every numeric column of the hour (and of its tail) is compared "
        "with the reference by the two-sample Kolmogorov-Smirnov test; the check fails when one p-value "
        "is below this. Calibrated on weeks of undrifted hours (nights and a weekend; docs/benchmarks.md, "
        "drift calibration): at 20,000 transactions a day 1 false alarm in 168 hours, `amount_inflation` "
        "switched on up to minute :50 of an hour detected in that hour (with the kind-of-day reference); "
        "at the default 100,000 a day after a week of history (the demo): no false alarm in 168 hours, a "
        "switch up to :52 detected in its hour. A false alarm costs one retraining run, gated like any. "
        "Categorical columns are left to the daily report.",
    )
    drift_recent_tail_minutes: int = Field(
        15,
        ge=0,
        description="Hourly drift check: when positive, the newest this many minutes of the window are "
        "compared too, under the same rule: a drift switched on late in an hour fills a short tail more "
        "than the hour (a switch at :50 moved `amount` to p < 1e-12 in the 15-minute tail, 4e-4 in the "
        "hour). 0: the hour only.",
    )
    drift_recent_tail_min_rows: int = Field(
        100,
        description="Hourly drift check: the tail is compared only when it holds at least this many rows "
        "(night tails hold a few dozen).",
    )
    drift_recent_max_rows: int = Field(
        20_000,
        description="Hourly drift check: rows sampled (seeded) from each of the two windows at most (it "
        "runs every hour: a smaller reference sample keeps it to seconds; the daily report uses "
        "`RTML_DRIFT_MAX_ROWS`).",
    )
    drift_retraining_cooldown_hours: float = Field(
        24.0,
        description="Drift sensor: after a drift-triggered retraining against a production version, a drift "
        "that persists (the hourly check fails every hour until a new version is promoted) requests no "
        "further retraining against that version for this many hours.",
    )
    drift_max_rows: int = Field(
        100_000, description="Drift report: rows sampled (seeded) from each of the two windows at most."
    )
    live_metrics_days: int = Field(
        7, description="Live model performance: days of labelled predictions evaluated (one figure per day)."
    )
    challenger_window_days: int = Field(
        7,
        ge=1,
        description="Live challenger comparison (`challenger_comparison`): the staged version's shadow "
        "scores of the last this many days (up to its newest one) against production's answers to the same "
        "requests.",
    )
    challenger_min_labelled: int = Field(
        1000,
        ge=1,
        description="Live challenger comparison: labelled requests (both classes among them) needed before "
        "it gives a verdict (better / worse on PR AUC); below it the verdict is `too_few_labelled` and the "
        "figures are shown as preliminary. At the simulator's 1 % fraud rate, 1,000 labelled requests hold "
        "about 10 frauds: fewer make a PR AUC difference noise.",
    )
    challenger_max_rows: int = Field(
        100_000,
        ge=100,
        description="Live challenger comparison: requests sampled (seeded) for the Evidently comparison of "
        "the two score distributions at most (the figures use every request).",
    )
    challenger_cron: str = Field(
        "30 12 * * *",
        description="Cron expression (UTC) of the daily live challenger comparison (`challenger_job`), after "
        "the day's labels and the drift report.",
    )
    alert_webhook_url: str | None = Field(
        None,
        description="Webhook that notifications are POSTed to (JSON): Alertmanager's receiver and the "
        "automation's run-failure and promotion notices. Unset: notices are only logged and stored.",
    )


class AutomationSettings(_Slice):
    """Schedules, sensors, freshness checks and the delivery of notifications."""

    model_config = _config("RTML_")

    model_max_age_days: float = Field(
        7.0,
        description="Freshness check on `fraud_model`: a newer version must have been trained within this "
        "many days; when it fails, the staleness sensor requests the retraining job.",
    )
    transactions_max_lag_hours: float = Field(
        2.0,
        description="Freshness check on `transactions_raw`: some partition must have been loaded within this "
        "many hours; when it fails, a notification is sent.",
    )
    online_features_max_age_hours: float = Field(
        2.0,
        description="Freshness check on `online_features`: the online store must have been pushed within "
        "this many hours; when it fails, a notification is sent.",
    )
    retraining_cron: str = Field(
        "0 2 * * *",
        description="Cron expression (UTC) of the daily retraining schedule (after `labels_job_schedule` "
        "has loaded the day's labels at 00:15).",
    )
    drift_report_cron: str = Field(
        "0 12 * * *",
        description="Cron expression (UTC) of the drift schedule: `drift_report` and its check "
        "`drift_within_threshold`, whose failure requests the retraining job.",
    )
    notify_timeout_s: float = Field(5.0, description="Timeout of one webhook POST of a notification.")
    notify_attempts: int = Field(
        4,
        description="POSTs per notification at most: connection errors, timeouts, HTTP 429 and 5xx are "
        "retried; other HTTP errors are final.",
    )
    notify_backoff_s: float = Field(
        1.0, description="Wait before the first retry of a notification's POST; doubles with each retry."
    )
    notify_exit_wait_s: float = Field(
        15.0,
        description="At process exit, how long deliveries still in progress may take before the process "
        "ends (the row then says they were cut short).",
    )
    incomplete_partitions_lookback_hours: int = Field(
        72,
        description="How far back `incomplete_partitions_sensor` looks for hours whose `transactions_raw` is "
        "newer than the features the hourly refresh builds from it (an interrupted run); it rebuilds them "
        "with one `hourly_refresh_job` run.",
    )


class StackSettings(_Slice):
    """The local stack that `rtml up` / `rtml demo` start (ports, stopping, run monitoring)."""

    model_config = _config("RTML_")

    dagster_port: int = Field(
        3000, description="Port of the Dagster UI started by `make demo` / `rtml demo`."
    )
    docs_port: int = Field(
        8080, description="Port of the feature catalogue (dbt docs site) of `rtml docs` / `make demo`."
    )
    mlflow_port: int = Field(
        5000,
        description="Port of the MLflow server that `rtml up` starts (when `RTML_MLFLOW_TRACKING_URI` is "
        "unset).",
    )
    demo_stop_grace_s: float = Field(
        7.0,
        description="After Ctrl-C (or SIGTERM) of `rtml demo`: how long its in-flight runs may take to be "
        "canceled and its processes to exit by themselves; then what is left is killed (SIGKILL) and its "
        "runs are marked canceled. Everything the demo started is gone at most about 3 s later.",
    )
    fork_run_workers: bool = Field(
        True,
        description="Dagster's code servers (the stack's and the compose stack's) start each run's process "
        "by forking a process that imported the code location and the drift check's libraries once, "
        "instead of a new Python that imports them for every run (about 3 s before a run's first step "
        "here, 5 s more in the drift check's). Off: Dagster's own `spawn`.",
    )
    run_monitoring_interval_s: int = Field(
        30,
        description="How often the Dagster daemon checks the in-flight runs (run monitoring in the "
        "`dagster.yaml` that `rtml up` writes): a run whose code server no longer runs it (crashed or "
        "killed) is marked failed; so is a run that has not started after 180 s; one stuck canceling for "
        "60 s is marked canceled.",
    )


class Settings(BaseModel):
    """All settings, one slice per concern: ``settings.serving.max_batch``. ``Settings()`` reads every
    slice from the environment; ``Settings(ingest=IngestSettings(chunk_rows=16))`` sets one slice and
    reads the others."""

    services: ServicesSettings = Field(default_factory=ServicesSettings)
    simulator: SimulatorSettings = Field(default_factory=SimulatorSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    online: OnlineSettings = Field(default_factory=OnlineSettings)
    traffic: TrafficSettings = Field(default_factory=TrafficSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    stream: StreamSettings = Field(default_factory=StreamSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    automation: AutomationSettings = Field(default_factory=AutomationSettings)
    stack: StackSettings = Field(default_factory=StackSettings)

    @model_validator(mode="after")
    def _live_start_of_this_data_dir(self) -> Settings:
        # A live start is the one recorded under the data directory, which is another slice's setting.
        if self.simulator.start_is_live:
            start = live_sim_start(self.services.data_dir, self.simulator.demo_days)
            self.simulator = self.simulator.model_copy(update={"start": start})  # still live: copied
        return self


SLICES: tuple[type[_Slice], ...] = tuple(
    field.annotation for field in Settings.model_fields.values() if isinstance(field.annotation, type)
)
"""The slice classes, in the order of ``Settings`` (``docs/configuration.md``'s sections)."""


LIVE_WINDOW_FILE = "live-window.json"


def floor_hour(moment: datetime) -> datetime:
    """The start of ``moment``'s hour (UTC)."""
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def live_sim_start(data_dir: Path, demo_days: int, now: datetime | None = None) -> datetime:
    """``RTML_SIM_START`` when unset: the one this data directory's stack recorded when it first started, or
    (none recorded yet) the current hour minus ``RTML_DEMO_DAYS``. The simulator draws every absolute hour
    from its own seed, so the start only chooses which hours exist, never what they hold."""
    recorded = Path(data_dir).expanduser().resolve() / LIVE_WINDOW_FILE
    if recorded.exists():
        return datetime.fromisoformat(json.loads(recorded.read_text())["sim_start"])
    return floor_hour(now or datetime.now(UTC)) - timedelta(days=demo_days)


def database_url_for(server_url: str, database: str) -> str:
    """The URL of another database on the same server (``rtml`` → ``dagster``, ``mlflow``)."""
    return make_url(server_url).set(database=database).render_as_string(hide_password=False)


# The password in a URL's userinfo (``scheme://user:PASSWORD@host``): greedy up to the authority's last
# ``@``, so an unescaped ``@`` in a password does not leave its tail visible.
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^/\s]*(?=@)", re.IGNORECASE)
# Secrets passed as query parameters: libpq's ``password``/``sslpassword``, redis-py's ``password``, tokens.
_QUERY_SECRET = re.compile(r"(?P<head>[?&]\w*(?:password|token|secret)=)[^&#\s]*", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` (a URL, or a message that quotes URLs) with every credential replaced by ``***``:
    ``postgresql://rtml:s3cret@db/rtml`` → ``postgresql://rtml:***@db/rtml``, and the values of
    password- or token-like query parameters. Used by everything that prints or logs a URL or an error
    that may quote one (the deploy workflow's ``rtml status`` output lands in CI logs)."""
    return _QUERY_SECRET.sub(r"\g<head>***", _URL_PASSWORD.sub(r"\g<head>***", text))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, read from the environment once. For the edges only (the CLI, the
    Dagster definitions, the scoring service's start-up): they pass each library the slice it needs."""
    return Settings()

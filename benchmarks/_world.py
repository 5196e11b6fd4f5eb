"""The benchmarks' worlds of their own (``benchmarks/serving.py``'s default, ``benchmarks/speed_read.py``):
the test suite's training world (2,000 customers, 8,000 transactions a day, 3 weeks) in a database of its
own on the given PostgreSQL, an MLflow server of its own with a model trained, gated and approved
(``production``). ``scoring_world`` adds the online store pushed to the given Redis under a key prefix of
its own and, with ``staged``, a second version of the same artifact holding ``staging`` (gated, not
approved: what shadow scoring loads). Everything is removed at the end.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mlflow

from rtml.config import OnlineSettings, ServicesSettings, Settings, SimulatorSettings
from rtml.features.dbt import run_dbt
from rtml.features.online import OnlineStore
from rtml.features.sample_data import create_database, load_simulated
from rtml.stack import mlflow_server
from rtml.stack.processes import free_port
from rtml.training import model_registry
from rtml.training.tracking import train_and_register

START = datetime(2026, 9, 1, tzinfo=UTC)
DAYS, LABEL_DAYS = 21, 10


def build_world(database_url: str, settings: Settings) -> None:
    end = START + timedelta(days=DAYS)
    load_simulated(database_url, settings, START, end, labels_until=end + timedelta(days=LABEL_DAYS))
    select = ["+training_set", "+customer_features_latest", "+merchant_features_latest"]
    proc = run_dbt(["run", "--full-refresh", "--select", *select, "customer_stream_snapshot"], database_url)
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-5000:])


def scored_pair(database_url: str, which: str) -> tuple[str, str, int, int]:
    """The scored customer (``busiest``: the most transactions in the 30 days before W, the largest
    snapshot to merge; ``median``: the median one by that count), a merchant it has used, its 30-day
    count and its number of known merchants."""
    import psycopg

    order = "txn_count_30d desc" if which == "busiest" else "txn_count_30d"
    with psycopg.connect(database_url) as conn:
        customers = conn.execute("select count(*) from features.customer_stream_snapshot").fetchone()
        offset = 0 if which == "busiest" or customers is None else int(customers[0]) // 2
        row = conn.execute(
            "select customer_id, known_merchant_ids[1], txn_count_30d, cardinality(known_merchant_ids)"
            f" from features.customer_stream_snapshot order by {order}, customer_id"
            f" offset {offset} limit 1"
        ).fetchone()
    assert row is not None
    return str(row[0]), str(row[1]), int(row[2]), int(row[3])


def drop_database(server_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


@dataclass(frozen=True)
class ProductionWorld:
    url: str
    """The world's database."""
    model: str
    """The registered model; its version ``version`` holds ``production``."""
    version: str
    key_prefix: str
    """The world's keys in Redis."""
    tracking_uri: str
    client: Any
    """An ``MlflowClient`` of the world's server."""
    tmp: Path
    """A folder of the world's, removed with it."""

    def service_env(self, redis_url: str) -> dict[str, str]:
        """The ``RTML_*`` environment of a scoring service on this world and ``redis_url``."""
        return {
            "RTML_REDIS_URL": redis_url,
            "RTML_DATABASE_URL": self.url,
            "RTML_MLFLOW_TRACKING_URI": self.tracking_uri,
            "RTML_MODEL_NAME": self.model,
            "RTML_ONLINE_KEY_PREFIX": self.key_prefix,
            "RTML_STREAM_PUBLISH": "false",
            "RTML_STREAM_KEY": f"{self.key_prefix}:transactions",  # removed with the world's keys
            "BENTOML_DO_NOT_TRACK": "true",
        }


@contextlib.contextmanager
def production_world(database_url: str, log_dir: Path, label: str) -> Iterator[ProductionWorld]:
    """The world of benchmark ``label`` (database ``rtml_bench_<label>_<pid>`` on ``database_url``, model
    ``fraud-detector-bench-<label>`` trained on it and approved); logs under ``log_dir``."""
    name = f"rtml_bench_{label.replace('-', '_')}_{os.getpid()}"
    model = f"fraud-detector-bench-{label}"
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        os.environ["DBT_TARGET_PATH"] = str(tmp / "dbt-target")  # the project's target/ stays as it is
        settings = Settings(
            services=ServicesSettings(data_dir=tmp / "data"),
            simulator=SimulatorSettings(start=START, customers=2_000, transactions_per_day=8_000),
        )
        started = time.perf_counter()
        url = create_database(database_url, name)
        stack.callback(drop_database, database_url, name)
        build_world(url, settings)
        print(f"world built in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        server = mlflow_server.start(
            f"sqlite:///{tmp / 'mlflow.db'}", free_port(), tmp / "artifacts", log_dir / "mlflow.log", tmp
        )
        stack.callback(mlflow_server.stop, server.pid)
        trained = train_and_register(url, server.url, settings, model_name=model)
        client = model_registry.client_for(server.url)
        model_registry.gate(client, trained.model_version, trained.holdout, settings, name=model)
        model_registry.promote(
            client, trained.model_version, "benchmark", label, name=model, allow_rejected=True
        )
        print(f"{model} v{trained.model_version} in production", file=sys.stderr)
        prefix = f"rtml-bench-{label}-{os.getpid()}"
        yield ProductionWorld(url, model, str(trained.model_version), prefix, server.url, client, tmp)


@contextlib.contextmanager
def scoring_world(
    database_url: str, redis_url: str, log_dir: Path, *, staged: bool = True
) -> Iterator[tuple[dict[str, str], dict[str, Any]]]:
    """(the services' ``RTML_*`` environment, a transaction of a known customer and merchant)."""
    with contextlib.ExitStack() as stack:
        world = stack.enter_context(production_world(database_url, log_dir, "serving"))
        model, client = world.model, world.client
        if staged:  # the same artifact again: a staged version costs the shadow what production costs
            production = client.get_model_version(model, world.version)
            second = mlflow.register_model(production.source, model)  # models:/<logged model id>
            for key, value in production.tags.items():
                if key.startswith("threshold_") or key.startswith("gate"):
                    client.set_model_version_tag(model, second.version, key, value)
            client.set_model_version_tag(model, second.version, "gate", "staged")
            client.set_registered_model_alias(model, "staging", second.version)
            print(f"v{world.version} in production, v{second.version} staged", file=sys.stderr)
        store = OnlineStore(redis_url, online=OnlineSettings(ttl_seconds=0, key_prefix=world.key_prefix))
        stack.callback(store.close)
        stack.callback(store.purge)
        store.push_from_postgres(world.url, full=True)
        customer, merchant, _, _ = scored_pair(world.url, "median")
        yield world.service_env(redis_url), {"customer_id": customer, "merchant_id": merchant}


@contextlib.contextmanager
def provisioned(
    database_url: str, redis_url: str, log_dir: Path, *, staged: bool = False
) -> Iterator[tuple[dict[str, str], float]]:
    """A scoring world on the given servers (embedded ones when they do not answer): the services'
    ``RTML_*`` set in ``os.environ`` for the scorers a benchmark starts; yields (the fields of a
    transaction of a known customer and merchant, the seconds the world took: not part of any figure)."""
    from _servers import servers

    log_dir.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    with contextlib.ExitStack() as stack:
        database_url, redis_url = stack.enter_context(servers(database_url, redis_url))
        env, known = stack.enter_context(scoring_world(database_url, redis_url, log_dir, staged=staged))
        seconds = round(time.perf_counter() - began, 1)
        print(f"provisioned in {seconds} s (not timed)", file=sys.stderr)
        os.environ.update(env)
        yield known, seconds

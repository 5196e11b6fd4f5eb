"""A scoring world of its own for the serving benchmarks (``benchmarks/serving.py``'s default), as
``benchmarks/speed_read.py`` builds it: the test suite's training world (2,000 customers, 8,000
transactions a day, 3 weeks) in a database ``rtml_bench_serving_<pid>`` on the machine's PostgreSQL, an
MLflow server of its own with a model trained, gated and approved (``production``), the online store
pushed to the machine's Redis under a key prefix of its own; with ``staged``, a second version of the
same artifact holding ``staging`` (gated, not approved: what shadow scoring loads). Removed at the end.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow

from rtml.config import OnlineSettings, ServicesSettings, Settings, SimulatorSettings
from rtml.features.online import OnlineStore
from rtml.features.sample_data import create_database
from rtml.stack import mlflow_server
from rtml.stack.processes import free_port
from rtml.training import model_registry
from rtml.training.tracking import train_and_register
from speed_read import START, build_world, drop_database, scored_pair

MODEL = "fraud-detector-bench-serving"


@contextlib.contextmanager
def scoring_world(
    database_url: str, redis_url: str, log_dir: Path, *, staged: bool = True
) -> Iterator[tuple[dict[str, str], dict[str, Any]]]:
    """(the services' ``RTML_*`` environment, a transaction of a known customer and merchant)."""
    name = f"rtml_bench_serving_{os.getpid()}"
    prefix = f"rtml-bench-serving-{os.getpid()}"
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
        trained = train_and_register(url, server.url, settings, model_name=MODEL)
        client = model_registry.client_for(server.url)
        model_registry.gate(client, trained.model_version, trained.holdout, settings, name=MODEL)
        model_registry.promote(
            client, trained.model_version, "benchmark", "serving", name=MODEL, allow_rejected=True
        )
        if staged:  # the same artifact again: a staged version costs the shadow what production costs
            production = client.get_model_version(MODEL, trained.model_version)
            second = mlflow.register_model(production.source, MODEL)  # models:/<logged model id>
            for key, value in production.tags.items():
                if key.startswith("threshold_") or key.startswith("gate"):
                    client.set_model_version_tag(MODEL, second.version, key, value)
            client.set_model_version_tag(MODEL, second.version, "gate", "staged")
            client.set_registered_model_alias(MODEL, "staging", second.version)
            print(f"v{trained.model_version} in production, v{second.version} staged", file=sys.stderr)
        store = OnlineStore(redis_url, online=OnlineSettings(ttl_seconds=0, key_prefix=prefix))
        stack.callback(store.close)
        stack.callback(store.purge)
        store.push_from_postgres(url, full=True)
        customer, merchant, _, _ = scored_pair(url, "median")
        env = {
            "RTML_REDIS_URL": redis_url,
            "RTML_DATABASE_URL": url,
            "RTML_MLFLOW_TRACKING_URI": server.url,
            "RTML_MODEL_NAME": MODEL,
            "RTML_ONLINE_KEY_PREFIX": prefix,
            "RTML_STREAM_PUBLISH": "false",
            "BENTOML_DO_NOT_TRACK": "true",
        }
        yield env, {"customer_id": customer, "merchant_id": merchant}

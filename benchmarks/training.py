"""Benchmark of training: 1,000,000 labelled rows of ``features.training_set`` → snapshot (PostgreSQL →
Parquet, DVC hash) → fit and evaluate → MLflow logging and registration (plots, permutation importance,
model with signature), exactly what the ``fraud_model`` asset runs. Target: ≤ 20 s on the 2-core machine.

Usage: ``.venv/bin/python benchmarks/training.py [--rows 1000000]``. With ``RTML_DATABASE_URL`` set it
builds (once, then reuses) the database ``rtml_bench_training`` on that server and runs an MLflow server
over it; unset, it starts the embedded stack in a temporary data directory. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _machine import json_line, load_average
from _training_data import DATABASE, ensure_training_rows
from rtml.config import ServicesSettings, Settings, StackSettings, TrainingSettings, database_url_for
from rtml.stack.local import LocalStack
from rtml.stack.processes import free_port
from rtml.training.tracking import train_and_register


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    load_start = load_average()

    with tempfile.TemporaryDirectory(prefix="rtml-bench-training-") as data_dir:
        server = os.environ.get("RTML_DATABASE_URL")
        settings = Settings(
            services=ServicesSettings(
                data_dir=Path(data_dir),
                database_url=database_url_for(server, DATABASE) if server else None,
                redis_url=os.environ.get("RTML_REDIS_URL"),
                dagster_database="rtml_bench_dagster",
                mlflow_database="rtml_bench_mlflow",
            ),
            training=TrainingSettings(mlflow_tracking_uri=None),
            stack=StackSettings(mlflow_port=free_port()),
        )
        stack = LocalStack(settings)
        info = stack.up()
        try:
            # the server's maintenance database: ensure_training_rows (re)creates DATABASE from there
            server_url = database_url_for(info.database_url, "postgres")
            url = ensure_training_rows(server_url, rows=args.rows, settings=Settings())
            began = time.perf_counter()
            result = train_and_register(
                url, info.mlflow_tracking_uri, settings, model_name="fraud-detector-bench"
            )
            seconds = time.perf_counter() - began
        finally:
            stack.down()

    rows = int(result.lineage.snapshot_rows)
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for step, value in result.seconds.items():
        print(f"{step:<10} {value:7.2f} s")
    print(
        f"{'total':<10} {seconds:7.2f} s  ({rows:,} rows, test ROC AUC {result.metrics['test_roc_auc']:.4f})"
    )
    print(f"peak RSS   {peak_rss_mib:7.0f} MiB")
    print(
        json_line(
            {
                "rows": rows,
                "seconds": round(seconds, 2),
                "snapshot_seconds": round(result.seconds["snapshot"], 2),
                "fit_seconds": round(result.seconds["fit"], 2),
                "log_seconds": round(result.seconds["log"], 2),
                "rows_per_s": round(rows / seconds),
                "peak_rss_mib": round(peak_rss_mib),
                "test_roc_auc": round(result.metrics["test_roc_auc"], 4),
            },
            load_start,
        )
    )


if __name__ == "__main__":
    main()

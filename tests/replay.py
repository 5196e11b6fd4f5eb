"""Scores as the scoring service would have logged them, written straight to the prediction log: for tests
and benchmarks whose worlds need a served history (drift of the scores, a retraining's reference) without
running the service for every past transaction."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pandas as pd
import psycopg

from rtml.features.feature_registry import load_registry
from rtml.monitoring.predictions import ensure_table, prediction_row, write_rows
from rtml.training import model_registry
from rtml.training.dataset import feature_spec
from rtml.training.loading import load_pipeline
from rtml.training.train import score


def log_predictions(
    url: str, tracking_uri: str, model_name: str, version: str, start: datetime, end: datetime
) -> int:
    """What the scoring service would have logged: every transaction of the window scored by the version
    on its point-in-time features (the joins of ``training_set``), written to ``monitoring.predictions``."""
    features = load_registry()
    columns = [
        *(f"cf.{name}" for name in features.view("customer_features").feature_names),
        *(f"mf.{name}" for name in features.view("merchant_features").feature_names),
    ]
    with psycopg.connect(url) as conn:
        cursor = conn.execute(
            "select t.transaction_id, t.customer_id, t.merchant_id, t.event_ts, t.amount::float8 as amount,"
            f" t.currency, t.merchant_category, t.channel, t.country, {', '.join(columns)}"
            " from staging.stg_transactions t join features.customer_features cf using (transaction_id)"
            " left join features.merchant_features mf on mf.merchant_id = t.merchant_id"
            "  and mf.feature_date = (t.event_ts at time zone 'UTC')::date"
            " where t.event_ts >= %s and t.event_ts < %s",
            (start, end),
        )
        frame = pd.DataFrame(cursor.fetchall(), columns=[column.name for column in cursor.description or []])
    spec = feature_spec()
    X = frame[spec.columns].copy()
    for name in spec.numeric:  # the model's dtypes: float64 with NaN
        X[name] = pd.to_numeric(X[name].astype(object), errors="coerce").astype("float64")
    client = model_registry.client_for(tracking_uri)
    tags = client.get_model_version(model_name, version).tags
    review, decline = float(tags["threshold_review"]), float(tags["threshold_decline"])
    scores = score(load_pipeline(f"models:/{model_name}/{version}"), X)
    # the requests as the service receives them (its field names), scored
    requests = frame.assign(amount=frame["amount"].astype(float)).rename(columns={"event_ts": "timestamp"})
    rows = [
        prediction_row(
            request,
            request_id=uuid.uuid4().hex,
            model_version=version,
            probability=float(p),
            decision="decline" if p >= decline else "review" if p >= review else "approve",
            scored_at=request["timestamp"] + timedelta(milliseconds=20),
            latency_ms=2.0,
        )
        for request, p in zip(requests.to_dict("records"), scores, strict=True)
    ]
    ensure_table(url)
    with psycopg.connect(url) as conn:
        write_rows(conn, rows)
    return len(rows)

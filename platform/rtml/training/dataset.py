"""The training set (dbt model ``features.training_set``) for a time window, split by time.

Feature columns come from the feature registry (the dbt manifest) plus the transaction's own request
fields, so training and serving use the same names. Numeric and boolean features become float64 (NaN for
a missing merchant row or an undefined statistic); categorical request fields stay strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
import psycopg
from psycopg import sql

from rtml.features.registry import FeatureRegistry, load_registry

FEATURE_VIEWS = ("customer_features", "merchant_features")
REQUEST_NUMERIC = ("amount",)
"""Fields of the scored transaction itself (the request), not stored features."""
REQUEST_CATEGORICAL = ("merchant_category", "channel", "country", "currency")
TARGET = "is_fraud"
TIME = "event_ts"


@dataclass(frozen=True)
class FeatureSpec:
    numeric: list[str]
    categorical: list[str]

    @property
    def columns(self) -> list[str]:
        return [*self.categorical, *self.numeric]


def feature_spec(registry: FeatureRegistry | None = None) -> FeatureSpec:
    registry = registry or load_registry()
    numeric = list(REQUEST_NUMERIC)
    categorical = list(REQUEST_CATEGORICAL)
    for view in FEATURE_VIEWS:
        for feature in registry.view(view).features:
            (categorical if feature.dtype == "string" else numeric).append(feature.name)
    return FeatureSpec(numeric=numeric, categorical=categorical)


@dataclass(frozen=True)
class Split:
    X: pd.DataFrame
    y: np.ndarray
    event_ts: pd.Series

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class TrainingData:
    train: Split
    validation: Split
    test: Split
    spec: FeatureSpec
    boundaries: tuple[datetime, datetime]
    """Validation starts at the first, test at the second (event time)."""


def load_training_set(
    database_url: str,
    start: datetime | None = None,
    end: datetime | None = None,
    spec: FeatureSpec | None = None,
) -> tuple[pd.DataFrame, FeatureSpec]:
    """Labelled rows of ``features.training_set`` with ``start <= event_ts < end``, oldest first."""
    spec = spec or feature_spec()
    columns = [TIME, *spec.columns, TARGET]
    where = [sql.SQL("is_labelled")]
    params: list[object] = []
    if start is not None:
        where.append(sql.SQL("event_ts >= %s"))
        params.append(start)
    if end is not None:
        where.append(sql.SQL("event_ts < %s"))
        params.append(end)
    query = sql.SQL("select {} from features.training_set where {} order by event_ts, transaction_id").format(
        sql.SQL(", ").join(map(sql.Identifier, columns)), sql.SQL(" and ").join(where)
    )
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute(query, params)
        frame = pd.DataFrame(cur.fetchall(), columns=columns)
    return prepare(frame, spec), spec


def prepare(frame: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """Model dtypes: numeric/bool → float64 (None → NaN), categorical → str."""
    out = frame.copy()
    for name in spec.numeric:
        out[name] = pd.to_numeric(out[name].astype(object).where(out[name].notna(), np.nan)).astype("float64")
    for name in spec.categorical:
        out[name] = out[name].astype(str)
    if TARGET in out:
        out[TARGET] = out[TARGET].astype(bool)
    if TIME in out:
        out[TIME] = pd.to_datetime(out[TIME], utc=True)
    return out


def split_by_time(
    frame: pd.DataFrame, spec: FeatureSpec, fractions: tuple[float, float] = (0.6, 0.2)
) -> TrainingData:
    """Train on the oldest rows, validate on the next, test on the newest: no row of a later split is
    older than any row of an earlier one (rows sharing a timestamp stay together)."""
    if frame.empty:
        raise ValueError("the training set is empty")
    frame = frame.sort_values(TIME, kind="stable", ignore_index=True)
    ts = frame[TIME]
    cut_validation = ts.iloc[int(len(frame) * fractions[0])]
    cut_test = ts.iloc[int(len(frame) * (fractions[0] + fractions[1]))]

    def part(mask: pd.Series) -> Split:
        rows = frame[mask]
        return Split(
            X=rows[spec.columns].reset_index(drop=True),
            y=rows[TARGET].to_numpy(dtype=int),
            event_ts=rows[TIME].reset_index(drop=True),
        )

    data = TrainingData(
        train=part(ts < cut_validation),
        validation=part((ts >= cut_validation) & (ts < cut_test)),
        test=part(ts >= cut_test),
        spec=spec,
        boundaries=(cut_validation.to_pydatetime(), cut_test.to_pydatetime()),
    )
    for name in ("train", "validation", "test"):
        y = getattr(data, name).y
        if len(y) == 0 or y.min() == y.max():
            raise ValueError(f"the {name} split needs both classes (rows: {len(y)}, fraud: {int(y.sum())})")
    return data

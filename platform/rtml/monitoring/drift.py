"""Drift reports: Evidently 0.7 ``Report([DataDriftPreset(...)])`` between a reference window and the
current window, of the model's features and of its scores.

* **Reference window**: by default the training data window of the version holding ``production``
  (its lineage tags ``data_window_start`` / ``data_window_end``), or an explicit window.
* **Current window**: by default the newest ``drift_current_hours`` hours of data, ending at the newest
  feature row (not the wall clock, so replayed or simulated history behaves like live data).
* **Rows**: point-in-time features of *every* transaction of a window, labelled or not, with the same
  columns as :func:`rtml.training.dataset.feature_spec`. They are read straight from the incremental
  feature models (``stg_transactions`` ⋈ ``customer_features`` ⋈ ``merchant_features``, the joins of
  ``training_set``), not from ``training_set``: that table holds only labelled rows up to the newest
  label unless rebuilt with ``training_include_unlabelled``, and the current window is almost entirely
  unlabelled (labels arrive days later), so it would be empty or biased towards fast chargebacks.
  Both windows go through the same query, so a difference between them is drift, not a different
  population. At most ``drift_max_rows`` rows per window, a seeded sample (hash of the id).
* **Second report** (``kind="predictions"``): served scores (``monitoring.predictions.probability`` of
  the production version in the current window) against the same version's scores on the reference
  rows; skipped when there is no production model or no served prediction in the window.

Each report is saved as HTML under ``<data dir>/reports/drift/``, recorded as a row of
``monitoring.drift_reports`` and described by :func:`samples` (``rtml_drift_*`` gauges).
Evidently is imported on first use: importing it takes about 7 s and the Dagster code location imports
this module.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.csv as pa_csv
from psycopg import sql
from psycopg.rows import dict_row

from rtml.config import Settings
from rtml.features.feature_registry import FeatureRegistry, load_registry
from rtml.monitoring.metrics import Sample
from rtml.monitoring.predictions import TABLE as PREDICTIONS_TABLE
from rtml.training.dataset import (
    FEATURE_VIEWS,
    REQUEST_CATEGORICAL,
    REQUEST_NUMERIC,
    FeatureSpec,
    as_utc,
    feature_spec,
)

TABLE = "monitoring.drift_reports"
FEATURES, PREDICTIONS = "features", "predictions"
TAIL = "features_tail"
"""The name (in ``report_ids`` and the ``report`` label) of the tail's features report; its row's kind is
``features``."""
SCORE = "probability"
SEED = 0
TRANSACTIONS = "staging.stg_transactions"

DDL = """
create schema if not exists monitoring;
create table if not exists monitoring.drift_reports (
    report_id        text primary key,
    created_at       timestamptz not null,
    kind             text not null check (kind in ('features', 'predictions')),
    model_version    text,
    reference_start  timestamptz not null,
    reference_end    timestamptz not null,
    current_start    timestamptz not null,
    current_end      timestamptz not null,
    reference_rows   integer not null,
    current_rows     integer not null,
    drifted_share    double precision not null,
    threshold        double precision not null,
    detected         boolean not null,
    drifted_columns  text[] not null,
    columns          jsonb not null,
    html_path        text not null,
    seconds          double precision not null
);
create index if not exists drift_reports_kind_created_idx on monitoring.drift_reports (kind, created_at desc);
"""


class DriftError(ValueError):
    """A drift report that cannot be made; the message says why and what to do."""


@dataclass(frozen=True)
class Window:
    """``start <= event_ts < end`` (UTC; naive datetimes are taken as UTC)."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", as_utc(self.start))
        object.__setattr__(self, "end", as_utc(self.end))
        if self.start >= self.end:
            raise DriftError(f"empty window: start {self.start.isoformat()} is not before end {self.end}")

    def __str__(self) -> str:
        return f"{self.start.isoformat()} / {self.end.isoformat()}"

    def hours_of_day(self) -> tuple[int, ...] | None:
        """The UTC hours of the day the window touches; None when it spans a whole day or more."""
        if self.end - self.start >= timedelta(days=1):
            return None
        hour = self.start.replace(minute=0, second=0, microsecond=0)
        hours = []
        while hour < self.end:
            hours.append(hour.hour)
            hour += timedelta(hours=1)
        return tuple(sorted(set(hours)))

    def hour_slots(self) -> tuple[int, ...]:
        """The hours of the week the window touches: the UTC hour of the day + 24 x the day of the week
        (Monday 0): traffic differs by weekday, not only between weekdays and weekends (the simulator's
        Friday has 12 % more payments than a Monday, its Saturday 30 % more than its Sunday)."""
        hour = self.start.replace(minute=0, second=0, microsecond=0)
        slots = set()
        while hour < self.end:
            slots.add(hour.hour + 24 * hour.weekday())
            hour += timedelta(hours=1)
        return tuple(sorted(slots))


_DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_KINDS = {"weekday": range(5), "weekend": range(5, 7)}


def _kind(slot: int) -> str:
    return "weekend" if slot // 24 >= 5 else "weekday"


@dataclass(frozen=True)
class ReferenceHours:
    """Which rows of the reference window the hourly check keeps: those of the current window's hours
    of the day on the same day of the week; on the same kind of day (weekday or weekend) when the
    reference window has no such day; on any day when it has no such kind of day either."""

    hours_of_day: tuple[int, ...]
    slots: tuple[int, ...] | None
    """Hours of the week (:meth:`Window.hour_slots`); None: the hours on any day."""
    days: str
    """``Friday``, ``Sunday and Monday``, ``weekday (fallback: ...)``, or ``any (fallback: ...)``."""


def reference_hours(reference: Window, current: Window) -> ReferenceHours | None:
    """The hourly check's reference rows for ``current``; None when it spans a day or more (all rows)."""
    hours = current.hours_of_day()
    if hours is None:
        return None
    wanted, present = current.hour_slots(), set(reference.hour_slots())
    if set(wanted) <= present:
        days = " and ".join(dict.fromkeys(_DAY_NAMES[slot // 24] for slot in wanted))
        return ReferenceHours(hours, wanted, days)
    missing = " or ".join(dict.fromkeys(_DAY_NAMES[slot // 24] for slot in wanted if slot not in present))
    kinds = sorted({_kind(slot) for slot in wanted}, reverse=True)
    alike = {slot: {slot % 24 + 24 * day for day in _KINDS[_kind(slot)]} & present for slot in wanted}
    if all(alike.values()):
        same_kind = set().union(*alike.values())
        fallback = f"(fallback: the reference window has no {missing} at these hours)"
        return ReferenceHours(hours, tuple(sorted(same_kind)), f"{' and '.join(kinds)} {fallback}")
    return ReferenceHours(
        hours, None, f"any (fallback: the reference window has no {' or '.join(kinds)} day at these hours)"
    )


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    method: str
    """Evidently's test, chosen per column type and size (e.g. ``Wasserstein distance (normed)``)."""
    threshold: float
    score: float
    """p-value (drift when below the threshold) or distance (drift when at or above it)."""
    drifted: bool

    @property
    def is_pvalue(self) -> bool:
        """Evidently names its own choice ``K-S p_value``, ``Z-test p_value``...; a test asked for by
        its id (the hourly check's KS) by that id."""
        return "p_value" in self.method or self.method == HOURLY_TEST


@dataclass(frozen=True)
class DriftReport:
    report_id: str
    kind: str
    created_at: datetime
    reference: Window
    current: Window
    reference_rows: int
    current_rows: int
    columns: dict[str, ColumnDrift]
    skipped: list[str]
    """Columns without a single value in one of the windows: not compared (Evidently refuses them)."""
    drifted_share: float
    threshold: float
    detected: bool
    html_path: Path
    seconds: float
    model_version: str | None = None

    @property
    def drifted_columns(self) -> list[str]:
        return [name for name, column in self.columns.items() if column.drifted]

    @property
    def reasons(self) -> list[str]:
        """Why the report detects drift (empty: it does not)."""
        return reasons(self.drifted_share, self.threshold, self.columns)


def reasons(drifted_share: float, threshold: float, columns: dict[str, ColumnDrift]) -> list[str]:
    """The drift rule: the share of drifted columns above ``threshold`` (the hourly check's threshold is
    0: any column, each by a strict p-value, :func:`compare`); empty when it does not fire."""
    if drifted_share <= threshold:
        return []
    drifted = ", ".join(_figure(column) for column in columns.values() if column.drifted)
    return [f"{drifted_share:.1%} of {len(columns)} columns drifted > {threshold:.0%}: {drifted}"]


def _figure(column: ColumnDrift) -> str:
    """A drifted column with its score, e.g. ``amount (p 3.1e-12 < 1e-06)``; distances by name only."""
    if column.is_pvalue and column.threshold < 0.001:
        return f"{column.column} (p {column.score:.2g} < {column.threshold:g})"
    return column.column


def verdict(reports: dict[str, DriftReport]) -> tuple[bool, str]:
    """The check's verdict over one run's reports (``{name: report}``, the asset's ``report_ids``):
    drift when any report detects it, and a description naming, per report and window, the rules
    that fired (or the figures that stayed within them)."""
    parts = []
    for name, report in reports.items():
        why = report.reasons
        window = f"{report.current.start:%m-%d %H:%M} to {report.current.end:%m-%d %H:%M}"
        if why:
            parts.append(f"{name} ({window}, {report.current_rows} rows): {'; '.join(why)}")
        else:
            pvalues = [c for c in report.columns.values() if c.is_pvalue]
            top = min(pvalues, key=lambda c: c.score, default=None)
            highest = f", lowest p {top.column} {top.score:.2g}" if top and not report.threshold else ""
            parts.append(
                f"{name} ({window}, {report.current_rows} rows): {report.drifted_share:.1%} of "
                f"{len(report.columns)} columns drifted (threshold {report.threshold:.0%}){highest}"
            )
    detected = any(report.reasons for report in reports.values())
    return detected, ("drift detected: " if detected else "within threshold: ") + " | ".join(parts)


@dataclass(frozen=True)
class DriftResult:
    features: DriftReport
    predictions: DriftReport | None
    model_version: str | None
    """The production version whose training window (and scores) were the reference, if any."""
    seconds: float
    tail: DriftReport | None = None
    """The hourly check's features report of the newest ``tail_minutes`` of the current window."""
    tail_note: str | None = None
    """Why there is no tail report although one was asked for (too few rows)."""
    reference_hours: ReferenceHours | None = None
    """The reference rows kept (the hourly check); None: the whole reference window."""

    @property
    def named_reports(self) -> dict[str, DriftReport]:
        """``{name: report}``: ``features``, ``features_tail``, ``predictions`` (those made)."""
        named = {FEATURES: self.features, TAIL: self.tail, PREDICTIONS: self.predictions}
        return {name: report for name, report in named.items() if report is not None}

    @property
    def reports(self) -> list[DriftReport]:
        return list(self.named_reports.values())

    @property
    def detected(self) -> bool:
        return any(report.detected for report in self.reports)


@dataclass(frozen=True)
class Comparison:
    """What Evidently found, before the report is saved and recorded."""

    columns: dict[str, ColumnDrift]
    skipped: list[str]
    drifted_share: float
    snapshot: Any = field(repr=False)
    """The Evidently snapshot (``save_html``, ``dict``)."""


# --- windows -------------------------------------------------------------------------------------------
def window_from_tags(tags: dict[str, str]) -> Window:
    """The training data window recorded on a model version (``rtml.training.lineage``)."""
    try:
        return Window(
            datetime.fromisoformat(tags["data_window_start"]), datetime.fromisoformat(tags["data_window_end"])
        )
    except KeyError as missing:
        raise DriftError(
            f"the model version has no lineage tag {missing}: give the reference window explicitly"
        ) from None


def production_version(tracking_uri: str, model_name: str) -> tuple[str, dict[str, str]] | None:
    """(version, tags) of the version holding ``production``; None without one."""
    from rtml.training import model_registry

    version = model_registry.version_with_alias(
        model_registry.client_for(tracking_uri), model_registry.PRODUCTION, model_name
    )
    return None if version is None else (str(version.version), dict(version.tags))


def current_window(database_url: str, hours: int) -> Window:
    """The newest ``hours`` hours of feature rows (ending just after the newest one)."""
    if hours <= 0:
        raise DriftError(f"drift_current_hours must be positive, not {hours}")
    with psycopg.connect(database_url) as conn:
        relation = load_registry().view("customer_features").relation
        newest = conn.execute(f"select max(event_ts) from {relation}").fetchone()
    if newest is None or newest[0] is None:
        raise DriftError("there are no feature rows yet (run dbt: customer_features)")
    end = newest[0] + timedelta(microseconds=1)
    return Window(end - timedelta(hours=hours), end)


# --- rows ----------------------------------------------------------------------------------------------
ALIASES = {"customer_features": "cf", "merchant_features": "mf"}
"""The feature views the query joins, as ``training_set`` does (the transaction itself is ``t``)."""


def feature_query(
    window: Window,
    max_rows: int,
    seed: int = SEED,
    registry: FeatureRegistry | None = None,
    hours_of_day: tuple[int, ...] | None = None,
    hour_slots: tuple[int, ...] | None = None,
    warm_from: dict[str, datetime] | None = None,
) -> tuple[sql.Composed, FeatureSpec]:
    """The COPY of a window's feature rows (at most ``max_rows``, seeded sample), with the columns of
    ``feature_spec()`` in its order, and that spec; only rows of the given UTC ``hours_of_day`` if any,
    or of the given ``hour_slots`` (:meth:`Window.hour_slots`: hours of the week) if any. A column of
    ``warm_from`` is NULL on the rows before its time (:func:`warm_from`)."""
    registry = registry or load_registry()
    if max_rows <= 0:
        raise DriftError(f"drift_max_rows must be positive, not {max_rows}")
    spec = feature_spec(registry)
    origin = {name: ("t", "float64") for name in REQUEST_NUMERIC}
    origin |= {name: ("t", "string") for name in REQUEST_CATEGORICAL}
    for view in FEATURE_VIEWS:
        if view not in ALIASES:
            raise DriftError(f"the drift query does not join the feature view {view!r} yet")
        origin |= {f.name: (ALIASES[view], f.dtype) for f in registry.view(view).features}
    selected: list[sql.Composable] = []
    for name in spec.columns:
        alias, dtype = origin[name]
        ident, label = sql.Identifier(alias, name), sql.Identifier(name)
        if name in spec.categorical:
            selected.append(sql.SQL("{} as {}").format(ident, label))
        else:  # numbers and booleans as float64, the model's dtype (NaN when missing)
            cast = "{}::int::double precision" if dtype == "bool" else "{}::double precision"
            value: sql.Composable = sql.SQL(cast).format(ident)
            if warm_from and name in warm_from:
                value = sql.SQL("case when t.event_ts >= {} then {} end").format(
                    sql.Literal(warm_from[name]), value
                )
            selected.append(sql.SQL("{} as {}").format(value, label))
    query = sql.SQL(
        """copy (
        with picked as (
            select transaction_id from {cf}
            where event_ts >= {start} and event_ts < {end}{hours}
            -- a seeded sample that does not depend on the physical row order
            order by hashtextextended(transaction_id, {seed}) limit {limit}
        )
        select {columns}
        from picked as p
        join {cf} as cf on cf.transaction_id = p.transaction_id
        join {transactions} as t on t.transaction_id = p.transaction_id
        left join {mf} as mf
            on mf.merchant_id = t.merchant_id and mf.feature_date = (t.event_ts at time zone 'UTC')::date
    ) to stdout (format csv, header true)"""
    ).format(
        cf=sql.SQL(registry.view("customer_features").relation),
        mf=sql.SQL(registry.view("merchant_features").relation),
        transactions=sql.SQL(TRANSACTIONS),
        start=sql.Literal(window.start),
        end=sql.Literal(window.end),
        hours=_hours_filter(hours_of_day, hour_slots),
        seed=sql.Literal(seed),
        limit=sql.Literal(max_rows),
        columns=sql.SQL(", ").join(selected),
    )
    return query, spec


def _hours_filter(hours_of_day: tuple[int, ...] | None, hour_slots: tuple[int, ...] | None) -> sql.Composable:
    hour = sql.SQL("extract(hour from event_ts at time zone 'UTC')::int")
    if hour_slots is not None:
        day = sql.SQL("(extract(isodow from event_ts at time zone 'UTC')::int - 1)")  # Monday 0
        slot = sql.SQL("{} + 24 * {}").format(hour, day)
        return sql.SQL(" and {} = any({})").format(slot, sql.Literal(list(hour_slots)))
    if hours_of_day is not None:
        return sql.SQL(" and {} = any({})").format(hour, sql.Literal(list(hours_of_day)))
    return sql.SQL("")


_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1)}


def warm_from(registry: FeatureRegistry, history_start: datetime | None) -> dict[str, datetime]:
    """Per windowed feature, the first event time whose window lies wholly after ``history_start`` (the
    oldest transaction): before it the feature counts a part of its window (a 7-day count on the second
    day of history is about a seventh of a full one), so it differs from any later row without any
    drift. The demo's seven days of history are a production model's whole training window: without
    this, 75-80 % of the columns "drifted" in every hour after it (docs/benchmarks.md). A feature of an
    ``unbounded`` window (the previous transaction, known merchants) is taken as warm after the longest
    bounded one."""
    if history_start is None:
        return {}
    windows = {f.name: f.window for view in FEATURE_VIEWS for f in registry.view(view).features if f.window}
    lengths = {
        name: int(window[:-1]) * _UNITS[window[-1]]
        for name, window in windows.items()
        if window[-1:] in _UNITS and window[:-1].isdigit()
    }
    longest = max(lengths.values(), default=timedelta(0))
    return {
        name: history_start + lengths.get(name, longest)
        for name, window in windows.items()
        if name in lengths or window == "unbounded"
    }


def history_start(database_url: str) -> datetime | None:
    """The oldest transaction's event time (``stg_transactions``, indexed); None without any."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(sql.SQL("select min(event_ts) from {}").format(sql.SQL(TRANSACTIONS))).fetchone()
    return None if row is None else row[0]


def load_features(
    database_url: str,
    window: Window,
    max_rows: int,
    seed: int = SEED,
    registry: FeatureRegistry | None = None,
    hours_of_day: tuple[int, ...] | None = None,
    hour_slots: tuple[int, ...] | None = None,
    warm: dict[str, datetime] | None = None,
) -> tuple[pd.DataFrame, FeatureSpec]:
    """A window's feature rows (model dtypes: float64 with NaN, strings with None) and their spec."""
    query, spec = feature_query(window, max_rows, seed, registry, hours_of_day, hour_slots, warm)
    types = {name: pa.float64() for name in spec.numeric} | {name: pa.string() for name in spec.categorical}
    return _copy_frame(database_url, query, types), spec


def load_served_scores(
    database_url: str, window: Window, model_version: str, max_rows: int, seed: int = SEED
) -> pd.DataFrame:
    """``probability`` of the version's predictions with event_ts in the window (seeded sample); empty
    when the prediction log does not exist yet."""
    with psycopg.connect(database_url) as conn:
        exists = conn.execute("select to_regclass(%s)", (PREDICTIONS_TABLE,)).fetchone()
    if exists is None or exists[0] is None:
        return pd.DataFrame({SCORE: pd.Series(dtype="float64")})
    query = sql.SQL(
        "copy (select probability from {table}"
        " where event_ts >= {start} and event_ts < {end} and model_version = {version}"
        " order by hashtextextended(request_id, {seed}) limit {limit}) to stdout (format csv, header true)"
    ).format(
        table=sql.SQL(PREDICTIONS_TABLE),
        start=sql.Literal(window.start),
        end=sql.Literal(window.end),
        version=sql.Literal(model_version),
        seed=sql.Literal(seed),
        limit=sql.Literal(max_rows),
    )
    return _copy_frame(database_url, query, {SCORE: pa.float64()})


def _copy_frame(database_url: str, query: sql.Composed, types: dict[str, pa.DataType]) -> pd.DataFrame:
    """COPY ... (FORMAT csv) parsed by pyarrow: several times faster than fetching Python tuples."""
    buffer = io.BytesIO()
    with psycopg.connect(database_url) as conn:
        conn.execute("set extra_float_digits = 3")  # shortest exact text of every float
        with conn.cursor() as cur, cur.copy(query) as copy:
            for data in copy:
                buffer.write(data)
    table = pa_csv.read_csv(
        pa.py_buffer(buffer.getvalue()),
        convert_options=pa_csv.ConvertOptions(
            column_types=types,
            null_values=[""],  # COPY writes NULL unquoted and an empty string as ""
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )
    return table.to_pandas()


# --- comparison ----------------------------------------------------------------------------------------
HOURLY_TEST = "ks"
"""The hourly check's per-column test (Evidently's id): two-sample Kolmogorov-Smirnov, a p-value."""


def compare(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    spec: FeatureSpec,
    threshold: float,
    pvalue: float | None = None,
) -> Comparison:
    """Evidently's DataDriftPreset over the spec's columns; per column Evidently's own verdict (the
    preset's per-column tests, chosen by type and sample size), the share over the columns compared.

    ``pvalue`` (the hourly check): the numeric columns only, each by the two-sample Kolmogorov-Smirnov
    test, drifted when its p-value is below ``pvalue``, whatever the sample size. A p-value accounts for
    the few rows of a night hour or a 15-minute tail, where a distance does not (calibrated on a week of
    undrifted hours: docs/benchmarks.md, "Drift calibration"). The categorical columns are left to the
    daily report: chi-square on ``country`` fell below 1e-4 in 17 of 48 undrifted hours (an hour's
    country mix follows who pays then)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    if reference.empty or current.empty:
        raise DriftError(f"nothing to compare: {len(reference)} reference rows, {len(current)} current rows")
    skipped = [name for name in spec.columns if reference[name].isna().all() or current[name].isna().all()]
    numeric = [name for name in spec.numeric if name not in skipped]
    categorical = [name for name in spec.categorical if name not in skipped and pvalue is None]
    if not numeric and not categorical:
        raise DriftError(f"every column is empty in one of the windows: {', '.join(skipped)}")
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    names = [*categorical, *numeric]
    methods: dict[str, Any] = {} if pvalue is None else {"num_method": HOURLY_TEST, "num_threshold": pvalue}
    preset = DataDriftPreset(columns=names, drift_share=threshold, **methods)
    report = Report([preset], include_tests=True)
    snapshot = report.run(
        Dataset.from_pandas(current[names], data_definition=definition),
        Dataset.from_pandas(reference[names], data_definition=definition),
    )
    columns = _columns(snapshot.dict(), names)
    share = sum(column.drifted for column in columns.values()) / len(columns)
    return Comparison(columns=columns, skipped=skipped, drifted_share=share, snapshot=snapshot)


def _columns(result: dict[str, Any], names: Sequence[str]) -> dict[str, ColumnDrift]:
    """Per column: the ValueDrift metric (score, method, threshold) and its test (FAIL = drifted)."""
    metrics = {
        metric["id"]: metric
        for metric in result["metrics"]
        if metric["config"].get("type", "").endswith(":ValueDrift")
    }
    failed = {
        test["metric_config"]["metric_id"]: str(test["status"]).endswith("FAIL")
        for test in result["tests"]
        if test["metric_config"]["metric_id"] in metrics
    }
    found: dict[str, ColumnDrift] = {}
    for metric_id, metric in metrics.items():
        config = metric["config"]
        found[config["column"]] = ColumnDrift(
            column=config["column"],
            method=str(config["method"]),
            threshold=float(config["threshold"]),
            score=float(metric["value"]),
            drifted=failed[metric_id],
        )
    missing = set(names) - set(found)
    if missing:
        raise DriftError(f"Evidently reported no drift for column(s) {sorted(missing)}")
    return {name: found[name] for name in names}


# --- the whole run -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fetched:
    """The rows of one run's windows."""

    reference: pd.DataFrame
    current: pd.DataFrame
    tails: list[pd.DataFrame]
    spec: FeatureSpec
    reference_hours: ReferenceHours | None


def tail_window(current: Window, minutes: int) -> Window:
    """The newest ``minutes`` of the current window: after a switch at minute MM of an hour, the hour's
    check sees 60 - MM drifted minutes; in a tail of T minutes they are a share min(1, (60 - MM) / T)
    of the rows, not (60 - MM) / 60, and a distance shrinks with that share."""
    return Window(max(current.start, current.end - timedelta(minutes=minutes)), current.end)


def fetch_windows(
    database_url: str,
    reference: Window,
    current: Window,
    max_rows: int,
    *,
    seed: int = SEED,
    same_hours_of_day: bool = False,
    tails: Sequence[Window] = (),
) -> Fetched:
    """The reference's rows (with ``same_hours_of_day`` and a current window shorter than a day: only
    those of the current window's hours of the day, on the same day of the week when the reference has
    it, :func:`reference_hours`), the current window's and each tail window's, on parallel connections
    (the server's work and pyarrow's parsing release the GIL); windowed features NULL where their window
    is not filled yet (:func:`warm_from`)."""
    registry = load_registry()
    hours = reference_hours(reference, current) if same_hours_of_day else None
    only = (hours.hours_of_day, hours.slots) if hours else (None, None)
    windows = [(reference, only), (current, (None, None)), *((tail, (None, None)) for tail in tails)]
    warm = warm_from(registry, history_start(database_url))
    with ThreadPoolExecutor(max_workers=2) as pool:
        fetches = [
            pool.submit(load_features, database_url, window, max_rows, seed, registry, of_day, slots, warm)
            for window, (of_day, slots) in windows
        ]
        frames = [fetch.result() for fetch in fetches]
    for name, window, (rows, _) in (("reference", reference, frames[0]), ("current", current, frames[1])):
        if rows.empty:
            raise DriftError(f"the {name} window {window} has no feature rows")
    spec = frames[0][1]
    return Fetched(frames[0][0], frames[1][0], [rows for rows, _ in frames[2:]], spec, hours)


def run_drift(
    database_url: str,
    settings: Settings,
    *,
    tracking_uri: str | None = None,
    model_name: str | None = None,
    reference: Window | None = None,
    current: Window | None = None,
    seed: int = SEED,
    max_rows: int | None = None,
    same_hours_of_day: bool = False,
    pvalue: float | None = None,
    tail_minutes: int = 0,
    tail_min_rows: int = 0,
) -> DriftResult:
    """Both reports, saved and recorded. Without ``reference`` the production version's training window
    is the reference (``tracking_uri`` needed); the predictions report needs a production version.
    At most ``max_rows`` (default ``drift_max_rows``) rows are sampled from each window. With
    ``same_hours_of_day`` and a current window shorter than a day, the reference keeps only the rows of
    the current window's hours of the day (UTC) on the same day of the week (:func:`reference_hours`): a
    few night hours are not "drifted" from a whole day only because fewer customers pay at night, nor a
    Friday evening from other evenings. A report detects drift when the share of drifted columns exceeds
    ``drift_threshold``.

    The hourly check's rule (``pvalue`` given): the features reports compare the numeric columns by the
    two-sample KS test and detect drift when any p-value is below ``pvalue`` (:func:`compare`); with
    ``tail_minutes``, a third report compares the newest ``tail_minutes`` of the current window (if it
    holds at least ``tail_min_rows`` rows) with the same reference under the same rule. The predictions
    report (served scores) keeps Evidently's own test."""
    began = time.perf_counter()
    max_rows = max_rows or settings.monitoring.drift_max_rows
    model_name = model_name or settings.training.model_name
    production = production_version(tracking_uri, model_name) if tracking_uri else None
    if reference is None:
        if tracking_uri is None:
            raise DriftError(
                "no reference window: give one, or the MLflow tracking URI of a production model"
            )
        if production is None:
            raise DriftError(
                f"{model_name} has no production version: promote one, or give the reference window"
            )
        reference = window_from_tags(production[1])
    current = current or current_window(database_url, settings.monitoring.drift_current_hours)
    tail = tail_window(current, tail_minutes) if tail_minutes > 0 else None
    if tail is not None and tail.start == current.start:
        tail = None  # the whole current window: nothing a tail adds
    rows = fetch_windows(
        database_url,
        reference,
        current,
        max_rows,
        seed=seed,
        same_hours_of_day=same_hours_of_day,
        tails=[tail] if tail else [],
    )
    ensure_table(database_url)
    version = production[0] if production else None
    context = _Context(database_url, settings, reference, current, version, datetime.now(UTC), pvalue)
    features = context.report(FEATURES, rows.reference, rows.current, rows.spec)
    tail_report, tail_note = None, None
    if tail is not None:
        [tail_rows] = rows.tails
        if len(tail_rows) >= max(tail_min_rows, 1):
            tail_report = dataclasses.replace(context, current=tail).report(
                FEATURES, rows.reference, tail_rows, rows.spec, TAIL
            )
        else:
            tail_note = f"the tail {tail} holds {len(tail_rows)} rows (< {tail_min_rows}): not compared"
    predictions = None
    if version is not None and tracking_uri is not None:
        served = load_served_scores(database_url, current, version, max_rows, seed)
        if not served.empty:
            expected = _model_scores(tracking_uri, model_name, version, rows.reference)
            predictions = dataclasses.replace(context, pvalue=None).report(
                PREDICTIONS,
                pd.DataFrame({SCORE: expected}),
                served,
                FeatureSpec(numeric=[SCORE], categorical=[]),
            )
    return DriftResult(
        features,
        predictions,
        version,
        time.perf_counter() - began,
        tail=tail_report,
        tail_note=tail_note,
        reference_hours=rows.reference_hours,
    )


@dataclass(frozen=True)
class _Context:
    """What the reports of one run share."""

    database_url: str
    settings: Settings
    reference: Window
    current: Window
    model_version: str | None
    created_at: datetime
    pvalue: float | None = None
    """The hourly check's rule (:func:`compare`); None: Evidently's own tests, ``drift_threshold``."""

    def report(
        self,
        kind: str,
        reference: pd.DataFrame,
        current: pd.DataFrame,
        spec: FeatureSpec,
        name: str | None = None,
    ) -> DriftReport:
        """Compare, save the HTML (named after ``name``, default the kind), record the row."""
        began = time.perf_counter()
        threshold = self.settings.monitoring.drift_threshold if self.pvalue is None else 0.0  # 0: any column
        comparison = compare(reference, current, spec, threshold, self.pvalue)
        folder = self.settings.services.home / "reports" / "drift"
        folder.mkdir(parents=True, exist_ok=True)
        html = folder / f"{self.created_at.strftime('%Y%m%dT%H%M%S.%fZ')}-{name or kind}.html"
        comparison.snapshot.save_html(str(html))
        fired = reasons(comparison.drifted_share, threshold, comparison.columns)
        report = DriftReport(
            report_id=uuid.uuid4().hex,
            kind=kind,
            created_at=self.created_at,
            reference=self.reference,
            current=self.current,
            reference_rows=len(reference),
            current_rows=len(current),
            columns=comparison.columns,
            skipped=comparison.skipped,
            drifted_share=comparison.drifted_share,
            threshold=threshold,
            detected=bool(fired),
            html_path=html,
            seconds=time.perf_counter() - began,
            model_version=self.model_version,
        )
        store(self.database_url, report)
        return report


def _model_scores(tracking_uri: str, model_name: str, version: str, rows: pd.DataFrame) -> np.ndarray:
    """The version's scores on the reference rows: what it would have served on its training window."""
    from rtml.training.loading import load_pipeline
    from rtml.training.model_registry import client_for
    from rtml.training.train import score

    client_for(tracking_uri)  # models:/ URIs resolve against the global tracking URI
    return score(load_pipeline(f"models:/{model_name}/{version}"), rows)


# --- the record ----------------------------------------------------------------------------------------
def ensure_table(database_url: str) -> None:
    """Create ``monitoring.drift_reports`` (idempotent; concurrent creators are serialised)."""
    with psycopg.connect(database_url, autocommit=True) as conn, conn.transaction():
        conn.execute("select pg_advisory_xact_lock(hashtext('rtml.monitoring.drift_reports'))")
        conn.execute(DDL)


def store(database_url: str, report: DriftReport) -> None:
    columns = {
        name: {"method": c.method, "threshold": c.threshold, "score": c.score, "drifted": c.drifted}
        for name, c in report.columns.items()
    }
    with psycopg.connect(database_url) as conn:
        conn.execute(
            f"insert into {TABLE} (report_id, created_at, kind, model_version, reference_start,"
            " reference_end, current_start, current_end, reference_rows, current_rows, drifted_share,"
            " threshold, detected, drifted_columns, columns, html_path, seconds)"
            " values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s)",
            (
                report.report_id,
                report.created_at,
                report.kind,
                report.model_version,
                report.reference.start,
                report.reference.end,
                report.current.start,
                report.current.end,
                report.reference_rows,
                report.current_rows,
                report.drifted_share,
                report.threshold,
                report.detected,
                report.drifted_columns,
                json.dumps({"columns": columns, "skipped": report.skipped}),
                str(report.html_path),
                report.seconds,
            ),
        )


def load_reports(database_url: str, report_ids: Iterable[str]) -> list[DriftReport]:
    """Recorded reports by id, in the order asked; unknown ids are an error."""
    ids = list(report_ids)
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        rows = conn.execute(f"select * from {TABLE} where report_id = any(%s)", (ids,)).fetchall()
    found = {row["report_id"]: row for row in rows}
    unknown = [report_id for report_id in ids if report_id not in found]
    if unknown:
        raise DriftError(f"no drift report(s) {unknown} in {TABLE}")
    return [_from_row(found[report_id]) for report_id in ids]


def _from_row(row: dict[str, Any]) -> DriftReport:
    payload = row["columns"]
    return DriftReport(
        report_id=row["report_id"],
        kind=row["kind"],
        created_at=row["created_at"],
        reference=Window(row["reference_start"], row["reference_end"]),
        current=Window(row["current_start"], row["current_end"]),
        reference_rows=row["reference_rows"],
        current_rows=row["current_rows"],
        columns={name: ColumnDrift(column=name, **values) for name, values in payload["columns"].items()},
        skipped=list(payload["skipped"]),
        drifted_share=row["drifted_share"],
        threshold=row["threshold"],
        detected=row["detected"],
        html_path=Path(row["html_path"]),
        seconds=row["seconds"],
        model_version=row["model_version"],
    )


def samples(result: DriftResult) -> list[Sample]:
    """The ``rtml_drift_*`` gauges of the run's reports (labels ``report`` = ``features``,
    ``features_tail`` (the hourly check's tail window) or ``predictions``, and ``feature``)."""
    out: list[Sample] = []
    for name, report in result.named_reports.items():
        labels = {"report": name}
        out.append(Sample("rtml_drift_share", report.drifted_share, labels))
        out.append(Sample("rtml_drift_detected", float(report.detected), labels))
        out += [
            Sample("rtml_drift_feature_score", column.score, {**labels, "feature": feature})
            for feature, column in report.columns.items()
        ]
    return out

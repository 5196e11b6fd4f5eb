"""The drift check's rows: the windows compared (:class:`Window`, the hourly check's reference hours, the
current window, a tail) and the point-in-time feature rows and served scores read for them."""

from __future__ import annotations

import io
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.csv as pa_csv
from psycopg import sql

from rtml.features.feature_registry import FeatureRegistry, load_registry
from rtml.monitoring.predictions import TABLE as PREDICTIONS_TABLE
from rtml.training.dataset import (
    FEATURE_VIEWS,
    REQUEST_CATEGORICAL,
    REQUEST_NUMERIC,
    FeatureSpec,
    as_utc,
    feature_spec,
)

SCORE = "probability"
SEED = 0
TRANSACTIONS = "staging.stg_transactions"


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


# --- one run's windows ----------------------------------------------------------------------------
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

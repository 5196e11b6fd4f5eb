"""The training set (dbt model ``features.training_set``) for a time window, split by time.

Feature columns come from the feature registry (the dbt manifest) plus the transaction's own request
fields, so training and serving use the same names. Numeric and boolean features become float64 (NaN for
a missing merchant row or an undefined statistic); categorical request fields stay strings.
"""

from __future__ import annotations

import io
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.csv as pa_csv
from psycopg import sql

from rtml.features.feature_registry import FeatureRegistry, load_registry

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
    """Labelled rows of ``features.training_set`` with ``start <= event_ts < end``, oldest first, with
    the model dtypes of :func:`prepare` (columns: event_ts, the spec's features, is_fraud)."""
    spec = spec or feature_spec()
    return to_frame(fetch_training_table(database_url, start, end, spec), spec), spec


# --- the fast path: COPY ... (FORMAT csv) → pyarrow --------------------------------------------------
TABLE = "features.training_set"
ID = "transaction_id"
CHUNK_ROWS = 1 << 16
"""Rows per Arrow chunk of a fetched table (the last may be shorter): CSV received from COPY is parsed in
blocks of this many rows (about 13 MB here) while the next block arrives, each into one chunk, so the
table's layout depends only on the rows, never on how the network delivered them (snapshot bytes follow
the chunk layout)."""


def arrow_schema(spec: FeatureSpec) -> pa.Schema:
    """The training rows' Arrow schema, fixed by the spec: transaction_id, event_ts (UTC), categorical
    features as strings, numeric (and boolean) features as float64, is_fraud."""
    return pa.schema(
        [
            pa.field(ID, pa.string()),
            pa.field(TIME, pa.timestamp("us", tz="UTC")),
            *(pa.field(name, pa.string()) for name in spec.categorical),
            *(pa.field(name, pa.float64()) for name in spec.numeric),
            pa.field(TARGET, pa.bool_()),
        ]
    )


def fetch_training_table(
    database_url: str,
    start: datetime | None = None,
    end: datetime | None = None,
    spec: FeatureSpec | None = None,
) -> pa.Table:
    """Labelled rows of ``features.training_set`` with ``start <= event_ts < end`` as an Arrow table with
    :func:`arrow_schema`, ordered by (event_ts, transaction_id).

    One ``COPY (select ...) TO STDOUT (FORMAT csv)``: PostgreSQL formats the rows, pyarrow's CSV parser
    converts them to the spec's types (about 2.2 s per million rows with 27 columns on the 2-core
    machine; fetching Python tuples and converting them took 10 s). PostgreSQL sends one CopyData
    message per row, so the stream is cut into blocks of :data:`CHUNK_ROWS` rows at message boundaries and
    each block is parsed into one chunk on a worker thread while the next one arrives. Naive
    ``start``/``end`` are taken as UTC.
    """
    spec = spec or feature_spec()
    schema = arrow_schema(spec)
    with psycopg.connect(database_url) as conn:
        # Text output the parser relies on, whatever the server's defaults: ISO timestamps, and floats
        # in their shortest exact form (any extra_float_digits > 0 on PostgreSQL 12+; 0 would round).
        conn.execute("set datestyle = 'ISO, YMD'")
        conn.execute("set extra_float_digits = 3")
        query = _copy_query(conn, spec, start, end)
        with ThreadPoolExecutor(max_workers=1) as parser, conn.cursor() as cur, cur.copy(query) as copy:
            parts: list[Future[pa.Table]] = []
            block, rows = io.BytesIO(), 0
            for data in copy:
                block.write(data)
                rows += 1
                if rows == CHUNK_ROWS:
                    parts.append(parser.submit(_parse_csv, block.getvalue(), schema))
                    block, rows = io.BytesIO(), 0
            if rows:
                parts.append(parser.submit(_parse_csv, block.getvalue(), schema))
            tables = [part.result() for part in parts]
    if not tables:
        return schema.empty_table()
    return pa.concat_tables(tables).cast(schema)


def _copy_query(
    conn: psycopg.Connection, spec: FeatureSpec, start: datetime | None, end: datetime | None
) -> sql.Composed:
    types = _column_types(conn)
    wanted = [ID, TIME, *spec.columns, TARGET]
    missing = [name for name in wanted if name not in types]
    if missing:
        raise ValueError(f"{TABLE} has no column(s) {', '.join(missing)} (is the dbt model up to date?)")

    def column(name: str) -> sql.Composable:
        ident = sql.Identifier("t", name)
        if name == TIME and types[name] == "timestamp with time zone":
            # naive UTC text, which pyarrow parses without offset rules; tagged UTC afterwards
            return sql.SQL("({} at time zone 'UTC')").format(ident)
        if name in spec.numeric and types[name] == "boolean":
            return sql.SQL("{}::int").format(ident)  # 1/0, parsed as float64 like every numeric
        return ident

    where: list[sql.Composable] = [sql.SQL("t.is_labelled")]
    if start is not None:
        where.append(sql.SQL("t.event_ts >= {}").format(sql.Literal(as_utc(start))))
    if end is not None:
        where.append(sql.SQL("t.event_ts < {}").format(sql.Literal(as_utc(end))))
    return sql.SQL(
        "copy (select {columns} from {table} as t where {where}"
        ' order by t.event_ts, t.transaction_id collate "C") to stdout (format csv)'
    ).format(
        columns=sql.SQL(", ").join(column(name) for name in wanted),
        table=sql.SQL(TABLE),
        where=sql.SQL(" and ").join(where),
    )


def _column_types(conn: psycopg.Connection) -> dict[str, str]:
    rows = conn.execute(
        "select attname, format_type(atttypid, atttypmod) from pg_attribute"
        " where attrelid = to_regclass(%s) and attnum > 0 and not attisdropped",
        (TABLE,),
    ).fetchall()
    if not rows:
        raise ValueError(f"{TABLE} does not exist in this database (run dbt: +training_set)")
    return {name: type_ for name, type_ in rows}


def _parse_csv(data: bytes, schema: pa.Schema) -> pa.Table:
    types = {field.name: field.type for field in schema}
    types[TIME] = pa.timestamp("us")  # naive UTC in the CSV
    return pa_csv.read_csv(
        pa.py_buffer(data),
        # the whole block as one CSV block: one chunk
        read_options=pa_csv.ReadOptions(
            column_names=schema.names, use_threads=False, block_size=len(data) + 1
        ),
        parse_options=pa_csv.ParseOptions(newlines_in_values=True),
        convert_options=pa_csv.ConvertOptions(
            column_types=types,
            true_values=["t"],
            false_values=["f"],
            null_values=[""],  # COPY writes NULL unquoted and an empty string as ""
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )


def as_utc(ts: datetime) -> datetime:
    """A naive datetime is taken as UTC."""
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts


def to_frame(table: pa.Table, spec: FeatureSpec) -> pd.DataFrame:
    """An Arrow table of training rows as the pandas frame :func:`prepare` gives (event_ts, the spec's
    columns, is_fraud): numeric float64 with NaN, categorical Python strings (None when missing),
    event_ts ``datetime64[ns, UTC]``, is_fraud bool."""
    names = [TIME, *spec.columns, TARGET]
    missing = [name for name in names if name not in table.column_names]
    if missing:
        raise ValueError(f"training rows lack column(s) {', '.join(missing)}")
    target = arrow_schema(spec)
    table = table.select(names).cast(pa.schema([target.field(name) for name in names]))
    return table.to_pandas(coerce_temporal_nanoseconds=True)


def prepare(frame: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """Model dtypes: numeric/bool → float64 (None → NaN), categorical → str (None stays None: missing,
    which the model's encoder maps to NaN, not the category "None")."""
    out = frame.copy()
    for name in spec.numeric:
        out[name] = pd.to_numeric(out[name].astype(object).where(out[name].notna(), np.nan)).astype("float64")
    for name in spec.categorical:
        values = out[name]
        out[name] = values.astype(str).astype(object).where(values.notna(), None)
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
    if not frame[TIME].is_monotonic_increasing:  # snapshots arrive sorted: no copy then
        frame = frame.sort_values(TIME, kind="stable", ignore_index=True)
    ts = frame[TIME].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()  # datetime64, sortable
    cut_validation = ts[int(len(frame) * fractions[0])]
    cut_test = ts[int(len(frame) * (fractions[0] + fractions[1]))]
    # first row at or after each cut: contiguous row ranges, sliced rather than masked
    bounds = [0, *np.searchsorted(ts, [cut_validation, cut_test], side="left"), len(frame)]
    X, y, event_ts = frame[spec.columns], frame[TARGET].to_numpy(dtype=int), frame[TIME]

    def part(first: int, last: int) -> Split:
        # a new index on a view of X's rows: reset_index would copy them all once more (0.3-0.5 s a
        # million rows); X is this function's own copy, which nothing writes to
        rows = X.iloc[first:last]
        rows.index = pd.RangeIndex(last - first)
        return Split(X=rows, y=y[first:last], event_ts=event_ts.iloc[first:last].reset_index(drop=True))

    data = TrainingData(
        train=part(bounds[0], bounds[1]),
        validation=part(bounds[1], bounds[2]),
        test=part(bounds[2], bounds[3]),
        spec=spec,
        boundaries=(
            pd.Timestamp(cut_validation, tz="UTC").to_pydatetime(),
            pd.Timestamp(cut_test, tz="UTC").to_pydatetime(),
        ),
    )
    for name in ("train", "validation", "test"):
        y = getattr(data, name).y
        if len(y) == 0 or y.min() == y.max():
            raise ValueError(f"the {name} split needs both classes (rows: {len(y)}, fraud: {int(y.sum())})")
    return data

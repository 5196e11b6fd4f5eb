"""Vectorized row validation: every row ends either in the good table or in quarantine, never lost.

Input tables may be typed (simulator, Parquet) or all-string (landing CSV); both go through the same
rules. Nothing here loops over rows in Python: masks are computed with pyarrow.compute / numpy.

Rule order (a row failing several rules is quarantined once, with the first one):

transactions: transaction_id_missing, customer_id_missing, merchant_id_missing,
    merchant_category_missing, transaction_id_invalid, customer_id_invalid, merchant_id_invalid,
    merchant_category_invalid, event_ts_unparseable, event_ts_in_future, event_ts_before_floor,
    amount_unparseable,
    amount_not_positive, amount_rounds_to_zero, amount_above_max, currency_not_allowed,
    channel_not_allowed, country_invalid, transaction_id_duplicate
labels: transaction_id_missing, transaction_id_invalid, is_fraud_unparseable, label_ts_unparseable,
    label_ts_in_future, label_source_missing, label_source_not_allowed, transaction_id_duplicate

``transaction_id_duplicate`` comes last on purpose: among the rows that pass every other rule, the
first copy of an id is kept and later copies are quarantined, so an id with one valid copy is loaded
even if an earlier copy was broken.

What passes here also passes every reader downstream, so one row can never stop the pipeline:
- ids match the scoring API's rule (``ID_PATTERN``: letters, digits, ``_ . : -``, at most 64 characters)
  and ``merchant_category`` its ``CATEGORY_PATTERN``; so no control byte, NUL or huge value reaches the
  raw tables, the online store's record framing or a feature.
- dbt's ``stg_transactions`` keeps ``round(amount::numeric, 2)`` and its error-severity test requires it
  to be > 0: an amount that rounds to 0.00 (0.004, 5e-324) is ``amount_rounds_to_zero`` here, decided
  exactly as PostgreSQL rounds (float8 to numeric keeps 15 significant digits, then half away from zero:
  0.005 becomes 0.01 and passes). The ceiling ``max_amount`` is capped below dbt's bound (see IngestSettings).
- ``label_source`` must be one of ``LABEL_SOURCES`` (dbt's accepted_values test on ``stg_labels``).
- Currency, channel and country must already be in their canonical case (``EUR``, ``pos``, ``FR``):
  dbt's ``upper``/``lower`` never have to repair a value, and the API receives the same forms.

Accepted text forms (landing CSV): amounts as plain decimals (``12.5``, ``-3``, ``1e3``; no thousands
separators, no NaN/inf); timestamps as ISO 8601 ``YYYY-MM-DD[T ]HH:MM:SS[.ffffff][Z|±HH[:MM]]`` where a
missing offset means UTC; booleans as true/false, t/f, 1/0, yes/no (any case).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rtml.config import IngestSettings
from rtml.ingest.errors import SchemaMismatchError
from rtml.sources.schema import (
    CATEGORY_PATTERN,
    CHANNELS,
    ID_PATTERN,
    LABEL_SOURCES,
    LABELS,
    TRANSACTIONS,
)

TIMESTAMP = pa.timestamp("us", tz="UTC")

_DECIMAL_RE = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_TIMESTAMP_RE = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}(:?\d{2})?)?$"
_ZONE_RE = r"(Z|[+-]\d{2}(:?\d{2})?)$"
_MESSAGE_VALUE_CHARS = 80  # longer values are cut in error messages (their column keeps them whole)
_CENT = Decimal("0.01")
_TRUE = ["true", "t", "1", "yes", "y"]
_FALSE = ["false", "f", "0", "no", "n"]


@dataclass(frozen=True)
class Validated:
    """One batch, validated: the rows that passed and the rows quarantined."""

    good: pa.Table  # in the record schema (TRANSACTIONS or LABELS)
    quarantined: pa.Table  # original values as strings + source_row, rule, error, raw_record
    good_rows: np.ndarray  # position of each good row in the input batch (to find its original values)


@dataclass
class _Rules:
    """Failed-rule masks in rule order; ``first_failure`` picks the first rule each row failed."""

    names: list[str]
    masks: list[np.ndarray]
    # Per rule: rows -> messages for those rows; called only for the quarantined rows (cheap when clean).
    messages: list[Callable[[np.ndarray], pa.Array]]

    def add(self, name: str, mask: pa.Array | np.ndarray, message: Callable[[np.ndarray], pa.Array]) -> None:
        self.names.append(name)
        self.masks.append(_to_bool(mask))
        self.messages.append(message)

    def failed_any(self, n: int) -> np.ndarray:
        failed = np.zeros(n, dtype=bool)
        for mask in self.masks:
            failed |= mask
        return failed


def quarantine_schema(record: pa.Schema) -> pa.Schema:
    return pa.schema(
        [pa.field(name, pa.string()) for name in record.names]
        + [
            pa.field("source_row", pa.int64()),
            pa.field("rule", pa.string()),
            pa.field("error", pa.string()),
            pa.field("raw_record", pa.string()),
        ]
    )


TRANSACTIONS_QUARANTINE = quarantine_schema(TRANSACTIONS)
LABELS_QUARANTINE = quarantine_schema(LABELS)


def check_columns(table: pa.Table, record: pa.Schema, what: str) -> None:
    """Refuse a batch whose column names differ from the schema, saying what is wrong and how to fix it."""
    found = table.column_names
    missing = [name for name in record.names if name not in found]
    unknown = [name for name in found if name not in record.names]
    if not missing and not unknown and len(set(found)) == len(found):
        return
    problems = []
    if missing:
        problems.append(f"missing column(s) {missing}")
    if unknown:
        problems.append(f"unknown column(s) {unknown}")
    if len(set(found)) != len(found):
        problems.append("duplicate column names")
    hint = ""
    if len(found) == 1 and any(sep in found[0] for sep in ";\t|"):
        sep = next(sep for sep in ";\t|" if sep in found[0])
        hint = (
            f" The header is a single column containing {sep!r}: "
            f"the file seems delimited by {sep!r}, not ','."
        )
    raise SchemaMismatchError(
        f"{what}: {'; '.join(problems)}. Expected exactly the columns {record.names} "
        f"(found {found}).{hint} Fix the producer (or re-export the file as comma-separated UTF-8 with "
        f"this header) and load again."
    )


def validate_transactions(
    table: pa.Table, ingest: IngestSettings, *, now: datetime | None = None, row_offset: int = 0
) -> Validated:
    """Split a batch into good rows (TRANSACTIONS schema) and quarantined rows (with their rule)."""
    check_columns(table, TRANSACTIONS, "transactions batch")
    now = now or datetime.now(UTC)
    rules = _Rules([], [], [])
    texts = ("transaction_id", "customer_id", "merchant_id", "merchant_category")
    for column in texts:
        rules.add(f"{column}_missing", _missing(table[column]), _constant(f"{column} is missing"))
    for column in texts:
        pattern = CATEGORY_PATTERN if column == "merchant_category" else ID_PATTERN
        rules.add(f"{column}_invalid", *_not_matching(table[column], column, pattern))

    event_ts, ts_bad = _parse_timestamp(table["event_ts"])
    rules.add(
        "event_ts_unparseable", ts_bad, _quoted("event_ts", table["event_ts"], "is not an ISO 8601 timestamp")
    )
    limit = pa.scalar(now + timedelta(seconds=ingest.max_future_skew_seconds), TIMESTAMP)
    rules.add(
        "event_ts_in_future",
        pc.fill_null(pc.greater(event_ts, limit), False),
        _quoted(
            "event_ts",
            table["event_ts"],
            f"lies more than {ingest.max_future_skew_seconds} s after load time",
        ),
    )

    floor = pa.scalar(ingest.min_event_timestamp, TIMESTAMP)
    rules.add(
        "event_ts_before_floor",
        pc.fill_null(pc.less(event_ts, floor), False),
        _quoted(
            "event_ts",
            table["event_ts"],
            f"is before {ingest.min_event_timestamp:%Y-%m-%d} (min_event_timestamp)",
        ),
    )

    amount, amount_bad = _parse_float(table["amount"])
    rules.add("amount_unparseable", amount_bad, _quoted("amount", table["amount"], "is not a finite number"))
    rules.add(
        "amount_not_positive",
        pc.fill_null(pc.less_equal(amount, 0.0), False),
        _quoted("amount", table["amount"], "is not positive"),
    )
    rules.add(
        "amount_rounds_to_zero",
        _rounds_to_zero_cents(amount),
        _quoted("amount", table["amount"], "rounds to 0.00 (amounts are kept in cents: 0.005 is the least)"),
    )
    rules.add(
        "amount_above_max",
        pc.fill_null(pc.greater(amount, ingest.max_amount), False),
        _quoted("amount", table["amount"], f"exceeds max_amount {ingest.max_amount:g}"),
    )

    currency = _as_string(table["currency"])
    rules.add(
        "currency_not_allowed",
        pc.invert(pc.fill_null(pc.is_in(currency, pa.array(ingest.currencies)), False)),
        _quoted("currency", currency, f"is not one of {ingest.currencies}"),
    )
    channel = _as_string(table["channel"])
    rules.add(
        "channel_not_allowed",
        pc.invert(pc.fill_null(pc.is_in(channel, pa.array(CHANNELS)), False)),
        _quoted("channel", channel, f"is not one of {list(CHANNELS)}"),
    )
    country = _as_string(table["country"])
    rules.add(
        "country_invalid",
        pc.invert(pc.fill_null(pc.match_substring_regex(country, r"^[A-Z]{2}$"), False)),
        _quoted("country", country, "is not an ISO 3166 alpha-2 code (two capital letters)"),
    )

    typed = {
        "transaction_id": _as_string(table["transaction_id"]),
        "event_ts": event_ts,
        "customer_id": _as_string(table["customer_id"]),
        "merchant_id": _as_string(table["merchant_id"]),
        "merchant_category": _as_string(table["merchant_category"]),
        "amount": amount,
        "currency": currency,
        "channel": channel,
        "country": country,
    }
    return _split(table, typed, rules, TRANSACTIONS, row_offset)


def validate_labels(
    table: pa.Table, ingest: IngestSettings, *, now: datetime | None = None, row_offset: int = 0
) -> Validated:
    """Split a batch of labels into good rows (LABELS schema) and quarantined rows."""
    check_columns(table, LABELS, "labels batch")
    now = now or datetime.now(UTC)
    rules = _Rules([], [], [])
    rules.add(
        "transaction_id_missing", _missing(table["transaction_id"]), _constant("transaction_id is missing")
    )
    rules.add("transaction_id_invalid", *_not_matching(table["transaction_id"], "transaction_id", ID_PATTERN))
    is_fraud, fraud_bad = _parse_bool(table["is_fraud"])
    rules.add("is_fraud_unparseable", fraud_bad, _quoted("is_fraud", table["is_fraud"], "is not a boolean"))
    label_ts, ts_bad = _parse_timestamp(table["label_ts"])
    rules.add(
        "label_ts_unparseable", ts_bad, _quoted("label_ts", table["label_ts"], "is not an ISO 8601 timestamp")
    )
    limit = pa.scalar(now + timedelta(seconds=ingest.max_future_skew_seconds), TIMESTAMP)
    rules.add(
        "label_ts_in_future",
        pc.fill_null(pc.greater(label_ts, limit), False),
        _quoted(
            "label_ts",
            table["label_ts"],
            f"lies more than {ingest.max_future_skew_seconds} s after load time",
        ),
    )
    rules.add("label_source_missing", _missing(table["label_source"]), _constant("label_source is missing"))
    label_source = _as_string(table["label_source"])
    rules.add(
        "label_source_not_allowed",
        pc.invert(pc.fill_null(pc.is_in(label_source, pa.array(LABEL_SOURCES)), False)),
        _quoted("label_source", label_source, f"is not one of {list(LABEL_SOURCES)}"),
    )
    typed = {
        "transaction_id": _as_string(table["transaction_id"]),
        "is_fraud": is_fraud,
        "label_ts": label_ts,
        "label_source": _as_string(table["label_source"]),
    }
    return _split(table, typed, rules, LABELS, row_offset)


# --- splitting ---------------------------------------------------------------------------------------
def _split(
    table: pa.Table, typed: dict[str, pa.Array], rules: _Rules, record: pa.Schema, row_offset: int
) -> Validated:
    n = table.num_rows
    ids = typed["transaction_id"]
    passed = ~rules.failed_any(n)
    rules.add(
        "transaction_id_duplicate",
        _later_duplicates(ids, passed),
        _quoted("transaction_id", ids, "appears earlier in the same batch; the first copy was kept"),
    )

    # First failing rule per row: walk the rules backwards so earlier rules overwrite later ones.
    rule_index = np.full(n, -1, dtype=np.int16)
    for index in range(len(rules.masks) - 1, -1, -1):
        rule_index[rules.masks[index]] = index
    good_rows = np.flatnonzero(rule_index < 0)
    bad_rows = np.flatnonzero(rule_index >= 0)

    good = pa.Table.from_arrays([_take(typed[name], good_rows) for name in record.names], schema=record)
    if len(bad_rows) == 0:
        return Validated(good, quarantine_schema(record).empty_table(), good_rows)

    bad_rule_index = rule_index[bad_rows]
    rule_names = pa.array(np.array(rules.names, dtype=object)[bad_rule_index], pa.string())
    error = pa.nulls(len(bad_rows), pa.string())
    for index, message in enumerate(rules.messages):
        positions = np.flatnonzero(bad_rule_index == index)
        if len(positions):
            rule_error = message(bad_rows[positions])
            scattered = np.zeros(len(bad_rows), dtype=bool)
            scattered[positions] = True
            error = pc.replace_with_mask(error, pa.array(scattered), rule_error)
    columns = [_as_string(_take(_flat(table[name]), bad_rows)) for name in record.names]
    quarantined = pa.Table.from_arrays(
        [
            *columns,
            pa.array(bad_rows + row_offset, pa.int64()),
            rule_names,
            error,
            pa.nulls(len(bad_rows), pa.string()),
        ],
        schema=quarantine_schema(record),
    )
    return Validated(good, quarantined, good_rows)


def _later_duplicates(ids: pa.Array, candidates: np.ndarray) -> np.ndarray:
    """Rows among ``candidates`` whose id already appeared in an earlier candidate row."""
    candidate_rows = np.flatnonzero(candidates)
    encoded = pc.dictionary_encode(_take(ids, candidate_rows))
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    if len(encoded.dictionary) == len(candidate_rows):  # the common case: all distinct
        return np.zeros(len(ids), dtype=bool)
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    _, first_positions = np.unique(codes, return_index=True)
    later = np.ones(len(candidate_rows), dtype=bool)
    later[first_positions] = False
    duplicate = np.zeros(len(ids), dtype=bool)
    duplicate[candidate_rows[later]] = True
    return duplicate


# --- parsing helpers -----------------------------------------------------------------------------------
def _to_bool(mask: pa.Array | pa.ChunkedArray | np.ndarray) -> np.ndarray:
    if isinstance(mask, np.ndarray):
        return mask.astype(bool, copy=False)
    return np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool)


def _flat(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    return column


def _take(column: pa.Array, rows: np.ndarray) -> pa.Array:
    if len(rows) == len(column):  # nothing removed: no copy
        return column
    return pc.take(column, pa.array(rows, pa.int64()))


def _as_string(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    column = _flat(column)
    if pa.types.is_string(column.type):
        return column
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    return pc.cast(column, pa.string())


def _blank(strings: pa.Array) -> pa.Array:
    # utf8_is_space is false for "" (no characters), hence the length test.
    return pc.fill_null(pc.or_(pc.equal(pc.binary_length(strings), 0), pc.utf8_is_space(strings)), True)


def _missing(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    strings = _as_string(column)
    return pc.or_(pc.is_null(strings), _blank(strings))


def _parse_float(column: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, pa.Array]:
    """(float64 values with nulls where unparseable, unparseable mask)."""
    column = _flat(column)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        text = pc.utf8_trim_whitespace(pc.cast(column, pa.string()))
        ok = pc.fill_null(pc.match_substring_regex(text, _DECIMAL_RE), False)
        values = pc.cast(pc.if_else(ok, text, pa.scalar("0")), pa.float64())
    else:
        try:
            values = pc.cast(column, pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return _parse_float(_as_string(column))
        ok = pc.fill_null(pc.is_finite(values), False)
    ok = pc.and_(ok, pc.fill_null(pc.is_finite(values), False))
    return pc.if_else(ok, values, pa.scalar(None, pa.float64())), pc.invert(ok)


def _parse_timestamp(column: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, pa.Array]:
    """(UTC microsecond timestamps with nulls where unparseable, unparseable mask)."""
    column = _flat(column)
    if pa.types.is_timestamp(column.type):
        if column.type.tz is None:  # naive means UTC (documented)
            column = pc.assume_timezone(column.cast(pa.timestamp("us")), "UTC")
        values = column.cast(TIMESTAMP)
        return values, pc.is_null(values)
    text = pc.utf8_trim_whitespace(_as_string(column))
    shaped = pc.fill_null(pc.match_substring_regex(text, _TIMESTAMP_RE), False)
    # The regex checks the shape; strptime (error_is_null) checks the calendar (month 13, hour 25...).
    prefix = pc.replace_substring(pc.utf8_slice_codeunits(text, 0, 19), " ", "T")
    calendar_ok = pc.is_valid(pc.strptime(prefix, format="%Y-%m-%dT%H:%M:%S", unit="s", error_is_null=True))
    ok = pc.and_(shaped, calendar_ok)
    zoned = pc.fill_null(pc.match_substring_regex(text, _ZONE_RE), False)
    with_zone = pc.if_else(zoned, text, pc.binary_join_element_wise(text, pa.scalar("Z"), ""))
    safe = pc.if_else(ok, with_zone, pa.scalar("1970-01-01T00:00:00Z"))
    values = pc.cast(safe, TIMESTAMP)
    return pc.if_else(ok, values, pa.scalar(None, TIMESTAMP)), pc.invert(ok)


def _parse_bool(column: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, pa.Array]:
    column = _flat(column)
    if pa.types.is_boolean(column.type):
        return column, pc.is_null(column)
    if pa.types.is_integer(column.type):
        ok = pc.fill_null(pc.is_in(column, pa.array([0, 1], column.type)), False)
        values = pc.equal(column, pa.scalar(1, column.type))
        return pc.if_else(ok, values, pa.scalar(None, pa.bool_())), pc.invert(ok)
    text = pc.utf8_lower(pc.utf8_trim_whitespace(_as_string(column)))
    is_true = pc.fill_null(pc.is_in(text, pa.array(_TRUE)), False)
    is_false = pc.fill_null(pc.is_in(text, pa.array(_FALSE)), False)
    ok = pc.or_(is_true, is_false)
    return pc.if_else(ok, is_true, pa.scalar(None, pa.bool_())), pc.invert(ok)


def _not_matching(
    column: pa.Array | pa.ChunkedArray, name: str, pattern: str
) -> tuple[pa.Array, Callable[[np.ndarray], pa.Array]]:
    """(mask of present values that do not match ``pattern``, their messages); missing ones have a rule
    of their own."""
    strings = _as_string(column)
    bad = pc.invert(pc.fill_null(pc.match_substring_regex(strings, pattern), True))
    rule = pattern.strip("^$")
    return bad, _quoted(name, strings, f"does not match {rule} (the scoring API's rule)")


def _rounds_to_zero_cents(amount: pa.Array) -> np.ndarray:
    """Positive amounts that PostgreSQL's ``round(amount::numeric, 2)`` turns into 0.00 (dbt's
    stg_transactions): float8 → numeric keeps 15 significant digits, then rounds half away from zero.
    Only amounts below one cent are candidates, so the exact per-value check costs nothing."""
    values = pc.fill_null(amount, 0.0).to_numpy(zero_copy_only=False)
    zero = np.zeros(len(values), dtype=bool)
    for row in np.flatnonzero((values > 0) & (values < 0.01)):
        zero[row] = Decimal(f"{values[row]:.15g}").quantize(_CENT, ROUND_HALF_UP) == 0
    return zero


def _constant(message: str) -> Callable[[np.ndarray], pa.Array]:
    return lambda rows: pa.repeat(pa.scalar(message), len(rows))


def _quoted(name: str, column: pa.Array | pa.ChunkedArray, reason: str) -> Callable[[np.ndarray], pa.Array]:
    """Per-row message ``<name> '<original value>' <reason>`` for the given rows."""

    def messages(rows: np.ndarray) -> pa.Array:
        text = _as_string(_take(_flat(column), rows))
        long = pc.fill_null(pc.greater(pc.utf8_length(text), _MESSAGE_VALUE_CHARS), False)
        cut = pc.binary_join_element_wise(pc.utf8_slice_codeunits(text, 0, _MESSAGE_VALUE_CHARS), "…", "")
        text = pc.if_else(long, cut, text)
        quoted = pc.binary_join_element_wise(pa.scalar(f"{name} '"), text, pa.scalar(f"' {reason}"), "")
        return pc.fill_null(quoted, f"{name} is null: {reason}")

    return messages


def quarantine_rows(
    table: pa.Table, record: pa.Schema, rows: np.ndarray, row_offset: int, rule: str, errors: pa.Array
) -> pa.Table:
    """Quarantine rows ``rows`` of an input batch (original values as strings) under one rule."""
    return pa.Table.from_arrays(
        [
            *[_as_string(_take(_flat(table[name]), rows)) for name in record.names],
            pa.array(rows + row_offset, pa.int64()),
            pa.repeat(pa.scalar(rule), len(rows)),
            errors,
            pa.nulls(len(rows), pa.string()),
        ],
        schema=quarantine_schema(record),
    )

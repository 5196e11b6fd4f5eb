"""What the online store keeps per entity, derived from the feature registry (the dbt manifest).

Every stored feature of a view is one hash field; so are the view's *state* columns: values the
``*_latest`` tables hold for the scorer's request-time features (they are documented in the dbt YAML
but carry no dtype there, so their kinds are declared here).

Encoding in Redis (all text, so ``redis-cli`` shows readable values; hash fields are the positions of
the fields, see ``OnlineView.field_ids``):

======================  =============================================  ========================
kind                    stored as                                      read back as
======================  =============================================  ========================
``int64``               decimal integer                                ``int``
``float64``             shortest round-trip decimal (PostgreSQL text)  ``float``
``bool``                ``1`` / ``0``                                  ``bool``
``string``              the text                                       ``str``
``timestamp``           integer microseconds since the Unix epoch      aware ``datetime`` (UTC)
``string_set``          elements joined by ``\\x1f`` (unit separator)   ``frozenset[str]``
======================  =============================================  ========================

SQL NULL is stored as an empty string and read back as the field's *null value* (``NaN`` for floats,
``None`` for timestamps, an empty set for sets).

Defaults for an unknown entity mean "no history": exactly what ``customer_features`` holds for a
customer's first transaction (and ``merchant_features`` for a merchant without transactions): counts
0, amount sums 0.0, means, standard deviations, shares and rates NaN (SQL NULL), timestamps ``None``,
known merchants empty (so ``is_new_merchant`` is true and ``seconds_since_prev_txn`` NaN).
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from rtml.features.feature_registry import FeatureRegistry, FeatureView

Kind = Literal["int64", "float64", "bool", "string", "timestamp", "string_set"]

SET_SEPARATOR = "\x1f"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

STATE_COLUMNS: dict[str, dict[str, Kind]] = {
    # customer_features_latest: the scorer derives seconds_since_prev_txn, is_new_merchant from these
    "customer_features": {
        "as_of_ts": "timestamp",
        "last_txn_ts": "timestamp",
        "known_merchant_ids": "string_set",
    },
    # merchant_features_latest: the day start its features are as of (staleness)
    "merchant_features": {"feature_ts": "timestamp"},
}
"""Non-feature columns of each view's online table that the online store keeps as well."""

SUM_FEATURE_MARK = "_sum_"
"""Float features that are sums (``amount_sum_24h``): SQL coalesces them to 0, so "no history" is 0.0."""


def _int(raw: bytes) -> int:
    return int(raw) if raw else 0


def _float(raw: bytes) -> float:
    return float(raw) if raw else math.nan


def _bool(raw: bytes) -> bool:
    return raw == b"1"


def _str(raw: bytes) -> str:
    return raw.decode()


def _timestamp(raw: bytes) -> datetime | None:
    return EPOCH + timedelta(microseconds=int(raw)) if raw else None


def _string_set(raw: bytes) -> frozenset[str]:
    return frozenset(raw.decode().split(SET_SEPARATOR)) if raw else frozenset()


DECODERS: dict[Kind, Callable[[bytes], Any]] = {
    "int64": _int,
    "float64": _float,
    "bool": _bool,
    "string": _str,
    "timestamp": _timestamp,
    "string_set": _string_set,
}


@dataclass(frozen=True)
class OnlineField:
    name: str
    kind: Kind
    feature_version: int | None
    """The feature's ``meta.version``; ``None`` for state columns."""
    default: Any
    """The value for an unknown entity ("no history")."""

    @property
    def decode(self) -> Callable[[bytes], Any]:
        return DECODERS[self.kind]

    def sql_text(self) -> str:
        """The SQL expression that renders the column as its stored text (NULL stays NULL)."""
        column = f'"{self.name}"'
        return {
            "int64": f"{column}::bigint::text",
            # float8's text output is the shortest string that reads back to the same double
            "float64": f"{column}::float8::text",
            "bool": f"case when {column} then '1' when not {column} then '0' end",
            "string": f"{column}::text",
            "timestamp": f"(extract(epoch from {column}) * 1000000)::bigint::text",
            "string_set": f"array_to_string({column}, E'\\x1f')",
        }[self.kind]


def _feature_default(name: str, kind: Kind) -> Any:
    if kind == "int64":
        return 0
    if kind == "float64":
        return 0.0 if SUM_FEATURE_MARK in name else math.nan
    if kind == "bool":
        return False
    return ""


STATE_DEFAULTS: dict[Kind, Any] = {"timestamp": None, "string_set": frozenset()}


@dataclass(frozen=True)
class OnlineView:
    """One feature view as the online store keeps it."""

    name: str
    entity: str
    entity_key: str
    version: int
    relation: str
    """The ``*_latest`` table the values come from."""
    fields: tuple[OnlineField, ...]

    @property
    def field_names(self) -> list[str]:
        return [field.name for field in self.fields]

    @property
    def field_ids(self) -> list[str]:
        """The hash field of each field: its position (``0``, ``1``, ...). The fingerprint fixes the
        order, so positions are stable within a namespace; the names are in ``{ns}:meta`` (``fields``).
        Short fields cut the bytes Redis parses per entity by a third (measured: +16 % write throughput)
        and the memory of every hash; Feast hashes its field names for the same reason."""
        return [str(position) for position in range(len(self.fields))]

    @property
    def fingerprint(self) -> str:
        """Changes whenever what is stored changes (a field, its kind or feature version, the view's
        version): a new fingerprint is written to a new namespace and switched in."""
        spec = [self.name, self.entity_key, self.version] + [
            [f.name, f.kind, f.feature_version] for f in self.fields
        ]
        return hashlib.sha256(repr(spec).encode()).hexdigest()[:8]

    @functools.cached_property
    def decoders(self) -> tuple[tuple[str, Callable[[bytes], Any]], ...]:
        """(name, decoder) of each field, in stored order: what the reader applies to every record."""
        return tuple((field.name, field.decode) for field in self.fields)

    def defaults(self) -> dict[str, Any]:
        return {field.name: field.default for field in self.fields}

    def select_sql(self) -> str:
        columns = ", ".join(f'{f.sql_text()} as "{f.name}"' for f in self.fields)
        return f'select "{self.entity_key}"::text as "{self.entity_key}", {columns} from {self.relation}'


def online_view(view: FeatureView) -> OnlineView:
    if view.online_relation is None:
        raise ValueError(f"feature view {view.name} has no online model (meta.feature_view.online_model)")
    fields = [
        OnlineField(f.name, f.dtype, f.version, _feature_default(f.name, f.dtype))
        for f in view.stored_features
    ]
    fields += [
        OnlineField(name, kind, None, STATE_DEFAULTS[kind])
        for name, kind in STATE_COLUMNS.get(view.name, {}).items()
    ]
    return OnlineView(
        name=view.name,
        entity=view.entity,
        entity_key=view.entity_key,
        version=view.version,
        relation=view.online_relation,
        fields=tuple(fields),
    )


def online_views(registry: FeatureRegistry) -> dict[str, OnlineView]:
    """Every feature view that has an online table, by view name."""
    return {name: online_view(view) for name, view in registry.views.items() if view.online_relation}

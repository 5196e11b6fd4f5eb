"""Offline/online parity: a sample of entities read from PostgreSQL and from Redis must agree.

A view with no row to sample fails the check: zero comparisons prove nothing, and an empty ``*_latest``
table is itself a fault (the push guard in ``writer`` refuses to empty Redis from one)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg

from rtml.features.online.reader import same_value
from rtml.features.online.schema import OnlineView
from rtml.features.online.store import OnlineStore


@dataclass
class ParityReport:
    checked: dict[str, int] = field(default_factory=dict)
    """Entities compared per view."""
    missing: dict[str, int] = field(default_factory=dict)
    """Entities of the sample that Redis does not have, per view."""
    mismatches: list[str] = field(default_factory=list)
    """``view/entity/field: postgres=... redis=...`` for every differing value."""
    empty: list[str] = field(default_factory=list)
    """Views whose ``*_latest`` table had no row to sample (nothing compared)."""

    @property
    def passed(self) -> bool:
        return not self.empty and not self.mismatches and not any(self.missing.values())

    @property
    def summary(self) -> str:
        """One line on what was compared and, on failure, why it failed."""
        compared = ", ".join(f"{view}: {n}" for view, n in self.checked.items())
        if self.passed:
            return f"entities compared, all equal: {compared}"
        reasons = [f"{view}: no row sampled from its *_latest table, nothing compared" for view in self.empty]
        reasons += [f"{view}: {n} sampled entities missing in Redis" for view, n in self.missing.items() if n]
        differing = [m for m in self.mismatches if " postgres=" in m]
        if differing:
            reasons.append(f"differing values: {len(differing)} (first: {differing[0]})")
        return "; ".join(reasons) + (f" (compared: {compared})" if compared else "")


def offline_value(value: Any, null_value: Any) -> Any:
    """A PostgreSQL value as the reader types it (NULL → the field's null value)."""
    if value is None:
        return null_value
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, list):
        return frozenset(value)
    return value


def _null_value(view: OnlineView, name: str) -> Any:
    kind = next(f.kind for f in view.fields if f.name == name)
    return {"float64": float("nan"), "timestamp": None, "string_set": frozenset(), "string": ""}.get(kind)


def sample_rows(database_url: str, view: OnlineView, size: int) -> dict[str, dict[str, Any]]:
    """``size`` random rows of the view's online table, typed as psycopg returns them."""
    columns = ", ".join(f'"{name}"' for name in view.field_names)
    sql = f'select "{view.entity_key}", {columns} from {view.relation} order by random() limit %s'
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(sql, (size,)).fetchall()
    return {row[0]: dict(zip(view.field_names, row[1:], strict=True)) for row in rows}


def check_parity(database_url: str, store: OnlineStore, sample: int) -> ParityReport:
    """Compare ``sample`` random customers and merchants between PostgreSQL and the online store."""
    report = ParityReport()
    customers = sample_rows(database_url, store.customer_view, sample)
    merchants = sample_rows(database_url, store.merchant_view, sample)
    customer_ids, merchant_ids = list(customers), list(merchants)
    report.empty = [
        view.name
        for view, rows in ((store.customer_view, customers), (store.merchant_view, merchants))
        if not rows
    ]
    n = max(len(customer_ids), len(merchant_ids))
    if n == 0:
        return report
    pairs = [
        (
            customer_ids[i % len(customer_ids)] if customer_ids else "",
            merchant_ids[i % len(merchant_ids)] if merchant_ids else "",
        )
        for i in range(n)
    ]
    features = store.read_many(pairs)
    for view, entity, offline, side in (
        (store.customer_view, "customer", customers, 0),
        (store.merchant_view, "merchant", merchants, 1),
    ):
        report.checked[view.name] = len(offline)
        report.missing[view.name] = 0
        seen: set[str] = set()
        for pair, online in zip(pairs, features, strict=True):
            entity_id = pair[side]
            if entity_id not in offline or entity_id in seen:
                continue
            seen.add(entity_id)
            if entity in online.missing:
                report.missing[view.name] += 1
                report.mismatches.append(f"{view.name}/{entity_id}: missing in Redis")
                continue
            values = online.customer if side == 0 else online.merchant
            for name, pg_value in offline[entity_id].items():
                expected = offline_value(pg_value, _null_value(view, name))
                if isinstance(expected, datetime) and isinstance(values[name], datetime):
                    same = expected == values[name]
                else:
                    same = same_value(expected, values[name])
                if not same:
                    report.mismatches.append(
                        f"{view.name}/{entity_id}/{name}: postgres={expected!r} redis={values[name]!r}"
                    )
    return report

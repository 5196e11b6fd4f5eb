"""Training-serving skew: what the scorer served (``monitoring.served_features``) against what the
offline feature store says for the same transaction, once that transaction has been ingested.

For each sampled request (the newest ``skew_sample_size`` whose transaction is now in
``features.customer_features``) the offline value of every model feature is rebuilt and put through the
scorer's own ``request_features.model_row``, then compared with the logged row, exactly:

* **customer features, ``speed_layer = merged``** — the speed layer promises dbt's values *for this very
  transaction*: the ``customer_features`` row of the transaction (stored and request-time features).
* **customer features otherwise** (``disabled``, ``beyond_horizon``, ``not_exact``) — the batch values of
  the build that was served: ``customer_features_latest``'s definition evaluated at that build's
  watermark A (windows ``[A - w, A)``: the dbt macros ``customer_features_latest`` is built with,
  rendered from the manifest); the request-time features derived
  from that state as the scorer derives them (``request_features.compute``).
* **merchant features** (batch only) — ``merchant_features_sql`` (the dbt macro) for the build's day:
  what ``merchant_features_latest`` held.
* **unknown entities** — the same recomputation: an entity without history at A comes out as the
  online store's defaults ("no history"), so a served default is right exactly when the offline store
  had nothing either.

Which build was served: ``feature_versions`` names each view's namespace; ``builds`` (the
``online_features`` pushes: namespace, watermark, when the push ran) says which push of that namespace
was current at ``scored_at`` (the last finished before it, or one in flight: an incremental push
rewrites entities in place, so both are tried and the better match kept). A request whose namespace no
known build explains is counted ``unverifiable``, not compared. Requests scored without Redis
(``speed_layer = redis_unavailable``, or ``degraded`` in the prediction log) got defaults on purpose:
counted ``degraded``, not compared.

Known departure: a row loaded after a build with an event time before its watermark (a late row) is
in the recomputation but was not in the build; it shows as a mismatch of that customer's or merchant's
windowed features (rare: the simulator and the lander load in event order).

No Dagster here: ``rtml.defs.online.checks`` wraps it.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import jinja2
import psycopg
from psycopg.rows import dict_row

from rtml.features.dbt import ensure_manifest
from rtml.features.feature_registry import FeatureRegistry
from rtml.features.online.schema import OnlineView, online_views
from rtml.features.request_features import EXACT_AT, model_row
from rtml.monitoring.metrics import Sample
from rtml.training.dataset import REQUEST_NUMERIC, feature_spec

CUSTOMER_VIEW = "customer_features"
MERCHANT_VIEW = "merchant_features"
DEGRADED_SPEED_LAYER = "redis_unavailable"
"""``speed_layer`` of a request the scorer answered with defaults because Redis did not (fail open)."""
PUSH_MARGIN = timedelta(seconds=60)
"""Slack before a push's recorded start: its entities may be rewritten a little before it is timed."""
EXAMPLES = 5
"""Request ids kept per failing feature."""


@dataclass(frozen=True)
class Build:
    """One push of a view to the online store."""

    view: str
    namespace: str
    as_of: datetime
    """The values' watermark: customers, ``as_of_ts`` (newest event + 1 µs); merchants, ``feature_ts``
    (the start of the UTC day whose ``merchant_features`` row was pushed)."""
    pushed_from: datetime
    pushed_until: datetime


@dataclass
class FeatureStats:
    compared: int = 0
    exact: int = 0
    max_abs_diff: float = 0.0
    """inf when one side is null and the other a number."""
    examples: list[str] = field(default_factory=list)
    """Request ids of mismatches (at most ``EXAMPLES``)."""

    @property
    def exact_share(self) -> float:
        return self.exact / self.compared if self.compared else 1.0

    def add(self, request_id: str, served: Any, expected: float) -> None:
        self.compared += 1
        diff = _difference(served, expected)
        if diff == 0.0:
            self.exact += 1
            return
        self.max_abs_diff = max(self.max_abs_diff, diff)
        if len(self.examples) < EXAMPLES:
            self.examples.append(request_id)

    def as_json(self) -> dict[str, Any]:
        return {
            "compared": self.compared,
            "exact_share": round(self.exact_share, 6),
            "max_abs_diff": self.max_abs_diff if math.isfinite(self.max_abs_diff) else "null vs value",
            "examples": self.examples,
        }


@dataclass
class SkewReport:
    sampled: int = 0
    """Logged requests whose transaction is in the offline store (up to the sample size)."""
    compared: int = 0
    degraded: int = 0
    unverifiable: int = 0
    """Requests (or a view's part of one) whose namespace no known build explains."""
    cases: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    """How the customer part was checked: ``merged`` (dbt's row of the transaction) or ``batch``."""
    features: dict[str, FeatureStats] = field(default_factory=dict)

    @property
    def failing(self) -> list[str]:
        return sorted(name for name, stats in self.features.items() if stats.exact < stats.compared)

    @property
    def passed(self) -> bool:
        return not self.failing

    @property
    def summary(self) -> str:
        if not self.compared:
            return (
                f"no logged request to compare: {self.sampled} sampled, {self.degraded} degraded, "
                f"{self.unverifiable} unverifiable (nothing scored and ingested yet?)"
            )
        head = (
            f"{self.compared} requests compared ({dict(self.cases)}), {self.degraded} degraded skipped, "
            f"{self.unverifiable} unverifiable"
        )
        if self.passed:
            return f"{head}: every served feature equals the offline store's exactly"
        worst = ", ".join(
            f"{name} ({self.features[name].exact_share:.2%} exact, max |diff| "
            f"{self.features[name].as_json()['max_abs_diff']})"
            for name in self.failing
        )
        return f"{head}: training-serving skew in {worst}"

    def samples(self) -> list[Sample]:
        """``rtml_training_serving_skew_*`` (``rtml.monitoring.metrics``)."""
        out = [
            Sample("rtml_training_serving_skew_mismatch_share", 1.0 - stats.exact_share, {"feature": name})
            for name, stats in sorted(self.features.items())
        ]
        counts = {"compared": self.compared, "degraded": self.degraded, "unverifiable": self.unverifiable}
        out += [
            Sample("rtml_training_serving_skew_requests", count, {"outcome": outcome})
            for outcome, count in counts.items()
        ]
        return out


@dataclass(frozen=True)
class _Served:
    request_id: str
    transaction_id: str
    customer_id: str
    merchant_id: str
    event_ts: datetime
    scored_at: datetime
    speed_layer: str
    versions: dict[str, str]
    features: dict[str, Any]


def check_skew(
    database_url: str,
    registry: FeatureRegistry,
    builds: Sequence[Build],
    *,
    sample_size: int,
    since: datetime | None = None,
) -> SkewReport:
    """Compare the newest ``sample_size`` logged requests scored since ``since`` whose transactions are
    ingested with the offline store (module docstring)."""
    views = online_views(registry)
    spec = feature_spec(registry)
    customer_features = set(registry.view(CUSTOMER_VIEW).feature_names)
    merchant_features = set(registry.view(MERCHANT_VIEW).feature_names)
    sql = _Sql.from_manifest()
    report = SkewReport()
    with psycopg.connect(database_url, autocommit=True) as conn:
        served = _sample(conn, sample_size, since)
        report.sampled = len(served)
        rows = []
        for row in served:
            if row.speed_layer == DEGRADED_SPEED_LAYER:
                report.degraded += 1
            else:
                rows.append(row)
        merged = [row for row in rows if row.speed_layer == "merged"]
        dbt_rows = _customer_rows(conn, [row.transaction_id for row in merged])
        customer_builds = {row.request_id: _candidates(builds, CUSTOMER_VIEW, row) for row in rows}
        merchant_builds = {row.request_id: _candidates(builds, MERCHANT_VIEW, row) for row in rows}
        customers = sql.customers_as_of(
            conn,
            views[CUSTOMER_VIEW],
            {
                (row.customer_id, build.as_of)
                for row in rows
                if row.speed_layer != "merged"
                for build in customer_builds[row.request_id]
            },
        )
        merchants = sql.merchants_on(
            conn,
            views[MERCHANT_VIEW],
            {
                (row.merchant_id, _day(build.as_of))
                for row in rows
                for build in merchant_builds[row.request_id]
            },
        )
    for row in rows:
        if row.speed_layer == "merged":
            customer_options = [_merged_state(dbt_rows[row.transaction_id], row.event_ts)]
        else:
            customer_options = [
                customers[(row.customer_id, b.as_of)] for b in customer_builds[row.request_id]
            ]
        merchant_options = [
            merchants[(row.merchant_id, _day(b.as_of))] for b in merchant_builds[row.request_id]
        ]
        if not customer_options or not merchant_options:
            report.unverifiable += 1
        if not customer_options and not merchant_options:
            continue
        # the request's own fields as scored; every feature comes from the offline values
        txn = {name: row.features.get(name) for name in (*REQUEST_NUMERIC, *spec.categorical)}
        txn |= {"merchant_id": row.merchant_id, "timestamp": row.event_ts}
        for names, options, kind in (
            (customer_features, customer_options, "customer"),
            (merchant_features, merchant_options, "merchant"),
        ):
            if not options:
                continue
            best = max(
                (
                    _expected(txn, options, i, kind, views, spec.numeric, spec.categorical)
                    for i in range(len(options))
                ),
                key=lambda expected: _exact_count(row.features, expected, names),
            )
            for name in sorted(names & row.features.keys()):
                report.features.setdefault(name, FeatureStats()).add(
                    row.request_id, row.features[name], best[name]
                )
        report.compared += 1
        report.cases["merged" if row.speed_layer == "merged" else "batch"] += 1
    return report


def _expected(
    txn: Mapping[str, Any],
    options: Sequence[dict[str, Any]],
    index: int,
    kind: str,
    views: Mapping[str, OnlineView],
    numeric: Sequence[str],
    categorical: Sequence[str],
) -> dict[str, Any]:
    """The model row the scorer would have built from the offline values (the other entity's part is
    the defaults: only ``kind``'s features are read from it)."""
    customer = options[index] if kind == "customer" else views[CUSTOMER_VIEW].defaults()
    merchant = options[index] if kind == "merchant" else views[MERCHANT_VIEW].defaults()
    return model_row(txn, customer, merchant, numeric, categorical)


def _exact_count(served: Mapping[str, Any], expected: Mapping[str, Any], names: Iterable[str]) -> int:
    return sum(1 for name in names if name in served and _difference(served[name], expected[name]) == 0.0)


def _difference(served: Any, expected: float) -> float:
    """|served - expected|; 0 for null (the log's NaN) against NaN, inf for null against a number."""
    missing = served is None or (isinstance(served, float) and math.isnan(served))
    if missing or math.isnan(expected):
        return 0.0 if missing and math.isnan(expected) else math.inf
    return abs(float(served) - expected)


def _day(as_of: datetime) -> date:
    return as_of.astimezone(UTC).date()


def _candidates(builds: Sequence[Build], view: str, row: _Served) -> list[Build]:
    """The builds of the request's namespace that may have been current at ``scored_at``: the last push
    finished before it, and any push in flight then."""
    namespace = row.versions.get(view)
    own = [b for b in builds if b.view == view and b.namespace == namespace]
    finished = [b for b in own if b.pushed_until <= row.scored_at]
    out = [max(finished, key=lambda b: b.pushed_until)] if finished else []
    out += [b for b in own if b.pushed_from - PUSH_MARGIN <= row.scored_at < b.pushed_until]
    return list({b.as_of: b for b in out}.values())


def _merged_state(dbt_row: Mapping[str, Any], event_ts: datetime) -> dict[str, Any]:
    """The customer state of a merged read: dbt's row of the transaction, request-time features
    included (``EXACT_AT``: ``request_features.compute`` returns them as they are)."""
    return {**dbt_row, EXACT_AT: event_ts}


def _sample(conn: psycopg.Connection, size: int, since: datetime | None) -> list[_Served]:
    """Newest first: the check runs after every refresh, so the newest ingested hour is what it has not
    seen yet; a nested loop over the ``scored_at`` index and the unique ``transaction_id`` index."""
    exists = conn.execute("select to_regclass('monitoring.served_features')").fetchone()
    if exists is None or exists[0] is None:
        return []
    query = """
        select s.request_id, s.transaction_id, f.customer_id, f.merchant_id, s.event_ts, s.scored_at,
               case when coalesce(p.degraded, false) then %(degraded)s else s.speed_layer end as speed_layer,
               s.feature_versions, s.features
        from monitoring.served_features as s
        join features.customer_features as f on f.transaction_id = s.transaction_id
        left join monitoring.predictions as p on p.request_id = s.request_id
        where s.scored_at >= %(since)s
        order by s.scored_at desc
        limit %(size)s
    """
    params = {
        "since": since or datetime(1970, 1, 1, tzinfo=UTC),
        "size": size,
        "degraded": DEGRADED_SPEED_LAYER,
    }
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return [
            _Served(
                row["request_id"],
                row["transaction_id"],
                row["customer_id"],
                row["merchant_id"],
                row["event_ts"],
                row["scored_at"],
                row["speed_layer"],
                _json(row["feature_versions"]),
                _json(row["features"]),
            )
            for row in cur
        ]


def _json(value: Any) -> dict[str, Any]:
    return dict(json.loads(value) if isinstance(value, str) else value)


def _customer_rows(conn: psycopg.Connection, transaction_ids: list[str]) -> dict[str, dict[str, Any]]:
    if not transaction_ids:
        return {}
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "select * from features.customer_features where transaction_id = any(%s)", (transaction_ids,)
        )
        return {row["transaction_id"]: row for row in cur}


@dataclass(frozen=True)
class _Sql:
    """The dbt definitions, rendered from the manifest's macros (never restated here)."""

    macros: dict[str, str]
    relations: dict[str, str]

    @classmethod
    def from_manifest(cls) -> _Sql:
        manifest = json.loads(ensure_manifest().read_bytes())
        macros = {
            node["name"]: node["macro_sql"]
            for node in manifest["macros"].values()
            if node.get("package_name") == "rtml"
        }
        relations = {
            node["name"]: f'"{node["schema"]}"."{node.get("alias") or node["name"]}"'
            for node in manifest["nodes"].values()
            if node.get("resource_type") == "model"
        }
        return cls(macros, relations)

    def render(self, macro: str, *args: str) -> str:
        call = "{{ " + macro + "(" + ", ".join(json.dumps(a) for a in args) + ") }}"
        return jinja2.Environment(autoescape=False).from_string(self.macros[macro] + call).render()

    def customers_as_of(
        self, conn: psycopg.Connection, view: OnlineView, keys: set[tuple[str, datetime]]
    ) -> dict[tuple[str, datetime], dict[str, Any]]:
        """Each (customer, A): ``customer_features_latest`` as a build at A would have computed it,
        typed as the online store reads it."""
        if not keys:
            return {}
        stg = self.relations["stg_transactions"]
        # every column: the macros customer_features_latest.sql is built with, one customer at a time
        query = f"""
            select q.customer_id, q.as_of_ts, e.last_txn_ts,
                {self.render("customer_state_columns", "r")},
                e.known_merchant_ids
            from skew_customer_keys as q
            cross join lateral (
                select {self.render("customer_aggregates", "t", "q.as_of_ts")},
                    {self.render("customer_recent_merchants", "t", "q.as_of_ts")}
                from {stg} as t
                where t.customer_id = q.customer_id
                  and t.event_ts >= q.as_of_ts - interval '30 days' and t.event_ts < q.as_of_ts
            ) as r
            cross join lateral (
                select {self.render("customer_history", "t")}
                from {stg} as t
                where t.customer_id = q.customer_id and t.event_ts < q.as_of_ts
            ) as e
        """
        conn.execute(
            "create temp table if not exists skew_customer_keys (customer_id text, as_of_ts timestamptz)"
        )
        _load_keys(conn, "skew_customer_keys", keys)
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(query.encode())
            return {(row["customer_id"], row["as_of_ts"]): _typed(view, row) for row in cur}

    def merchants_on(
        self, conn: psycopg.Connection, view: OnlineView, keys: set[tuple[str, date]]
    ) -> dict[tuple[str, date], dict[str, Any]]:
        """Each (merchant, day): ``merchant_features_sql``, the macro ``merchant_features_latest`` is built
        with, for that day (features as of its start)."""
        if not keys:
            return {}
        query = self.render(
            "merchant_features_sql",
            "select merchant_id, feature_date from skew_merchant_keys",
            self.relations["stg_transactions"],
            self.relations["stg_labels"],
            self.relations["merchant_daily"],
        )
        conn.execute(
            "create temp table if not exists skew_merchant_keys (merchant_id text, feature_date date)"
        )
        _load_keys(conn, "skew_merchant_keys", keys)
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(query.encode())
            return {(row["merchant_id"], row["feature_date"]): _typed(view, row) for row in cur}


def _load_keys(conn: psycopg.Connection, table: str, keys: Iterable[tuple[Any, ...]]) -> None:
    """The session's temporary table of lookup keys (a join, not thousands of parameters)."""
    with conn.cursor() as cur:
        cur.execute(f"truncate {table}".encode())
        with cur.copy(f"copy {table} from stdin".encode()) as copy:
            for key in keys:
                copy.write_row(key)


def _typed(view: OnlineView, row: Mapping[str, Any]) -> dict[str, Any]:
    """A row as the online store decodes the same values (``schema``): NULL as the field's null value."""
    out: dict[str, Any] = {}
    for item in view.fields:
        value = row.get(item.name)
        if item.kind == "string_set":
            out[item.name] = frozenset(value or ())
        elif value is None:
            out[item.name] = math.nan if item.kind == "float64" else item.default
        elif item.kind == "float64":
            out[item.name] = float(value)
        else:
            out[item.name] = value
    return out

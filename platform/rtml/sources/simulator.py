"""Seeded card-transaction simulator with planted fraud patterns, delayed labels, dirty rows and drift.

Every UTC hour is generated on its own from RNGs seeded with ``(seed, hour index)``, so any window
gives the same rows however it is chunked. The customer and merchant populations are drawn once from
the seed. Internally rows are numeric (indices into small lookup arrays); strings are built only for
the rows that are returned. See docs/data.md for the data model.

Drift scenarios apply per row, to rows whose event time lies in an interval where the scenario is on
(``rtml.sources.scenarios``: the pinned settings plus the run-time timeline), and draw what they need
from streams of their own (``(seed, hour, 2 or 3, scenario)``): the rows without a scenario, and every
row before a switch, are the same whether or not it happens.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from rtml.config import IngestSettings, SimulatorSettings
from rtml.sources.scenarios import ScenarioTimeline
from rtml.sources.schema import CHANNELS, LABELS, TRANSACTIONS

DRIFT_SCENARIOS: tuple[str, ...] = ("amount_inflation", "new_fraud_pattern", "merchant_mix_shift")

# --- time ---------------------------------------------------------------------------------------------
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND_US = 1_000_000
HOUR_US = 3600 * _SECOND_US
DAY_US = 24 * HOUR_US
_MAX_LABEL_DELAY_US = 30 * DAY_US
_ID_SEQ = 10_000_000  # transaction_id = "t" + 14 digits: hour index * 10^7 + sequence within the hour
# Rows a scenario adds (new_fraud_pattern) number from here, so that no other row's id moves.
_SCENARIO_SEQ = 9_000_000
_NIGHT_HOURS = (0, 1, 2, 3, 4, 5)

# Volume by hour of day (UTC, the population is treated as one time zone): quiet nights, lunch and
# evening peaks; weekends start later and stay busy into the evening.
_WEEKDAY_PROFILE = np.array(
    [0.25, 0.15, 0.10, 0.08, 0.08, 0.12, 0.30, 0.60, 0.90, 1.10, 1.20, 1.35,
     1.50, 1.40, 1.30, 1.30, 1.40, 1.60, 1.75, 1.70, 1.50, 1.20, 0.80, 0.45]
)  # fmt: skip
_WEEKEND_PROFILE = np.array(
    [0.40, 0.30, 0.20, 0.12, 0.08, 0.08, 0.12, 0.25, 0.50, 0.85, 1.20, 1.45,
     1.60, 1.60, 1.50, 1.45, 1.45, 1.55, 1.65, 1.65, 1.50, 1.30, 1.00, 0.70]
)  # fmt: skip
_WEEKDAY_PROFILE = _WEEKDAY_PROFILE / _WEEKDAY_PROFILE.mean()
_WEEKEND_PROFILE = _WEEKEND_PROFILE / _WEEKEND_PROFILE.mean()
_WEEK_FACTOR = np.array([0.95, 0.95, 0.97, 1.00, 1.10, 1.15, 0.88])  # Monday .. Sunday
_WEEK_FACTOR = _WEEK_FACTOR / _WEEK_FACTOR.mean()

# --- geography ----------------------------------------------------------------------------------------
# Home countries of card holders (and most merchants), then countries that only show up abroad.
_HOME_COUNTRIES = ("DE", "FR", "NL", "ES", "IT", "GB", "CH", "PL", "SE", "US")
_HOME_WEIGHTS = np.array([0.20, 0.14, 0.07, 0.10, 0.10, 0.14, 0.05, 0.08, 0.05, 0.07])
_FOREIGN_ONLY = ("BR", "NG", "TR", "TH", "AE", "MX")
COUNTRIES: tuple[str, ...] = _HOME_COUNTRIES + _FOREIGN_ONLY
_COUNTRY_CURRENCY = {"GB": "GBP", "CH": "CHF", "PL": "PLN", "SE": "SEK", "US": "USD"}
_EURO = {"DE", "FR", "NL", "ES", "IT"}

# --- merchants ----------------------------------------------------------------------------------------
CATEGORIES: tuple[str, ...] = (
    "grocery", "restaurant", "fuel", "travel", "electronics",
    "fashion", "digital_goods", "gambling", "crypto", "atm",
)  # fmt: skip
_C = {name: i for i, name in enumerate(CATEGORIES)}
_MERCHANT_SHARE = np.array([0.20, 0.22, 0.08, 0.06, 0.07, 0.12, 0.10, 0.04, 0.03, 0.08])
_VOLUME_SHARE = np.array([0.28, 0.20, 0.09, 0.03, 0.04, 0.10, 0.12, 0.03, 0.01, 0.10])
# merchant_mix_shift: transaction volume moves strongly towards digital goods and travel.
_SHIFT_FACTOR = np.array([0.5, 0.6, 0.7, 4.0, 1.0, 1.0, 4.0, 1.0, 1.0, 0.8])
_AMOUNT_LOG_SHIFT = np.array([0.0, -0.1, 0.4, 2.0, 1.6, 0.8, -0.8, 0.5, 1.5, 1.0])  # vs the customer's base
# P(online) = clip(base + slope * customer's online preference)
_ONLINE_BASE = np.array([0.0, 0.0, 0.0, 0.5, 0.2, 0.0, 1.0, 1.0, 1.0, 0.0])
_ONLINE_SLOPE = np.array([0.3, 0.3, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
_HIGH_RISK_CATEGORIES = ("electronics", "digital_goods", "gambling", "crypto")
RISK_LEVELS: tuple[str, ...] = ("low", "medium", "high")
_RISK_FRAUD_WEIGHT = np.array([0.2, 1.0, 6.0])  # how strongly fraudsters prefer a merchant by risk

_POS, _ONLINE, _ATM = (CHANNELS.index(c) for c in ("pos", "online", "atm"))

# --- fraud patterns -----------------------------------------------------------------------------------
PATTERNS: tuple[str, ...] = (
    "legit", "account_takeover", "card_testing", "high_risk_night", "background", "daytime_low_risk",
)  # fmt: skip
_LEGIT, _ATO, _CARD_TESTING, _NIGHT, _BACKGROUND, _DAYTIME = range(len(PATTERNS))
_ATO_BURSTS_PER_TX = 0.0008  # bursts per legit transaction (3-8 tx each: ~0.45 % of volume)
_CARD_TESTING_RUNS_PER_HOUR = 0.00018  # runs per mean hourly volume (8-25 tx each: ~0.3 %)
_NIGHT_FRAUD_PER_HOUR = (0.006, 0.0003)  # per mean hourly volume, night / day (~0.16 %)
_BACKGROUND_FRAUD = 0.0002  # share of ordinary rows that are fraud without a planted pattern
_DAYTIME_FRAUD_PER_TX = 0.006  # drift scenario new_fraud_pattern, 08-20 h
_AMOUNT_INFLATION = 1.6

# --- dirty rows ---------------------------------------------------------------------------------------
DIRTY_KINDS: tuple[str, ...] = (
    "", "non_positive_amount", "amount_above_max", "unknown_currency",
    "empty_customer_id", "empty_merchant_id", "duplicate_transaction_id",
)  # fmt: skip
_DUPLICATE = DIRTY_KINDS.index("duplicate_transaction_id")


def _to_us(ts: datetime) -> int:
    """Microseconds since the epoch; naive datetimes are taken as UTC."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return (ts - _EPOCH) // timedelta(microseconds=1)


def hour_cycle(hour_index: int) -> float:
    """Expected volume of an hour relative to the mean hour (diurnal x weekly cycle)."""
    day = hour_index // 24
    weekday = (day + 3) % 7  # 1970-01-01 was a Thursday
    profile = _WEEKEND_PROFILE if weekday >= 5 else _WEEKDAY_PROFILE
    return float(profile[hour_index % 24] * _WEEK_FACTOR[weekday])


class _Pool:
    """Weighted sampling of merchants, optionally restricted to a country (vectorized)."""

    def __init__(self, eligible: np.ndarray, weight: np.ndarray, country: np.ndarray, n_countries: int):
        idx = np.flatnonzero(eligible)
        if idx.size == 0:  # tiny populations: fall back to every merchant
            idx = np.arange(eligible.size)
        idx = idx[np.argsort(country[idx], kind="stable")]
        self.merchants = idx
        self.cdf = np.cumsum(weight[idx])
        self.total = float(self.cdf[-1])
        # Per country: the cdf range of its merchants (empty countries fall back to all merchants).
        bounds = np.searchsorted(country[idx], np.arange(n_countries + 1))
        lo_cdf = np.r_[0.0, self.cdf][bounds[:-1]]
        hi_cdf = np.r_[0.0, self.cdf][bounds[1:]]
        empty = hi_cdf <= lo_cdf
        self.lo = np.where(empty, 0.0, lo_cdf)
        self.hi = np.where(empty, self.total, hi_cdf)

    def sample(self, u: np.ndarray, country: np.ndarray | None = None) -> np.ndarray:
        if country is None:
            target = u * self.total
        else:
            target = self.lo[country] + u * (self.hi[country] - self.lo[country])
        pos = np.minimum(np.searchsorted(self.cdf, target, side="right"), self.cdf.size - 1)
        return self.merchants[pos]


@dataclass(frozen=True)
class Population:
    """Card holders and merchants, drawn once from the seed."""

    customer_home: np.ndarray  # country index
    customer_cdf: np.ndarray  # cumulative activity weights (who transacts how often)
    customer_mu: np.ndarray  # log-normal amount parameters
    customer_sigma: np.ndarray
    customer_online: np.ndarray  # preference for online shopping, 0..1
    favourites: np.ndarray  # (customers, k) merchant indices in the home country
    merchant_category: np.ndarray
    merchant_country: np.ndarray
    merchant_risk: np.ndarray  # index into RISK_LEVELS (latent: not in the record schema)


_FAVOURITES = 6


def _population(seed: int, n_customers: int, n_merchants: int) -> tuple[Population, dict[str, _Pool]]:
    rng = np.random.default_rng([seed, 2**40])  # a key no hour index can reach
    n_home, n_all = len(_HOME_COUNTRIES), len(COUNTRIES)
    home = rng.choice(n_home, n_customers, p=_HOME_WEIGHTS).astype(np.int16)
    activity = rng.lognormal(0.0, 0.8, n_customers)
    mu = rng.normal(3.2, 0.45, n_customers)
    sigma = rng.uniform(0.45, 0.85, n_customers)
    online = rng.beta(2.0, 5.0, n_customers)

    category = rng.choice(len(CATEGORIES), n_merchants, p=_MERCHANT_SHARE).astype(np.int8)
    abroad = rng.random(n_merchants) < 0.10
    m_country = np.where(
        abroad,
        rng.integers(n_home, n_all, n_merchants),
        rng.choice(n_home, n_merchants, p=_HOME_WEIGHTS),
    ).astype(np.int16)
    risky_cat = np.isin(category, [_C[c] for c in _HIGH_RISK_CATEGORIES])
    u = rng.random(n_merchants)
    p_high, p_medium = np.where(risky_cat, 0.35, 0.03), np.where(risky_cat, 0.40, 0.20)
    risk = np.where(u < p_high, 2, np.where(u < p_high + p_medium, 1, 0)).astype(np.int8)
    # Popularity: a heavy-tailed merchant size scaled so categories get their volume share.
    popularity = rng.lognormal(0.0, 1.0, n_merchants) * (_VOLUME_SHARE / _MERCHANT_SHARE)[category]
    shifted = popularity * _SHIFT_FACTOR[category]

    everyone = np.ones(n_merchants, dtype=bool)
    fraud_weight = _RISK_FRAUD_WEIGHT[risk]
    pools = {
        "home": _Pool(everyone, popularity, m_country, n_all),
        "home_shifted": _Pool(everyone, shifted, m_country, n_all),
        "ato": _Pool(
            np.isin(
                category, [_C[c] for c in ("electronics", "fashion", "travel", "digital_goods", "crypto")]
            ),
            fraud_weight,
            m_country,
            n_all,
        ),
        "card_testing": _Pool(category == _C["digital_goods"], fraud_weight, m_country, n_all),
        "night": _Pool(
            np.isin(category, [_C[c] for c in ("gambling", "crypto", "electronics")]),
            fraud_weight,
            m_country,
            n_all,
        ),
        "daytime": _Pool(
            np.isin(category, [_C["grocery"], _C["fashion"]]) & (risk == 0), popularity, m_country, n_all
        ),
    }
    favourites = pools["home"].sample(rng.random((n_customers, _FAVOURITES)), home[:, None])
    population = Population(
        customer_home=home,
        customer_cdf=np.cumsum(activity) / activity.sum(),
        customer_mu=mu,
        customer_sigma=sigma,
        customer_online=online,
        favourites=favourites,
        merchant_category=category,
        merchant_country=m_country,
        merchant_risk=risk,
    )
    return population, pools


@dataclass
class _Hour:
    """Rows of one hour, sorted by (event_ts, transaction_id); attribute arrays empty in core mode."""

    ts: np.ndarray  # int64 us since the epoch
    tid: np.ndarray  # int64 hour index * 10^7 + sequence
    pattern: np.ndarray  # int8 index into PATTERNS
    dirty: np.ndarray  # int8 index into DIRTY_KINDS (core mode: 1 = some kind, 0 = clean)
    label_delay: np.ndarray  # int64 us
    customer: np.ndarray | None = None  # int index; n_customers = empty id
    merchant: np.ndarray | None = None  # int index; n_merchants = empty id
    category: np.ndarray | None = None
    amount: np.ndarray | None = None
    currency: np.ndarray | None = None  # index into the currency list; last = unknown code
    channel: np.ndarray | None = None
    country: np.ndarray | None = None

    def select(self, mask: np.ndarray) -> _Hour:
        out = copy.copy(self)
        for name, value in vars(self).items():
            if value is not None:
                setattr(out, name, value[mask])
        return out


def _runs(
    rng: np.random.Generator, n_runs: int, k_min: int, k_max: int, mean_gap_s: float, max_gap_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """Bursts of k_min..k_max rows in quick succession, each kept inside the hour (determinism).

    Returns the run number and the offset in the hour (us) of every row.
    """
    if n_runs == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    sizes = rng.integers(k_min, k_max + 1, n_runs)
    gaps = np.minimum(rng.exponential(mean_gap_s, sizes.sum()), max_gap_s) * _SECOND_US
    firsts = np.r_[0, np.cumsum(sizes)[:-1]].astype(np.int64)
    gaps[firsts] = 0
    offsets = np.cumsum(gaps)
    offsets -= np.repeat(offsets[firsts], sizes)
    span = offsets[np.cumsum(sizes) - 1]
    start = rng.random(n_runs) * (HOUR_US - 1 - span)
    run = np.repeat(np.arange(n_runs), sizes)
    return run, (np.repeat(start, sizes) + offsets).astype(np.int64)


class Simulator:
    """Deterministic card-transaction generator; see docs/data.md."""

    def __init__(
        self, simulator: SimulatorSettings, ingest: IngestSettings, timeline: ScenarioTimeline | Path
    ):
        """``ingest``: the currencies and the amount ceiling the rows are valid against. ``timeline``: the
        run-time drift scenarios, or the file that holds them (``rtml.sources.scenarios.timeline_path``),
        read now and again by :meth:`reload_scenarios` (a long-lived simulator)."""
        self.settings = s = simulator
        if s.drift_scenario is not None and s.drift_scenario not in DRIFT_SCENARIOS:
            raise ValueError(
                f"unknown drift scenario {s.drift_scenario!r}; valid: {', '.join(DRIFT_SCENARIOS)}"
            )
        if not ingest.currencies:
            raise ValueError("ingest.currencies is empty")
        self.seed = s.seed
        self.start_us = _to_us(s.start)
        self._timeline_file = timeline if isinstance(timeline, Path) else None
        self._timeline_stamp: tuple[int, int] | None = None
        self._set_timeline(timeline if isinstance(timeline, ScenarioTimeline) else self._read_timeline())
        self.per_hour = s.transactions_per_day / 24
        self.population, self._pools = _population(s.seed, s.customers, s.merchants)
        self.n_customers, self.n_merchants = s.customers, s.merchants
        # Amounts of clean rows stay well below the validation ceiling.
        self.max_amount = ingest.max_amount
        self.amount_cap = min(20_000.0, 0.9 * ingest.max_amount)

        currencies = list(ingest.currencies)
        fallback = 0  # a country whose currency is not allowed pays in the first allowed one
        codes = [_COUNTRY_CURRENCY.get(c, "EUR" if c in _EURO else "USD") for c in COUNTRIES]
        self._country_currency = np.array(
            [currencies.index(code) if code in currencies else fallback for code in codes], dtype=np.int8
        )
        bad = next(code for code in ("XXX", "ZZZ", "QQQ") if code not in currencies)
        self._currency_codes = pa.array([*currencies, bad], pa.string())
        self._bad_currency = len(currencies)
        self._customer_width = max(7, len(str(self.n_customers - 1)))
        self._merchant_width = max(6, len(str(self.n_merchants - 1)))
        self._categories = pa.array(CATEGORIES, pa.string())
        self._channels = pa.array(CHANNELS, pa.string())
        self._countries = pa.array(COUNTRIES, pa.string())

    # --- drift scenarios ----------------------------------------------------------------------------
    def _read_timeline(self) -> ScenarioTimeline:
        self._timeline_stamp = self._stamp()
        return ScenarioTimeline.load(self._timeline_file) if self._timeline_file else self.timeline

    def _stamp(self) -> tuple[int, int] | None:
        """The timeline file's modification time and size: a cheap test for a change."""
        try:
            stat = self._timeline_file.stat() if self._timeline_file else None
        except FileNotFoundError:
            return None
        return (stat.st_mtime_ns, stat.st_size) if stat else None

    def _set_timeline(self, timeline: ScenarioTimeline) -> None:
        self.timeline = timeline
        s = self.settings
        pinned = []
        if s.drift_scenario is not None:
            pinned = [(s.drift_scenario, _to_us(s.drift_start or s.start), None)]
        run_time = [
            (i.scenario, _to_us(i.start), None if i.stop is None else _to_us(i.stop))
            for i in timeline.intervals
            if i.scenario in DRIFT_SCENARIOS  # a name from a newer version is ignored, not fatal
        ]
        # scenario -> [lo, hi) intervals in us since the epoch (hi None: still on)
        self._intervals: dict[str, list[tuple[int, int | None]]] = {}
        for name, lo, hi in pinned + run_time:
            self._intervals.setdefault(name, []).append((lo, hi))

    def reload_scenarios(self) -> bool:
        """Read the run-time timeline again if its file changed (a long-lived process: the traffic
        generator, before each row); whether the scenarios changed."""
        if self._stamp() == self._timeline_stamp:
            return False
        timeline = self._read_timeline()
        if timeline == self.timeline:
            return False
        self._set_timeline(timeline)
        return True

    def scenarios_at(self, ts: datetime) -> list[str]:
        """The scenarios that apply to a row with event time ``ts``."""
        return [name for name in DRIFT_SCENARIOS if self._active(name, np.array([_to_us(ts)]))[0]]

    def scenarios_between(self, start: datetime, end: datetime) -> list[str]:
        """The scenarios on at some time of [start, end) (the hourly ingestion records them)."""
        lo, hi = _to_us(start), _to_us(end)
        return [
            name
            for name in DRIFT_SCENARIOS
            if any(a < hi and (b is None or b > lo) for a, b in self._intervals.get(name, ()))
        ]

    def _active(self, scenario: str, ts: np.ndarray) -> np.ndarray:
        """Per row (event times in us): whether ``scenario`` is on at its time."""
        on = np.zeros(ts.size, dtype=bool)
        for lo, hi in self._intervals.get(scenario, ()):
            on |= (ts >= lo) & (ts < hi if hi is not None else True)
        return on

    def _touches(self, scenario: str, h: int) -> bool:
        """Whether ``scenario`` is on at any time of hour h (else the hour needs none of its work)."""
        lo, hi = h * HOUR_US, (h + 1) * HOUR_US
        return any(a < hi and (b is None or b > lo) for a, b in self._intervals.get(scenario, ()))

    # --- public API ---------------------------------------------------------------------------------
    def transactions(self, start: datetime, end: datetime) -> pa.Table:
        """Transactions with event_ts in [start, end), schema TRANSACTIONS, sorted by (event_ts, id)."""
        hours = [h.select((h.ts >= lo) & (h.ts < hi)) for h, lo, hi in self._window_hours(start, end, True)]
        return self._transactions_table(hours)

    def iter_transactions(
        self, start: datetime, end: datetime, hours_per_chunk: int = 1
    ) -> Iterator[pa.Table]:
        """The same rows as transactions(start, end), in chunks of hours_per_chunk hours."""
        if hours_per_chunk < 1:
            raise ValueError("hours_per_chunk must be >= 1")
        step = timedelta(hours=hours_per_chunk)
        chunk_start = start
        while chunk_start < end:
            chunk_end = min(chunk_start + step, end)
            yield self.transactions(chunk_start, chunk_end)
            chunk_start = chunk_end

    def labels(self, start: datetime, end: datetime) -> pa.Table:
        """Labels whose label_ts is in [start, end), schema LABELS, sorted by (label_ts, id).

        Each clean transaction gets exactly one label; dirty rows get none. Only hours that can have
        labels landing in the window are regenerated (back to the longest delay, 30 days).
        """
        lo, hi = _to_us(start), _to_us(end)
        ts, tid, fraud = [], [], []
        first_hour = max((lo - _MAX_LABEL_DELAY_US) // HOUR_US, self.start_us // HOUR_US)
        for h in range(first_hour, -(-hi // HOUR_US)):
            hour = self._hour(h, with_attributes=False)
            label_ts = hour.ts + hour.label_delay
            keep = (hour.dirty == 0) & (hour.ts >= self.start_us) & (label_ts >= lo) & (label_ts < hi)
            ts.append(label_ts[keep])
            tid.append(hour.tid[keep])
            fraud.append(hour.pattern[keep] != _LEGIT)
        label_ts, ids, is_fraud = (
            np.concatenate(x) if x else np.zeros(0, np.int64) for x in (ts, tid, fraud)
        )
        order = np.lexsort((ids, label_ts))
        label_ts, ids, is_fraud = label_ts[order], ids[order], is_fraud[order].astype(bool)
        source = np.where(is_fraud, "chargeback", "confirmed")
        return pa.Table.from_arrays(
            [
                self._ids(ids),
                pa.array(is_fraud, pa.bool_()),
                _timestamps(label_ts),
                pa.array(source, pa.string()),
            ],
            schema=LABELS,
        )

    def truth(self, start: datetime, end: datetime) -> pa.Table:
        """Ground truth for analysis and tests: per transaction of [start, end) (same order as
        transactions()), is_fraud, the fraud pattern that made it and the dirty-row kind ('' = clean)."""
        hours = [h.select((h.ts >= lo) & (h.ts < hi)) for h, lo, hi in self._window_hours(start, end, True)]
        pattern = np.concatenate([h.pattern for h in hours]) if hours else np.zeros(0, np.int8)
        dirty = np.concatenate([h.dirty for h in hours]) if hours else np.zeros(0, np.int8)
        tid = np.concatenate([h.tid for h in hours]) if hours else np.zeros(0, np.int64)
        ts = np.concatenate([h.ts for h in hours]) if hours else np.zeros(0, np.int64)
        return pa.table(
            {
                "transaction_id": self._ids(tid),
                "event_ts": _timestamps(ts),
                "is_fraud": pa.array((pattern != _LEGIT) & (dirty == 0)),
                "pattern": pa.array(PATTERNS, pa.string()).take(pa.array(pattern)),
                "dirty_kind": pa.array(DIRTY_KINDS, pa.string()).take(pa.array(dirty)),
            }
        )

    # --- windows ------------------------------------------------------------------------------------
    def _window_hours(
        self, start: datetime, end: datetime, with_attributes: bool
    ) -> Iterator[tuple[_Hour, int, int]]:
        """The hours overlapping [start, end) (and not before sim_start), with the clipped bounds."""
        lo, hi = max(_to_us(start), self.start_us), _to_us(end)
        if hi <= lo:
            return
        for h in range(lo // HOUR_US, -(-hi // HOUR_US)):
            yield self._hour(h, with_attributes), lo, hi

    def _ids(self, tid: np.ndarray) -> pa.Array:
        return _prefixed_ids("t", tid, 14)

    def _transactions_table(self, hours: list[_Hour]) -> pa.Table:
        def cat(name: str) -> np.ndarray:
            arrays = [getattr(h, name) for h in hours]
            return np.concatenate(arrays) if arrays else np.zeros(0, np.int64)

        customer, merchant = cat("customer"), cat("merchant")
        columns = [
            self._ids(cat("tid")),
            _timestamps(cat("ts")),
            _prefixed_ids(
                "c", customer := cat("customer"), self._customer_width, customer == self.n_customers
            ),
            _prefixed_ids(
                "m", merchant := cat("merchant"), self._merchant_width, merchant == self.n_merchants
            ),
            self._categories.take(pa.array(cat("category"), pa.int8())),
            pa.array(cat("amount"), pa.float64()),
            self._currency_codes.take(pa.array(cat("currency"), pa.int8())),
            self._channels.take(pa.array(cat("channel"), pa.int8())),
            self._countries.take(pa.array(cat("country"), pa.int16())),
        ]
        return pa.Table.from_arrays(columns, schema=TRANSACTIONS)

    # --- one hour -----------------------------------------------------------------------------------
    def _hour(self, h: int, with_attributes: bool) -> _Hour:
        """All rows of UTC hour h. The core stream (counts, times, fraud, dirty rows, label delays)
        is drawn from rng([seed, h]); attributes from rng([seed, h, 1]), so labels can skip them. Drift
        scenarios change rows from streams of their own (``_with_new_fraud_pattern``, ``_legit``), never
        from these two."""
        core = np.random.default_rng([self.seed, h])
        cycle = hour_cycle(h)
        night = h % 24 in _NIGHT_HOURS

        # Row counts and offsets within the hour, per pattern (each group contiguous before sorting).
        n_legit = int(core.poisson(self.per_hour * cycle))
        legit_off = core.integers(0, HOUR_US, n_legit)
        ato_run, ato_off = _runs(core, int(core.poisson(n_legit * _ATO_BURSTS_PER_TX)), 3, 8, 40.0, 300.0)
        ct_run, ct_off = _runs(
            core, int(core.poisson(self.per_hour * _CARD_TESTING_RUNS_PER_HOUR)), 8, 25, 8.0, 60.0
        )
        night_rate = _NIGHT_FRAUD_PER_HOUR[0] if night else _NIGHT_FRAUD_PER_HOUR[1]
        night_off = core.integers(0, HOUR_US, int(core.poisson(self.per_hour * night_rate)))
        n_day = 0  # new_fraud_pattern's rows come from a stream of their own: _with_new_fraud_pattern
        day_off = core.integers(0, HOUR_US, n_day)

        groups = [legit_off, ato_off, ct_off, night_off, day_off]
        codes = [_LEGIT, _ATO, _CARD_TESTING, _NIGHT, _DAYTIME]
        offsets = np.concatenate(groups)
        pattern = np.repeat(np.array(codes, np.int8), [g.size for g in groups])
        n = offsets.size
        if n >= _SCENARIO_SEQ:
            raise ValueError(
                f"hour {h} has {n} rows; at most {_SCENARIO_SEQ - 1} fit the transaction_id format"
            )
        n_background = int(core.binomial(n_legit, _BACKGROUND_FRAUD))
        if n_background:
            pattern[core.choice(n_legit, n_background, replace=False)] = _BACKGROUND

        order = np.argsort(offsets, kind="stable")
        ts = h * HOUR_US + offsets[order]
        pattern_sorted = pattern[order]
        tid = h * _ID_SEQ + np.arange(n, dtype=np.int64)

        # Label delays: legit confirmed after 2-5 days, fraud charged back after ~7 days (1-30).
        delay = core.uniform(2 * DAY_US, 5 * DAY_US, n).astype(np.int64)
        fraud = pattern_sorted != _LEGIT
        delay[fraud] = np.clip(core.lognormal(np.log(7 * DAY_US), 0.5, int(fraud.sum())), DAY_US, 30 * DAY_US)

        # Dirty rows replace ordinary legit rows (planted fraud stays intact).
        dirty = np.zeros(n, np.int8)
        candidates = np.flatnonzero(pattern_sorted == _LEGIT)
        n_dirty = min(int(core.binomial(n, self.settings.dirty_share)), candidates.size) if n else 0
        dirty_rows = (
            np.sort(core.choice(candidates, n_dirty, replace=False)) if n_dirty else np.zeros(0, np.int64)
        )
        dirty[dirty_rows] = 1

        hour = _Hour(ts=ts, tid=tid, pattern=pattern_sorted, dirty=dirty, label_delay=delay)
        if with_attributes:
            self._attributes(hour, h, order, [legit_off, ato_run, ct_run, night_off.size, n_day], dirty_rows)
        if self._touches("new_fraud_pattern", h) and 8 <= h % 24 < 20:
            hour = self._with_new_fraud_pattern(hour, h, n_legit, with_attributes)
        return hour

    def _with_new_fraud_pattern(self, hour: _Hour, h: int, n_legit: int, with_attributes: bool) -> _Hour:
        """Drift scenario new_fraud_pattern: daytime fraud rows added to the hour where the scenario is on.
        The hour's whole draw comes from rng([seed, h, 2, k]) (attributes from rng([seed, h, 3, k])), and
        the rows before the switch are dropped: a row after it is the same whenever the switch happened,
        and its id (from _SCENARIO_SEQ on) moves no other row's."""
        k = DRIFT_SCENARIOS.index("new_fraud_pattern")
        rng = np.random.default_rng([self.seed, h, 2, k])
        n = int(rng.poisson(n_legit * _DAYTIME_FRAUD_PER_TX))
        ts = h * HOUR_US + rng.integers(0, HOUR_US, n)
        delay = np.clip(rng.lognormal(np.log(7 * DAY_US), 0.5, n), DAY_US, 30 * DAY_US).astype(np.int64)
        extra = _Hour(
            ts=ts,
            tid=h * _ID_SEQ + _SCENARIO_SEQ + np.arange(n, dtype=np.int64),
            pattern=np.full(n, _DAYTIME, np.int8),
            dirty=np.zeros(n, np.int8),
            label_delay=delay,
        )
        if with_attributes:
            attributes = np.random.default_rng([self.seed, h, 3, k])
            cust, merch, amount, channel, country = self._daytime_low_risk(attributes, n)
            currency = self._country_currency[country]  # card holders at home: the home currency
            amount = np.where(self._active("amount_inflation", ts), amount * _AMOUNT_INFLATION, amount)
            extra.customer, extra.merchant = cust.astype(np.int32), merch.astype(np.int32)
            extra.amount = np.round(np.clip(amount, 0.5, self.amount_cap), 2)
            extra.category = self.population.merchant_category[merch]
            extra.channel, extra.country, extra.currency = (
                channel.astype(np.int8),
                country.astype(np.int16),
                currency,
            )
        extra = extra.select(self._active("new_fraud_pattern", ts))
        merged = copy.copy(hour)
        for name, value in vars(hour).items():
            if value is not None:
                setattr(merged, name, np.concatenate([value, getattr(extra, name)]))
        return merged.select(np.lexsort((merged.tid, merged.ts)))

    def _attributes(
        self, hour: _Hour, h: int, order: np.ndarray, groups: list, dirty_rows: np.ndarray
    ) -> None:
        """Customer, merchant, amount, channel, country and currency of every row, then dirty kinds."""
        rng = np.random.default_rng([self.seed, h, 1])
        legit_off, ato_run, ct_run, n_night, n_day = groups
        parts = [
            self._legit(rng, h, legit_off),
            self._account_takeover(rng, ato_run),
            self._card_testing(rng, ct_run),
            self._high_risk_night(rng, n_night),
            self._daytime_low_risk(rng, n_day),
        ]
        cust, merch, amount, channel, country = (
            np.concatenate([p[i] for p in parts])[order] for i in range(5)
        )
        if self._touches("amount_inflation", h):
            amount = np.where(self._active("amount_inflation", hour.ts), amount * _AMOUNT_INFLATION, amount)
        amount = np.round(np.clip(amount, 0.5, self.amount_cap), 2)
        home = self.population.customer_home[cust]
        # Currency follows the country where the card was used; a few rows are billed in the home currency.
        currency = np.where(
            rng.random(cust.size) < 0.95, self._country_currency[country], self._country_currency[home]
        )
        hour.customer, hour.merchant, hour.amount = cust.astype(np.int32), merch.astype(np.int32), amount
        hour.category = self.population.merchant_category[merch]
        hour.channel, hour.country, hour.currency = (
            channel.astype(np.int8),
            country.astype(np.int16),
            currency,
        )
        self._make_dirty(rng, hour, dirty_rows)

    def _legit(self, rng: np.random.Generator, h: int, offsets: np.ndarray) -> tuple[np.ndarray, ...]:
        pop = self.population
        n = offsets.size
        # Sorted needles make the search cache-friendly (3x faster); the order does not matter because
        # every other per-row draw, the event time included, is i.i.d.
        cust = np.minimum(
            np.searchsorted(pop.customer_cdf, np.sort(rng.random(n)), side="right"), self.n_customers - 1
        )
        home = pop.customer_home[cust]
        merch = self._merchants(rng, cust, home, shift=False)
        if self._touches("merchant_mix_shift", h):
            # The shifted choice of every row from a stream of its own, kept where the scenario is on.
            k = DRIFT_SCENARIOS.index("merchant_mix_shift")
            shifted = self._merchants(np.random.default_rng([self.seed, h, 3, k]), cust, home, shift=True)
            merch = np.where(self._active("merchant_mix_shift", h * HOUR_US + offsets), shifted, merch)
        category = pop.merchant_category[merch]
        p_online = np.clip(_ONLINE_BASE[category] + _ONLINE_SLOPE[category] * pop.customer_online[cust], 0, 1)
        channel = np.where(category == _C["atm"], _ATM, np.where(rng.random(n) < p_online, _ONLINE, _POS))
        # Card present: where the merchant is; online: where the card holder is.
        country = np.where(channel == _ONLINE, home, pop.merchant_country[merch])
        log_amount = (
            pop.customer_mu[cust]
            + _AMOUNT_LOG_SHIFT[category]
            + pop.customer_sigma[cust] * rng.standard_normal(n)
        )
        amount = np.exp(log_amount)
        amount = np.where(category == _C["atm"], np.maximum(np.round(amount / 10) * 10, 20), amount)
        return cust, merch, amount, channel, country

    def _merchants(
        self, rng: np.random.Generator, cust: np.ndarray, home: np.ndarray, shift: bool
    ) -> np.ndarray:
        """Most purchases at a favourite merchant, else a popular one at home, sometimes anywhere;
        merchant_mix_shift: fewer favourites, more digital goods and travel."""
        n = cust.size
        u = rng.random(n)
        p_favourite = 0.3 if shift else 0.6
        pool = self._pools["home_shifted" if shift else "home"]
        merch = self.population.favourites[cust, rng.integers(0, _FAVOURITES, n)]
        at_home = (u >= p_favourite) & (u < 0.88 + 0.12 * p_favourite)
        anywhere = u >= 0.88 + 0.12 * p_favourite
        merch[at_home] = pool.sample(rng.random(int(at_home.sum())), home[at_home])
        merch[anywhere] = pool.sample(rng.random(int(anywhere.sum())))
        return merch

    def _fraud_customers(self, rng: np.random.Generator, run: np.ndarray) -> np.ndarray:
        """One random (compromised) card per run, repeated over its rows."""
        n_runs = int(run.max()) + 1 if run.size else 0
        return rng.integers(0, self.n_customers, n_runs)[run]

    def _foreign_or_home(
        self, rng: np.random.Generator, home: np.ndarray, p_foreign: float, run: np.ndarray
    ) -> np.ndarray:
        n_runs = int(run.max()) + 1 if run.size else 0
        foreign = rng.random(n_runs) < p_foreign
        elsewhere = (home + rng.integers(1, len(COUNTRIES), run.size)) % len(COUNTRIES)
        return np.where(foreign[run], elsewhere, home)

    def _account_takeover(self, rng: np.random.Generator, run: np.ndarray) -> tuple[np.ndarray, ...]:
        """3-8 large online purchases within minutes at merchants new to the card, often abroad."""
        pop = self.population
        cust = self._fraud_customers(rng, run)
        merch = self._pools["ato"].sample(rng.random(run.size))
        country = self._foreign_or_home(rng, pop.customer_home[cust], 0.7, run)
        cat_shift = _AMOUNT_LOG_SHIFT[pop.merchant_category[merch]]
        amount = np.exp(pop.customer_mu[cust] + 1.8 + 0.5 * cat_shift + 0.5 * rng.standard_normal(run.size))
        return cust, merch, amount, np.full(run.size, _ONLINE), country

    def _card_testing(self, rng: np.random.Generator, run: np.ndarray) -> tuple[np.ndarray, ...]:
        """Many tiny amounts in quick succession at one digital-goods merchant per run."""
        pop = self.population
        cust = self._fraud_customers(rng, run)
        n_runs = int(run.max()) + 1 if run.size else 0
        merch = self._pools["card_testing"].sample(rng.random(n_runs))[run]
        country = self._foreign_or_home(rng, pop.customer_home[cust], 0.5, run)
        amount = np.round(rng.uniform(0.5, 3.0, run.size), 2)
        return cust, merch, amount, np.full(run.size, _ONLINE), country

    def _high_risk_night(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
        """Larger online amounts at gambling, crypto and electronics merchants, mostly at night."""
        pop = self.population
        cust = rng.integers(0, self.n_customers, n)
        merch = self._pools["night"].sample(rng.random(n))
        country = self._foreign_or_home(rng, pop.customer_home[cust], 0.4, np.arange(n))
        cat_shift = _AMOUNT_LOG_SHIFT[pop.merchant_category[merch]]
        amount = np.exp(pop.customer_mu[cust] + cat_shift + 1.0 + 0.6 * rng.standard_normal(n))
        return cust, merch, amount, np.full(n, _ONLINE), country

    def _daytime_low_risk(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
        """Drift scenario new_fraud_pattern: mid-size online fraud at low-risk grocery/fashion merchants
        of the home country in daytime; none of the planted signals of the other patterns."""
        pop = self.population
        cust = rng.integers(0, self.n_customers, n)
        home = pop.customer_home[cust]
        merch = self._pools["daytime"].sample(rng.random(n), home)
        amount = np.exp(pop.customer_mu[cust] + 1.0 + 0.3 * rng.standard_normal(n))
        return cust, merch, amount, np.full(n, _ONLINE), home

    def _make_dirty(self, rng: np.random.Generator, hour: _Hour, rows: np.ndarray) -> None:
        """Corrupt the chosen rows, one kind each, so that validation has something to catch."""
        assert hour.amount is not None and hour.currency is not None
        assert hour.customer is not None and hour.merchant is not None
        kind = rng.integers(1, len(DIRTY_KINDS), rows.size).astype(np.int8)
        # A duplicate copies the id of an earlier clean row; without one it becomes a bad amount.
        clean = np.flatnonzero(hour.dirty == 0)
        earlier_clean = np.searchsorted(clean, rows)
        kind[(kind == _DUPLICATE) & (earlier_clean == 0)] = 1
        for k, name in enumerate(DIRTY_KINDS):
            r = rows[kind == k]
            if name == "non_positive_amount":
                hour.amount[r] = np.where(
                    rng.random(r.size) < 0.2, 0.0, -np.round(rng.uniform(0.01, 500, r.size), 2)
                )
            elif name == "amount_above_max":
                hour.amount[r] = np.round(rng.uniform(1.01, 3.0, r.size) * self.max_amount, 2)
            elif name == "unknown_currency":
                hour.currency[r] = self._bad_currency
            elif name == "empty_customer_id":
                hour.customer[r] = self.n_customers
            elif name == "empty_merchant_id":
                hour.merchant[r] = self.n_merchants
            elif name == "duplicate_transaction_id":
                pick = (rng.random(r.size) * earlier_clean[kind == k]).astype(np.int64)
                hour.tid[r] = hour.tid[clean[pick]]
        hour.dirty[rows] = kind
        if (kind == _DUPLICATE).any():  # a copied id may break the (event_ts, id) order on equal times
            resort = np.lexsort((hour.tid, hour.ts))
            for name, value in list(hour.__dict__.items()):
                if value is not None:
                    setattr(hour, name, value[resort])


def _timestamps(us: np.ndarray) -> pa.Array:
    return pa.array(us.astype(np.int64).view("datetime64[us]"), pa.timestamp("us", tz="UTC"))


_DIGIT_QUADS = np.array([list(f"{i:04d}".encode()) for i in range(10_000)], np.uint8)


def _prefixed_ids(prefix: str, numbers: np.ndarray, width: int, empty: np.ndarray | None = None) -> pa.Array:
    """Strings prefix + zero-padded number, built straight into an Arrow buffer (no Python objects).

    Rows flagged in ``empty`` become empty strings (dirty rows).
    """
    n = numbers.size
    numbers = numbers.astype(np.int64)
    chars = np.empty((n, width + 1), np.uint8)
    chars[:, 0] = ord(prefix)
    # Four digits at a time through a lookup table: far fewer integer divisions than digit by digit.
    groups = -(-width // 4)
    powers = 10_000 ** np.arange(groups - 1, -1, -1, dtype=np.int64)
    quads = _DIGIT_QUADS[(numbers[:, None] // powers) % 10_000].reshape(n, groups * 4)
    chars[:, 1:] = quads[:, groups * 4 - width :]
    lengths = np.full(n, width + 1, np.int64)
    if empty is not None and empty.any():
        chars = chars[~empty]
        lengths[empty] = 0
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(chars.tobytes()))

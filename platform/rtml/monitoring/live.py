"""Live performance of the served model: the prediction log (``monitoring.predictions``) joined with the
labels that have arrived since (``staging.stg_labels``, the newest label event per transaction), one
figure per UTC day (of the transaction's event time) and model version.

* Days: the last ``live_metrics_days`` days up to the day of the newest prediction (not the wall clock,
  so replayed or simulated history behaves like live traffic). That newest day is still filling up:
  it is stored with ``complete = false``; the published figures are those of the latest complete day.
* A transaction scored more than once by the same version (a client retry) counts once, with its
  latest score: a retry must not weigh twice.
* ROC AUC and PR AUC (average precision, as in training) need both classes among a day's labelled
  predictions; precision and recall treat ``review`` and ``decline`` as flagged. Undefined figures are
  stored as NULL and not published.

Results go to ``monitoring.live_model_performance`` (upserted by day and version) and, through
:func:`samples`, to the ``rtml_live_*`` gauges.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import psycopg
from sklearn.metrics import average_precision_score, roc_auc_score

from rtml import ddl
from rtml.monitoring.metrics import Sample
from rtml.monitoring.predictions import TABLE as PREDICTIONS
from rtml.training.dataset import as_utc

TABLE = "monitoring.live_model_performance"
LABELS = "staging.stg_labels"
FLAGGED = ("review", "decline")
METRICS = ("roc_auc", "pr_auc", "precision", "recall")

DDL = """
create schema if not exists monitoring;
create table if not exists monitoring.live_model_performance (
    day            date not null,
    model_version  text not null,
    predictions    integer not null,
    labelled       integer not null,
    frauds         integer not null,
    flagged        integer not null,
    roc_auc        double precision,
    pr_auc         double precision,
    precision      double precision,
    recall         double precision,
    complete       boolean not null,
    computed_at    timestamptz not null,
    primary key (day, model_version)
);
"""

QUERY = f"""
with scored as (
    select distinct on (transaction_id, model_version)
        transaction_id, model_version, probability, decision,
        (event_ts at time zone 'UTC')::date as day
    from {PREDICTIONS}
    where event_ts >= %(start)s and event_ts < %(end)s
    order by transaction_id, model_version, scored_at desc, request_id desc
),
labels as (
    -- the newest label event of each scored transaction (the order training_set uses)
    select distinct on (l.transaction_id) l.transaction_id, l.is_fraud
    from {LABELS} as l
    where l.transaction_id in (select transaction_id from scored)
    order by l.transaction_id, l.label_ts desc, l.label_source
)
select s.day, s.model_version, s.probability, s.decision, l.is_fraud
from scored as s left join labels as l on l.transaction_id = s.transaction_id
"""


class LivePerformanceError(ValueError):
    """Live performance that cannot be computed; the message says why."""


@dataclass(frozen=True)
class DayPerformance:
    day: date
    model_version: str
    predictions: int
    labelled: int
    frauds: int
    flagged: int
    """Labelled predictions decided ``review`` or ``decline``."""
    roc_auc: float | None
    pr_auc: float | None
    precision: float | None
    recall: float | None
    complete: bool

    def metrics(self) -> dict[str, float]:
        """The defined figures."""
        values = {name: getattr(self, name) for name in METRICS}
        return {name: value for name, value in values.items() if value is not None}


@dataclass(frozen=True)
class LivePerformance:
    first_day: date
    last_day: date
    """The day of the newest prediction (incomplete)."""
    days: list[DayPerformance]
    """Days with predictions, oldest first; per day the versions in name order."""

    @property
    def latest_complete(self) -> list[DayPerformance]:
        """Every version's figures of the latest complete day with predictions."""
        complete = [day for day in self.days if day.complete]
        if not complete:
            return []
        latest = complete[-1].day
        return [day for day in complete if day.day == latest]


def compute(database_url: str, days: int, *, as_of: datetime | None = None) -> LivePerformance:
    """Figures for the ``days`` days up to the day of ``as_of`` (default: the newest prediction)."""
    if days <= 0:
        raise LivePerformanceError(f"live_metrics_days must be positive, not {days}")
    with psycopg.connect(database_url) as conn:
        for relation in (PREDICTIONS, LABELS):
            found = conn.execute("select to_regclass(%s)", (relation,)).fetchone()
            if found is None or found[0] is None:
                raise LivePerformanceError(f"{relation} does not exist in this database")
        if as_of is None:
            newest = conn.execute(f"select max(event_ts) from {PREDICTIONS}").fetchone()
            if newest is None or newest[0] is None:
                raise LivePerformanceError(f"{PREDICTIONS} is empty: nothing has been scored yet")
            as_of = newest[0]
        last_day = as_utc(as_of).astimezone(UTC).date()
        first_day = last_day - timedelta(days=days - 1)
        start = datetime.combine(first_day, datetime.min.time(), UTC)
        end = datetime.combine(last_day + timedelta(days=1), datetime.min.time(), UTC)
        rows = conn.execute(QUERY, {"start": start, "end": end}).fetchall()
    frame = pd.DataFrame(rows, columns=["day", "model_version", "probability", "decision", "is_fraud"])
    results = []
    for _, group in frame.groupby(["day", "model_version"], sort=True):
        day: date = group["day"].iloc[0]
        results.append(evaluate(group, day, str(group["model_version"].iloc[0]), complete=day < last_day))
    return LivePerformance(first_day, last_day, results)


def evaluate(frame: pd.DataFrame, day: date, model_version: str, *, complete: bool) -> DayPerformance:
    """One day and version: ``frame`` has probability, decision, is_fraud (None = no label yet)."""
    labelled = frame[frame["is_fraud"].notna()]
    y = labelled["is_fraud"].astype(bool).to_numpy()
    scores = labelled["probability"].to_numpy(dtype=float)
    flagged = labelled["decision"].isin(FLAGGED).to_numpy()
    frauds, caught = int(y.sum()), int((y & flagged).sum())
    both = 0 < frauds < len(y)
    return DayPerformance(
        day=day,
        model_version=str(model_version),
        predictions=len(frame),
        labelled=len(y),
        frauds=frauds,
        flagged=int(flagged.sum()),
        roc_auc=float(roc_auc_score(y, scores)) if both else None,
        pr_auc=float(average_precision_score(y, scores)) if both else None,
        precision=caught / int(flagged.sum()) if both and flagged.any() else None,
        recall=caught / frauds if both else None,
        complete=complete,
    )


def ensure_table(database_url: str) -> None:
    ddl.ensure(database_url, DDL, lock=f"rtml.{TABLE}")


def store(database_url: str, performance: LivePerformance) -> int:
    """Upsert every day's figures (a later run replaces a day as more labels arrive); rows written."""
    ensure_table(database_url)
    now = datetime.now(UTC)
    rows = [
        (
            d.day,
            d.model_version,
            d.predictions,
            d.labelled,
            d.frauds,
            d.flagged,
            *(_nullable(getattr(d, name)) for name in METRICS),
            d.complete,
            now,
        )
        for d in performance.days
    ]
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        cur.executemany(
            f"insert into {TABLE} (day, model_version, predictions, labelled, frauds, flagged, roc_auc,"
            " pr_auc, precision, recall, complete, computed_at)"
            " values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " on conflict (day, model_version) do update set predictions = excluded.predictions,"
            " labelled = excluded.labelled, frauds = excluded.frauds, flagged = excluded.flagged,"
            " roc_auc = excluded.roc_auc, pr_auc = excluded.pr_auc, precision = excluded.precision,"
            " recall = excluded.recall, complete = excluded.complete, computed_at = excluded.computed_at",
            rows,
        )
    return len(rows)


def _nullable(value: float | None) -> float | None:
    return None if value is None or np.isnan(value) else value


def samples(performance: LivePerformance) -> list[Sample]:
    """``rtml_live_model_metric`` and ``rtml_live_labelled_predictions`` of the latest complete day."""
    out: list[Sample] = []
    for day in performance.latest_complete:
        labels = {"model_version": day.model_version, "window": "1d"}
        out.append(Sample("rtml_live_labelled_predictions", float(day.labelled), labels))
        out += [
            Sample("rtml_live_model_metric", value, {**labels, "metric": name})
            for name, value in day.metrics().items()
        ]
    return out

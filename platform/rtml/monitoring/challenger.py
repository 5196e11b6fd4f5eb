"""The live challenger comparison: the staged version (the challenger, shadow-scoring every request into
``monitoring.shadow_predictions``) against production's answers to the *same* requests
(``monitoring.predictions``, joined on ``request_id``), with the labels that have arrived since
(``staging.stg_labels``, the newest label event per transaction, as ``rtml.monitoring.live`` reads them).

* Window: the last ``days`` days up to the challenger's newest shadow score (not the wall clock, so
  replayed or simulated traffic behaves like live traffic). A transaction scored more than once (a
  client retry) counts once, with its latest pair of scores.
* On labelled requests, for both models: PR AUC (average precision, as training computes it), ROC AUC,
  precision and recall of their own decisions (``review`` and ``decline`` are flagged, as in live
  performance), and **recall and precision at production's decline rate**: the challenger's threshold
  is set so that it declines the same share of all requests as production did, so the two recalls
  compare the same workload for the fraud team, whatever the thresholds each version was given.
* On all requests: decision agreement (and the 3 x 3 table of decision pairs), and the two score
  distributions compared by Evidently 0.7 (reference = production's scores, current = the challenger's),
  saved as HTML under ``<data dir>/reports/challenger/`` like the drift reports. Two models' scores
  always differ somewhat: the report is there to look at, not an alarm.
* Verdict: ``too_few_labelled`` below ``min_labelled`` labelled requests or without both classes among
  them (the figures are then preliminary), else ``better`` or ``worse`` on PR AUC (the gate's metric).

Where the result is kept, and why twice:
* ``monitoring.challenger_comparisons``: one row per run (the history, the report's path, the figures as
  JSON), read by the ``retraining`` notification and by whoever wants a trend;
* ``live_*`` tags on the challenger's model version (:func:`tags`): the registry is where a person looks
  at versions (``rtml models``, ``rtml promote``, the MLflow UI) and where the gate already keeps its
  ``gate_*`` comparison, so the command line needs no database and the figures travel with the version.

No Dagster here: ``rtml.defs.monitoring.assets.challenger_comparison`` runs it.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psycopg
from psycopg.rows import dict_row
from sklearn.metrics import average_precision_score, roc_auc_score

from rtml import ddl
from rtml.monitoring.metrics import Sample
from rtml.monitoring.predictions import TABLE as PREDICTIONS
from rtml.monitoring.predictions import ensure_table as ensure_prediction_tables

TABLE = "monitoring.challenger_comparisons"
SHADOW = "monitoring.shadow_predictions"
LABELS = "staging.stg_labels"
FLAGGED = ("review", "decline")
DECISIONS = ("approve", "review", "decline")
METRICS = ("pr_auc", "roc_auc", "precision", "recall", "recall_at_decline_rate", "precision_at_decline_rate")
BETTER, WORSE, TOO_FEW = "better", "worse", "too_few_labelled"
VERDICT_METRIC = "pr_auc"
SCORE = "probability"
SEED = 0

DDL = """
create schema if not exists monitoring;
create table if not exists monitoring.challenger_comparisons (
    comparison_id       text primary key,
    computed_at         timestamptz not null,
    challenger_version  text not null,
    production_version  text,
    window_start        timestamptz not null,
    window_end          timestamptz not null,
    requests            integer not null,
    labelled            integer not null,
    frauds              integer not null,
    min_labelled        integer not null,
    verdict             text not null check (verdict in ('better', 'worse', 'too_few_labelled')),
    summary             text not null,
    figures             jsonb not null,
    html_path           text
);
create index if not exists challenger_comparisons_version_idx
    on monitoring.challenger_comparisons (challenger_version, computed_at desc);
"""

QUERY = f"""
with pairs as (
    select distinct on (p.transaction_id)
        p.transaction_id, p.model_version as production_version,
        p.probability as production_probability, p.decision as production_decision,
        s.probability as challenger_probability, s.decision as challenger_decision
    from {SHADOW} as s join {PREDICTIONS} as p on p.request_id = s.request_id
    where s.model_version = %(version)s and p.model_version <> s.model_version
        and s.scored_at >= %(start)s and s.scored_at < %(end)s
    order by p.transaction_id, p.scored_at desc, p.request_id desc
),
labels as (
    -- the newest label event of each compared transaction (the order training_set uses)
    select distinct on (l.transaction_id) l.transaction_id, l.is_fraud
    from {LABELS} as l
    where l.transaction_id in (select transaction_id from pairs)
    order by l.transaction_id, l.label_ts desc, l.label_source
)
select p.*, l.is_fraud from pairs as p left join labels as l on l.transaction_id = p.transaction_id
"""
COLUMNS = [
    "transaction_id",
    "production_version",
    "production_probability",
    "production_decision",
    "challenger_probability",
    "challenger_decision",
    "is_fraud",
]


class ChallengerError(ValueError):
    """A comparison that cannot be made; the message says why."""


@dataclass(frozen=True)
class ModelFigures:
    """One model on the labelled requests (None: undefined, e.g. a single class)."""

    pr_auc: float | None
    roc_auc: float | None
    precision: float | None
    recall: float | None
    recall_at_decline_rate: float | None
    precision_at_decline_rate: float | None

    def defined(self) -> dict[str, float]:
        return {name: value for name, value in asdict(self).items() if value is not None}


@dataclass(frozen=True)
class ScoreReport:
    """Evidently's comparison of the two score distributions (reference = production's)."""

    method: str
    score: float
    threshold: float
    differ: bool
    """Evidently's drift test failed: the distributions differ by more than its threshold."""
    html_path: Path
    production_mean: float
    challenger_mean: float


@dataclass(frozen=True)
class Comparison:
    challenger_version: str
    production_version: str | None
    """The version that answered most of the compared requests (None: no request)."""
    window_start: datetime
    window_end: datetime
    requests: int
    labelled: int
    frauds: int
    min_labelled: int
    verdict: str
    production: ModelFigures | None
    challenger: ModelFigures | None
    decline_rate: float | None
    """Share of all compared requests production declined."""
    challenger_threshold: float | None
    """The challenger's score threshold that declines ``decline_rate`` of the requests."""
    agreement: float | None
    """Share of requests both decided alike."""
    decision_pairs: dict[str, int] = field(default_factory=dict)
    """``production/challenger`` → requests, e.g. ``approve/review``."""
    scores: ScoreReport | None = None
    comparison_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    computed_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def decided(self) -> bool:
        return self.verdict in (BETTER, WORSE)

    @property
    def summary(self) -> str:
        return summarize(self)


# --- the rows ------------------------------------------------------------------------------------------
def fetch(
    database_url: str, challenger_version: str, days: int, *, as_of: datetime | None = None
) -> tuple[pd.DataFrame, datetime, datetime]:
    """(pairs, window start, window end): one row per compared transaction, ``is_fraud`` None when no
    label has arrived. The window ends just after the challenger's newest shadow score (or ``as_of``)."""
    if days <= 0:
        raise ChallengerError(f"challenger_window_days must be positive, not {days}")
    ensure_prediction_tables(database_url)  # the scorer creates them; a fresh database has none yet
    with psycopg.connect(database_url) as conn:
        found = conn.execute("select to_regclass(%s)", (LABELS,)).fetchone()
        if found is None or found[0] is None:
            raise ChallengerError(f"{LABELS} does not exist in this database (run dbt: stg_labels)")
        if as_of is None:
            newest = conn.execute(
                f"select max(scored_at) from {SHADOW} where model_version = %s", (challenger_version,)
            ).fetchone()
            as_of = newest[0] + timedelta(microseconds=1) if newest and newest[0] else datetime.now(UTC)
        start = as_of - timedelta(days=days)
        rows = conn.execute(QUERY, {"version": challenger_version, "start": start, "end": as_of}).fetchall()
    return pd.DataFrame(rows, columns=COLUMNS), start, as_of


# --- the figures ---------------------------------------------------------------------------------------
def evaluate(
    pairs: pd.DataFrame,
    challenger_version: str,
    min_labelled: int,
    window: tuple[datetime, datetime],
) -> Comparison:
    """Every figure but the score report, from :func:`fetch`'s rows."""
    requests = len(pairs)
    production_version = (
        str(pairs["production_version"].value_counts().idxmax()) if requests else None
    )  # a promotion inside the window: the version that answered most
    labelled = pairs[pairs["is_fraud"].notna()]
    y = labelled["is_fraud"].astype(bool).to_numpy()
    frauds = int(y.sum())
    both = 0 < frauds < len(y)
    decided = both and len(y) >= min_labelled
    production = challenger = None
    decline_rate = threshold = agreement = None
    pairs_count: dict[str, int] = {}
    if requests:
        declined = (pairs["production_decision"] == "decline").to_numpy()
        decline_rate = float(declined.mean())
        threshold = _threshold_at_rate(pairs["challenger_probability"].to_numpy(dtype=float), decline_rate)
        agreement = float((pairs["production_decision"] == pairs["challenger_decision"]).mean())
        both_decisions = zip(pairs["production_decision"], pairs["challenger_decision"], strict=True)
        pairs_count = dict(sorted(Counter(f"{p}/{c}" for p, c in both_decisions).items()))
    if both:
        production = _figures(
            y,
            labelled["production_probability"].to_numpy(dtype=float),
            labelled["production_decision"].isin(FLAGGED).to_numpy(),
            (labelled["production_decision"] == "decline").to_numpy(),
            decline_rate,
        )
        challenger = _figures(
            y,
            labelled["challenger_probability"].to_numpy(dtype=float),
            labelled["challenger_decision"].isin(FLAGGED).to_numpy(),
            labelled["challenger_probability"].to_numpy(dtype=float)
            >= (np.inf if threshold is None else threshold),
            decline_rate,
        )
    verdict = TOO_FEW
    if decided and production is not None and challenger is not None:
        ours, theirs = challenger.pr_auc, production.pr_auc
        verdict = WORSE if ours is not None and theirs is not None and ours < theirs else BETTER
    return Comparison(
        challenger_version=str(challenger_version),
        production_version=production_version,
        window_start=window[0],
        window_end=window[1],
        requests=requests,
        labelled=len(y),
        frauds=frauds,
        min_labelled=min_labelled,
        verdict=verdict,
        production=production,
        challenger=challenger,
        decline_rate=decline_rate,
        challenger_threshold=threshold,
        agreement=agreement,
        decision_pairs=pairs_count,
    )


def _threshold_at_rate(scores: np.ndarray, rate: float) -> float | None:
    """The lowest score among the ``round(rate x n)`` highest: at it, the challenger declines the same
    share of requests as production (a few more where scores tie). None when production declined none."""
    declines = round(rate * len(scores))
    if declines <= 0:
        return None
    return float(np.sort(scores)[::-1][declines - 1])


def _figures(
    y: np.ndarray, scores: np.ndarray, flagged: np.ndarray, declined: np.ndarray, rate: float | None
) -> ModelFigures:
    frauds = int(y.sum())
    at_rate = rate is not None and rate > 0
    return ModelFigures(
        pr_auc=float(average_precision_score(y, scores)),
        roc_auc=float(roc_auc_score(y, scores)),
        precision=float((y & flagged).sum() / flagged.sum()) if flagged.any() else None,
        recall=float((y & flagged).sum() / frauds),
        recall_at_decline_rate=float((y & declined).sum() / frauds) if at_rate else None,
        precision_at_decline_rate=float((y & declined).sum() / declined.sum())
        if at_rate and declined.any()
        else None,
    )


# --- the score distributions (Evidently) ---------------------------------------------------------------
def compare_scores(
    pairs: pd.DataFrame, folder: Path, name: str, *, max_rows: int, seed: int = SEED
) -> ScoreReport | None:
    """Evidently's comparison of the two models' scores on the same requests (at most ``max_rows``,
    a seeded sample), saved as ``folder/name.html``. None without requests."""
    from rtml.monitoring import drift
    from rtml.training.dataset import FeatureSpec

    if pairs.empty:
        return None
    if len(pairs) > max_rows:
        pairs = pairs.sample(n=max_rows, random_state=seed)
    reference = pd.DataFrame({SCORE: pairs["production_probability"].to_numpy(dtype=float)})
    current = pd.DataFrame({SCORE: pairs["challenger_probability"].to_numpy(dtype=float)})
    found = drift.compare(reference, current, FeatureSpec(numeric=[SCORE], categorical=[]))
    folder.mkdir(parents=True, exist_ok=True)
    html = folder / f"{name}.html"
    found.snapshot.save_html(str(html))
    column = found.columns[SCORE]
    return ScoreReport(
        method=column.method,
        score=column.score,
        threshold=column.threshold,
        differ=column.drifted,
        html_path=html,
        production_mean=float(reference[SCORE].mean()),
        challenger_mean=float(current[SCORE].mean()),
    )


# --- the whole run -------------------------------------------------------------------------------------
def run(
    database_url: str,
    challenger_version: str,
    *,
    days: int,
    min_labelled: int,
    reports_dir: Path,
    max_rows: int,
    as_of: datetime | None = None,
) -> Comparison:
    """Fetch, evaluate, compare the score distributions (report under ``reports_dir``) and store."""
    pairs, start, end = fetch(database_url, challenger_version, days, as_of=as_of)
    comparison = evaluate(pairs, challenger_version, min_labelled, (start, end))
    name = f"{comparison.computed_at:%Y%m%dT%H%M%S.%fZ}-v{challenger_version}"
    scores = compare_scores(pairs, reports_dir, name, max_rows=max_rows)
    comparison = dataclasses.replace(comparison, scores=scores)
    store(database_url, comparison)
    return comparison


# --- the record ----------------------------------------------------------------------------------------
def ensure_table(database_url: str) -> None:
    ddl.ensure(database_url, DDL, lock=f"rtml.{TABLE}")


def store(database_url: str, comparison: Comparison) -> None:
    ensure_table(database_url)
    c = comparison
    with psycopg.connect(database_url) as conn:
        conn.execute(
            f"insert into {TABLE} (comparison_id, computed_at, challenger_version, production_version,"
            " window_start, window_end, requests, labelled, frauds, min_labelled, verdict, summary, figures,"
            " html_path) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s)",
            (
                c.comparison_id,
                c.computed_at,
                c.challenger_version,
                c.production_version,
                c.window_start,
                c.window_end,
                c.requests,
                c.labelled,
                c.frauds,
                c.min_labelled,
                c.verdict,
                c.summary,
                json.dumps(_figures_json(c)),
                str(c.scores.html_path) if c.scores else None,
            ),
        )


def _figures_json(c: Comparison) -> dict[str, Any]:
    scores = None
    if c.scores is not None:
        scores = {**asdict(c.scores), "html_path": str(c.scores.html_path)}
    return {
        "production": c.production.defined() if c.production else None,
        "challenger": c.challenger.defined() if c.challenger else None,
        "decline_rate": c.decline_rate,
        "challenger_threshold": c.challenger_threshold,
        "agreement": c.agreement,
        "decision_pairs": c.decision_pairs,
        "scores": scores,
    }


@dataclass(frozen=True)
class Recorded:
    """A stored comparison as the notification reads it."""

    challenger_version: str
    production_version: str | None
    computed_at: datetime
    verdict: str
    labelled: int
    min_labelled: int
    summary: str


def latest(database_url: str, challenger_version: str | None = None) -> Recorded | None:
    """The newest stored comparison (of ``challenger_version``, or of any); None when there is none."""
    ensure_table(database_url)
    where = "where challenger_version = %s" if challenger_version else ""
    params = (challenger_version,) if challenger_version else ()
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        row = conn.execute(
            f"select challenger_version, production_version, computed_at, verdict, labelled, min_labelled,"
            f" summary from {TABLE} {where} order by computed_at desc limit 1",
            params,
        ).fetchone()
    return None if row is None else Recorded(**row)


def notice(database_url: str, min_labelled: int) -> str:
    """The ``retraining`` notification's line: the newest stored comparison (naming its versions), or
    that there is none yet."""
    recorded = latest(database_url)
    if recorded is None:
        return (
            f"no live comparison yet (a staged version needs {min_labelled} labelled shadow-scored "
            "requests for a verdict; asset challenger_comparison)"
        )
    return f"latest live comparison ({recorded.computed_at:%Y-%m-%d %H:%M} UTC): {recorded.summary}"


# --- how it is shown -----------------------------------------------------------------------------------
def summarize(c: Comparison) -> str:
    """One line: the verdict (or why there is none) and the figures behind it."""
    against = f"production v{c.production_version}" if c.production_version else "production"
    if c.requests == 0:
        return (
            f"v{c.challenger_version} vs production: no request shadow-scored by v{c.challenger_version} "
            f"in {c.window_start:%Y-%m-%d %H:%M} to {c.window_end:%Y-%m-%d %H:%M} UTC"
        )
    parts = []
    if c.verdict == TOO_FEW:
        why = (
            f"too few labelled requests ({c.labelled} of {c.min_labelled})"
            if c.labelled < c.min_labelled
            else f"the {c.labelled} labelled requests hold one class only ({c.frauds} frauds)"
        )
        head = f"v{c.challenger_version} vs {against}: {why}"
        if c.production is not None and c.challenger is not None:
            parts.append("preliminary " + _figures_text(c))
    else:
        head = (
            f"v{c.challenger_version} {c.verdict} live than {against} on {c.labelled} labelled requests "
            f"({c.frauds} frauds)"
        )
        parts.append(_figures_text(c))
    if c.agreement is not None:
        parts.append(f"decisions agree on {c.agreement:.1%} of {c.requests} requests")
    return "; ".join([head, *parts])


def _figures_text(c: Comparison) -> str:
    assert c.production is not None and c.challenger is not None
    text = f"PR AUC {_f(c.challenger.pr_auc)} vs {_f(c.production.pr_auc)}"
    text += f", ROC AUC {_f(c.challenger.roc_auc)} vs {_f(c.production.roc_auc)}"
    if c.decline_rate:
        text += (
            f", recall at production's decline rate ({c.decline_rate:.2%}) "
            f"{_f(c.challenger.recall_at_decline_rate)} vs {_f(c.production.recall_at_decline_rate)}"
        )
    return text


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def tags(c: Comparison) -> dict[str, str]:
    """``live_*`` tags of the challenger's model version: the newest comparison, for the registry's
    readers (``rtml models``, ``rtml promote``, the MLflow UI)."""
    out = {
        "live_verdict": c.verdict,
        "live_summary": c.summary[:5000],  # MLflow's tag value limit is 5000 characters
        "live_compared_with": c.production_version or "none",
        "live_requests": str(c.requests),
        "live_labelled": str(c.labelled),
        "live_min_labelled": str(c.min_labelled),
        "live_window": f"{c.window_start.isoformat()} / {c.window_end.isoformat()}",
        "live_computed_at": c.computed_at.isoformat(timespec="seconds"),
    }
    if c.agreement is not None:
        out["live_agreement"] = f"{c.agreement:.6f}"
    for role, figures in (("", c.challenger), ("production_", c.production)):
        for name, value in (figures.defined() if figures else {}).items():
            out[f"live_{role}{name}"] = f"{value:.6f}"
    return out


def column(tags: dict[str, str]) -> str:
    """``rtml models``' live column from a version's ``live_*`` tags, e.g. ``better +0.0213 (5230)``:
    the verdict, the PR AUC difference and the labelled requests; ``-`` without a comparison."""
    verdict = tags.get("live_verdict")
    if verdict is None:
        return "-"
    if verdict == TOO_FEW:
        return f"too few ({tags.get('live_labelled', '?')}/{tags.get('live_min_labelled', '?')})"
    ours, theirs = tags.get("live_pr_auc"), tags.get("live_production_pr_auc")
    delta = f" {float(ours) - float(theirs):+.4f}" if ours and theirs else ""
    return f"{verdict}{delta} vs v{tags.get('live_compared_with', '?')} ({tags.get('live_labelled', '?')})"


def before_promotion(tags: dict[str, str], version: str, production: str | None) -> tuple[str, str | None]:
    """What ``rtml promote`` prints before it acts: the version's newest live comparison (from its
    ``live_*`` tags), and a warning when it was worse live than production. Promotion stays the
    person's decision: the warning informs, it does not block."""
    verdict = tags.get("live_verdict")
    if verdict is None:
        return f"live comparison: none for v{version} (never compared as the staged version)", None
    line = f"live comparison ({tags.get('live_computed_at', '?')}): {tags.get('live_summary', verdict)}"
    compared = tags.get("live_compared_with", "none")
    if production is not None and compared not in ("none", production):
        line += f" [compared with v{compared}; production is now v{production}]"
    if verdict != WORSE:
        return line, None
    ours, theirs = (_tag_figure(tags, f"live_{role}pr_auc") for role in ("", "production_"))
    warning = (
        f"WARNING: v{version} is worse live than production v{compared}: PR AUC {ours} vs {theirs} "
        f"on the same {tags.get('live_labelled', '?')} labelled requests. Promoting it anyway, as asked."
    )
    return line, warning


def _tag_figure(tags: dict[str, str], name: str) -> str:
    value = tags.get(name)
    return "?" if value is None else f"{float(value):.4f}"


def samples(c: Comparison) -> list[Sample]:
    """``rtml_challenger_*`` gauges: both models' figures (``role`` production / challenger), the labelled
    requests and decision agreement, and ``rtml_challenger_worse`` once there is a verdict."""
    version = {"model_version": c.challenger_version}
    out = [Sample("rtml_challenger_labelled_requests", float(c.labelled), version)]
    if c.agreement is not None:
        out.append(Sample("rtml_challenger_decision_agreement", c.agreement, version))
    if c.decided:
        out.append(Sample("rtml_challenger_worse", float(c.verdict == WORSE), version))
    roles = (
        ("challenger", c.challenger_version, c.challenger),
        ("production", c.production_version, c.production),
    )
    for role, model_version, figures in roles:
        for name, value in (figures.defined() if figures and model_version else {}).items():
            labels = {"role": role, "model_version": str(model_version), "metric": name}
            out.append(Sample("rtml_challenger_metric", value, labels))
    return out

"""One drift run: fetch the windows' rows, compare them, save and record each report."""

from __future__ import annotations

import dataclasses
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from rtml.config import Settings
from rtml.monitoring.drift.persistence import ensure_table, store
from rtml.monitoring.drift.query import (
    SCORE,
    SEED,
    DriftError,
    Window,
    current_window,
    fetch_windows,
    load_served_scores,
    tail_window,
    window_from_tags,
)
from rtml.monitoring.drift.report import (
    FEATURES,
    PREDICTIONS,
    TAIL,
    DriftReport,
    DriftResult,
    compare,
    reasons,
)
from rtml.training.dataset import FeatureSpec


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
    production = None
    if tracking_uri:
        from rtml.training.model_registry import production_version

        production = production_version(tracking_uri, model_name)
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
        comparison = compare(reference, current, spec, pvalue=self.pvalue)
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

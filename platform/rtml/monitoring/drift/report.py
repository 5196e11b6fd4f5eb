"""Drift reports: Evidently's comparison of two windows' rows, per column and as a verdict."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from rtml.monitoring.drift.query import DriftError, ReferenceHours, Window
from rtml.training.dataset import FeatureSpec

FEATURES, PREDICTIONS = "features", "predictions"
TAIL = "features_tail"
"""The name (in ``report_ids`` and the ``report`` label) of the tail's features report; its row's kind is
``features``."""


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    method: str
    """Evidently's test, chosen per column type and size (e.g. ``Wasserstein distance (normed)``)."""
    threshold: float
    score: float
    """p-value (drift when below the threshold) or distance (drift when at or above it)."""
    drifted: bool

    @property
    def is_pvalue(self) -> bool:
        """Evidently names its own choice ``K-S p_value``, ``Z-test p_value``...; a test asked for by
        its id (the hourly check's KS) by that id."""
        return "p_value" in self.method or self.method == HOURLY_TEST


@dataclass(frozen=True)
class DriftReport:
    report_id: str
    kind: str
    created_at: datetime
    reference: Window
    current: Window
    reference_rows: int
    current_rows: int
    columns: dict[str, ColumnDrift]
    skipped: list[str]
    """Columns without a single value in one of the windows: not compared (Evidently refuses them)."""
    drifted_share: float
    threshold: float
    detected: bool
    html_path: Path
    seconds: float
    model_version: str | None = None

    @property
    def drifted_columns(self) -> list[str]:
        return [name for name, column in self.columns.items() if column.drifted]

    @property
    def reasons(self) -> list[str]:
        """Why the report detects drift (empty: it does not)."""
        return reasons(self.drifted_share, self.threshold, self.columns)


def reasons(drifted_share: float, threshold: float, columns: dict[str, ColumnDrift]) -> list[str]:
    """The drift rule: the share of drifted columns above ``threshold`` (the hourly check's threshold is
    0: any column, each by a strict p-value, :func:`compare`); empty when it does not fire."""
    if drifted_share <= threshold:
        return []
    drifted = ", ".join(_figure(column) for column in columns.values() if column.drifted)
    return [f"{drifted_share:.1%} of {len(columns)} columns drifted > {threshold:.0%}: {drifted}"]


def _figure(column: ColumnDrift) -> str:
    """A drifted column with its score, e.g. ``amount (p 3.1e-12 < 1e-06)``; distances by name only."""
    if column.is_pvalue and column.threshold < 0.001:
        return f"{column.column} (p {column.score:.2g} < {column.threshold:g})"
    return column.column


def verdict(reports: dict[str, DriftReport]) -> tuple[bool, str]:
    """The check's verdict over one run's reports (``{name: report}``, the asset's ``report_ids``):
    drift when any report detects it, and a description naming, per report and window, the rules
    that fired (or the figures that stayed within them)."""
    parts = []
    for name, report in reports.items():
        why = report.reasons
        window = f"{report.current.start:%m-%d %H:%M} to {report.current.end:%m-%d %H:%M}"
        if why:
            parts.append(f"{name} ({window}, {report.current_rows} rows): {'; '.join(why)}")
        else:
            pvalues = [c for c in report.columns.values() if c.is_pvalue]
            top = min(pvalues, key=lambda c: c.score, default=None)
            highest = f", lowest p {top.column} {top.score:.2g}" if top and not report.threshold else ""
            parts.append(
                f"{name} ({window}, {report.current_rows} rows): {report.drifted_share:.1%} of "
                f"{len(report.columns)} columns drifted (threshold {report.threshold:.0%}){highest}"
            )
    detected = any(report.reasons for report in reports.values())
    return detected, ("drift detected: " if detected else "within threshold: ") + " | ".join(parts)


@dataclass(frozen=True)
class DriftResult:
    features: DriftReport
    predictions: DriftReport | None
    model_version: str | None
    """The production version whose training window (and scores) were the reference, if any."""
    seconds: float
    tail: DriftReport | None = None
    """The hourly check's features report of the newest ``tail_minutes`` of the current window."""
    tail_note: str | None = None
    """Why there is no tail report although one was asked for (too few rows)."""
    reference_hours: ReferenceHours | None = None
    """The reference rows kept (the hourly check); None: the whole reference window."""

    @property
    def named_reports(self) -> dict[str, DriftReport]:
        """``{name: report}``: ``features``, ``features_tail``, ``predictions`` (those made)."""
        named = {FEATURES: self.features, TAIL: self.tail, PREDICTIONS: self.predictions}
        return {name: report for name, report in named.items() if report is not None}

    @property
    def reports(self) -> list[DriftReport]:
        return list(self.named_reports.values())

    @property
    def detected(self) -> bool:
        return any(report.detected for report in self.reports)


@dataclass(frozen=True)
class Comparison:
    """What Evidently found, before the report is saved and recorded."""

    columns: dict[str, ColumnDrift]
    skipped: list[str]
    drifted_share: float
    snapshot: Any = field(repr=False)
    """The Evidently snapshot (``save_html``, ``dict``)."""


# --- comparison ----------------------------------------------------------------------------------------
HOURLY_TEST = "ks"
"""The hourly check's per-column test (Evidently's id): two-sample Kolmogorov-Smirnov, a p-value."""


def compare(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    spec: FeatureSpec,
    *,
    pvalue: float | None = None,
) -> Comparison:
    """Evidently's drift test of each of the spec's columns (``ValueDrift``, its test chosen by column type
    and sample size, as ``DataDriftPreset`` chooses it), and the share of drifted columns.

    One ``ValueDrift`` per column is what ``DataDriftPreset`` runs for its verdicts; the preset also
    recomputes every column twice more for its summary widgets (``DatasetDriftMetric``,
    ``DataDriftTable``), about 60 % of its time at 100k rows. The verdicts are the preset's
    (tests/test_drift.py compares them); the share and the rule are rtml's (:func:`reasons`).

    ``pvalue`` (the hourly check): the numeric columns only, each by the two-sample Kolmogorov-Smirnov
    test, drifted when its p-value is below ``pvalue``, whatever the sample size. A p-value accounts for
    the few rows of a night hour or a 15-minute tail, where a distance does not (calibrated on a week of
    undrifted hours: docs/benchmarks.md, "Drift calibration"). The categorical columns are left to the
    daily report: chi-square on ``country`` fell below 1e-4 in 17 of 48 undrifted hours (an hour's
    country mix follows who pays then)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    if reference.empty or current.empty:
        raise DriftError(f"nothing to compare: {len(reference)} reference rows, {len(current)} current rows")
    skipped = [name for name in spec.columns if reference[name].isna().all() or current[name].isna().all()]
    numeric = [name for name in spec.numeric if name not in skipped]
    categorical = [name for name in spec.categorical if name not in skipped and pvalue is None]
    if not numeric and not categorical:
        raise DriftError(f"every column is empty in one of the windows: {', '.join(skipped)}")
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    names = [*categorical, *numeric]
    test = {} if pvalue is None else {"method": HOURLY_TEST, "threshold": pvalue}
    metrics = [ValueDrift(column=name, **(test if name in numeric else {})) for name in names]
    snapshot = Report(metrics, include_tests=True).run(
        Dataset.from_pandas(current[names], data_definition=definition),
        Dataset.from_pandas(reference[names], data_definition=definition),
    )
    columns = _columns(snapshot.dict(), names)
    share = sum(column.drifted for column in columns.values()) / len(columns)
    return Comparison(columns=columns, skipped=skipped, drifted_share=share, snapshot=snapshot)


def _columns(result: dict[str, Any], names: Sequence[str]) -> dict[str, ColumnDrift]:
    """Per column: the ValueDrift metric (score, method, threshold) and its test (FAIL = drifted)."""
    metrics = {
        metric["id"]: metric
        for metric in result["metrics"]
        if metric["config"].get("type", "").endswith(":ValueDrift")
    }
    failed = {
        test["metric_config"]["metric_id"]: str(test["status"]).endswith("FAIL")
        for test in result["tests"]
        if test["metric_config"]["metric_id"] in metrics
    }
    found: dict[str, ColumnDrift] = {}
    for metric_id, metric in metrics.items():
        config = metric["config"]
        found[config["column"]] = ColumnDrift(
            column=config["column"],
            method=str(config["method"]),
            threshold=float(config["threshold"]),
            score=float(metric["value"]),
            drifted=failed[metric_id],
        )
    missing = set(names) - set(found)
    if missing:
        raise DriftError(f"Evidently reported no drift for column(s) {sorted(missing)}")
    return {name: found[name] for name in names}

"""Drift reports: Evidently 0.7 reports of one ``ValueDrift`` per column (the tests ``DataDriftPreset``
chooses, without its summary's recomputations) between a reference window and the current window, of
the model's features and of its scores.

* **Reference window**: by default the training data window of the version holding ``production``
  (its lineage tags ``data_window_start`` / ``data_window_end``), or an explicit window.
* **Current window**: by default the newest ``drift_current_hours`` hours of data, ending at the newest
  feature row (not the wall clock, so replayed or simulated history behaves like live data).
* **Rows**: point-in-time features of *every* transaction of a window, labelled or not, with the same
  columns as :func:`rtml.training.dataset.feature_spec`. They are read straight from the incremental
  feature models (``stg_transactions`` ⋈ ``customer_features`` ⋈ ``merchant_features``, the joins of
  ``training_set``), not from ``training_set``: that table holds only labelled rows up to the newest
  label unless rebuilt with ``training_include_unlabelled``, and the current window is almost entirely
  unlabelled (labels arrive days later), so it would be empty or biased towards fast chargebacks.
  Both windows go through the same query, so a difference between them is drift, not a different
  population. At most ``drift_max_rows`` rows per window, a seeded sample (hash of the id).
* **Second report** (``kind="predictions"``): served scores (``monitoring.predictions.probability`` of
  the production version in the current window) against the same version's scores on the reference
  rows; skipped when there is no production model or no served prediction in the window.

Each report is saved as HTML under ``<data dir>/reports/drift/``, recorded as a row of
``monitoring.drift_reports`` and described by :func:`samples` (``rtml_drift_*`` gauges).
Evidently is imported on first use: importing it takes about 7 s and the Dagster code location imports
this module.

The package: ``query`` (windows and rows), ``report`` (Evidently's comparison and the verdict),
``persistence`` (the table and the gauges), ``run`` (one run of all three). Callers import every name
from here.
"""

from rtml.monitoring.drift.persistence import TABLE, ensure_table, load_reports, samples, store
from rtml.monitoring.drift.query import (
    SCORE,
    SEED,
    DriftError,
    Fetched,
    ReferenceHours,
    Window,
    current_window,
    feature_query,
    fetch_windows,
    history_start,
    load_features,
    load_served_scores,
    reference_hours,
    tail_window,
    warm_from,
    window_from_tags,
)
from rtml.monitoring.drift.report import (
    FEATURES,
    HOURLY_TEST,
    PREDICTIONS,
    TAIL,
    ColumnDrift,
    Comparison,
    DriftReport,
    DriftResult,
    compare,
    reasons,
    verdict,
)
from rtml.monitoring.drift.run import run_drift

__all__ = [
    "FEATURES",
    "HOURLY_TEST",
    "PREDICTIONS",
    "SCORE",
    "SEED",
    "TABLE",
    "TAIL",
    "ColumnDrift",
    "Comparison",
    "DriftError",
    "DriftReport",
    "DriftResult",
    "Fetched",
    "ReferenceHours",
    "Window",
    "compare",
    "current_window",
    "ensure_table",
    "feature_query",
    "fetch_windows",
    "history_start",
    "load_features",
    "load_reports",
    "load_served_scores",
    "reasons",
    "reference_hours",
    "run_drift",
    "samples",
    "store",
    "tail_window",
    "verdict",
    "warm_from",
    "window_from_tags",
]

"""scikit-learn's internals that rtml changes, in one place.

* The bin thresholds of ``HistGradientBoostingClassifier`` under sample weights
  (``sklearn.ensemble._hist_gradient_boosting.binning._find_binning_thresholds``). With weights (the
  model's ``class_weight="balanced"``) and at most 200,000 rows (above that the binner subsamples by
  weight and drops them), scikit-learn 1.9.1 calls ``_weighted_percentile`` once per percentile: 254
  sorts of each feature instead of one. ``_weighted_percentile`` takes all the percentiles at once and
  computes each the same way (the same code per percentile), so :func:`fix_bin_thresholds`
  has it do that: the same thresholds, bit for bit. py-spy put about 50 s of the ``make test`` workers'
  CPU in those sorts, and every training on fewer than 200,000 rows pays it (the demo's, the tests'). The
  fix upstream (scikit-learn pull request 34248) is not in a release yet.

* A feature with no value in the training rows (all missing, or only zero weights). scikit-learn 1.9.1's
  ``_find_binning_thresholds`` returns no thresholds for one distinct value but fails on none
  ("window shape cannot be larger than input array shape", from ``sliding_window_view``): any
  ``HistGradientBoostingClassifier`` fit with an all-missing column fails. Earlier releases returned no
  thresholds, and so does :func:`find_binning_thresholds` (the booster then never splits on the
  feature; a missing value goes to the missing-values bin, as always). A young deployment meets it: the
  merchant features of a day are computed from the days before, so they are missing on the first day,
  and a training on the first day or two of history (whose oldest 60 % trains) failed.

Used by ``rtml.training.model.build_pipeline``. scikit-learn is pinned (pyproject.toml);
tests/test_private_apis.py fails by name when a new version changes these names, fixes the loop or
the empty column (then the part concerned goes).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

_local = threading.local()  # the binner finds each feature's thresholds on a thread of its own
sklearn_s: dict[str, Callable[..., Any]] = {}
"""scikit-learn's own ``_find_binning_thresholds`` and ``_weighted_percentile``, once replaced."""


def fix_bin_thresholds() -> None:
    """The binner computes a feature's weighted percentiles in one call, and bins a column without values
    (see the module docstring). Idempotent."""
    from sklearn.ensemble._hist_gradient_boosting import binning

    if sklearn_s:
        return
    sklearn_s["find_binning_thresholds"] = binning._find_binning_thresholds
    sklearn_s["weighted_percentile"] = binning._weighted_percentile
    binning._find_binning_thresholds = find_binning_thresholds
    binning._weighted_percentile = weighted_percentile


def find_binning_thresholds(col_data: np.ndarray, max_bins: int, sample_weight: Any = None) -> np.ndarray:
    """scikit-learn's, told which percentiles it will ask for: those of its grid, in order; no thresholds
    for a column without a value that counts (scikit-learn's fails there)."""
    present = ~np.isnan(col_data) if sample_weight is None else ~np.isnan(col_data) & (sample_weight != 0)
    if not present.any():
        return np.asarray([], dtype=np.float64)  # what scikit-learn returns for a single distinct value
    _local.grid = np.linspace(0, 100, num=max_bins + 1)[1:-1]  # as scikit-learn builds it
    _local.values = None
    _local.asked = 0
    try:
        return sklearn_s["find_binning_thresholds"](col_data, max_bins, sample_weight)
    finally:
        _local.grid = _local.values = None


def weighted_percentile(
    array: Any, sample_weight: Any, percentile_rank: Any = 50, average: bool = False, xp: Any = None
) -> Any:
    """The grid's next percentile, from one call for the whole grid (made on the first)."""
    grid = getattr(_local, "grid", None)
    asked = getattr(_local, "asked", 0)
    own = sklearn_s["weighted_percentile"]
    scalar = average and np.ndim(percentile_rank) == 0
    if not (scalar and grid is not None and asked < len(grid) and grid[asked] == percentile_rank):
        return own(array, sample_weight, percentile_rank, average=average, xp=xp)  # as scikit-learn would
    if _local.values is None:
        _local.values = own(array, sample_weight, grid, average=True, xp=xp)
    _local.asked = asked + 1
    return _local.values[asked]

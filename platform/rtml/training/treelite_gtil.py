"""treelite's GTIL prediction through its C API, in one place: the scorer's one-row model call.

``treelite.gtil.predict`` builds and parses a JSON config and asks for the output shape on every call:
20 of its 29 us per row, and half of a one-row prediction on a cold CPU (400 -> 210 us;
docs/benchmarks.md, "Session 4": one row 29 -> 9 us hot). ``predict`` calls ``TreeliteGTILPredict`` on
the library treelite itself loaded, with a config built once.

Used here and nowhere else: ``treelite.core._LIB``, ``treelite.core._check_call`` and
``treelite.gtil.gtil.GTILConfig``. treelite is pinned (pyproject.toml); tests/test_private_apis.py
fails by name when a new version changes any of them.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import numpy as np

_DOUBLE_P = ctypes.POINTER(ctypes.c_double)


@functools.cache
def _config() -> Any:
    from treelite.gtil.gtil import GTILConfig

    return GTILConfig(nthread=1, predict_type="default")


def unsupported(booster: Any) -> str | None:
    """Why ``predict`` cannot score ``booster`` (None: it can). It assumes float64 in and out and one
    value per row (a binary classifier's probability), so the output needs no shape query or padding."""
    import treelite

    shape = treelite.gtil.predict(booster, np.zeros((2, booster.num_feature)), nthread=1).shape
    if (booster.input_type, booster.output_type) != ("float64", "float64") or shape != (2, 1, 1):
        return f"unexpected booster types/shape: {booster.input_type}, {shape}"
    return None


def predict(booster: Any, matrix: np.ndarray) -> np.ndarray:
    """``treelite.gtil.predict(booster, matrix, nthread=1)[:, 0, 0]`` for a booster ``unsupported``
    accepts: the probabilities of ``matrix``'s rows."""
    from treelite.core import _LIB, _check_call

    matrix = np.ascontiguousarray(matrix, dtype=np.float64)
    out = np.empty(matrix.shape[0], dtype=np.float64)
    _check_call(
        _LIB.TreeliteGTILPredict(
            booster.handle,
            matrix.ctypes.data_as(_DOUBLE_P),
            b"float64",
            ctypes.c_uint64(matrix.shape[0]),
            out.ctypes.data_as(_DOUBLE_P),
            _config().handle,
        )
    )
    return out

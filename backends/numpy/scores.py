"""Scores of the reference backend: the finiteness rule and the score of each transform, shared by
the magnitude hooks (``__init__``) and 2:4 pruning (``compress24``)."""

from __future__ import annotations

import numpy as np

from pruneplug.arrays import score_dtype
from pruneplug.errors import NonFiniteError


def check_finite(values: np.ndarray, transform: str) -> None:
    """Raise NonFiniteError for NaN/Inf weights, or NaN scores (``identity``)."""
    as_float = values.astype(np.float64).ravel()  # exact for every supported dtype
    bad = np.isnan(as_float) if transform == "identity" else ~np.isfinite(as_float)
    if bad.any():
        bad_indices = np.flatnonzero(bad)
        raise NonFiniteError.for_values(transform, int(bad_indices.size), int(bad_indices[0]))


def scores_of(values: np.ndarray, transform: str) -> np.ndarray:
    """Scores for ``transform`` ("abs", "square", "identity"), after the finiteness check.

    Half-precision inputs are widened to float32 first (exactly), so ``identity`` scores compare
    as their float32 values and ``-0.0 == +0.0`` everywhere.
    """
    check_finite(values, transform)
    x = values.astype(score_dtype(values.dtype))  # a copy: never write into the caller's array
    if transform == "abs":
        return np.abs(x)
    if transform == "square":
        with np.errstate(over="ignore", under="ignore"):  # squares may overflow to inf: valid scores
            return x * x
    return x

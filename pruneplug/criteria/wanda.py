"""Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models"):
score ``|W_ij| * ||X_j||_2``, compared within each output row.

Which norm, exactly. Aprender's ``WandaImportance`` scores ``|w_ij| * sqrt(norm_j)`` with
``norm_j`` taken from ``ActivationStats::input_norms``, and ``sqrt(eps)`` (``eps = 1e-8``) where
``norm_j <= 0``. pruneplug's ``input_norms`` is the sum over all calibration tokens of ``x_j ** 2``,
so ``sqrt(norm_j) = ||X_j||_2``, the paper's quantity. The Wanda reference code
(``WrappedGPT.add_batch``) keeps the same sum divided by the number of calibration *sequences*
(``scaler_row``), i.e. it scores ``|W_ij| * ||X_j||_2 / sqrt(nsamples)``. That factor is one
positive constant for the whole layer: in exact arithmetic it multiplies every score of a row
alike and cannot change which entries of a row (or of the layer) are smallest; in float32 it could
at most turn a near-tie into a tie or back in the last bit. pruneplug therefore uses the unscaled
sum (no dependence on how the tokens were batched).

Arithmetic: the per-feature factor ``sqrt(norm_j)`` is computed in float64 and rounded once to the
score dtype (float32 for float16/bfloat16/float32 weights, float64 for float64); the score is one
IEEE multiply of ``|w|`` (from the backend's importance operation) by that factor, in place, in
the array's own module (NumPy or CuPy): identical bits on every backend, no float64 copy of the
weights.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pruneplug import api
from pruneplug.arrays import adapt, array_module
from pruneplug.calibration import ActivationStats
from pruneplug.criteria.base import Criterion, score_stats
from pruneplug.errors import CalibrationError, InvalidArgumentError, ShapeError
from pruneplug.types import ImportanceScores


class WandaImportance(Criterion):
    """Aprender's ``WandaImportance``: ``|w_ij| * sqrt(input_norms_j)``; ``sqrt(eps)`` for a zero norm.

    ``layer_name`` is the weight's tensor name to look up in a :class:`CalibrationContext` (or pass
    ``layer=`` to :meth:`compute`, or the layer's :class:`ActivationStats` directly).

    Example::

        >>> import numpy as np, pruneplug as pp
        >>> w = np.array([[1.0, -2.0], [3.0, 4.0]], dtype=np.float32)
        >>> stats = pp.ActivationStats(np.array([4.0, 9.0]), count=2)
        >>> pp.WandaImportance().compute(w, stats).values
        array([[ 2.,  6.],
               [ 6., 12.]], dtype=float32)
        >>> pp.WandaImportance().requires_calibration()
        True
    """

    name = "wanda"
    statistics = frozenset({"input_norms"})
    default_groups = "row"

    def __init__(self, layer_name: str | None = None, eps: float = 1e-8) -> None:
        if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
            raise InvalidArgumentError(f"eps={eps!r} must be a finite number >= 0")
        self.layer_name = layer_name
        self.eps = float(eps)

    def compute(self, weights: Any, calibration: Any = None, *, layer: str | None = None,
                backend: str | None = None) -> ImportanceScores:
        """Wanda scores of a 2-D ``weights`` (``[out, in]``; ``[in, out]`` when the statistics say
        ``input_axis=0``). Raises :class:`CalibrationRequiredError` without statistics and
        :class:`CalibrationError` for statistics that do not fit."""
        stats = self.layer_stats(calibration, layer)
        adapted = adapt(weights, "weights")
        shape = tuple(int(s) for s in adapted.array.shape)
        name = layer or self.layer_name or "weights"
        if len(shape) != 2:
            raise ShapeError(f"wanda: tensor {name!r} must be 2-D ([out, in]), got shape {list(shape)}")
        if shape[stats.input_axis] != stats.in_features:
            raise CalibrationError(f"wanda: tensor {name!r} has shape {list(shape)} but its statistics have "
                                   f"{stats.in_features} input features (input axis {stats.input_axis})")
        _check_norms(stats, name)
        scores = api.importance(weights, "l1", backend=backend)  # |w|: the backend's work, score dtype
        values = adapt(scores.values, "scores").array  # a view (NumPy or CuPy), written in place
        factor = self.factors(stats).astype(values.dtype)
        xp = array_module(values)
        factor = xp.asarray(factor).reshape((1, -1) if stats.input_axis == 1 else (-1, 1))
        xp.multiply(values, factor, out=values)
        return ImportanceScores(scores.values, self.name, score_stats(values))

    def factors(self, stats: ActivationStats) -> np.ndarray:
        """float64 ``sqrt(input_norms)``, ``sqrt(eps)`` where a norm is 0."""
        norms = stats.input_norms
        return np.where(norms > 0, np.sqrt(np.maximum(norms, 0.0)), math.sqrt(self.eps))

    def __repr__(self) -> str:
        return f"WandaImportance({self.layer_name!r}, eps={self.eps})"


def _check_norms(stats: ActivationStats, name: str) -> None:
    bad = ~np.isfinite(stats.input_norms)
    if bad.any():
        raise CalibrationError(f"wanda: the statistics of tensor {name!r} have {int(bad.sum())} NaN/Inf input norm(s), "
                               f"first at feature {int(np.flatnonzero(bad)[0])}")

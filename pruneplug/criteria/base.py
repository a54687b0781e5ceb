"""The criterion interface every importance criterion (built-in or third-party) implements."""

from __future__ import annotations

from typing import Any

import numpy as np

from pruneplug.types import ScoreStats

_CHUNK = 1 << 20  # elements per float64 chunk of the statistics (bounded extra memory)


class Criterion:
    """An importance criterion: scores from weights plus, where needed, calibration statistics.

    Subclasses set ``name`` (what users pass as ``method=``), ``needs_calibration`` and
    ``default_groups`` (the comparison group the method was designed for: ``"layer"`` for
    magnitude, ``"row"`` for Wanda), and implement :meth:`compute`, returning
    :class:`pruneplug.ImportanceScores` whose ``values`` have the weights' array type and shape, in
    the score dtype (float32 for 16-bit weights, otherwise the weights' dtype), all finite or +Inf,
    never NaN. Heavy element-wise work goes through the backends (``pp.importance`` and friends)
    or the array's own module (NumPy, CuPy), never a host copy of device arrays.

    Example::

        class Random(pp.criteria.Criterion):
            name = "random"
            def compute(self, weights, calibration=None, *, layer=None, backend=None):
                values = np.random.default_rng(0).random(weights.shape, dtype=np.float32)
                return pp.ImportanceScores(values, self.name, pp.criteria.score_stats(values))
    """

    name: str = ""
    needs_calibration: bool = False
    default_groups: str = "layer"

    def requires_calibration(self) -> bool:
        """Whether :meth:`compute` needs calibration statistics (Aprender's name)."""
        return self.needs_calibration

    def compute(self, weights: Any, calibration: Any = None, *, layer: str | None = None,
                backend: str | None = None) -> Any:
        """Scores of ``weights``; ``calibration`` is a :class:`pruneplug.CalibrationContext` (looked
        up by ``layer``, the weight's tensor name) or the layer's :class:`pruneplug.ActivationStats`."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<criterion {self.name!r}>"


def score_stats(values: Any) -> ScoreStats:
    """min, max, mean, std (population; float64 sums over chunks of 2^20 elements, so the extra
    memory stays bounded) of a NumPy or CuPy score array."""
    flat = values.reshape(-1)
    n = int(flat.size)
    if n == 0:
        return ScoreStats(*(float("nan"),) * 4)
    total = 0.0
    for i in range(0, n, _CHUNK):
        total += float(flat[i:i + _CHUNK].sum(dtype=np.float64))
    mean = total / n
    m2 = 0.0
    for i in range(0, n, _CHUNK):
        d = flat[i:i + _CHUNK].astype(np.float64) - mean
        m2 += float((d * d).sum())
    return ScoreStats(float(flat.min()), float(flat.max()), mean, float(np.sqrt(m2 / n)))

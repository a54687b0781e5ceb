"""The criterion interface every importance criterion (built-in or third-party) implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pruneplug.calibration import ActivationStats, CalibrationContext
from pruneplug.errors import CalibrationRequiredError, InvalidArgumentError
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
    #: The calibration statistics the criterion reads: ``"input_norms"`` (sums of squares of each
    #: input feature, Wanda) and ``"hessian"`` (``X^T X``, SparseGPT). Calibration collects exactly
    #: these; an empty set means none (magnitude).
    statistics: frozenset = frozenset()

    def requires_calibration(self) -> bool:
        """Whether :meth:`compute` needs calibration statistics (Aprender's name)."""
        return self.needs_calibration or bool(self.statistics)

    def compute(self, weights: Any, calibration: Any = None, *, layer: str | None = None,
                backend: str | None = None) -> Any:
        """Scores of ``weights``; ``calibration`` is a :class:`pruneplug.CalibrationContext` (looked
        up by ``layer``, the weight's tensor name) or the layer's :class:`pruneplug.ActivationStats`."""
        raise NotImplementedError

    def layer_stats(self, calibration: Any, layer: str | None) -> ActivationStats:
        """The statistics of the layer being scored: ``calibration`` itself when it is one layer's
        :class:`~pruneplug.ActivationStats`, else the context's entry for ``layer`` (or the
        criterion's own ``layer_name``). Raises :class:`~pruneplug.errors.CalibrationRequiredError`
        naming the method when there are none."""
        if calibration is None:
            raise CalibrationRequiredError(self.name)
        if isinstance(calibration, ActivationStats):
            return calibration
        if isinstance(calibration, CalibrationContext):
            name = layer or getattr(self, "layer_name", None)
            if name is None:
                raise CalibrationRequiredError(self.name, "a CalibrationContext needs the weight's tensor name "
                                               f"({type(self).__name__}(layer_name) or compute(..., layer=name))")
            return calibration.require_stats(name)
        raise InvalidArgumentError(f"calibration: expected a CalibrationContext or ActivationStats, got "
                                   f"{type(calibration).__name__}")

    def __repr__(self) -> str:
        return f"<criterion {self.name!r}>"


@dataclass
class LayerResult:
    """What a :class:`Reconstruction` returns for one layer: the pruned and updated weight (a torch
    tensor like the one it was given), the keep-mask (``True`` = kept) and what it measured
    (``pruned``, ``damping``, ``retries``, ``error``, ...), which the reports show."""

    weight: Any
    mask: Any
    metrics: dict = field(default_factory=dict)


class Reconstruction(Criterion):
    """A criterion that chooses its own mask and updates the weights that stay (SparseGPT).

    The caller converts once: :meth:`reconstruct` gets a torch ``[out, in]`` weight (any device,
    float16/bfloat16/float32/float64; a Conv1D ``[in, out]`` weight arrives transposed) and the
    layer's :class:`~pruneplug.ActivationStats`, and returns a :class:`LayerResult`; it modifies
    nothing in place. :func:`pruneplug.criteria.prune_scored` writes the result back into NumPy,
    CuPy or torch weights of either orientation.
    """

    def reconstructs(self) -> bool:
        """Whether pruning with this criterion runs :meth:`reconstruct` (else the scores of
        :meth:`compute` choose a mask and nothing is updated)."""
        return True

    def reconstruct(self, weight: Any, stats: ActivationStats, *, sparsity: float | None = None,
                    count: int | None = None, pattern: str = "unstructured", groups: str = "layer",
                    name: str = "weights") -> LayerResult:
        raise NotImplementedError


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

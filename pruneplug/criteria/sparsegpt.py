"""SparseGPT's saliency as an importance criterion (Aprender's ``SparseGPTImportance``): the
optimal-brain-surgeon score ``w_ij^2 / [H^-1]_jj`` with ``H = X^T X / n + damp * I``,
``damp = damping * mean(diag(X^T X / n))`` (relative damping 0.01), the inverse's diagonal from a
Cholesky inverse in float64.

This is the saliency alone: the weights that stay are not updated. For the full SparseGPT
(mask chosen block by block on updated weights, and the update), use ``method="sparsegpt"`` in
:func:`pruneplug.torch.prune_model` / ``pruneplug prune``, or
:func:`pruneplug.reconstruction.sparsegpt_prune`.

Arithmetic: ``w*w`` from the backend's importance operation (the score dtype: float32 for
float16/bfloat16/float32 weights, float64 for float64), divided in place by the float64 diagonal
rounded once to the score dtype, in the array's own module (NumPy or CuPy).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pruneplug import api
from pruneplug.arrays import adapt
from pruneplug.calibration import ActivationStats, CalibrationContext
from pruneplug.criteria.base import Criterion, score_stats
from pruneplug.errors import CalibrationError, CalibrationRequiredError, InvalidArgumentError, ShapeError
from pruneplug.reconstruction.hessian import inverse_diagonal
from pruneplug.types import ImportanceScores


class SparseGPTImportance(Criterion):
    """Aprender's ``SparseGPTImportance``: ``w_ij^2 / diag((X^T X / n + damp I)^-1)_j``.

    Needs the layer's Hessian statistics (``pp.torch.calibrate(..., hessian=True)`` or
    ``pruneplug calibrate --hessian``). ``damping`` is relative to the mean diagonal (0.01).

    Example::

        >>> import numpy as np, pruneplug as pp
        >>> x = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 2.0]])
        >>> stats = pp.ActivationStats.from_inputs(x)
        >>> stats.hessian = x.T @ x
        >>> w = np.array([[1.0, -1.0]], dtype=np.float32)
        >>> pp.SparseGPTImportance(damping=0.0).compute(w, stats).values.round(4)
        array([[0.5, 2. ]], dtype=float32)
    """

    name = "sparsegpt"
    needs_calibration = True
    default_groups = "layer"

    def __init__(self, layer_name: str | None = None, damping: float = 0.01) -> None:
        if not (isinstance(damping, (int, float)) and np.isfinite(damping) and damping >= 0):
            raise InvalidArgumentError(f"damping={damping!r} must be a finite number >= 0")
        self.layer_name = layer_name
        self.damping = float(damping)

    def compute(self, weights: Any, calibration: Any = None, *, layer: str | None = None,
                backend: str | None = None) -> ImportanceScores:
        """Saliency of a 2-D ``weights`` (``[out, in]``; ``[in, out]`` when the statistics say
        ``input_axis=0``). :class:`CalibrationRequiredError` without statistics,
        :class:`CalibrationError` without a Hessian or for one that does not fit."""
        import torch

        stats = self._stats(calibration, layer)
        name = layer or self.layer_name or "weights"
        adapted = adapt(weights, "weights")
        shape = tuple(int(s) for s in adapted.array.shape)
        if len(shape) != 2:
            raise ShapeError(f"sparsegpt: tensor {name!r} must be 2-D ([out, in]), got shape {list(shape)}")
        if stats.hessian is None:
            raise CalibrationError(f"sparsegpt: the statistics of tensor {name!r} have no Hessian; collect them with "
                                   "pp.torch.calibrate(..., hessian=True) or `pruneplug calibrate --hessian`")
        if shape[stats.input_axis] != stats.in_features or stats.hessian.shape != (stats.in_features,) * 2:
            raise CalibrationError(f"sparsegpt: tensor {name!r} has shape {list(shape)} but its Hessian has shape "
                                   f"{list(stats.hessian.shape)} (input axis {stats.input_axis})")
        hessian = torch.from_numpy(np.asarray(stats.hessian, dtype=np.float64)) / max(stats.count, 1)
        diag = inverse_diagonal(hessian, damping=self.damping, name=name).value.numpy()
        scores = api.importance(weights, "l2", backend=backend)  # w*w: the backend's work, score dtype
        values = adapt(scores.values, "scores").array
        xp = np if isinstance(values, np.ndarray) else __import__("cupy")
        denom = xp.asarray(diag.astype(values.dtype)).reshape((1, -1) if stats.input_axis == 1 else (-1, 1))
        xp.divide(values, denom, out=values)
        return ImportanceScores(scores.values, self.name, score_stats(values))

    def _stats(self, calibration: Any, layer: str | None) -> ActivationStats:
        if calibration is None:
            raise CalibrationRequiredError(self.name)
        if isinstance(calibration, ActivationStats):
            return calibration
        if isinstance(calibration, CalibrationContext):
            name = layer or self.layer_name
            if name is None:
                raise CalibrationRequiredError(self.name, "a CalibrationContext needs the weight's tensor name "
                                               "(SparseGPTImportance(layer_name) or compute(..., layer=name))")
            return calibration.require_stats(name)
        raise InvalidArgumentError(f"calibration: expected a CalibrationContext or ActivationStats, got "
                                   f"{type(calibration).__name__}")

    def __repr__(self) -> str:
        return f"SparseGPTImportance({self.layer_name!r}, damping={self.damping})"

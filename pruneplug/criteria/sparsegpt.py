"""SparseGPT's saliency as an importance criterion (Aprender's ``SparseGPTImportance``): the
optimal-brain-surgeon score ``w_ij^2 / [H^-1]_jj`` with ``H = X^T X / n + damp * I``,
``damp = damping * mean(diag(X^T X / n))`` (relative damping 0.01), the inverse's diagonal from a
Cholesky inverse in float64.

:meth:`SparseGPTImportance.compute` is the saliency alone. As a *method* (``method="sparsegpt"``
in :func:`pruneplug.torch.prune_model`, ``pruneplug prune`` and
:func:`pruneplug.criteria.prune_scored`) the criterion prunes by
the full SparseGPT (a :class:`~pruneplug.criteria.Reconstruction`: the mask chosen block by block
on the updated weights, and the update; :func:`pruneplug.reconstruction.sparsegpt_prune`).
``SparseGPTImportance(update=False)`` as the method gives masks from the saliency alone.

Arithmetic: ``w*w`` from the backend's importance operation (the score dtype: float32 for
float16/bfloat16/float32 weights, float64 for float64), divided in place by the float64 diagonal
rounded once to the score dtype, in the array's own module (NumPy or CuPy).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pruneplug import api
from pruneplug.arrays import adapt, array_module
from pruneplug.calibration import ActivationStats
from pruneplug.criteria.base import LayerResult, Reconstruction, score_stats
from pruneplug.errors import CalibrationError, HessianError, InvalidArgumentError, ShapeError
from pruneplug.reconstruction.hessian import inverse_diagonal
from pruneplug.types import ImportanceScores


class SparseGPTImportance(Reconstruction):
    """Aprender's ``SparseGPTImportance``: ``w_ij^2 / diag((X^T X / n + damp I)^-1)_j``.

    Needs the layer's Hessian statistics (``pp.torch.calibrate(..., hessian=True)`` or
    ``pruneplug calibrate --hessian``). ``damping`` is relative to the mean diagonal (0.01).
    As a method it reconstructs (:meth:`reconstruct`); ``update=False`` prunes by the saliency
    alone.

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
    statistics = frozenset({"input_norms", "hessian"})
    default_groups = "layer"

    def __init__(self, layer_name: str | None = None, damping: float = 0.01, *, update: bool = True,
                 block_size: int = 128, dtype: str = "float32") -> None:
        if not (isinstance(damping, (int, float)) and np.isfinite(damping) and damping >= 0):
            raise InvalidArgumentError(f"damping={damping!r} must be a finite number >= 0")
        self.layer_name = layer_name
        self.damping = float(damping)
        self.update = bool(update)
        self.block_size = block_size
        self.dtype = dtype

    def reconstructs(self) -> bool:
        return self.update

    def reconstruct(self, weight: Any, stats: ActivationStats, *, sparsity: float | None = None,
                    count: int | None = None, pattern: str = "unstructured", groups: str = "layer",
                    name: str = "weights") -> LayerResult:
        """SparseGPT of a torch ``[out, in]`` weight with the layer's Hessian (the mask chosen block
        by block on the updated weights, then the update; pruned positions ``+0.0``)."""
        from pruneplug.reconstruction import sparsegpt_prune

        hessian = self._hessian(stats, tuple(int(s) for s in weight.shape), name, input_axis=1)
        result = sparsegpt_prune(weight.detach(), hessian, sparsity=sparsity, count=count, pattern=pattern,
                                 groups=groups, block_size=self.block_size, damping=self.damping, dtype=self.dtype,
                                 name=name)
        return LayerResult(result.weight, result.mask, {
            "pruned": result.pruned, "damping": result.damping, "retries": result.retries,
            "dead_inputs": result.dead_inputs, "error": result.error})

    @staticmethod
    def _hessian(stats: ActivationStats, shape: tuple, name: str, input_axis: int | None = None) -> Any:
        """The layer's Hessian as a torch tensor (NumPy statistics shared, torch ones as they are)."""
        import torch

        axis = stats.input_axis if input_axis is None else input_axis
        if len(shape) != 2:
            raise ShapeError(f"sparsegpt: tensor {name!r} must be 2-D ([out, in]), got shape {list(shape)}")
        if stats.hessian is None:
            raise CalibrationError(f"sparsegpt: the statistics of tensor {name!r} have no Hessian; collect them with "
                                   "pp.torch.calibrate(..., hessian=True) or `pruneplug calibrate --hessian`")
        if shape[axis] != stats.in_features or tuple(stats.hessian.shape) != (stats.in_features,) * 2:
            raise CalibrationError(f"sparsegpt: tensor {name!r} has shape {list(shape)} but its Hessian has shape "
                                   f"{list(stats.hessian.shape)} (input axis {axis})")
        hessian = stats.hessian
        return hessian if isinstance(hessian, torch.Tensor) else torch.from_numpy(np.asarray(hessian))

    def compute(self, weights: Any, calibration: Any = None, *, layer: str | None = None,
                backend: str | None = None) -> ImportanceScores:
        """Saliency of a 2-D ``weights`` (``[out, in]``; ``[in, out]`` when the statistics say
        ``input_axis=0``). :class:`CalibrationRequiredError` without statistics,
        :class:`CalibrationError` without a Hessian or for one that does not fit."""
        import torch

        stats = self.layer_stats(calibration, layer)
        name = layer or self.layer_name or "weights"
        shape = tuple(int(s) for s in adapt(weights, "weights").array.shape)
        hessian = self._hessian(stats, shape, name).to(torch.float64) / max(stats.count, 1)
        diag = inverse_diagonal(hessian, damping=self.damping, name=name).value.cpu().numpy()
        scores = api.importance(weights, "l2", backend=backend)  # w*w: the backend's work, score dtype
        values = adapt(scores.values, "scores").array
        xp = array_module(values)
        with np.errstate(over="ignore"):  # out of range is checked below, with a message
            rounded = diag.astype(values.dtype)
            denom = xp.asarray(rounded).reshape((1, -1) if stats.input_axis == 1 else (-1, 1))
            xp.divide(values, denom, out=values)
        if not (np.isfinite(rounded).all() and (rounded >= np.finfo(rounded.dtype).tiny).all()
                and bool(xp.isfinite(values).all())):  # all-0 or all-inf scores would rank by index alone
            raise HessianError(
                f"sparsegpt: tensor {name!r}: the saliency w^2 / diag(H^-1) does not fit {values.dtype} at this "
                f"Hessian's scale (diag(H^-1) from {float(diag.min()):g} to {float(diag.max()):g}); rescale the "
                "statistics, or use method='sparsegpt' with its update, which does not depend on the scale")
        return ImportanceScores(scores.values, self.name, score_stats(values))

    def __repr__(self) -> str:
        return f"SparseGPTImportance({self.layer_name!r}, damping={self.damping}, update={self.update})"

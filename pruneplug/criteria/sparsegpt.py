"""SparseGPT's saliency as an importance criterion (Aprender's ``SparseGPTImportance``): the
optimal-brain-surgeon score ``w_ij^2 / [H^-1]_jj`` with ``H = X^T X / n + damp * I``,
``damp = damping * mean(diag(X^T X / n))`` (relative damping 0.01), the inverse's diagonal from a
Cholesky inverse in float64.

:meth:`SparseGPTImportance.compute` is the saliency alone. As a *method* (``method="sparsegpt"``
in :func:`pruneplug.torch.prune_model`, ``pruneplug prune`` and
:func:`pruneplug.criteria.prune_scored`) the criterion declares ``updates_weights`` and prunes by
the full SparseGPT (:meth:`SparseGPTImportance.reconstruct`: the mask chosen block by block on the
updated weights, and the update; :func:`pruneplug.reconstruction.sparsegpt_prune`).
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
from pruneplug.criteria.base import Criterion, score_stats
from pruneplug.errors import CalibrationError, HessianError, InvalidArgumentError, ShapeError
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
    #: calibration must collect each layer's ``X^T X`` (``hessian=True``)
    needs_hessian = True
    default_groups = "layer"

    def __init__(self, layer_name: str | None = None, damping: float = 0.01, *, update: bool = True,
                 block_size: int = 128, dtype: str = "float32") -> None:
        if not (isinstance(damping, (int, float)) and np.isfinite(damping) and damping >= 0):
            raise InvalidArgumentError(f"damping={damping!r} must be a finite number >= 0")
        self.layer_name = layer_name
        self.damping = float(damping)
        self.updates_weights = bool(update)
        self.block_size = block_size
        self.dtype = dtype
        #: per tensor name, what the last :meth:`reconstruct` of it reported (damping, retries, ...)
        self.results: dict[str, dict] = {}

    def reconstruct(self, weights: Any, calibration: Any = None, *, layer: str | None = None,
                    sparsity: float | None = None, count: int | None = None, pattern: str = "unstructured",
                    groups: str = "layer") -> None:
        """Prune ``weights`` in place by SparseGPT with the layer's Hessian from ``calibration``
        (writes the updated weights; pruned positions ``+0.0``). Torch tensors (any device), NumPy
        and CuPy arrays, ``[out, in]`` or ``[in, out]`` as the statistics' ``input_axis`` says."""
        import torch

        from pruneplug.reconstruction import sparsegpt_prune

        stats = self.layer_stats(calibration, layer)
        name = layer or self.layer_name or "weights"
        hessian = self._hessian(stats, weights, name)
        if isinstance(weights, torch.Tensor):
            target = weights.data
        elif isinstance(weights, np.ndarray):
            target = torch.from_numpy(weights)
        else:  # CuPy: a zero-copy torch view through DLPack
            target = torch.from_dlpack(weights)
        view = target if stats.input_axis == 1 else target.t()
        result = sparsegpt_prune(view, torch.from_numpy(hessian), sparsity=sparsity, count=count, pattern=pattern,
                                 groups=groups, block_size=self.block_size, damping=self.damping, dtype=self.dtype,
                                 name=name)
        with torch.no_grad():
            view.copy_(result.weight)
        self.results[name] = {"pruned": result.pruned, "damping": result.damping, "retries": result.retries,
                              "dead_inputs": result.dead_inputs, "error": result.error}

    @staticmethod
    def _hessian(stats: ActivationStats, weights: Any, name: str) -> np.ndarray:
        shape = tuple(int(s) for s in weights.shape)
        if len(shape) != 2:
            raise ShapeError(f"sparsegpt: tensor {name!r} must be 2-D ([out, in]), got shape {list(shape)}")
        if stats.hessian is None:
            raise CalibrationError(f"sparsegpt: the statistics of tensor {name!r} have no Hessian; collect them with "
                                   "pp.torch.calibrate(..., hessian=True) or `pruneplug calibrate --hessian`")
        if shape[stats.input_axis] != stats.in_features or stats.hessian.shape != (stats.in_features,) * 2:
            raise CalibrationError(f"sparsegpt: tensor {name!r} has shape {list(shape)} but its Hessian has shape "
                                   f"{list(stats.hessian.shape)} (input axis {stats.input_axis})")
        return np.asarray(stats.hessian, dtype=np.float64)

    def compute(self, weights: Any, calibration: Any = None, *, layer: str | None = None,
                backend: str | None = None) -> ImportanceScores:
        """Saliency of a 2-D ``weights`` (``[out, in]``; ``[in, out]`` when the statistics say
        ``input_axis=0``). :class:`CalibrationRequiredError` without statistics,
        :class:`CalibrationError` without a Hessian or for one that does not fit."""
        import torch

        stats = self.layer_stats(calibration, layer)
        name = layer or self.layer_name or "weights"
        hessian = torch.from_numpy(self._hessian(stats, adapt(weights, "weights").array, name)) / max(stats.count, 1)
        diag = inverse_diagonal(hessian, damping=self.damping, name=name).value.numpy()
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
        return f"SparseGPTImportance({self.layer_name!r}, damping={self.damping}, update={self.updates_weights})"

"""Prune one weight in place by any criterion: the one routine the torch front end and the
checkpoint pruner share (scores, then the mask of the pattern and comparison group, then apply)."""

from __future__ import annotations

from typing import Any

from pruneplug import api, masks
from pruneplug.arrays import adapt, array_module
from pruneplug.calibration import ActivationStats, CalibrationContext
from pruneplug.criteria.base import LayerResult, Reconstruction
from pruneplug.criteria.registry import get_criterion
from pruneplug.errors import CalibrationRequiredError, InvalidArgumentError
from pruneplug.patterns import parse_pattern
from pruneplug.validation import check_groups, resolve_count


def prune_scored(weights: Any, method: Any = "l1", *, sparsity: float | None = None, pattern: str = "unstructured",
                 groups: str | None = None, calibration: Any = None, layer: str | None = None, axis: int | None = None,
                 backend: str | None = None, count: int | None = None,
                 input_axis: int | None = None) -> LayerResult | None:
    """Prune ``weights`` (NumPy, CuPy or PyTorch, writable) in place by the scores of ``method``
    (a criterion name or :class:`~pruneplug.criteria.Criterion`).

    ``groups`` (unstructured only) defaults to the criterion's own (``"row"`` for Wanda, else
    ``"layer"``). ``input_axis``: the weight's input-feature axis, 1 for ``[out, in]`` (the
    default) and 0 for a Hugging Face Conv1D ``[in, out]``; when None, the statistics' own
    ``input_axis`` (1 without statistics). ``axis`` (N:M) defaults to the input axis, so that N:M
    groups run along the inputs of every output unit whatever the layout; ``groups="row"`` compares
    within each output unit (a column of a Conv1D weight). ``"row"``, ``"column"`` and
    ``"block(H,W)"`` act on the tensor as stored. ``calibration`` and ``layer`` are passed to the
    criterion. Magnitude criteria on whole ``[out, in]`` layers take the fused in-place path.

    ``count`` (unstructured, instead of ``sparsity``): prune exactly this many weights of the
    tensor (per-layer sparsities such as OWL's); with row groups the first ``count % rows`` rows
    prune one more than the others. A :class:`~pruneplug.criteria.Reconstruction` (SparseGPT)
    chooses the mask and updates the remaining weights itself: its :class:`LayerResult` (metrics
    included) is returned; other criteria return None.

    Example::

        >>> import numpy as np, pruneplug as pp
        >>> w = np.array([[1.0, -2.0, 3.0, 0.5]], dtype=np.float32)
        >>> pp.criteria.prune_scored(w, "wanda", sparsity=0.5, calibration=pp.ActivationStats(np.array([9.0, 1.0, 1.0, 100.0]), 1))
        >>> w
        array([[0. , 0. , 3. , 0.5]], dtype=float32)
    """

    criterion = get_criterion(method)
    spec = parse_pattern(pattern)
    if groups is None:  # the criterion's own comparison group, for the pattern it concerns
        groups = criterion.default_groups if spec.kind == "unstructured" else "layer"
    if check_groups(groups) == "row" and spec.kind == "nm":
        groups = "layer"  # an N:M group is already a comparison group; row grouping does not apply
    if spec.kind != "unstructured" and groups == "row":
        raise InvalidArgumentError(f"groups='row' applies to unstructured pruning, not pattern={pattern!r}")
    if input_axis is None:
        input_axis = _input_axis(calibration, layer or getattr(criterion, "layer_name", None))
    elif input_axis not in (0, 1):
        raise InvalidArgumentError(f"input_axis={input_axis!r}: expected 1 ([out, in]) or 0 ([in, out])")
    nm_axis = (0 if input_axis == 0 else -1) if axis is None else axis

    if criterion.requires_calibration() and calibration is None:
        raise CalibrationRequiredError(criterion.name)
    if count is not None and (spec.kind != "unstructured" or sparsity is not None):
        raise InvalidArgumentError("count= applies to pattern='unstructured' and replaces sparsity=")
    if isinstance(criterion, Reconstruction) and criterion.reconstructs():
        return _reconstruct(weights, criterion, calibration, layer, sparsity=sparsity, count=count, pattern=pattern,
                            groups=groups)
    # the core's fused paths (no score array at all for layer groups), except row groups of an
    # [in, out] weight: the core's rows are its input features, not its output units
    magnitude = getattr(criterion, "method", None) in ("l1", "l2") and count is None \
        and not (groups == "row" and input_axis == 0)
    if magnitude:
        if spec.kind == "nm":
            api.prune(weights, pattern=pattern, method=criterion.method, axis=nm_axis, backend=backend, inplace=True)
        else:
            api.prune(weights, sparsity, pattern=pattern, method=criterion.method, backend=backend, inplace=True,
                      groups=groups)
        return
    scores = criterion.compute(weights, calibration, layer=layer, backend=backend)
    if spec.kind == "nm":
        mask = masks.generate_nm_mask(scores, spec.n, spec.m, axis=nm_axis, backend=backend)
    elif spec.kind == "unstructured" and (groups == "layer" or (count is not None and scores.values.ndim != 2)):
        mask = masks.generate_unstructured_mask(scores, sparsity, count=count, backend=backend)
    elif spec.kind == "unstructured":
        mask = _row_groups_mask(scores.values, sparsity, count, input_axis, backend)
    elif spec.kind == "block":
        mask = masks.generate_block_mask(scores, spec.block_shape, sparsity, backend=backend)
    else:
        generate = masks.generate_row_mask if spec.kind == "row" else masks.generate_column_mask
        mask = generate(scores, sparsity, backend=backend)
    del scores
    api.apply_mask(mask, weights, backend=backend)


def _reconstruct(weights: Any, criterion: Reconstruction, calibration: Any, layer: str | None,
                 **plan: Any) -> LayerResult:
    """Run a reconstruction on a torch ``[out, in]`` view of ``weights`` (NumPy, bfloat16 NumPy,
    CuPy or torch; ``[in, out]`` when the statistics say input axis 0) and write its result back
    into ``weights``: the one place where array type and orientation are converted."""
    stats = criterion.layer_stats(calibration, layer)
    name = layer or getattr(criterion, "layer_name", None) or "weights"
    view = torch_view(weights)
    view = view if stats.input_axis == 1 else view.t()
    result = criterion.reconstruct(view, stats, name=name, **plan)
    import torch

    with torch.no_grad():
        view.copy_(result.weight)
    return result


def torch_view(weights: Any) -> Any:
    """A torch tensor sharing the memory of a torch tensor, NumPy array (bfloat16 included) or CuPy
    array (DLPack)."""
    import numpy as np
    import torch

    if isinstance(weights, torch.Tensor):
        return weights.detach()
    if isinstance(weights, np.ndarray):
        if weights.dtype.name == "bfloat16":
            return torch.from_numpy(weights.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(weights)
    return torch.from_dlpack(weights)


def _row_groups_mask(values: Any, sparsity: float | None, count: int | None, input_axis: int,
                     backend: str | None) -> Any:
    """Keep-mask of row groups over the output units (the rows of an ``[out, in]`` weight, the
    columns of an HF Conv1D ``[in, out]`` one): ``round(sparsity * inputs)`` in every unit, or an
    exact total ``count``, ``count // units`` in every unit and one more in the first
    ``count % units``."""
    adapted = adapt(values, "scores")
    by_rows = adapted.array if input_axis == 1 else adapted.array.T.copy()
    rows, cols = by_rows.shape
    if count is None:
        mask = adapt(masks.generate_unstructured_mask(by_rows, sparsity, groups="row", backend=backend).data,
                     "mask").array
    else:
        per_row, extra = divmod(resolve_count(None, count, rows * cols, "entries"), rows)
        xp = array_module(by_rows)
        parts = [adapt(masks.generate_unstructured_mask(xp.ascontiguousarray(part), count=k, groups="row",
                                                        backend=backend).data, "mask").array
                 for part, k in ((by_rows[:extra], per_row + 1), (by_rows[extra:], per_row)) if part.shape[0]]
        mask = xp.concatenate(parts, axis=0)
    return adapted.wrap(mask if input_axis == 1 else mask.T.copy())


def _input_axis(calibration: Any, layer: str | None) -> int:
    if isinstance(calibration, ActivationStats):
        return calibration.input_axis
    if isinstance(calibration, CalibrationContext) and layer is not None and layer in calibration:
        return calibration[layer].input_axis
    return 1

"""Prune one weight in place by any criterion: the one routine the torch front end and the
checkpoint pruner share (scores, then the mask of the pattern and comparison group, then apply)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from pruneplug import api
from pruneplug.arrays import adapt
from pruneplug.calibration import ActivationStats, CalibrationContext
from pruneplug.criteria.registry import get_criterion
from pruneplug.errors import CalibrationRequiredError, InvalidArgumentError

_NM = re.compile(r"^(\d+):(\d+)$")
_BLOCK = re.compile(r"^block\((\d+),\s*(\d+)\)$")


def prune_scored(weights: Any, method: Any = "l1", *, sparsity: float | None = None, pattern: str = "unstructured",
                 groups: str | None = None, calibration: Any = None, layer: str | None = None, axis: int | None = None,
                 backend: str | None = None, count: int | None = None) -> None:
    """Prune ``weights`` (NumPy, CuPy or PyTorch, writable) in place by the scores of ``method``
    (a criterion name or :class:`~pruneplug.criteria.Criterion`).

    ``groups`` (unstructured only) defaults to the criterion's own (``"row"`` for Wanda, else
    ``"layer"``). ``axis`` (N:M) defaults to the input axis (the last one; axis 0 for a Conv1D
    weight whose statistics say ``input_axis=0``). ``calibration`` and ``layer`` are passed to
    the criterion. Magnitude criteria on whole layers take the fused in-place path.

    ``count`` (unstructured, instead of ``sparsity``): prune exactly this many weights of the
    tensor (per-layer sparsities such as OWL's); with row groups the first ``count % rows`` rows
    prune one more than the others. A criterion with ``updates_weights`` (SparseGPT) chooses the
    mask and updates the remaining weights itself (:meth:`reconstruct`).

    Example::

        >>> import numpy as np, pruneplug as pp
        >>> w = np.array([[1.0, -2.0, 3.0, 0.5]], dtype=np.float32)
        >>> pp.criteria.prune_scored(w, "wanda", sparsity=0.5, calibration=pp.ActivationStats(np.array([9.0, 1.0, 1.0, 100.0]), 1))
        >>> w
        array([[0. , 0. , 3. , 0.5]], dtype=float32)
    """

    criterion = get_criterion(method)
    if groups is None:  # the criterion's own comparison group, for the pattern it concerns
        groups = criterion.default_groups if pattern == "unstructured" else "layer"
    if groups not in ("layer", "row"):
        raise InvalidArgumentError(f"groups={groups!r}: expected 'layer' or 'row'")
    nm = _NM.match(pattern) if isinstance(pattern, str) else None
    if nm and groups == "row":
        groups = "layer"  # an N:M group is already a comparison group; row grouping does not apply
    if pattern != "unstructured" and not nm and groups == "row":
        raise InvalidArgumentError(f"groups='row' applies to unstructured pruning, not pattern={pattern!r}")
    input_axis = _input_axis(calibration, layer or getattr(criterion, "layer_name", None))
    nm_axis = (0 if input_axis == 0 else -1) if axis is None else axis

    if criterion.requires_calibration() and calibration is None:
        raise CalibrationRequiredError(criterion.name)
    if count is not None and (pattern != "unstructured" or sparsity is not None):
        raise InvalidArgumentError("count= applies to pattern='unstructured' and replaces sparsity=")
    if getattr(criterion, "updates_weights", False):  # a reconstruction: its own mask, then the update
        criterion.reconstruct(weights, calibration, layer=layer, sparsity=sparsity, count=count, pattern=pattern,
                              groups=groups)
        return
    magnitude = getattr(criterion, "method", None) in ("l1", "l2") and input_axis == 1 and count is None
    if magnitude:  # the core's fused paths: no score array at all for layer groups
        if nm:
            api.prune(weights, pattern=pattern, method=criterion.method, axis=nm_axis, backend=backend, inplace=True)
        else:
            api.prune(weights, sparsity, pattern=pattern, method=criterion.method, backend=backend, inplace=True,
                      groups=groups)
        return
    scores = criterion.compute(weights, calibration, layer=layer, backend=backend)
    if nm:
        mask = api.generate_nm_mask(scores, int(nm.group(1)), int(nm.group(2)), axis=nm_axis, backend=backend)
    elif count is not None:
        mask = _count_mask(scores.values, count, groups, input_axis, backend)
    elif pattern == "unstructured" and groups == "row" and input_axis == 0:
        mask = _transposed_row_mask(scores.values, sparsity, backend)
    elif pattern == "unstructured":
        mask = api.generate_unstructured_mask(scores, sparsity, groups=groups, backend=backend)
    elif pattern == "row":
        mask = api.generate_row_mask(scores, sparsity, backend=backend)
    elif pattern == "column":
        mask = api.generate_column_mask(scores, sparsity, backend=backend)
    elif isinstance(pattern, str) and _BLOCK.match(pattern):
        b = _BLOCK.match(pattern)
        mask = api.generate_block_mask(scores, (int(b.group(1)), int(b.group(2))), sparsity, backend=backend)
    else:
        raise InvalidArgumentError(f"pattern={pattern!r}: expected 'unstructured', 'N:M', 'row', 'column' or 'block(H,W)'")
    del scores
    api.apply_mask(mask, weights, backend=backend)


def _count_mask(values: Any, count: int, groups: str, input_axis: int, backend: str | None) -> Any:
    """Keep-mask pruning exactly ``count`` of ``values``: over the whole tensor (``sparsity =
    count / n`` rounds back to ``count``), or per output row, ``count // rows`` in every row and
    one more in the first ``count % rows`` rows."""
    adapted = adapt(values, "scores")
    array = adapted.array
    n = int(array.size)
    if not 0 <= count <= n:
        raise InvalidArgumentError(f"count={count} must be in [0, {n}]")
    if groups == "layer" or array.ndim != 2:
        sparsity = count / n if n else 0.0
        assert api.count_to_prune(sparsity, n) == count
        return api.generate_unstructured_mask(values, sparsity, backend=backend)
    by_rows = array if input_axis == 1 else array.T.copy()
    rows, cols = by_rows.shape
    per_row, extra = divmod(count, rows)
    xp = np if isinstance(by_rows, np.ndarray) else __import__("cupy")
    parts = []
    for part, k in ((by_rows[:extra], per_row + 1), (by_rows[extra:], per_row)):
        if part.shape[0]:
            sparsity = k / cols
            assert api.count_to_prune(sparsity, cols) == k
            m = api.generate_unstructured_mask(xp.ascontiguousarray(part), sparsity, groups="row", backend=backend)
            parts.append(adapt(m.data, "mask").array)
    mask = xp.concatenate(parts, axis=0)
    return adapted.wrap(mask if input_axis == 1 else mask.T.copy())


def _input_axis(calibration: Any, layer: str | None) -> int:
    if isinstance(calibration, ActivationStats):
        return calibration.input_axis
    if isinstance(calibration, CalibrationContext) and layer is not None and layer in calibration:
        return calibration[layer].input_axis
    return 1


def _transposed_row_mask(values: Any, sparsity: float, backend: str | None) -> Any:
    """Row groups of an ``[in, out]`` weight (HF Conv1D): the output units are its columns."""
    adapted = adapt(values, "scores")
    mask = api.generate_unstructured_mask(adapted.array.T.copy(), sparsity, groups="row", backend=backend)
    return adapted.wrap(adapt(mask.data, "mask").array.T.copy())

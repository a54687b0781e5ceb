"""The public API: importance, mask generation, mask application, pruning.

Every function validates its arguments here, once, then hands C-contiguous NumPy or CuPy arrays to
the backend the registry picks. Nothing here knows any backend's internals.
"""

from __future__ import annotations

import functools
import math
import sys
from typing import Any

from pruneplug.arrays import (
    adapt,
    check_float_dtype,
    check_in_place,
    check_writable,
    contiguous,
    dtype_name,
)
from pruneplug.dispatch import run_operation as _run  # api's short name for it
from pruneplug.errors import InvalidArgumentError, ShapeError
from pruneplug.masking import apply_bool_mask
from pruneplug.patterns import parse_pattern
from pruneplug.registry import get_registry
from pruneplug.types import BackendStatus, ImportanceScores, Mask, ScoreStats
from pruneplug.validation import (
    METHODS,
    check_block_shape,
    check_method,
    check_nm,
    check_sparsity,
    count_to_prune,
    normalize_axis,
    shown,
)


def _dask_aware(function):
    """Hand a call whose array is a Dask array to ``pruneplug.dask`` (imported only then), which has
    a function of the same name and signature; every other call runs ``function`` itself."""
    @functools.wraps(function)
    def dispatch(*args: Any, **kwargs: Any) -> Any:
        if "dask.array" in sys.modules:  # no Dask array can exist before it is imported: a cheap test
            for arg in (*args[:2], kwargs.get("weights"), kwargs.get("scores")):
                inner = arg.values if isinstance(arg, ImportanceScores) else arg.data if isinstance(arg, Mask) else arg
                if type(inner).__module__.startswith("dask."):
                    from pruneplug import dask as dask_api  # here, not at the top: it imports Dask (optional, heavy)

                    return getattr(dask_api, function.__name__)(*args, **kwargs)
        return function(*args, **kwargs)
    return dispatch


# ---------------------------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------------------------
def _scores_array(scores: Any, argname: str = "scores"):
    """Accept ImportanceScores or a bare array; return the adapted array."""
    values = scores.values if isinstance(scores, ImportanceScores) else scores
    adapted = adapt(values, argname)
    check_float_dtype(adapted.array, argname)
    return adapted


def _check_out(out: Any, shape: tuple, array_type: str) -> Any:
    if out is None:
        return None
    adapted = adapt(out, "out")
    if adapted.array_type != array_type or dtype_name(adapted.array) != "bool" or tuple(adapted.array.shape) != shape:
        raise InvalidArgumentError(
            f"out: expected a C-contiguous bool {array_type} array of shape {shape}, got "
            f"{dtype_name(adapted.array)} {adapted.array_type} array of shape {tuple(adapted.array.shape)}"
        )
    if not adapted.array.flags.c_contiguous:
        raise InvalidArgumentError("out: must be C-contiguous")
    check_writable(adapted.array, "out")
    return adapted.array


# ---------------------------------------------------------------------------------------------
# importance
# ---------------------------------------------------------------------------------------------
@_dask_aware
def importance(weights: Any, method: str = "l1", *, backend: str | None = None) -> ImportanceScores:
    """Magnitude importance of ``weights``: ``|w|`` for ``"l1"``, ``w**2`` for ``"l2"``.

    Scores have the weights' array type and shape; float16/bfloat16 weights give float32 scores.

    Example::

        >>> import numpy as np, pruneplug as pp
        >>> s = pp.importance(np.array([-2.0, 1.0], dtype=np.float32), method="l2")
        >>> s.values, s.method, s.stats.mean
        (array([4., 1.], dtype=float32), 'magnitude_l2', 2.5)
    """
    check_method(method)
    adapted = adapt(weights, "weights")
    check_float_dtype(adapted.array, "weights")
    array = contiguous(adapted.array)
    _, (scores, stats) = _run(backend, "importance", array, adapted.array_type, weights=array, method=method)
    return ImportanceScores(values=adapted.wrap(scores), method=METHODS[method][1], stats=ScoreStats(*map(float, stats)))


class MagnitudeImportance:
    """Aprender's ``MagnitudeImportance``: ``MagnitudeImportance.l1()`` or ``.l2()``.

    Example::

        >>> import numpy as np, pruneplug as pp
        >>> pp.MagnitudeImportance.l1().compute(np.array([-3.0, 1.0])).values
        array([3., 1.])
    """

    def __init__(self, method: str = "l1") -> None:
        check_method(method)
        self.method = method

    @classmethod
    def l1(cls) -> "MagnitudeImportance":
        return cls("l1")

    @classmethod
    def l2(cls) -> "MagnitudeImportance":
        return cls("l2")

    @property
    def name(self) -> str:
        return METHODS[self.method][1]

    def requires_calibration(self) -> bool:
        """Magnitude importance needs no calibration data."""
        return False

    def compute(self, weights: Any, calibration: Any = None, *, backend: str | None = None) -> ImportanceScores:
        """Scores of ``weights``; ``calibration`` is accepted for API parity and ignored."""
        return importance(weights, self.method, backend=backend)

    def __repr__(self) -> str:
        return f"MagnitudeImportance.{self.method}()"


# ---------------------------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------------------------
@_dask_aware
def generate_unstructured_mask(scores: Any, sparsity: float, *, groups: str = "layer", backend: str | None = None,
                               out: Any = None) -> Mask:
    """Prune exactly ``round(sparsity * n)`` entries: the lowest scores, ties by lower flat index.

    ``groups="row"`` (2-D scores) compares scores within each row instead, as Wanda does: exactly
    ``round(sparsity * columns)`` pruned in every row, ties by lower column index.

    Example::

        >>> import numpy as np, pruneplug as pp
        >>> pp.generate_unstructured_mask(np.array([3.0, 1.0, 1.0, 2.0]), 0.5).data
        array([ True, False, False,  True])
        >>> pp.generate_unstructured_mask(np.array([[3.0, 1.0], [0.0, 9.0]]), 0.5, groups="row").data
        array([[ True, False],
               [False,  True]])
    """
    adapted = _scores_array(scores)
    array = contiguous(adapted.array)
    if _check_groups(groups) == "row":
        _, cols = _check_2d(array, "groups='row'")
        k = count_to_prune(sparsity, cols)
        out = _check_out(out, tuple(array.shape), adapted.array_type)
        name, data = _run(backend, "row_mask", array, adapted.array_type, values=array, k=k, transform="identity",
                          out=out)
        return Mask(adapted.wrap(data), "unstructured", name)
    k = count_to_prune(sparsity, int(array.size))
    out = _check_out(out, tuple(array.shape), adapted.array_type)
    name, data = _run(backend, "unstructured_mask", array, adapted.array_type,
                      values=array, k=k, transform="identity", out=out)
    return Mask(adapted.wrap(data), "unstructured", name)


@_dask_aware
def generate_nm_mask(scores: Any, n: int, m: int, axis: int = -1, *, backend: str | None = None, out: Any = None) -> Mask:
    """Keep the ``n`` largest of every ``m`` consecutive scores along ``axis`` (ties: lower index).

    The default axis is the last one, the input dimension of a ``[out, in]`` weight; for a conv
    weight ``[K, C, R, S]`` pass ``axis=1`` (input channels), as NVIDIA's ASP groups.

    Example::

        >>> import numpy as np, pruneplug as pp
        >>> pp.generate_nm_mask(np.array([[1.0, 4.0, 3.0, 2.0]]), 2, 4).data
        array([[False,  True,  True, False]])
    """
    n, m = check_nm(n, m)
    adapted = _scores_array(scores)
    array = contiguous(adapted.array)
    axis = normalize_axis(axis, tuple(array.shape), m)
    out = _check_out(out, tuple(array.shape), adapted.array_type)
    name, data = _run(backend, "nm_mask", array, adapted.array_type,
                      values=array, n=n, m=m, axis=axis, transform="identity", out=out)
    return Mask(adapted.wrap(data), f"{n}:{m}", name)


def _check_groups(groups: Any) -> str:
    if groups not in ("layer", "row"):
        raise InvalidArgumentError(f"groups={groups!r}: expected 'layer' (one comparison over the whole array) "
                                   "or 'row' (exact count in every row of a 2-D array)")
    return groups


def _check_2d(array: Any, what: str) -> tuple[int, int]:
    if array.ndim != 2:
        raise ShapeError(f"{what} needs 2-D scores, got shape {tuple(array.shape)}")
    return int(array.shape[0]), int(array.shape[1])


def _line_block(kind: str, array: Any) -> tuple[int, int]:
    """The block of a ``"row"`` (1, cols) or ``"column"`` (rows, 1) mask; with no columns (rows)
    the lines are empty and a side of 1 is the same."""
    rows, cols = _check_2d(array, f"a {kind} mask")
    return (1, max(cols, 1)) if kind == "row" else (max(rows, 1), 1)


def _blocks(array: Any, block_shape: tuple[int, int], pattern: str) -> int:
    """How many blocks of ``block_shape`` tile the 2-D ``array`` (a ShapeError when they do not)."""
    rows, cols = _check_2d(array, f"a {pattern} mask")
    block_rows, block_cols = block_shape
    if rows % block_rows or cols % block_cols:
        raise ShapeError(
            f"block_shape={tuple(block_shape)} does not divide the scores' shape {(rows, cols)}"
        )
    return (rows // block_rows) * (cols // block_cols)


def _block_mask(scores: Any, block_shape: tuple[int, int], sparsity: float, pattern: str,
                backend: str | None, out: Any) -> Mask:
    adapted = _scores_array(scores)
    array = contiguous(adapted.array)
    block_rows, block_cols = block_shape
    k = count_to_prune(sparsity, _blocks(array, block_shape, pattern))
    out = _check_out(out, tuple(array.shape), adapted.array_type)
    name, data = _run(backend, "block_mask", array, adapted.array_type,
                      values=array, block_shape=(block_rows, block_cols), k=k, transform="identity", out=out)
    return Mask(adapted.wrap(data), pattern, name)


@_dask_aware
def generate_block_mask(scores: Any, block_shape: tuple[int, int], sparsity: float, *,
                        backend: str | None = None, out: Any = None) -> Mask:
    """Prune whole blocks of a 2-D array: a block's score is the (float64, row-major) sum of its
    scores; exactly ``round(sparsity * blocks)`` lowest blocks are pruned, ties by lower block index.

    Example::

        >>> import numpy as np, pruneplug as pp
        >>> pp.generate_block_mask(np.arange(8.0).reshape(2, 4), (2, 2), 0.5).data
        array([[False, False,  True,  True],
               [False, False,  True,  True]])
    """
    bh, bw = check_block_shape(block_shape)
    return _block_mask(scores, (bh, bw), sparsity, f"block({bh},{bw})", backend, out)


@_dask_aware
def generate_row_mask(scores: Any, sparsity: float, *, backend: str | None = None, out: Any = None) -> Mask:
    """Prune whole rows (output neurons) of a 2-D array by the sum of their scores.

    Example::

        >>> import numpy as np, pruneplug as pp
        >>> pp.generate_row_mask(np.array([[1.0, 1.0], [5.0, 5.0]]), 0.5).data
        array([[False, False],
               [ True,  True]])
    """
    adapted = _scores_array(scores)
    return _block_mask(scores, _line_block("row", adapted.array), sparsity, "row", backend, out)


@_dask_aware
def generate_column_mask(scores: Any, sparsity: float, *, backend: str | None = None, out: Any = None) -> Mask:
    """Prune whole columns (input features) of a 2-D array by the sum of their scores.

    Example::

        >>> import numpy as np, pruneplug as pp
        >>> pp.generate_column_mask(np.array([[1.0, 5.0], [1.0, 5.0]]), 0.5).data
        array([[False,  True],
               [False,  True]])
    """
    adapted = _scores_array(scores)
    return _block_mask(scores, _line_block("column", adapted.array), sparsity, "column", backend, out)


# ---------------------------------------------------------------------------------------------
# applying masks and pruning
# ---------------------------------------------------------------------------------------------
@_dask_aware
def apply_mask(mask: Mask | Any, weights: Any, *, backend: str | None = None) -> Any:
    """Set the entries of ``weights`` that ``mask`` prunes to ``+0.0``, in place; return ``weights``.

    ``mask`` is a :class:`Mask` or a bool array. A shape mismatch or a read-only ``weights`` is a
    ``ValueError`` and nothing is written.
    """
    mask_data = mask.data if isinstance(mask, Mask) else mask
    return apply_bool_mask(mask_data, weights, backend=backend)


@_dask_aware
def prune(
    weights: Any,
    sparsity: float | None = None,
    *,
    pattern: str = "unstructured",
    method: str = "l1",
    axis: int = -1,
    backend: str | None = None,
    inplace: bool = False,
    return_mask: bool = False,
    groups: str = "layer",
) -> Any:
    """Prune ``weights`` by magnitude; return the pruned array (and the :class:`Mask` when
    ``return_mask``).

    ``pattern`` is ``"unstructured"`` (needs ``sparsity``), ``"N:M"`` such as ``"2:4"`` (along
    ``axis``), ``"row"``, ``"column"`` or ``"block(H,W)"`` (need ``sparsity``). The result has the
    weights' array type, shape and dtype; ``inplace=True`` writes into ``weights`` itself.

    Example::

        >>> import numpy as np, pruneplug as pp
        >>> pp.prune(np.array([0.5, -2.0, 0.1, 3.0], dtype=np.float32), sparsity=0.5)
        array([ 0., -2.,  0.,  3.], dtype=float32)
        >>> pp.prune(np.array([[0.5, -2.0, 0.1, 3.0]]), pattern="2:4", method="l2")
        array([[ 0., -2.,  0.,  3.]])
    """
    transform = check_method(method)
    adapted = adapt(weights, "weights")
    check_float_dtype(adapted.array, "weights")
    spec = parse_pattern(pattern)
    if inplace:
        check_in_place(weights, adapted, "weights")
    if spec.kind == "nm":
        if sparsity is not None:
            raise InvalidArgumentError(
                f"sparsity={shown(sparsity)} cannot be combined with pattern={shown(pattern)}: N:M fixes it")
        axis = normalize_axis(axis, tuple(adapted.array.shape), spec.m)
    elif sparsity is None:
        raise InvalidArgumentError(f"pattern={shown(pattern)} needs sparsity= (a real number in [0, 1])")
    else:
        check_sparsity(sparsity)
    if _check_groups(groups) == "row" and (spec.kind != "unstructured" or adapted.array.ndim != 2):
        raise InvalidArgumentError(f"groups='row' applies to unstructured pruning of 2-D weights, not "
                                   f"pattern={shown(pattern)} on shape {tuple(adapted.array.shape)}")

    target = contiguous(adapted.array) if inplace else _fresh_copy(adapted.array)
    if groups == "row":
        mask = _prune_in_place(target, adapted, backend, True, "row_mask", "", "unstructured",
                               k=count_to_prune(sparsity, int(target.shape[1])), transform=transform)
    elif spec.kind == "nm":
        mask = _prune_nm(target, adapted, spec.n, spec.m, axis, transform, backend, return_mask)
    elif spec.kind == "unstructured":
        mask = _prune_unstructured(target, adapted, sparsity, transform, backend, return_mask)
    else:  # row, column, block: the block hook scores with the transform itself
        block_shape = spec.block_shape or _line_block(spec.kind, target)
        k = count_to_prune(sparsity, _blocks(target, block_shape, str(spec)))
        mask = _prune_in_place(target, adapted, backend, return_mask, "block_mask", None, str(spec),
                               block_shape=block_shape, k=k, transform=transform)
    if inplace and target is not adapted.array:
        adapted.array[...] = target
    result = weights if inplace else adapted.wrap(target)
    if return_mask:
        return result, mask
    return result


def _fresh_copy(array: Any) -> Any:
    """A C-contiguous native-byte-order copy that the caller may overwrite."""
    native = contiguous(array)
    return native.copy() if native is array else native


def _prune_unstructured(target: Any, adapted: Any, sparsity: float, transform: str,
                        backend: str | None, return_mask: bool) -> Mask | None:
    k = count_to_prune(sparsity, int(target.size))
    return _prune_in_place(target, adapted, backend, return_mask, "unstructured_mask", "prune_unstructured",
                           "unstructured", k=k, transform=transform)


def _prune_nm(target: Any, adapted: Any, n: int, m: int, axis: int, transform: str,
              backend: str | None, return_mask: bool) -> Mask | None:
    return _prune_in_place(target, adapted, backend, return_mask, "nm_mask", "prune_nm", f"{n}:{m}",
                           n=n, m=m, axis=axis, transform=transform)


def _prune_in_place(target: Any, adapted: Any, backend: str | None, return_mask: bool, mask_operation: str,
                    fused_operation: str | None, pattern: str, **arguments: Any) -> Mask | None:
    """Prune ``target`` in place on one backend: its fused operation when the caller needs no mask
    and the backend has one (no mask is materialised), otherwise the mask, then ``apply_mask``."""
    registry = get_registry().snapshot()  # every step on the same backends
    dtype = dtype_name(target)
    name = registry.select(backend, array_type=adapted.array_type, dtype=dtype, operation=mask_operation)
    if not return_mask and fused_operation is not None and registry.supports(name, fused_operation):
        registry.call(name, fused_operation, weights=target, **arguments)
        return None
    data = registry.call(name, mask_operation, values=target, out=None, **arguments)
    apply_on = registry.select(name, array_type=adapted.array_type, dtype=dtype, operation="apply_mask")
    registry.call(apply_on, "apply_mask", weights=target, mask=data)
    return Mask(adapted.wrap(data), pattern, name)


def is_nm_sparse(weights: Any, n: int, m: int, axis: int = -1) -> bool:
    """True when every group of ``m`` consecutive elements along ``axis`` has at most ``n``
    nonzeros (``-0.0`` counts as zero, NaN as nonzero).

    Example::

        >>> import numpy as np, pruneplug as pp
        >>> pp.is_nm_sparse(np.array([[0.0, 1.0, 0.0, 2.0]]), 2, 4)
        True
    """
    n, m = check_nm(n, m)
    adapted = adapt(weights, "weights")
    array = adapted.array
    axis = normalize_axis(axis, tuple(array.shape), m)
    shape = tuple(array.shape)
    outer = math.prod(shape[:axis])
    inner = math.prod(shape[axis + 1:])
    if array.size == 0:
        return True
    groups = contiguous(array).reshape(outer, shape[axis] // m, m, inner)
    return bool(int((groups != 0).sum(axis=2).max()) <= n)


# ---------------------------------------------------------------------------------------------
# registry access
# ---------------------------------------------------------------------------------------------
def backends() -> list[BackendStatus]:
    """Every registered backend (and every plugin that failed to load), highest priority first:
    name, availability and the reason when unavailable, priority, array types, dtypes, operations.

    Example::

        >>> import pruneplug as pp
        >>> [b.name for b in pp.backends() if b.available][-1]
        'numpy'
    """
    return get_registry().statuses()


def register_backend(plugin: Any, name: str | None = None) -> str:
    """Register a backend plugin object or module (one with ``@pruneplug.hookimpl`` functions)
    at run time, as an entry point would; return its plugin name."""
    return get_registry().register(plugin, name)


def unregister_backend(name: str) -> None:
    """Unregister the plugin that provides backend ``name``."""
    get_registry().unregister(name)

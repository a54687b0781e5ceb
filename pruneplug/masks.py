"""Mask generation from scores: exact-count unstructured (per layer or per row), N:M along any
axis, and whole blocks, rows or columns; and the N:M sparsity test.

Every function validates its arguments here, once, then hands a C-contiguous NumPy or CuPy array to
the backend the registry picks (:func:`pruneplug.dispatch.run_operation`). How many entries, rows,
columns or blocks to prune is either ``sparsity`` (``round(sparsity * units)``) or an exact
``count``. ``pruneplug.generate_*_mask`` are these functions routed by :mod:`pruneplug.routing`
(Dask arrays go to :mod:`pruneplug.dask`).
"""

from __future__ import annotations

import math
from typing import Any

from pruneplug.arrays import adapt, check_float_dtype, check_writable, contiguous, dtype_name
from pruneplug.dispatch import run_operation
from pruneplug.errors import InvalidArgumentError
from pruneplug.patterns import Pattern, check_2d, pattern_units
from pruneplug.types import ImportanceScores, Mask
from pruneplug.validation import check_block_shape, check_groups, check_nm, normalize_axis, resolve_count


def scores_array(scores: Any, argname: str = "scores") -> Any:
    """``scores`` (:class:`~pruneplug.ImportanceScores` or a bare float array) adapted
    (:func:`pruneplug.arrays.adapt`).

    Example::

        >>> import numpy as np
        >>> scores_array(np.array([1.0, 2.0])).array_type
        'numpy'
    """
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


def generate_unstructured_mask(scores: Any, sparsity: float | None = None, *, count: int | None = None,
                               groups: str = "layer", backend: str | None = None, out: Any = None) -> Mask:
    """Prune exactly ``round(sparsity * n)`` (or ``count``) entries: the lowest scores, ties by
    lower flat index.

    ``groups="row"`` (2-D scores) compares scores within each row instead, as Wanda does: exactly
    ``round(sparsity * columns)`` (or ``count``) pruned in every row, ties by lower column index.

    Example::

        >>> import numpy as np, pruneplug as pp
        >>> pp.generate_unstructured_mask(np.array([3.0, 1.0, 1.0, 2.0]), 0.5).data
        array([ True, False, False,  True])
        >>> pp.generate_unstructured_mask(np.array([[3.0, 1.0], [0.0, 9.0]]), count=1, groups="row").data
        array([[ True, False],
               [False,  True]])
    """
    adapted = scores_array(scores)
    array = contiguous(adapted.array)
    if check_groups(groups) == "row":
        _, cols = check_2d(tuple(array.shape), "groups='row'")
        k = resolve_count(sparsity, count, cols, "entries per row")
        out = _check_out(out, tuple(array.shape), adapted.array_type)
        name, data = run_operation(backend, "row_mask", array, adapted.array_type,
                                   values=array, k=k, transform="identity", out=out)
    else:
        k = resolve_count(sparsity, count, int(array.size), "entries")
        out = _check_out(out, tuple(array.shape), adapted.array_type)
        name, data = run_operation(backend, "unstructured_mask", array, adapted.array_type,
                                   values=array, k=k, transform="identity", out=out)
    return Mask(adapted.wrap(data), "unstructured", name)


def generate_nm_mask(scores: Any, n: int, m: int, axis: int = -1, *, backend: str | None = None,
                     out: Any = None) -> Mask:
    """Keep the ``n`` largest of every ``m`` consecutive scores along ``axis`` (ties: lower index).

    The default axis is the last one, the input dimension of a ``[out, in]`` weight; for a conv
    weight ``[K, C, R, S]`` pass ``axis=1`` (input channels), as NVIDIA's ASP groups.

    Example::

        >>> import numpy as np, pruneplug as pp
        >>> pp.generate_nm_mask(np.array([[1.0, 4.0, 3.0, 2.0]]), 2, 4).data
        array([[False,  True,  True, False]])
    """
    n, m = check_nm(n, m)
    adapted = scores_array(scores)
    array = contiguous(adapted.array)
    axis = normalize_axis(axis, tuple(array.shape), m)
    out = _check_out(out, tuple(array.shape), adapted.array_type)
    name, data = run_operation(backend, "nm_mask", array, adapted.array_type,
                               values=array, n=n, m=m, axis=axis, transform="identity", out=out)
    return Mask(adapted.wrap(data), f"{n}:{m}", name)


def _block_mask(scores: Any, sparsity: Any, count: Any, pattern: Pattern, backend: str | None, out: Any) -> Mask:
    """The block hook for the blocks of ``pattern`` (``block(H,W)``, or the lines of a row/column mask)."""
    adapted = scores_array(scores)
    array = contiguous(adapted.array)
    shape = tuple(array.shape)
    units = pattern_units(pattern, shape)
    k = resolve_count(sparsity, count, units.total, units.name)
    out = _check_out(out, shape, adapted.array_type)
    name, data = run_operation(backend, "block_mask", array, adapted.array_type,
                               values=array, block_shape=units.block_shape, k=k, transform="identity", out=out)
    return Mask(adapted.wrap(data), str(pattern), name)


def generate_block_mask(scores: Any, block_shape: tuple[int, int], sparsity: float | None = None, *,
                        count: int | None = None, backend: str | None = None, out: Any = None) -> Mask:
    """Prune whole blocks of a 2-D array: a block's score is the (float64, row-major) sum of its
    scores; exactly ``round(sparsity * blocks)`` (or ``count``) lowest blocks are pruned, ties by
    lower block index.

    Example::

        >>> import numpy as np, pruneplug as pp
        >>> pp.generate_block_mask(np.arange(8.0).reshape(2, 4), (2, 2), 0.5).data
        array([[False, False,  True,  True],
               [False, False,  True,  True]])
    """
    bh, bw = check_block_shape(block_shape)
    return _block_mask(scores, sparsity, count, Pattern("block", block_shape=(bh, bw)), backend, out)


def generate_row_mask(scores: Any, sparsity: float | None = None, *, count: int | None = None,
                      backend: str | None = None, out: Any = None) -> Mask:
    """Prune whole rows (output neurons) of a 2-D array by the sum of their scores:
    ``round(sparsity * rows)`` (or ``count``) rows.

    Example::

        >>> import numpy as np, pruneplug as pp
        >>> pp.generate_row_mask(np.array([[1.0, 1.0], [5.0, 5.0]]), 0.5).data
        array([[False, False],
               [ True,  True]])
    """
    return _block_mask(scores, sparsity, count, Pattern("row"), backend, out)


def generate_column_mask(scores: Any, sparsity: float | None = None, *, count: int | None = None,
                         backend: str | None = None, out: Any = None) -> Mask:
    """Prune whole columns (input features) of a 2-D array by the sum of their scores:
    ``round(sparsity * columns)`` (or ``count``) columns.

    Example::

        >>> import numpy as np, pruneplug as pp
        >>> pp.generate_column_mask(np.array([[1.0, 5.0], [1.0, 5.0]]), count=1).data
        array([[False,  True],
               [False,  True]])
    """
    return _block_mask(scores, sparsity, count, Pattern("column"), backend, out)


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
    if array.size == 0:
        return True
    groups = contiguous(array).reshape(math.prod(shape[:axis]), shape[axis] // m, m, math.prod(shape[axis + 1:]))
    return bool(int((groups != 0).sum(axis=2).max()) <= n)

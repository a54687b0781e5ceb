"""The public API: importance, mask generation, mask application, pruning.

Every function validates its arguments here, once, then hands C-contiguous NumPy or CuPy arrays to
the backend the registry picks. Nothing here knows any backend's internals.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

from pruneplug.arrays import (
    adapt,
    check_float_dtype,
    check_writable,
    contiguous,
    dtype_name,
)
from pruneplug.errors import InvalidArgumentError, ShapeError, UnsupportedDtypeError
from pruneplug.registry import get_registry
from pruneplug.types import BackendStatus, ImportanceScores, Mask, ScoreStats

METHODS = {"l1": ("abs", "magnitude_l1"), "l2": ("square", "magnitude_l2")}


# ---------------------------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------------------------
def _check_method(method: str) -> str:
    if method not in METHODS:
        raise InvalidArgumentError(f"method={method!r} is not supported; expected 'l1' or 'l2'")
    return METHODS[method][0]


def _check_sparsity(sparsity: Any) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise InvalidArgumentError(f"sparsity={sparsity!r} must be a real number in [0, 1]")
    value = float(sparsity)
    if not (0.0 <= value <= 1.0):  # also rejects NaN
        raise InvalidArgumentError(f"sparsity={sparsity!r} must be a real number in [0, 1]")
    return value


def count_to_prune(sparsity: float, total: int) -> int:
    """``round(sparsity * total)`` with Python's half-to-even rounding, as torch's pruning does."""
    return int(round(_check_sparsity(sparsity) * total))


def _check_int(value: Any, argname: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise InvalidArgumentError(f"{argname}={value!r} must be an integer >= {minimum}")
    return int(value)


def _check_nm(n: Any, m: Any) -> tuple[int, int]:
    m = _check_int(m, "m", 1)
    n = _check_int(n, "n", 0)
    if n > m:
        raise InvalidArgumentError(f"n={n} must not exceed m={m} (keep n of every m)")
    return n, m


def _normalize_axis(axis: Any, shape: tuple, m: int) -> int:
    ndim = len(shape)
    if ndim == 0:
        raise ShapeError("N:M needs an array with at least one dimension, got a 0-d array")
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral) or not -ndim <= int(axis) < ndim:
        raise InvalidArgumentError(f"axis={axis!r} is out of range for an array of shape {shape}")
    axis = int(axis) % ndim
    if shape[axis] % m:
        raise ShapeError(
            f"shape {shape} cannot be split into groups of m={m} along axis={axis}: "
            f"{shape[axis]} is not a multiple of {m}"
        )
    return axis


def _scores_array(scores: Any, argname: str = "scores"):
    """Accept ImportanceScores or a bare array; return the adapted array."""
    values = scores.values if isinstance(scores, ImportanceScores) else scores
    adapted = adapt(values, argname)
    check_float_dtype(adapted.array, argname)
    return adapted


def _run(backend: str | None, operation: str, array: Any, array_type: str, **kwargs: Any) -> tuple[str, Any]:
    registry = get_registry()
    name = registry.select(backend, array_type=array_type, dtype=dtype_name(array), operation=operation)
    return name, registry.call(name, operation, **kwargs)


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
def importance(weights: Any, method: str = "l1", *, backend: str | None = None) -> ImportanceScores:
    """Magnitude importance of ``weights``: ``|w|`` for ``"l1"``, ``w**2`` for ``"l2"``.

    Scores have the weights' array type and shape; float16/bfloat16 weights give float32 scores.

    Example::

        >>> import numpy as np, pruneplug as pp
        >>> s = pp.importance(np.array([-2.0, 1.0], dtype=np.float32), method="l2")
        >>> s.values, s.method, s.stats.mean
        (array([4., 1.], dtype=float32), 'magnitude_l2', 2.5)
    """
    _check_method(method)
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
        _check_method(method)
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


def generate_nm_mask(scores: Any, n: int, m: int, axis: int = -1, *, backend: str | None = None, out: Any = None) -> Mask:
    """Keep the ``n`` largest of every ``m`` consecutive scores along ``axis`` (ties: lower index).

    The default axis is the last one, the input dimension of a ``[out, in]`` weight; for a conv
    weight ``[K, C, R, S]`` pass ``axis=1`` (input channels), as NVIDIA's ASP groups.

    Example::

        >>> import numpy as np, pruneplug as pp
        >>> pp.generate_nm_mask(np.array([[1.0, 4.0, 3.0, 2.0]]), 2, 4).data
        array([[False,  True,  True, False]])
    """
    n, m = _check_nm(n, m)
    adapted = _scores_array(scores)
    array = contiguous(adapted.array)
    axis = _normalize_axis(axis, tuple(array.shape), m)
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


def _block_mask(scores: Any, block_shape: tuple[int, int], sparsity: float, pattern: str,
                backend: str | None, out: Any) -> Mask:
    adapted = _scores_array(scores)
    array = contiguous(adapted.array)
    rows, cols = _check_2d(array, f"a {pattern} mask")
    block_rows, block_cols = block_shape
    if rows % block_rows or cols % block_cols:
        raise ShapeError(
            f"block_shape={tuple(block_shape)} does not divide the scores' shape {(rows, cols)}"
        )
    blocks = (rows // block_rows) * (cols // block_cols)
    k = count_to_prune(sparsity, blocks)
    out = _check_out(out, tuple(array.shape), adapted.array_type)
    name, data = _run(backend, "block_mask", array, adapted.array_type,
                      values=array, block_shape=(block_rows, block_cols), k=k, transform="identity", out=out)
    return Mask(adapted.wrap(data), pattern, name)


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
    if (not isinstance(block_shape, (tuple, list)) or len(block_shape) != 2
            or any(isinstance(b, bool) or not isinstance(b, numbers.Integral) or b < 1 for b in block_shape)):
        raise InvalidArgumentError(f"block_shape={block_shape!r} must be two integers >= 1")
    bh, bw = (int(b) for b in block_shape)
    return _block_mask(scores, (bh, bw), sparsity, f"block({bh},{bw})", backend, out)


def generate_row_mask(scores: Any, sparsity: float, *, backend: str | None = None, out: Any = None) -> Mask:
    """Prune whole rows (output neurons) of a 2-D array by the sum of their scores.

    Example::

        >>> import numpy as np, pruneplug as pp
        >>> pp.generate_row_mask(np.array([[1.0, 1.0], [5.0, 5.0]]), 0.5).data
        array([[False, False],
               [ True,  True]])
    """
    adapted = _scores_array(scores)
    _check_2d(adapted.array, "a row mask")
    return _block_mask(scores, (1, int(adapted.array.shape[1])), sparsity, "row", backend, out)


def generate_column_mask(scores: Any, sparsity: float, *, backend: str | None = None, out: Any = None) -> Mask:
    """Prune whole columns (input features) of a 2-D array by the sum of their scores.

    Example::

        >>> import numpy as np, pruneplug as pp
        >>> pp.generate_column_mask(np.array([[1.0, 5.0], [1.0, 5.0]]), 0.5).data
        array([[False,  True],
               [False,  True]])
    """
    adapted = _scores_array(scores)
    _check_2d(adapted.array, "a column mask")
    return _block_mask(scores, (int(adapted.array.shape[0]), 1), sparsity, "column", backend, out)


# ---------------------------------------------------------------------------------------------
# applying masks and pruning
# ---------------------------------------------------------------------------------------------
def apply_mask(mask: Mask | Any, weights: Any, *, backend: str | None = None) -> Any:
    """Set the entries of ``weights`` that ``mask`` prunes to ``+0.0``, in place; return ``weights``.

    ``mask`` is a :class:`Mask` or a bool array. A shape mismatch or a read-only ``weights`` is a
    ``ValueError`` and nothing is written.
    """
    mask_data = mask.data if isinstance(mask, Mask) else mask
    w = adapt(weights, "weights")
    m = adapt(mask_data, "mask")
    check_float_dtype(w.array, "weights")
    if dtype_name(m.array) != "bool":
        raise UnsupportedDtypeError(f"mask: dtype {dtype_name(m.array)} is not supported; expected bool")
    if tuple(m.array.shape) != tuple(w.array.shape):
        raise ShapeError(f"mask shape {tuple(m.array.shape)} does not match weights shape {tuple(w.array.shape)}")
    if m.array_type != w.array_type:
        raise InvalidArgumentError(f"mask is a {m.array_type} array but weights are a {w.array_type} array")
    check_writable(w.array, "weights")
    target = contiguous(w.array)
    _run(backend, "apply_mask", target, w.array_type, weights=target, mask=contiguous(m.array))
    if target is not w.array:  # a strided view: write the result back through it
        w.array[...] = target
    return weights


_NM_PATTERN = re.compile(r"^(\d+):(\d+)$")
_BLOCK_PATTERN = re.compile(r"^block\((\d+),\s*(\d+)\)$")


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
    transform = _check_method(method)
    adapted = adapt(weights, "weights")
    check_float_dtype(adapted.array, "weights")
    if not isinstance(pattern, str):
        raise InvalidArgumentError(f"pattern={pattern!r} must be a string such as 'unstructured' or '2:4'")
    if inplace:
        check_writable(adapted.array, "weights")
    nm = _NM_PATTERN.match(pattern)
    if nm:
        if sparsity is not None:
            raise InvalidArgumentError(f"sparsity={sparsity!r} cannot be combined with pattern={pattern!r}: N:M fixes it")
        n, m = _check_nm(int(nm.group(1)), int(nm.group(2)))
        axis = _normalize_axis(axis, tuple(adapted.array.shape), m)
    elif sparsity is None:
        raise InvalidArgumentError(f"pattern={pattern!r} needs sparsity= (a real number in [0, 1])")
    else:
        _check_sparsity(sparsity)
    if _check_groups(groups) == "row" and (pattern != "unstructured" or adapted.array.ndim != 2):
        raise InvalidArgumentError(f"groups='row' applies to unstructured pruning of 2-D weights, not "
                                   f"pattern={pattern!r} on shape {tuple(adapted.array.shape)}")

    target = contiguous(adapted.array) if inplace else _fresh_copy(adapted.array)
    if groups == "row":
        mask = _prune_in_place(target, adapted, backend, True, "row_mask", "", "unstructured",
                               k=count_to_prune(sparsity, int(target.shape[1])), transform=transform)
    elif nm:
        mask = _prune_nm(target, adapted, n, m, axis, transform, backend, return_mask)
    elif pattern == "unstructured":
        mask = _prune_unstructured(target, adapted, sparsity, transform, backend, return_mask)
    else:
        mask_fn = _structured_mask_fn(pattern)
        scores = importance(target, method, backend=backend).values
        mask = mask_fn(scores, sparsity, backend=backend)
        apply_mask(mask, target, backend=backend)
        mask = Mask(adapted.wrap(mask.data), mask.pattern, mask.backend)
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


def _structured_mask_fn(pattern: str):
    if pattern == "row":
        return generate_row_mask
    if pattern == "column":
        return generate_column_mask
    block = _BLOCK_PATTERN.match(pattern)
    if block:
        shape = (int(block.group(1)), int(block.group(2)))
        return lambda scores, sparsity, backend: generate_block_mask(scores, shape, sparsity, backend=backend)
    raise InvalidArgumentError(
        f"pattern={pattern!r} is not supported; expected 'unstructured', 'N:M' (e.g. '2:4'), "
        "'row', 'column' or 'block(H,W)'"
    )


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
                    fused_operation: str, pattern: str, **arguments: Any) -> Mask | None:
    """Prune ``target`` in place on one backend: its fused operation when the caller needs no mask
    and the backend has one (no mask is materialised), otherwise the mask, then ``apply_mask``."""
    registry = get_registry()
    dtype = dtype_name(target)
    name = registry.select(backend, array_type=adapted.array_type, dtype=dtype, operation=mask_operation)
    if not return_mask and registry.supports(name, fused_operation):
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
    n, m = _check_nm(n, m)
    adapted = adapt(weights, "weights")
    array = adapted.array
    axis = _normalize_axis(axis, tuple(array.shape), m)
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

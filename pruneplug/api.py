"""The user API's entry points: importance, pruning, applying a mask, and the backend registry.

Every function validates its arguments here, once, then hands C-contiguous NumPy or CuPy arrays to
the backend the registry picks. Mask generation lives in :mod:`pruneplug.masks`, argument checks in
:mod:`pruneplug.validation` and :mod:`pruneplug.patterns`; ``pruneplug.prune`` and friends are these
functions routed by :mod:`pruneplug.routing`, which hands Dask arrays to :mod:`pruneplug.dask`.
Nothing here knows any backend's internals.
"""

from __future__ import annotations

from typing import Any

from pruneplug.apply import apply_bool_mask
from pruneplug.arrays import adapt, check_float_dtype, check_in_place, contiguous, dtype_name, in_byte_order_of
from pruneplug.dispatch import run_operation
from pruneplug.errors import InvalidArgumentError
from pruneplug.patterns import pattern_units, parse_pattern
from pruneplug.registry import get_registry
from pruneplug.backend_info import BackendStatus
from pruneplug.types import ImportanceScores, Mask, ScoreStats
from pruneplug.validation import METHODS, check_groups, check_method, normalize_axis, resolve_count, shown


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
    transform = check_method(method)
    adapted = adapt(weights, "weights")
    check_float_dtype(adapted.array, "weights")
    array = contiguous(adapted.array)
    _, (scores, stats) = run_operation(backend, "importance", array, adapted.array_type, weights=array,
                                       transform=transform)
    return ImportanceScores(values=adapted.wrap(scores), method=METHODS[method][1],
                            stats=ScoreStats(*map(float, stats)))


# ---------------------------------------------------------------------------------------------
# applying masks and pruning
# ---------------------------------------------------------------------------------------------
def apply_mask(mask: Mask | Any, weights: Any, *, backend: str | None = None) -> Any:
    """Set the entries of ``weights`` that ``mask`` prunes to ``+0.0``, in place; return ``weights``.

    ``mask`` is a :class:`Mask` or a bool array. A shape mismatch or a read-only ``weights`` is a
    ``ValueError`` and nothing is written.
    """
    mask_data = mask.data if isinstance(mask, Mask) else mask
    return apply_bool_mask(mask_data, weights, backend=backend)


def prune(
    weights: Any,
    sparsity: float | None = None,
    *,
    count: int | None = None,
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

    ``pattern`` is ``"unstructured"``, ``"N:M"`` such as ``"2:4"`` (along ``axis``), ``"row"``,
    ``"column"`` or ``"block(H,W)"``. All but N:M need how much to prune: ``sparsity`` (prune
    ``round(sparsity * units)``) or an exact ``count`` of units, where units are the entries
    (unstructured; per row with ``groups="row"``), rows, columns or blocks. The result has the
    weights' array type, shape and dtype; ``inplace=True`` writes into ``weights`` itself.

    Example::

        >>> import numpy as np, pruneplug as pp
        >>> pp.prune(np.array([0.5, -2.0, 0.1, 3.0], dtype=np.float32), sparsity=0.5)
        array([ 0., -2.,  0.,  3.], dtype=float32)
        >>> pp.prune(np.array([0.5, -2.0, 0.1, 3.0], dtype=np.float32), count=1)
        array([ 0.5, -2. ,  0. ,  3. ], dtype=float32)
        >>> pp.prune(np.array([[0.5, -2.0, 0.1, 3.0]]), pattern="2:4", method="l2")
        array([[ 0., -2.,  0.,  3.]])
    """
    transform = check_method(method)
    adapted = adapt(weights, "weights")
    check_float_dtype(adapted.array, "weights")
    spec = parse_pattern(pattern)
    if inplace:
        check_in_place(weights, adapted, "weights")
    shape = tuple(adapted.array.shape)
    if spec.kind == "nm":
        if sparsity is not None or count is not None:
            given = f"sparsity={shown(sparsity)}" if sparsity is not None else f"count={shown(count)}"
            raise InvalidArgumentError(f"{given} cannot be combined with pattern={shown(pattern)}: N:M fixes it")
        axis = normalize_axis(axis, shape, spec.m)
    if check_groups(groups) == "row" and (spec.kind != "unstructured" or len(shape) != 2):
        raise InvalidArgumentError(f"groups='row' applies to unstructured pruning of 2-D weights, not "
                                   f"pattern={shown(pattern)} on shape {shape}")
    if groups == "row":
        k = resolve_count(sparsity, count, shape[1], "entries per row", f"pattern={shown(pattern)}")
    elif spec.kind != "nm":
        units = pattern_units(spec, shape)
        k = resolve_count(sparsity, count, units.total, units.name, f"pattern={shown(pattern)}")

    target = contiguous(adapted.array) if inplace else _fresh_copy(adapted.array)
    if groups == "row":
        mask = _prune_in_place(target, adapted, backend, True, ("row_mask", None), "unstructured",
                               k=k, transform=transform)
    elif spec.kind == "nm":
        mask = _prune_in_place(target, adapted, backend, return_mask, ("nm_mask", "prune_nm"), str(spec),
                               n=spec.n, m=spec.m, axis=axis, transform=transform)
    elif spec.kind == "unstructured":
        mask = _prune_in_place(target, adapted, backend, return_mask, ("unstructured_mask", "prune_unstructured"),
                               "unstructured", k=k, transform=transform)
    else:  # row, column, block: the block hook scores with the transform itself
        mask = _prune_in_place(target, adapted, backend, return_mask, ("block_mask", None), str(spec),
                               block_shape=units.block_shape, k=k, transform=transform)
    if inplace and target is not adapted.array:
        adapted.array[...] = target
    result = weights if inplace else adapted.wrap(in_byte_order_of(target, adapted.array))
    if return_mask:
        return result, mask
    return result


def _fresh_copy(array: Any) -> Any:
    """A C-contiguous native-byte-order copy that the caller may overwrite."""
    native = contiguous(array)
    return native.copy() if native is array else native


def _prune_in_place(target: Any, adapted: Any, backend: str | None, return_mask: bool,
                    operations: tuple[str, str | None], pattern: str, **arguments: Any) -> Mask | None:
    """Prune ``target`` in place on one backend: ``operations`` is (the mask hook, the fused hook
    or None). The fused hook runs when the caller needs no mask and the backend has one (no mask
    is materialised); otherwise the mask, then ``apply_mask``."""
    mask_operation, fused_operation = operations
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

"""Dask arrays: the public API on ``dask.array.Array`` inputs, lazily, chunk by chunk.

``pp.prune``, ``pp.importance``, ``pp.generate_unstructured_mask``, ``pp.generate_nm_mask``,
``pp.generate_block_mask`` / ``row`` / ``column`` and ``pp.apply_mask`` come here when handed a Dask
array (:mod:`pruneplug.routing` imports this module only then; ``import pruneplug`` never imports dask).
Each returns a lazy Dask array (inside a :class:`~pruneplug.Mask` or :class:`~pruneplug.ImportanceScores`
where the NumPy call returns one) whose computed value is bit-identical to the same call on the
computed array, whatever the chunking. Every chunk is handled by the ordinary public API, so it runs
on the backend that fits it (``cpu`` for NumPy chunks, ``cuda`` for CuPy chunks, or ``backend=``).

Exact-k selections run at call time, as a driver loop on the client: map a histogram over the
blocks, sum the histograms in a tree of tasks, decide, repeat. Only histograms move (65,538 int64
counts, 512 KiB, per block and pass), never the data:

* magnitude pruning (``pp.prune``, unstructured) runs :class:`pruneplug.selection.ExactSelection`
  on the backends' ``key_histogram`` hook (:func:`pruneplug.selection.chunk_histogram`): 1 pass for
  float16/bfloat16 weights, 2 for float32, 4 for float64 (CuPy blocks are histogrammed on the host
  while no CUDA backend implements the hook);
* ties at the threshold are pruned by lower *global* flat index. The blocks of an N-D array
  interleave in that order, so when the ties are split (some pruned, some kept) a second radix
  select runs over the global flat indices of the tied elements only
  (:func:`pruneplug.partselect.exact_cut`): at most ``ceil(log2(n) / 16)`` more passes (2 for
  ``n <= 2**32``), each merging one 65,537-count histogram. Continuous data rarely needs it;
* scores given as such (``generate_unstructured_mask``: they may be negative or infinite) and
  block sums (``block``/``row``/``column``: NaN sums rank highest) use the same machinery on
  :func:`pruneplug.partselect.score_keys` (the hook takes magnitudes only).

The returned array is the last pass: each block counts what the cut prunes in it and prunes that
many with the backend's exact-``k`` operation, whose stable order inside a block is the global one.
Every pass recomputes the input, so ``persist()`` an expensive input first.

N:M needs whole groups of ``m`` inside a block along ``axis``: blocks whose size along ``axis`` is
not a multiple of ``m`` are rechunked to multiples of ``m`` first. Block, row and column masks need
whole blocks inside a chunk: the array is rechunked to multiples of the block shape (row masks:
whole rows; column masks: whole columns).
"""

from __future__ import annotations

import math
from typing import Any

import dask
import dask.array as da
import numpy as np

from pruneplug import api, masks, partselect
from pruneplug.arrays import FLOAT_DTYPES, array_module, score_dtype
from pruneplug.errors import BackendError, InvalidArgumentError, NonFiniteError, ShapeError, UnsupportedDtypeError
from pruneplug.registry import get_registry
from pruneplug.selection import chunk_histogram, part_counts, prune_part
from pruneplug.patterns import Pattern, check_2d, parse_pattern, pattern_units
from pruneplug.types import ImportanceScores, Mask, ScoreStats
from pruneplug.validation import (METHODS, check_block_shape, check_groups, check_method, check_nm,
                                  normalize_axis, resolve_count, shown)


# ---------------------------------------------------------------------------------------------
# checks shared by every entry point
# ---------------------------------------------------------------------------------------------
def _array_type(x: da.Array) -> str:
    return "cupy" if type(x._meta).__module__.split(".", 1)[0] == "cupy" else "numpy"


def _check_float(x: da.Array, argname: str) -> None:
    name = np.dtype(x.dtype).name
    if name not in FLOAT_DTYPES:
        raise UnsupportedDtypeError(f"{argname}: dtype {name} is not supported; expected one of {sorted(FLOAT_DTYPES)}")
    if any(math.isnan(c) for dim in x.chunks for c in dim):
        raise ShapeError(f"{argname}: a Dask array with unknown chunk sizes; call compute_chunk_sizes() first")


def _no_out(out: Any) -> None:
    if out is not None:
        raise InvalidArgumentError("out= is not supported for Dask arrays (the result is a new lazy array)")


def _backend_name(backend: str | None, x: da.Array, operation: str) -> str:
    """The backend the chunks will run on (the registry's choice for the chunks' array type)."""
    return get_registry().select(backend, array_type=_array_type(x), dtype=np.dtype(x.dtype).name, operation=operation)


# ---------------------------------------------------------------------------------------------
# global positions and the map-and-sum pass
# ---------------------------------------------------------------------------------------------
def _block_starts(x: da.Array) -> list[list[int]]:
    return [[0, *np.cumsum(dim)[:-1].tolist()] if dim else [] for dim in x.chunks]


def _positions_fn(shape: tuple, start: tuple, block_shape: tuple):
    """Global flat C-order positions of the elements of a block selected by a flat bool array."""
    strides = [math.prod(shape[i + 1:]) for i in range(len(shape))]

    def positions(where: Any) -> Any:
        xp = array_module(where)
        local = xp.nonzero(where.reshape(block_shape))
        pos = xp.zeros(local[0].shape if local else (int(where.sum()),), dtype=np.int64)
        for axis, idx in enumerate(local):
            pos += (idx.astype(np.int64) + start[axis]) * strides[axis]
        return pos
    return positions


def _block_histogram(block: Any, shape: tuple, start: tuple, transform: str, nan_high: bool,
                     request: partselect.Request) -> np.ndarray:
    keys, invalid = partselect.score_keys(block, transform, nan_high=nan_high)
    return partselect.histogram(keys, request, _positions_fn(shape, start, block.shape), invalid)


def _invalid_in_block(block: Any, shape: tuple, start: tuple, transform: str) -> tuple[int, int]:
    """(how many invalid values, global position of the first or -1) in one block."""
    xp = array_module(block)
    x = block.astype(score_dtype(block.dtype))
    bad = (xp.isnan(x) if transform == "identity" else ~xp.isfinite(x)).reshape(-1)
    count = int(xp.count_nonzero(bad))
    return count, int(_positions_fn(shape, start, block.shape)(bad).min()) if count else -1


def _nonfinite_error(x: da.Array, transform: str) -> Exception:
    """The core's error for the whole array: total count and first global flat index."""
    found = [r for r in dask.compute(*_map_blocks_delayed(x, _invalid_in_block, transform)) if r[0]]
    return partselect.nonfinite_error(transform, sum(c for c, _ in found), min(f for _, f in found))


def _key_histogram_block(block: Any, shape: tuple, start: tuple, transform: str, request: Any) -> np.ndarray:
    return chunk_histogram(partselect.host_if_needed(block, None), transform, request)


def _tie_histogram_block(block: Any, shape: tuple, start: tuple, transform: str, threshold: float,
                         request: partselect.Request) -> np.ndarray:
    tied = partselect.tied_mask(block, transform, threshold)
    return partselect.position_histogram(_positions_fn(shape, start, block.shape)(tied), request)


def _tied_positions_block(block: Any, shape: tuple, start: tuple, transform: str, threshold: float) -> np.ndarray:
    positions = _positions_fn(shape, start, block.shape)(partselect.tied_mask(block, transform, threshold))
    return positions.get() if array_module(positions) is not np else positions


def _score_cut(x: da.Array, k: int, transform: str) -> partselect.ScoreCut:
    """The exact cut of magnitude scores over all blocks: the key histograms come from the backends'
    ``key_histogram`` hook (:func:`pruneplug.selection.chunk_histogram`), merged by a tree sum; split
    ties are gathered as positions (one pass) when few, else decided by a position select."""
    def keys(request: Any) -> np.ndarray:
        return _tree_sum(_map_blocks_delayed(x, _key_histogram_block, transform, request)).compute()

    def ties(request: partselect.Request, threshold: float) -> np.ndarray:
        return _tree_sum(_map_blocks_delayed(x, _tie_histogram_block, transform, threshold, request)).compute()

    def gather(threshold: float) -> list:
        return list(dask.compute(*_map_blocks_delayed(x, _tied_positions_block, transform, threshold)))

    try:
        return partselect.exact_cut(k, int(x.size), [np.dtype(x.dtype).name], transform, keys, ties, gather)
    except NonFiniteError:  # a block's error names its own index: report the whole array's
        raise _nonfinite_error(x, transform) from None


def _map_blocks_delayed(x: da.Array, fn, *args: Any) -> list:
    """``fn(block, shape, start, *args)`` for every block, as Delayed objects."""
    starts = _block_starts(x)
    blocks = x.to_delayed().ravel()
    out = []
    for index, block in zip(np.ndindex(*x.numblocks), blocks):
        start = tuple(starts[axis][i] for axis, i in enumerate(index))
        out.append(dask.delayed(fn, pure=True)(block, tuple(x.shape), start, *args))
    return out


def _tree_sum(parts: list) -> Any:
    """Pairwise sum of Delayed arrays: each histogram moves once, to the task adding it."""
    while len(parts) > 1:
        parts = [dask.delayed(np.add)(parts[i], parts[i + 1]) if i + 1 < len(parts) else parts[i]
                 for i in range(0, len(parts), 2)]
    return parts[0]


def _select(x: da.Array, k: int, transform: str, nan_high: bool = False) -> partselect.Cut:
    """The exact cut over all elements of ``x`` (the driver loop: map, sum, update, repeat)."""
    def merged(request: partselect.Request) -> np.ndarray:
        return _tree_sum(_map_blocks_delayed(x, _block_histogram, transform, nan_high, request)).compute()

    def on_invalid(count: int) -> None:
        raise _nonfinite_error(x, transform)

    width = partselect.key_bits(x.dtype, wide=False)
    return partselect.select(k, int(x.size), width, merged, on_invalid)


def _block_location(block_info: dict) -> tuple[tuple, tuple]:
    info = block_info[0]
    return tuple(info["shape"]), tuple(s for s, _ in info["array-location"])


def _count_in_block(block: Any, cut: partselect.Cut, transform: str, nan_high: bool, block_info: dict) -> int:
    shape, start = _block_location(block_info)
    keys, _ = partselect.score_keys(block, transform, nan_high=nan_high)
    return cut.pruned_count(keys, _positions_fn(shape, start, block.shape))



# ---------------------------------------------------------------------------------------------
# importance
# ---------------------------------------------------------------------------------------------
def importance(weights: da.Array, method: str = "l1", *, backend: str | None = None) -> ImportanceScores:
    """Lazy importance scores of a Dask array; ``stats`` hold 0-d Dask arrays (computed on
    demand): min and max exact, mean and std summed per chunk in float64 (equal to the NumPy
    call's to float64 rounding, not bit for bit: the sum order follows the chunks)."""
    check_method(method)
    _check_float(weights, "weights")
    sdt = score_dtype(weights.dtype)
    values = weights.map_blocks(_importance_block, method, backend, dtype=sdt,
                                meta=weights._meta.astype(sdt))
    wide = values.astype(np.float64)
    mean = wide.mean()
    stats = ScoreStats(values.min().astype(np.float64), values.max().astype(np.float64), mean,
                       da.sqrt(((wide - mean) ** 2).mean()))
    return ImportanceScores(values=values, method=METHODS[method][1], stats=stats)


def _importance_block(block: Any, method: str, backend: str | None) -> Any:
    return api.importance(block, method, backend=backend).values


# ---------------------------------------------------------------------------------------------
# unstructured
# ---------------------------------------------------------------------------------------------
def _unstructured_cut(x: da.Array, k: int, transform: str) -> Any:
    """The cut pruning exactly ``k`` entries. Magnitude scores (``abs``/``square``): the backends'
    key histograms; scores given as such (``identity``, possibly negative): this module's keys
    (:func:`pruneplug.partselect.score_keys`)."""
    return _select(x, k, transform) if transform == "identity" else _score_cut(x, k, transform)


def generate_unstructured_mask(scores: Any, sparsity: float | None = None, *, count: int | None = None,
                               groups: str = "layer", backend: str | None = None, out: Any = None) -> Mask:
    """Exact unstructured mask of Dask scores (see the module docstring); ``groups="row"``
    rechunks to whole rows and selects within each row, block by block."""
    _no_out(out)
    x = scores.values if isinstance(scores, ImportanceScores) else scores
    _check_float(x, "scores")
    if _check_groups(groups, x) == "row":
        k = resolve_count(sparsity, count, int(x.shape[1]), "entries per row")
        x = x.rechunk({1: -1})
        data = x.map_blocks(_row_mask_block, k, backend, dtype=bool, meta=x._meta.astype(bool))
        return Mask(data, "unstructured", _backend_name(backend, x, "row_mask"))
    cut = _unstructured_cut(x, resolve_count(sparsity, count, int(x.size), "entries"), "identity")
    data = x.map_blocks(_unstructured_mask_block, cut, backend, dtype=bool, meta=x._meta.astype(bool))
    return Mask(data, "unstructured", _backend_name(backend, x, "unstructured_mask"))


def _check_groups(groups: Any, x: da.Array) -> str:
    if check_groups(groups) == "row":
        check_2d(tuple(x.shape), "groups='row'")
    return groups


def _row_mask_block(block: Any, k: int, backend: str | None) -> Any:
    return masks.generate_unstructured_mask(block, count=k, groups="row", backend=backend).data


def _unstructured_mask_block(block: Any, cut: partselect.Cut, backend: str | None, block_info=None) -> Any:
    k = _count_in_block(block, cut, "identity", False, block_info)
    return masks.generate_unstructured_mask(block, count=k, backend=backend).data


def _block_quota(cut: partselect.ScoreCut, block: Any, transform: str, block_info: dict) -> int:
    """How many of its first ties this block prunes: from the gathered quotas, else by position."""
    part = int(np.ravel_multi_index(block_info[0]["chunk-location"], block_info[0]["num-chunks"]))
    quota = cut.quota(part)
    if quota is None:
        shape, start = _block_location(block_info)
        tied = partselect.tied_mask(block, transform, cut.selection.threshold)
        quota = int(array_module(tied).count_nonzero(
            _positions_fn(shape, start, block.shape)(tied) < cut.position_cut))
    return quota


def _below_key_backend(block: Any, backend: str | None) -> str | None:
    """The backend that prunes a block in one pass (``prune_below_key``), or None."""
    try:
        return get_registry().select(backend, array_type=_array_type_of(block), dtype=np.dtype(block.dtype).name,
                                     operation="prune_below_key")
    except BackendError:
        return None


def _array_type_of(block: Any) -> str:
    return "numpy" if array_module(block) is np else "cupy"


def _prune_block(block: Any, cut: Any, transform: str, method: str, backend: str | None, want_mask: bool,
                 block_info=None) -> Any:
    """The last pass over one block: the pruned block (or its keep-mask with ``want_mask``)."""
    quota = _block_quota(cut, block, transform, block_info)
    name = _below_key_backend(block, backend)
    if name is not None:  # one pass: prune below the threshold key and the block's first ties
        xp = array_module(block)
        out = None if want_mask else xp.empty(block.shape, dtype=block.dtype)
        mask = xp.empty(block.shape, dtype=bool) if want_mask else None
        prune_part(block, transform, cut.selection, quota, out=out, mask=mask, backend=name)
        return mask if want_mask else out
    less, equal = part_counts(partselect.host_if_needed(block, None), transform, cut.selection)
    k = less + min(equal, quota)
    pruned, mask = api.prune(block, count=k, method=method, backend=backend,
                             return_mask=True)
    return mask.data if want_mask else pruned


# ---------------------------------------------------------------------------------------------
# N:M
# ---------------------------------------------------------------------------------------------
def _whole_groups(x: da.Array, axis: int, m: int) -> da.Array:
    """``x`` with every block's size along ``axis`` a multiple of ``m`` (rechunked only if needed)."""
    sizes = x.chunks[axis]
    if all(c % m == 0 for c in sizes):
        return x
    target = max(m, max(sizes) // m * m)
    return x.rechunk({axis: target})


def generate_nm_mask(scores: Any, n: int, m: int, axis: int = -1, *, backend: str | None = None, out: Any = None) -> Mask:
    """N:M mask of Dask scores, block by block (rechunked along ``axis`` to whole groups)."""
    _no_out(out)
    n, m = check_nm(n, m)
    x = scores.values if isinstance(scores, ImportanceScores) else scores
    _check_float(x, "scores")
    axis = normalize_axis(axis, tuple(x.shape), m)
    x = _whole_groups(x, axis, m)
    data = x.map_blocks(_nm_mask_block, n, m, axis, backend, dtype=bool, meta=x._meta.astype(bool))
    return Mask(data, f"{n}:{m}", _backend_name(backend, x, "nm_mask"))


def _nm_mask_block(block: Any, n: int, m: int, axis: int, backend: str | None) -> Any:
    return masks.generate_nm_mask(block, n, m, axis, backend=backend).data


def _prune_nm_block(block: Any, pattern: str, method: str, axis: int, backend: str | None) -> Any:
    return api.prune(block, pattern=pattern, method=method, axis=axis, backend=backend)


# ---------------------------------------------------------------------------------------------
# block, row, column
# ---------------------------------------------------------------------------------------------
def _block_sums_block(block: Any, bh: int, bw: int) -> Any:
    """Float64 block sums in the hook's order (from 0.0, row-major inside the block)."""
    xp = array_module(block)
    wide = block.astype(score_dtype(block.dtype)).astype(np.float64)
    sums = xp.zeros((block.shape[0] // bh, block.shape[1] // bw), dtype=np.float64)
    with np.errstate(invalid="ignore"):
        for i in range(bh):
            for j in range(bw):
                sums += wide[i::bh, j::bw]
    return sums


def _keep_blocks_block(sums: Any, cut: partselect.Cut, bh: int, bw: int, block_info=None) -> Any:
    xp = array_module(sums)
    shape, start = _block_location(block_info)
    keys, _ = partselect.score_keys(sums, "identity", nan_high=True)
    pruned = keys < xp.uint64(cut.threshold)
    tied = keys == xp.uint64(cut.threshold)
    if bool(tied.any()):
        pos = _positions_fn(shape, start, sums.shape)(tied)
        pruned[xp.nonzero(tied)[0][pos < cut.position_cut]] = True
    keep = ~pruned.reshape(sums.shape)
    return xp.repeat(xp.repeat(keep, bh, axis=0), bw, axis=1)


def _block_mask(scores: Any, sparsity: Any, count: Any, pattern: Pattern, backend: str | None, out: Any) -> Mask:
    """The mask of ``pattern``'s blocks (``block(H,W)``, or whole rows/columns), the data rechunked
    to whole blocks; exact k over all blocks."""
    _no_out(out)
    x = scores.values if isinstance(scores, ImportanceScores) else scores
    _check_float(x, "scores")
    units = pattern_units(pattern, tuple(int(s) for s in x.shape))
    k = resolve_count(sparsity, count, units.total, units.name)
    bh, bw = units.block_shape
    x = _whole_groups(_whole_groups(x, 0, bh), 1, bw)
    sums = x.map_blocks(_block_sums_block, bh, bw, dtype=np.float64,
                        chunks=(tuple(c // bh for c in x.chunks[0]), tuple(c // bw for c in x.chunks[1])),
                        meta=x._meta.astype(np.float64))
    cut = _select(sums, k, "identity", nan_high=True)
    data = sums.map_blocks(_keep_blocks_block, cut, bh, bw, dtype=bool, chunks=x.chunks, meta=x._meta.astype(bool))
    return Mask(data, str(pattern), _backend_name(backend, x, "block_mask"))


def generate_block_mask(scores: Any, block_shape: tuple[int, int], sparsity: float | None = None, *,
                        count: int | None = None, backend: str | None = None, out: Any = None) -> Mask:
    """Block mask of Dask scores (rechunked to whole blocks); exact k over all blocks."""
    bh, bw = check_block_shape(block_shape)
    return _block_mask(scores, sparsity, count, Pattern("block", block_shape=(bh, bw)), backend, out)


def generate_row_mask(scores: Any, sparsity: float | None = None, *, count: int | None = None,
                      backend: str | None = None, out: Any = None) -> Mask:
    """Row mask of Dask scores (rechunked to whole rows)."""
    return _block_mask(scores, sparsity, count, Pattern("row"), backend, out)


def generate_column_mask(scores: Any, sparsity: float | None = None, *, count: int | None = None,
                         backend: str | None = None, out: Any = None) -> Mask:
    """Column mask of Dask scores (rechunked to whole columns)."""
    return _block_mask(scores, sparsity, count, Pattern("column"), backend, out)


# ---------------------------------------------------------------------------------------------
# applying masks and pruning
# ---------------------------------------------------------------------------------------------
def apply_mask(mask: Any, weights: da.Array, *, backend: str | None = None) -> da.Array:
    """A new lazy array: ``weights`` with the entries ``mask`` prunes set to ``+0.0`` (Dask arrays
    are immutable, so unlike the NumPy call this does not write into ``weights``)."""
    data = mask.data if isinstance(mask, Mask) else mask
    _check_float(weights, "weights")
    if not isinstance(data, da.Array):
        data = da.from_array(data, chunks=weights.chunks)
    if tuple(data.shape) != tuple(weights.shape):
        raise ShapeError(f"mask shape {tuple(data.shape)} does not match weights shape {tuple(weights.shape)}")
    if np.dtype(data.dtype) != np.dtype(bool):
        raise UnsupportedDtypeError(f"mask: dtype {np.dtype(data.dtype).name} is not supported; expected bool")
    return da.map_blocks(_apply_block, weights, data.rechunk(weights.chunks), backend, dtype=weights.dtype,
                         meta=weights._meta)


def _apply_block(block: Any, keep: Any, backend: str | None) -> Any:
    out = block.copy()
    api.apply_mask(keep, out, backend=backend)
    return out


def prune(weights: da.Array, sparsity: float | None = None, *, count: int | None = None, pattern: str = "unstructured",
          method: str = "l1", axis: int = -1, backend: str | None = None, inplace: bool = False,
          return_mask: bool = False, groups: str = "layer") -> Any:
    """``pp.prune`` of a Dask array: a lazy pruned array (and the lazy :class:`Mask` with
    ``return_mask``). ``inplace=True`` is an error (Dask arrays are immutable)."""
    transform = check_method(method)
    _check_float(weights, "weights")
    if inplace:
        raise InvalidArgumentError("inplace=True is not supported for Dask arrays (they are immutable); "
                                   "use the returned lazy array")
    spec = parse_pattern(pattern)
    if spec.kind == "nm":
        if sparsity is not None or count is not None:
            given = f"sparsity={shown(sparsity)}" if sparsity is not None else f"count={shown(count)}"
            raise InvalidArgumentError(f"{given} cannot be combined with pattern={shown(pattern)}: N:M fixes it")
        n, m = spec.n, spec.m
        axis = normalize_axis(axis, tuple(weights.shape), m)
        x = _whole_groups(weights, axis, m)
        if return_mask:
            mask = generate_nm_mask(importance(x, method, backend=backend).values, n, m, axis, backend=backend)
            return apply_mask(mask, x, backend=backend), mask
        return x.map_blocks(_prune_nm_block, pattern, method, axis, backend, dtype=x.dtype, meta=x._meta)
    if _check_groups(groups, weights) == "row":
        if spec.kind != "unstructured":
            raise InvalidArgumentError(f"groups='row' applies to unstructured pruning, not pattern={pattern!r}")
        k = resolve_count(sparsity, count, int(weights.shape[1]), "entries per row", f"pattern={shown(pattern)}")
        mask = generate_unstructured_mask(importance(weights, method, backend=backend).values, count=k, groups="row",
                                          backend=backend)
        result = apply_mask(mask, weights, backend=backend)
        return (result, mask) if return_mask else result
    shape = tuple(int(s) for s in weights.shape)
    units = pattern_units(spec, shape)
    k = resolve_count(sparsity, count, units.total, units.name, f"pattern={shown(pattern)}")
    if spec.kind == "unstructured":
        cut = _unstructured_cut(weights, k, transform)
        if not return_mask:
            return weights.map_blocks(_prune_block, cut, transform, method, backend, False, dtype=weights.dtype,
                                      meta=weights._meta)
        data = weights.map_blocks(_prune_block, cut, transform, method, backend, True, dtype=bool,
                                  meta=weights._meta.astype(bool))
        mask = Mask(data, "unstructured", _backend_name(backend, weights, "unstructured_mask"))
        return apply_mask(mask, weights, backend=backend), mask
    scores = importance(weights, method, backend=backend).values
    mask = _block_mask(scores, None, k, spec, backend, None)
    result = apply_mask(mask, weights, backend=backend)
    return (result, mask) if return_mask else result

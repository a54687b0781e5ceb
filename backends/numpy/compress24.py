"""2:4 compression in the ``numpy`` reference backend: the executable specification of the format
described in ``pruneplug.sparse24`` (and ``docs/sparse24.md``).

Straightforward on purpose: a 16-entry table from a group's nonzero pattern to the kept pair, a
gather, nibble packing by shifts, and the CUTLASS reordering as a scatter through the offsets of
``pruneplug.sparse24.cutlass_offsets``.
"""

from __future__ import annotations

import numpy as np

from pruneplug.hookspecs import hookimpl
from pruneplug_backends.numpy.scores import scores_of
from pruneplug.sparse24 import (
    cutlass_offsets,
    format_of,
    invalid_nibble_error,
    kept_pair_arrays,
    metadata_shape,
    not_sparse_error,
)


IDX0, IDX1 = kept_pair_arrays()


def _nonzero(a: np.ndarray) -> np.ndarray:
    return a != np.zeros((), dtype=a.dtype)  # -0.0 == 0, NaN != 0


def _pack(nibbles: np.ndarray, meta_dtype: str) -> np.ndarray:
    """(rows, ngroups) nibbles -> (rows, ngroups / per_word) words, group j in bits 4j..4j+3."""
    rows, ngroups = nibbles.shape
    per_word = np.dtype(meta_dtype).itemsize * 2
    n = nibbles.reshape(rows, ngroups // per_word, per_word).astype(np.uint32)
    words = np.zeros((rows, ngroups // per_word), dtype=np.uint32)
    for j in range(per_word):
        words |= n[:, :, j] << np.uint32(4 * j)
    unsigned = np.uint16 if meta_dtype == "int16" else np.uint32
    return words.astype(unsigned).view(meta_dtype)


def _unpack(words: np.ndarray, meta_dtype: str) -> np.ndarray:
    rows, ncols = words.shape
    per_word = np.dtype(meta_dtype).itemsize * 2
    u = words.view(np.uint16 if meta_dtype == "int16" else np.uint32).astype(np.uint32)
    nibbles = np.stack([(u >> np.uint32(4 * j)) & np.uint32(0xF) for j in range(per_word)], axis=2)
    return nibbles.reshape(rows, ncols * per_word).astype(np.uint8)


def to_layout(logical: np.ndarray, layout: str) -> np.ndarray:
    if layout == "ptx":
        return logical
    rows, ncols = logical.shape
    out = np.empty(rows * ncols, dtype=logical.dtype)
    out[cutlass_offsets(rows, ncols, logical.dtype.name).ravel()] = logical.ravel()
    return out.reshape(rows, ncols)


def from_layout(metadata: np.ndarray, layout: str) -> np.ndarray:
    if layout == "ptx":
        return metadata
    rows, ncols = metadata.shape
    return metadata.ravel()[cutlass_offsets(rows, ncols, metadata.dtype.name)]


def compress(weights: np.ndarray, layout: str) -> tuple[np.ndarray, np.ndarray]:
    dtype = weights.dtype.name
    fmt = format_of(dtype)
    rows, cols = weights.shape
    groups = weights.reshape(rows, cols // fmt.m, fmt.m)
    nz = _nonzero(groups)
    counts = nz.sum(axis=2)
    bad = np.argwhere(counts > fmt.m // 2)
    if bad.size:
        r, g = (int(x) for x in bad[0])
        raise not_sparse_error(dtype, r, g, int(counts[r, g]))
    if fmt.m == 4:
        pattern = (nz * np.array([1, 2, 4, 8], dtype=np.uint8)).sum(axis=2, dtype=np.uint8)
        idx0, idx1 = IDX0[pattern], IDX1[pattern]
        kept = np.stack([idx0, idx1], axis=2).astype(np.intp)
        values = np.take_along_axis(groups, kept, axis=2)
        nibbles = idx0 | (idx1 << 2)
    else:  # 1:2 pairs, encoded as halves of a group of 4: keep element 0 (0x4) unless it is zero (0xE)
        keep_second = ~nz[:, :, 0]
        values = np.take_along_axis(groups, keep_second[:, :, None].astype(np.intp), axis=2)
        nibbles = np.where(keep_second, np.uint8(0xE), np.uint8(0x4))
    values = np.ascontiguousarray(values.reshape(rows, cols // 2))
    logical = _pack(nibbles, fmt.meta_dtype)
    assert logical.shape == metadata_shape((rows, cols), dtype)
    return values, np.ascontiguousarray(to_layout(logical, layout))


def decompress(values: np.ndarray, metadata: np.ndarray, shape: tuple, layout: str) -> np.ndarray:
    dtype = values.dtype.name
    fmt = format_of(dtype)
    rows, cols = shape
    nibbles = _unpack(from_layout(metadata, layout), fmt.meta_dtype)  # (rows, groups)
    valid = np.isin(nibbles, np.array(sorted(fmt.valid_nibbles), dtype=np.uint8))
    if not valid.all():
        r, g = (int(x) for x in np.argwhere(~valid)[0])
        raise invalid_nibble_error(dtype, layout, r, g, int(nibbles[r, g]))
    dense = np.zeros((rows, cols // fmt.m, fmt.m), dtype=values.dtype)
    pairs = values.reshape(rows, cols // fmt.m, fmt.m // 2)
    if fmt.m == 4:
        idx0 = (nibbles & 3).astype(np.intp)
        idx1 = (nibbles >> 2).astype(np.intp)
        np.put_along_axis(dense, idx0[..., None], pairs[:, :, 0:1], axis=2)
        np.put_along_axis(dense, idx1[..., None], pairs[:, :, 1:2], axis=2)
    else:
        position = (nibbles == 0xE).astype(np.intp)
        np.put_along_axis(dense, position[..., None], pairs, axis=2)
    return dense.reshape(rows, cols)


def prune_scores(weights: np.ndarray, transform: str) -> np.ndarray:
    """Scores for pruning: the core's (float weights, ``NonFiniteError`` on NaN/Inf) or, for int8,
    the integer's absolute value in int16."""
    if weights.dtype == np.int8:
        return np.abs(weights.astype(np.int16))
    return scores_of(weights, transform)


def prune_compress(weights: np.ndarray, transform: str, layout: str) -> tuple[np.ndarray, np.ndarray]:
    fmt = format_of(weights.dtype.name)
    rows, cols = weights.shape
    scores = prune_scores(weights, transform).reshape(rows, cols // fmt.m, fmt.m)
    # Descending stable order in each group: the largest are kept, ties keep the lower index.
    order = np.argsort(-scores.astype(np.float64), axis=2, kind="stable")
    keep = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(keep, order[:, :, : fmt.m // 2], True, axis=2)
    pruned = weights.copy().reshape(keep.shape)
    pruned[~keep] = 0
    return compress(pruned.reshape(rows, cols), layout)


@hookimpl
def pruneplug_compress_24(weights: np.ndarray, layout: str):
    return compress(weights, layout)


@hookimpl
def pruneplug_decompress_24(values: np.ndarray, metadata: np.ndarray, shape, layout: str):
    return decompress(values, metadata, tuple(shape), layout)


@hookimpl
def pruneplug_prune_compress_24(weights: np.ndarray, layout: str, transform: str):
    return prune_compress(weights, transform, layout)

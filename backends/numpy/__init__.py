"""The ``numpy`` backend: the executable specification of pruneplug.

Short and obviously right: stable sorts, explicit loops where summation order is part of the
contract, no cleverness. Every other backend is tested bit for bit against it. It is slow on large
inputs on purpose; the ``cpu`` backend is the fast one.
"""

from __future__ import annotations

import sys

import numpy as np

from pruneplug.hookspecs import hookimpl
from pruneplug.arrays import FLOAT_DTYPES
from pruneplug.backend_info import BackendInfo, implemented_operations
from pruneplug_backends.numpy.scores import check_finite, scores_of  # noqa: F401  (part of the reference's API)

NAME = "numpy"


@hookimpl
def pruneplug_backend_info() -> BackendInfo:
    return BackendInfo(
        name=NAME,
        priority=0,
        array_types={"numpy"},
        dtypes=FLOAT_DTYPES | {"int8"},
        operations=implemented_operations(sys.modules[__name__]),
        description="pure NumPy reference implementation (the specification)",
    )


# ---------------------------------------------------------------------------------------------
# scores
# ---------------------------------------------------------------------------------------------
@hookimpl
def pruneplug_importance(weights: np.ndarray, transform: str):
    scores = scores_of(weights, transform)
    if scores.size == 0:
        return scores, (float("nan"),) * 4
    with np.errstate(invalid="ignore", over="ignore"):  # inf scores give inf/NaN statistics
        return scores, _stats(scores)


def _stats(scores: np.ndarray) -> tuple[float, float, float, float]:
    return (
        float(scores.min()),
        float(scores.max()),
        float(scores.mean(dtype=np.float64)),
        float(scores.std(dtype=np.float64)),
    )


# ---------------------------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------------------------
def _into(out: np.ndarray | None, mask: np.ndarray) -> np.ndarray:
    if out is None:
        return mask
    out[...] = mask
    return out


@hookimpl
def pruneplug_unstructured_mask(values: np.ndarray, k: int, transform: str, out=None) -> np.ndarray:
    scores = scores_of(values, transform).ravel()
    order = np.argsort(scores, kind="stable")  # equal scores: lower flat index first
    keep = np.ones(scores.size, dtype=bool)
    keep[order[:k]] = False
    return _into(out, keep.reshape(values.shape))


@hookimpl
def pruneplug_nm_mask(values: np.ndarray, n: int, m: int, axis: int, transform: str, out=None) -> np.ndarray:
    scores = scores_of(values, transform)
    shape = values.shape
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    groups = scores.reshape(outer, shape[axis] // m, m, inner)
    # Descending stable order inside each group: the n largest are kept, ties keep the lower index.
    order = np.argsort(-groups, axis=2, kind="stable")
    keep = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(keep, order[:, :, :n, :], True, axis=2)
    return _into(out, keep.reshape(shape))


def block_sums(scores: np.ndarray, block_shape: tuple[int, int]) -> np.ndarray:
    """Float64 sum of each block, accumulated from 0.0 in row-major order inside the block.

    The loop is explicit (one vectorised add per position in the block) because the summation
    order is part of the contract: NumPy's pairwise ``sum`` would give other last bits.
    """
    bh, bw = block_shape
    wide = scores.astype(np.float64)
    sums = np.zeros((scores.shape[0] // bh, scores.shape[1] // bw), dtype=np.float64)
    if sums.size == 0:  # no blocks: nothing to add (and bh * bw may be astronomically large)
        return sums
    # A sum beyond float64's range is +Inf (a valid score); +Inf and -Inf in one block give a NaN
    # sum, which ranks highest. Both are defined behaviour, not warnings.
    with np.errstate(invalid="ignore", over="ignore"):
        for i in range(bh):
            for j in range(bw):
                sums += wide[i::bh, j::bw]
    return sums


@hookimpl
def pruneplug_block_mask(values: np.ndarray, block_shape, k: int, transform: str, out=None) -> np.ndarray:
    bh, bw = block_shape
    sums = block_sums(scores_of(values, transform), (bh, bw))
    order = np.argsort(sums.ravel(), kind="stable")  # NaN sums sort last (rank highest)
    keep_blocks = np.ones(sums.size, dtype=bool)
    keep_blocks[order[:k]] = False
    keep = np.repeat(np.repeat(keep_blocks.reshape(sums.shape), bh, axis=0), bw, axis=1)
    return _into(out, keep)


@hookimpl
def pruneplug_apply_mask(weights: np.ndarray, mask: np.ndarray) -> None:
    weights[~mask] = 0  # +0.0, whatever was there (NaN and -0.0 included)


from pruneplug_backends.numpy.compress24 import (  # noqa: E402,F401  (2:4 compression hooks)
    pruneplug_compress_24,
    pruneplug_decompress_24,
    pruneplug_prune_compress_24,
)
from pruneplug_backends.numpy.rows import pruneplug_row_mask  # noqa: E402,F401  (per-row selection)
from pruneplug_backends.numpy.keyhist import (  # noqa: E402,F401  (exact selection over many arrays)
    pruneplug_count_zeros,
    pruneplug_key_histogram,
    pruneplug_prune_below_key,
)

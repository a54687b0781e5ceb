"""The reference of the exact selection's hooks (``pruneplug_key_histogram``,
``pruneplug_count_zeros`` and ``pruneplug_prune_below_key``): keys materialised as uint64, counted
with ``bincount``. Raw bits (``dtype=``) are viewed as their floats first."""

from __future__ import annotations

import numpy as np

from pruneplug.arrays import check_bits, float_view
from pruneplug.hookspecs import hookimpl
from pruneplug.selection import mag16_keys

from pruneplug_backends.numpy.scores import check_finite, scores_of

_BITS = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def keys_of(values: np.ndarray, transform: str, keys: str) -> np.ndarray:
    """The selection keys of ``values`` (flat, uint64) after the finiteness check."""
    flat = values.reshape(-1)
    if keys == "mag16":
        check_finite(flat, transform)
        return mag16_keys(flat.view(np.uint16), flat.dtype.name, transform).astype(np.uint64)
    scores = scores_of(flat, transform)
    if keys == "f32":
        return scores.astype(np.float32).view(np.uint32).astype(np.uint64)
    return scores.astype(np.float64).view(np.uint64)


def _hi(key: np.ndarray, top: int) -> np.ndarray:
    return key >> np.uint64(top) if top < 64 else np.zeros_like(key)


def _floats(values: np.ndarray, dtype: str | None) -> np.ndarray:
    if dtype is None:
        return values
    check_bits(values, dtype, "values")
    return float_view(values, dtype)


@hookimpl
def pruneplug_key_histogram(values: np.ndarray, transform: str, keys: str, shift: int, bits: int,
                            prefix: int, dtype: str | None = None, zeros: np.ndarray | None = None) -> np.ndarray:
    values = _floats(values, dtype)
    key = keys_of(values, transform, keys)
    if zeros is not None:
        zeros[0], zeros[1] = int(np.count_nonzero(_zeros(values.reshape(-1)))), int(np.count_nonzero(key == 0))
    hi = _hi(key, shift + bits)
    p = np.uint64(prefix)
    hist = np.zeros((1 << bits) + 2, dtype=np.int64)
    hist[0] = np.count_nonzero(hi < p)
    hist[-1] = np.count_nonzero(hi > p)
    digit = (key[hi == p] >> np.uint64(shift)) & np.uint64((1 << bits) - 1)
    hist[1:-1] = np.bincount(digit.astype(np.intp), minlength=1 << bits)
    return hist


def _zeros(flat: np.ndarray) -> np.ndarray:
    bits = flat.view(_BITS[flat.dtype.itemsize])
    return (bits << np.uint8(1)) == 0  # every bit but the sign is 0: +0.0 and -0.0


@hookimpl
def pruneplug_count_zeros(values: np.ndarray, transform: str | None, dtype: str | None = None) -> tuple[int, int]:
    flat = _floats(values, dtype).reshape(-1)
    zeros = int(np.count_nonzero(_zeros(flat)))
    if transform is None:
        return zeros, zeros
    return zeros, int(np.count_nonzero(scores_of(flat, transform) == 0))  # score 0: key 0


@hookimpl
def pruneplug_prune_below_key(values: np.ndarray, transform: str, keys: str, threshold: int, ties: int,
                              out=None, mask=None, dtype: str | None = None) -> tuple[int, int, int, int]:
    values = _floats(values, dtype)
    if out is not None and dtype is not None:
        out = _floats(out, dtype)
    flat = values.reshape(-1)
    key = keys_of(flat, transform, keys)
    t = np.uint64(threshold)
    pruned = key < t
    equal = np.flatnonzero(key == t)
    pruned[equal[:ties]] = True
    zero = _zeros(flat)
    if out is not None:
        target = out.reshape(-1)
        target[...] = flat
        target[pruned] = 0
    if mask is not None:
        mask.reshape(-1)[...] = ~pruned
    return (int(np.count_nonzero(key < t)), int(equal.size), int(np.count_nonzero(zero)),
            int(np.count_nonzero(zero | pruned)))

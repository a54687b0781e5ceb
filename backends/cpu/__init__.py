"""The ``cpu`` backend: pruneplug's C kernels (cffi, OpenMP), bit-identical to the ``numpy`` reference.

The C code lives in ``csrc/`` (contract: ``csrc/pruneplug.h``); this module only turns NumPy arrays
into pointers and C status codes into pruneplug's typed errors. cffi's API mode releases the GIL
around every call into ``_native``, so calls from several Python threads run concurrently.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from pruneplug.arrays import dtype_name, score_dtype
from pruneplug.errors import BackendExecutionError
from pruneplug.hookspecs import hookimpl
from pruneplug.arrays import FLOAT_DTYPES
from pruneplug.backend_info import BackendInfo, implemented_operations
# never raises at import: an unbuilt extension makes the backend unavailable, not broken
from pruneplug_backends.cpu.native import DTYPE_CODE, TRANSFORM_CODE, ffi, lib, raise_for_status
from pruneplug_backends.cpu.native import IMPORT_ERROR

NAME = "cpu"
_BITS = {2: np.uint16, 4: np.uint32, 8: np.uint64}


@hookimpl
def pruneplug_backend_info() -> BackendInfo:
    return BackendInfo(
        name=NAME,
        priority=100,
        array_types={"numpy"},
        dtypes=FLOAT_DTYPES | {"int8"},  # int8: 2:4 compression only
        operations=implemented_operations(sys.modules[__name__]),
        available=lib is not None,
        reason=IMPORT_ERROR,
        description="C kernels (cffi, OpenMP): sampled-bracket exact selection, branch-free N:M",
    )


# ---------------------------------------------------------------------------------------------
# plumbing
# ---------------------------------------------------------------------------------------------
def _dtype_name(a: np.ndarray) -> str:
    name = dtype_name(a)  # memoised: NumPy's dtype.name costs ~1.5 us, a quarter of a 1e4 call
    if name not in FLOAT_DTYPES:
        raise BackendExecutionError(f"cpu backend: unsupported dtype {a.dtype}")
    return name


def _ptr(a: np.ndarray, ctype: str = "char[]") -> Any:
    """The data of a C-contiguous array for C (bfloat16 included: the C side reads bits).

    ``ffi.from_buffer`` costs ~0.1 us (``a.ctypes.data`` ~1 us): it matters for small arrays."""
    if not a.flags.c_contiguous:
        raise BackendExecutionError("cpu backend: expected a C-contiguous array")
    return ffi.from_buffer(ctype, a)


def _mask_out(values: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    if out is None:
        return np.empty(values.shape, dtype=np.bool_)
    return out


def _check(status: int, transform: str, bad: Any) -> None:
    raise_for_status(status, transform, bad)


def _bad() -> Any:
    return ffi.new("int64_t[2]")


def _as_outer_len_inner(shape: tuple, axis: int) -> tuple[int, int, int]:
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return outer, int(shape[axis]), inner


# ---------------------------------------------------------------------------------------------
# hooks
# ---------------------------------------------------------------------------------------------
@hookimpl
def pruneplug_unstructured_mask(values: np.ndarray, k: int, transform: str, out=None) -> np.ndarray:
    mask = _mask_out(values, out)
    bad = _bad()
    st = lib.pp_unstructured_mask(_ptr(values), DTYPE_CODE[_dtype_name(values)], TRANSFORM_CODE[transform],
                                  values.size, k, _ptr(mask, "uint8_t[]"), 0, 0, ffi.NULL, bad, bad + 1)
    _check(st, transform, bad)
    return mask


@hookimpl
def pruneplug_prune_unstructured(weights: np.ndarray, k: int, transform: str) -> None:
    bad = _bad()
    st = lib.pp_prune_unstructured(_ptr(weights), DTYPE_CODE[_dtype_name(weights)], TRANSFORM_CODE[transform],
                                   weights.size, k, 0, 0, ffi.NULL, bad, bad + 1)
    _check(st, transform, bad)


@hookimpl
def pruneplug_nm_mask(values: np.ndarray, n: int, m: int, axis: int, transform: str, out=None) -> np.ndarray:
    mask = _mask_out(values, out)
    outer, length, inner = _as_outer_len_inner(values.shape, axis)
    bad = _bad()
    st = lib.pp_nm_mask(_ptr(values), DTYPE_CODE[_dtype_name(values)], TRANSFORM_CODE[transform],
                        outer, length, inner, n, m, _ptr(mask, "uint8_t[]"), 0, bad, bad + 1)
    _check(st, transform, bad)
    return mask


@hookimpl
def pruneplug_prune_nm(weights: np.ndarray, n: int, m: int, axis: int, transform: str) -> None:
    outer, length, inner = _as_outer_len_inner(weights.shape, axis)
    bad = _bad()
    st = lib.pp_prune_nm(_ptr(weights), DTYPE_CODE[_dtype_name(weights)], TRANSFORM_CODE[transform],
                         outer, length, inner, n, m, 0, bad, bad + 1)
    _check(st, transform, bad)


@hookimpl
def pruneplug_block_mask(values: np.ndarray, block_shape, k: int, transform: str, out=None) -> np.ndarray:
    mask = _mask_out(values, out)
    rows, cols = values.shape
    bh, bw = block_shape
    bad = _bad()
    st = lib.pp_block_mask(_ptr(values), DTYPE_CODE[_dtype_name(values)], TRANSFORM_CODE[transform],
                           rows, cols, bh, bw, k, _ptr(mask, "uint8_t[]"), 0, bad, bad + 1)
    _check(st, transform, bad)
    return mask


@hookimpl
def pruneplug_apply_mask(weights: np.ndarray, mask: np.ndarray) -> None:
    st = lib.pp_apply_mask(_ptr(weights), DTYPE_CODE[_dtype_name(weights)], _ptr(mask, "uint8_t[]"),
                           weights.size, 0)
    _check(st, "abs", None)


@hookimpl
def pruneplug_importance(weights: np.ndarray, transform: str):
    name = _dtype_name(weights)
    scores = np.empty(weights.shape, dtype=score_dtype(weights.dtype))
    stats = ffi.new("double[4]")
    bad = _bad()
    st = lib.pp_importance(_ptr(weights), DTYPE_CODE[name], TRANSFORM_CODE[transform], weights.size,
                           _ptr(scores), stats, 0, bad, bad + 1)
    _check(st, transform, bad)
    return scores, (float(stats[0]), float(stats[1]), float(stats[2]), float(stats[3]))


from pruneplug_backends.cpu.compress24 import pruneplug_compress_24, pruneplug_decompress_24, pruneplug_prune_compress_24  # noqa: E402,F401
from pruneplug_backends.cpu.rows import pruneplug_row_mask  # noqa: E402,F401  (per-row selection)
from pruneplug_backends.cpu.keyhist import (  # noqa: E402,F401
    pruneplug_count_zeros,
    pruneplug_key_histogram,
    pruneplug_prune_below_key,
)

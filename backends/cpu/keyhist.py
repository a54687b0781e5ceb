"""The ``cpu`` backend's exact-selection hooks (``csrc/pp_keyhist.c``): key histograms (with the
zero counts in the same pass when asked), zero counts alone, and the prune-below-key pass, one
threaded C pass each. ``dtype=`` says that ``values`` are raw bits (the C side reads bits anyway)."""

from __future__ import annotations

from typing import Any

import numpy as np

from pruneplug.arrays import check_bits, dtype_name
from pruneplug.errors import BackendExecutionError
from pruneplug.hookspecs import hookimpl

from pruneplug_backends.cpu.native import DTYPE_CODE, TRANSFORM_CODE, ffi, lib, raise_for_status

#: selection key kind -> enum pp_keys (csrc/pp_keyhist.h)
KEYS_CODE = {"mag16": lib.PP_KEYS_MAG16, "f32": lib.PP_KEYS_F32, "f64": lib.PP_KEYS_F64} if lib is not None else {}
#: Threads of the vectorised passes (zero counts, prune below key): one. They read at memory speed
#: on one core (0.09 and 0.12 ns per bfloat16 weight against np.copyto's 0.17), so a second
#: thread has little to gain, and on a shared 2-core machine it lost: 1 thread 1.0 ms, 2 threads
#: 7.8 ms for one 11.5M-weight zero count (the team waits for a descheduled thread at every join).
#: The histogram (scattered increments, 1.8-4 ns per weight) keeps the backend's default.
VECTOR_PASS_THREADS = 1


def _ptr(a: np.ndarray, ctype: str = "char[]") -> Any:
    if not a.flags.c_contiguous:
        raise BackendExecutionError("cpu backend: expected a C-contiguous array")
    return ffi.from_buffer(ctype, a)


def _dtype_code(values: np.ndarray, dtype: str | None) -> int:
    """The enum pp_dtype of the floats ``values`` holds (as floats, or as raw bits of ``dtype``)."""
    if dtype is None:
        return DTYPE_CODE[dtype_name(values)]
    check_bits(values, dtype, "values")
    return DTYPE_CODE[dtype]


@hookimpl
def pruneplug_key_histogram(values: np.ndarray, transform: str, keys: str, shift: int, bits: int,
                            prefix: int, dtype: str | None = None, zeros: np.ndarray | None = None) -> np.ndarray:
    hist = np.empty((1 << bits) + 2, dtype=np.int64)
    bad = ffi.new("int64_t[2]")
    zptr = _ptr(zeros, "int64_t[]") if zeros is not None else ffi.NULL
    st = lib.pp_key_histogram(_ptr(values), _dtype_code(values, dtype), TRANSFORM_CODE[transform], KEYS_CODE[keys],
                              values.size, shift, bits, prefix, _ptr(hist, "int64_t[]"), zptr, 0, bad, bad + 1)
    raise_for_status(st, transform, bad, "the histogram buffers")
    return hist


@hookimpl
def pruneplug_count_zeros(values: np.ndarray, transform: str | None, dtype: str | None = None) -> tuple[int, int]:
    counts = ffi.new("int64_t[2]")
    bad = ffi.new("int64_t[2]")
    code = TRANSFORM_CODE[transform] if transform is not None else lib.PP_NO_TRANSFORM
    st = lib.pp_count_zeros(_ptr(values), _dtype_code(values, dtype), code, values.size, counts, VECTOR_PASS_THREADS,
                            bad, bad + 1)
    raise_for_status(st, transform or "abs", bad)
    return int(counts[0]), int(counts[1])


@hookimpl
def pruneplug_prune_below_key(values: np.ndarray, transform: str, keys: str, threshold: int, ties: int,
                              out=None, mask=None, dtype: str | None = None) -> tuple[int, int, int, int]:
    if out is not None and not out.flags.writeable:
        raise BackendExecutionError("cpu backend: out is read-only")
    counts = ffi.new("int64_t[4]")
    bad = ffi.new("int64_t[2]")
    st = lib.pp_prune_below_key(_ptr(values), _dtype_code(values, dtype), TRANSFORM_CODE[transform], KEYS_CODE[keys],
                                values.size, threshold, ties, _ptr(out) if out is not None else ffi.NULL,
                                _ptr(mask, "uint8_t[]") if mask is not None else ffi.NULL, counts, VECTOR_PASS_THREADS,
                                bad, bad + 1)
    raise_for_status(st, transform, bad, "the histogram buffers")
    return int(counts[0]), int(counts[1]), int(counts[2]), int(counts[3])

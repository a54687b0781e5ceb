"""The ``cpu`` backend's exact-selection hooks (``csrc/pp_keyhist.c``): key histograms and the
prune-below-key pass, one threaded C pass each."""

from __future__ import annotations

from typing import Any

import numpy as np

from pruneplug.arrays import dtype_name
from pruneplug.errors import BackendExecutionError
from pruneplug.hookspecs import hookimpl

from pruneplug_backends.cpu.native import DTYPE_CODE, TRANSFORM_CODE, ffi, lib, raise_for_status

#: selection key kind -> enum pp_keys (csrc/pp_keyhist.h)
KEYS_CODE = {"mag16": lib.PP_KEYS_MAG16, "f32": lib.PP_KEYS_F32, "f64": lib.PP_KEYS_F64} if lib is not None else {}

def _ptr(a: np.ndarray, ctype: str = "char[]") -> Any:
    if not a.flags.c_contiguous:
        raise BackendExecutionError("cpu backend: expected a C-contiguous array")
    return ffi.from_buffer(ctype, a)


@hookimpl
def pruneplug_key_histogram(values: np.ndarray, transform: str, keys: str, shift: int, bits: int,
                            prefix: int) -> np.ndarray:
    hist = np.empty((1 << bits) + 2, dtype=np.int64)
    bad = ffi.new("int64_t[2]")
    st = lib.pp_key_histogram(_ptr(values), DTYPE_CODE[dtype_name(values)], TRANSFORM_CODE[transform], KEYS_CODE[keys],
                              values.size, shift, bits, prefix, _ptr(hist, "int64_t[]"), 0, bad, bad + 1)
    raise_for_status(st, transform, bad, "the histogram buffers")
    return hist


@hookimpl
def pruneplug_prune_below_key(values: np.ndarray, transform: str, keys: str, threshold: int, ties: int,
                              out=None, mask=None) -> tuple[int, int, int, int]:
    if out is not None and not out.flags.writeable:
        raise BackendExecutionError("cpu backend: out is read-only")
    counts = ffi.new("int64_t[4]")
    bad = ffi.new("int64_t[2]")
    st = lib.pp_prune_below_key(_ptr(values), DTYPE_CODE[dtype_name(values)], TRANSFORM_CODE[transform], KEYS_CODE[keys],
                                values.size, threshold, ties, _ptr(out) if out is not None else ffi.NULL,
                                _ptr(mask, "uint8_t[]") if mask is not None else ffi.NULL, counts, 0, bad, bad + 1)
    raise_for_status(st, transform, bad, "the histogram buffers")
    return int(counts[0]), int(counts[1]), int(counts[2]), int(counts[3])

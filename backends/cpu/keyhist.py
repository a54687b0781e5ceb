"""The ``cpu`` backend's exact-selection hooks (``csrc/pp_keyhist.c``): key histograms and the
prune-below-key pass, one threaded C pass each."""

from __future__ import annotations

import numpy as np

from pruneplug.errors import BackendExecutionError
from pruneplug.hookspecs import hookimpl

from . import _DTYPE_CODE, _TRANSFORM_CODE, _bad, _check, _dtype_name, _ptr, ffi, lib

_KEYS_CODE = {"mag16": 0, "f32": 1, "f64": 2}


@hookimpl
def pruneplug_key_histogram(values: np.ndarray, transform: str, keys: str, shift: int, bits: int,
                            prefix: int) -> np.ndarray:
    hist = np.empty((1 << bits) + 2, dtype=np.int64)
    bad = _bad()
    st = lib.pp_key_histogram(_ptr(values), _DTYPE_CODE[_dtype_name(values)], _TRANSFORM_CODE[transform],
                              _KEYS_CODE[keys], values.size, shift, bits, prefix, _ptr(hist, "int64_t[]"),
                              0, bad, bad + 1)
    _check(st, transform, bad)
    return hist


@hookimpl
def pruneplug_prune_below_key(values: np.ndarray, transform: str, keys: str, threshold: int, ties: int,
                              out=None, mask=None) -> tuple[int, int, int, int]:
    counts = ffi.new("int64_t[4]")
    bad = _bad()
    if out is not None and not out.flags.writeable:
        raise BackendExecutionError("cpu backend: out is read-only")
    st = lib.pp_prune_below_key(_ptr(values), _DTYPE_CODE[_dtype_name(values)], _TRANSFORM_CODE[transform],
                                _KEYS_CODE[keys], values.size, threshold, ties,
                                _ptr(out) if out is not None else ffi.NULL,
                                _ptr(mask, "uint8_t[]") if mask is not None else ffi.NULL, counts, 0, bad, bad + 1)
    _check(st, transform, bad)
    return int(counts[0]), int(counts[1]), int(counts[2]), int(counts[3])

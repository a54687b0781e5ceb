"""The ``cpu`` backend's exact-selection hooks (``csrc/pp_keyhist.c``): key histograms and the
prune-below-key pass, one threaded C pass each."""

from __future__ import annotations

from typing import Any

import numpy as np

from pruneplug.arrays import dtype_name
from pruneplug.errors import BackendExecutionError, NonFiniteError
from pruneplug.hookspecs import hookimpl

try:  # the cpu backend reports an unbuilt extension; these hooks are then never selected
    from pruneplug_backends.cpu._native import ffi, lib
except ImportError:  # pragma: no cover - depends on the build
    ffi = lib = None

_DTYPE = {"float16": 0, "bfloat16": 1, "float32": 2, "float64": 3}
_TRANSFORM = {"abs": 0, "square": 1}
_KEYS = {"mag16": 0, "f32": 1, "f64": 2}


def _ptr(a: np.ndarray, ctype: str = "char[]") -> Any:
    if not a.flags.c_contiguous:
        raise BackendExecutionError("cpu backend: expected a C-contiguous array")
    return ffi.from_buffer(ctype, a)


def _raise_for(status: int, transform: str, bad: Any) -> None:
    if status == 0:
        return
    if status == lib.PP_ERR_NONFINITE:
        raise NonFiniteError.for_values(transform, int(bad[0]), int(bad[1]))
    if status == lib.PP_ERR_NOMEM:
        raise MemoryError("cpu backend: out of memory for the histogram buffers")
    raise BackendExecutionError(f"cpu backend: the C kernel returned status {status}")


@hookimpl
def pruneplug_key_histogram(values: np.ndarray, transform: str, keys: str, shift: int, bits: int,
                            prefix: int) -> np.ndarray:
    hist = np.empty((1 << bits) + 2, dtype=np.int64)
    bad = ffi.new("int64_t[2]")
    st = lib.pp_key_histogram(_ptr(values), _DTYPE[dtype_name(values)], _TRANSFORM[transform], _KEYS[keys],
                              values.size, shift, bits, prefix, _ptr(hist, "int64_t[]"), 0, bad, bad + 1)
    _raise_for(st, transform, bad)
    return hist


@hookimpl
def pruneplug_prune_below_key(values: np.ndarray, transform: str, keys: str, threshold: int, ties: int,
                              out=None, mask=None) -> tuple[int, int, int, int]:
    if out is not None and not out.flags.writeable:
        raise BackendExecutionError("cpu backend: out is read-only")
    counts = ffi.new("int64_t[4]")
    bad = ffi.new("int64_t[2]")
    st = lib.pp_prune_below_key(_ptr(values), _DTYPE[dtype_name(values)], _TRANSFORM[transform], _KEYS[keys],
                                values.size, threshold, ties, _ptr(out) if out is not None else ffi.NULL,
                                _ptr(mask, "uint8_t[]") if mask is not None else ffi.NULL, counts, 0, bad, bad + 1)
    _raise_for(st, transform, bad)
    return int(counts[0]), int(counts[1]), int(counts[2]), int(counts[3])

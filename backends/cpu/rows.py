"""The ``cpu`` backend's per-row exact selection (``csrc/rowselect.c``)."""

from __future__ import annotations

import numpy as np

from pruneplug.arrays import dtype_name
from pruneplug.errors import BackendExecutionError, NonFiniteError
from pruneplug.hookspecs import hookimpl

_DTYPE_CODE = {"float16": 0, "bfloat16": 1, "float32": 2, "float64": 3}
_TRANSFORM_CODE = {"abs": 0, "square": 1, "identity": 2}


@hookimpl
def pruneplug_row_mask(values: np.ndarray, k: int, transform: str, out=None) -> np.ndarray:
    from pruneplug_backends.cpu import ffi, lib  # the loaded extension (the backend is available)

    mask = np.empty(values.shape, dtype=np.bool_) if out is None else out
    rows, cols = (int(s) for s in values.shape)
    bad = ffi.new("int64_t[2]")
    status = lib.pp_row_mask(ffi.from_buffer("char[]", values), _DTYPE_CODE[dtype_name(values)],
                             _TRANSFORM_CODE[transform], rows, cols, int(k), ffi.from_buffer("uint8_t[]", mask),
                             0, bad, bad + 1)
    if status == lib.PP_ERR_NONFINITE:
        raise NonFiniteError.for_values(transform, int(bad[0]), int(bad[1]))
    if status == lib.PP_ERR_NOMEM:
        raise MemoryError("cpu backend: out of memory for the per-row selection buffers")
    if status != 0:
        raise BackendExecutionError(f"cpu backend: pp_row_mask returned status {status}")
    return mask

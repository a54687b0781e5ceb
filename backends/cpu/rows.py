"""The ``cpu`` backend's per-row exact selection (``csrc/rowselect.c``)."""

from __future__ import annotations

import numpy as np

from pruneplug.arrays import dtype_name
from pruneplug.hookspecs import hookimpl

from pruneplug_backends.cpu.native import DTYPE_CODE, TRANSFORM_CODE, ffi, lib, raise_for_status


@hookimpl
def pruneplug_row_mask(values: np.ndarray, k: int, transform: str, out=None) -> np.ndarray:
    mask = np.empty(values.shape, dtype=np.bool_) if out is None else out
    rows, cols = (int(s) for s in values.shape)
    bad = ffi.new("int64_t[2]")
    status = lib.pp_row_mask(ffi.from_buffer("char[]", values), DTYPE_CODE[dtype_name(values)],
                             TRANSFORM_CODE[transform], rows, cols, int(k), ffi.from_buffer("uint8_t[]", mask),
                             0, bad, bad + 1)
    raise_for_status(status, transform, bad, "the per-row selection buffers")
    return mask

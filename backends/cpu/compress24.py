"""2:4 compression hooks of the ``cpu`` backend: thin wrappers over ``csrc/compress24.c``
(contract: ``csrc/compress24.h``) that allocate the outputs and turn C status codes into
pruneplug's typed errors, with the same messages as the numpy reference."""

from __future__ import annotations

from typing import Any

import numpy as np

from pruneplug.errors import BackendExecutionError, NonFiniteError
from pruneplug.hookspecs import hookimpl
from pruneplug.sparse24 import format_of, invalid_nibble_error, metadata_shape, not_sparse_error

from pruneplug_backends.cpu.native import DTYPE_CODE, LAYOUT_CODE, TRANSFORM_CODE, ffi, lib

_HAVE_24 = lib is not None and hasattr(lib, "pp24_compress")


def _native() -> Any:
    if not _HAVE_24:
        raise BackendExecutionError(
            "cpu backend: the C extension was built without csrc/compress24.c; rebuild pruneplug "
            "(pip install -e . --no-build-isolation)"
        )
    return lib


def _ptr(a: np.ndarray) -> Any:
    if not a.flags.c_contiguous:
        raise BackendExecutionError("cpu backend: expected a C-contiguous array")
    return ffi.cast("void *", a.ctypes.data)


def _outputs(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = weights.shape
    fmt = format_of(weights.dtype.name)
    values = np.empty((rows, cols // 2), dtype=weights.dtype)
    metadata = np.empty(metadata_shape((rows, cols), weights.dtype.name), dtype=fmt.meta_dtype)
    return values, metadata


def _unexpected(status: int) -> BackendExecutionError:
    return BackendExecutionError(f"cpu backend: the 2:4 C kernel returned status {status}")


@hookimpl
def pruneplug_compress_24(weights: np.ndarray, layout: str):
    native = _native()
    dtype = weights.dtype.name
    rows, cols = weights.shape
    values, metadata = _outputs(weights)
    bad = ffi.new("int64_t[3]")
    st = native.pp24_compress(_ptr(weights), DTYPE_CODE[dtype], rows, cols, LAYOUT_CODE[layout], _ptr(values),
                              _ptr(metadata), 0, bad, bad + 1, bad + 2)
    if st == native.PP24_ERR_NOT_SPARSE:
        raise not_sparse_error(dtype, int(bad[0]), int(bad[1]), int(bad[2]))
    if st != native.PP24_OK:
        raise _unexpected(st)
    return values, metadata


@hookimpl
def pruneplug_decompress_24(values: np.ndarray, metadata: np.ndarray, shape, layout: str):
    native = _native()
    dtype = values.dtype.name
    rows, cols = (int(s) for s in shape)
    dense = np.empty((rows, cols), dtype=values.dtype)
    bad = ffi.new("int64_t[3]")
    st = native.pp24_decompress(_ptr(values), _ptr(metadata), DTYPE_CODE[dtype], rows, cols, LAYOUT_CODE[layout],
                                _ptr(dense), 0, bad, bad + 1, bad + 2)
    if st == native.PP24_ERR_BAD_NIBBLE:
        raise invalid_nibble_error(dtype, layout, int(bad[0]), int(bad[1]), int(bad[2]))
    if st != native.PP24_OK:
        raise _unexpected(st)
    return dense


@hookimpl
def pruneplug_prune_compress_24(weights: np.ndarray, layout: str, transform: str):
    native = _native()
    dtype = weights.dtype.name
    rows, cols = weights.shape
    values, metadata = _outputs(weights)
    bad = ffi.new("int64_t[2]")  # count, first flat index
    st = native.pp24_prune_compress(_ptr(weights), DTYPE_CODE[dtype], TRANSFORM_CODE[transform], rows, cols,
                                    LAYOUT_CODE[layout], _ptr(values), _ptr(metadata), 0, bad, bad + 1)
    if st == native.PP24_ERR_NONFINITE:
        raise NonFiniteError.for_values(transform, int(bad[0]), int(bad[1]))
    if st != native.PP24_OK:
        raise _unexpected(st)
    return values, metadata

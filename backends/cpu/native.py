"""The ``cpu`` backend's C extension (``_native``, built by ``csrc/build_cffi.py``) and the codes of
its enums, read from the extension so that no constant of ``csrc/pruneplug.h`` or
``csrc/compress24.h`` is typed again in Python. Never raises at import: an unbuilt extension
leaves ``lib`` None and the reason in ``IMPORT_ERROR``."""

from __future__ import annotations

from typing import Any

from pruneplug.errors import BackendExecutionError, NonFiniteError

try:
    from pruneplug_backends.cpu._native import ffi, lib

    IMPORT_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - depends on the build
    ffi = lib = None
    IMPORT_ERROR = f"the C extension pruneplug_backends.cpu._native is not built: {exc}"

if lib is not None:
    #: dtype name -> enum pp_dtype
    DTYPE_CODE = {"float16": lib.PP_F16, "bfloat16": lib.PP_BF16, "float32": lib.PP_F32, "float64": lib.PP_F64,
                  "int8": lib.PP_I8}
    #: transform -> enum pp_transform
    TRANSFORM_CODE = {"abs": lib.PP_ABS, "square": lib.PP_SQUARE, "identity": lib.PP_IDENTITY}
    #: 2:4 layout -> enum pp24_layout
    LAYOUT_CODE = {"ptx": lib.PP24_PTX, "cutlass": lib.PP24_CUTLASS} if hasattr(lib, "PP24_PTX") else {}
else:  # pragma: no cover
    DTYPE_CODE, TRANSFORM_CODE, LAYOUT_CODE = {}, {}, {}


def raise_for_status(status: int, transform: str, bad: Any, buffers: str = "the selection buffers") -> None:
    """Turn a C status into pruneplug's typed error (nothing for 0): ``PP_ERR_NONFINITE`` with the
    count and first index in ``bad[0]``, ``bad[1]``; ``PP_ERR_NOMEM`` naming ``buffers``."""
    if status == 0:
        return
    if status == lib.PP_ERR_NONFINITE:
        raise NonFiniteError.for_values(transform, int(bad[0]), int(bad[1]))
    if status == lib.PP_ERR_NOMEM:
        raise MemoryError(f"cpu backend: out of memory for {buffers}")
    raise BackendExecutionError(f"cpu backend: the C kernel returned status {status}")

"""The ``cuda`` backend: CuPy RawKernels (``*.cu`` files beside this module) behind pruneplug's hooks.

Importing this module imports neither CuPy nor the CUDA runtime: ``import pruneplug`` stays fast
and works without a GPU. CuPy is imported, and the device probed, the first time the backend is
described or used. Where CuPy is missing or sees no device the backend reports
``available=False`` with the reason, never raising.

The launch code lives in :mod:`._backend` (``CudaBackend``), shared with the tests that run the
same kernels in the CPU emulator (``tools/cuda_emu``).
"""

from __future__ import annotations

import threading
from typing import Any

from pruneplug.hookspecs import hookimpl
from pruneplug.types import FLOAT_DTYPES, BackendInfo

NAME = "cuda"
PRIORITY = 100
_state: dict[str, Any] = {}
_lock = threading.Lock()


def _operations() -> tuple[frozenset, frozenset]:
    """(operations, dtypes) the backend declares (int8: 2:4 compression only)."""
    from ._backend import DTYPES, OPERATIONS

    return OPERATIONS, DTYPES


def probe() -> tuple[bool, str | None]:
    """(available, reason): CuPy importable, a CUDA device visible, NVRTC loadable."""
    try:
        import cupy
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install
        if isinstance(exc, ImportError):
            return False, "cupy is not installed (pip install 'pruneplug[cuda]')"
        return False, f"cupy failed to import: {type(exc).__name__}: {exc}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 - CUDARuntimeError (no driver, no device)
        return False, f"CUDA driver/device not found: {exc}"
    if count < 1:
        return False, "CUDA driver/device not found: no CUDA device is visible"
    try:
        cupy.cuda.nvrtc.getVersion()
    except Exception as exc:  # noqa: BLE001
        return False, f"NVRTC is not loadable (pip install nvidia-cuda-nvrtc-cu12): {exc}"
    return True, None


def _device_check(*arrays: Any) -> None:
    import cupy

    from pruneplug.errors import InvalidArgumentError

    current = cupy.cuda.Device().id
    for a in arrays:
        device = getattr(a, "device", None)
        if device is not None and getattr(device, "id", current) != current:
            raise InvalidArgumentError(
                f"backend 'cuda': an array is on CUDA device {device.id} but the current device is {current}; "
                f"call it under `with cupy.cuda.Device({device.id}):` (arrays are never moved between devices)"
            )


def _load_rawmodule(code: str, options: tuple, name_expressions: list) -> Any:
    import cupy

    return cupy.RawModule(code=code, options=tuple(options), name_expressions=list(name_expressions))


def backend() -> Any:
    """The process-wide real :class:`~._backend.CudaBackend` (created on first use)."""
    instance = _state.get("backend")
    if instance is None:
        with _lock:
            instance = _state.get("backend")
            if instance is None:
                import cupy

                from ._backend import CudaBackend

                instance = CudaBackend(cupy, _load_rawmodule, name=NAME, device_check=_device_check)
                _state["backend"] = instance
    return instance


@hookimpl
def pruneplug_backend_info() -> BackendInfo:
    try:
        available, reason = probe()
        operations, dtypes = _operations()
    except Exception as exc:  # noqa: BLE001 - must never raise
        available, reason = False, f"probe failed: {type(exc).__name__}: {exc}"
        operations, dtypes = frozenset(), FLOAT_DTYPES
    return BackendInfo(
        name=NAME,
        priority=PRIORITY,
        array_types={"cupy"},
        dtypes=dtypes,
        operations=operations,
        available=available,
        reason=reason,
        description="CuPy RawKernels: radix exact-k selection, N:M, block masks, fused pruning, 2:4 compression",
    )


@hookimpl
def pruneplug_importance(weights, method):
    return backend().importance(weights, method)


@hookimpl
def pruneplug_unstructured_mask(values, k, transform, out=None):
    return backend().unstructured_mask(values, k, transform, out)


@hookimpl
def pruneplug_nm_mask(values, n, m, axis, transform, out=None):
    return backend().nm_mask(values, n, m, axis, transform, out)


@hookimpl
def pruneplug_block_mask(values, block_shape, k, transform, out=None):
    return backend().block_mask(values, block_shape, k, transform, out)


@hookimpl
def pruneplug_apply_mask(weights, mask):
    backend().apply_mask(weights, mask)


@hookimpl
def pruneplug_prune_unstructured(weights, k, transform):
    backend().prune_unstructured(weights, k, transform)


@hookimpl
def pruneplug_prune_nm(weights, n, m, axis, transform):
    backend().prune_nm(weights, n, m, axis, transform)


@hookimpl
def pruneplug_compress_24(weights, layout):
    return backend().compress_24(weights, layout)


@hookimpl
def pruneplug_decompress_24(values, metadata, shape, layout):
    return backend().decompress_24(values, metadata, shape, layout)


@hookimpl
def pruneplug_prune_compress_24(weights, layout, transform):
    return backend().prune_compress_24(weights, layout, transform)

"""The ``cuda`` backend: CuPy RawKernels (``*.cu`` files beside this module) behind pruneplug's hooks.

Importing this module imports neither CuPy nor the CUDA runtime: ``import pruneplug`` stays fast
and works without a GPU. CuPy is imported, and the device probed, the first time the backend is
described or used. Where CuPy is missing or sees no device the backend reports
``available=False`` with the reason, never raising.

The launch code lives in :mod:`._backend` (``CudaBackend``), shared with the tests that run the
same kernels in the CPU emulator (``tools/cuda_emu``).
"""

from __future__ import annotations

from typing import Any

from ._backend import CudaBackend, CudaPlugin

NAME = "cuda"
PRIORITY = 100


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


def _make_backend() -> CudaBackend:
    import cupy

    return CudaBackend(cupy, _load_rawmodule, name=NAME, device_check=_device_check)


#: The plugin object the ``cuda`` entry point names: it owns the (lazily built) real backend.
plugin = CudaPlugin(
    _make_backend,
    name=NAME,
    priority=PRIORITY,
    probe=probe,
    description="CuPy RawKernels: radix exact-k selection, N:M, block masks, fused pruning, 2:4 compression",
)


def backend() -> CudaBackend:
    """The real :class:`CudaBackend` (built on first use; needs CuPy and a device)."""
    return plugin.backend

"""The ``cuda`` backend: CuPy RawKernels (``*.cu`` files beside this module) behind pruneplug's hooks.

Importing this module imports neither CuPy nor the CUDA runtime: ``import pruneplug`` stays fast
and works without a GPU. Describing the backend (``pp.backends()``, every CLI call) imports CuPy
only where it is installed and an NVIDIA device node exists (:func:`cheap_probe`); otherwise it
reports ``available=False`` with the reason, never raising. Using it (a CuPy array, or a CUDA
tensor) imports CuPy.

The launch code lives in :mod:`._backend` (``CudaBackend``), shared with the tests that run the
same kernels in the CPU emulator (``tools/cuda_emu``); the kernel names it asks for in
:mod:`.kernel_names`, the hooks that bind it to pruneplug in :mod:`.hooks` (``CudaPlugin``).
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

from ._backend import CudaBackend
from .hooks import DTYPES, CudaPlugin

NAME = "cuda"
PRIORITY = 100


def _cupy_spec() -> Any:
    return importlib.util.find_spec("cupy")  # finds the package without importing it


def _device_nodes() -> list[str]:
    """The device files through which a process reaches an NVIDIA GPU on Linux (``/dev/nvidia0``,
    ...; ``/dev/dxg`` under WSL 2)."""
    return glob.glob("/dev/nvidia[0-9]*") + glob.glob("/dev/dxg")


def cheap_probe() -> str | None:
    """Why the backend cannot run here, found without importing CuPy (whose import raised the peak
    RSS of ``import pruneplug; pp.backends()`` from 35 to 54 MB on a machine without a GPU, more
    with CUDA libraries present); ``None`` when it may run (:func:`probe` decides)."""
    if _cupy_spec() is None:
        return "cupy is not installed (pip install 'pruneplug[cuda]')"
    if sys.platform.startswith("linux") and not _device_nodes():
        return "CUDA driver/device not found: no NVIDIA device node (/dev/nvidia0, ... or /dev/dxg)"
    return None


def probe() -> tuple[bool, str | None]:
    """(available, reason): CuPy importable, a CUDA device visible, NVRTC loadable. CuPy is
    imported only when :func:`cheap_probe` finds it installed and a device node present."""
    reason = cheap_probe()
    if reason is not None:
        return False, reason
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


_VERSION = re.compile(r"""^__version__\s*=\s*['"]([^'"]+)['"]""", re.MULTILINE)


def cupy_version() -> str | None:
    """The installed CuPy's version, read from ``cupy/_version.py`` without importing CuPy."""
    spec = _cupy_spec()
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        try:
            text = (Path(location) / "_version.py").read_text()
        except OSError:
            continue
        m = _VERSION.search(text)
        if m:
            return m.group(1)
    return None


def bfloat16_support(version: str | None) -> str | None:
    """Why bfloat16 cannot be declared with CuPy ``version``; ``None`` when it can. CuPy 14 has the
    dtype (``ml_dtypes.bfloat16``); CuPy 13 has none: its ``from_dlpack`` of a bfloat16 tensor
    raises (13.3 crashes, cupy#8801) and ``asarray`` of a bfloat16 array fails. The kernels read
    bfloat16 as uint16 bits and the backend moves it only as uint16 views, so no CuPy bfloat16
    kernel is needed, only the dtype."""
    if version is None:
        return None  # not installed: the backend is unavailable anyway, and says why
    m = re.match(r"(\d+)", version)
    if m is None or int(m.group(1)) < 14:
        return f"bfloat16 needs CuPy >= 14 (installed: {version}, which has no bfloat16 dtype)"
    return None


def declared_dtypes() -> tuple[frozenset, str | None]:
    """(dtypes, note): every dtype, less bfloat16 where the installed CuPy lacks it (the note says why)."""
    note = bfloat16_support(cupy_version())
    return (DTYPES - {"bfloat16"} if note else DTYPES), note


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


def torch_stream() -> Any:
    """The context every operation runs in: PyTorch's current stream made CuPy's current one, so
    that in-place work on a CUDA tensor is ordered before the user's next PyTorch work on that
    stream (under ``with torch.cuda.stream(s):`` too). A no-op where PyTorch has not initialised
    CUDA, where its current stream is the default one (CuPy's too), or where the caller chose a
    CuPy stream (``with cupy.cuda.Stream():``), which is kept."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return contextlib.nullcontext()
    import cupy

    defaults = (cupy.cuda.Stream.null.ptr, cupy.cuda.Stream.ptds.ptr)  # legacy / per-thread default
    if cupy.cuda.get_current_stream().ptr not in defaults:  # the caller's own CuPy stream
        return contextlib.nullcontext()
    stream = torch.cuda.current_stream()
    if stream.cuda_stream == 0:
        return contextlib.nullcontext()
    if hasattr(cupy.cuda.Stream, "from_external") and hasattr(stream, "__cuda_stream__"):
        return cupy.cuda.Stream.from_external(stream)  # CuPy 14: the CUDA stream protocol
    return cupy.cuda.ExternalStream(stream.cuda_stream, torch.cuda.current_device())  # deprecated in 14


def _make_backend() -> CudaBackend:
    import cupy

    return CudaBackend(cupy, _load_rawmodule, name=NAME, device_check=_device_check)


#: The plugin object the ``cuda`` entry point names: it owns the (lazily built) real backend.
plugin = CudaPlugin(
    _make_backend,
    name=NAME,
    priority=PRIORITY,
    probe=probe,
    dtypes=declared_dtypes,
    stream=torch_stream,
    description="CuPy RawKernels: radix exact-k selection, N:M, block masks, fused pruning, 2:4 compression",
)


def backend() -> CudaBackend:
    """The real :class:`CudaBackend` (built on first use; needs CuPy and a device)."""
    return plugin.backend

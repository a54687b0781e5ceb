"""A :class:`~pruneplug_backends.cuda._backend.CudaBackend` as a pluggy plugin object: the hook
implementations, the backend's declaration (:data:`DTYPES`, the operations read from the hooks) and
its lazy construction. The launch code itself is in :mod:`._backend`."""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any, Callable

from pruneplug.hookspecs import hookimpl
from pruneplug.types import FLOAT_DTYPES, BackendInfo, implemented_operations

if TYPE_CHECKING:  # annotations only: the launch code imports this module for its re-exports
    from ._backend import CudaBackend

#: int8 is for 2:4 compression only: the core rejects non-float dtypes for every other operation
#: before it selects a backend (pruneplug.arrays.check_float_dtype), as for the cpu backend.
DTYPES = FLOAT_DTYPES | frozenset({"int8"})


class CudaPlugin:
    """Hook implementations bound to one :class:`CudaBackend`, which is built on first use (the
    real one imports CuPy; the tests register an emulated one). The plugin object, registered in
    pruneplug's plugin manager, owns the backend and its compiled kernels: no module-level state.

    ``probe`` says whether the backend can run here: ``() -> (available, reason)``; ``dtypes``
    which dtypes it declares: ``() -> (dtypes, note)``, the note saying why one is missing (it
    becomes the ``reason`` of an available backend); ``stream`` a context manager that every
    operation runs in (the real backend's makes PyTorch's current stream CuPy's, see
    ``pruneplug_backends.cuda.torch_stream``).
    """

    def __init__(self, make_backend: Callable[[], CudaBackend], *, name: str,
                 array_types=frozenset({"cupy"}), priority: int = 100,
                 probe: Callable[[], tuple[bool, str | None]] = lambda: (True, None),
                 dtypes: Callable[[], tuple[frozenset, str | None]] = lambda: (DTYPES, None),
                 stream: Callable[[], Any] = contextlib.nullcontext,
                 description: str = "") -> None:
        self.name = name
        self._make_backend = make_backend
        self._backend: CudaBackend | None = None
        self._lock = threading.Lock()
        self._array_types = frozenset(array_types)
        self._priority = priority
        self._probe = probe
        self._dtypes = dtypes
        self._stream = stream
        self._description = description

    @property
    def backend(self) -> CudaBackend:
        if self._backend is None:
            with self._lock:
                if self._backend is None:
                    self._backend = self._make_backend()
        return self._backend

    @hookimpl
    def pruneplug_backend_info(self) -> BackendInfo:
        try:
            available, reason = self._probe()
            dtypes, note = self._dtypes()
        except Exception as exc:  # noqa: BLE001 - the declaration must never raise
            available, reason = False, f"probe failed: {type(exc).__name__}: {exc}"
            dtypes, note = DTYPES, None
        if available and note:
            reason = note  # what an available backend lacks (shown by `pruneplug backends`)
        return BackendInfo(name=self.name, priority=self._priority, array_types=self._array_types,
                           dtypes=dtypes, operations=implemented_operations(self), available=available, reason=reason,
                           description=self._description)

    @hookimpl
    def pruneplug_importance(self, weights, transform):
        with self._stream():
            return self.backend.importance(weights, transform)

    @hookimpl
    def pruneplug_unstructured_mask(self, values, k, transform, out=None):
        with self._stream():
            return self.backend.unstructured_mask(values, k, transform, out)

    @hookimpl
    def pruneplug_nm_mask(self, values, n, m, axis, transform, out=None):
        with self._stream():
            return self.backend.nm_mask(values, n, m, axis, transform, out)

    @hookimpl
    def pruneplug_block_mask(self, values, block_shape, k, transform, out=None):
        with self._stream():
            return self.backend.block_mask(values, block_shape, k, transform, out)

    @hookimpl
    def pruneplug_row_mask(self, values, k, transform, out=None):
        with self._stream():
            return self.backend.row_mask(values, k, transform, out)

    @hookimpl
    def pruneplug_apply_mask(self, weights, mask):
        with self._stream():
            self.backend.apply_mask(weights, mask)

    @hookimpl
    def pruneplug_prune_unstructured(self, weights, k, transform):
        with self._stream():
            self.backend.prune_unstructured(weights, k, transform)

    @hookimpl
    def pruneplug_prune_nm(self, weights, n, m, axis, transform):
        with self._stream():
            self.backend.prune_nm(weights, n, m, axis, transform)

    @hookimpl
    def pruneplug_compress_24(self, weights, layout):
        with self._stream():
            return self.backend.compress_24(weights, layout)

    @hookimpl
    def pruneplug_decompress_24(self, values, metadata, shape, layout):
        with self._stream():
            return self.backend.decompress_24(values, metadata, shape, layout)

    @hookimpl
    def pruneplug_prune_compress_24(self, weights, layout, transform):
        with self._stream():
            return self.backend.prune_compress_24(weights, layout, transform)

    @hookimpl
    def pruneplug_key_histogram(self, values, transform, keys, shift, bits, prefix):
        with self._stream():
            return self.backend.key_histogram(values, transform, keys, shift, bits, prefix)

"""The CUDA backend's kernel launcher: compiled kernels (each file once, cached), buffer
allocation, the few reads back to the host, and one small method per kernel (``_launch_*``) that
computes its geometry next to the launch. :class:`~._backend.CudaBackend` builds the operations on it.

``xp`` is the array module (``cupy`` on a GPU, ``numpy`` under the emulator) and
``load_module(code, options, name_expressions)`` returns an object with ``get_function(name)``
(``cupy.RawModule`` or ``cuda_emu.Module``), whose functions are called as ``fn(grid, block, args)``.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import numpy as np

from pruneplug.errors import DeviceMemoryError, NonFiniteError

from . import _kernels as K
from .kernel_names import name_24, name_apply_mask, name_importance, name_keyed, name_nm, name_select

BLOCK = K.COMMON["PP_BLOCK"]  # threads per block
TILE = K.COMMON["PP_TILE"]  # elements per block-tile in the streaming kernels
DIGIT = K.COMMON["PP_DIGIT"]  # radix bits per selection round
BINS = K.COMMON["PP_BINS"]
MAX_STREAM_GRID = 1024  # streaming kernels loop over tiles; depends on n only (deterministic stats)
RAW_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}
U64_MAX = (1 << 64) - 1

LoadModule = Callable[[str, tuple, list], Any]


class KernelLauncher:
    """Kernels, buffers, host traffic and one launch method per kernel, over an array module ``xp``
    and a kernel loader ``load_module``: the base of :class:`~._backend.CudaBackend`."""

    def __init__(self, xp: Any, load_module: LoadModule, *, name: str = "cuda",
                 device_check: Callable[..., None] | None = None) -> None:
        self.xp = xp
        self.name = name
        self._load_module = load_module
        self._device_check = device_check
        self._modules: dict[str, Any] = {}
        self._functions: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    # -- kernels -----------------------------------------------------------------------------
    def _fn(self, filename: str, name: str) -> Any:
        """The compiled kernel ``name`` of ``filename`` (each file compiled once, all its
        instantiations at once, and cached)."""
        key = (filename, name)
        fn = self._functions.get(key)
        if fn is None:
            with self._lock:
                module = self._modules.get(filename)
                if module is None:
                    module = self._load_module(K.source(filename), K.OPTIONS, K.NAME_EXPRESSIONS[filename])
                    self._modules[filename] = module
                fn = module.get_function(name)
                self._functions[key] = fn
        return fn

    # -- buffers and host traffic ------------------------------------------------------------
    def _alloc(self, shape: Any, dtype: Any, what: str, zero: bool = False) -> Any:
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64)) if isinstance(shape, tuple) else int(shape)
        nbytes = count * dtype.itemsize
        # bfloat16 is allocated as uint16 and viewed: only CuPy's dtype is needed, never its
        # (experimental) bfloat16 kernels; every copy below moves bits (_bytes views).
        alloc_dtype = np.dtype(np.uint16) if dtype.name == "bfloat16" else dtype
        try:
            a = self.xp.zeros(shape, alloc_dtype) if zero else self.xp.empty(shape, alloc_dtype)
            return a if alloc_dtype is dtype else a.view(dtype)
        except MemoryError as exc:  # cupy.cuda.memory.OutOfMemoryError is a MemoryError
            raise DeviceMemoryError(
                f"backend {self.name!r}: out of device memory allocating {nbytes} bytes for {what} "
                f"({exc}); nothing was written"
            ) from None

    def _alloc16(self, shape: tuple, dtype: Any, what: str) -> Any:
        """A fresh C-contiguous array whose data is 16-byte aligned (what the 2:4 kernels' vector
        loads and stores need)."""
        a = self._alloc(shape, dtype, what)
        if self._ptr(self._byte_view(a)) % 16 == 0:
            return a
        nbytes = a.nbytes
        del a
        buf = self._alloc(nbytes + 16, np.uint8, what)
        off = (-self._ptr(buf)) % 16
        return buf[off:off + nbytes].view(dtype).reshape(shape)

    def _input16(self, a: Any, what: str) -> Any:
        """``a`` itself when 16-byte aligned, else an aligned copy (a misaligned 16-byte access is a
        sticky launch failure on a device)."""
        if self._ptr(self._byte_view(a)) % 16 == 0:
            return a
        copy = self._alloc16(tuple(a.shape), a.dtype, what)
        self._byte_view(copy)[...] = self._byte_view(a)  # the bits, whatever the dtype
        return copy

    def _error_words(self) -> Any:
        """[err, nonfinite count, nonfinite first] for the 2:4 kernels: ~0, 0, ~0."""
        ws = self._alloc(3, np.uint64, "the error words")
        host = np.array([U64_MAX, 0, U64_MAX], dtype=np.uint64)
        if isinstance(ws, np.ndarray):
            ws[...] = host
        else:
            ws.set(host)  # cupy: one host-to-device copy
        return ws

    def _workspace(self) -> Any:
        return self._alloc(K.WS['SIZE'], np.uint64, "the workspace", zero=True)

    def _to_host(self, a: Any) -> np.ndarray:
        get = getattr(a, "get", None)
        return np.array(get() if get is not None and not isinstance(a, np.ndarray) else a)

    def _read_ws(self, ws: Any, transform: str) -> np.ndarray:
        """The workspace on the host (a synchronisation point); raises NonFiniteError."""
        h = self._to_host(ws)
        if int(h[0]):
            first = (~int(h[1])) & U64_MAX
            raise NonFiniteError.for_values(transform, int(h[0]), first)
        return h

    def _check(self, *arrays: Any) -> None:
        if self._device_check is not None:
            self._device_check(*arrays)

    @staticmethod
    def _ptr(a: Any) -> int:
        data = a.data
        return int(data.ptr) if hasattr(data, "ptr") else int(a.ctypes.data)

    def _aligned(self, a: Any, nbytes: int) -> int:
        return 1 if a.size == 0 or self._ptr(a) % nbytes == 0 else 0

    @staticmethod
    def _raw(a: Any) -> Any:
        """The array's bits as unsigned integers, flat (C-contiguous: a view, no copy)."""
        return a.view(RAW_UINT[a.dtype.itemsize]).reshape(-1)

    @staticmethod
    def _dtype(a: Any) -> str:
        name = np.dtype(a.dtype).name
        return "bfloat16" if name == "uint16" else name

    @staticmethod
    def _byte_view(a: Any) -> Any:
        """A flat uint8 view of ``a``'s bytes (no copy): masks and workspaces as kernels see them."""
        return a.view(np.uint8).reshape(-1)

    # -- launches (geometry next to each launch) ------------------------------------------------
    @staticmethod
    def _stream_grid(n: int) -> int:
        return max(1, min(-(-n // TILE), MAX_STREAM_GRID))

    def _launch_check(self, x: Any, dtype: str, transform: str, ws: Any) -> None:
        grid = self._stream_grid(x.size)
        self._fn("elementwise.cu", name_select("check_nonfinite", dtype, transform))(
            (grid,), (BLOCK,), (x, np.int64(x.size), np.int32(self._aligned(x, 16)), ws))

    def _launch_fill(self, out: Any, value: bool) -> None:
        grid = max(1, min(-(-out.size // BLOCK), 4096))
        self._fn("elementwise.cu", "fill_mask")((grid,), (BLOCK,), (out, np.int64(out.size), np.int32(int(value))))

    def _launch_apply(self, x: Any, mask: Any, dtype: str) -> None:
        grid = self._stream_grid(x.size)
        vec = 16 // x.dtype.itemsize
        self._fn("elementwise.cu", name_apply_mask(dtype))(
            (grid,), (BLOCK,), (x, mask, np.int64(x.size), np.int32(self._aligned(x, 16)),
                                np.int32(self._aligned(mask, vec))))

    def _launch_importance(self, x: Any, s: Any, dtype: str, transform: str, part: Any, partu: Any,
                           ws: Any) -> None:
        grid = part.size // 3  # == self._stream_grid(n), fixed by n only
        vec = self._aligned(x, 16) & self._aligned(s, 16)
        self._fn("importance.cu", name_importance(dtype, transform))(
            (grid,), (BLOCK,), (x, s, np.int64(x.size), np.int32(vec), part, partu, ws))

    def _launch_importance_finalize(self, part: Any, partu: Any, ws: Any) -> None:
        self._fn("importance.cu", "importance_finalize")((1,), (BLOCK,), (part, partu, np.int32(part.size // 3), ws))

    def _launch_hist0(self, x: Any, dtype: str, transform: str, shift: int, ghist: Any, ws: Any) -> None:
        grid = self._stream_grid(x.size)
        self._fn("select.cu", name_select("radix_hist0", dtype, transform))(
            (grid,), (BLOCK,), (x, np.int64(x.size), np.int32(self._aligned(x, 16)), np.int32(shift), ghist, ws))

    def _launch_select(self, ghist: Any, ws: Any, shift: int, nbins: int, k_minus_1: int, first: bool) -> None:
        self._fn("select.cu", "radix_select")(
            (1,), (BLOCK,), (ghist, ws, np.int32(shift), np.int32(nbins), np.int64(k_minus_1), np.int32(int(first))))

    def _launch_compact(self, x: Any, dtype: str, transform: str, shift: int, ws: Any, ckey: Any,
                        cidx: Any) -> None:
        grid = self._stream_grid(x.size)
        self._fn("select.cu", name_select("radix_compact", dtype, transform))(
            (grid,), (BLOCK,), (x, np.int64(x.size), np.int32(self._aligned(x, 16)), np.int32(shift), ws, ckey, cidx,
                                np.int64(ckey.size)))

    def _launch_cand_hist(self, ckey: Any, dtype: str, transform: str, shift: int, width: int, ghist: Any,
                          ws: Any) -> None:
        grid = max(1, min(-(-ckey.size // (BLOCK * 4)), MAX_STREAM_GRID))
        self._fn("select.cu", name_keyed("cand_hist", dtype, transform))(
            (grid,), (BLOCK,), (ckey, np.int64(ckey.size), np.int32(shift), np.int32(width), ghist, ws))

    def _launch_eq_count(self, ckey: Any, cidx: Any, dtype: str, transform: str, ws: Any, tiles: Any) -> None:
        grid = max(1, min(-(-ckey.size // (BLOCK * 4)), MAX_STREAM_GRID))
        self._fn("select.cu", name_keyed("eq_count", dtype, transform))(
            (grid,), (BLOCK,), (ckey, cidx, np.int64(ckey.size), ws, tiles))

    def _launch_scan_tiles(self, tiles: Any) -> None:
        self._fn("select.cu", "scan_tiles")((1,), (BLOCK,), (tiles, np.int64(tiles.size - 1)))

    def _launch_mask(self, x: Any, dtype: str, transform: str, out: Any, mode: int, ws: Any, tiles: Any) -> None:
        grid = max(1, min(-(-x.size // TILE), 1 << 30))  # one tile per block
        vec_out = self._aligned(out, 16 // x.dtype.itemsize) if mode == 0 else 0
        self._fn("select.cu", name_select("radix_mask", dtype, transform))(
            (grid,), (BLOCK,), (x, np.int64(x.size), np.int32(self._aligned(x, 16)), out, np.int32(vec_out),
                                np.int32(mode), ws, tiles))

    def _launch_nm_contig(self, x: Any, dtype: str, transform: str, m: int, nkeep: int, out: Any, mode: int,
                          ws: Any) -> None:
        per_thread = max(m, 16 // x.dtype.itemsize)
        grid = max(1, -(-x.size // (per_thread * BLOCK)))
        vec_out = self._aligned(out, 16 // x.dtype.itemsize) if mode == 0 else 0
        self._fn("nm.cu", name_nm("nm_contig", dtype, transform, m))(
            (grid,), (BLOCK,), (x, np.int64(x.size), np.int32(self._aligned(x, 16)), np.int32(nkeep), out,
                                np.int32(vec_out), np.int32(mode), ws))

    def _launch_nm_strided(self, x: Any, dtype: str, transform: str, m: int, groups: int, lgroups: int,
                           inner: int, nkeep: int, out: Any, mode: int, ws: Any) -> None:
        grid = max(1, -(-groups // BLOCK))
        self._fn("nm.cu", name_nm("nm_strided", dtype, transform, m))(
            (grid,), (BLOCK,), (x, np.int64(groups), np.int64(lgroups), np.int64(inner), np.int32(nkeep), out,
                                np.int32(mode), ws))

    def _launch_nm_generic(self, x: Any, dtype: str, transform: str, m: int, groups: int, inner: int,
                           nkeep: int, out: Any, ws: Any) -> None:
        grid = max(1, -(-groups // BLOCK))
        self._fn("nm.cu", name_nm("nm_generic", dtype, transform))(
            (grid,), (BLOCK,), (x, np.int64(groups), np.int64(inner), np.int32(m), np.int32(nkeep), out, ws))

    def _launch_block_sums(self, x: Any, dtype: str, transform: str, cols: int, bh: int, bw: int, keys: Any,
                           ws: Any) -> None:
        grid = max(1, -(-keys.size // BLOCK))
        self._fn("block.cu", name_select("block_sums", dtype, transform))(
            (grid,), (BLOCK,), (x, np.int64(cols), np.int64(bh), np.int64(bw), np.int64(keys.size),
                                np.int64(cols // bw), keys, ws))

    def _launch_block_expand(self, bkeep: Any, out: Any, cols: int, bh: int, bw: int) -> None:
        grid = max(1, -(-out.size // BLOCK))
        self._fn("block.cu", "block_expand")(
            (grid,), (BLOCK,), (bkeep, np.int64(out.size), np.int64(cols), np.int64(bh), np.int64(bw),
                                np.int64(cols // bw), out))

    @staticmethod
    def _grid24(rows: int, ncols: int) -> tuple[int]:
        """compress24.cu: one thread per metadata word (rows * ncols > 0)."""
        return (-(-(rows * ncols) // BLOCK),)

    def _launch_compress24(self, w: Any, dtype: str, layout: str, rows: int, ncols: int, values: Any, meta: Any,
                           ws: Any) -> None:
        self._fn("compress24.cu", name_24("compress24", dtype, layout))(
            self._grid24(rows, ncols), (BLOCK,), (w, np.int64(rows), np.int64(ncols), values, meta, ws[0:1]))

    def _launch_decompress24(self, values: Any, meta: Any, dtype: str, layout: str, rows: int, ncols: int,
                             dense: Any, ws: Any) -> None:
        self._fn("compress24.cu", name_24("decompress24", dtype, layout))(
            self._grid24(rows, ncols), (BLOCK,), (values, meta, np.int64(rows), np.int64(ncols), dense, ws[0:1]))

    def _launch_prune_compress24(self, w: Any, dtype: str, layout: str, rows: int, ncols: int, values: Any,
                                 meta: Any, ws: Any) -> None:
        self._fn("compress24.cu", name_24("prune_compress24", dtype, layout))(
            self._grid24(rows, ncols), (BLOCK,), (w, np.int64(rows), np.int64(ncols), values, meta, ws[0:1],
                                                  ws[1:3]))

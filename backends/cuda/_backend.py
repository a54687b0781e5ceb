"""The CUDA backend's launch code, independent of where the kernels run.

``CudaBackend(xp, load_module)`` holds everything between the hook calls and the kernels: buffer
allocation, launch geometry, kernel arguments, the few scalars that come back to the host, and the
errors. ``xp`` is the array module (``cupy`` on a GPU, ``numpy`` under the emulator) and
``load_module(code, options, name_expressions)`` returns an object with ``get_function(name)``
(``cupy.RawModule`` or ``cuda_emu.Module``), whose functions are called as
``fn(grid, block, args)``. The same code therefore runs on a device and in the CPU emulator.

Host/device traffic is explicit: every operation reads back one small workspace (16 integers) at
the one point where it must know something before going on (non-finite values to raise on,
the size of the selection's candidate buffer, the statistics); no array data goes through the host.

Launch geometry is computed next to each launch, in one small method per kernel (``_launch_*``,
in :mod:`.launches`, the base class); the kernel names in :mod:`.kernel_names`.

2:4 compression (``compress24.cu``) reads back one 3-word error block per call instead: the first
group with too many nonzeros, or the first invalid nibble, and the non-finite count of a fused
prune. Outputs are fresh arrays, returned only after that word says there was no error.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pruneplug.arrays import score_dtype
from pruneplug.errors import NonFiniteError
from pruneplug.sparse24 import format_of, invalid_nibble_error, metadata_shape, not_sparse_error

from . import _kernels as K
from .kernel_names import name_keyhist, name_select
from .launches import BINS, BLOCK, DIGIT, RAW_UINT, TILE, U64_MAX, KernelLauncher

_KEY_NP = {"unsigned short": np.uint16, "unsigned int": np.uint32, "unsigned long long": np.uint64}


# ---------------------------------------------------------------------------------------------
# the backend
# ---------------------------------------------------------------------------------------------
class CudaBackend(KernelLauncher):
    """The CUDA backend over an array module ``xp`` and a kernel loader ``load_module``: the
    operations, the exact-k selection, 2:4 compression and the key histograms, built on the
    launches of :class:`~.launches.KernelLauncher`."""

    # -- exact-k selection ---------------------------------------------------------------------
    def _select(self, x: Any, dtype: str, transform: str, k: int, mode: int, out: Any) -> None:
        """Prune exactly ``k`` of the flat raw array ``x`` (stable tie rule): mode 0 writes the
        keep mask into the flat uint8 ``out``; mode 1 zeroes the pruned entries of ``x``."""
        n = int(x.size)
        ws = self._workspace()
        if n == 0:
            return
        if k == 0 or k == n:
            if transform != "key":  # block-sum keys: block_sums has already rejected non-finite input
                self._launch_check(x, dtype, transform, ws)
                self._read_ws(ws, transform)
            if mode == 0:
                self._launch_fill(out, k == 0)
            elif k == n:
                x[...] = 0
            return
        bits = K.key_bits(dtype, transform)
        shift0 = bits - DIGIT
        ghist = self._alloc(BINS, np.uint64, "the selection histogram", zero=True)
        ntiles = -(-n // TILE)
        tiles = self._alloc(ntiles + 1, np.uint64, "per-tile tie counts", zero=True)
        # pass 1: histogram of the top digit + non-finite check; the digit holding rank k-1
        self._launch_hist0(x, dtype, transform, shift0, ghist, ws)
        self._launch_select(ghist, ws, shift0, BINS, k - 1, True)
        ncand = int(self._read_ws(ws, transform)[K.WS['BINCOUNT']])  # sync: raise before any write
        key_np = _KEY_NP[K.key_ctype(dtype, transform)]
        ckey = self._alloc(ncand, key_np, "selection candidates (keys)")
        cidx = self._alloc(ncand, np.int64, "selection candidates (indices)")
        # pass 2: compact the candidates; then resolve the remaining digits on them alone
        self._launch_compact(x, dtype, transform, shift0, ws, ckey, cidx)
        hi = shift0
        while hi > 0:
            shift = max(hi - DIGIT, 0)
            self._launch_cand_hist(ckey, dtype, transform, shift, hi - shift, ghist, ws)
            self._launch_select(ghist, ws, shift, 1 << (hi - shift), 0, False)
            hi = shift
        self._launch_eq_count(ckey, cidx, dtype, transform, ws, tiles)
        self._launch_scan_tiles(tiles)
        # pass 3: the mask (or the in-place prune)
        self._launch_mask(x, dtype, transform, out if mode == 0 else self._byte_view(ws), mode, ws, tiles)

    # -- operations ------------------------------------------------------------------------------
    def importance(self, weights: Any, transform: str):
        self._check(weights)
        dtype = self._dtype(weights)
        scores = self._alloc(weights.shape, score_dtype(weights.dtype), "the scores")
        n = int(weights.size)
        if n == 0:
            return scores, (math.nan,) * 4
        grid = self._stream_grid(n)
        part = self._alloc(3 * grid, np.float64, "per-block statistics")
        partu = self._alloc(2 * grid, np.uint64, "per-block min/max")
        ws = self._workspace()
        x, s = self._raw(weights), self._raw(scores)
        self._launch_importance(x, s, dtype, transform, part, partu, ws)
        self._launch_importance_finalize(part, partu, ws)
        h = self._read_ws(ws, transform)
        mean = float(np.array([h[K.WS['STATS']]], np.uint64).view(np.float64)[0])
        m2 = float(np.array([h[K.WS['STATS'] + 1]], np.uint64).view(np.float64)[0])
        bits_np = np.uint64 if dtype == "float64" else np.uint32
        as_float = np.float64 if dtype == "float64" else np.float32
        lo = float(np.array([h[K.WS['STATS'] + 2]]).astype(bits_np).view(as_float)[0])
        hi = float(np.array([h[K.WS['STATS'] + 3]]).astype(bits_np).view(as_float)[0])
        if math.isinf(hi):  # +inf scores (float32 squares overflow): NumPy's mean is inf, its std NaN
            mean, std = math.inf, math.nan
        else:
            std = math.sqrt(max(m2, 0.0) / n)
        return scores, (lo, hi, mean, std)

    def unstructured_mask(self, values: Any, k: int, transform: str, out: Any = None):
        self._check(values, *(() if out is None else (out,)))
        result = out if out is not None else self._alloc(values.shape, np.bool_, "the mask")
        self._select(self._raw(values), self._dtype(values), transform, int(k), 0, self._byte_view(result))
        return result

    def prune_unstructured(self, weights: Any, k: int, transform: str) -> None:
        self._check(weights)
        self._select(self._raw(weights), self._dtype(weights), transform, int(k), 1, None)

    def _nm(self, values: Any, n: int, m: int, axis: int, transform: str, out: Any, mode: int, ws: Any) -> None:
        shape = tuple(values.shape)
        inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
        groups = int(values.size) // m
        lgroups = shape[axis] // m
        dtype = self._dtype(values)
        x = self._raw(values)
        if m in K.NM_FAST and inner == 1:
            self._launch_nm_contig(x, dtype, transform, m, n, out, mode, ws)
        elif m in K.NM_FAST:
            self._launch_nm_strided(x, dtype, transform, m, groups, lgroups, inner, n, out, mode, ws)
        else:
            assert mode == 0
            self._launch_nm_generic(x, dtype, transform, m, groups, inner, n, out, ws)

    def nm_mask(self, values: Any, n: int, m: int, axis: int, transform: str, out: Any = None):
        self._check(values, *(() if out is None else (out,)))
        ws = self._workspace()
        if out is not None and values.size:
            # The caller's array must not be written when the input is rejected: check first.
            self._launch_check(self._raw(values), self._dtype(values), transform, ws)
            self._read_ws(ws, transform)
        result = out if out is not None else self._alloc(values.shape, np.bool_, "the mask")
        if values.size == 0:
            return result
        self._nm(values, int(n), int(m), int(axis), transform, self._byte_view(result), 0, ws)
        self._read_ws(ws, transform)  # a fresh result is dropped when this raises
        return result

    def prune_nm(self, weights: Any, n: int, m: int, axis: int, transform: str) -> None:
        self._check(weights)
        if weights.size == 0:
            return
        ws = self._workspace()
        self._launch_check(self._raw(weights), self._dtype(weights), transform, ws)
        self._read_ws(ws, transform)
        if int(m) in K.NM_FAST:
            self._nm(weights, int(n), int(m), int(axis), transform, self._byte_view(ws), 1, ws)
        else:
            mask = self.nm_mask(weights, n, m, axis, transform)
            self.apply_mask(weights, mask)

    def block_mask(self, values: Any, block_shape: tuple, k: int, transform: str, out: Any = None):
        self._check(values, *(() if out is None else (out,)))
        rows, cols = (int(s) for s in values.shape)
        bh, bw = (int(b) for b in block_shape)
        nblocks = (rows // bh) * (cols // bw) if bh and bw else 0
        result = out if out is not None else self._alloc(values.shape, np.bool_, "the mask")
        if values.size == 0 or nblocks == 0:
            return result
        ws = self._workspace()
        keys = self._alloc(nblocks, np.uint64, "block sums")
        bkeep = self._alloc(nblocks, np.uint8, "the block mask")
        self._launch_block_sums(self._raw(values), self._dtype(values), transform, cols, bh, bw, keys, ws)
        self._read_ws(ws, transform)  # raise before anything is written
        self._select(keys, "key64", "key", int(k), 0, bkeep)
        self._launch_block_expand(bkeep, self._byte_view(result), cols, bh, bw)
        return result

    def row_mask(self, values: Any, k: int, transform: str, out: Any = None):
        """Per-row exact selection (rows.cu): the check first, so nothing is written on a reject."""
        self._check(values, *(() if out is None else (out,)))
        rows, cols = (int(s) for s in values.shape)
        if cols >= 1 << 32:
            raise ValueError(f"backend {self.name!r}: row_mask takes rows below 2^32 columns, got {cols}")
        dtype, x = self._dtype(values), self._raw(values)
        ws = self._workspace()
        if values.size:
            self._launch_check(x, dtype, transform, ws)
            self._read_ws(ws, transform)
        result = out if out is not None else self._alloc(values.shape, np.bool_, "the mask")
        if values.size == 0:
            return result
        if k == 0 or k == cols:
            self._launch_fill(self._byte_view(result), k == 0)
        else:  # one block per row
            self._fn("rows.cu", name_select("row_select", dtype, transform))(
                (rows,), (BLOCK,), (x, np.int64(cols), np.int64(k), self._byte_view(result)))
        return result

    def apply_mask(self, weights: Any, mask: Any) -> None:
        self._check(weights, mask)
        if weights.size == 0:
            return
        self._launch_apply(self._raw(weights), self._byte_view(mask), self._dtype(weights))

    # -- 2:4 compression -------------------------------------------------------------------------
    def _outputs24(self, weights: Any, dtype: str) -> tuple[Any, Any]:
        rows, cols = (int(s) for s in weights.shape)
        values = self._alloc16((rows, cols // 2), weights.dtype, "the 2:4 values")
        metadata = self._alloc(metadata_shape((rows, cols), dtype), format_of(dtype).meta_dtype, "the 2:4 metadata")
        return values, metadata

    @staticmethod
    def _meta_bits(metadata: Any) -> Any:
        return metadata.view(RAW_UINT[metadata.dtype.itemsize]).reshape(-1)

    def _raise_not_sparse(self, h: np.ndarray, dtype: str, cols: int) -> None:
        err = int(h[0])
        if err != U64_MAX:
            row, group = divmod(err >> 3, cols // format_of(dtype).m)
            raise not_sparse_error(dtype, row, group, err & 7)

    def compress_24(self, weights: Any, layout: str) -> tuple[Any, Any]:
        self._check(weights)
        dtype = self._dtype(weights)
        rows, cols = (int(s) for s in weights.shape)
        ncols = cols // format_of(dtype).columns_per_word
        values, metadata = self._outputs24(weights, dtype)
        if rows * ncols == 0:
            return values, metadata
        w = self._input16(weights, "an aligned copy of the weights")
        ws = self._error_words()
        self._launch_compress24(self._byte_view(w), dtype, layout, rows, ncols, self._byte_view(values),
                                self._meta_bits(metadata), ws)
        self._raise_not_sparse(self._to_host(ws), dtype, cols)  # sync; the outputs are dropped on error
        return values, metadata

    def decompress_24(self, values: Any, metadata: Any, shape: tuple, layout: str) -> Any:
        self._check(values, metadata)
        dtype = self._dtype(values)
        rows, cols = (int(s) for s in shape)
        fmt = format_of(dtype)
        ncols = cols // fmt.columns_per_word
        dense = self._alloc16((rows, cols), values.dtype, "the dense weight")
        if rows * ncols == 0:
            return dense
        v = self._input16(values, "an aligned copy of the values")
        meta = metadata if self._aligned(metadata, metadata.dtype.itemsize) else metadata.copy()
        ws = self._error_words()
        self._launch_decompress24(self._byte_view(v), self._meta_bits(meta), dtype, layout, rows, ncols,
                                  self._byte_view(dense), ws)
        err = int(self._to_host(ws)[0])  # sync
        if err != U64_MAX:
            row, group = divmod(err >> 4, cols // fmt.m)
            raise invalid_nibble_error(dtype, layout, row, group, err & 0xF)
        return dense

    def prune_compress_24(self, weights: Any, layout: str, transform: str) -> tuple[Any, Any]:
        self._check(weights)
        dtype = self._dtype(weights)
        fmt = format_of(dtype)
        rows, cols = (int(s) for s in weights.shape)
        ncols = cols // fmt.columns_per_word
        if rows * ncols == 0:
            return self._outputs24(weights, dtype)
        if transform == "square" and dtype in ("bfloat16", "float32"):
            # Squares round there (ties the magnitudes do not have), so the fused kernel's |w| order
            # is not the score order: prune a copy with the N:M kernel on the true scores (one pass,
            # which also counts non-finite weights), then compress the copy.
            pruned = self._alloc16((rows, cols), weights.dtype, "the pruned copy")
            self._byte_view(pruned)[...] = self._byte_view(weights)  # the bits (no CuPy bfloat16 kernel)
            ws = self._workspace()
            self._nm(pruned, fmt.m // 2, fmt.m, 1, transform, self._byte_view(ws), 1, ws)
            self._read_ws(ws, transform)  # sync: NonFiniteError before anything is returned
            return self.compress_24(pruned, layout)
        # abs for every dtype, float16 square (exact in float32: ordered like |w|), int8 by |w|
        values, metadata = self._outputs24(weights, dtype)
        w = self._input16(weights, "an aligned copy of the weights")
        ws = self._error_words()
        self._launch_prune_compress24(self._byte_view(w), dtype, layout, rows, ncols, self._byte_view(values),
                                      self._meta_bits(metadata), ws)
        h = self._to_host(ws)  # sync
        if int(h[1]):
            raise NonFiniteError.for_values(transform, int(h[1]), int(h[2]))
        self._raise_not_sparse(h, dtype, cols)  # cannot happen after pruning; never return a bad result
        return values, metadata

    # -- exact selection over many arrays (pruneplug.selection) --------------------------------
    def key_histogram(self, values: Any, transform: str, keys: str, shift: int, bits: int, prefix: int) -> Any:
        """The key histogram of ``values`` for one request (``keyhist.cu``; 2^bits + 2 counts)."""
        self._check(values)
        dtype = self._dtype(values)
        hist = self._alloc((1 << bits) + 2, np.uint64, "the key histogram", zero=True)
        ws = self._workspace()
        lut = self._bf16_square_keys()  # read only by bfloat16 squares with mag16 keys
        if values.size:
            grid = self._stream_grid(values.size)
            self._fn("keyhist.cu", name_keyhist(dtype, transform, keys))(
                (grid,), (BLOCK,), (self._raw(values), np.int64(values.size), np.int32(shift), np.int32(bits),
                                    np.uint64(prefix), lut, hist, ws))
        self._read_ws(ws, transform)  # sync: NonFiniteError, or the histogram is complete
        return hist.view(np.int64)

    def _bf16_square_keys(self) -> Any:
        """The mag16 keys of bfloat16 squares on the device (made once, on the host, by the core)."""
        if getattr(self, "_bf16_lut", None) is None:
            from pruneplug.selection import bf16_square_keys

            self._bf16_lut = self.xp.asarray(bf16_square_keys())
        return self._bf16_lut

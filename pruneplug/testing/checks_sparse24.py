"""The kit's checks of 2:4 compression (``compress_24``, ``decompress_24``, ``prune_compress_24``):
:data:`CHECKS`. Values, metadata and dense weights bit-identical to the reference, for every dtype of
:data:`pruneplug.sparse24.DTYPES` that the backend declares and both layouts; errors (the first offending
group, the first invalid metadata nibble, non-finite weights) by type and message.

They are among :func:`pruneplug.testing.backend_checks`, so a backend declaring these operations
runs them with the rest of the kit.

    >>> from pruneplug.testing.harness import harness_for
    >>> check = next(c for c in CHECKS if c.name == "compress_24_not_sparse")
    >>> check.func(harness_for("numpy"))  # passes: returns None
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pruneplug.registry import get_registry
from pruneplug.sparse24 import DTYPES, LAYOUTS, SparseWeight24, compress_24, decompress_24, format_of, prune_24
from pruneplug.testing.assertions import assert_same_bits, assert_same_outcome
from pruneplug.testing.data import sparse_24, tricky_array
from pruneplug.testing.harness import REFERENCE, Check, Harness


def _shapes(dtype: str, layout: str, large: bool, h: Harness) -> list[tuple[int, int]]:
    fmt = format_of(dtype)
    r = fmt.row_group if layout == "cutlass" else 1
    c = fmt.columns_per_word * (2 if layout == "cutlass" else 1)
    shapes = [(r, c), (3 * r, 5 * c), (r * 2, c * 7)]
    if large:
        rows = max(r, (h.large_size // (c * 8)) // r * r)
        shapes.append((rows, c * 8))
    return shapes


def _parts(sw: SparseWeight24, h: Harness) -> tuple[np.ndarray, np.ndarray]:
    return h.to_numpy(sw.values), h.to_numpy(sw.metadata)


def _compare_compress(h: Harness, w: np.ndarray, layout: str, what: str, prune: bool = False, method: str = "l1") -> None:
    def run(backend: str) -> Any:
        arr = h.data_for(backend, w)
        if prune:
            return prune_24(arr, layout, method, backend=backend)
        return compress_24(arr, layout, backend=backend)

    outcome = assert_same_outcome(h, run, what)
    if isinstance(outcome, tuple):
        got, ref = outcome
        gv, gm = _parts(got, h)
        assert_same_bits(gv, ref.values, f"{what}: values")
        assert_same_bits(gm, ref.metadata, f"{what}: metadata")
        assert (got.shape, got.dtype, got.layout) == (ref.shape, ref.dtype, ref.layout), what


def check_compress_24(h: Harness) -> None:
    for dtype in h.each(DTYPES):
        for layout in LAYOUTS:
            for i, shape in enumerate(_shapes(dtype, layout, True, h)):
                _compare_compress(h, sparse_24(shape, dtype, seed=i), layout, f"compress_24 {dtype} {layout} {shape}")


def check_compress_24_not_sparse(h: Harness) -> None:
    for dtype in h.each(DTYPES):
        fmt = format_of(dtype)
        for layout in LAYOUTS:
            shape = _shapes(dtype, layout, False, h)[1]
            w = sparse_24(shape, dtype, seed=5)
            one = np.ones((), dtype=w.dtype)
            w[shape[0] - 1, -fmt.m:] = one  # a late offender ...
            w[2, fmt.m: 2 * fmt.m] = one     # ... and the first one, which the error must name
            _compare_compress(h, w, layout, f"compress_24 of a non-2:4 {dtype} weight ({layout})")


def check_decompress_24(h: Harness) -> None:
    for dtype in h.each(DTYPES):
        for layout in LAYOUTS:
            for i, shape in enumerate(_shapes(dtype, layout, True, h)):
                ref = compress_24(sparse_24(shape, dtype, seed=10 + i), layout, backend=REFERENCE)

                def run(backend: str, ref=ref) -> Any:
                    return decompress_24(values=h.data_for(backend, ref.values),
                                         metadata=h.data_for(backend, ref.metadata), shape=ref.shape,
                                         layout=layout, backend=backend)

                got, expected = assert_same_outcome(h, run, f"decompress_24 {dtype} {layout} {shape}")
                assert_same_bits(h.to_numpy(got), expected, f"decompress_24 {dtype} {layout} {shape}")


def check_decompress_24_invalid_nibbles(h: Harness) -> None:
    for dtype in h.each(DTYPES):
        fmt = format_of(dtype)
        for layout in LAYOUTS:
            shape = _shapes(dtype, layout, False, h)[1]
            ref = compress_24(sparse_24(shape, dtype, seed=3), layout, backend=REFERENCE)
            for nibble in (0x0, 0x5, 0xA, 0xF) + ((0x8,) if fmt.m == 2 else ()):
                meta = ref.metadata.copy()
                u = meta.view(np.uint16 if fmt.meta_dtype == "int16" else np.uint32)
                flat = u.ravel()
                # corrupt two words; the error must name the first in logical order
                for pos in (flat.size - 1, flat.size // 3):
                    flat[pos] = (int(flat[pos]) & ~0xF0) | (nibble << 4)

                def run(backend: str, meta=meta) -> Any:
                    return decompress_24(values=h.data_for(backend, ref.values),
                                         metadata=h.data_for(backend, meta), shape=ref.shape,
                                         layout=layout, backend=backend)

                result = assert_same_outcome(h, run, f"decompress_24 nibble 0x{nibble:X} {dtype} {layout}")
                assert isinstance(result, Exception), f"nibble 0x{nibble:X} was accepted ({dtype} {layout})"


def check_prune_compress_24(h: Harness) -> None:
    fused = "prune_compress_24" in get_registry().info(h.backend).operations
    for dtype in [d for d in h.each(DTYPES) if fused or d != "int8"]:  # int8 pruning needs the fused hook
        for layout in LAYOUTS:
            for i, shape in enumerate(_shapes(dtype, layout, True, h)):
                if dtype == "int8":
                    w = np.random.default_rng(i).integers(-128, 128, shape).astype(np.int8)
                    w[w % 5 == 0] = -128
                else:
                    w = tricky_array(shape, dtype, seed=i)
                for method in ("l1", "l2"):
                    _compare_compress(h, w, layout, f"prune_24 {dtype} {layout} {shape} {method}", prune=True, method=method)


def check_prune_compress_24_nonfinite(h: Harness) -> None:
    for dtype in [d for d in h.each(DTYPES) if d != "int8"]:
        shape = _shapes(dtype, "cutlass", False, h)[1]
        w = tricky_array(shape, dtype, seed=1)
        w[3, 7] = np.inf
        w[1, 2] = np.nan
        _compare_compress(h, w, "cutlass", f"prune_24 non-finite {dtype}", prune=True)


#: The checks of this module, in the order the kit runs them, each with the operations it needs.
CHECKS: list[Check] = [
    Check("compress_24", check_compress_24, frozenset({"compress_24"})),
    Check("compress_24_not_sparse", check_compress_24_not_sparse, frozenset({"compress_24"})),
    Check("decompress_24", check_decompress_24, frozenset({"decompress_24"})),
    Check("decompress_24_invalid_nibbles", check_decompress_24_invalid_nibbles, frozenset({"decompress_24"})),
    Check("prune_compress_24", check_prune_compress_24, frozenset({"compress_24"})),
    Check("prune_compress_24_nonfinite", check_prune_compress_24_nonfinite, frozenset({"compress_24"})),
]

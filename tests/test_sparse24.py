"""2:4 compression: byte-compatibility with PyTorch's reference CUTLASS conversion, the PTX layout,
round trips, errors, pruning, and the cpu backend against the NumPy reference (conformance kit)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sparse24_data import DTYPES, shapes_for, sparse_weight  # noqa: E402

import pruneplug as pp  # noqa: E402
from pruneplug.errors import (  # noqa: E402
    InvalidArgumentError,
    NonFiniteError,
    NotNMSparseError,
    ShapeError,
    UnsupportedDtypeError,
)
from pruneplug.sparse24 import (  # noqa: E402
    SparseWeight24,
    compress_24,
    cutlass_offsets,
    decompress_24,
    format_of,
    is_24_compressible,
    prune_24,
)
from pruneplug.testing import SPARSE24_CHECKS, run_check  # noqa: E402

BACKENDS = [b.name for b in pp.backends() if "compress_24" in b.operations and "numpy" in b.array_types]


def _available(name: str) -> bool:
    return any(b.name == name and b.available for b in pp.backends())


@pytest.fixture(params=["numpy", "cpu"])
def backend(request):
    if not _available(request.param):
        pytest.skip(f"backend {request.param!r} is not available here")
    return request.param


def bits(a) -> bytes:
    return np.ascontiguousarray(np.asarray(a)).view(np.uint8).tobytes()


# ---------------------------------------------------------------------------------------------
# PyTorch's reference conversion
# ---------------------------------------------------------------------------------------------
def torch_reference(w: np.ndarray):
    torch = pytest.importorskip("torch", reason="PyTorch's CPU build holds the reference conversion")
    from torch.sparse._semi_structured_conversions import sparse_semi_structured_from_dense_cutlass

    if w.dtype.name == "bfloat16":
        t = torch.from_numpy(w.view(np.int16)).view(torch.bfloat16)
    else:
        t = torch.from_numpy(w)
    values, meta = sparse_semi_structured_from_dense_cutlass(t)
    if values.dtype == torch.bfloat16:
        values = values.view(torch.int16)
    return values.numpy(), meta.numpy()


@pytest.mark.parametrize("dtype", DTYPES)
def test_cutlass_bytes_equal_pytorch(dtype, backend):
    rng = np.random.default_rng(100 + DTYPES.index(dtype))
    # PyTorch's CPU gather rewrites bfloat16 NaN as 0xFFFF (see test_bfloat16_nan_bits_kept): no NaN there
    nan = dtype != "bfloat16"
    for i, shape in enumerate(shapes_for(dtype, "cutlass", rng, 12)):
        w = sparse_weight(shape, dtype, seed=i, nan=nan)
        tv, tm = torch_reference(w)
        sw = compress_24(w, "cutlass", backend=backend)
        assert sw.values.shape == tv.shape and sw.metadata.shape == tm.shape
        assert sw.metadata.dtype == tm.dtype, (sw.metadata.dtype, tm.dtype)
        assert bits(sw.values) == bits(tv), f"{dtype} {shape}: values differ from PyTorch"
        assert bits(sw.metadata) == bits(tm), f"{dtype} {shape}: metadata differs from PyTorch"


def test_every_nonzero_pattern_equals_pytorch(backend):
    """All 11 patterns with at most 2 nonzeros, with -0.0 and NaN, in every position of a word."""
    patterns = [p for p in range(16) if bin(p).count("1") <= 2]
    rows, cols = 32, 64
    for dtype in ("float16", "int8"):
        from pruneplug.testing import np_dtype

        w = np.zeros((rows, cols), dtype=np_dtype(dtype))
        g = w.reshape(rows, cols // 4, 4)
        rng = np.random.default_rng(0)
        for r in range(rows):
            for j in range(cols // 4):
                p = patterns[(r * 7 + j) % len(patterns)]
                for i in range(4):
                    if p >> i & 1:
                        g[r, j, i] = np.nan if (dtype != "int8" and rng.random() < 0.1) else (1 + i) * (-1) ** r
                    elif dtype != "int8" and rng.random() < 0.5:
                        g[r, j, i] = -0.0
        if dtype == "int8":
            w = np.ascontiguousarray(g.reshape(rows, cols * 2)[:, :cols]) if False else w
        tv, tm = torch_reference(w)
        sw = compress_24(w, backend=backend)
        assert bits(sw.values) == bits(tv) and bits(sw.metadata) == bits(tm), dtype


def test_docstring_example_every_word_0xEEEE(backend):
    w = np.tile(np.array([0, 0, 1, 1], dtype=np.float16), (128, 32))
    sw = compress_24(w, backend=backend)
    assert sw.metadata.shape == (128, 8) and sw.metadata.dtype == np.int16
    assert (sw.metadata == -4370).all() and (sw.metadata.view(np.uint16) == 0xEEEE).all()
    assert (sw.values == 1).all()
    tv, tm = torch_reference(w)
    assert bits(sw.metadata) == bits(tm)


def test_bfloat16_nan_bits_kept(backend):
    """pruneplug keeps a kept value's exact bits; PyTorch's CPU conversion turns bf16 NaN into 0xFFFF."""
    import ml_dtypes

    w = np.zeros((32, 32), dtype=ml_dtypes.bfloat16)
    w.view(np.uint16)[:, 1] = 0x7FC1  # a NaN with a payload
    sw = compress_24(w, backend=backend)
    assert (sw.values.view(np.uint16)[:, 0] == 0x7FC1).all()
    tv, _ = torch_reference(w)
    assert (tv.view(np.uint16)[:, 0] == 0xFFFF).all(), "PyTorch no longer rewrites bf16 NaN: drop the workaround"


def test_torch_tensors_in_and_out(backend):
    torch = pytest.importorskip("torch")
    w = sparse_weight((64, 64), "bfloat16", seed=1, nan=False)
    t = torch.from_numpy(w.view(np.int16)).view(torch.bfloat16)
    sw = compress_24(t, backend=backend)
    assert isinstance(sw.values, torch.Tensor) and sw.values.dtype == torch.bfloat16
    assert isinstance(sw.metadata, torch.Tensor) and sw.metadata.dtype == torch.int16
    tv, tm = torch_reference(w)
    assert bits(sw.values.view(torch.int16).numpy()) == bits(tv)
    assert bits(sw.metadata.numpy()) == bits(tm)
    dense = decompress_24(sw, backend=backend)
    assert isinstance(dense, torch.Tensor) and torch.equal(dense, t)  # equal values (+0.0 == -0.0)


def test_pytorch_semi_structured_tensor_accepts_our_output(backend):
    """SparseSemiStructuredTensorCUTLASS built from our values and metadata decompresses (with
    PyTorch's own code) to the dense weight."""
    torch = pytest.importorskip("torch")
    from torch.sparse._semi_structured_conversions import sparse_semi_structured_to_dense_cutlass

    w = sparse_weight((64, 128), "float16", seed=9, nan=False)
    sw = compress_24(w, backend=backend)
    dense = sparse_semi_structured_to_dense_cutlass(torch.from_numpy(sw.values), torch.from_numpy(sw.metadata))
    assert np.array_equal(dense.numpy(), np.where(w == 0, np.float16(0), w))


# ---------------------------------------------------------------------------------------------
# PTX layout and round trips
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_ptx_layout_properties(dtype, backend):
    fmt = format_of(dtype)
    w = sparse_weight((48, fmt.columns_per_word * 6), dtype, seed=2)
    sw = compress_24(w, "ptx", backend=backend)
    u = sw.metadata.view(np.uint16 if fmt.meta_dtype == "int16" else np.uint32).astype(np.uint64)
    per_word = fmt.groups_per_word
    nibbles = np.stack([(u >> (4 * j)) & 0xF for j in range(per_word)], axis=2).reshape(w.shape[0], -1)
    assert set(np.unique(nibbles)) <= set(fmt.valid_nibbles)
    idx0, idx1 = nibbles & 3, nibbles >> 2
    if fmt.m == 4:
        assert (idx0 < idx1).all()
    # LSB first: group j of a word is in bits 4j..4j+3, and it says where the values came from
    groups = w.reshape(w.shape[0], -1, fmt.m)
    vals = sw.values.reshape(w.shape[0], -1, fmt.m // 2)
    if fmt.m == 4:
        got0 = np.take_along_axis(groups, idx0[..., None].astype(np.intp), axis=2)[..., 0]
        got1 = np.take_along_axis(groups, idx1[..., None].astype(np.intp), axis=2)[..., 0]
        assert bits(got0) == bits(np.ascontiguousarray(vals[..., 0])) and bits(got1) == bits(np.ascontiguousarray(vals[..., 1]))
    else:
        pos = (nibbles == 0xE).astype(np.intp)
        assert bits(np.take_along_axis(groups, pos[..., None], axis=2)[..., 0]) == bits(np.ascontiguousarray(vals[..., 0]))


def test_ptx_hand_example(backend):
    w = np.zeros((1, 16), dtype=np.float16)
    w[0, [1, 3]] = [5, 6]      # group 0: (1,3) -> 0xD
    w[0, 4] = 7                # group 1: 1000 -> (0,2) -> 0x8
    w[0, [10, 11]] = [8, 9]    # group 2: (2,3) -> 0xE
    w[0, 13] = -1              # group 3: 0100 -> (1,2) -> 0x9
    sw = compress_24(w, "ptx", backend=backend)
    assert int(sw.metadata.view(np.uint16)[0, 0]) == 0x9E8D
    assert sw.values.tolist() == [[5, 6, 7, 0, 8, 9, -1, 0]]


@pytest.mark.parametrize("dtype", DTYPES)
def test_cutlass_is_ptx_reordered(dtype, backend):
    fmt = format_of(dtype)
    w = sparse_weight((fmt.row_group * 3, fmt.columns_per_word * 4), dtype, seed=4)
    a = compress_24(w, "cutlass", backend=backend)
    b = compress_24(w, "ptx", backend=backend)
    assert bits(a.values) == bits(b.values)
    offsets = cutlass_offsets(*b.metadata.shape, fmt.meta_dtype)
    assert np.array_equal(a.metadata.ravel()[offsets], b.metadata)
    assert sorted(offsets.ravel().tolist()) == list(range(offsets.size))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["cutlass", "ptx"])
def test_round_trip(dtype, layout, backend):
    rng = np.random.default_rng(7)
    for i, shape in enumerate(shapes_for(dtype, layout, rng, 5)):
        w = sparse_weight(shape, dtype, seed=i)
        sw = compress_24(w, layout, backend=backend)
        dense = decompress_24(sw, backend=backend)
        # exact bits at every nonzero; zeros stay zeros (a -0.0 that was not kept comes back +0.0)
        nz = w != np.zeros((), w.dtype)
        assert bits(dense[nz]) == bits(w[nz]), (dtype, layout, shape)
        assert not (dense[~nz] != np.zeros((), w.dtype)).any(), (dtype, layout, shape)
        fmt = format_of(dtype)
        assert sw.shape == shape and sw.dtype == dtype and sw.layout == layout and sw.pattern == fmt.pattern


def test_repr_and_nbytes():
    w = np.tile(np.array([0, 0, 1, 1], dtype=np.float16), (32, 8))
    sw = compress_24(w, backend="numpy")
    assert isinstance(sw, SparseWeight24)
    assert repr(sw) == ("SparseWeight24(shape=(32, 32), dtype='float16', pattern='2:4', layout='cutlass', "
                        "values=(32, 16) float16, metadata=(32, 2) int16, backend='numpy')")
    assert sw.nbytes == 32 * 16 * 2 + 32 * 2 * 2
    assert np.array_equal(sw.decompress(), w)


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
def test_error_wrong_ndim(backend):
    with pytest.raises(ShapeError, match=r"2-D weight.*\(2, 32, 32\)"):
        compress_24(np.zeros((2, 32, 32), np.float16), backend=backend)


@pytest.mark.parametrize("dtype", ["float64", "int16", "bool", "uint8"])
def test_error_wrong_dtype(dtype, backend):
    with pytest.raises(UnsupportedDtypeError, match=f"dtype {dtype} is not supported for 2:4"):
        compress_24(np.zeros((32, 32), dtype), backend=backend)


@pytest.mark.parametrize("dtype,shape,layout,pattern", [
    ("float16", (32, 24), "cutlass", r"column count 24 must be a multiple of 16 for float16"),
    ("float16", (48, 32), "cutlass", r"row count to be a multiple of 32 for float16, got 48"),
    ("int8", (24, 64), "cutlass", r"multiple of 16 for int8, got 24"),
    ("float16", (32, 48), "cutlass", r"even metadata column count, got 48/16 = 3.*multiple of 32 for float16"),
    ("int8", (16, 96), "cutlass", r"even metadata column count, got 96/32 = 3.*multiple of 64 for int8"),
    ("float32", (32, 12), "ptx", r"column count 12 must be a multiple of 8 for float32"),
])
def test_error_layout_shape_rules(dtype, shape, layout, pattern, backend):
    with pytest.raises(ShapeError, match=pattern):
        compress_24(np.zeros(shape, dtype), layout, backend=backend)


def test_ptx_takes_any_row_count(backend):
    sw = compress_24(np.zeros((3, 16), np.float16), "ptx", backend=backend)
    assert sw.metadata.shape == (3, 1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_error_not_24_names_first_row_and_group(dtype, backend):
    fmt = format_of(dtype)
    w = sparse_weight((64, fmt.columns_per_word * 4), dtype, seed=1, nan=False)
    one = np.ones((), w.dtype)
    w[40, : fmt.m] = one
    w[7, 3 * fmt.m: 4 * fmt.m] = one
    if fmt.m == 4:
        w[7, 4 * fmt.m - 1] = 0  # 3 of 4 (2 of 2 for float32)
    with pytest.raises(NotNMSparseError) as info:
        compress_24(w, backend=backend)
    msg = str(info.value)
    count = fmt.m - 1 if fmt.m == 4 else 2
    assert f"row 7, group 3 (columns {3 * fmt.m}..{4 * fmt.m - 1}) has {count} nonzeros" in msg, msg
    assert fmt.pattern in msg and isinstance(info.value, ValueError)


def test_nan_counts_as_nonzero_and_negative_zero_as_zero(backend):
    w = np.zeros((32, 32), np.float16)
    w[0, :3] = [np.nan, -0.0, np.nan]
    sw = compress_24(w, backend=backend)  # NaN, -0.0, NaN: two nonzeros
    assert np.isnan(sw.values[0, :2]).all()
    w[0, 3] = np.nan
    with pytest.raises(NotNMSparseError, match="row 0, group 0"):
        compress_24(w, backend=backend)


def test_error_bad_layout():
    with pytest.raises(InvalidArgumentError, match="layout='cusparselt' is not supported"):
        compress_24(np.zeros((32, 32), np.float16), "cusparselt")


def test_decompress_errors(backend):
    w = sparse_weight((32, 64), "float16", seed=3, nan=False)
    sw = compress_24(w, backend=backend)
    with pytest.raises(UnsupportedDtypeError, match="metadata: dtype int32 is not valid for float16 values; expected int16"):
        decompress_24(values=sw.values, metadata=sw.metadata.astype(np.int32), shape=sw.shape, layout="cutlass", backend=backend)
    with pytest.raises(ShapeError, match=r"metadata: shape \(32, 2\) does not fit a \(32, 64\) float16 weight; expected \(32, 4\)"):
        decompress_24(values=sw.values, metadata=sw.metadata[:, :2].copy(), shape=sw.shape, layout="cutlass", backend=backend)
    with pytest.raises(ShapeError, match=r"values: shape \(32, 16\)"):
        decompress_24(values=sw.values[:, :16].copy(), metadata=sw.metadata, shape=sw.shape, layout="cutlass", backend=backend)
    with pytest.raises(ShapeError, match="row count to be a multiple of 32"):
        decompress_24(values=sw.values[:16].copy(), metadata=sw.metadata[:16].copy(), shape=(16, 64), layout="cutlass")
    with pytest.raises(InvalidArgumentError, match="needs a SparseWeight24, or values="):
        decompress_24(values=sw.values)


@pytest.mark.parametrize("nibble", [0x0, 0x5, 0xA, 0xF])
@pytest.mark.parametrize("layout", ["cutlass", "ptx"])
def test_decompress_invalid_nibble_names_row_and_group(nibble, layout, backend):
    w = sparse_weight((64, 64), "bfloat16", seed=3, nan=False)
    sw = compress_24(w, layout, backend="numpy")
    logical = sw.metadata.copy() if layout == "ptx" else sw.metadata.ravel()[cutlass_offsets(64, 4, "int16")]
    u = logical.view(np.uint16)
    u[33, 2] = (int(u[33, 2]) & 0xF0FF) | (nibble << 8)  # row 33, word 2, group 2 -> group 10 of the row
    u[50, 0] = (int(u[50, 0]) & 0xFFF0) | nibble
    meta = logical.copy()
    if layout == "cutlass":
        meta = np.empty_like(logical)
        meta.ravel()[cutlass_offsets(64, 4, "int16").ravel()] = logical.ravel()
    with pytest.raises(InvalidArgumentError) as info:
        decompress_24(values=sw.values, metadata=meta, shape=sw.shape, layout=layout, backend=backend)
    assert f"invalid nibble 0x{nibble:X} for row 33, group 10 (dense columns 40..43)" in str(info.value)


def test_decompress_float32_only_takes_0x4_and_0xE(backend):
    w = sparse_weight((32, 16), "float32", seed=3, nan=False)
    sw = compress_24(w, backend="numpy")
    meta = sw.metadata.copy()
    meta.view(np.uint16)[:] = 0x9999
    with pytest.raises(InvalidArgumentError, match="invalid nibble 0x9 for row 0, group 0.*0x4, 0xE"):
        decompress_24(values=sw.values, metadata=meta, shape=sw.shape, layout="cutlass", backend=backend)


# ---------------------------------------------------------------------------------------------
# pruning
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("method", ["l1", "l2"])
def test_prune_24_equals_prune_then_compress(dtype, method, backend):
    from pruneplug.testing import tricky_array

    w = tricky_array((64, 128), dtype, seed=5)
    before = bits(w)
    sw = prune_24(w, method=method, backend=backend)
    assert bits(w) == before, "prune_24 must not modify its input"
    pruned = pp.prune(w, pattern=format_of(dtype).pattern, method=method, backend="numpy")
    ref = compress_24(pruned, backend="numpy")
    assert bits(sw.values) == bits(ref.values) and bits(sw.metadata) == bits(ref.metadata)


def test_prune_24_tie_rule_keeps_lower_index(backend):
    w = np.tile(np.array([1.0, -1.0, 1.0, 0.5], np.float16), (32, 8))
    sw = prune_24(w, backend=backend)
    assert np.array_equal(decompress_24(sw)[0, :4], np.array([1.0, -1.0, 0, 0], np.float16))


def test_prune_24_int8_by_integer_magnitude(backend):
    w = np.tile(np.array([-128, 127, 3, -127], np.int8), (16, 16))
    sw = prune_24(w, backend=backend)
    assert sw.metadata.dtype == np.int32
    assert decompress_24(sw)[0, :4].tolist() == [-128, 127, 0, 0]


def test_prune_24_nonfinite(backend):
    w = np.ones((32, 32), np.float32)
    w[2, 5] = np.inf
    with pytest.raises(NonFiniteError, match="1 non-finite value"):
        prune_24(w, backend=backend)


def test_prune_24_fallback_without_fused_hook():
    """A backend without prune_compress_24 prunes with the N:M hooks, then compresses: same bytes."""
    from pruneplug.registry import get_registry

    w = np.random.default_rng(0).standard_normal((32, 64)).astype(np.float16)
    registry = get_registry()
    fused = prune_24(w, backend="numpy")
    info = registry.info("numpy")
    object.__setattr__(info, "operations", info.operations - {"prune_compress_24"})
    try:
        fallback = prune_24(w, backend="numpy")
        with pytest.raises(pp.errors.BackendUnavailableError if hasattr(pp, "errors") else Exception, match="prune_compress_24"):
            prune_24(np.zeros((16, 64), np.int8), backend="numpy")
    finally:
        object.__setattr__(info, "operations", info.operations | {"prune_compress_24"})
    assert bits(fused.values) == bits(fallback.values) and bits(fused.metadata) == bits(fallback.metadata)


def test_is_24_compressible():
    w = np.tile(np.array([0, 0, 1, 1], np.float16), (32, 8))
    assert is_24_compressible(w)
    w[0, 0] = 1
    assert not is_24_compressible(w)
    assert not is_24_compressible(np.zeros((31, 32), np.float16))
    assert is_24_compressible(np.zeros((31, 32), np.float16), "ptx")


# ---------------------------------------------------------------------------------------------
# every backend that declares the operations: the conformance checks
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend_check", [pytest.param((b, c, 300_007), id=f"{b}-{c.name}")
                                           for b in BACKENDS for c in SPARSE24_CHECKS])
def test_conformance_sparse24(backend_check):
    run_check(backend_check)

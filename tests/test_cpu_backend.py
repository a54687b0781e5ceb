"""Tests specific to the ``cpu`` backend (C kernels) beyond the conformance kit.

Every selection path of the C code is forced through its test options (``PP_OPT_*``) and checked
bit for bit against the NumPy reference on data with ties, signed zeros, denormals, infinities and
odd sizes; results must not depend on the thread count, the ISA build, or concurrent callers.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

import pruneplug as pp
from pruneplug.validation import check_method
from pruneplug.errors import NonFiniteError
from pruneplug.testing import np_dtype, tricky_array

cpu = pytest.importorskip("pruneplug_backends.cpu")
ref = pytest.importorskip("pruneplug_backends.numpy")
if cpu.lib is None:  # pragma: no cover - unbuilt extension
    pytest.skip(f"cpu backend not built: {cpu.IMPORT_ERROR}", allow_module_level=True)

ffi, lib = cpu.ffi, cpu.lib
DTYPES = ("float16", "bfloat16", "float32", "float64")
TRANSFORMS = ("abs", "square", "identity")
DT = cpu.DTYPE_CODE  # csrc/pruneplug.h's enum values, read from the extension
TR = cpu.TRANSFORM_CODE
# Up to PP_INCACHE_N (2^16; 2^15 for identity): the in-cache histogram path; above: the sampled bracket. Several threads are requested explicitly (the
# automatic choice stays on one thread below PP_PAR_MIN = 2^20 elements).
N_LARGE = 150_001


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _p(a, ctype="void *"):
    assert a.flags.c_contiguous
    return ffi.cast(ctype, a.ctypes.data)


def native_mask(values, k, transform, *, nthreads=0, options=0):
    out = np.empty(values.shape, dtype=bool)
    path = ffi.new("int *")
    bad = ffi.new("int64_t[2]")
    st = lib.pp_unstructured_mask(_p(values), DT[values.dtype.name], TR[transform], values.size, k,
                                  _p(out, "uint8_t *"), nthreads, options, path, bad, bad + 1)
    return st, out, path[0], (int(bad[0]), int(bad[1]))


def native_prune(weights, k, transform, *, nthreads=0, options=0):
    w = weights.copy()
    path = ffi.new("int *")
    bad = ffi.new("int64_t[2]")
    st = lib.pp_prune_unstructured(_p(w), DT[w.dtype.name], TR[transform], w.size, k, nthreads,
                                   options, path, bad, bad + 1)
    return st, w, path[0]


def ref_mask(values, k, transform):
    return ref.pruneplug_unstructured_mask(values=values, k=k, transform=transform, out=None)


def ref_prune(weights, k, transform):
    w = weights.copy()
    ref.pruneplug_apply_mask(weights=w, mask=ref_mask(weights, k, transform))
    return w


def bits(a):
    return np.ascontiguousarray(a).view(np.uint8)


def assert_bits_equal(a, b, what=""):
    assert a.shape == b.shape and a.dtype == b.dtype, what
    if not np.array_equal(bits(a), bits(b)):
        diff = np.flatnonzero(bits(a).reshape(a.size, -1).any(axis=1) != bits(b).reshape(b.size, -1).any(axis=1))
        raise AssertionError(f"{what}: differs, first byte-level difference near {diff[:5]}")


def data(kind, n, dtype, seed=0):
    """Data sets that stress the selection: ties, signed zeros, denormals, overflow of squares."""
    rng = np.random.default_rng(seed)
    dt = np_dtype(dtype)
    if kind == "tricky":
        return tricky_array((n,), dtype, seed=seed)
    if kind == "normal":
        return rng.standard_normal(n).astype(dt)
    if kind == "quantized":  # int8-like: 255 levels, huge ties
        return (np.round(rng.standard_normal(n) * 16).clip(-127, 127) / 16).astype(dt)
    if kind == "constant":  # everything ties
        return np.full(n, -1.5, dtype=dt)
    if kind == "zeros":  # signed zeros plus a few values
        x = np.where(rng.random(n) < 0.5, -0.0, 0.0)
        x[rng.integers(0, n, 50)] = rng.standard_normal(50)
        return x.astype(dt)
    if kind == "extreme":  # squares overflow to inf / underflow to 0 (new ties); infinities for identity
        import ml_dtypes

        fin = ml_dtypes.finfo(dt) if dtype == "bfloat16" else np.finfo(dt)
        big = float(fin.max) ** 0.5
        tiny = float(fin.smallest_subnormal)
        choices = np.array([big * 0.5, big * 2.0, big * 4.0, tiny, tiny * 3, float(fin.max), 1.0, 0.0], dtype=np.float64)
        x = choices[rng.integers(0, choices.size, n)] * np.where(rng.random(n) < 0.5, -1.0, 1.0)
        with np.errstate(over="ignore"):
            return x.astype(dt)
    raise ValueError(kind)


OPT_SMALL, OPT_MISS, OPT_TINY = lib.PP_OPT_FORCE_SMALL, lib.PP_OPT_FORCE_MISS, lib.PP_OPT_TINY_BUFFER
OPT_INCACHE = lib.PP_OPT_FORCE_INCACHE
PATH = {
    "small": lib.PP_PATH_SMALL,
    "hit": lib.PP_PATH_BRACKET_HIT,
    "miss": lib.PP_PATH_MISS,
    "overflow": lib.PP_PATH_OVERFLOW,
    "histogram": lib.PP_PATH_HISTOGRAM,
    "ties": lib.PP_PATH_TIES,
    "single_key": lib.PP_PATH_SINGLE_KEY,
    "incache": lib.PP_PATH_INCACHE,
}


# ---------------------------------------------------------------------------------------------
# unstructured selection: every path, every dtype and transform, against the reference
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("kind", ["tricky", "quantized", "extreme"])
def test_unstructured_every_path_matches_reference(dtype, transform, kind):
    values = data(kind, N_LARGE, dtype, seed=3)
    if transform == "abs" or transform == "square":
        with np.errstate(invalid="ignore"):
            values[~np.isfinite(values.astype(np.float64))] = 0  # non-finite weights are errors
    seen = 0
    for k in (1, N_LARGE // 3, N_LARGE // 2, N_LARGE - 1):
        expected = ref_mask(values, k, transform)
        for options, threads in [(0, 0), (0, 3), (OPT_SMALL, 0), (OPT_SMALL, 2), (OPT_MISS, 0), (OPT_MISS, 2),
                                 (OPT_TINY, 0), (OPT_TINY, 3), (OPT_MISS | OPT_TINY, 2), (OPT_INCACHE, 0),
                                 (OPT_INCACHE, 2)]:
            st, out, path, _ = native_mask(values, k, transform, options=options, nthreads=threads)
            assert st == 0
            assert np.array_equal(out, expected), (k, options, path)
            assert int((~out).sum()) == k
            seen |= path
            if options == OPT_SMALL:
                assert path & PATH["small"]
            if options == OPT_INCACHE:
                assert path & PATH["incache"] and not path & PATH["small"]
            if options & OPT_MISS:
                assert not path & PATH["small"]
        st, w, _ = native_prune(values, k, transform)
        assert st == 0
        assert_bits_equal(w, ref_prune(values, k, transform), f"prune k={k}")
    assert seen & PATH["small"] and seen & (PATH["miss"] | PATH["single_key"])


def test_every_selection_path_is_exercised():
    """Data and options chosen so that each path of the selection runs at least once."""
    seen = 0
    cases = [
        (data("normal", 400_000, "float32", 1), 0),           # bracket hit (+ ties in float32)
        (data("normal", 400_000, "float32", 1), OPT_MISS),    # miss -> re-compaction
        (data("normal", 400_000, "float32", 1), OPT_TINY),    # overflow -> histogram narrowing
        (data("quantized", 400_000, "float32", 2), 0),        # ties resolved from the buffer
        (data("quantized", 400_000, "float32", 2), OPT_TINY),  # ties after the histogram path
        (data("constant", 400_000, "float64", 0), 0),         # one key: single-key range
        (data("normal", 3_000, "float64", 4), OPT_SMALL),     # small path (all keys copied)
        (data("normal", 3_000, "float64", 4), 0),             # in-cache histogram path
        (data("quantized", 20_000, "float32", 2), 0),         # in-cache path with ties
    ]
    for values, options in cases:
        for k in (1, values.size // 2, values.size - 1):
            st, out, path, _ = native_mask(values, k, "abs", options=options, nthreads=2)
            assert st == 0
            assert np.array_equal(out, ref_mask(values, k, "abs")), (options, k, path)
            seen |= path
    missing = [name for name, bit in PATH.items() if not seen & bit]
    assert not missing, f"paths never taken: {missing}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_small_arrays_take_the_incache_path(dtype, transform):
    """Up to 2^15 elements (2^16 for abs/square) every variant selects in cache, and matches the
    reference (ties, signed zeros, one-key arrays), for masks and in-place pruning."""
    limit = 1 << 15 if transform == "identity" else 1 << 16
    for kind, n in [("tricky", 5), ("tricky", 1000), ("normal", 4096), ("quantized", 10_000),
                    ("tricky", 30_001), ("constant", 12_345), ("zeros", 20_000), ("normal", limit)]:
        values = data(kind, n, dtype, seed=n)
        if transform != "identity":
            with np.errstate(invalid="ignore"):
                values[~np.isfinite(values.astype(np.float64))] = 0
        for k in sorted({1, n // 3, n // 2, n - 1}):
            st, out, path, _ = native_mask(values, k, transform)
            assert st == 0 and path & PATH["incache"], (kind, n, k, path)
            assert not path & (PATH["small"] | PATH["hit"] | PATH["miss"])
            assert np.array_equal(out, ref_mask(values, k, transform)), (kind, n, k, path)
            st, w, path = native_prune(values, k, transform)
            assert st == 0 and path & PATH["incache"]
            assert_bits_equal(w, ref_prune(values, k, transform), f"{kind} n={n} k={k}")
    values = data("normal", limit + 1, dtype, seed=1)
    st, out, path, _ = native_mask(values, limit // 2, transform)
    assert st == 0 and not path & PATH["incache"] and path & (PATH["hit"] | PATH["miss"] | PATH["single_key"])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 64, 1000, 16_383, 16_385, 131_071, 131_073])
def test_unstructured_sizes_and_extreme_k(dtype, n):
    values = data("tricky", n, dtype, seed=n)
    for transform in TRANSFORMS:
        for k in sorted({0, 1, n // 2, max(n - 1, 0), n}):
            if k > n:
                continue
            st, out, _, _ = native_mask(values, k, transform)
            assert st == 0
            assert np.array_equal(out, ref_mask(values, k, transform)), (transform, k)
            st, w, _ = native_prune(values, k, transform)
            assert st == 0
            assert_bits_equal(w, ref_prune(values, k, transform), f"{transform} k={k}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_signed_zero_and_infinity_scores(dtype):
    """identity: -0.0 == +0.0 (lower index pruned first), -inf lowest, +inf highest."""
    dt = np_dtype(dtype)
    base = np.array([0.0, -0.0, np.inf, -np.inf, 1.0, -1.0, -0.0, 0.0, 5e-8, -5e-8], dtype=np.float64)
    values = np.tile(base, 30_000).astype(dt)
    for k in (1, 2, 3, 7, 11, values.size // 2, values.size - 3):
        st, out, _, _ = native_mask(values, k, "identity")
        assert st == 0 and np.array_equal(out, ref_mask(values, k, "identity")), k


# ---------------------------------------------------------------------------------------------
# non-finite input: typed error, count, first index, nothing written
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [10, 20_000, 300_001])
def test_non_finite_detected_before_writing(dtype, n):
    dt = np_dtype(dtype)
    values = data("normal", n, dtype)
    values[n // 3] = np.inf
    values[n - 1] = np.nan
    values[n // 2] = -np.inf
    for transform in ("abs", "square"):
        w = values.copy()
        with pytest.raises(NonFiniteError) as info:
            cpu.pruneplug_prune_unstructured(weights=w, k=n // 2, transform=transform)
        assert (info.value.count, info.value.first_index) == (3, n // 3)
        assert_bits_equal(w, values, "weights untouched")
        even = w[: n - n % 2].copy()
        with pytest.raises(NonFiniteError) as info:
            cpu.pruneplug_prune_nm(weights=even, n=1, m=2, axis=0, transform=transform)
        assert info.value.first_index == n // 3
        assert_bits_equal(even, values[: n - n % 2], "weights untouched by prune_nm")
    # identity: only NaN is an error
    with pytest.raises(NonFiniteError) as info:
        cpu.pruneplug_unstructured_mask(values=values, k=1, transform="identity")
    assert (info.value.count, info.value.first_index) == (1, n - 1)
    ok = values.copy()
    ok[n - 1] = 0
    out = cpu.pruneplug_unstructured_mask(values=ok, k=n // 2, transform="identity")
    assert np.array_equal(out, ref_mask(ok, n // 2, "identity"))
    assert dt == values.dtype


def test_non_finite_for_k_zero_and_all():
    values = data("normal", 200_000, "float32")
    values[123_456] = np.nan
    for k in (0, values.size):
        st, _, _, bad = native_mask(values, k, "abs")
        assert st == lib.PP_ERR_NONFINITE and bad == (1, 123_456)


# ---------------------------------------------------------------------------------------------
# threads: thread-count independence, concurrent Python callers, the GIL is released
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["bfloat16", "float32", "float64"])
def test_results_independent_of_thread_count(dtype):
    values = data("quantized", 400_003, dtype, seed=5)
    k = 200_000
    masks = [native_mask(values, k, "abs", nthreads=t)[1] for t in (1, 2, 3, 4, 7)]
    for m in masks[1:]:
        assert np.array_equal(m, masks[0])
    prunes = [native_prune(values, k, "square", nthreads=t)[1] for t in (1, 2, 5)]
    for w in prunes[1:]:
        assert_bits_equal(w, prunes[0], "prune vs thread count")
    # N:M (contiguous 2:4, strided general m) and block masks
    for shape, n, m, (outer, length, inner) in [((100_000, 4), 2, 4, (100_000, 4, 1)),
                                                ((50, 60, 100), 2, 5, (50, 60, 100))]:
        v = values[: int(np.prod(shape))].reshape(shape)
        outs = []
        for t in (1, 2, 3):
            out = np.empty(shape, dtype=bool)
            bad = ffi.new("int64_t[2]")
            assert lib.pp_nm_mask(_p(v), DT[dtype], TR["abs"], outer, length, inner, n, m, _p(out, "uint8_t *"), t,
                                  bad, bad + 1) == 0
            outs.append(out)
        assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])
        axis = 1
        assert np.array_equal(outs[0], ref.pruneplug_nm_mask(values=v, n=n, m=m, axis=axis, transform="abs", out=None))
    v = values[:400_000].reshape(400, 1000)
    blocks = []
    for t in (1, 2, 3):
        out = np.empty(v.shape, dtype=bool)
        bad = ffi.new("int64_t[2]")
        assert lib.pp_block_mask(_p(v), DT[dtype], TR["square"], 400, 1000, 4, 4, 12_000, _p(out, "uint8_t *"), t,
                                 bad, bad + 1) == 0
        blocks.append(out)
    assert np.array_equal(blocks[0], blocks[1]) and np.array_equal(blocks[0], blocks[2])
    # importance statistics are combined in a fixed order: bit-identical for any thread count
    stats = []
    for t in (1, 2, 3):
        scores = np.empty(values.shape, dtype=np.float32 if values.dtype.itemsize == 2 else values.dtype)
        st4 = ffi.new("double[4]")
        bad = ffi.new("int64_t[2]")
        assert lib.pp_importance(_p(values), DT[dtype], TR["abs"], values.size, _p(scores), st4, t, bad, bad + 1) == 0
        stats.append(tuple(st4))
    assert stats[0] == stats[1] == stats[2]


def test_omp_num_threads_is_respected_and_irrelevant_to_results():
    import subprocess
    import sys

    code = (
        "import numpy as np, pruneplug_backends.cpu as c\n"
        "x = np.random.default_rng(0).standard_normal(300_000).astype(np.float32)\n"
        "m = c.pruneplug_unstructured_mask(values=x, k=150_000, transform='abs')\n"
        "print(int(np.flatnonzero(m)[:1000].sum()), int(m.sum()))\n"
    )
    outs = set()
    for threads in ("1", "2", "3"):
        env = dict(os.environ, OMP_NUM_THREADS=threads)
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                check=True).stdout)
    assert len(outs) == 1


def test_concurrent_calls_from_python_threads():
    arrays = [data("tricky", 250_000 + i, "float32", seed=i) for i in range(6)]
    expected = [ref_mask(a, a.size // 2, "abs") for a in arrays]
    results: list = [None] * len(arrays)
    errors: list = []

    def work(i):
        try:
            for _ in range(3):
                a = arrays[i]
                m = cpu.pruneplug_unstructured_mask(values=a, k=a.size // 2, transform="abs")
                w = a.copy()
                cpu.pruneplug_prune_unstructured(weights=w, k=a.size // 2, transform="abs")
                g = cpu.pruneplug_nm_mask(values=a[: a.size // 4 * 4].reshape(-1, 4), n=2, m=4, axis=1,
                                          transform="abs")
                results[i] = (m, w, g)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(arrays))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, a in enumerate(arrays):
        m, w, g = results[i]
        assert np.array_equal(m, expected[i])
        assert_bits_equal(w, ref_prune(a, a.size // 2, "abs"), "prune")
        ga = a[: a.size // 4 * 4].reshape(-1, 4)
        assert np.array_equal(g, ref.pruneplug_nm_mask(values=ga, n=2, m=4, axis=1, transform="abs", out=None))


def test_gil_released_during_c_calls():
    """While one thread is inside the C selection, another Python thread keeps running."""
    x = data("normal", 20_000_000, "float64")
    window = {}

    def worker():
        window["start"] = time.perf_counter()
        cpu.pruneplug_unstructured_mask(values=x, k=x.size // 2, transform="abs")
        window["end"] = time.perf_counter()

    t = threading.Thread(target=worker)
    stamps = []
    t.start()
    while t.is_alive():
        stamps.append(time.perf_counter())
    t.join()
    inside = [s for s in stamps if window["start"] < s < window["end"]]
    assert len(inside) > 100, f"main thread ran {len(inside)} iterations during the C call"


# ---------------------------------------------------------------------------------------------
# ISA builds give identical bits
# ---------------------------------------------------------------------------------------------
def _isa():
    buf = ffi.new("char[32]")
    assert lib.pp_active_isa(buf, 32) == 0
    return ffi.string(buf).decode()


def test_isa_builds_agree(monkeypatch):
    best = _isa()
    levels = ["default", "avx2", "avx512"]
    levels = levels[: levels.index(best) + 1] if best in levels else [best]
    values = data("tricky", 300_007, "float32", seed=9)
    half = data("tricky", 300_008, "bfloat16", seed=9)
    results = {}
    for level in levels:
        monkeypatch.setenv("PRUNEPLUG_CPU_ISA", level)
        assert _isa() == level
        scores, stats = cpu.pruneplug_importance(weights=half, transform="square")
        results[level] = (
            cpu.pruneplug_unstructured_mask(values=values, k=150_000, transform="square"),
            cpu.pruneplug_nm_mask(values=half.reshape(-1, 4), n=2, m=4, axis=1, transform="abs"),
            cpu.pruneplug_nm_mask(values=values[:300_000].reshape(3, 100, 1000), n=3, m=5, axis=1, transform="identity"),
            cpu.pruneplug_block_mask(values=values[:300_000].reshape(300, 1000), block_shape=(4, 8), k=3000,
                                     transform="abs"),
            bits(scores).tobytes(), stats,
        )
    monkeypatch.delenv("PRUNEPLUG_CPU_ISA")
    first = results[levels[0]]
    for level in levels[1:]:
        for a, b in zip(first, results[level]):
            if isinstance(a, np.ndarray):
                assert np.array_equal(a, b), level
            else:
                assert a == b, level


# ---------------------------------------------------------------------------------------------
# 64-bit index arithmetic
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2**31 - 1, 2**31, 2**31 + 7, 3_000_000_019, 2**40 + 3, 2**62 + 11])
def test_index_math_beyond_2_31(n):
    """The partition and sampling arithmetic of the kernels with sizes beyond 2^31 (no allocation):
    parts tile [0, n) exactly; sample positions are increasing, in range, one per stride."""
    begin, end, pos = ffi.new("int64_t *"), ffi.new("int64_t *"), ffi.new("int64_t *")
    for parts in (1, 2, 3, 7, 64):
        prev = 0
        for t in range(parts):
            assert lib.pp_debug_index_math(n, parts, t, 0, 0, begin, end, pos) == 0
            assert begin[0] == prev and end[0] >= begin[0]
            assert end[0] - begin[0] in (n // parts, n // parts + 1)
            prev = end[0]
        assert prev == n
    s = 1 << 18
    stride = n // s
    last = -1
    for i in (0, 1, 2, s // 2, s - 2, s - 1):
        assert lib.pp_debug_index_math(n, 1, 0, s, i, begin, end, pos) == 0
        assert i * stride <= pos[0] < (i + 1) * stride <= n
        assert pos[0] > last
        last = pos[0]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("PRUNEPLUG_BIG_TESTS") != "1", reason="set PRUNEPLUG_BIG_TESTS=1 (needs ~5 GB)")
def test_real_array_beyond_2_31_elements():
    """2^31 + 2^22 float16 weights: the kept entries and the tie boundary lie beyond index 2^31."""
    n = 2**31 + 2**22
    w = np.empty(n, dtype=np.float16)
    pattern = np.arange(4096, dtype=np.uint16).view(np.float16)  # 4096 distinct increasing magnitudes
    reps = n // pattern.size
    w[: reps * pattern.size].reshape(reps, -1)[:] = pattern
    k = n - 500  # keep the last 500 occurrences of the largest value (ties: lower indices pruned)
    cpu.pruneplug_prune_unstructured(weights=w, k=k, transform="abs")
    kept = np.flatnonzero(w.view(np.uint16))
    expected = (np.arange(reps) * 4096 + 4095)[-500:]
    assert np.array_equal(kept, expected)
    assert kept.min() > 2**31


# ---------------------------------------------------------------------------------------------
# N:M, block, apply, importance against the reference
# ---------------------------------------------------------------------------------------------
NM_CASES = [
    ((1000, 16), 1, 2, 4),
    ((999, 8), 1, 2, 4),
    ((64, 4, 33), 1, 2, 4),
    ((8, 12), 0, 1, 4),
    ((7, 9), 1, 2, 3),
    ((40, 30), 1, 3, 5),
    ((20, 64, 3), 1, 4, 8),
    ((10, 64), 1, 5, 16),
    ((6, 99), 1, 17, 33),
    ((3, 128, 5), 1, 20, 64),
    ((12, 10), 1, 0, 2),
    ((12, 10), 1, 1, 1),
    ((12, 10), 1, 0, 1),
    ((12, 10), 1, 5, 5),
    ((0, 8), 1, 2, 4),
    ((4096, 12), 0, 2, 4),
    ((5, 7, 200_000 // 35 * 1), 1, 1, 7),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis,n,m", NM_CASES)
def test_nm_matches_reference(dtype, shape, axis, n, m):
    values = tricky_array(shape, dtype, seed=sum(shape) + n + m)
    for transform in TRANSFORMS:
        expected = ref.pruneplug_nm_mask(values=values, n=n, m=m, axis=axis, transform=transform, out=None)
        got = cpu.pruneplug_nm_mask(values=values, n=n, m=m, axis=axis, transform=transform)
        assert np.array_equal(got, expected), transform
        out = np.zeros(values.shape, dtype=bool)
        assert cpu.pruneplug_nm_mask(values=values, n=n, m=m, axis=axis, transform=transform, out=out) is out
        assert np.array_equal(out, expected)
        w = values.copy()
        cpu.pruneplug_prune_nm(weights=w, n=n, m=m, axis=axis, transform=transform)
        r = values.copy()
        ref.pruneplug_apply_mask(weights=r, mask=expected)
        assert_bits_equal(w, r, f"prune_nm {transform}")


BLOCK_CASES = [((64, 48), (4, 4)), ((64, 48), (1, 48)), ((64, 48), (64, 1)), ((30, 20), (3, 5)),
               ((1, 1), (1, 1)), ((0, 4), (1, 4)), ((300, 700), (1, 1)), ((512, 300), (512, 1))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,block", BLOCK_CASES)
def test_block_matches_reference(dtype, shape, block):
    values = tricky_array(shape, dtype, seed=shape[0] * 7 + block[1])
    nb = (shape[0] // block[0]) * (shape[1] // block[1])
    for transform in TRANSFORMS:
        for k in sorted({0, nb // 3, nb // 2, nb}):
            expected = ref.pruneplug_block_mask(values=values, block_shape=block, k=k, transform=transform, out=None)
            got = cpu.pruneplug_block_mask(values=values, block_shape=block, k=k, transform=transform)
            assert np.array_equal(got, expected), (transform, k)


def test_block_nan_sums_rank_highest():
    values = np.array([[np.inf, -np.inf, 1.0, 2.0], [0.5, 0.25, -np.inf, np.inf]], dtype=np.float32)
    for k in range(5):
        expected = ref.pruneplug_block_mask(values=values, block_shape=(1, 2), k=k, transform="identity", out=None)
        assert np.array_equal(cpu.pruneplug_block_mask(values=values, block_shape=(1, 2), k=k, transform="identity"),
                              expected), k


@pytest.mark.parametrize("dtype", DTYPES)
def test_apply_mask_bits(dtype):
    values = data("tricky", 300_001, dtype, seed=1)
    values[::97] = np.nan
    mask = np.random.default_rng(2).random(values.size) < 0.5
    w = values.copy()
    cpu.pruneplug_apply_mask(weights=w, mask=mask)
    r = values.copy()
    ref.pruneplug_apply_mask(weights=r, mask=mask)
    assert_bits_equal(w, r, "apply_mask")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["l1", "l2"])
@pytest.mark.parametrize("kind,n", [("tricky", 0), ("tricky", 1), ("tricky", 4095), ("tricky", 300_001),
                                    ("extreme", 10_000), ("constant", 100_003)])
def test_importance_matches_reference(dtype, method, kind, n):
    values = data(kind, n, dtype, seed=n)
    with np.errstate(invalid="ignore"):
        values[~np.isfinite(values.astype(np.float64))] = 1
    scores, stats = cpu.pruneplug_importance(weights=values, transform=check_method(method))
    with np.errstate(over="ignore", invalid="ignore"):
        rscores, rstats = ref.pruneplug_importance(weights=values, transform=check_method(method))
    assert_bits_equal(scores, rscores, "scores")
    assert stats[0] == rstats[0] or (np.isnan(stats[0]) and np.isnan(rstats[0]))
    assert stats[1] == rstats[1] or (np.isnan(stats[1]) and np.isnan(rstats[1]))
    for got, want in zip(stats[2:], rstats[2:]):
        if np.isnan(want) or np.isinf(want):
            assert (np.isnan(got) and np.isnan(want)) or got == want
        else:
            assert abs(got - want) <= 1e-12 * abs(want) + 1e-300, (got, want)


def test_backend_declaration():
    info = cpu.pruneplug_backend_info()
    assert info.name == "cpu" and info.available and info.priority == 100
    assert {"prune_unstructured", "prune_nm", "unstructured_mask", "nm_mask", "block_mask", "apply_mask",
            "importance"} <= info.operations
    assert pp.backends()  # the registry lists it


# ---------------------------------------------------------------------------------------------
# fork safety: libgomp's thread pool does not survive fork (the child would wait for threads that
# do not exist there); the C library marks a forked child and runs it on the calling thread.
# Each scenario runs in a subprocess with OMP_NUM_THREADS=4 (a pool of several threads on any
# machine) and a timeout, so that a hang fails the test instead of hanging CI.
# ---------------------------------------------------------------------------------------------
_FORK_SETUP = (
    "import os, signal, numpy as np, pruneplug as pp\n"
    "w = np.random.default_rng(0).standard_normal(1 << 21).astype(np.float32)\n"  # > PP_PAR_MIN
    "expected = pp.prune(w, sparsity=0.5, backend='cpu')\n"  # the parent's pool now exists
    "def child_ok():\n"
    "    signal.alarm(30)\n"  # a hang ends the child with SIGALRM
    "    got = pp.prune(w, sparsity=0.5, backend='cpu')\n"
    "    mask = pp.generate_nm_mask(pp.importance(w.reshape(-1, 4), backend='cpu'), 2, 4, backend='cpu')\n"
    "    ok = np.array_equal(got, expected) and mask.nnz == w.size // 2\n"
    "    return bool(ok and np.array_equal(pp.prune(w, sparsity=0.5, backend='numpy'), expected))\n"
)

_FORK_RAW = _FORK_SETUP + (
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os._exit(0 if child_ok() else 3)\n"
    "_, status = os.waitpid(pid, 0)\n"
    "assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f'child status {status}'\n"
    "assert np.array_equal(pp.prune(w, sparsity=0.5, backend='cpu'), expected)\n"  # the parent still works
    "print('ok')\n"
)

_FORK_MULTIPROCESSING = _FORK_SETUP + (
    "import multiprocessing as mp\n"
    "if __name__ == '__main__':\n"
    "    with mp.get_context('fork').Pool(2) as pool:\n"
    "        results = pool.starmap_async(child_ok, [()] * 4).get(timeout=60)\n"
    "    assert results == [True] * 4, results\n"
    "    print('ok')\n"
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX-only")
@pytest.mark.parametrize("script", [_FORK_RAW, _FORK_MULTIPROCESSING], ids=["os.fork", "multiprocessing-fork"])
def test_forked_child_after_a_parallel_prune(script):
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="4")
    try:
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:  # pragma: no cover - the defect this test guards against
        pytest.fail("the forked child hung")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]

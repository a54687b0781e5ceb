"""The CUDA backend's kernels and launch code executed in the CPU emulator (tools/cuda_emu).

``CudaBackend(numpy, cuda_emu.Module)`` runs the backend's real launch code against NumPy arrays;
the emulator compiles the same ``.cu`` text with g++ and runs every CUDA thread as a fiber,
honouring barriers, warp collectives and atomics. Registered as the ``cuda-emu`` backend, it goes
through the conformance kit (bit for bit against the NumPy reference) and the targeted tests below:
multi-block, multi-pass selection, every N:M fast path and the generic path along every axis,
misaligned views (scalar fallbacks), thread schedules, CuPy's -ftz=true, errors, out-of-memory,
the launch budget; and 2:4 compression (compress24.cu: the kit's 2:4 checks, int8, both layouts,
errors, misaligned inputs, launch arguments). None of this ran on a GPU.

``CUDA_EMU_SANITIZE=1`` (see test_sanitized_subset) builds kernels with ASan/UBSan; the racecheck
(``_racecheck_backend``) flags a read or write of a word another thread of the block writes with no
barrier between. The loader is as strict as CuPy's: a kernel outside ``name_expressions`` does not
exist (test_launched_kernels_are_exactly_the_instantiated_ones).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from pruneplug.selection import DIGITS, KEY_BITS
from pruneplug.validation import check_method
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cuda_helpers import EMU_NAME, ROOT, emu_load_module, emulator_available, register_emulated  # noqa: E402

_REASON = emulator_available()
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)

import cuda_emu  # noqa: E402

import pruneplug as pp  # noqa: E402
import pruneplug_backends.numpy as ref  # noqa: E402
import pruneplug_backends.numpy.compress24 as ref24  # noqa: E402
from pruneplug.errors import (  # noqa: E402
    DeviceMemoryError,
    InvalidArgumentError,
    NonFiniteError,
    NotNMSparseError,
    UnsupportedDtypeError,
)
from pruneplug.sparse24 import compress_24, decompress_24, format_of, prune_24  # noqa: E402
from pruneplug.testing import np_dtype, parametrize_backend_checks, run_check, tricky_array  # noqa: E402
from pruneplug.testing_sparse24 import CHECKS as SPARSE24_CHECKS  # noqa: E402
from pruneplug.testing_sparse24 import sparse_24  # noqa: E402
from pruneplug_backends.cuda import _backend  # noqa: E402

PLUGIN, BACKEND = register_emulated()
DTYPES = ("float16", "bfloat16", "float32", "float64")
TRANSFORMS = ("abs", "square", "identity")
KIT_LARGE = int(os.environ.get("PRUNEPLUG_EMU_LARGE", "40000"))


def same(a, b, what=""):
    """Same shape, dtype and bytes."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, f"{what}: {a.shape} {a.dtype} != {b.shape} {b.dtype}"
    if a.size == 0:
        return
    ab = np.ascontiguousarray(a).view(np.uint8).reshape(a.size, -1)
    bb = np.ascontiguousarray(b).view(np.uint8).reshape(b.size, -1)
    diff = np.flatnonzero((ab != bb).any(axis=1))
    assert diff.size == 0, f"{what}: {diff.size} of {a.size} differ; first at flat index {diff[0]}"


def scores_for(shape, dtype, transform, seed):
    x = tricky_array(shape, dtype, seed=seed)
    if transform == "identity" and x.size > 4:
        x.ravel()[[1, 3]] = [np.inf, -np.inf]
    return x


# ---------------------------------------------------------------------------------------------
# the conformance kit over the emulated backend
# ---------------------------------------------------------------------------------------------
# The 2:4 checks are in the kit's default list already; naming them keeps them if that changes.
@parametrize_backend_checks(EMU_NAME, large_size=KIT_LARGE, extra=SPARSE24_CHECKS)
def test_conformance_emulated(backend_check):
    run_check(backend_check)


# ---------------------------------------------------------------------------------------------
# every entry point at its edge values; the launched kernels are exactly the instantiated ones
# ---------------------------------------------------------------------------------------------
# The emulator's get_function is as strict as CuPy's (a template outside name_expressions is
# CUDA_ERROR_NOT_FOUND), so any call below that launches an uninstantiated kernel raises.
@pytest.mark.parametrize("pattern", ("row", "column", "block(16,16)", "block(2,4)", "unstructured", "2:4"))
@pytest.mark.parametrize("sparsity", (0.0, 1.0, 0.5))
def test_public_api_at_edge_sparsities(pattern, sparsity):
    """Issue 8 item 1: row/column/block masks at sparsity 0 and 1 launched check_nonfinite<4, 3>,
    which was never instantiated (the emulator used to compile any name it was asked for)."""
    x = tricky_array((32, 48), "float32", seed=40)
    kwargs = {} if pattern == "2:4" else {"sparsity": sparsity}
    for method in ("l1", "l2"):
        for inplace in (False, True):
            got, gmask = pp.prune(x.copy(), pattern=pattern, method=method, backend=EMU_NAME, inplace=inplace,
                                  return_mask=True, **kwargs)
            exp, emask = pp.prune(x.copy(), pattern=pattern, method=method, backend="numpy", return_mask=True,
                                  **kwargs)
            same(got, exp, f"{pattern} {sparsity} {method}")
            same(gmask.data, emask.data, f"{pattern} {sparsity} {method} mask")
            same(pp.prune(x.copy(), pattern=pattern, method=method, backend=EMU_NAME, inplace=inplace, **kwargs),
                 exp, f"{pattern} {sparsity} {method} fused")
    scores = pp.importance(x, "l1", backend="numpy").values
    for gen in (lambda s, b: pp.generate_row_mask(s, sparsity, backend=b),
                lambda s, b: pp.generate_column_mask(s, sparsity, backend=b),
                lambda s, b: pp.generate_block_mask(s, (16, 16), sparsity, backend=b),
                lambda s, b: pp.generate_unstructured_mask(s, sparsity, backend=b)):
        same(gen(scores, EMU_NAME).data, gen(scores, "numpy").data, f"mask at {sparsity}")


def _entry_point_sweep(be, dtypes=DTYPES, dtypes24=("float16", "bfloat16", "float32", "int8")):
    """Call every backend entry point with every dtype, transform and kernel path, at its edge
    values (k = 0, 1, n - 1, n; 0:m and m:m; empty inputs), comparing with the reference."""
    for dtype in dtypes:
        x = tricky_array((16, 48), dtype, seed=41)  # 48 = 3 * 16: every fast M and a generic one
        n = x.size
        for method in ("l1", "l2"):
            same(be.importance(x, check_method(method))[0], ref.pruneplug_importance(weights=x, transform=check_method(method))[0], dtype)
            be.importance(x[:0], check_method(method))
        for transform in TRANSFORMS:
            pruning = transform != "identity"
            for k in (0, 1, n // 2, n - 1, n):
                exp = ref.pruneplug_unstructured_mask(values=x, k=k, transform=transform)
                same(be.unstructured_mask(x, k, transform), exp, f"{dtype} {transform} k={k}")
                same(be.unstructured_mask(x, k, transform, np.zeros(x.shape, bool)), exp, "out=")
                if pruning:
                    w = x.copy()
                    be.prune_unstructured(w, k, transform)
                    same(w, np.where(exp, x, np.zeros((), x.dtype)), f"prune {dtype} {transform} k={k}")
            be.unstructured_mask(x[:0], 0, transform)
            for nn, m, axis in ((0, 2, 0), (1, 2, 1), (2, 4, 0), (4, 4, 1), (3, 8, 0), (8, 8, 1), (0, 16, 1),
                                (16, 16, 0), (1, 3, 1), (3, 3, 1), (2, 6, 1)):
                exp = ref.pruneplug_nm_mask(values=x, n=nn, m=m, axis=axis, transform=transform)
                same(be.nm_mask(x, nn, m, axis, transform), exp, f"{dtype} {transform} {nn}:{m} axis {axis}")
                same(be.nm_mask(x, nn, m, axis, transform, np.zeros(x.shape, bool)), exp, "out=")
                if pruning:
                    w = x.copy()
                    be.prune_nm(w, nn, m, axis, transform)
                    same(w, np.where(exp, x, np.zeros((), x.dtype)), f"prune {nn}:{m}")
            be.nm_mask(x[:0], 2, 4, 1, transform)
            for block in ((1, 1), (2, 4), (16, 1), (1, 48), (16, 48)):
                nb = (16 // block[0]) * (48 // block[1])
                for k in sorted({0, 1, nb // 2, nb - 1, nb}):
                    exp = ref.pruneplug_block_mask(values=x, block_shape=block, k=k, transform=transform)
                    same(be.block_mask(x, block, k, transform), exp, f"{dtype} {transform} {block} k={k}")
                    same(be.block_mask(x, block, k, transform, np.zeros(x.shape, bool)), exp, "out=")
            for k in (0, 1, 24, 47, 48):  # per-row selection: k of every row's 48
                exp = ref.pruneplug_row_mask(values=x, k=k, transform=transform)
                same(be.row_mask(x, k, transform), exp, f"rows {dtype} {transform} k={k}")
        for keys, kinds in _backend.K.KEY_DTYPES.items():  # the exact selection's key histograms
            if dtype in kinds:
                bits = DIGITS[keys][0]
                for transform in ("abs", "square"):
                    args = dict(values=x, transform=transform, keys=keys, shift=KEY_BITS[keys] - bits, bits=bits,
                                prefix=0)
                    same(be.key_histogram(**{**args, "values": x}), ref.pruneplug_key_histogram(**args),
                         f"key histogram {dtype} {transform} {keys}")
        mask = np.random.default_rng(42).random(x.shape) < 0.5
        w, e = x.copy(), x.copy()
        be.apply_mask(w, mask)
        ref.pruneplug_apply_mask(weights=e, mask=mask)
        same(w, e, f"apply {dtype}")
    for dtype in dtypes24:
        for layout in ("ptx", "cutlass"):
            shape = shape24(dtype, layout, 2, 2)
            w = sparse_24(shape, dtype, seed=43)
            values, meta = be.compress_24(w, layout)
            be.decompress_24(values, meta, shape, layout)
            for transform in ("abs", "square"):
                be.prune_compress_24(finite(w), layout, transform)


def test_launched_kernels_are_exactly_the_instantiated_ones():
    """The gate between launch code and name_expressions, derived from the launches themselves:
    the kernel names the launch code asks for over every entry point (at its edge values, every
    dtype, transform and path) are recorded through a loader as strict as CuPy's, and must equal
    the instantiations _kernels.NAME_EXPRESSIONS lists (none missing: CUDA_ERROR_NOT_FOUND on a
    GPU; none unused: an instantiation no launch reaches is dead, or the sweep misses a path)."""
    records = []
    _entry_point_sweep(_recording_backend(records))
    launched = {(name.split("<")[0], name) for name, *_ in records}
    instantiated = {(name.split("<")[0], name) for names in _backend.K.NAME_EXPRESSIONS.values() for name in names}
    assert not launched - instantiated, f"launched but not instantiated: {sorted(launched - instantiated)}"
    assert not instantiated - launched, (
        f"instantiated but never launched: {sorted(instantiated - launched)} (dead instantiations, or a new entry "
        f"point or path that _entry_point_sweep does not call yet: add it there)")


# ---------------------------------------------------------------------------------------------
# exact-k selection: several blocks, tiles and candidate rounds
# ---------------------------------------------------------------------------------------------
def quantised(n, dtype, seed, levels=300):
    rng = np.random.default_rng(seed)
    return (rng.integers(-levels, levels, n).astype(np.float64) / 64).astype(np_dtype(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_selection_multiblock(dtype, transform):
    n = 50_003  # 13 tiles, several blocks; a tied threshold spread over many tiles
    x = quantised(n, dtype, seed=1) if transform != "square" else tricky_array((n,), dtype, seed=2)
    for k in (1, 777, n // 2, n - 3, n - 1):
        got = BACKEND.unstructured_mask(x, k, transform)
        exp = ref.pruneplug_unstructured_mask(values=x, k=k, transform=transform)
        same(got, exp, f"{dtype} {transform} k={k}")
        w = x.copy()
        BACKEND.prune_unstructured(w, k, transform)
        e = x.copy()
        ref.pruneplug_apply_mask(weights=e, mask=exp)
        same(w, e, f"prune {dtype} {transform} k={k}")


@pytest.mark.parametrize("dtype", ("float32", "float64", "float16"))
def test_selection_degenerate_all_equal(dtype):
    """Every key is a candidate and ties cross every tile: the boundary tile ranks them."""
    x = np.full(20_000, 0.5, dtype=np_dtype(dtype))
    x[::7] = -0.5
    for k in (1, 9_999, 19_999):
        same(BACKEND.unstructured_mask(x, k, "abs"), ref.pruneplug_unstructured_mask(values=x, k=k, transform="abs"))


def _racecheck_backend(edit=lambda code: code):
    """The backend with every kernel built for the emulator's racecheck (a read or write of a word
    that another thread of the block writes in the same barrier interval raises KernelError)."""
    def load(code, options, names):
        return cuda_emu.Module(edit(code), options=tuple(options), name_expressions=list(names), racecheck=True)

    return _backend.CudaBackend(np, load, name="racecheck")


_RACE_FIXED = """    const u64 krem = first ? (u64)k_minus_1 : ws[WS_KREM];
    const u64 prefix = first ? 0ull : ws[WS_PREFIX];
    int b0, b1;
    u64 s;
    u64 below = share_exclusive_prefix<int>(ghist, nbins, &b0, &b1, &s, tsum);"""
_RACE_BUGGY = """    int b0, b1;
    u64 s;
    u64 below = share_exclusive_prefix<int>(ghist, nbins, &b0, &b1, &s, tsum);
    const u64 krem = first ? (u64)k_minus_1 : ws[WS_KREM];
    const u64 prefix = first ? 0ull : ws[WS_PREFIX];"""


@pytest.mark.slow
def test_racecheck_finds_the_radix_select_race():
    """The racecheck catches issue 8 item 2: radix_select with its workspace reads moved
    back after the barriers (the old code) is a race for the racecheck under the default (forward)
    schedule, and on few-level data too, where no schedule changed the result."""
    assert _RACE_FIXED in _backend.K.source("select.cu")
    be = _racecheck_backend(lambda code: code.replace(_RACE_FIXED, _RACE_BUGGY))
    slots = "|".join(str(8 * _backend.K.WS[name]) for name in ("PREFIX", "KREM"))  # bytes of ws[]
    for data in (quantised(20_000, "float32", seed=3, levels=40), spread(20_000, seed=1)):
        with pytest.raises(cuda_emu.KernelError, match=rf"radix_select: .*racecheck: (write-read|read-write) race"
                                                        rf".*byte ({slots}) of array argument 1"):
            be.unstructured_mask(data, 1_000, "abs")


@pytest.mark.slow
def test_no_race_in_any_kernel():
    """Every entry point (selection, N:M, blocks, importance, apply, 2:4) under the racecheck."""
    be = _racecheck_backend()
    x = spread(20_000, seed=2)
    for k in (1, 1_000, 12_345, 19_999):
        same(be.unstructured_mask(x, k, "abs"), ref.pruneplug_unstructured_mask(values=x, k=k, transform="abs"))
    _entry_point_sweep(be, dtypes=("float32", "float16"), dtypes24=("bfloat16",))


def spread(n, seed):
    """float32 uniform in [1, 2): 2^23 distinct keys, so the candidates of every selection round
    fall into many bins and every thread of radix_select owns some (few-level data puts them all
    into one bin, where a late reader of the workspace cannot go wrong)."""
    return np.random.default_rng(seed).uniform(1.0, 2.0, n).astype(np.float32)


SCHEDULE_CASES = [  # (data, n, k): issue 8 item 2 reproduced the race with spread data, n = 200,000
    ("levels", 30_011, 12_345),
    ("spread", 30_011, 12_345),
    ("spread", 4_099, 1),
    ("spread", 50_000, 49_999),
    ("spread", 200_000, 1_000),
    ("spread", 200_000, 123_456),
]


@pytest.mark.parametrize("data,n,k", SCHEDULE_CASES)
@pytest.mark.parametrize("schedule,seed", [("forward", 0), ("reverse", 0), ("random", 7), ("random", 8)])
def test_selection_schedules(schedule, seed, data, n, k):
    x = quantised(n, "float32", seed=3, levels=40) if data == "levels" else spread(n, seed=n + k)
    if data == "spread":
        x[::2] *= -1  # identity keys: both signs
    with cuda_emu.using_schedule(schedule, seed=seed):
        for transform in ("abs", "identity"):
            exp = ref.pruneplug_unstructured_mask(values=x, k=k, transform=transform)
            got = BACKEND.unstructured_mask(x, k, transform)
            assert int((~got).sum()) == k, f"{schedule}: {int((~got).sum())} pruned, expected {k}"
            same(got, exp, f"{schedule} {transform}")
            w = x.copy()
            BACKEND.prune_unstructured(w, k, transform if transform != "identity" else "abs")
        s, stats = BACKEND.importance(x, "square")
        rs, rstats = ref.pruneplug_importance(weights=x, transform="square")
        same(s, rs, f"importance {schedule}")
        assert stats[:2] == rstats[:2]


def test_selection_launch_and_pass_budget():
    """The launch count does not grow with n, and exactly three kernels read the input."""
    calls = []

    def counting_loader(code, options, names):
        mod = emu_load_module()(code, options, names)

        class Counted:
            def get_function(self, name):
                fn = mod.get_function(name)

                def call(grid, block, args, **kw):
                    calls.append(name)
                    return fn(grid, block, args, **kw)

                return call

        return Counted()

    be = _backend.CudaBackend(np, counting_loader, name="count")
    counts = {}
    for n in (5_000, 60_000):
        calls.clear()
        x = tricky_array((n,), "float32", seed=4)
        be.unstructured_mask(x, n // 3, "abs")
        counts[n] = list(calls)
    assert counts[5_000] == counts[60_000], counts
    readers = [c for c in counts[5_000] if c.split("<")[0] in ("radix_hist0", "radix_compact", "radix_mask")]
    assert len(readers) == 3, counts[5_000]
    # float32 keys: 12 + 12 + 8 bits -> one input digit and two candidate rounds
    assert [c.split("<")[0] for c in counts[5_000]] == [
        "radix_hist0", "radix_select", "radix_compact", "cand_hist", "radix_select", "cand_hist", "radix_select",
        "eq_count", "scan_tiles", "radix_mask"], counts[5_000]


# ---------------------------------------------------------------------------------------------
# N:M: every fast path, the generic path, every axis
# ---------------------------------------------------------------------------------------------
NM = [(1, 2), (2, 4), (3, 8), (5, 16), (0, 4), (16, 16), (2, 3), (7, 32)]


@pytest.mark.parametrize("n,m", NM)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nm_every_axis(n, m, dtype):
    for transform in TRANSFORMS:
        for shape, axis in (((3, 2 * m, 5), 0), ((3, 2 * m, 5), 1), ((2, 5, 3 * m), 2), ((4, 3, 2 * m), 0)):
            if shape[axis] % m:
                shape = tuple(2 * m if i == axis else s for i, s in enumerate(shape))
            x = scores_for(shape, dtype, transform, seed=m + n)
            exp = ref.pruneplug_nm_mask(values=x, n=n, m=m, axis=axis, transform=transform)
            same(BACKEND.nm_mask(x, n, m, axis, transform), exp, f"{n}:{m} {dtype} {transform} {shape} axis {axis}")
            out = np.zeros(shape, bool)
            assert BACKEND.nm_mask(x, n, m, axis, transform, out) is out
            same(out, exp, "out=")
            if transform != "identity":
                w = x.copy()
                BACKEND.prune_nm(w, n, m, axis, transform)
                e = x.copy()
                ref.pruneplug_apply_mask(weights=e, mask=exp)
                same(w, e, f"prune {n}:{m} {dtype} {transform} axis {axis}")


@pytest.mark.parametrize("m", (2, 4, 8, 16))
def test_nm_large_and_schedules(m):
    x = tricky_array((64, 40 * m), "float32", seed=m)
    exp = ref.pruneplug_nm_mask(values=x, n=m // 2, m=m, axis=1, transform="abs")
    for schedule in cuda_emu.SCHEDULES:
        with cuda_emu.using_schedule(schedule, seed=3):
            same(BACKEND.nm_mask(x, m // 2, m, 1, "abs"), exp, schedule)
    exp0 = ref.pruneplug_nm_mask(values=x, n=1, m=m, axis=0, transform="square")
    same(BACKEND.nm_mask(x, 1, m, 0, "square"), exp0, "axis 0")


# ---------------------------------------------------------------------------------------------
# misaligned views: the scalar fallbacks of the 16-byte paths
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_misaligned_views(dtype):
    base = tricky_array((9_001,), dtype, seed=5)
    x = base[1:]  # C-contiguous, data pointer 2/4/8 bytes past a 16-byte boundary
    for k in (10, 4_500):
        same(BACKEND.unstructured_mask(x, k, "abs"), ref.pruneplug_unstructured_mask(values=x, k=k, transform="abs"))
    outbase = np.zeros(9_001, bool)
    out = outbase[1:]
    BACKEND.unstructured_mask(x, 4_500, "square", out)
    same(out, ref.pruneplug_unstructured_mask(values=x, k=4_500, transform="square"))
    x4 = base[1:1 + 4 * 2000].reshape(2000, 4)
    same(BACKEND.nm_mask(x4, 2, 4, 1, "abs"), ref.pruneplug_nm_mask(values=x4, n=2, m=4, axis=1, transform="abs"))
    s, stats = BACKEND.importance(x, "abs")
    rs, rstats = ref.pruneplug_importance(weights=x, transform="abs")
    same(s, rs)
    w = base.copy()[1:]
    mask = np.random.default_rng(1).random(w.shape) < 0.5
    e = w.copy()
    BACKEND.apply_mask(w, mask)
    ref.pruneplug_apply_mask(weights=e, mask=mask)
    same(w, e)


# ---------------------------------------------------------------------------------------------
# importance statistics on several blocks
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ("l1", "l2"))
def test_importance_multiblock(dtype, method):
    x = tricky_array((70_001,), dtype, seed=6)
    s, (lo, hi, mean, std) = BACKEND.importance(x, check_method(method))
    rs, (rlo, rhi, rmean, rstd) = ref.pruneplug_importance(weights=x, transform=check_method(method))
    same(s, rs)
    assert (lo, hi) == (rlo, rhi)
    assert abs(mean - rmean) <= 1e-12 * abs(rmean) and abs(std - rstd) <= 1e-12 * abs(rstd), (mean, rmean, std, rstd)
    s2, stats2 = BACKEND.importance(x, check_method(method))
    assert stats2 == (lo, hi, mean, std), "statistics must be deterministic"


# ---------------------------------------------------------------------------------------------
# CuPy's -ftz=true, mirrored: the results must not change
# ---------------------------------------------------------------------------------------------
def test_results_do_not_depend_on_ftz():
    def cupy_like(code, options, names):  # CuPy appends -ftz=true after the backend's options
        return emu_load_module()(code, tuple(options) + ("-ftz=true",), names)

    be = _backend.CudaBackend(np, cupy_like, name="ftz")
    for dtype in ("float32", "bfloat16", "float64"):
        x = tricky_array((5_003,), dtype, seed=8)
        x[::5] = (np.arange(x[::5].size) % 7 + 1) * {"float32": 2.0**-140, "bfloat16": 2.0**-130,
                                                       "float64": 2.0**-1060}[dtype]
        for transform in ("abs", "square"):
            same(be.unstructured_mask(x, 2_000, transform),
                 ref.pruneplug_unstructured_mask(values=x, k=2_000, transform=transform), f"ftz {dtype} {transform}")
        for method in ("l1", "l2"):
            s, st = be.importance(x, check_method(method))
            rs, rst = ref.pruneplug_importance(weights=x, transform=check_method(method))
            same(s, rs, f"ftz importance {dtype} {method}")
            assert st[:2] == rst[:2]


# ---------------------------------------------------------------------------------------------
# block masks with many blocks (the selection over block-sum keys spans several tiles)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("block", ((1, 1), (2, 4), (1, 64), (96, 1)))
def test_block_mask_many_blocks(block):
    x = quantised(96 * 64, "float32", seed=9, levels=20).reshape(96, 64)
    nb = (96 // block[0]) * (64 // block[1])
    for k in (1, nb // 2, nb - 1):
        for transform in ("abs", "identity"):
            same(BACKEND.block_mask(x, block, k, transform),
                 ref.pruneplug_block_mask(values=x, block_shape=block, k=k, transform=transform), f"{block} k={k}")


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_counts_and_nothing_written(dtype):
    x = tricky_array((30_000,), dtype, seed=10)
    x[[29_999, 17, 4_096, 12_000]] = [np.nan, np.inf, -np.inf, np.nan]
    for transform, count, first in (("abs", 4, 17), ("identity", 2, 12_000)):
        with pytest.raises(NonFiniteError) as exc:
            BACKEND.unstructured_mask(x, 100, transform)
        with pytest.raises(NonFiniteError) as rexc:
            ref.pruneplug_unstructured_mask(values=x, k=100, transform=transform)
        assert (exc.value.count, exc.value.first_index) == (count, first) and str(exc.value) == str(rexc.value)
        out = np.ones(x.shape, bool)
        with pytest.raises(NonFiniteError):
            BACKEND.nm_mask(x, 1, 4, 0, transform, out)
        assert out.all(), "nm_mask wrote into out before raising"
        with pytest.raises(NonFiniteError):
            BACKEND.unstructured_mask(x, 100, transform, out)
        assert out.all(), "unstructured_mask wrote into out before raising"
    w = x.copy()
    for call in (lambda: BACKEND.prune_unstructured(w, 100, "abs"), lambda: BACKEND.prune_nm(w, 2, 4, 0, "square"),
                 lambda: BACKEND.importance(w, "square"), lambda: BACKEND.block_mask(w.reshape(100, 300), (2, 2), 5, "abs")):
        with pytest.raises(NonFiniteError):
            call()
        same(w, x, "weights changed by a failed call")


class _TinyMemory:
    """NumPy whose allocations above `limit` bytes fail like a full device."""

    def __init__(self, limit):
        self.limit = limit

    def __getattr__(self, name):
        return getattr(np, name)

    def _guard(self, shape, dtype):
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if nbytes > self.limit:
            raise MemoryError(f"Out of memory allocating {nbytes} bytes")

    def zeros(self, shape, dtype=float):
        self._guard(shape, dtype)
        return np.zeros(shape, dtype)

    def empty(self, shape, dtype=float):
        self._guard(shape, dtype)
        return np.empty(shape, dtype)


def test_out_of_device_memory():
    be = _backend.CudaBackend(_TinyMemory(40_000), emu_load_module(), name="tiny")
    x = np.full(30_000, 1.0, np.float32)  # every key is a candidate: 240 kB of candidates
    w = x.copy()
    with pytest.raises(DeviceMemoryError, match=r"240024 bytes|120012 bytes|bytes") as exc:
        be.prune_unstructured(w, 10, "abs")
    assert "bytes" in str(exc.value)
    same(w, x, "a prune that ran out of memory wrote")
    out = np.ones(30_000, bool)
    with pytest.raises(DeviceMemoryError):
        be.unstructured_mask(x, 10, "abs", out)
    assert out.all()
    assert isinstance(exc.value, MemoryError)


# ---------------------------------------------------------------------------------------------
# 2:4 compression (compress24.cu) through the backend's launch code
# ---------------------------------------------------------------------------------------------
DTYPES24 = ("float16", "bfloat16", "float32", "int8")
CASES24 = [(d, lay) for d in DTYPES24 for lay in ("ptx", "cutlass")]


def shape24(dtype, layout, row_units, col_units):
    fmt = format_of(dtype)
    r = fmt.row_group if layout == "cutlass" else 1
    c = fmt.columns_per_word * (2 if layout == "cutlass" else 1)
    return r * row_units, c * col_units


def finite(w):
    """``w`` with its NaN (sparse_24 puts a few among the kept values) replaced by zeros."""
    if w.dtype == np.int8:
        return w
    return np.where(np.isnan(w.astype(np.float64)), np.zeros((), w.dtype), w)


def prunable(shape, dtype, seed):
    if dtype == "int8":
        w = np.random.default_rng(seed).integers(-128, 128, shape).astype(np.int8)
        w[w % 7 == 0] = -128
        return w
    return tricky_array(shape, dtype, seed=seed)


def same_error(call, ref_call, error):
    with pytest.raises(error) as got:
        call()
    with pytest.raises(error) as exp:
        ref_call()
    assert str(got.value) == str(exp.value)
    return got.value


@pytest.mark.parametrize("dtype,layout", CASES24)
def test_compress24_matches_reference(dtype, layout):
    """Several blocks of 256 threads (one per metadata word), every thread schedule, round trip."""
    shape = shape24(dtype, layout, 96 if layout == "ptx" else 3, 40 if layout == "ptx" else 20)
    w = sparse_24(shape, dtype, seed=21)
    rv, rm = ref24.compress(w, layout)
    for schedule in cuda_emu.SCHEDULES:
        with cuda_emu.using_schedule(schedule, seed=5):
            values, meta = BACKEND.compress_24(w, layout)
            same(values, rv, f"{dtype} {layout} values {schedule}")
            same(meta, rm, f"{dtype} {layout} metadata {schedule}")
            same(BACKEND.decompress_24(values, meta, shape, layout), ref24.decompress(rv, rm, shape, layout),
                 f"{dtype} {layout} dense {schedule}")
    for transform in ("abs", "square"):
        x = prunable(shape, dtype, seed=22)
        before = x.copy()
        gv, gm = BACKEND.prune_compress_24(x, layout, transform)
        ev, em = ref24.prune_compress(x, transform, layout)
        same(gv, ev, f"prune {dtype} {layout} {transform} values")
        same(gm, em, f"prune {dtype} {layout} {transform} metadata")
        same(x, before, "prune_compress_24 modified its input")


@pytest.mark.parametrize("dtype,layout", CASES24)
def test_compress24_errors_name_the_first_group(dtype, layout):
    """Offenders in several blocks: the error (type and message) names the first in C order,
    whatever order the blocks and threads run in."""
    fmt = format_of(dtype)
    shape = shape24(dtype, layout, 96 if layout == "ptx" else 3, 40 if layout == "ptx" else 20)
    w = sparse_24(shape, dtype, seed=23)
    one = np.ones((), w.dtype)
    w[shape[0] - 1, -fmt.m:] = one
    w[shape[0] // 2, 3 * fmt.m: 3 * fmt.m + fmt.m // 2 + 1] = one  # 3 of 4 (2 of 2 for float32)
    w[shape[0] // 2 + 1, :fmt.m] = one
    for schedule in cuda_emu.SCHEDULES:
        with cuda_emu.using_schedule(schedule, seed=6):
            e = same_error(lambda: BACKEND.compress_24(w, layout), lambda: ref24.compress(w, layout), NotNMSparseError)
    assert f"row {shape[0] // 2}, group 3 " in str(e)
    values, meta = ref24.compress(sparse_24(shape, dtype, seed=24), layout)
    unsigned = meta.view(np.uint16 if fmt.meta_dtype == "int16" else np.uint32)
    for nibble in (0x0, 0x5, 0xA, 0xF) + ((0x8, 0xC) if fmt.m == 2 else ()):
        bad = unsigned.copy()
        flat = bad.reshape(-1)
        for pos in (flat.size - 1, flat.size // 2, flat.size // 2 + 1):
            flat[pos] = (int(flat[pos]) & ~0xF00) | (nibble << 8)
        bad_meta = bad.view(meta.dtype)
        for schedule in cuda_emu.SCHEDULES:
            with cuda_emu.using_schedule(schedule, seed=7):
                same_error(lambda: BACKEND.decompress_24(values, bad_meta, shape, layout),
                           lambda: ref24.decompress(values, bad_meta, shape, layout), InvalidArgumentError)


@pytest.mark.parametrize("dtype", ("float16", "bfloat16", "float32"))
@pytest.mark.parametrize("transform", ("abs", "square"))
def test_prune_compress24_non_finite(dtype, transform):
    """NonFiniteError with the reference's count, first index and message, on the fused kernel and
    on the N:M path (bfloat16/float32 squares); the input is untouched."""
    shape = (64, 512)
    w = tricky_array(shape, dtype, seed=25)
    w[[63, 40, 7, 7], [511, 3, 300, 301]] = [np.nan, np.inf, -np.inf, np.nan]
    before = w.copy()
    e = same_error(lambda: BACKEND.prune_compress_24(w, "cutlass", transform),
                   lambda: ref24.prune_compress(w, transform, "cutlass"), NonFiniteError)
    assert (e.count, e.first_index) == (4, 7 * 512 + 300)
    same(w, before, "weights changed by a failed prune_compress_24")


def test_compress24_int8_by_integer_magnitude():
    """int8: |-128| = 128 wins over 127, whatever the transform; int32 metadata words."""
    w = np.tile(np.array([-128, 127, 3, -127, 0, 0, -1, 0], np.int8), (16, 16))
    for layout in ("ptx", "cutlass"):
        for transform in ("abs", "square"):
            gv, gm = BACKEND.prune_compress_24(w, layout, transform)
            ev, em = ref24.prune_compress(w, transform, layout)
            same(gv, ev)
            same(gm, em)
            assert gm.dtype == np.int32 and gv[0, :4].tolist() == [-128, 127, -1, 0]
        dense = BACKEND.decompress_24(gv, gm, w.shape, layout)
        same(dense, ref24.decompress(ev, em, w.shape, layout))


@pytest.mark.parametrize("dtype", DTYPES24)
def test_compress24_misaligned_inputs(dtype):
    """Views whose data is not 16-byte aligned (the kernels load and store 16 bytes) are copied
    to an aligned buffer first, not handed to the device."""
    fmt = format_of(dtype)
    shape = (fmt.row_group, fmt.columns_per_word * 4)
    w = sparse_24(shape, dtype, seed=26)
    size = w.size
    base = np.zeros(size + 16, w.dtype)
    view = base[1:1 + size].reshape(shape)  # C-contiguous, 1 or 2 or 4 bytes past a boundary
    view[...] = w
    assert view.flags.c_contiguous and view.ctypes.data % 16
    records = []
    be = _recording_backend(records)
    rv, rm = ref24.compress(w, "cutlass")
    values, meta = be.compress_24(view, "cutlass")
    same(values, rv)
    same(meta, rm)
    vbase = np.zeros(rv.size + 16, rv.dtype)
    vview = vbase[1:1 + rv.size].reshape(rv.shape)
    vview[...] = rv
    mbase = np.zeros(rm.size * rm.itemsize + 1, np.uint8)
    mview = mbase[1:].view(rm.dtype).reshape(rm.shape)  # not even aligned to its own itemsize
    mview[...] = rm
    same(be.decompress_24(vview, mview, shape, "cutlass"), ref24.decompress(rv, rm, shape, "cutlass"))
    x = prunable(shape, dtype, seed=27)
    xbase = np.zeros(size + 16, x.dtype)
    xview = xbase[1:1 + size].reshape(shape)
    xview[...] = x
    for transform in ("abs", "square"):
        gv, gm = be.prune_compress_24(xview, "ptx", transform)
        ev, em = ref24.prune_compress(x, transform, "ptx")
        same(gv, ev)
        same(gm, em)
    for name, _grid, _block, args in records:
        if name.split("<")[0] in ("compress24", "decompress24", "prune_compress24"):
            for a in args:
                if isinstance(a, np.ndarray):
                    align = 16 if a.dtype == np.uint8 else a.dtype.itemsize
                    assert a.ctypes.data % align == 0, f"{name}: a {a.dtype} argument is misaligned"


@pytest.mark.parametrize("shape", ((0, 64), (32, 0), (0, 0)))
def test_compress24_empty(shape):
    for dtype in ("float16", "float32"):
        w = np.zeros(shape, np_dtype(dtype))
        for layout in ("ptx", "cutlass"):
            rv, rm = ref24.compress(w, layout)
            for values, meta in (BACKEND.compress_24(w, layout), BACKEND.prune_compress_24(w, layout, "square")):
                same(values, rv)
                same(meta, rm)
            same(BACKEND.decompress_24(rv, rm, shape, layout), ref24.decompress(rv, rm, shape, layout))


def _recording_backend(records):
    def loader(code, options, names):
        mod = emu_load_module()(code, options, names)

        class Recorded:
            def get_function(self, name):
                fn = mod.get_function(name)

                def call(grid, block, args, **kw):
                    records.append((name, grid, block, args))
                    return fn(grid, block, args, **kw)

                return call

        return Recorded()

    return _backend.CudaBackend(np, loader, name="recorded")


@pytest.mark.parametrize("dtype", DTYPES24)
def test_compress24_launches_and_arguments(dtype):
    """One launch per operation (two for bfloat16/float32 squares: N:M prune, then compress), one
    thread per metadata word in blocks of 256, and kernel arguments typed as CuPy passes them
    (np.int64 scalars for rows and ncols, unsigned views for the data)."""
    records = []
    be = _recording_backend(records)
    fmt = format_of(dtype)
    rows, cols = 64, fmt.columns_per_word * 70  # 4480 words: 18 blocks, the last one partial
    ncols = cols // fmt.columns_per_word
    w = sparse_24((rows, cols), dtype, seed=28)
    values, meta = be.compress_24(w, "cutlass")
    be.decompress_24(values, meta, (np.int64(rows), np.int64(cols)), "ptx" if dtype == "int8" else "cutlass")
    be.prune_compress_24(finite(w), "ptx", "abs")
    assert [r[0] for r in records] == [
        f"compress24<{_backend.K.DT24[dtype]}, 1>",
        f"decompress24<{_backend.K.DT24[dtype]}, {0 if dtype == 'int8' else 1}>",
        f"prune_compress24<{_backend.K.DT24[dtype]}, 0>",
    ]
    meta_np = np.uint32 if dtype == "int8" else np.uint16
    for name, grid, block, args in records:
        assert tuple(grid) == (-(-(rows * ncols) // 256),) and tuple(block) == (256,), (name, grid, block)
        scalars = [a for a in args if not isinstance(a, np.ndarray)]
        assert scalars == [np.int64(rows), np.int64(ncols)] and all(type(a) is np.int64 for a in scalars), name
        arrays = [a.dtype for a in args if isinstance(a, np.ndarray)]
        expected = {"compress24": [np.uint8, np.uint8, meta_np, np.uint64],
                    "decompress24": [np.uint8, meta_np, np.uint8, np.uint64],
                    "prune_compress24": [np.uint8, np.uint8, meta_np, np.uint64, np.uint64]}[name.split("<")[0]]
        assert arrays == [np.dtype(t) for t in expected], (name, arrays)
    if dtype in ("bfloat16", "float32"):
        records.clear()
        be.prune_compress_24(finite(w), "cutlass", "square")
        assert [r[0].split("<")[0] for r in records] == ["nm_contig", "compress24"]


def test_compress24_through_the_api_and_int8_elsewhere():
    """The public API reaches the hooks (backend= the emulated cuda backend); the int8 dtype the
    backend declares for 2:4 compression is rejected by the core for every other operation."""
    w = sparse_24((32, 64), "int8", seed=29)
    sw = compress_24(w, backend=EMU_NAME)
    assert sw.backend == EMU_NAME and sw.metadata.dtype == np.int32
    same(decompress_24(sw, backend=EMU_NAME), decompress_24(compress_24(w, backend="numpy"), backend="numpy"))
    sp = prune_24(w, "ptx", backend=EMU_NAME)
    ref_sp = prune_24(w, "ptx", backend="numpy")
    same(sp.values, ref_sp.values)
    same(sp.metadata, ref_sp.metadata)
    assert "int8" in pp.registry.get_registry().info(EMU_NAME).dtypes
    for call in (lambda b: pp.importance(w, backend=b), lambda b: pp.prune(w.copy(), 0.5, backend=b),
                 lambda b: pp.prune(w.copy(), pattern="2:4", backend=b)):
        for b in (EMU_NAME, "auto"):
            with pytest.raises(UnsupportedDtypeError, match="int8"):
                call(b)


def test_compress24_out_of_device_memory():
    be = _backend.CudaBackend(_TinyMemory(20_000), emu_load_module(), name="tiny24")
    w = sparse_24((64, 512), "float16", seed=30)  # 32 kB of values
    with pytest.raises(DeviceMemoryError, match="2:4 values"):
        be.compress_24(w, "cutlass")
    with pytest.raises(DeviceMemoryError, match="dense weight"):
        be.decompress_24(np.zeros((64, 256), np.float16), np.full((64, 32), -4370, np.int16), (64, 512), "ptx")


# ---------------------------------------------------------------------------------------------
# the sanitizer: a subset of the above, in a subprocess under ASan/UBSan
# ---------------------------------------------------------------------------------------------
SANITIZED = [
    "test_selection_multiblock[abs-float32]",
    "test_selection_multiblock[square-bfloat16]",
    "test_selection_multiblock[identity-float16]",
    "test_selection_degenerate_all_equal[float64]",
    "test_nm_every_axis[float16-2-4]",
    "test_nm_every_axis[float64-7-32]",
    "test_misaligned_views[float32]",
    "test_misaligned_views[float16]",
    "test_importance_multiblock[l2-float64]",
    "test_block_mask_many_blocks[block1]",
    "test_compress24_matches_reference[float16-cutlass]",
    "test_compress24_matches_reference[int8-ptx]",
    "test_compress24_matches_reference[float32-cutlass]",
    "test_compress24_errors_name_the_first_group[bfloat16-ptx]",
    "test_compress24_misaligned_inputs[bfloat16]",
    "test_prune_compress24_non_finite[square-float32]",
]


@pytest.mark.slow
def test_sanitized_subset():
    if cuda_emu.sanitize_requested():
        pytest.skip("already running under the sanitizer")
    try:
        env = cuda_emu.sanitizer_env()
    except cuda_emu.SanitizerError as exc:
        pytest.skip(str(exc))
    ids = [f"{__file__}::{t}" for t in SANITIZED]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *ids],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=3000)
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, tail
    assert f"{len(SANITIZED)} passed" in proc.stdout, tail


# ---------------------------------------------------------------------------------------------
# bfloat16 moves as uint16 bits: no CuPy bfloat16 kernel is ever needed (issue 8 item 3)
# ---------------------------------------------------------------------------------------------
_BF16 = np_dtype("bfloat16")


class _NoBf16Kernels(np.ndarray):
    """An array on which every operation that would run one of CuPy's (experimental, and in CuPy 13
    missing) bfloat16 kernels raises: element-wise assignment, copies, casts and ufuncs with a
    bfloat16 operand. Views (uint16 bits included) stay guarded; bit copies are fine."""

    def _refuse(self, what):
        raise AssertionError(f"the backend ran an element-wise bfloat16 operation ({what}) on a device array")

    def __setitem__(self, key, value):
        if self.dtype == _BF16 or getattr(value, "dtype", None) == _BF16:
            self._refuse("assignment")
        super().__setitem__(key, value)

    def copy(self, *args, **kwargs):
        if self.dtype == _BF16:
            self._refuse("copy")
        return super().copy(*args, **kwargs)

    def astype(self, dtype, *args, **kwargs):
        if self.dtype == _BF16 or np.dtype(dtype) == _BF16:
            self._refuse("astype")
        return super().astype(dtype, *args, **kwargs)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        operands = inputs + tuple(kwargs.get("out", ()))
        if any(getattr(a, "dtype", None) == _BF16 for a in operands):
            self._refuse(ufunc.__name__)
        plain = [a.view(np.ndarray) if isinstance(a, _NoBf16Kernels) else a for a in inputs]
        if "out" in kwargs:
            kwargs["out"] = tuple(a.view(np.ndarray) if isinstance(a, _NoBf16Kernels) else a for a in kwargs["out"])
        return getattr(ufunc, method)(*plain, **kwargs)


class _GuardedDevice:
    """NumPy whose allocations are guarded arrays (the device memory of the test below)."""

    def __getattr__(self, name):
        return getattr(np, name)

    def empty(self, shape, dtype=float):
        return np.empty(shape, dtype).view(_NoBf16Kernels)

    def zeros(self, shape, dtype=float):
        return np.zeros(shape, dtype).view(_NoBf16Kernels)


def test_bfloat16_never_runs_an_element_wise_kernel():
    """Every entry point on bfloat16 input, aligned and misaligned (the aligned copies of 2:4) and
    the square 2:4 path (a pruned copy): the backend moves bfloat16 only as uint16 bits. On a
    GPU the old `pruned[...] = weights` ran CuPy's bfloat16 copy kernel (none in CuPy 13)."""
    be = _backend.CudaBackend(_GuardedDevice(), emu_load_module(), name="guarded")

    def guarded(a):
        return np.ascontiguousarray(a).view(_NoBf16Kernels)

    x = tricky_array((16, 64), "bfloat16", seed=44)
    n = x.size
    for method in ("l1", "l2"):
        same(be.importance(guarded(x), check_method(method))[0].view(np.ndarray), ref.pruneplug_importance(weights=x, transform=check_method(method))[0])
    for transform in ("abs", "square"):
        for k in (0, n // 3, n):
            same(be.unstructured_mask(guarded(x), k, transform).view(np.ndarray),
                 ref.pruneplug_unstructured_mask(values=x, k=k, transform=transform))
            w = guarded(x)
            be.prune_unstructured(w, k, transform)
        w = guarded(x)
        be.prune_nm(w, 2, 4, 1, transform)
        same(w.view(np.ndarray), np.where(ref.pruneplug_nm_mask(values=x, n=2, m=4, axis=1, transform=transform), x,
                                          np.zeros((), x.dtype)))
        be.block_mask(guarded(x), (4, 4), 8, transform)
    be.apply_mask(guarded(x), np.ones(x.shape, bool))
    w24 = sparse_24(shape24("bfloat16", "cutlass", 2, 2), "bfloat16", seed=45)
    base = np.zeros(w24.size + 8, _BF16)
    base[1:1 + w24.size] = w24.ravel()
    misaligned = base[1:1 + w24.size].reshape(w24.shape).view(_NoBf16Kernels)
    for weights in (guarded(w24), misaligned):
        for layout in ("ptx", "cutlass"):
            values, meta = be.compress_24(weights, layout)
            rv, rm = ref24.compress(w24, layout)
            same(values.view(np.ndarray), rv)
            same(be.decompress_24(values, meta, w24.shape, layout).view(np.ndarray), ref24.decompress(rv, rm, w24.shape, layout))
            for transform in ("abs", "square"):
                gv, gm = be.prune_compress_24(guarded(finite(w24)), layout, transform)
                ev, em = ref24.prune_compress(finite(w24), transform, layout)
                same(gv.view(np.ndarray), ev, f"prune_compress {layout} {transform}")
                same(gm.view(np.ndarray), em)

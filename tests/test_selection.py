"""pruneplug.selection: exact selection over many parts, against a brute-force stable sort."""

from __future__ import annotations

import doctest

import ml_dtypes
import numpy as np
import pytest

import pruneplug as pp
import pruneplug.selection as sel_mod
from pruneplug.errors import InvalidArgumentError, NonFiniteError
from pruneplug.selection import ExactSelection, chunk_histogram, key_kind, part_counts, prune_part, select_exact

BF16 = np.dtype(ml_dtypes.bfloat16)
# The built-in backends that take NumPy arrays and implement both hooks (the CUDA kernels are run
# by the emulator in test_selection_cuda_emulated.py); by name, so that backends other test modules
# register do not change what this module runs.
SELECTION_BACKENDS = [b.name for b in pp.backends() if b.name in ("numpy", "cpu") and b.available
                      and {"key_histogram", "prune_below_key"} <= set(b.operations)]


def scores64(w: np.ndarray, transform: str) -> np.ndarray:
    """The core's scores (float32 for 16-bit weights, else the weights' dtype) as float64."""
    x = w.astype(np.float32) if w.dtype.itemsize == 2 else w
    with np.errstate(over="ignore", under="ignore"):
        s = np.abs(x) if transform == "abs" else x * x
    return s.astype(np.float64).ravel()


def brute_force(parts: list, k: int, transform: str) -> list[np.ndarray]:
    """Per part, the flat boolean 'pruned' array of one stable sort over all scores."""
    scores = np.concatenate([scores64(p, transform) for p in parts]) if parts else np.empty(0)
    pruned = np.zeros(scores.size, dtype=bool)
    pruned[np.argsort(scores, kind="stable")[:k]] = True
    out, start = [], 0
    for p in parts:
        out.append(pruned[start:start + p.size])
        start += p.size
    return out


def run_selection(parts, k, transform, backend):
    """The full driver: decide, count per part, hand out ties, prune each part."""
    selection = select_exact(parts, k, transform, backend=backend, chunk=37)
    counts = [part_counts(p, transform, selection, backend=backend) for p in parts]
    quota = selection.tie_quota([eq for _, eq in counts])
    results = []
    for p, q in zip(parts, quota):
        out, mask = np.empty_like(p), np.empty(p.shape, bool)
        r = prune_part(p, transform, selection, q, out=out, mask=mask, backend=backend)
        results.append((r, out, mask))
    return selection, counts, results


def check_against_brute_force(parts, k, transform, backend):
    selection, counts, results = run_selection(parts, k, transform, backend)
    expected = brute_force(parts, k, transform)
    assert sum(r.pruned for r, _, _ in results) == k
    for p, want, (less, eq), (r, out, mask) in zip(parts, expected, counts, results):
        assert (r.less, r.equal) == (less, eq)
        np.testing.assert_array_equal(~mask.reshape(-1), want)
        ref = p.copy().reshape(-1)
        ref[want] = 0
        assert out.tobytes() == ref.tobytes()
        zero = scores64(p, "abs") == 0
        assert r.zeros_before == int(zero.sum()) and r.zeros_after == int((zero | want).sum())
    return selection


def _rng_parts(seed, dtypes, sizes, levels=None):
    rng = np.random.default_rng(seed)
    parts = []
    for i, (dt, n) in enumerate(zip(dtypes, sizes)):
        x = rng.standard_normal(n)
        if levels:
            x = rng.integers(-levels, levels + 1, n) / 4.0
        parts.append(x.astype(dt).reshape((n,) if i % 2 else (1, n)))
    return parts


@pytest.mark.parametrize("backend", SELECTION_BACKENDS)
@pytest.mark.parametrize("transform", ["abs", "square"])
@pytest.mark.parametrize("dtypes", [
    ["float32"] * 4, [BF16] * 4, ["float16"] * 4, ["float64"] * 3,
    ["float32", BF16, "float16", "float32"], ["float64", "float32", BF16], [BF16, "float16"],
])
def test_matches_brute_force(backend, transform, dtypes):
    for seed, levels in ((0, None), (1, 3)):  # spread-out values, then heavy ties
        parts = _rng_parts(seed, dtypes, [50, 0, 133, 7][:len(dtypes)], levels)
        n = sum(p.size for p in parts)
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            check_against_brute_force(parts, k, transform, backend)


@pytest.mark.parametrize("backend", SELECTION_BACKENDS)
def test_edge_cases(backend):
    ones = [np.ones(5, np.float32), np.ones(3, np.float32), np.ones(4, np.float32)]
    sel = check_against_brute_force(ones, 7, "abs", backend)  # all ties: parts in order
    assert sel.below == 0 and sel.ties == 12 and sel.threshold == 1.0
    zeros = [np.zeros(6, BF16), np.array([0.0, -0.0], BF16)]
    sel = check_against_brute_force(zeros, 3, "square", backend)  # all zeros, -0.0 included
    assert sel.threshold == 0.0
    tiny = [np.array([float(i % 5)], np.float16) for i in range(40)] + [np.empty(0, np.float16)]
    check_against_brute_force(tiny, 17, "abs", backend)  # many tiny parts and an empty one
    for k in (0, 40):
        sel = check_against_brute_force(tiny, k, "abs", backend)
        assert sel.passes == 0 and sel.threshold is None


@pytest.mark.parametrize("backend", SELECTION_BACKENDS)
def test_bfloat16_square_ties_follow_the_score(backend):
    # squares of these bf16 magnitudes underflow to 0 or overflow to inf in float32: equal scores
    small = np.array([1e-30, 2e-30, 0.0, 3e-39, 1e-40], BF16)
    big = np.array([3e19, 1e20, 2e19, 1e30], BF16)
    parts = [np.concatenate([small, big]), big[::-1].copy(), small[::-1].copy()]
    for k in range(0, 19):
        check_against_brute_force(parts, k, "square", backend)
    sel = select_exact(parts, 9, "square", backend=backend)
    assert sel.keys == "mag16" and sel.passes == 1


def test_key_kinds_and_passes():
    assert key_kind(["float16"], "abs") == "mag16" and key_kind([BF16.name], "square") == "mag16"
    assert key_kind(["float16", "bfloat16"], "abs") == "f32"
    assert key_kind(["float32", "float64"], "abs") == "f64"
    for dt, passes in ((BF16, 1), (np.float16, 1), (np.float32, 2), (np.float64, 4)):
        parts = _rng_parts(4, [dt, dt], [100, 60])
        assert select_exact(parts, 77, "abs", backend="numpy").passes == passes


def test_bf16_square_key_table_is_the_score_order():
    table = sel_mod.bf16_square_keys()
    mags = np.arange(0x7F80, dtype=np.uint32)
    with np.errstate(over="ignore", under="ignore"):
        squares = (mags << 16).view(np.float32) ** 2
    keys = table[:0x7F80]
    assert np.all(np.diff(keys.astype(np.int64)) >= 0)
    assert np.array_equal(keys[1:] == keys[:-1], squares[1:] == squares[:-1])
    assert table[0] == 0 and (table != np.arange(0x8000)).sum() > 0


def test_histograms_merge_by_addition():
    rng = np.random.default_rng(5)
    x = rng.standard_normal(1000).astype(np.float32)
    request = sel_mod.HistogramRequest("f32", 15, 16, 0)
    whole = chunk_histogram(x, "abs", request, backend="numpy")
    pieces = sum(chunk_histogram(x[i:i + 97], "abs", request, backend="numpy") for i in range(0, 1000, 97))
    assert whole.sum() == 1000 and np.array_equal(whole, pieces)


def test_prefix_restricted_request_counts_below_and_above():
    x = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    keys = x.view(np.uint32).astype(int)
    request = sel_mod.HistogramRequest("f32", 0, 8, keys[1] >> 8)
    hist = chunk_histogram(x, "abs", request, backend="numpy")
    assert hist[0] == 1 and hist[-1] == 2 and hist[1 + (keys[1] & 0xFF)] == 1 and hist.sum() == 4


def test_errors():
    with pytest.raises(InvalidArgumentError):
        ExactSelection(k=5, n=4, dtypes=["float32"], transform="abs")
    with pytest.raises(InvalidArgumentError):
        ExactSelection(k=1, n=4, dtypes=["float32"], transform="identity")
    sel = ExactSelection(k=2, n=4, dtypes=["float32"], transform="abs")
    with pytest.raises(InvalidArgumentError, match="missing or counted twice"):
        sel.update(np.zeros(sel.next_request().bins, np.int64))
    with pytest.raises(InvalidArgumentError, match="not decided"):
        sel.tie_quota([1])
    with pytest.raises(NonFiniteError):
        chunk_histogram(np.array([1.0, np.inf], np.float32), "abs", sel.next_request(), backend="numpy")
    with pytest.raises(InvalidArgumentError, match="mag16"):
        chunk_histogram(np.ones(3, np.float32), "abs", sel_mod.HistogramRequest("mag16", 0, 15, 0), backend="numpy")


def test_module_doctests():
    result = doctest.testmod(sel_mod)
    assert result.attempted >= 5 and result.failed == 0


@pytest.mark.parametrize("backend", [b for b in SELECTION_BACKENDS if b != "numpy"])
@pytest.mark.parametrize("dtype,transform", [(BF16, "square"), (np.float32, "abs"), (np.float16, "square"),
                                             (np.float64, "abs")])
def test_threaded_passes_match_the_reference(backend, dtype, transform):
    """Above the threading threshold (2^20 elements): per-thread ranges, tie offsets across them."""
    rng = np.random.default_rng(11)
    x = (rng.integers(-6, 7, 3_000_001) / 8.0).astype(dtype)  # heavy ties spread over every range
    x[::7] = rng.standard_normal(x[::7].size).astype(dtype)
    sel = select_exact([x], 1_234_567, transform, backend="numpy", chunk=1 << 22)
    request = sel.count_request()
    assert np.array_equal(chunk_histogram(x, transform, request, backend=backend),
                          chunk_histogram(x, transform, request, backend="numpy"))
    for quota in (0, 1, sel.ties // 2, sel.ties):
        got_out, got_mask = np.empty_like(x), np.empty(x.shape, bool)
        ref_out, ref_mask = np.empty_like(x), np.empty(x.shape, bool)
        got = prune_part(x, transform, sel, quota, out=got_out, mask=got_mask, backend=backend)
        ref = prune_part(x, transform, sel, quota, out=ref_out, mask=ref_mask, backend="numpy")
        assert got == ref and got_out.tobytes() == ref_out.tobytes() and np.array_equal(got_mask, ref_mask)
    for request in (sel_mod.HistogramRequest(sel.keys, max(0, sel_mod.KEY_BITS[sel.keys] - 16),
                                             min(16, sel_mod.KEY_BITS[sel.keys]), 0),):
        assert np.array_equal(chunk_histogram(x, transform, request, backend=backend),
                              chunk_histogram(x, transform, request, backend="numpy"))


@pytest.mark.parametrize("backend", SELECTION_BACKENDS)
def test_nonfinite_is_reported_with_count_and_first_index(backend):
    x = np.array([1.0, np.nan, 2.0, np.inf, -np.inf], np.float32)
    sel = ExactSelection(k=2, n=5, dtypes=["float32"], transform="abs")
    with pytest.raises(NonFiniteError) as err:
        chunk_histogram(x, "abs", sel.next_request(), backend=backend)
    assert (err.value.count, err.value.first_index) == (3, 1)
    ok = select_exact([np.ones(5, np.float32)], 2, "abs", backend="numpy")
    with pytest.raises(NonFiniteError):
        prune_part(x, "abs", ok, 0, out=np.empty_like(x), backend=backend)


# ---------------------------------------------------------------------------------------------
# issue 22: zero counts, raw bits, 16-bit magnitude ranges, narrow brackets (C against the reference)
# ---------------------------------------------------------------------------------------------
def _all_half(dtype) -> np.ndarray:
    """Every finite float16/bfloat16 bit pattern, both signs, shuffled (ties, zeros, denormals,
    squares that underflow or overflow: every magnitude there is)."""
    end = 0x7C00 if np.dtype(dtype) == np.float16 else 0x7F80
    mags = np.arange(end, dtype=np.uint16)
    bits = np.concatenate([mags, mags | np.uint16(0x8000), mags[::97]])  # and some repeated
    return np.random.default_rng(1).permutation(bits).view(dtype)


C_BACKENDS = [b for b in SELECTION_BACKENDS if b != "numpy"]


@pytest.mark.parametrize("backend", C_BACKENDS)
@pytest.mark.parametrize("dtype", [BF16, np.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("transform", ["abs", "square"])
@pytest.mark.parametrize("keys", ["mag16", "f32", "f64"])
def test_half_prune_by_magnitude_range_matches_the_reference(backend, dtype, transform, keys):
    """pp_prune_below_key compares 16-bit magnitudes against a range found once: exhaustively the
    reference's keys, at thresholds on and between the keys present, with tie quotas."""
    x = _all_half(dtype)
    request_keys = np.unique(sel_mod.mag16_keys(x.view(np.uint16), np.dtype(dtype).name, transform)) if keys == "mag16" \
        else None
    from pruneplug_backends.numpy.keyhist import keys_of

    all_keys = np.unique(keys_of(x, transform, keys)) if request_keys is None else request_keys.astype(np.uint64)
    thresholds = [0, int(all_keys[1]), int(all_keys[len(all_keys) // 3]), int(all_keys[len(all_keys) // 2]) + 1,
                  int(all_keys[-1]), int(all_keys[-1]) + 1]
    from pruneplug.registry import get_registry

    registry = get_registry()
    for t in thresholds:
        for ties in (0, 1, 5, 10**9):
            got_out, ref_out = np.empty_like(x), np.empty_like(x)
            got_mask, ref_mask = np.empty(x.shape, bool), np.empty(x.shape, bool)
            got = registry.call(backend, "prune_below_key", values=x, transform=transform, keys=keys, threshold=t,
                                ties=ties, out=got_out, mask=got_mask)
            ref = registry.call("numpy", "prune_below_key", values=x, transform=transform, keys=keys, threshold=t,
                                ties=ties, out=ref_out, mask=ref_mask)
            assert got == ref, (t, ties)
            assert got_out.tobytes() == ref_out.tobytes() and np.array_equal(got_mask, ref_mask), (t, ties)


@pytest.mark.parametrize("backend", C_BACKENDS)
@pytest.mark.parametrize("dtype", [BF16, np.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("transform", ["abs", "square"])
def test_narrow_mag16_brackets_match_the_reference(backend, dtype, transform):
    """Requests at shift 0 with <= 10 bits (brackets, counting requests) take C's vectorised
    magnitude-range loop: histogram and zero counts equal the reference's."""
    from pruneplug.registry import get_registry

    registry = get_registry()
    x = np.concatenate([_all_half(dtype), np.random.default_rng(2).standard_normal(70_001).astype(dtype)])
    rng = np.random.default_rng(3)
    for bits in (0, 1, 4, 7, 10):
        for prefix in {0, 1, int(rng.integers(0, 1 << (15 - bits))), (1 << (15 - bits)) - 1, 0x3C00 >> bits}:
            kw = dict(transform=transform, keys="mag16", shift=0, bits=bits, prefix=prefix)
            got_z, ref_z = np.zeros(2, np.int64), np.zeros(2, np.int64)
            got = registry.call(backend, "key_histogram", values=x, zeros=got_z, **kw)
            ref = registry.call("numpy", "key_histogram", values=x, zeros=ref_z, **kw)
            assert np.array_equal(got, ref) and np.array_equal(got_z, ref_z), (bits, prefix)


@pytest.mark.parametrize("backend", SELECTION_BACKENDS)
@pytest.mark.parametrize("dtype", [BF16, np.float16, np.float32, np.float64], ids=["bf16", "f16", "f32", "f64"])
def test_count_zeros_and_raw_bits(backend, dtype):
    """count_zeros: exact zeros (-0.0 included) and zero scores (squares that underflow), with
    NaN/Inf rejected under a transform and ignored without one; raw bits give what floats give."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal(5000)
    x[rng.random(5000) < 0.2] = 0.0
    x[rng.random(5000) < 0.2] = -0.0
    x[rng.random(5000) < 0.1] = 1e-30 if np.dtype(dtype) != np.float64 else 1e-200
    x = x.astype(dtype)
    bits = x.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[x.itemsize])
    zeros = int(np.count_nonzero(x.astype(np.float64) == 0))
    for transform in ("abs", "square"):
        square_zero = int(np.count_nonzero(scores64(x, transform) == 0))
        assert sel_mod.count_zeros(x, transform, backend=backend) == (zeros, square_zero)
        assert sel_mod.count_zeros(bits, transform, backend=backend, dtype=np.dtype(dtype).name) == (zeros, square_zero)
        request = ExactSelection(7, x.size, [np.dtype(dtype).name], transform).next_request()
        z = np.zeros(2, np.int64)
        hist = chunk_histogram(bits, transform, request, backend=backend, dtype=np.dtype(dtype).name, zeros=z)
        assert np.array_equal(hist, chunk_histogram(x, transform, request, backend="numpy"))
        assert tuple(z) == (zeros, square_zero)
    bad = x.copy()
    bad[[3, 10]] = np.inf
    with pytest.raises(NonFiniteError) as err:
        sel_mod.count_zeros(bad, "abs", backend=backend)
    assert (err.value.count, err.value.first_index) == (2, 3)
    assert sel_mod.count_zeros(bad, None, backend=backend) == (zeros - int(x[3] == 0) - int(x[10] == 0),) * 2


@pytest.mark.parametrize("backend", SELECTION_BACKENDS)
@pytest.mark.parametrize("transform", ["abs", "square"])
def test_zeros_after_pruning_is_what_pruning_leaves(backend, transform):
    """The dry run's rule, against pruning itself, for every k (ties, underflowing squares)."""
    x = np.array([1e-30, 0.0, 2.0, 1e-30, -0.0, 0.5, 1e-30, 2.0, 0.0, 0.5], np.float32)
    zeros = sel_mod.count_zeros(x, transform, backend=backend)
    for k in range(x.size + 1):
        sel = select_exact([x], k, transform, backend="numpy")
        result = prune_part(x, transform, sel, sel.k - sel.below, out=np.empty_like(x), backend=backend)
        after = sel_mod.zeros_after_pruning(k, *zeros)
        assert after is None or after == result.zeros_after, (k, after, result)
        assert (after is None) == (transform == "square" and k < zeros[1] and zeros[1] != zeros[0]), k

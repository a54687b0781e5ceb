"""The kit's checks of importance scores, masks (unstructured, N:M, block, row, column), pruning
and applying masks, non-finite errors and thread safety: :data:`CHECKS`.

Each check runs the public API on the backend under test and on the reference with the same data
and compares the results bit for bit (errors by type and message); a few check a rule directly
(exact counts, the tie rule), so that the reference itself is tested too.

    >>> from pruneplug.testing.harness import harness_for
    >>> check = next(c for c in CHECKS if c.name == "nm_rule_directly")
    >>> check.func(harness_for("numpy"))  # passes: returns None
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

import pruneplug as pp
from pruneplug.errors import NonFiniteError
from pruneplug.testing.assertions import (
    assert_exact_k_rule,
    assert_failed_prune_changes_nothing,
    assert_same_bits,
    assert_same_error,
    assert_same_mask,
    checked_mask_bits,
    stats_close,
)
from pruneplug.testing.data import LAYOUTS, np_dtype, tie_levels, tricky_array, with_layout
from pruneplug.testing.harness import REFERENCE, Check, Harness

#: The sparsities of the unstructured mask checks.
SPARSITIES = (0.0, 0.1, 1 / 3, 0.5, 0.9, 0.999, 1.0)

#: The (n, m) of the N:M mask checks: the usual ones, the degenerate ones, odd and wide groups.
NM_CASES = ((2, 4), (1, 2), (4, 8), (8, 16), (0, 4), (4, 4), (1, 1), (3, 5), (5, 32), (2, 64))


# ---------------------------------------------------------------------------------------------
# importance
# ---------------------------------------------------------------------------------------------
def check_importance(h: Harness) -> None:
    for dtype in h.each():
        for method in ("l1", "l2"):
            for layout in LAYOUTS:
                source = tricky_array((37, 29), dtype, seed=1)
                ref_view, view = with_layout(h, source, layout)
                got = pp.importance(view, method, backend=h.backend)
                ref = pp.importance(ref_view, method, backend=REFERENCE)
                what = f"importance({dtype}, {method}, {layout})"
                assert got.method == ref.method, what
                assert_same_bits(h.to_numpy(got.values), ref.values, what)
                assert got.stats.min == ref.stats.min and got.stats.max == ref.stats.max, f"{what}: min/max"
                for name in ("mean", "std"):
                    g, r = getattr(got.stats, name), getattr(ref.stats, name)
                    assert stats_close(g, r), f"{what}: {name} {g!r} != {r!r}"


def check_importance_special_values(h: Harness) -> None:
    h.require("float32")
    # Overflow to +inf in float32 squares, denormals that square to zero, an empty array.
    w = np.array([3e19, -2e-23, 1e-45, -0.0, 1.5], dtype=np.float32)
    for method in ("l1", "l2"):
        got, ref = h.run_both(pp.importance, w, method)
        assert_same_bits(h.to_numpy(got.values), ref.values, f"importance special ({method})")
        assert (got.stats.min, got.stats.max) == (ref.stats.min, ref.stats.max)
    empty = pp.importance(h.to_backend(np.zeros(0, np.float32)), "l1", backend=h.backend)
    assert empty.values.shape == (0,) and all(np.isnan(v) for v in vars(empty.stats).values())


# ---------------------------------------------------------------------------------------------
# unstructured masks and pruning
# ---------------------------------------------------------------------------------------------
def check_unstructured_mask_on_scores(h: Harness) -> None:
    for dtype in h.each():
        for shape in ((1,), (7,), (0,), (1001,), (33, 64), (3, 5, 16)):
            scores = tricky_array(shape, dtype, seed=2)
            if scores.size > 3:  # infinities are valid scores
                scores.ravel()[[0, 2]] = [np.inf, -np.inf]
            for sparsity in SPARSITIES:
                what = f"unstructured mask ({dtype}, {shape}, sparsity={sparsity})"
                got, ref = h.run_both(pp.generate_unstructured_mask, scores, sparsity)
                assert got.pattern == "unstructured"
                assert_same_mask(h, got, ref, what)


def check_unstructured_mask_layouts(h: Harness) -> None:
    for dtype in h.each(("float32", "bfloat16")):
        source = tricky_array((40, 24), dtype, seed=3)
        for layout in LAYOUTS:
            ref_view, view = with_layout(h, source, layout)
            got = pp.generate_unstructured_mask(view, 0.5, backend=h.backend)
            ref = pp.generate_unstructured_mask(ref_view, 0.5, backend=REFERENCE)
            assert_same_mask(h, got, ref, f"unstructured mask ({dtype}, {layout})")


def check_unstructured_exact_count_and_tie_rule(h: Harness) -> None:
    """Checked directly, not against the reference: exactly k pruned; every pruned score <= every
    kept score; among equal scores the pruned ones have the lower indices."""
    for dtype in h.each():
        scores = tricky_array((4099,), dtype, seed=4)
        wide = np.abs(scores.astype(np.float64))
        for sparsity in (0.25, 0.5, 0.75):
            keep = checked_mask_bits(pp.generate_unstructured_mask(h.to_backend(np.abs(scores)), sparsity,
                                                                   backend=h.backend), h)
            assert_exact_k_rule(keep, wide, round(sparsity * scores.size), dtype)


def check_unstructured_large(h: Harness) -> None:
    """Large enough for several blocks and selection passes; heavy ties (quantised weights)."""
    rng = np.random.default_rng(5)
    for dtype in h.each(("float32", "float16", "float64")):
        scores = tie_levels(rng, h.large_size, dtype)
        for sparsity in (0.5, 0.01, 0.97):
            got, ref = h.run_both(pp.generate_unstructured_mask, scores, sparsity)
            assert_same_mask(h, got, ref, f"large unstructured ({dtype}, {sparsity})")
        normal = rng.standard_normal(h.large_size).astype(np_dtype(dtype))
        got, ref = h.run_both(pp.prune, normal, 0.5)
        assert_same_bits(h.to_numpy(got), ref, f"large prune ({dtype})")


def _prune_both(h: Harness, weights: np.ndarray, what: str, **kwargs: Any) -> None:
    """``pp.prune(weights, **kwargs)`` on both backends, in place or not, with the mask or not:
    the same result and mask; in place returns the input object, otherwise the input is untouched."""
    for inplace in (False, True):
        for return_mask in (False, True):
            w_backend = h.to_backend(weights.copy())
            w_ref = weights.copy()
            got = pp.prune(w_backend, backend=h.backend, inplace=inplace, return_mask=return_mask, **kwargs)
            ref = pp.prune(w_ref, backend=REFERENCE, inplace=inplace, return_mask=return_mask, **kwargs)
            label = f"{what} inplace={inplace} return_mask={return_mask}"
            if return_mask:
                assert_same_mask(h, got[1], ref[1], f"{label}: mask")
                got, ref = got[0], ref[0]
            assert_same_bits(h.to_numpy(got), ref, label)
            if inplace:
                assert got is w_backend, f"{label}: inplace must return the input object"
            else:
                assert_same_bits(h.to_numpy(w_backend), weights, f"{label}: input must be untouched")


def check_prune_unstructured(h: Harness) -> None:
    for dtype in h.each():
        weights = tricky_array((31, 33), dtype, seed=6)
        for method in ("l1", "l2"):
            for sparsity in (0.0, 0.5, 0.8, 1.0):
                _prune_both(h, weights, f"prune({dtype}, {method}, {sparsity})", sparsity=sparsity, method=method)


def check_prune_l2_rounding_ties(h: Harness) -> None:
    """Squares that round to the same float32 (or overflow, or underflow) create new ties: L2 order
    is not L1 order."""
    h.require("float32")
    w = np.array([1.0, 1.0000001, -1.0000001, 3e19, 4e19, 1e-30, 2e-30, -1e-30, 0.5], dtype=np.float32)
    for sparsity in (2 / 9, 4 / 9, 6 / 9):
        _prune_both(h, w, f"l2 rounding ties, sparsity={sparsity:.3f}", sparsity=sparsity, method="l2")


# ---------------------------------------------------------------------------------------------
# N:M masks and pruning
# ---------------------------------------------------------------------------------------------
def check_nm_mask(h: Harness) -> None:
    for n, m in NM_CASES:
        for dtype in h.each(("float32", "float16", "bfloat16", "float64")):
            for shape, axis in (((6, 4 * m), -1), ((2 * m, 3), 0), ((2, 2 * m, 3, 2), 1), ((3 * m,), 0)):
                scores = tricky_array(shape, dtype, seed=7 + m)
                scores.ravel()[1] = np.inf
                what = f"{n}:{m} mask ({dtype}, shape {shape}, axis {axis})"
                got, ref = h.run_both(pp.generate_nm_mask, scores, n, m, axis=axis)
                assert got.pattern == f"{n}:{m}", what
                assert_same_mask(h, got, ref, what)


def check_nm_rule_directly(h: Harness) -> None:
    """Exactly n kept per group; the kept are the n largest; ties keep the lower index."""
    h.require("float32")
    scores = np.array([[1, 1, 1, 1, 2, 2, 1, 1, 0, 5, 0, 5, 3, 3, 3, 4]], dtype=np.float32)
    keep = checked_mask_bits(pp.generate_nm_mask(h.to_backend(scores), 2, 4, backend=h.backend), h)
    expected = np.array([[1, 1, 0, 0, 1, 1, 0, 0, 0, 1, 0, 1, 1, 0, 0, 1]], dtype=bool)
    assert np.array_equal(keep, expected), f"2:4 tie rule: {keep.astype(int)} != {expected.astype(int)}"


def check_prune_nm(h: Harness) -> None:
    for dtype in h.each():
        weights = tricky_array((8, 32), dtype, seed=8)
        for method in ("l1", "l2"):
            _prune_both(h, weights, f"prune 2:4 ({dtype}, {method})", pattern="2:4", method=method)
        conv = tricky_array((4, 8, 3, 3), dtype, seed=9)
        _prune_both(h, conv, f"prune conv 2:4 axis=1 ({dtype})", pattern="2:4", axis=1)
    if "float32" in h.dtypes:
        big = tricky_array((64, h.large_size // 64 // 16 * 16), "float32", seed=10)
        _prune_both(h, big, "prune 2:4 large", pattern="2:4")


def check_nm_layouts(h: Harness) -> None:
    h.require("float32")
    source = tricky_array((16, 24), "float32", seed=11)
    for layout in LAYOUTS:
        ref_view, view = with_layout(h, source, layout)
        for axis in (0, 1):
            if ref_view.shape[axis] % 4:
                continue
            got = pp.generate_nm_mask(view, 2, 4, axis=axis, backend=h.backend)
            ref = pp.generate_nm_mask(ref_view, 2, 4, axis=axis, backend=REFERENCE)
            assert_same_mask(h, got, ref, f"2:4 mask ({layout}, axis {axis})")


# ---------------------------------------------------------------------------------------------
# block, row and column masks and pruning
# ---------------------------------------------------------------------------------------------
def check_block_row_column_masks(h: Harness) -> None:
    for dtype in h.each():
        scores = tricky_array((12, 20), dtype, seed=12)
        scores.ravel()[5] = np.inf
        for sparsity in (0.0, 0.25, 0.5, 0.9, 1.0):
            for block in ((1, 1), (2, 2), (4, 5), (3, 1), (12, 20)):
                got, ref = h.run_both(pp.generate_block_mask, scores, block, sparsity)
                assert got.pattern == f"block({block[0]},{block[1]})"
                assert_same_mask(h, got, ref, f"block {block} ({dtype}, {sparsity})")
            for fn, pattern in ((pp.generate_row_mask, "row"), (pp.generate_column_mask, "column")):
                got, ref = h.run_both(fn, scores, sparsity)
                assert got.pattern == pattern
                assert_same_mask(h, got, ref, f"{pattern} mask ({dtype}, {sparsity})")


def check_block_sum_order(h: Harness) -> None:
    """Block sums whose value depends on the summation order: the contract's row-major order wins."""
    h.require("float64")
    scores = np.array([[1e16, 1.0, -1e16, 1.0], [1.0, 1.0, 1.0, 1.0]], dtype=np.float64)
    for block in ((2, 2), (1, 4), (2, 1)):
        got, ref = h.run_both(pp.generate_block_mask, scores, block, 0.5)
        assert_same_mask(h, got, ref, f"block sum order {block}")


def check_prune_structured(h: Harness) -> None:
    h.require("float32")
    weights = tricky_array((16, 24), "float32", seed=13)
    for pattern in ("row", "column", "block(4,4)"):
        _prune_both(h, weights, f"prune {pattern}", pattern=pattern, sparsity=0.5, method="l2")


# ---------------------------------------------------------------------------------------------
# applying masks; errors; threads
# ---------------------------------------------------------------------------------------------
def check_apply_mask(h: Harness) -> None:
    rng = np.random.default_rng(14)
    for dtype in h.each():
        weights = tricky_array((17, 19), dtype, seed=15)
        weights.ravel()[:4] = [np.nan, -0.0, np.inf, -np.inf]
        keep = rng.random(weights.shape) < 0.5
        keep.ravel()[:4] = False
        for layout in ("C", "transposed", "strided"):
            ref_w, w = with_layout(h, weights.copy(), layout)
            ref_keep = keep.T if layout == "transposed" else keep if layout == "C" else keep[::2, 1:]
            ref_w = ref_w.copy()
            returned = pp.apply_mask(h.to_backend(np.ascontiguousarray(ref_keep)), w, backend=h.backend)
            pp.apply_mask(np.ascontiguousarray(ref_keep), ref_w, backend=REFERENCE)
            assert returned is w, "apply_mask must return the weights object"
            assert_same_bits(h.to_numpy(w), ref_w, f"apply ({dtype}, {layout})")
            pruned = np.asarray(h.to_numpy(w)).astype(np.float64)[~ref_keep]
            assert np.all(pruned == 0) and not np.signbit(pruned).any(), "pruned entries must be +0.0"


def check_non_finite_errors(h: Harness) -> None:
    for dtype in h.each():
        w = tricky_array((8, 16), dtype, seed=16)
        w.ravel()[[9, 40, 77]] = [np.nan, np.inf, -np.inf]
        for method in ("l1", "l2"):
            assert_same_error(h, lambda b: pp.importance(h.data_for(b, w), method, backend=b),
                              f"importance NaN ({dtype})", NonFiniteError)
            for kwargs in ({"sparsity": 0.5}, {"pattern": "2:4"}, {"pattern": "row", "sparsity": 0.5}):
                assert_failed_prune_changes_nothing(h, w, NonFiniteError, f"prune NaN ({dtype}, {kwargs})",
                                                    method=method, **kwargs)
        scores = np.abs(w)  # its infinities are valid scores; its NaN is not
        for fn in (lambda s, b: pp.generate_unstructured_mask(s, 0.5, backend=b),
                   lambda s, b: pp.generate_nm_mask(s, 2, 4, backend=b),
                   lambda s, b: pp.generate_block_mask(s, (2, 2), 0.5, backend=b)):
            assert_same_error(h, lambda b, fn=fn: fn(h.data_for(b, scores), b),
                              f"NaN scores ({dtype})", NonFiniteError)


def check_thread_safety(h: Harness) -> None:
    """Calls from several Python threads at once give the reference's result."""
    h.require("float32")
    weights = tricky_array((min(h.large_size, 100_000),), "float32", seed=17)
    expected = pp.prune(weights, 0.5, backend=REFERENCE)
    results: list[Any] = [None] * 4
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = h.to_numpy(pp.prune(h.to_backend(weights), 0.5, backend=h.backend))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for r in results:
        assert_same_bits(r, expected, "prune from several threads")


#: The checks of this module, in the order the kit runs them, each with the operations it needs.
CHECKS: list[Check] = [
    Check("importance", check_importance, frozenset({"importance"})),
    Check("importance_special_values", check_importance_special_values, frozenset({"importance"})),
    Check("unstructured_mask_on_scores", check_unstructured_mask_on_scores, frozenset({"unstructured_mask"})),
    Check("unstructured_mask_layouts", check_unstructured_mask_layouts, frozenset({"unstructured_mask"})),
    Check("unstructured_exact_count_and_tie_rule", check_unstructured_exact_count_and_tie_rule,
          frozenset({"unstructured_mask"})),
    Check("unstructured_large", check_unstructured_large, frozenset({"unstructured_mask"})),
    Check("prune_unstructured", check_prune_unstructured, frozenset({"unstructured_mask", "apply_mask"})),
    Check("prune_l2_rounding_ties", check_prune_l2_rounding_ties, frozenset({"unstructured_mask", "apply_mask"})),
    Check("nm_mask", check_nm_mask, frozenset({"nm_mask"})),
    Check("nm_rule_directly", check_nm_rule_directly, frozenset({"nm_mask"})),
    Check("prune_nm", check_prune_nm, frozenset({"nm_mask", "apply_mask"})),
    Check("nm_layouts", check_nm_layouts, frozenset({"nm_mask"})),
    Check("block_row_column_masks", check_block_row_column_masks, frozenset({"block_mask"})),
    Check("block_sum_order", check_block_sum_order, frozenset({"block_mask"})),
    Check("prune_structured", check_prune_structured, frozenset({"block_mask", "apply_mask", "importance"})),
    Check("apply_mask", check_apply_mask, frozenset({"apply_mask"})),
    Check("non_finite_errors", check_non_finite_errors,
          frozenset({"importance", "unstructured_mask", "nm_mask", "block_mask"})),
    Check("thread_safety", check_thread_safety, frozenset({"unstructured_mask", "apply_mask"})),
]

"""The kit's checks of per-row exact selection (``groups="row"``, the ``row_mask`` operation):
:data:`CHECKS`. Masks and pruned weights bit-identical to the reference, errors by type and
message, and the per-row rule checked directly.

    >>> from pruneplug.testing.harness import harness_for
    >>> check = next(c for c in CHECKS if c.name == "row_rule_directly")
    >>> check.func(harness_for("numpy"))  # passes: returns None
"""

from __future__ import annotations

import numpy as np

import pruneplug as pp
from pruneplug.errors import NonFiniteError
from pruneplug.testing.assertions import (
    assert_exact_k_rule,
    assert_failed_prune_changes_nothing,
    assert_same_bits,
    assert_same_error,
)
from pruneplug.testing.data import np_dtype, tie_levels, tricky_array
from pruneplug.testing.harness import REFERENCE, Check, Harness

#: The shapes and sparsities of the row mask checks (empty rows and columns included).
SHAPES = ((1, 1), (3, 7), (33, 64), (5, 1000), (0, 5), (4, 0), (2, 4099))
SPARSITIES = (0.0, 0.1, 1 / 3, 0.5, 0.9, 1.0)


def check_row_mask(h: Harness) -> None:
    for dtype in h.each():
        for shape in SHAPES:
            scores = tricky_array(shape, dtype, seed=21)
            if scores.size > 3:  # infinities are valid scores
                scores.ravel()[[0, 2]] = [np.inf, -np.inf]
            for sparsity in SPARSITIES:
                _same_row_mask_as_reference(h, scores, sparsity, f"row mask ({dtype}, {shape}, sparsity={sparsity})")


def _same_row_mask_as_reference(h: Harness, scores: np.ndarray, sparsity: float, what: str) -> None:
    got, ref = h.run_both(pp.generate_unstructured_mask, scores, sparsity, groups="row")
    assert_same_bits(h.to_numpy(got.data), ref.data, what)


def check_prune_rows(h: Harness) -> None:
    """Weights (abs and square transforms) pruned with groups='row'."""
    for dtype in h.each():
        w = tricky_array((17, 96), dtype, seed=22)
        for method in ("l1", "l2"):
            got, ref = h.run_both(pp.prune, w, 0.5, method=method, groups="row")
            assert_same_bits(h.to_numpy(got), ref, f"prune groups='row' ({dtype}, {method})")


def check_row_rule_directly(h: Harness) -> None:
    """Exactly round(s * cols) pruned in every row; every pruned score <= every kept one of its
    row; among equal scores the pruned ones have the lower column indices."""
    rng = np.random.default_rng(23)
    for dtype in h.each():
        scores = (rng.integers(0, 9, (40, 333)) / 4).astype(np_dtype(dtype))  # heavy ties
        keep = h.to_numpy(pp.generate_unstructured_mask(h.to_backend(scores), 0.37, groups="row",
                                                        backend=h.backend).data)
        wide = scores.astype(np.float64)
        for r in range(scores.shape[0]):
            assert_exact_k_rule(keep[r], wide[r], round(0.37 * 333), f"{dtype} row {r}")


def check_row_large(h: Harness) -> None:
    rng = np.random.default_rng(24)
    cols = max(h.large_size // 64, 8)
    for dtype in h.each(("float32", "float16", "float64")):
        scores = tie_levels(rng, (64, cols), dtype)
        for sparsity in (0.5, 0.01, 0.97):
            _same_row_mask_as_reference(h, scores, sparsity, f"large row mask ({dtype}, {sparsity})")


def check_row_non_finite(h: Harness) -> None:
    for dtype in h.each():
        w = tricky_array((8, 16), dtype, seed=25)
        w.ravel()[[19, 40, 77]] = [np.nan, np.inf, -np.inf]
        out = h.to_backend(np.ones(w.shape, dtype=bool))

        def run(b: str):
            if b == REFERENCE:
                return pp.generate_unstructured_mask(np.abs(w), 0.5, groups="row", backend=b)
            return pp.generate_unstructured_mask(h.to_backend(np.abs(w)), 0.5, groups="row", backend=b, out=out)

        assert_same_error(h, run, f"row mask NaN ({dtype})", NonFiniteError)
        assert h.to_numpy(out).all(), "a rejected row mask must not write `out`"
        for method in ("l1", "l2"):  # +-Inf weights are rejected too
            assert_failed_prune_changes_nothing(h, w, NonFiniteError, f"prune groups='row' NaN ({dtype}, {method})",
                                                sparsity=0.5, method=method, groups="row")


#: The checks of this module, in the order the kit runs them, each with the operations it needs.
CHECKS: list[Check] = [
    Check("row_mask", check_row_mask, frozenset({"row_mask"})),
    Check("prune_rows", check_prune_rows, frozenset({"row_mask", "apply_mask"})),
    Check("row_rule_directly", check_row_rule_directly, frozenset({"row_mask"})),
    Check("row_large", check_row_large, frozenset({"row_mask"})),
    Check("row_non_finite", check_row_non_finite, frozenset({"row_mask"})),
]

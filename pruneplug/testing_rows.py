"""Conformance checks for per-row exact selection (``row_mask``), in the form of
:mod:`pruneplug.testing`'s kit: bit-identical to the ``numpy`` reference, errors by type and
message, and the per-row rule checked directly."""

from __future__ import annotations

import numpy as np

import pruneplug as pp
from pruneplug.errors import NonFiniteError
from pruneplug.testing_harness import REFERENCE, Check, Harness, assert_same_bits, assert_same_outcome, np_dtype, tricky_array

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
    got = pp.generate_unstructured_mask(h.to_backend(scores), sparsity, groups="row", backend=h.backend)
    ref = pp.generate_unstructured_mask(scores, sparsity, groups="row", backend=REFERENCE)
    assert_same_bits(h.to_numpy(got.data), ref.data, what)


def check_prune_rows(h: Harness) -> None:
    """Weights (abs and square transforms) pruned with groups='row'."""
    for dtype in h.each():
        w = tricky_array((17, 96), dtype, seed=22)
        for method in ("l1", "l2"):
            got = pp.prune(h.to_backend(w), 0.5, method=method, groups="row", backend=h.backend)
            ref = pp.prune(w, 0.5, method=method, groups="row", backend=REFERENCE)
            assert_same_bits(h.to_numpy(got), ref, f"prune groups='row' ({dtype}, {method})")


def check_row_rule_directly(h: Harness) -> None:
    """Exactly round(s * cols) pruned in every row; every pruned score <= every kept one of its
    row; among equal scores the pruned ones have the lower column indices."""
    rng = np.random.default_rng(23)
    for dtype in h.each():
        scores = (rng.integers(0, 9, (40, 333)) / 4).astype(np_dtype(dtype))  # heavy ties
        keep = h.to_numpy(pp.generate_unstructured_mask(h.to_backend(scores), 0.37, groups="row",
                                                        backend=h.backend).data)
        k = round(0.37 * 333)
        wide = scores.astype(np.float64)
        for r in range(scores.shape[0]):
            assert int((~keep[r]).sum()) == k, f"{dtype} row {r}: pruned {(~keep[r]).sum()} != {k}"
            t = wide[r][~keep[r]].max()
            assert t <= wide[r][keep[r]].min(), f"{dtype} row {r}: a kept score is below a pruned one"
            at = np.flatnonzero(wide[r] == t)
            pruned_at, kept_at = at[~keep[r][at]], at[keep[r][at]]
            assert not len(kept_at) or pruned_at.max() < kept_at.min(), f"{dtype} row {r}: tie rule"


def check_row_large(h: Harness) -> None:
    rng = np.random.default_rng(24)
    cols = max(h.large_size // 64, 8)
    for dtype in h.each(("float32", "float16", "float64")):
        scores = (rng.integers(-300, 300, (64, cols)) / 64).astype(np_dtype(dtype))
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

        err = assert_same_outcome(h, run, f"row mask NaN ({dtype})")
        assert isinstance(err, NonFiniteError), err
        assert h.to_numpy(out).all(), "a rejected row mask must not write `out`"
        for method in ("l1", "l2"):  # +-Inf weights are rejected too
            target = h.to_backend(w.copy())
            err = assert_same_outcome(h, lambda b, target=target: pp.prune(
                target if b != REFERENCE else w.copy(), 0.5, method=method, groups="row", inplace=True, backend=b),
                f"prune groups='row' NaN ({dtype}, {method})")
            assert isinstance(err, NonFiniteError), err
            assert_same_bits(h.to_numpy(target), w, "a failed prune changes nothing")


CHECKS: list[Check] = [
    Check("row_mask", check_row_mask, frozenset({"row_mask"})),
    Check("prune_rows", check_prune_rows, frozenset({"row_mask", "apply_mask"})),
    Check("row_rule_directly", check_row_rule_directly, frozenset({"row_mask"})),
    Check("row_large", check_row_large, frozenset({"row_mask"})),
    Check("row_non_finite", check_row_non_finite, frozenset({"row_mask"})),
]

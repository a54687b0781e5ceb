"""The conformance kit: every semantic rule of pruneplug, checked on a backend against the NumPy
reference, bit for bit, one pytest test per check.

A backend author runs it from their own test suite::

    from pruneplug.testing import parametrize_backend_checks, run_check

    @parametrize_backend_checks("mybackend")
    def test_conformance(backend_check):
        run_check(backend_check)

Each check builds data with ties, signed zeros, denormals, infinities, odd sizes and
non-contiguous layouts, runs the public API with ``backend="mybackend"`` and with
``backend="numpy"``, and compares results byte for byte (and errors by type and message). Checks
of operations the backend does not declare are skipped with that reason; so is every check of a
backend that is unavailable here. A few checks verify rules directly (exact counts, the tie rule)
so that the reference itself is tested too.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterable

import numpy as np

import pruneplug as pp
from pruneplug.errors import NonFiniteError
from pruneplug.registry import get_registry
from pruneplug.testing_harness import (  # noqa: F401  (the kit's public names, importable from here)
    ARRAY_TYPES,
    DTYPES,
    LAYOUTS,
    REFERENCE,
    Check,
    Harness,
    assert_same_bits,
    assert_same_outcome,
    harness_for,
    np_dtype,
    stats_close,
    tricky_array,
    with_layout,
)
from pruneplug.testing_rows import CHECKS as ROW_CHECKS  # per-row selection
from pruneplug.testing_sparse24 import CHECKS as SPARSE24_CHECKS

# ---------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------
_CHECKS: list[Check] = []


def check(*operations: str) -> Callable:
    def register(func: Callable[[Harness], None]) -> Callable[[Harness], None]:
        _CHECKS.append(Check(func.__name__.removeprefix("check_"), func, frozenset(operations)))
        return func

    return register


def _mask_bits(mask: pp.Mask, harness: Harness) -> np.ndarray:
    """The mask's bits as NumPy, after checking its properties against them (every mask any check
    produces goes through here, so the properties are tested on every array type)."""
    bits = harness.to_numpy(mask.data)
    assert_mask_properties(mask, bits)
    return bits


def assert_mask_properties(mask: pp.Mask, bits: np.ndarray) -> None:
    """``size``, ``nnz``, ``num_zeros``, ``sparsity``, ``shape`` and ``repr`` of ``mask`` agree
    with its bits (a NumPy copy of ``mask.data``)."""
    bits = np.asarray(bits)
    nnz = int(bits.sum())
    what = f"Mask({mask.pattern}) of {type(mask.data).__module__}.{type(mask.data).__name__}"
    assert mask.size == bits.size and isinstance(mask.size, int), f"{what}: size {mask.size!r} != {bits.size}"
    assert mask.nnz == nnz and isinstance(mask.nnz, int), f"{what}: nnz {mask.nnz!r} != {nnz}"
    assert mask.num_zeros == bits.size - nnz, f"{what}: num_zeros {mask.num_zeros!r}"
    expected = (bits.size - nnz) / bits.size if bits.size else 0.0
    assert mask.sparsity == expected and isinstance(mask.sparsity, float), f"{what}: sparsity {mask.sparsity!r}"
    assert mask.shape == bits.shape, f"{what}: shape {mask.shape} != {bits.shape}"
    assert f"nnz={nnz}" in repr(mask), f"{what}: repr {mask!r}"


@check("importance")
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


@check("importance")
def check_importance_special_values(h: Harness) -> None:
    h.require("float32")
    # Overflow to +inf in float32 squares, denormals that square to zero, an empty array.
    w = np.array([3e19, -2e-23, 1e-45, -0.0, 1.5], dtype=np.float32)
    for method in ("l1", "l2"):
        got = pp.importance(h.to_backend(w), method, backend=h.backend)
        ref = pp.importance(w, method, backend=REFERENCE)
        assert_same_bits(h.to_numpy(got.values), ref.values, f"importance special ({method})")
        assert (got.stats.min, got.stats.max) == (ref.stats.min, ref.stats.max)
    empty = pp.importance(h.to_backend(np.zeros(0, np.float32)), "l1", backend=h.backend)
    assert empty.values.shape == (0,) and all(np.isnan(v) for v in vars(empty.stats).values())


SPARSITIES = (0.0, 0.1, 1 / 3, 0.5, 0.9, 0.999, 1.0)


@check("unstructured_mask")
def check_unstructured_mask_on_scores(h: Harness) -> None:
    for dtype in h.each():
        for shape in ((1,), (7,), (0,), (1001,), (33, 64), (3, 5, 16)):
            scores = tricky_array(shape, dtype, seed=2)
            if scores.size > 3:  # infinities are valid scores
                scores.ravel()[[0, 2]] = [np.inf, -np.inf]
            for sparsity in SPARSITIES:
                what = f"unstructured mask ({dtype}, {shape}, sparsity={sparsity})"
                got = pp.generate_unstructured_mask(h.to_backend(scores), sparsity, backend=h.backend)
                ref = pp.generate_unstructured_mask(scores, sparsity, backend=REFERENCE)
                assert got.pattern == "unstructured"
                assert_same_bits(_mask_bits(got, h), ref.data, what)


@check("unstructured_mask")
def check_unstructured_mask_layouts(h: Harness) -> None:
    for dtype in h.each(("float32", "bfloat16")):
        source = tricky_array((40, 24), dtype, seed=3)
        for layout in LAYOUTS:
            ref_view, view = with_layout(h, source, layout)
            got = pp.generate_unstructured_mask(view, 0.5, backend=h.backend)
            ref = pp.generate_unstructured_mask(ref_view, 0.5, backend=REFERENCE)
            assert_same_bits(_mask_bits(got, h), ref.data, f"unstructured mask ({dtype}, {layout})")


@check("unstructured_mask")
def check_unstructured_exact_count_and_tie_rule(h: Harness) -> None:
    """Checked directly, not against the reference: exactly k pruned; every pruned score <= every
    kept score; among equal scores the pruned ones have the lower indices."""
    for dtype in h.each():
        scores = tricky_array((4099,), dtype, seed=4)
        wide = np.abs(scores.astype(np.float64))
        for sparsity in (0.25, 0.5, 0.75):
            keep = _mask_bits(pp.generate_unstructured_mask(h.to_backend(np.abs(scores)), sparsity,
                                                            backend=h.backend), h)
            k = round(sparsity * scores.size)
            assert int((~keep).sum()) == k, f"{dtype}: pruned {(~keep).sum()} != k={k}"
            threshold = wide[~keep].max()
            assert threshold <= wide[keep].min(), f"{dtype}: a kept score is below a pruned one"
            at = np.flatnonzero(wide == threshold)
            assert (~keep[at]).sum() == 0 or keep[at].sum() == 0 or \
                np.flatnonzero(~keep[at]).max() < np.flatnonzero(keep[at]).min(), f"{dtype}: tie rule"


@check("unstructured_mask")
def check_unstructured_large(h: Harness) -> None:
    """Large enough for several blocks and selection passes; heavy ties (quantised weights)."""
    rng = np.random.default_rng(5)
    for dtype in h.each(("float32", "float16", "float64")):
        levels = rng.integers(-300, 300, h.large_size).astype(np.float64) / 64
        scores = levels.astype(np_dtype(dtype))
        for sparsity in (0.5, 0.01, 0.97):
            got = pp.generate_unstructured_mask(h.to_backend(scores), sparsity, backend=h.backend)
            ref = pp.generate_unstructured_mask(scores, sparsity, backend=REFERENCE)
            assert_same_bits(_mask_bits(got, h), ref.data, f"large unstructured ({dtype}, {sparsity})")
        normal = rng.standard_normal(h.large_size).astype(np_dtype(dtype))
        got = pp.prune(h.to_backend(normal), 0.5, backend=h.backend)
        ref = pp.prune(normal, 0.5, backend=REFERENCE)
        assert_same_bits(h.to_numpy(got), ref, f"large prune ({dtype})")


def _prune_both(h: Harness, weights: np.ndarray, what: str, **kwargs: Any) -> None:
    for inplace in (False, True):
        for return_mask in (False, True):
            w_backend = h.to_backend(weights.copy())
            w_ref = weights.copy()
            got = pp.prune(w_backend, backend=h.backend, inplace=inplace, return_mask=return_mask, **kwargs)
            ref = pp.prune(w_ref, backend=REFERENCE, inplace=inplace, return_mask=return_mask, **kwargs)
            label = f"{what} inplace={inplace} return_mask={return_mask}"
            if return_mask:
                assert_same_bits(_mask_bits(got[1], h), ref[1].data, f"{label}: mask")
                got, ref = got[0], ref[0]
            assert_same_bits(h.to_numpy(got), ref, label)
            if inplace:
                assert got is w_backend, f"{label}: inplace must return the input object"
            else:
                assert_same_bits(h.to_numpy(w_backend), weights, f"{label}: input must be untouched")


@check("unstructured_mask", "apply_mask")
def check_prune_unstructured(h: Harness) -> None:
    for dtype in h.each():
        weights = tricky_array((31, 33), dtype, seed=6)
        for method in ("l1", "l2"):
            for sparsity in (0.0, 0.5, 0.8, 1.0):
                _prune_both(h, weights, f"prune({dtype}, {method}, {sparsity})", sparsity=sparsity, method=method)


@check("unstructured_mask", "apply_mask")
def check_prune_l2_rounding_ties(h: Harness) -> None:
    """Squares that round to the same float32 (or overflow, or underflow) create new ties: L2 order
    is not L1 order."""
    h.require("float32")
    w = np.array([1.0, 1.0000001, -1.0000001, 3e19, 4e19, 1e-30, 2e-30, -1e-30, 0.5], dtype=np.float32)
    for sparsity in (2 / 9, 4 / 9, 6 / 9):
        _prune_both(h, w, f"l2 rounding ties, sparsity={sparsity:.3f}", sparsity=sparsity, method="l2")


NM_CASES = ((2, 4), (1, 2), (4, 8), (8, 16), (0, 4), (4, 4), (1, 1), (3, 5), (5, 32), (2, 64))


@check("nm_mask")
def check_nm_mask(h: Harness) -> None:
    for n, m in NM_CASES:
        for dtype in h.each(("float32", "float16", "bfloat16", "float64")):
            for shape, axis in (((6, 4 * m), -1), ((2 * m, 3), 0), ((2, 2 * m, 3, 2), 1), ((3 * m,), 0)):
                scores = tricky_array(shape, dtype, seed=7 + m)
                scores.ravel()[1] = np.inf
                what = f"{n}:{m} mask ({dtype}, shape {shape}, axis {axis})"
                got = pp.generate_nm_mask(h.to_backend(scores), n, m, axis=axis, backend=h.backend)
                ref = pp.generate_nm_mask(scores, n, m, axis=axis, backend=REFERENCE)
                assert got.pattern == f"{n}:{m}", what
                assert_same_bits(_mask_bits(got, h), ref.data, what)


@check("nm_mask")
def check_nm_rule_directly(h: Harness) -> None:
    """Exactly n kept per group; the kept are the n largest; ties keep the lower index."""
    h.require("float32")
    scores = np.array([[1, 1, 1, 1, 2, 2, 1, 1, 0, 5, 0, 5, 3, 3, 3, 4]], dtype=np.float32)
    keep = _mask_bits(pp.generate_nm_mask(h.to_backend(scores), 2, 4, backend=h.backend), h)
    expected = np.array([[1, 1, 0, 0, 1, 1, 0, 0, 0, 1, 0, 1, 1, 0, 0, 1]], dtype=bool)
    assert np.array_equal(keep, expected), f"2:4 tie rule: {keep.astype(int)} != {expected.astype(int)}"


@check("nm_mask", "apply_mask")
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


@check("nm_mask")
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
            assert_same_bits(_mask_bits(got, h), ref.data, f"2:4 mask ({layout}, axis {axis})")


@check("block_mask")
def check_block_row_column_masks(h: Harness) -> None:
    for dtype in h.each():
        scores = tricky_array((12, 20), dtype, seed=12)
        scores.ravel()[5] = np.inf
        for sparsity in (0.0, 0.25, 0.5, 0.9, 1.0):
            for block in ((1, 1), (2, 2), (4, 5), (3, 1), (12, 20)):
                got = pp.generate_block_mask(h.to_backend(scores), block, sparsity, backend=h.backend)
                ref = pp.generate_block_mask(scores, block, sparsity, backend=REFERENCE)
                assert got.pattern == f"block({block[0]},{block[1]})"
                assert_same_bits(_mask_bits(got, h), ref.data, f"block {block} ({dtype}, {sparsity})")
            for fn, pattern in ((pp.generate_row_mask, "row"), (pp.generate_column_mask, "column")):
                got = fn(h.to_backend(scores), sparsity, backend=h.backend)
                ref = fn(scores, sparsity, backend=REFERENCE)
                assert got.pattern == pattern
                assert_same_bits(_mask_bits(got, h), ref.data, f"{pattern} mask ({dtype}, {sparsity})")


@check("block_mask")
def check_block_sum_order(h: Harness) -> None:
    """Block sums whose value depends on the summation order: the contract's row-major order wins."""
    h.require("float64")
    scores = np.array([[1e16, 1.0, -1e16, 1.0], [1.0, 1.0, 1.0, 1.0]], dtype=np.float64)
    for block in ((2, 2), (1, 4), (2, 1)):
        got = pp.generate_block_mask(h.to_backend(scores), block, 0.5, backend=h.backend)
        ref = pp.generate_block_mask(scores, block, 0.5, backend=REFERENCE)
        assert_same_bits(_mask_bits(got, h), ref.data, f"block sum order {block}")


@check("block_mask", "apply_mask", "importance")
def check_prune_structured(h: Harness) -> None:
    h.require("float32")
    weights = tricky_array((16, 24), "float32", seed=13)
    for pattern in ("row", "column", "block(4,4)"):
        _prune_both(h, weights, f"prune {pattern}", pattern=pattern, sparsity=0.5, method="l2")


@check("apply_mask")
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


def _expect_same_error(h: Harness, run: Callable[[str], Any], what: str, error: type) -> None:
    result = assert_same_outcome(h, run, what)
    assert isinstance(result, error), f"{what}: expected {error.__name__}, got {result!r}"


@check("importance", "unstructured_mask", "nm_mask", "block_mask")
def check_non_finite_errors(h: Harness) -> None:
    for dtype in h.each():
        w = tricky_array((8, 16), dtype, seed=16)
        w.ravel()[[9, 40, 77]] = [np.nan, np.inf, -np.inf]
        for method in ("l1", "l2"):
            _expect_same_error(h, lambda b: pp.importance(h.to_backend(w) if b != REFERENCE else w, method,
                                                          backend=b), f"importance NaN ({dtype})", NonFiniteError)
            for kwargs in ({"sparsity": 0.5}, {"pattern": "2:4"}, {"pattern": "row", "sparsity": 0.5}):
                target = h.to_backend(w.copy())
                before = h.to_numpy(target).copy()

                def run(b: str, kwargs=kwargs, target=target) -> Any:
                    arr = target if b != REFERENCE else w.copy()
                    return pp.prune(arr, method=method, backend=b, inplace=True, **kwargs)

                _expect_same_error(h, run, f"prune NaN ({dtype}, {kwargs})", NonFiniteError)
                assert_same_bits(h.to_numpy(target), before, f"a failed prune ({kwargs}) must change nothing")
        scores = np.abs(w)  # its infinities are valid scores; its NaN is not
        for fn in (lambda s, b: pp.generate_unstructured_mask(s, 0.5, backend=b),
                   lambda s, b: pp.generate_nm_mask(s, 2, 4, backend=b),
                   lambda s, b: pp.generate_block_mask(s, (2, 2), 0.5, backend=b)):
            _expect_same_error(h, lambda b, fn=fn: fn(h.to_backend(scores) if b != REFERENCE else scores, b),
                               f"NaN scores ({dtype})", NonFiniteError)


@check("unstructured_mask", "apply_mask")
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


# ---------------------------------------------------------------------------------------------
# pytest integration
# ---------------------------------------------------------------------------------------------
def backend_checks(extra: Iterable[Check] = ()) -> list[Check]:
    """Every check of the kit, the 2:4 compression checks included, plus ``extra`` ones."""
    known = list(_CHECKS) + list(SPARSE24_CHECKS) + list(ROW_CHECKS)
    names = {c.name for c in known}
    return known + [c for c in extra if c.name not in names]


def parametrize_backend_checks(*backends: str, large_size: int = 300_007, extra: Iterable[Check] = (),
                               array_types: Iterable[str] = ARRAY_TYPES):
    """A ``pytest.mark.parametrize`` over (backend, array type, check): one test per check and
    array type, named ``backend-check`` (the backend's own arrays) and ``backend-torch-check``
    (PyTorch tensors; skipped with the reason where torch, or its CUDA, is missing).

    The decorated test takes one argument, ``backend_check``, and calls :func:`run_check` on it.
    """
    import pytest  # only where a test suite uses the kit: pytest is not a dependency of pruneplug

    params = [
        pytest.param((backend, c, large_size, array_type),
                     id=f"{backend}-{c.name}" if array_type == "native" else f"{backend}-{array_type}-{c.name}")
        for backend in backends
        for array_type in array_types
        for c in backend_checks(extra)
    ]
    return pytest.mark.parametrize("backend_check", params)


def run_check(backend_check: tuple) -> None:
    """Run one (backend, check[, array type]) tuple; skip with the reason when it cannot run here."""
    import pytest  # only where a test suite uses the kit: pytest is not a dependency of pruneplug

    backend, c, large_size, *rest = backend_check
    array_type = rest[0] if rest else "native"
    info = get_registry().info(backend)
    if not info.available:
        pytest.skip(f"backend {backend!r} is not available here: {info.reason}")
    missing = c.operations - info.operations
    if missing:
        pytest.skip(f"backend {backend!r} does not declare {sorted(missing)}")
    c.func(harness_for(backend, large_size, array_type))

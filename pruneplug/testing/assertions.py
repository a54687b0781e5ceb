"""The kit's comparisons: results equal to the reference bit for bit (:func:`assert_same_bits`,
:func:`assert_same_mask`), errors equal by type and message (:func:`assert_same_outcome`,
:func:`assert_same_error`), statistics within their tolerance (:func:`stats_close`), a mask's
properties consistent with its bits (:func:`assert_mask_properties`) and the exact-k selection
rule checked directly, without the reference (:func:`assert_exact_k_rule`).

    >>> assert_same_bits(np.array([0.0, 1.0]), np.array([-0.0, 1.0]), "signed zero")
    Traceback (most recent call last):
    ...
    AssertionError: signed zero: 1 element(s) differ from the reference; first at flat index 0: 0.0 != -0.0
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

import pruneplug as pp
from pruneplug.errors import PrunePlugError
from pruneplug.testing.harness import REFERENCE, Harness


def assert_same_bits(actual: Any, expected: Any, what: str) -> None:
    """Same shape, dtype and bytes (so -0.0 != +0.0 and NaN payloads count).

    >>> assert_same_bits(np.array([np.nan, -0.0]), np.array([np.nan, -0.0]), "same")
    """
    a, e = np.asarray(actual), np.asarray(expected)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != reference {e.shape}"
    assert a.dtype == e.dtype, f"{what}: dtype {a.dtype} != reference {e.dtype}"
    a_bytes = np.ascontiguousarray(a).view(np.uint8)
    e_bytes = np.ascontiguousarray(e).view(np.uint8)
    if not np.array_equal(a_bytes, e_bytes):
        diff = np.flatnonzero((np.ascontiguousarray(a) != np.ascontiguousarray(e)).ravel()
                              | (a_bytes.reshape(a.size, -1) != e_bytes.reshape(e.size, -1)).any(axis=1)
                              if a.size else np.zeros(0, bool))
        first = int(diff[0]) if diff.size else -1
        raise AssertionError(
            f"{what}: {diff.size} element(s) differ from the reference; first at flat index {first}: "
            f"{a.ravel()[first] if first >= 0 else '?'} != {e.ravel()[first] if first >= 0 else '?'}"
        )


def stats_close(got: float, ref: float) -> bool:
    """Mean and std may differ in the last bits between backends (summation order): 1e-12 relative.
    NaN matches NaN and infinities match exactly.

    >>> stats_close(1.0 + 1e-15, 1.0), stats_close(1.0 + 1e-9, 1.0), stats_close(float("nan"), float("nan"))
    (True, False, True)
    """
    if np.isnan(ref) or np.isinf(ref):
        return bool(np.isnan(got)) if np.isnan(ref) else got == ref
    return abs(got - ref) <= 1e-12 * abs(ref) + 1e-300


def _outcome(func: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", func()
    except PrunePlugError as exc:
        return "error", exc


def assert_same_outcome(harness: Harness, run: Callable[[str], Any], what: str) -> Any:
    """Run ``run(backend)`` on the backend under test and on the reference: both raise the same
    :class:`~pruneplug.errors.PrunePlugError` (type and message; it is returned), or neither does
    (``(result, reference result)`` is returned for the caller to compare).

    >>> from pruneplug.testing.harness import harness_for
    >>> h = harness_for("numpy")
    >>> assert_same_outcome(h, lambda b: pp.prune(np.ones(3), 1.5, backend=b), "sparsity 1.5")
    InvalidArgumentError('sparsity=1.5 must be a real number in [0, 1]')
    """
    kind, result = _outcome(lambda: run(harness.backend))
    ref_kind, ref_result = _outcome(lambda: run(REFERENCE))
    if ref_kind == "error":
        assert kind == "error", f"{what}: reference raised {ref_result!r}, backend returned normally"
        assert type(result) is type(ref_result), f"{what}: {type(result).__name__} != {type(ref_result).__name__}"
        assert str(result) == str(ref_result), f"{what}: message {str(result)!r} != {str(ref_result)!r}"
        return result
    if kind == "error":
        raise AssertionError(f"{what}: backend raised {result!r}, the reference did not") from result
    return result, ref_result


def assert_same_error(harness: Harness, run: Callable[[str], Any], what: str, error: type) -> PrunePlugError:
    """:func:`assert_same_outcome`, and the outcome is an ``error`` (returned).

    >>> from pruneplug.errors import NonFiniteError
    >>> from pruneplug.testing.harness import harness_for
    >>> h = harness_for("numpy")
    >>> assert_same_error(h, lambda b: pp.prune(np.array([np.nan, 1.0]), 0.5, backend=b), "NaN", NonFiniteError)
    NonFiniteError(...)
    """
    result = assert_same_outcome(harness, run, what)
    assert isinstance(result, error), f"{what}: expected {error.__name__}, got {result!r}"
    return result


def assert_failed_prune_changes_nothing(harness: Harness, weights: np.ndarray, error: type, what: str,
                                        **kwargs: Any) -> None:
    """``pp.prune(weights, inplace=True, **kwargs)`` raises the reference's ``error`` (type and
    message) on the backend under test and leaves its copy of ``weights`` as it was.

    >>> from pruneplug.errors import NonFiniteError
    >>> from pruneplug.testing.harness import harness_for
    >>> w = np.array([[1.0, np.inf, 2.0, 3.0]])
    >>> assert_failed_prune_changes_nothing(harness_for("numpy"), w, NonFiniteError, "inf", pattern="2:4")
    """
    target = harness.to_backend(weights.copy())
    before = harness.to_numpy(target).copy()

    def run(backend: str) -> Any:
        arr = target if backend != REFERENCE else weights.copy()
        return pp.prune(arr, backend=backend, inplace=True, **kwargs)

    assert_same_error(harness, run, what, error)
    assert_same_bits(harness.to_numpy(target), before, f"a failed prune ({what}) must change nothing")


def assert_mask_properties(mask: pp.Mask, bits: np.ndarray) -> None:
    """``size``, ``nnz``, ``num_zeros``, ``sparsity``, ``shape`` and ``repr`` of ``mask`` agree
    with its bits (a NumPy copy of ``mask.data``).

    >>> mask = pp.generate_nm_mask(np.array([[4.0, 1.0, 3.0, 2.0]]), 2, 4)
    >>> assert_mask_properties(mask, mask.data)
    """
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


def checked_mask_bits(mask: pp.Mask, harness: Harness) -> np.ndarray:
    """The bits of a mask the backend made, as NumPy, after checking its properties against them
    (:func:`assert_mask_properties`).

    >>> from pruneplug.testing.harness import harness_for
    >>> checked_mask_bits(pp.generate_nm_mask(np.array([4.0, 1.0, 3.0, 2.0]), 2, 4), harness_for("numpy")).tolist()
    [True, False, True, False]
    """
    bits = harness.to_numpy(mask.data)
    assert_mask_properties(mask, bits)
    return bits


def assert_same_mask(harness: Harness, got: pp.Mask, ref: pp.Mask, what: str) -> None:
    """The backend's mask ``got`` has consistent properties and the reference mask's bits.

    >>> from pruneplug.testing.harness import harness_for
    >>> h = harness_for("numpy")
    >>> assert_same_mask(h, *h.run_both(pp.generate_unstructured_mask, np.arange(6.0), 0.5), "unstructured")
    """
    assert_same_bits(checked_mask_bits(got, harness), ref.data, what)


def assert_exact_k_rule(keep: np.ndarray, scores: np.ndarray, k: int, what: str) -> None:
    """The exact-k rule, checked directly on one group (1-D ``keep`` bits and their ``scores``):
    exactly ``k`` pruned; every pruned score <= every kept score; among scores equal to the
    largest pruned one, the pruned have the lower indices. Needs at least one pruned and one kept.

    >>> assert_exact_k_rule(np.array([False, True, False, True]), np.array([1.0, 1.0, 0.5, 2.0]), 2, "ties")
    >>> assert_exact_k_rule(np.array([True, False, False, True]), np.array([1.0, 1.0, 0.5, 2.0]), 2, "ties")
    Traceback (most recent call last):
    ...
    AssertionError: ties: tie rule
    """
    assert int((~keep).sum()) == k, f"{what}: pruned {(~keep).sum()} != k={k}"
    threshold = scores[~keep].max()
    assert threshold <= scores[keep].min(), f"{what}: a kept score is below a pruned one"
    at = np.flatnonzero(scores == threshold)
    pruned_at, kept_at = at[~keep[at]], at[keep[at]]
    assert not len(kept_at) or pruned_at.max() < kept_at.min(), f"{what}: tie rule"

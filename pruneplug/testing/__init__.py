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
so that the reference itself is tested too. The reference is always registered (it is the
specification), so the kit runs even with ``PRUNEPLUG_DISABLE_PLUGINS=numpy``.

The package, in the order its modules import each other:

- :mod:`~pruneplug.testing.harness`: the backend under test (:class:`Harness`,
  :func:`harness_for`), one rule of the kit (:class:`Check`), the :data:`REFERENCE` backend;
- :mod:`~pruneplug.testing.data`: seeded inputs (:func:`tricky_array`, :func:`tie_levels`,
  :func:`sparse_24`, :func:`with_layout`);
- :mod:`~pruneplug.testing.assertions`: bit-for-bit comparisons, equal errors, mask properties,
  the exact-k rule;
- :mod:`~pruneplug.testing.checks_masks`, :mod:`~pruneplug.testing.checks_sparse24`,
  :mod:`~pruneplug.testing.checks_rows`: the checks, one family each (:data:`MASK_CHECKS`,
  :data:`SPARSE24_CHECKS`, :data:`ROW_CHECKS`);
- :mod:`~pruneplug.testing.collect`: the pytest glue (:func:`backend_checks`,
  :func:`parametrize_backend_checks`, :func:`run_check`).

A check of your own is a :class:`Check` whose function takes a :class:`Harness`; pass it as
``extra``:

    >>> import numpy as np, pruneplug as pp
    >>> def check_half(h):
    ...     got, ref = h.run_both(pp.prune, tricky_array((4, 8), "float32", seed=0), 0.5)
    ...     assert_same_bits(h.to_numpy(got), ref, "prune 0.5")
    >>> mine = Check("half", check_half, frozenset({"unstructured_mask", "apply_mask"}))
    >>> run_check(("numpy", mine, 1000))  # what a test made by parametrize_backend_checks(..., extra=[mine]) does
    >>> backend_checks(extra=[mine])[-1].name
    'half'
"""

from pruneplug.testing.assertions import (
    assert_exact_k_rule,
    assert_failed_prune_changes_nothing,
    assert_mask_properties,
    assert_same_bits,
    assert_same_error,
    assert_same_mask,
    assert_same_outcome,
    checked_mask_bits,
    stats_close,
)
from pruneplug.testing.checks_masks import CHECKS as MASK_CHECKS
from pruneplug.testing.checks_rows import CHECKS as ROW_CHECKS
from pruneplug.testing.checks_sparse24 import CHECKS as SPARSE24_CHECKS
from pruneplug.testing.collect import backend_checks, parametrize_backend_checks, run_check
from pruneplug.testing.data import LAYOUTS, np_dtype, sparse_24, tie_levels, tricky_array, with_layout
from pruneplug.testing.harness import ARRAY_TYPES, DTYPES, REFERENCE, Check, Harness, harness_for

__all__ = [
    # running the kit (pytest)
    "backend_checks",
    "parametrize_backend_checks",
    "run_check",
    # the checks, by family
    "MASK_CHECKS",
    "ROW_CHECKS",
    "SPARSE24_CHECKS",
    # the backend under test
    "ARRAY_TYPES",
    "DTYPES",
    "REFERENCE",
    "Check",
    "Harness",
    "harness_for",
    # test inputs
    "LAYOUTS",
    "np_dtype",
    "sparse_24",
    "tie_levels",
    "tricky_array",
    "with_layout",
    # comparisons
    "assert_exact_k_rule",
    "assert_failed_prune_changes_nothing",
    "assert_mask_properties",
    "assert_same_bits",
    "assert_same_error",
    "assert_same_mask",
    "assert_same_outcome",
    "checked_mask_bits",
    "stats_close",
]

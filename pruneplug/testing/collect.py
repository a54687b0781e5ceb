"""The kit as pytest tests: :func:`backend_checks` (every check), :func:`parametrize_backend_checks`
(one test per backend, array type and check) and :func:`run_check` (run one, or skip it with the
reason). pytest is imported only when these run: it is not a dependency of pruneplug.

    >>> [c.name for c in backend_checks()][:3]
    ['importance', 'importance_special_values', 'unstructured_mask_on_scores']
"""

from __future__ import annotations

from typing import Iterable

from pruneplug.registry import get_registry
from pruneplug.testing.checks_masks import CHECKS as MASK_CHECKS
from pruneplug.testing.checks_rows import CHECKS as ROW_CHECKS
from pruneplug.testing.checks_sparse24 import CHECKS as SPARSE24_CHECKS
from pruneplug.testing.harness import ARRAY_TYPES, Check, harness_for


def backend_checks(extra: Iterable[Check] = ()) -> list[Check]:
    """Every check of the kit (importance and masks, 2:4 compression, per-row selection), then
    those of ``extra`` whose names are new.

    >>> len(backend_checks()), len(backend_checks(extra=[Check("mine", print)]))
    (29, 30)
    """
    known = list(MASK_CHECKS) + list(SPARSE24_CHECKS) + list(ROW_CHECKS)
    names = {c.name for c in known}
    return known + [c for c in extra if c.name not in names]


def parametrize_backend_checks(*backends: str, large_size: int = 300_007, extra: Iterable[Check] = (),
                               array_types: Iterable[str] = ARRAY_TYPES):
    """A ``pytest.mark.parametrize`` over (backend, array type, check): one test per check and
    array type, named ``backend-check`` (the backend's own arrays) and ``backend-torch-check``
    (PyTorch tensors; skipped with the reason where torch, or its CUDA, is missing).

    The decorated test takes one argument, ``backend_check``, and calls :func:`run_check` on it::

        @parametrize_backend_checks("mybackend")
        def test_conformance(backend_check):
            run_check(backend_check)

    >>> mark = parametrize_backend_checks("numpy")
    >>> [p.id for p in mark.args[1]][:2], len(mark.args[1])
    (['numpy-importance', 'numpy-importance_special_values'], 58)
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
    """Run one (backend, check, large size[, array type]) tuple; skip with the reason when it
    cannot run here (the backend is unavailable, or does not declare the check's operations).

    >>> check = next(c for c in backend_checks() if c.name == "nm_rule_directly")
    >>> run_check(("numpy", check, 1000))  # passes: returns None
    """
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

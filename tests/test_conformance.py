"""The conformance kit over every registered backend (unavailable ones skip with their reason)."""

import pruneplug as pp
from pruneplug.testing import parametrize_backend_checks, run_check

BACKENDS = [status.name for status in pp.backends() if status.error is None]


def test_builtin_backends_are_registered():
    assert {"numpy", "cpu", "cuda"} <= set(BACKENDS), BACKENDS


@parametrize_backend_checks(*BACKENDS)
def test_conformance(backend_check):
    run_check(backend_check)

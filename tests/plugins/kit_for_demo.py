"""Run by tests/test_plugins.py in a subprocess where the demo plugin is pip-installed: the
conformance kit over the third-party 'demo' backend, exactly as its author would run it."""

from pruneplug.testing import parametrize_backend_checks, run_check


@parametrize_backend_checks("demo")
def test_demo_conformance(backend_check):
    run_check(backend_check)

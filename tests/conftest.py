"""Shared test setup: the emulator under tools/ (test infrastructure, not shipped) and the helper
modules beside the tests are importable; the header names the transformers version under test."""

import importlib.metadata
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS.parent / "tools"))
sys.path.insert(0, str(TESTS))


def pytest_report_header(config):
    """CI runs the suite under two transformers versions (.ci/run): say which one this is. Read from
    the installed metadata, so that the header costs no transformers import."""
    try:
        return f"transformers: {importlib.metadata.version('transformers')}"
    except importlib.metadata.PackageNotFoundError:
        return "transformers: not installed"

"""Shared test setup: the emulator under tools/ (test infrastructure, not shipped) and the helper
modules beside the tests are importable."""

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS.parent / "tools"))
sys.path.insert(0, str(TESTS))

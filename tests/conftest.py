"""Shared test setup: make the emulator under tools/ importable (it is test infrastructure, not shipped)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

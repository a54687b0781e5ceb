"""The array API's results are bit-identical to those of the code before the one-home-per-rule
refactor (digests made by that code with the NumPy reference: see tests/golden/core_golden.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import pruneplug as pp

GOLDEN = Path(__file__).resolve().parent / "golden"
sys.path.insert(0, str(GOLDEN))
import core_golden  # noqa: E402

BACKENDS = [b.name for b in pp.backends() if b.name in ("numpy", "cpu") and b.available]


@pytest.mark.parametrize("backend", BACKENDS)
def test_results_are_bit_identical_to_the_golden(backend, monkeypatch):
    monkeypatch.setenv("PRUNEPLUG_BACKEND", backend)
    expected = json.loads((GOLDEN / "core_golden.json").read_text())
    got = core_golden.digests()
    assert sorted(got) == sorted(expected)
    assert {k: v for k, v in got.items() if expected[k] != v} == {}


def test_the_golden_digests_see_a_changed_bit(monkeypatch):
    """The digest covers every bit of a result: one flipped bit of one weight changes it."""
    w = core_golden.weights(1, (4, 8), "float32")
    flipped = w.copy()
    flipped.view("uint32")[1, 2] ^= 1
    assert core_golden.digest(w) != core_golden.digest(flipped)

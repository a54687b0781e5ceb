"""prune_checkpoint's outputs are byte-identical to those of the code before the exact-selection
rewrite (digests made by that code with the NumPy reference: see tests/golden/checkpoint_golden.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import pruneplug as pp
from pruneplug.checkpoint import prune as prune_module

GOLDEN = Path(__file__).resolve().parent / "golden"
sys.path.insert(0, str(GOLDEN))
import checkpoint_golden  # noqa: E402

BACKENDS = [b.name for b in pp.backends() if b.name in ("numpy", "cpu") and b.available and "prune_below_key" in b.operations]


@pytest.mark.parametrize("backend", BACKENDS)
def test_outputs_are_byte_identical_to_the_golden(backend, monkeypatch):
    monkeypatch.setenv("PRUNEPLUG_BACKEND", backend)
    real_prune = pp.api.prune

    def no_unstructured(*args, **kwargs):  # unstructured pruning must take the one-pass path
        assert kwargs.get("pattern", "unstructured") != "unstructured", "pp.prune called for unstructured pruning"
        return real_prune(*args, **kwargs)

    monkeypatch.setattr(prune_module.api, "prune", no_unstructured)
    expected = json.loads((GOLDEN / "checkpoint_golden.json").read_text())
    got = checkpoint_golden.digests()
    assert sorted(got) == sorted(expected)
    assert {k: v for k, v in got.items() if expected[k] != v} == {}

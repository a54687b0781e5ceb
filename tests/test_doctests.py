"""Every docstring example in the package runs and shows what it says (an example that drifts from
the code fails here, not in a user's hands)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import pruneplug

MODULES = sorted(m.name for m in pkgutil.walk_packages(pruneplug.__path__, "pruneplug."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (output above)"

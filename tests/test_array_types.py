"""The README's API tour on every array type it promises: NumPy, PyTorch CPU tensors, and CuPy
arrays where a device exists. Results come back in the input's type; Mask properties work on
each (issue 8 item 9: they crashed on tensors, where ``size`` is a method). The conformance kit
runs every backend on NumPy and on PyTorch data too (``pruneplug.testing.ARRAY_TYPES``)."""

from __future__ import annotations

import numpy as np
import pytest

import pruneplug as pp
from pruneplug.testing import assert_mask_properties


def _cupy_reason():
    try:
        import cupy
    except ImportError:
        return "no CUDA device: cupy is not installed"
    try:
        return None if cupy.is_available() else "no CUDA device: cupy.is_available() is False"
    except Exception as exc:  # noqa: BLE001
        return f"no CUDA device: {type(exc).__name__}: {exc}"


class Kind:
    """How to make arrays of one type from NumPy and read them back."""

    def __init__(self, name):
        self.name = name
        if name == "torch":
            self.lib = pytest.importorskip("torch", reason="torch is not installed")
        elif name == "cupy":
            reason = _cupy_reason()
            if reason:
                pytest.skip(reason)
            import cupy

            self.lib = cupy
        else:
            self.lib = np

    def make(self, a):
        if self.name == "torch":
            return self.lib.from_numpy(np.array(a))
        if self.name == "cupy":
            return self.lib.asarray(a)
        return np.array(a)

    def is_mine(self, x):
        return isinstance(x, {"torch": getattr(self.lib, "Tensor", None), "cupy": getattr(self.lib, "ndarray", None),
                              "numpy": np.ndarray}[self.name])

    def numpy(self, x):
        return np.array(pp.arrays.to_numpy(x))


@pytest.fixture(params=["numpy", "torch", "cupy"])
def kind(request):
    return Kind(request.param)


def _weights():
    return np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32)


def _check_mask(kind, got, ref, pattern):
    assert kind.is_mine(got.data) and got.pattern == pattern
    bits = kind.numpy(got.data)
    np.testing.assert_array_equal(bits, ref.data)
    assert_mask_properties(got, bits)
    assert (got.nnz, got.num_zeros, got.sparsity, got.size, got.shape) == \
        (ref.nnz, ref.num_zeros, ref.sparsity, ref.size, ref.shape)
    assert repr(got).replace(repr(got.backend), "") == repr(ref).replace(repr(ref.backend), "")


def test_api_tour(kind):
    w_np = _weights()
    w = kind.make(w_np)
    scores = pp.MagnitudeImportance.l1().compute(w)
    ref_scores = pp.importance(w_np, method="l1", backend="numpy")
    assert kind.is_mine(scores.values) and scores.method == "magnitude_l1"
    np.testing.assert_array_equal(kind.numpy(scores.values), ref_scores.values)
    assert (scores.stats.min, scores.stats.max) == (ref_scores.stats.min, ref_scores.stats.max)
    cases = [
        (lambda s: pp.generate_unstructured_mask(s, 0.5), "unstructured"),
        (lambda s: pp.generate_nm_mask(s, 2, 4, axis=-1), "2:4"),
        (lambda s: pp.generate_block_mask(s, (4, 4), 0.5), "block(4,4)"),
        (lambda s: pp.generate_row_mask(s, 0.25), "row"),
        (lambda s: pp.generate_column_mask(s, 0.75), "column"),
    ]
    for make_mask, pattern in cases:
        got, ref = make_mask(scores), make_mask(ref_scores)
        _check_mask(kind, got, ref, pattern)
        target = kind.make(w_np)
        assert got.apply(target) is target
        np.testing.assert_array_equal(kind.numpy(target), ref.apply(w_np.copy()))
        as_float = got.to_float("float32")
        assert kind.is_mine(as_float)
        np.testing.assert_array_equal(kind.numpy(as_float), ref.data.astype(np.float32))
    for kwargs in ({"sparsity": 0.5}, {"pattern": "2:4", "method": "l2"}, {"pattern": "row", "sparsity": 0.5},
                   {"pattern": "block(4,4)", "sparsity": 0.5}):
        exp, exp_mask = pp.prune(w_np.copy(), backend="numpy", return_mask=True, **kwargs)
        out = pp.prune(w, **kwargs)
        assert kind.is_mine(out) and out is not w
        np.testing.assert_array_equal(kind.numpy(out), exp)
        out, mask = pp.prune(w, return_mask=True, **kwargs)
        _check_mask(kind, mask, exp_mask, exp_mask.pattern)
        target = kind.make(w_np)
        assert pp.prune(target, inplace=True, **kwargs) is target
        np.testing.assert_array_equal(kind.numpy(target), exp)
    assert pp.is_nm_sparse(pp.prune(w, pattern="2:4"), 2, 4)
    np.testing.assert_array_equal(kind.numpy(w), w_np)  # never modified


def test_global_unstructured_masks(kind):
    if kind.name == "cupy":
        pytest.skip("global_unstructured_masks takes NumPy arrays and PyTorch CPU tensors (its documentation)")
    tensors = {"a": _weights(), "b": _weights()[:8] * 3}
    got = pp.global_unstructured_masks({k: kind.make(v) for k, v in tensors.items()}, 0.5)
    ref = pp.global_unstructured_masks(tensors, 0.5, backend="numpy")
    assert sum(m.num_zeros for m in got.values()) == round(0.5 * sum(v.size for v in tensors.values()))
    for name in tensors:
        _check_mask(kind, got[name], ref[name], ref[name].pattern)

"""Dask arrays through the public API: lazy results, bit-identical to the call on the computed array."""

from __future__ import annotations

import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import pruneplug as pp
from pruneplug.errors import InvalidArgumentError, NonFiniteError, ShapeError

da = pytest.importorskip("dask.array", reason="dask is not installed (pip install 'pruneplug[dask]')")

CHUNKINGS = [(10, 7), (37, 5), (4, 53), (13, 11), ((5, 20, 12), (50, 3))]


def _bits(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    return a.view(np.uint8) if a.dtype != bool else a


def _same(got, want) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.array_equal(_bits(got), _bits(want))


def _weights(dtype, shape=(37, 53), seed=0, tie_rows=True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(np.float32)
    if tie_rows:  # many equal magnitudes spread over rows and chunks: ties at the threshold
        w[3:30:4] = np.where(rng.random(w[3:30:4].shape) < 0.5, 0.25, -0.25)
        w[:, 7] = 0.0
    return w.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_prune_unstructured_matches_numpy(dtype, chunks):
    w = _weights(dtype)
    x = da.from_array(w, chunks=chunks)
    for sparsity in (0.0, 0.1, 0.5, 0.6, 0.93, 1.0):
        for method in ("l1", "l2"):
            got = pp.prune(x, sparsity, method=method)
            assert isinstance(got, da.Array)
            _same(got.compute(), pp.prune(w, sparsity, method=method))


def test_ties_split_across_interleaved_chunks():
    # every magnitude equal: the selection is decided by global flat index alone
    w = np.full((20, 30), -1.5, dtype=np.float32)
    x = da.from_array(w, chunks=(7, 4))
    for sparsity in (0.013, 0.31, 0.5, 0.999):
        got = pp.prune(x, sparsity).compute()
        _same(got, pp.prune(w, sparsity))
        k = pp.count_to_prune(sparsity, w.size)
        assert np.array_equal(np.flatnonzero(got.ravel() == 0), np.arange(k))


@pytest.mark.parametrize("gather_limit", [0, 1 << 16])
def test_split_ties_by_position_select_or_gather(monkeypatch, gather_limit):
    # both ways to decide split ties: a radix select over positions, or gathering them (few ties)
    from pruneplug import partselect

    monkeypatch.setattr(partselect, "GATHER_LIMIT", gather_limit)
    w = np.round(np.random.default_rng(9).standard_normal((40, 50)) * 4).astype(np.float32) / 4
    x = da.from_array(w, chunks=(7, 9))
    for sparsity in (0.21, 0.5, 0.8):
        got, mask = pp.prune(x, sparsity, return_mask=True)
        want, want_mask = pp.prune(w, sparsity, return_mask=True)
        _same(got.compute(), want)
        _same(mask.data.compute(), want_mask.data)


@pytest.mark.parametrize("chunks", [(2, 3, 4), (5, 1, 7)])
def test_three_dimensional(chunks):
    w = _weights(np.float32, shape=(5, 8, 6), seed=3, tie_rows=False)
    w[1] = 0.125
    x = da.from_array(w, chunks=chunks)
    _same(pp.prune(x, 0.45).compute(), pp.prune(w, 0.45))
    _same(pp.prune(x, pattern="2:4", axis=1).compute(), pp.prune(w, pattern="2:4", axis=1))


def test_unstructured_mask_signed_scores():
    rng = np.random.default_rng(5)
    s = rng.integers(-4, 5, size=(23, 31)).astype(np.float64)
    s[0, :3] = [-0.0, np.inf, -np.inf]
    x = da.from_array(s, chunks=(6, 9))
    for sparsity in (0.2, 0.5, 0.77):
        mask = pp.generate_unstructured_mask(x, sparsity)
        assert isinstance(mask.data, da.Array) and mask.pattern == "unstructured"
        _same(mask.data.compute(), pp.generate_unstructured_mask(s, sparsity).data)


def test_return_mask_and_importance():
    w = _weights(np.float16)
    x = da.from_array(w, chunks=(10, 10))
    got, mask = pp.prune(x, 0.4, return_mask=True)
    want, want_mask = pp.prune(w, 0.4, return_mask=True)
    _same(got.compute(), want)
    _same(mask.data.compute(), want_mask.data)
    scores = pp.importance(x, "l2")
    ref = pp.importance(w, "l2")
    _same(scores.values.compute(), ref.values)
    assert scores.method == ref.method
    assert float(scores.stats.min) == ref.stats.min and float(scores.stats.max) == ref.stats.max
    assert float(scores.stats.mean) == pytest.approx(ref.stats.mean, rel=1e-12)
    assert float(scores.stats.std) == pytest.approx(ref.stats.std, rel=1e-12)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_nm_rechunks_to_whole_groups(axis):
    w = _weights(np.float32, shape=(24, 36), seed=7)
    x = da.from_array(w, chunks=(5, 7))  # groups of 4 straddle blocks on both axes
    _same(pp.prune(x, pattern="2:4", axis=axis).compute(), pp.prune(w, pattern="2:4", axis=axis))
    mask = pp.generate_nm_mask(pp.importance(x), 1, 4, axis)
    _same(mask.data.compute(), pp.generate_nm_mask(pp.importance(w), 1, 4, axis).data)
    got, m = pp.prune(x, pattern="2:4", axis=axis, return_mask=True)
    _same(m.data.compute(), pp.prune(w, pattern="2:4", axis=axis, return_mask=True)[1].data)


@pytest.mark.parametrize("pattern", ["row", "column", "block(2,4)", "block(3,1)"])
def test_structured_patterns(pattern):
    w = _weights(np.float32, shape=(24, 36), seed=11)
    w[::5] = 1.0  # equal block sums: ties by block index
    x = da.from_array(w, chunks=(5, 7))
    for sparsity in (0.25, 0.5, 0.8):
        _same(pp.prune(x, sparsity, pattern=pattern).compute(), pp.prune(w, sparsity, pattern=pattern))


def test_block_mask_nan_sums_rank_highest():
    s = np.ones((4, 8), dtype=np.float32)
    s[0, 0], s[0, 1] = np.inf, -np.inf  # a NaN block sum
    x = da.from_array(s, chunks=(3, 3))
    for sparsity in (0.5, 1.0):
        got = pp.generate_block_mask(x, (2, 2), sparsity).data.compute()
        _same(got, pp.generate_block_mask(s, (2, 2), sparsity).data)


def test_apply_mask_returns_new_array():
    w = _weights(np.float32)
    x = da.from_array(w, chunks=(9, 9))
    mask = pp.generate_unstructured_mask(pp.importance(x), 0.5)
    out = pp.apply_mask(mask, x).compute()
    _same(out, pp.prune(w, 0.5))
    assert np.count_nonzero(w == 0) < np.count_nonzero(out == 0)  # the input was not written


def test_nonfinite_error_names_the_global_index():
    w = _weights(np.float32, tie_rows=False)
    w[20, 40] = np.nan
    w[30, 1] = np.inf
    x = da.from_array(w, chunks=(10, 7))
    with pytest.raises(NonFiniteError) as want:
        pp.prune(w, 0.5)
    with pytest.raises(NonFiniteError) as got:
        pp.prune(x, 0.5)
    assert (got.value.count, got.value.first_index) == (want.value.count, want.value.first_index) == (2, 20 * 53 + 40)
    assert str(got.value) == str(want.value)


def test_bad_arguments_are_clear_errors():
    x = da.from_array(_weights(np.float32), chunks=(10, 10))
    with pytest.raises(InvalidArgumentError, match="inplace"):
        pp.prune(x, 0.5, inplace=True)
    with pytest.raises(InvalidArgumentError, match="out="):
        pp.generate_unstructured_mask(x, 0.5, out=np.ones(x.shape, bool))
    with pytest.raises(InvalidArgumentError, match="sparsity"):
        pp.prune(x, 1.5)
    with pytest.raises(ShapeError, match="m=4"):
        pp.prune(x, pattern="2:4")  # 53 columns
    with pytest.raises(TypeError, match="int32"):
        pp.prune(da.zeros((4, 4), dtype=np.int32), 0.5)


def test_import_pruneplug_does_not_import_dask():
    code = "import sys, pruneplug; assert 'dask' not in sys.modules, 'dask imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lazy_until_computed():
    # the final pass is a graph: computing it twice gives the same bits, and nothing ran for it yet
    w = _weights(np.float32)
    x = da.from_array(w, chunks=(10, 10))
    got = pp.prune(x, 0.5)
    assert len(got.__dask_graph__()) >= x.numblocks[0] * x.numblocks[1]
    _same(got.compute(), got.compute())


@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_row_groups_match_numpy(chunks):
    """groups='row' (Wanda's comparison group) on a Dask array: rows made whole, exact per row."""
    w = _weights(np.float32, seed=5)
    x = da.from_array(w, chunks=chunks)
    _same(pp.prune(x, sparsity=0.5, groups="row").compute(), pp.prune(w, sparsity=0.5, groups="row"))
    scores = pp.importance(w).values
    got = pp.generate_unstructured_mask(da.from_array(scores, chunks=chunks), 0.3, groups="row").data.compute()
    _same(got, pp.generate_unstructured_mask(scores, 0.3, groups="row").data)
    with pytest.raises(InvalidArgumentError, match="groups"):
        pp.prune(x, sparsity=0.5, groups="column")
    with pytest.raises(InvalidArgumentError, match="groups='row'"):
        pp.prune(x, sparsity=0.5, pattern="row", groups="row")


@pytest.mark.parametrize("pattern, groups, k", [("unstructured", "layer", 37), ("unstructured", "row", 5),
                                                ("row", "layer", 3), ("column", "layer", 4), ("block(2,3)", "layer", 6)])
def test_count_matches_numpy(pattern, groups, k):
    """``count=`` reaches the Dask front end with the same meaning as for NumPy (entries, entries
    per row, rows, columns, blocks), through pp.prune and the mask generators."""
    w = np.random.default_rng(41).standard_normal((12, 18)).astype(np.float32)
    x = da.from_array(w, chunks=(5, 7))
    got, mask = pp.prune(x, count=k, pattern=pattern, groups=groups, return_mask=True)
    want = pp.prune(w, count=k, pattern=pattern, groups=groups)
    assert np.asarray(got.compute()).tobytes() == want.tobytes()
    assert mask.data.compute().sum() == pp.prune(w, count=k, pattern=pattern, groups=groups, return_mask=True)[1].data.sum()


def test_count_errors_match_numpy():
    x = da.from_array(np.ones((4, 6), np.float32), chunks=2)
    with pytest.raises(InvalidArgumentError, match=r"count=7 must be an integer in \[0, 6\] \(entries per row"):
        pp.prune(x, count=7, groups="row")
    with pytest.raises(InvalidArgumentError, match="count=1 cannot be combined with pattern='2:4'"):
        pp.prune(x, count=1, pattern="2:4")
    with pytest.raises(InvalidArgumentError, match="are exclusive"):
        pp.generate_row_mask(x, 0.5, count=1)

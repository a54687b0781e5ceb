"""Importance criteria as plugins, Wanda, calibration statistics and their file."""

import math

import numpy as np
import pytest

import pruneplug as pp
from pruneplug.errors import CalibrationError, CalibrationRequiredError, InvalidArgumentError


def test_builtin_criteria_are_entry_points():
    rows = {c.name: c for c in pp.criteria.criteria()}
    assert {"magnitude_l1", "magnitude_l2", "wanda"} <= set(rows)
    assert rows["wanda"].requires_calibration is True and rows["magnitude_l1"].requires_calibration is False
    assert all(r.error is None for r in rows.values())
    assert pp.criteria.get_criterion("l1").name == "magnitude_l1"
    with pytest.raises(InvalidArgumentError, match="'nope'"):
        pp.criteria.get_criterion("nope")


def test_magnitude_criteria_match_the_core():
    w = np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32)
    for name, method in (("magnitude_l1", "l1"), ("magnitude_l2", "l2")):
        got = pp.criteria.get_criterion(name).compute(w)
        ref = pp.importance(w, method)
        assert np.array_equal(got.values, ref.values) and got.method == name
    assert pp.MagnitudeImportance.l1().compute(w).method == "magnitude_l1"  # the old class keeps working


def test_wanda_formula_eps_and_dtypes():
    w = np.array([[1.0, -2.0, 3.0], [-4.0, 5.0, 0.5]], dtype=np.float32)
    stats = pp.ActivationStats(np.array([4.0, 0.0, 9.0]), count=3)
    s = pp.WandaImportance().compute(w, stats)
    expected = np.abs(w) * np.array([2.0, math.sqrt(1e-8), 3.0], dtype=np.float32)
    assert s.method == "wanda" and s.values.dtype == np.float32
    assert np.array_equal(s.values, expected)
    assert s.stats.max == 9.0 and s.stats.min == pytest.approx(2e-4)
    import ml_dtypes

    half = pp.WandaImportance().compute(w.astype(ml_dtypes.bfloat16), stats)
    assert half.values.dtype == np.float32  # scores of 16-bit weights are float32
    assert pp.WandaImportance(eps=0.0).compute(w, stats).values[0, 1] == 0.0


def test_wanda_needs_calibration_and_the_right_shape():
    w = np.ones((2, 3), dtype=np.float32)
    wanda = pp.WandaImportance("fc.weight")
    assert wanda.requires_calibration()
    with pytest.raises(CalibrationRequiredError, match="'wanda'") as info:
        wanda.compute(w)
    assert info.value.method == "wanda"
    with pytest.raises(CalibrationError, match="'fc.weight'"):
        wanda.compute(w, pp.CalibrationContext())  # no statistics for the layer
    with pytest.raises(CalibrationError, match="4 input features"):
        wanda.compute(w, pp.CalibrationContext({"fc.weight": pp.ActivationStats(np.ones(4), 1)}))
    with pytest.raises(CalibrationError, match="NaN/Inf"):
        wanda.compute(w, pp.ActivationStats(np.array([1.0, np.nan, 1.0]), 1))


def test_wanda_selection_is_per_row_and_the_scale_does_not_matter():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((16, 32)).astype(np.float32)
    x = rng.standard_normal((50, 32)) * rng.uniform(0.1, 10, 32)
    stats = pp.ActivationStats.from_inputs(x)
    a = w.copy()
    pp.criteria.prune_scored(a, "wanda", sparsity=0.5, calibration=stats)
    assert ((a == 0).sum(axis=1) == 16).all()  # exactly half of every row
    # Wanda reference scaling (sum / nsamples) selects the same entries
    b = w.copy()
    pp.criteria.prune_scored(b, "wanda", sparsity=0.5, calibration=pp.ActivationStats(stats.input_norms / 7, 1))
    assert np.array_equal(a, b)
    # and it is |w| * ||X_j||: the row's smallest products are pruned
    score = np.abs(w.astype(np.float64)) * np.sqrt((x * x).sum(0))
    for r in range(16):
        assert score[r][a[r] == 0].max() <= score[r][a[r] != 0].min()


def test_nm_and_structured_patterns_work_with_any_criterion():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((8, 16)).astype(np.float32)
    stats = pp.ActivationStats(rng.uniform(0, 5, 16), 10)
    a = w.copy()
    pp.criteria.prune_scored(a, "wanda", pattern="2:4", calibration=stats)
    assert pp.is_nm_sparse(a, 2, 4)
    scores = pp.WandaImportance().compute(w, stats).values
    assert np.array_equal(a != 0, pp.generate_nm_mask(scores, 2, 4).data)
    c = w.copy()
    pp.criteria.prune_scored(c, "wanda", pattern="column", sparsity=0.25, calibration=stats)
    assert int((c == 0).all(axis=0).sum()) == 4


def test_groups_row_in_the_core():
    scores = np.array([[3.0, 1.0, 1.0, 2.0], [0.0, 0.0, 5.0, 0.0]])
    keep = pp.generate_unstructured_mask(scores, 0.5, groups="row").data
    assert keep.tolist() == [[True, False, False, True], [False, False, True, True]]
    w = np.array([[0.1, -5.0, 0.2, 4.0], [9.0, 8.0, -0.5, 0.25]], dtype=np.float32)
    assert pp.prune(w, 0.5, groups="row").tolist() == [[0.0, -5.0, 0.0, 4.0], [9.0, 8.0, 0.0, 0.0]]
    with pytest.raises(InvalidArgumentError, match="groups="):
        pp.prune(w, 0.5, groups="column")
    with pytest.raises(InvalidArgumentError, match="groups='row'"):
        pp.prune(w, pattern="2:4", groups="row")
    with pytest.raises(pp.errors.ShapeError):
        pp.generate_unstructured_mask(np.ones(8), 0.5, groups="row")


def test_row_selection_independent_of_thread_count(monkeypatch):
    from pruneplug_backends.cpu import ffi, lib

    rng = np.random.default_rng(3)
    scores = (rng.integers(0, 5, (257, 300)) / 2).astype(np.float32)  # ties everywhere
    masks = []
    for threads in (1, 2, 3, 8):
        out = np.empty(scores.shape, dtype=np.bool_)
        bad = ffi.new("int64_t[2]")
        st = lib.pp_row_mask(ffi.from_buffer("char[]", scores), lib.PP_F32, lib.PP_IDENTITY, 257, 300, 111,
                             ffi.from_buffer("uint8_t[]", out), threads, bad, bad + 1)
        assert st == 0
        masks.append(out)
    ref = pp.generate_unstructured_mask(scores, 111 / 300, groups="row", backend="numpy").data
    for m in masks:
        assert np.array_equal(m, ref)


# -- the statistics file ---------------------------------------------------------------------
def _ctx():
    rng = np.random.default_rng(4)
    ctx = pp.CalibrationContext()
    ctx.add("a.weight", pp.ActivationStats.from_inputs(rng.standard_normal((10, 6))))
    ctx.add("b.weight", pp.ActivationStats(rng.uniform(0, 3, 4), 7, input_axis=0))
    return ctx


def test_file_round_trip(tmp_path):
    path = _ctx().save(tmp_path / "stats.safetensors", {"model": "tiny"})
    back = pp.CalibrationContext.load(path)
    assert sorted(back) == ["a.weight", "b.weight"]
    assert np.array_equal(back["a.weight"].input_norms, _ctx()["a.weight"].input_norms)
    assert back["a.weight"].count == 10 and back["b.weight"].input_axis == 0
    assert back.metadata["model"] == "tiny" and back.metadata["version"] == "2"
    np.testing.assert_allclose(back["a.weight"].squared_mean, back["a.weight"].input_norms / 10)
    from safetensors.numpy import load_file

    raw = load_file(str(path))
    assert raw["a.weight::input_norms"].dtype == np.float64 and raw["a.weight::count"].tolist() == [10]


def _write(path, tensors, **meta):
    from safetensors.numpy import save_file

    save_file(tensors, str(path), metadata={"format": "pruneplug.calibration", "version": "1", **meta})


@pytest.mark.parametrize("tensors, message", [
    ({"a.weight::input_norms": np.array([1.0, np.inf]), "a.weight::count": np.array([3])}, "NaN/Inf"),
    ({"a.weight::input_norms": np.array([1.0, 2.0])}, "a.weight::count' is missing"),
    ({"a.weight::input_norms": np.array([1, 2], np.int32), "a.weight::count": np.array([3])}, "dtype I32"),
    ({"a.weight::input_norms": np.array([1.0, 2.0]), "a.weight::count": np.array([0])}, "positive token count"),
    ({"a.weight::input_norms": np.array([1.0]), "a.weight::count": np.array([1]), "a.weight::mean": np.ones(1)},
     "a.weight::mean"),
])
def test_bad_files_name_the_file_and_tensor(tmp_path, tensors, message):
    path = tmp_path / "bad.safetensors"
    _write(path, tensors)
    with pytest.raises(CalibrationError, match=message) as info:
        pp.CalibrationContext.load(path)
    assert str(path) in str(info.value)


def test_not_a_statistics_file(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "model.safetensors"
    save_file({"w": np.ones((2, 2), np.float32)}, str(path))
    with pytest.raises(CalibrationError, match="not a pruneplug calibration file"):
        pp.CalibrationContext.load(path)
    with pytest.raises(CalibrationError, match="does not exist"):
        pp.CalibrationContext.load(tmp_path / "missing.safetensors")


def test_save_failure_leaves_nothing(tmp_path):
    ctx = pp.CalibrationContext({"a.weight": pp.ActivationStats(np.array([1.0, np.nan]), 2)})
    with pytest.raises(CalibrationError, match="NaN/Inf"):
        ctx.save(tmp_path / "s.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_checks_against_a_checkpoint():
    ctx = _ctx()
    assert ctx.check_layer("a.weight", (3, 6)).in_features == 6
    assert ctx.check_layer("b.weight", (4, 9)).in_features == 4  # [in, out]
    with pytest.raises(CalibrationError, match="'a.weight' has shape \\[3, 5\\]"):
        ctx.check_layer("a.weight", (3, 5))
    with pytest.raises(CalibrationError, match="'c.weight'"):
        ctx.check_layer("c.weight", (3, 5))
    with pytest.raises(CalibrationError, match="'b.weight'"):
        ctx.check_names(["a.weight"])


def test_a_third_party_criterion_object_plugs_in():
    class Reversed(pp.criteria.Criterion):
        """Prunes the largest weights: proves the scores, not magnitude, decide."""

        name = "reversed"

        def compute(self, weights, calibration=None, *, layer=None, backend=None):
            values = -np.abs(np.asarray(weights, dtype=np.float32))
            return pp.ImportanceScores(values, self.name, pp.criteria.score_stats(values))

    w = np.array([[1.0, -4.0, 2.0, 3.0]], dtype=np.float32)
    pp.criteria.prune_scored(w, Reversed(), sparsity=0.5)
    assert w.tolist() == [[1.0, 0.0, 2.0, 0.0]]
    assert not Reversed().requires_calibration() and pp.criteria.get_criterion(Reversed()).name == "reversed"
    stats = pp.criteria.score_stats(np.array([1.0, 3.0], dtype=np.float32))
    assert (stats.min, stats.max, stats.mean, stats.std) == (1.0, 3.0, 2.0, 1.0)

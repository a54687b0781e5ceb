"""The fast paths of checkpoint pruning against the full path they replace (issue 22):

* a dry run reports without a selection pass (layer scope: one zero count per tensor; global
  scope: the plan's counts and the zeros of its first pass) exactly what pruning every tensor
  reports, for every pattern and method, on data with ties, signed zeros, denormals, squares that
  underflow, in float16, bfloat16, float32 and float64;
* a sampled bracket decides the selection in one pass and gives the same bytes as the radix passes,
  also when the sample misses;
* faults (NaN, Inf) give the same error on every path.
"""

from __future__ import annotations

import numpy as np
import pytest

import pruneplug as pp
from pruneplug import selection as sel_mod
from pruneplug.checkpoint import prune as prune_module
from pruneplug.errors import NonFiniteError
from test_checkpoint_support import BF16, write_single

BACKENDS = [b.name for b in pp.backends() if b.name in ("numpy", "cpu") and b.available and "count_zeros" in b.operations]


def _awkward(rng, shape, dtype) -> np.ndarray:
    """Ties (few levels), signed zeros, denormals, magnitudes whose float32 squares underflow to 0
    (and are nonzero weights: L2 ties them with the zeros), and spread-out values."""
    x = rng.integers(-6, 7, size=shape).astype(np.float64) / 8
    x[rng.random(shape) < 0.1] = -0.0
    flat = x.reshape(-1)
    n = flat.size
    tiny = {np.dtype(np.float16): 6e-8, BF16: 1e-39, np.dtype(np.float32): 1e-41, np.dtype(np.float64): 1e-300}[np.dtype(dtype)]
    flat[rng.integers(0, n, n // 10)] = tiny * rng.integers(1, 4, n // 10)  # denormals, tied
    flat[rng.integers(0, n, n // 20)] = 1e-30 * rng.standard_normal(n // 20)  # squares underflow (not float64)
    flat[rng.integers(0, n, n // 10)] = rng.standard_normal(n // 10)
    return x.astype(dtype)


def _model(dtypes, seed=3, shape=(24, 32)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tensors = {f"layers.{i}.fc.weight": _awkward(rng, shape, dt) for i, dt in enumerate(dtypes)}
    tensors["layers.9.zero.weight"] = np.zeros(shape, dtypes[0])
    tensors["layers.9.zero.weight"][0, :3] = -0.0
    tensors["embed.weight"] = _awkward(rng, (8, 32), dtypes[0])  # not pruned: its zeros are counted
    return tensors


DTYPE_SETS = {
    "bf16": [BF16] * 3, "f16": [np.float16] * 3, "f32": [np.float32] * 3, "f64": [np.float64] * 2,
    "mixed": [np.float32, BF16, np.float16],
}
SETTINGS = [
    dict(sparsity=0.5), dict(sparsity=0.37, method="l2"), dict(sparsity=0.02), dict(sparsity=0.97, method="l2"),
    dict(sparsity=0.0), dict(sparsity=1.0),
    dict(sparsity=0.5, scope="global"), dict(sparsity=0.45, scope="global", method="l2"),
    dict(sparsity=0.5, scope="global", max_layer_sparsity=1.0), dict(sparsity=0.3, scope="global", max_layer_sparsity=0.4),
    dict(sparsity=0.05, scope="global", method="l2"),
    dict(pattern="2:4"), dict(pattern="1:4", method="l2"), dict(sparsity=0.5, pattern="row"),
    dict(sparsity=0.5, pattern="column"), dict(sparsity=0.5, pattern="block(4,4)"), dict(sparsity=0.5, groups="row"),
]


def _rows(report) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in report.to_dict()["tensors"]]


def _summary(report) -> dict:
    d = report.to_dict()
    return {"rows": _rows(report), "totals": d["totals"], "threshold": d["threshold"],
            "nearly_removed": d["nearly_removed"]}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtypes", list(DTYPE_SETS), ids=list(DTYPE_SETS))
@pytest.mark.parametrize("settings", SETTINGS, ids=[str(s) for s in SETTINGS])
def test_dry_run_reports_what_pruning_reports(tmp_path, monkeypatch, backend, dtypes, settings):
    """The dry run's report (fast: no selection pass where the rule applies) is the written run's
    (every tensor pruned) and the slow dry run's (every tensor counted by a prune pass)."""
    monkeypatch.setenv("PRUNEPLUG_BACKEND", backend)
    src = write_single(tmp_path / "in.safetensors", _model(DTYPE_SETS[dtypes]))
    fast = pp.prune_checkpoint(src, None, dry_run=True, **settings)
    written = pp.prune_checkpoint(src, tmp_path / "out.safetensors", **settings)
    monkeypatch.setattr(prune_module.TensorPruner, "_report_without_pruning", lambda self, task, row: False)
    slow = pp.prune_checkpoint(src, None, dry_run=True, **settings)
    assert _summary(fast) == _summary(written)
    assert _summary(fast) == _summary(slow)


@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_dry_run_makes_no_selection_pass(tmp_path, monkeypatch, backend):
    """Layer scope, L1: one zero count per tensor and nothing else (no histogram, no prune pass)."""
    monkeypatch.setenv("PRUNEPLUG_BACKEND", backend)
    src = write_single(tmp_path / "in.safetensors", _model([BF16, np.float32, np.float16]))
    calls = []
    registry = prune_module.get_registry()
    real = registry.call
    monkeypatch.setattr(registry, "call", lambda b, op, **kw: calls.append(op) or real(b, op, **kw))
    pp.prune_checkpoint(src, None, sparsity=0.5, dry_run=True)
    assert set(calls) == {"count_zeros"} and len(calls) == 5  # 4 selected + the embedding


@pytest.mark.parametrize("backend", BACKENDS)
def test_l2_underflow_ties_fall_back_to_pruning(tmp_path, monkeypatch, backend):
    """L2 where some nonzero weights have square 0 and fewer than all are pruned: which are pruned
    depends on their order, so that tensor is pruned (counted); the report is still exact."""
    monkeypatch.setenv("PRUNEPLUG_BACKEND", backend)
    w = np.array([1e-30, 0.0, 1e-30, 2.0, 3.0, -0.0, 1e-30, 4.0], np.float32).reshape(2, 4)
    src = write_single(tmp_path / "in.safetensors", {"a.weight": w})
    pruned = []
    real = prune_module.TensorPruner._threshold_prune
    monkeypatch.setattr(prune_module.TensorPruner, "_threshold_prune",
                        lambda self, task, *a, **k: pruned.append(task.ref.name) or real(self, task, *a, **k))
    fast = pp.prune_checkpoint(src, None, sparsity=0.25, method="l2", dry_run=True)  # k = 2 of 5 zero scores
    written = pp.prune_checkpoint(src, tmp_path / "o.safetensors", sparsity=0.25, method="l2")
    assert pruned == ["a.weight", "a.weight"] and _summary(fast) == _summary(written)
    assert fast.tensors[0].zeros_before == 2 and fast.tensors[0].zeros_after == 3  # the first 1e-30 and the 0.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("settings", [dict(sparsity=0.5), dict(sparsity=0.5, method="l2"), dict(sparsity=0.0),
                                      dict(sparsity=0.5, scope="global"), dict(sparsity=0.5, scope="global", method="l2"),
                                      dict(sparsity=0.5, scope="global", max_layer_sparsity=1.0)],
                         ids=["l1", "l2", "k0", "global", "global-l2", "global-nocap"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_weights_give_the_same_error_on_every_path(tmp_path, monkeypatch, backend, settings, bad):
    monkeypatch.setenv("PRUNEPLUG_BACKEND", backend)
    tensors = _model([BF16, BF16])
    tensors["layers.1.fc.weight"][3, 5] = bad
    tensors["layers.1.fc.weight"][7, 1] = bad
    src = write_single(tmp_path / "in.safetensors", tensors)
    messages = []
    for run in ("fast", "written", "slow"):
        if run == "slow":
            monkeypatch.setattr(prune_module.TensorPruner, "_report_without_pruning", lambda self, task, row: False)
        with pytest.raises(NonFiniteError) as err:
            pp.prune_checkpoint(src, None if run != "written" else tmp_path / "o.safetensors", dry_run=run != "written",
                                **settings)
        messages.append(str(err.value))
    assert messages[0] == messages[1] == messages[2], messages
    assert "layers.1.fc.weight" in messages[0] and "2 " in messages[0]
    assert not (tmp_path / "o.safetensors").exists()


# ---------------------------------------------------------------------------------------------
# the sampled bracket
# ---------------------------------------------------------------------------------------------
def _bracket_model(dtype, seed=11) -> dict[str, np.ndarray]:
    """Large enough for a sample (>= BRACKET_MIN_SAMPLE keys), bfloat16-like ties."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for i, scale in enumerate((0.02, 0.05, 0.001, 0.02)):
        x = rng.standard_normal((64, 512)) * scale
        x[rng.random(x.shape) < 0.05] = -0.0
        tensors[f"layers.{i}.w.weight"] = x.astype(dtype)
    return tensors


def _outputs(tmp_path, src, name, settings) -> list[bytes]:
    out, masks = tmp_path / f"{name}.safetensors", tmp_path / f"{name}.masks.safetensors"
    report = pp.prune_checkpoint(src, out, masks_out=masks, **settings)
    return [out.read_bytes(), masks.read_bytes(), _summary(report)]


BRACKET_SETTINGS = [dict(sparsity=0.5), dict(sparsity=0.3, method="l2"), dict(sparsity=0.5, scope="global"),
                    dict(sparsity=0.6, scope="global", method="l2"), dict(sparsity=0.4, scope="global", max_layer_sparsity=1.0),
                    dict(sparsity=0.5, scope="global", max_layer_sparsity=0.55), dict(sparsity=0.999, scope="global"),
                    dict(sparsity=0.001), dict(sparsity=0.5, scope="global", format="sparse-bitmask"),
                    dict(sparsity=0.4, scope="global", max_layer_sparsity=1.0, format="sparse-bitmask")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [BF16, np.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("settings", BRACKET_SETTINGS, ids=[str(s) for s in BRACKET_SETTINGS])
def test_bracket_gives_the_bytes_of_the_radix_passes(tmp_path, monkeypatch, backend, dtype, settings):
    monkeypatch.setenv("PRUNEPLUG_BACKEND", backend)
    src = write_single(tmp_path / "in.safetensors", _bracket_model(dtype))
    used = []
    real_bracket = sel_mod.ExactSelection.update_bracket
    monkeypatch.setattr(sel_mod.ExactSelection, "update_bracket",
                        lambda self, r, h: used.append(real_bracket(self, r, h)) or used[-1])
    fast = _outputs(tmp_path, src, "fast", settings)
    assert any(used), "the bracket was never tried or never decided"
    monkeypatch.setattr(sel_mod.ExactSelection, "bracket_request", lambda self, keys: None)
    radix = _outputs(tmp_path, src, "radix", settings)
    assert fast[0] == radix[0] and fast[1] == radix[1]
    assert fast[2]["rows"] == radix[2]["rows"] and fast[2]["threshold"] == radix[2]["threshold"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_a_bracket_that_misses_falls_back(tmp_path, monkeypatch, backend, scope):
    """A sample that does not hold rank k (forced: a bracket at the smallest keys) costs one pass,
    and the radix passes give the same bytes."""
    monkeypatch.setenv("PRUNEPLUG_BACKEND", backend)
    src = write_single(tmp_path / "in.safetensors", _bracket_model(BF16))
    settings = dict(sparsity=0.5, scope=scope)
    decided = []
    real = sel_mod.ExactSelection.update_bracket
    monkeypatch.setattr(sel_mod.ExactSelection, "bracket_request",
                        lambda self, keys: sel_mod.HistogramRequest("mag16", 0, 4, 0))
    monkeypatch.setattr(sel_mod.ExactSelection, "update_bracket",
                        lambda self, r, h: decided.append(real(self, r, h)) or decided[-1])
    missed = _outputs(tmp_path, src, "missed", settings)
    assert decided and not any(decided)
    monkeypatch.setattr(sel_mod.ExactSelection, "bracket_request", lambda self, keys: None)
    radix = _outputs(tmp_path, src, "radix", settings)
    assert missed[:2] == radix[:2] and missed[2]["rows"] == radix[2]["rows"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_global_bracket_makes_one_pass_and_no_counting_pass(tmp_path, monkeypatch, backend):
    monkeypatch.setenv("PRUNEPLUG_BACKEND", backend)
    src = write_single(tmp_path / "in.safetensors", _bracket_model(BF16))
    calls = []
    registry = prune_module.get_registry()
    real = registry.call
    monkeypatch.setattr(registry, "call", lambda b, op, **kw: calls.append((op, kw.get("bits"))) or real(b, op, **kw))
    report = pp.prune_checkpoint(src, None, sparsity=0.5, scope="global", dry_run=True)
    histograms = [bits for op, bits in calls if op == "key_histogram"]
    assert report.passes == 1 and len(histograms) == 4 and max(histograms) <= sel_mod.BRACKET_MAX_BITS
    assert [op for op, _ in calls if op != "key_histogram"] == []  # no counting pass, no prune pass


@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_written_run_selects_once(tmp_path, monkeypatch, backend):
    """Layer scope, written, 16-bit: per tensor one bracket pass and one prune pass."""
    monkeypatch.setenv("PRUNEPLUG_BACKEND", backend)
    src = write_single(tmp_path / "in.safetensors", _bracket_model(BF16))
    calls = []
    registry = prune_module.get_registry()
    real = registry.call
    monkeypatch.setattr(registry, "call", lambda b, op, **kw: calls.append((op, kw.get("bits"))) or real(b, op, **kw))
    pp.prune_checkpoint(src, tmp_path / "out.safetensors", sparsity=0.5)
    assert sorted(op for op, _ in calls) == ["key_histogram"] * 4 + ["prune_below_key"] * 4
    assert max(bits for op, bits in calls if op == "key_histogram") <= sel_mod.BRACKET_MAX_BITS


def test_bracket_request_and_update_by_hand():
    sel = sel_mod.ExactSelection(k=3000, n=6000, dtypes=["bfloat16"], transform="abs")
    keys = np.repeat(np.arange(100, 160, dtype=np.uint64), 100)  # 6000 keys, 100 of each
    request = sel.bracket_request(keys)
    assert request is not None and request.shift == 0 and request.prefix << request.bits <= 130 < (request.prefix + 1) << request.bits
    request = sel_mod.HistogramRequest("mag16", 0, 4, 128 >> 4)  # keys 128..143 (a narrower one, by hand)
    hist = np.zeros(request.bins, np.int64)
    for key in range(100, 160):
        d = key - 128
        hist[0 if d < 0 else (-1 if d >= 16 else 1 + d)] += 100
    assert sel.update_bracket(request, hist)
    assert (sel.threshold_key, sel.below, sel.ties, sel.passes) == (129, 2900, 100, 1)
    assert sel.counts_in_bracket(request, hist) == (2900, 100)
    other = sel_mod.ExactSelection(k=10, n=6000, dtypes=["bfloat16"], transform="abs")  # rank 9: key 100, below
    assert not other.update_bracket(request, hist) and other.next_request() is not None  # missed: unchanged
    assert sel_mod.ExactSelection(k=5, n=10, dtypes=["float32"], transform="abs").bracket_request(keys) is None

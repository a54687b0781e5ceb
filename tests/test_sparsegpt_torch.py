"""SparseGPT, OWL and the per-layer cap through pp.torch.prune_model, and Hessian calibration."""

import numpy as np
import pytest

import pruneplug as pp
from pruneplug.errors import CalibrationError, InvalidArgumentError

torch = pytest.importorskip("torch", reason="torch is not installed (pip install pruneplug[torch])")


def mlp(seed=0):
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def batches(seed=1, n=6):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(8, 32, generator=g)
    # correlated inputs of lower rank plus noise, as activations are
    return [torch.randn(64, 8, generator=g) @ mix + 0.1 * torch.randn(64, 32, generator=g) for _ in range(n)]


def output_error(model, dense, data):
    with torch.no_grad():
        x = torch.cat(data)
        return float((model(x) - dense(x)).norm() / dense(x).norm())


def pruned_copy(**kwargs):
    model = mlp()
    report = pp.torch.prune_model(model, **kwargs)
    return model, report


def test_hessian_calibration_is_x_transpose_x():
    model, data = mlp(), batches()
    ctx = pp.torch.calibrate(model, data, hessian=True, stats_dtype="float64")
    x = torch.cat(data).double()
    np.testing.assert_allclose(ctx["0.weight"].hessian, (x.T @ x).numpy(), rtol=1e-12)
    h32 = pp.torch.calibrate(model, data, hessian=True)["0.weight"].hessian  # the default: float32
    assert h32.dtype == np.float32
    np.testing.assert_allclose(h32, (x.T @ x).numpy(), rtol=1e-5, atol=1e-4)
    with torch.no_grad():
        hidden = torch.relu(model[0](torch.cat(data))).double()
    np.testing.assert_allclose(ctx["2.weight"].hessian, (hidden.T @ hidden).numpy(), rtol=1e-6)
    assert pp.torch.calibrate(model, data)["0.weight"].hessian is None


@pytest.mark.parametrize("mode", ["one-pass", "sequential"])
def test_sparsegpt_beats_wanda_and_magnitude(mode):
    dense, data = mlp(), batches()
    errors = {}
    for method in ("l1", "wanda", "sparsegpt"):
        model, report = pruned_copy(sparsity=0.5, method=method, calibration=data, calibration_mode=mode)
        for name in ("0.weight", "2.weight"):
            w = dict(model.named_parameters())[name]
            assert int((w == 0).sum()) == w.numel() // 2, (method, name)
        errors[method] = output_error(model, dense, data)
    assert errors["sparsegpt"] < 0.8 * min(errors["wanda"], errors["l1"]), errors
    assert "reconstruction" in report.settings and report.settings["reconstruction"]["0.weight"]["retries"] == 0


def test_sparsegpt_nm_and_pruned_positions_are_positive_zero():
    model, _ = pruned_copy(pattern="2:4", method="sparsegpt", calibration=batches())
    for name in ("0.weight", "2.weight"):
        w = dict(model.named_parameters())[name].detach()
        assert pp.is_nm_sparse(w, 2, 4)
        assert not torch.signbit(w[w == 0]).any()


def test_sparsegpt_from_a_statistics_file_matches_the_context(tmp_path):
    data = batches()
    ctx = pp.torch.calibrate(mlp(), data, hessian=True)
    path = ctx.save(tmp_path / "stats.safetensors")
    a, _ = pruned_copy(sparsity=0.6, method="sparsegpt", calibration=ctx)
    b, _ = pruned_copy(sparsity=0.6, method="sparsegpt", calibration=str(path))
    c, _ = pruned_copy(sparsity=0.6, method="sparsegpt", calibration=data, calibration_mode="one-pass")
    for (n, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb) and torch.equal(pa, pc), n


def test_sparsegpt_without_hessian_is_a_named_error():
    ctx = pp.torch.calibrate(mlp(), batches())
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(CalibrationError, match="'0.weight'.*no Hessian"):
        pp.torch.prune_model(model, 0.5, method="sparsegpt", calibration=ctx)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())), "nothing pruned"


def test_saliency_only_method_does_not_update():
    dense = mlp()
    model, _ = pruned_copy(sparsity=0.5, method=pp.SparseGPTImportance(update=False), calibration=batches())
    for (name, p), d in zip(model.named_parameters(), dense.parameters()):
        kept = p != 0
        assert torch.equal(p[kept], d[kept]), name


@pytest.mark.parametrize("method", ["l1", "wanda", "sparsegpt"])
def test_owl_is_exact_in_total_and_reports_each_layer(method):
    model = torch.nn.Sequential(*[torch.nn.Linear(32, 32) for _ in range(4)])
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for i, layer in enumerate(model):
            layer.weight.copy_(torch.randn(32, 32, generator=g))
            if i == 1:  # a few heavy weights: more outliers, lower sparsity
                layer.weight[:, :3] *= 20
    data = [torch.randn(64, 32, generator=g) for _ in range(3)]
    report = pp.torch.prune_model(model, 0.6, method=method, calibration=data, layer_ratios="owl", owl_lambda=0.1)
    rows = {r.name: r for r in report.tensors if r.name.endswith("weight")}
    assert sum(r.zeros_after for r in rows.values()) == round(0.6 * 4 * 32 * 32)
    sparsities = {n: r.zeros_after / r.numel for n, r in rows.items()}
    assert sparsities["1.weight"] == min(sparsities.values()) < 0.6
    assert max(sparsities.values()) - min(sparsities.values()) == pytest.approx(0.2, abs=0.01)
    assert set(report.settings["layer_ratios"]["outlier_ratios"]) == {"0.weight", "1.weight", "2.weight", "3.weight"}


def test_owl_needs_calibration_and_unstructured():
    with pytest.raises(pp.errors.CalibrationRequiredError, match="owl"):
        pp.torch.prune_model(mlp(), 0.5, layer_ratios="owl")
    with pytest.raises(InvalidArgumentError, match="unstructured"):
        pp.torch.prune_model(mlp(), pattern="2:4", method="wanda", calibration=batches(), layer_ratios="owl")


def test_global_scope_caps_a_small_scale_layer():
    def model():
        m = mlp()
        with torch.no_grad():
            m[2].weight.mul_(1e-3)  # far below every weight of layer 0
        return m

    capped = model()
    pp.torch.prune_model(capped, 0.7, scope="global")
    uncapped = model()
    pp.torch.prune_model(uncapped, 0.7, scope="global", max_layer_sparsity=1.0)
    total = 32 * 64 + 64 * 16
    for m in (capped, uncapped):
        assert int((m[0].weight == 0).sum() + (m[2].weight == 0).sum()) == round(0.7 * total)
    assert int((uncapped[2].weight == 0).sum()) == 64 * 16, "without a cap the layer is removed"
    assert int((capped[2].weight == 0).sum()) == int(0.99 * 64 * 16)


def test_checkpoint_global_scope_is_capped_by_default(tmp_path):
    from safetensors.numpy import load_file, save_file

    ones = {"b.weight": np.ones((4, 4), np.float32), "a.weight": np.ones((4, 4), np.float32),
            "c.weight": np.ones((4, 4), np.float32)}
    save_file(ones, str(tmp_path / "t.safetensors"))
    report = pp.prune_checkpoint(tmp_path / "t.safetensors", tmp_path / "o.safetensors", sparsity=0.5, scope="global")
    out = load_file(str(tmp_path / "o.safetensors"))
    # ties in name order: a would lose all 16; capped at floor(0.99 * 16) = 15, b takes the rest
    assert [int((out[n] == 0).sum()) for n in ("a.weight", "b.weight", "c.weight")] == [15, 9, 0]
    assert report.settings["max_layer_sparsity"] == 0.99

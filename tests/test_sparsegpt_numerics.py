"""SparseGPT on numerically hostile statistics (issue 19): any scale of the Hessian, asymmetric or
negative-diagonal Hessians refused by name, and float16 updates that overflow refused before any
write."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")

import pruneplug as pp  # noqa: E402
from pruneplug import errors  # noqa: E402
from pruneplug.reconstruction import damped_inverse_factor, inverse_diagonal, sparsegpt_prune  # noqa: E402
from pruneplug.reconstruction.hessian import SYMMETRY_RTOL  # noqa: E402


def _layer(rows=8, cols=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4 * cols, cols)) @ rng.standard_normal((cols, cols)) * 0.3
    return rng.standard_normal((rows, cols)).astype(np.float32), x.T @ x


@pytest.mark.parametrize("scale", [1e-45, 1e45])
@pytest.mark.parametrize("pattern, sparsity", [("unstructured", 0.5), ("2:4", None)])
def test_the_hessians_scale_changes_nothing(scale, pattern, sparsity):
    w, h = _layer()
    base = sparsegpt_prune(torch.from_numpy(w), torch.from_numpy(h), pattern=pattern, sparsity=sparsity)
    scaled = sparsegpt_prune(torch.from_numpy(w), torch.from_numpy(h * scale), pattern=pattern, sparsity=sparsity)
    assert torch.equal(scaled.mask, base.mask)
    torch.testing.assert_close(scaled.weight, base.weight, rtol=1e-5, atol=1e-6)
    assert scaled.error == pytest.approx(base.error * scale, rel=1e-4)  # the loss is in H's own units


@pytest.mark.parametrize("scale", [1e-45, 1e45])
def test_the_saliency_diagonal_keeps_the_hessians_units(scale):
    _, h = _layer()
    base = inverse_diagonal(torch.from_numpy(h)).value
    scaled = inverse_diagonal(torch.from_numpy(h * scale)).value
    torch.testing.assert_close(scaled * scale, base, rtol=1e-10, atol=0)


def test_an_asymmetric_hessian_is_refused_by_name():
    w, h = _layer()
    bad = h.copy()
    bad[3, 7] += 1e-3 * np.abs(h).max()
    with pytest.raises(errors.HessianError, match=r"'fc1'.*not symmetric"):
        sparsegpt_prune(w, bad, sparsity=0.5, name="fc1")
    with pytest.raises(errors.HessianError, match=r"'fc1'.*not symmetric"):
        inverse_diagonal(torch.from_numpy(bad), name="fc1")


def test_round_off_asymmetry_is_accepted_and_symmetrised():
    """Within SYMMETRY_RTOL the upper triangle counts as much as the lower: H and H^T agree."""
    w, h = _layer()
    off = h.copy()
    off[7, 3] += 0.1 * SYMMETRY_RTOL * np.abs(h).max()
    a = sparsegpt_prune(w, off, sparsity=0.5, dtype="float64")
    b = sparsegpt_prune(w, np.ascontiguousarray(off.T), sparsity=0.5, dtype="float64")
    assert np.array_equal(a.mask, b.mask)
    np.testing.assert_allclose(a.weight, b.weight, rtol=1e-9, atol=1e-9)


def test_a_negative_diagonal_entry_is_refused_by_name():
    w, h = _layer()
    bad = h.copy()
    bad[5, 5] = -1.0
    with pytest.raises(errors.HessianError, match=r"'fc1'.*diagonal entry 5 is -1"):
        sparsegpt_prune(w, bad, sparsity=0.5, name="fc1")
    with pytest.raises(errors.HessianError, match=r"'fc1'.*diagonal entry 5 is -1"):
        damped_inverse_factor(torch.from_numpy(bad), name="fc1")


def _model_and_stats(hessian_of_second):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 8), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    model[1] = torch.nn.Identity()
    ctx = pp.CalibrationContext()
    _, h = _layer()
    for name, hess in (("0.weight", h), ("2.weight", hessian_of_second(h))):
        stats = pp.ActivationStats(np.sqrt(np.diag(h)), 128)
        stats.hessian = hess
        ctx.add(name, stats)
    return model, ctx


def test_a_negative_diagonal_from_a_file_names_the_file_and_changes_nothing(tmp_path):
    def corrupt(h):
        h = h.copy()
        h[2, 2] = -4.0
        return h

    model, ctx = _model_and_stats(corrupt)
    path = ctx.save(tmp_path / "stats.safetensors")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(errors.HessianError) as info:
        pp.torch.prune_model(model, 0.5, method="sparsegpt", calibration=path)
    message = str(info.value)
    assert "stats.safetensors" in message and "'2.weight'" in message and "diagonal entry 2 is -4" in message
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_a_negative_diagonal_on_the_checkpoint_path_names_the_file(tmp_path, capsys):
    from safetensors.numpy import save_file

    def corrupt(h):
        h = h.copy()
        h[2, 2] = -4.0
        return h

    model, ctx = _model_and_stats(corrupt)
    stats = ctx.save(tmp_path / "stats.safetensors")
    save_file({n: p.detach().numpy() for n, p in model.named_parameters()}, str(tmp_path / "m.safetensors"))
    from pruneplug.cli import main

    rc = main(["prune", str(tmp_path / "m.safetensors"), "-o", str(tmp_path / "o.safetensors"),
               "--method", "sparsegpt", "--calibration", str(stats), "--sparsity", "0.5"])
    err = capsys.readouterr().err
    assert rc != 0 and "stats.safetensors" in err and "'2.weight'" in err and "diagonal entry 2" in err, err
    assert "Traceback" not in err and not (tmp_path / "o.safetensors").exists()


def test_a_float16_update_that_overflows_is_refused_and_writes_nothing():
    """Four inputs that always move together: pruning two of them moves their weight onto the two
    kept ones, 60000 + 60000 > 65504 (float16's largest)."""
    w = torch.full((1, 4), 60000.0, dtype=torch.float16)
    h = torch.ones(4, 4, dtype=torch.float64) + 1e-3 * torch.eye(4, dtype=torch.float64)
    with pytest.raises(errors.NonFiniteError, match=r"'fc1'.*overflows float16"):
        sparsegpt_prune(w, h, pattern="2:4", name="fc1")
    assert sparsegpt_prune(w.float(), h, pattern="2:4").weight.abs().max() > 65504  # what float16 cannot hold

    model = torch.nn.Linear(4, 1, bias=False).half()
    with torch.no_grad():
        model.weight.fill_(60000.0)
    ctx = pp.CalibrationContext()
    stats = pp.ActivationStats(np.ones(4), 16)
    stats.hessian = h.numpy()
    ctx.add("weight", stats)
    with pytest.raises(errors.NonFiniteError, match=r"'weight'.*overflows float16"):
        pp.torch.prune_model(model, pattern="2:4", method="sparsegpt", calibration=ctx)
    assert torch.equal(model.weight, torch.full((1, 4), 60000.0, dtype=torch.float16))


@pytest.mark.parametrize("scale", [1e-45, 1e45])
def test_a_saliency_out_of_the_score_dtypes_range_is_refused_not_all_ties(scale):
    """The saliency alone (no update) is w^2 / diag(H^-1) in float32: at 1e-45 or 1e45 it rounds to
    all 0 or all inf, and the mask would follow the index alone. Refused, naming the tensor; a scale
    in range gives the same mask as the unscaled Hessian."""
    w, h = _layer()
    stats = pp.ActivationStats(np.sqrt(np.diag(h)), 128)
    stats.hessian = h * scale
    target = w.copy()
    with pytest.raises(errors.HessianError, match=r"'fc1'.*does not fit float32"):
        pp.criteria.prune_scored(target, pp.SparseGPTImportance(update=False), sparsity=0.5, calibration=stats,
                                 layer="fc1")
    assert np.array_equal(target, w)
    masks = []
    for c in (1.0, 1e-20, 1e20):
        stats.hessian = h * c
        pruned = w.copy()
        pp.criteria.prune_scored(pruned, pp.SparseGPTImportance(update=False), sparsity=0.5, calibration=stats)
        masks.append(pruned == 0)
    assert np.array_equal(masks[0], masks[1]) and np.array_equal(masks[0], masks[2])

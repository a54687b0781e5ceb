"""prune_model on hostile or awkward inputs (issue 19): Conv1D layouts, frozen parameters, bad
argument types, meta tensors, and failures part-way that must leave the model untouched."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")

import pruneplug as pp  # noqa: E402
from pruneplug.errors import CalibrationError, InvalidArgumentError, NonFiniteError  # noqa: E402


class Conv1D(torch.nn.Module):
    """Hugging Face's GPT-2 ``Conv1D`` (``pruneplug.torch.layers.is_conv1d`` recognises it by name):
    a linear layer whose weight is stored ``[in, out]``."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = torch.nn.Parameter(torch.randn(nx, nf))
        self.bias = torch.nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).reshape(*x.shape[:-1], self.nf)


def _gpt2_like() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(Conv1D(12, 16), torch.nn.ReLU(), Conv1D(8, 12))


def _state(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _same(model, before) -> bool:
    return all(torch.equal(p.detach().view(torch.uint8), before[n].view(torch.uint8))
               for n, p in model.named_parameters())


# --- item 1: Conv1D ([in, out]) weights -------------------------------------------------------
@pytest.mark.parametrize("method", ["l1", "l2"])
def test_magnitude_nm_on_conv1d_groups_along_the_inputs(method):
    model = _gpt2_like()
    dense = _state(model)
    pp.torch.prune_model(model, pattern="2:4", method=method)
    for name, p in model.named_parameters():
        if name.endswith("weight"):  # [in, out]: groups of 4 consecutive inputs of each output unit
            w = p.detach()
            assert pp.is_nm_sparse(w.t().contiguous(), 2, 4), name
            expect = pp.prune(dense[name].t().contiguous(), pattern="2:4", method=method).t()
            assert torch.equal(w, expect), name


def test_magnitude_row_groups_on_conv1d_compare_within_each_output_unit():
    model = _gpt2_like()
    dense = _state(model)
    pp.torch.prune_model(model, 0.5, method="l1", groups="row")
    w = model[0].weight.detach()
    assert ((w == 0).sum(dim=0) == 8).all()  # each output unit (a column) loses exactly half its 16 inputs
    assert torch.equal(w, pp.prune(dense["0.weight"].t().contiguous(), 0.5, groups="row").t())


def test_magnitude_matches_wanda_with_unit_norms_on_conv1d():
    """Wanda with all input norms equal ranks as magnitude does: the same mask for N:M and row groups."""
    for pattern, sparsity, groups in (("2:4", None, None), ("unstructured", 0.5, "row")):
        a, b = _gpt2_like(), _gpt2_like()
        ctx = pp.CalibrationContext()
        for layer in ("0", "2"):
            nx = a.get_submodule(layer).weight.shape[0]
            ctx.add(f"{layer}.weight", pp.ActivationStats(np.ones(nx), 1, input_axis=0))
        pp.torch.prune_model(a, sparsity, pattern=pattern, method="l1", groups=groups)
        pp.torch.prune_model(b, sparsity, pattern=pattern, method="wanda", calibration=ctx, groups=groups)
        assert all(torch.equal(pa == 0, pb == 0) for pa, pb in zip(a.parameters(), b.parameters())), pattern


# --- item 2: frozen parameters, autograd's version counter ---------------------------------------
def test_frozen_parameters_are_pruned_and_the_write_is_visible_to_autograd():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    model.weight.requires_grad_(False)
    x = torch.randn(3, 8, requires_grad=True)
    y = model(x).sum()  # saves the weight for x's gradient
    version = model.weight._version
    pp.torch.prune_model(model, 0.5)
    assert (model.weight == 0).sum() == 16
    assert model.weight._version > version
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_trainable_parameters_get_their_version_bumped_too(scope):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4))
    versions = [p._version for p in model.parameters()]
    pp.torch.prune_model(model, 0.5, scope=scope)
    assert model[0].weight._version > versions[0] and model[1].weight._version > versions[2]


# --- item 11: calibration of the wrong type, meta tensors -------------------------------------------
@pytest.mark.parametrize("value", [42, 1.5, b"stats.safetensors", object()])
def test_calibration_of_the_wrong_type_is_a_typed_error_naming_it(value):
    model = torch.nn.Linear(8, 4)
    before = _state(model)
    with pytest.raises(InvalidArgumentError, match="calibration="):
        pp.torch.prune_model(model, 0.5, method="wanda", calibration=value)
    assert _same(model, before)


def test_meta_model_is_a_typed_error_naming_the_tensor():
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4))
    with pytest.raises(InvalidArgumentError, match=r"'0\.weight' is on the meta device"):
        pp.torch.prune_model(model, 0.5)


# --- item 13: nothing half-done ----------------------------------------------------------------------
def _two_layers():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))


def _ctx(model, skip=None, bad=None, hessian=True):
    ctx = pp.CalibrationContext()
    for name in ("0.weight", "2.weight"):
        if name == skip:
            continue
        n = 5 if name == bad else 8
        x = np.random.default_rng(0).standard_normal((32, n))
        stats = pp.ActivationStats.from_inputs(x)
        if hessian and name != skip:
            stats.hessian = x.T @ x
        ctx.add(name, stats)
    return ctx


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_statistics_that_do_not_fit_a_later_layer_change_nothing(method):
    model = _two_layers()
    before = _state(model)
    with pytest.raises(CalibrationError, match="2.weight"):
        pp.torch.prune_model(model, 0.5, method=method, calibration=_ctx(model, bad="2.weight"))
    assert _same(model, before)


def test_a_later_layer_without_a_hessian_changes_nothing():
    model = _two_layers()
    ctx = _ctx(model)
    ctx["2.weight"].hessian = None
    before = _state(model)
    with pytest.raises(CalibrationError, match=r"'2\.weight' have no Hessian"):
        pp.torch.prune_model(model, 0.5, method="sparsegpt", calibration=ctx)
    assert _same(model, before)


def test_a_later_layer_without_statistics_from_batches_changes_nothing():
    """One-pass calibration from batches through a model whose forward never reaches a selected
    layer: that layer has no statistics, and the earlier layer must not be pruned either."""

    class Skips(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(8, 8)
            self.b = torch.nn.Linear(8, 8)

        def forward(self, x):
            return self.a(x)

    torch.manual_seed(0)
    model = Skips()
    before = _state(model)
    with pytest.raises(CalibrationError, match=r"b\.weight"):
        pp.torch.prune_model(model, 0.5, method="wanda", calibration=[torch.randn(4, 8)])
    assert _same(model, before)


def test_a_later_layer_with_nan_weights_changes_nothing():
    model = _two_layers()
    with torch.no_grad():
        model[2].weight[1, 3] = float("nan")
    before = _state(model)
    with pytest.raises(NonFiniteError, match=r"'2\.weight'.*flat index 11"):
        pp.torch.prune_model(model, 0.5)
    assert _same(model, before)


# --- item 4 (prune_model side): max_layer_sparsity and the OWL parameters ---------------------------
@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("value", [float("nan"), -1.0, 1.5, float("inf"), "0.5", True])
def test_max_layer_sparsity_is_validated(value, scope):
    model = _two_layers()
    before = _state(model)
    with pytest.raises(InvalidArgumentError, match="max_layer_sparsity="):
        pp.torch.prune_model(model, 0.5, scope=scope, max_layer_sparsity=value)
    assert _same(model, before)


def test_max_layer_sparsity_below_one_is_refused_with_uniform_layer_scope():
    model = _two_layers()
    before = _state(model)
    with pytest.raises(InvalidArgumentError, match=r"max_layer_sparsity=0\.3 applies to scope='global'"):
        pp.torch.prune_model(model, 0.5, max_layer_sparsity=0.3)
    assert _same(model, before)
    pp.torch.prune_model(model, 0.5, max_layer_sparsity=1.0)  # "no cap" is accepted anywhere


@pytest.mark.parametrize("kwargs", [{"owl_m": -3.0}, {"owl_m": float("inf")}, {"owl_lambda": 0.9},
                                    {"owl_lambda": float("nan")}])
def test_owl_parameters_are_validated_even_without_owl(kwargs):
    model = _two_layers()
    with pytest.raises(InvalidArgumentError, match="owl_"):
        pp.torch.prune_model(model, 0.5, **kwargs)

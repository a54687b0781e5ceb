"""pruneplug.torch: calibration hooks, prune_model, the torch.nn.utils.prune method, and the
calibrate / prune --method wanda command line on a tiny BERT directory built here."""

import json
from pathlib import Path
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pruneplug as pp  # noqa: E402
from pruneplug.errors import CalibrationError, CalibrationRequiredError, InvalidArgumentError  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_models import same_layout_untouched_identical, tiny_bert_dir  # noqa: E402


def _mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8))


# float32 accumulation (the default, as the references) agrees with float64 to a few float32 ulps
# on these sizes (docs/calibration.md, "Statistics precision")
@pytest.mark.parametrize("stats_dtype, rtol", [("float64", 1e-12), ("float32", 1e-6)])
def test_calibrate_sums_squares_and_counts_tokens(stats_dtype, rtol):
    model = _mlp()
    x = torch.randn(3, 5, 12, generator=torch.Generator().manual_seed(5))
    ctx = pp.torch.calibrate(model, [x[:2], x[2:]], stats_dtype=stats_dtype)
    s = ctx["0.weight"]
    expected = (x.double().reshape(-1, 12) ** 2).sum(0).numpy()
    np.testing.assert_allclose(s.input_norms, expected, rtol=rtol)
    if stats_dtype == "float32":  # float32 sums: not the float64 ones bit for bit, so the test can tell
        assert not np.array_equal(s.input_norms, expected)
    assert s.count == 15 and s.input_norms.dtype == np.float64
    hidden = torch.relu(model[0](x)).double().reshape(-1, 16)
    np.testing.assert_allclose(ctx["2.weight"].input_norms, (hidden ** 2).sum(0).detach().numpy(), rtol=1e-6)


class _Tokens(torch.nn.Module):
    """A model taking input_ids and attention_mask (like a transformer)."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(20, 6)
        self.proj = torch.nn.Linear(6, 4)

    def forward(self, input_ids, attention_mask):
        return self.proj(self.embed(input_ids))


def test_padding_is_excluded_by_the_attention_mask():
    torch.manual_seed(1)
    model = _Tokens()
    ids = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    ctx = pp.torch.calibrate(model, [{"input_ids": ids, "attention_mask": mask}], stats_dtype="float64")
    real = model.embed(ids)[mask.bool()].double()
    assert ctx["proj.weight"].count == 5
    np.testing.assert_allclose(ctx["proj.weight"].input_norms, (real ** 2).sum(0).detach().numpy(), rtol=1e-12)


def test_prune_model_magnitude_wanda_and_report():
    model = _mlp()
    report = pp.torch.prune_model(model, 0.5)
    assert report.totals()["selected_sparsity_after"] == 0.5
    assert {t.name: t.status for t in report.tensors}["0.bias"] == "kept"
    model = _mlp()
    x = torch.randn(64, 12, generator=torch.Generator().manual_seed(6))
    ref = _mlp()
    ctx = pp.torch.calibrate(ref, [x])
    pp.torch.prune_model(model, 0.5, method="wanda", calibration=ctx)
    w = model[0].weight.detach().numpy()
    assert ((w == 0).sum(axis=1) == 6).all()  # per row
    scores = pp.WandaImportance().compute(ref[0].weight.detach().numpy(), ctx["0.weight"]).values
    assert np.array_equal(w != 0, pp.generate_unstructured_mask(scores, 0.5, groups="row").data)
    with pytest.raises(CalibrationRequiredError):
        pp.torch.prune_model(_mlp(), 0.5, method="wanda")
    with pytest.raises(InvalidArgumentError, match="global"):
        pp.torch.prune_model(_mlp(), 0.5, method="wanda", scope="global", calibration=ctx)


def test_prune_model_global_include_exclude_and_nm():
    model = _mlp()
    pp.torch.prune_model(model, 0.5, scope="global")
    total = sum(int((p == 0).sum()) for n, p in model.named_parameters() if n.endswith("weight"))
    assert total == round(0.5 * (12 * 16 + 16 * 8))
    model = _mlp()
    pp.torch.prune_model(model, pattern="2:4", exclude=[r"^2\."])
    assert pp.is_nm_sparse(model[0].weight.detach().numpy(), 2, 4)
    assert int((model[2].weight == 0).sum()) == 0


def test_sequential_and_one_pass_calibration_from_batches():
    g = torch.Generator().manual_seed(7)  # inputs independent of the global RNG (test order)
    x = [torch.randn(32, 12, generator=g) for _ in range(2)]
    one, seq = _mlp(), _mlp()
    pp.torch.prune_model(one, 0.5, method="wanda", calibration=x, calibration_mode="one-pass")
    stats = pp.CalibrationContext()
    pp.torch.prune_model(seq, 0.5, method="wanda", calibration=x, calibration_mode="sequential", statistics=stats)
    # the first block sees the same inputs either way; the second sees the pruned first block's output
    assert torch.equal(one[0].weight, seq[0].weight)
    pruned_hidden = torch.relu(seq[0](torch.cat(x))).double()
    np.testing.assert_allclose(stats["2.weight"].input_norms, (pruned_hidden ** 2).sum(0).detach().numpy(), rtol=1e-6)


def test_stats_that_do_not_fit_the_model():
    ctx = pp.CalibrationContext({"0.weight": pp.ActivationStats(np.ones(5), 3),
                                 "2.weight": pp.ActivationStats(np.ones(16), 3)})
    model = _mlp()
    before = model[0].weight.detach().clone()
    with pytest.raises(CalibrationError, match="'0.weight'"):
        pp.torch.prune_model(model, 0.5, method="wanda", calibration=ctx)
    assert torch.equal(model[0].weight, before)


@pytest.mark.parametrize("amount", [0.3, 0.5, 7])
def test_exact_l1_unstructured_matches_torch_without_ties(amount):
    import torch.nn.utils.prune as prune

    a, b = _mlp(3), _mlp(3)
    prune.global_unstructured([(a[0], "weight"), (a[2], "weight")], pruning_method=prune.L1Unstructured, amount=amount)
    prune.global_unstructured([(b[0], "weight"), (b[2], "weight")], pruning_method=pp.torch.ExactL1Unstructured,
                              amount=amount)
    assert torch.equal(a[0].weight_mask, b[0].weight_mask) and torch.equal(a[2].weight_mask, b[2].weight_mask)
    c, d = _mlp(4), _mlp(4)
    prune.l1_unstructured(c[0], "weight", amount=amount)
    pp.torch.ExactL1Unstructured.apply(d[0], "weight", amount=amount)
    assert torch.equal(c[0].weight_mask, d[0].weight_mask)


def test_exact_l1_unstructured_ties_by_index():
    import torch.nn.utils.prune as prune

    layer = torch.nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -1.0, 1.0, 2.0], [1.0, 3.0, -1.0, 4.0]]))
    pp.torch.ExactL1Unstructured.apply(layer, "weight", amount=3)
    assert layer.weight_mask.tolist() == [[0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]]
    prune.remove(layer, "weight")


# -- a tiny BERT model directory and the command line -----------------------------------------
@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    return tiny_bert_dir(tmp_path_factory.mktemp("tinybert"))


@pytest.fixture()
def texts(tmp_path):
    p = tmp_path / "texts.txt"
    p.write_text("the cat sat on the mat\n\nthe big dog ran fast\na small red cat\nthe blue dog sat\n")
    return p


def _cli(*args):
    from pruneplug.cli import main

    return main([str(a) for a in args])


def test_cli_calibrate_then_prune_streaming(bert_dir, texts, tmp_path, capsys):
    stats = tmp_path / "stats.safetensors"
    assert _cli("calibrate", bert_dir, texts, "-o", stats, "--seq-len", "8") == 0
    ctx = pp.CalibrationContext.load(stats)
    assert "encoder.layer.0.attention.self.query.weight" in ctx and ctx.metadata["mode"] == "one-pass"
    out = tmp_path / "pruned.safetensors"
    assert _cli("prune", bert_dir / "model.safetensors", "-o", out, "--method", "wanda", "--calibration", stats,
                "--sparsity", "0.5", "--progress", "never") == 0
    _, dst = same_layout_untouched_identical(bert_dir / "model.safetensors", out, ctx)
    for name in ctx:
        assert ((dst[name] == 0).sum(axis=1) == dst[name].shape[1] // 2).all(), name


def test_cli_one_step_model_directory(bert_dir, texts, tmp_path):
    from safetensors.numpy import load_file

    out = tmp_path / "out"
    assert _cli("prune", bert_dir, "-o", out, "--method", "wanda", "--calibration", texts, "--pattern", "2:4",
                "--progress", "never") == 0
    assert (out / "config.json").is_file() and (out / "vocab.txt").is_file()
    assert json.loads((out / "config.json").read_text()) == json.loads((bert_dir / "config.json").read_text())
    dst = load_file(str(out / "model.safetensors"))
    assert pp.is_nm_sparse(dst["encoder.layer.1.output.dense.weight"], 2, 4)
    import transformers

    transformers.AutoModel.from_pretrained(str(out))  # loads


def test_cli_bad_inputs_write_nothing(bert_dir, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    out = tmp_path / "stats.safetensors"
    assert _cli("calibrate", bert_dir, empty, "-o", out) == 1
    assert "holds no text" in capsys.readouterr().err and not out.exists()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{\"model_type\": \"nonsense\"}")
    good = tmp_path / "t.txt"
    good.write_text("the cat\n")
    assert _cli("calibrate", broken, good, "-o", out) == 1
    err = capsys.readouterr().err
    assert "transformers cannot" in err and str(broken) in err and not out.exists()
    # statistics of another model: named file and tensor, nothing written
    bad = tmp_path / "other.safetensors"
    pp.CalibrationContext({"encoder.layer.0.attention.self.query.weight": pp.ActivationStats(np.ones(7), 2)}).save(bad)
    dst = tmp_path / "never.safetensors"
    assert _cli("prune", bert_dir / "model.safetensors", "-o", dst, "--method", "wanda", "--calibration", bad,
                "--sparsity", "0.5") == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "attention.self" in err and not dst.exists()
    assert list(tmp_path.glob(".*tmp*")) == []

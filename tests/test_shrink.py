"""Structured pruning (pruneplug.structured, pp.torch.shrink_model, ``pruneplug shrink``): the
smaller model computes exactly what the original computes with the removed units masked out, its
config describes it, and bad requests are refused before anything changes. Tiny random-weight
models of tests/hf_zoo.py; nothing is downloaded."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install pruneplug[hf])")
pytest.importorskip("safetensors")

import pruneplug as pp  # noqa: E402
from pruneplug.cli import main  # noqa: E402
from pruneplug.errors import CalibrationRequiredError, CheckpointError, InvalidArgumentError  # noqa: E402
from pruneplug.structured import ShrinkRequest, shrink_model_dir  # noqa: E402
from pruneplug.structured.criteria import BlockChoice, UnitStats, get_unit_criterion, unit_criteria  # noqa: E402
from pruneplug.torch.hf import text_batches  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from hf_zoo import build_model_dir, load as _load, sample_texts, ZooCache  # noqa: E402

pytestmark = pytest.mark.hf

GQA_KINDS = ["llama", "qwen2", "qwen3", "mistral", "phi3", "gemma"]  # 4 query heads over 2 KV heads
LAYERS = 5


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return ZooCache(tmp_path_factory.mktemp("shrink-zoo"), LAYERS).get


def _ids() -> torch.Tensor:
    return torch.tensor([[2, 5, 9, 17, 33, 60, 7, 100, 11, 4], [2, 8, 8, 1, 90, 45, 6, 30, 21, 3]])


def _outputs(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _blocks(model):
    from pruneplug.structured.plan import find_block_list

    return find_block_list(model)[1]


def _masked(model, report, mlp_down: str | None, o_proj: str | None, head_dim: int = 8):
    """The original model with the report's units masked out: the removed neurons' columns of
    down_proj and the removed heads' columns of o_proj zeroed; dropped blocks replaced by identity."""
    blocks = _blocks(model)
    with torch.no_grad():
        for i, removed in report.neurons_removed.items():
            down = blocks[i].get_submodule(mlp_down)
            if isinstance(down, torch.nn.Linear):
                down.weight[:, removed] = 0
            else:  # Conv1D [in, out]
                down.weight[removed, :] = 0
        for i, removed in report.heads_removed.items():
            o = blocks[i].get_submodule(o_proj)
            for h in removed:
                o.weight[:, h * head_dim:(h + 1) * head_dim] = 0
    for i in report.dropped_blocks:
        def identity(module, args, kwargs, output):
            hidden = args[0] if args else kwargs["hidden_states"]
            return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden
        blocks[i].register_forward_hook(identity, with_kwargs=True)
    return model


def _texts(tmp_path: Path) -> Path:
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(sample_texts(12)) + "\n")
    return path


MLP_DOWN = {"gpt2": "mlp.c_proj", "bert": "output.dense"}


@pytest.mark.parametrize("kind", GQA_KINDS + ["gpt2", "bert"])
def test_shrunk_directory_equals_masked_original(zoo, tmp_path, kind):
    """No compensation: the written model's logits are the original's with the removed neurons,
    heads and blocks masked out, and its config describes it (widths, heads, head_dim, depth)."""
    src = zoo(kind)
    heads = 0.5 if kind in GQA_KINDS else 0.0
    blocks = 1 if kind != "bert" else 0
    report = shrink_model_dir(src, tmp_path / "out", ShrinkRequest(mlp=0.25, heads=heads, drop_blocks=blocks),
                              _texts(tmp_path), samples=12, seq_len=16, batch_size=4)
    small = _load(tmp_path / "out", kind)
    original = _masked(_load(src, kind), report, MLP_DOWN.get(kind, "mlp.down_proj"), "self_attn.o_proj")
    ids = _ids()
    expected = (original(input_ids=ids).logits if kind != "bert" else original(input_ids=ids).logits).detach()
    torch.testing.assert_close(_outputs(small, ids), expected, rtol=1e-5, atol=1e-5)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config.get("intermediate_size", config.get("n_inner")) == 48
    assert config.get("num_hidden_layers", config.get("n_layer")) == LAYERS - blocks
    if heads:
        assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (2, 2, 8)
        assert all(len(v) == 2 for v in report.heads_removed.values())
        # one query head of each KV group: heads 0-1 read KV head 0, heads 2-3 KV head 1
        assert all(sorted(h // 2 for h in v) == [0, 1] for v in report.heads_removed.values())
    assert report.params_after == sum(p.numel() for p in small.parameters()) + _untied_head(small)
    assert report.params_after < report.params_before
    assert len(report.dropped_blocks) == blocks and 0 not in report.dropped_blocks
    assert LAYERS - 1 not in report.dropped_blocks


def _untied_head(model) -> int:
    return 0


@pytest.mark.parametrize("kind", ["llama", "phi3", "gpt2"])
def test_shrink_model_in_memory_matches_directory(zoo, tmp_path, kind):
    """pp.torch.shrink_model on the loaded model takes the same decisions and computes the same
    logits as the directory path, and leaves a model whose config matches its modules."""
    src = zoo(kind)
    texts = sample_texts(12)
    kw = dict(mlp=0.25, drop_blocks=2, heads=0.5 if kind != "gpt2" else 0.0)
    report_dir = shrink_model_dir(src, tmp_path / "out", ShrinkRequest(**kw), texts, samples=12, seq_len=16,
                                  batch_size=4)
    model = _load(src, kind)
    tok = transformers.AutoTokenizer.from_pretrained(str(src))
    report = pp.torch.shrink_model(model, calibration=text_batches(tok, texts, 16, 4), **kw)
    assert report.dropped_blocks == report_dir.dropped_blocks
    assert report.neurons_removed == report_dir.neurons_removed
    assert report.heads_removed == report_dir.heads_removed
    assert report.params_after == pp.torch.count_parameters(model)
    ids = _ids()
    torch.testing.assert_close(_outputs(model, ids), _outputs(_load(tmp_path / "out", kind), ids), rtol=1e-5,
                               atol=1e-5)
    assert len(_blocks(model)) == model.config.num_hidden_layers == LAYERS - 2
    with torch.no_grad():  # generation with the KV cache runs on the renumbered blocks
        out = model.generate(ids[:1, :4], max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 7)


def test_magnitude_needs_no_calibration(zoo, tmp_path):
    report = shrink_model_dir(zoo("llama"), tmp_path / "out", ShrinkRequest(mlp=0.5, heads=0.5, method="magnitude"))
    assert report.method == "magnitude" and report.block_scores is None
    small = _load(tmp_path / "out", "llama")
    assert small.config.intermediate_size == 32
    original = _masked(_load(zoo("llama"), "llama"), report, "mlp.down_proj", "self_attn.o_proj")
    torch.testing.assert_close(_outputs(small, _ids()), _outputs(original, _ids()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["block_influence", "angular"])
def test_block_methods_keep_the_ends_and_angular_drops_a_run(zoo, tmp_path, method):
    report = shrink_model_dir(zoo("qwen2"), tmp_path / "out", ShrinkRequest(drop_blocks=2, block_method=method),
                              sample_texts(8), samples=8, seq_len=16, batch_size=4)
    assert len(report.dropped_blocks) == 2 and not {0, LAYERS - 1} & set(report.dropped_blocks)
    if method == "angular":
        assert report.dropped_blocks[1] == report.dropped_blocks[0] + 1
    assert len(report.block_scores) == LAYERS


def test_compensation_bias_and_refit(zoo, tmp_path):
    """bias: Llama's config switches on mlp_bias and the directory loads; the down_proj bias is
    exactly W[:, removed] @ mean(x[removed]) over the calibration tokens. refit: the down
    projection's output on the calibration tokens is closer to the dense one than the plain cut's."""
    src = zoo("llama")
    texts = sample_texts(12)
    tok = transformers.AutoTokenizer.from_pretrained(str(src))
    batches = text_batches(tok, texts, 16, 4)
    dense = _load(src, "llama")
    block = _blocks(dense)[1]
    inputs = []
    handle = block.mlp.down_proj.register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach()))
    with torch.no_grad():
        for b in batches:
            dense(**b)
    handle.remove()
    x = torch.cat([t[b["attention_mask"].bool()] for t, b in zip(inputs, batches)]).double()
    w = block.mlp.down_proj.weight.detach().double()
    report = shrink_model_dir(src, tmp_path / "bias", ShrinkRequest(mlp=0.25, compensate="bias"), texts, samples=12,
                              seq_len=16, batch_size=4)
    small = _load(tmp_path / "bias", "llama")
    assert small.config.mlp_bias is True
    removed = report.neurons_removed[1]
    expected = w[:, removed] @ x[:, removed].mean(0)
    torch.testing.assert_close(_blocks(small)[1].mlp.down_proj.bias.double(), expected, rtol=1e-5, atol=1e-6)
    assert float(_blocks(small)[1].mlp.gate_proj.bias.detach().abs().max()) == 0.0

    plain = pp.torch.shrink_model(_load(src, "llama"), mlp=0.25, calibration=batches)
    refit_model = _load(src, "llama")
    refit = pp.torch.shrink_model(refit_model, mlp=0.25, calibration=batches, compensate="refit", damping=1e-4)
    assert refit.neurons_removed == plain.neurons_removed
    keep = [j for j in range(64) if j not in refit.neurons_removed[1]]
    target = x @ w.t()
    cut_error = float(((x[:, keep] @ w[:, keep].t()) - target).norm())
    refit_error = float(((x[:, keep] @ _blocks(refit_model)[1].mlp.down_proj.weight.detach().double().t()) - target).norm())
    assert refit_error < cut_error


def test_bad_requests_are_refused_and_change_nothing(zoo, tmp_path):
    model = _load(zoo("llama"), "llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cases = [
        (dict(mlp=1.0), "mlp=1.0"),
        (dict(mlp=0.999), "none would be left"),
        (dict(heads=0.25), "GQA needs the same whole number"),
        (dict(experts=0.5), "experts"),
        (dict(drop_blocks=4), "first and last are kept"),
        (dict(mlp=0.25, compensate="sometimes"), "compensate"),
        (dict(mlp=0.25, method="block_influence"), "does not score neurons"),
        (dict(mlp=0.25, method="nonesuch"), "not a registered unit criterion"),
        (dict(), "nothing to remove"),
    ]
    for kw, words in cases:
        with pytest.raises(InvalidArgumentError, match=words):
            pp.torch.shrink_model(model, **kw)
    with pytest.raises(CalibrationRequiredError, match="activation"):
        pp.torch.shrink_model(model, mlp=0.25)  # activation needs calibration: refused before any change
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and model.config.intermediate_size == 64
    gpt2 = _load(zoo("gpt2"), "gpt2")
    with pytest.raises(InvalidArgumentError, match="head_dim as hidden_size / num_heads"):
        pp.torch.shrink_model(gpt2, heads=0.5, method="magnitude")
    mixtral = build_model_dir("mixtral", tmp_path / "mixtral")
    with pytest.raises(InvalidArgumentError, match="no dense MLP"):
        shrink_model_dir(mixtral, tmp_path / "never", ShrinkRequest(mlp=0.25, method="magnitude"))
    with pytest.raises(InvalidArgumentError, match="no bias"):  # Qwen2's o_proj has no bias and no switch
        shrink_model_dir(zoo("qwen2"), tmp_path / "never", ShrinkRequest(heads=0.5, compensate="bias"),
                         sample_texts(4))
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("kind, request_", [("llama", ShrinkRequest(mlp=0.25, method="magnitude")),
                                            ("qwen2_moe", ShrinkRequest(experts=0.25, expert_method="magnitude"))])
def test_directory_failure_leaves_nothing(zoo, tmp_path, monkeypatch, kind, request_):
    import pruneplug.structured.directory as directory

    def broken(*args, **kwargs):
        raise OSError("disk full (simulated)")
    monkeypatch.setattr(directory, "_save_shard", broken)
    with pytest.raises(OSError, match="simulated"):
        shrink_model_dir(zoo(kind), tmp_path / "out", request_)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    monkeypatch.undo()
    (tmp_path / "exists").mkdir()
    with pytest.raises(CheckpointError, match="exists"):
        shrink_model_dir(zoo("llama"), tmp_path / "exists", ShrinkRequest(mlp=0.25, method="magnitude"))
    with pytest.raises(CheckpointError, match="same path"):
        shrink_model_dir(zoo("llama"), tmp_path / "o2", ShrinkRequest(mlp=0.25, method="magnitude"),
                         report=tmp_path / "o2")


def test_cli_shrink_report_and_dry_run(zoo, tmp_path, capsys):
    texts = _texts(tmp_path)
    out, report = tmp_path / "small", tmp_path / "report.json"
    assert main(["shrink", str(zoo("mistral")), "-o", str(out), "--mlp", "0.25", "--drop-blocks", "1",
                 "--calibration", str(texts), "--samples", "12", "--seq-len", "16", "--report", str(report),
                 "--progress", "never"]) == 0
    data = json.loads(report.read_text())
    assert data["params_after"] < data["params_before"]
    assert data["config_changes"] == {"intermediate_size": 48, "num_hidden_layers": LAYERS - 1}
    assert len(data["neurons_removed"]) == LAYERS - 1
    assert "parameters" in capsys.readouterr().out
    assert main(["shrink", str(zoo("mistral")), "-o", str(tmp_path / "dry"), "--mlp", "0.25", "--method",
                 "magnitude", "--dry-run", "--progress", "never"]) == 0
    assert not (tmp_path / "dry").exists()
    assert main(["shrink", str(zoo("mistral")), "-o", str(tmp_path / "bad"), "--mlp", "1.5"]) != 0
    assert "expected a fraction" in capsys.readouterr().err
    stats = tmp_path / "stats.safetensors"  # a statistics file is refused, by content, naming the file
    from safetensors.numpy import save_file
    save_file({"x": np.zeros(2, dtype=np.float32)}, str(stats))
    assert main(["shrink", str(zoo("mistral")), "-o", str(tmp_path / "bad"), "--mlp", "0.25", "--calibration",
                 str(stats), "--progress", "never"]) != 0
    err = capsys.readouterr().err
    assert "stats.safetensors" in err and "is a statistics file" in err and "needs calibration texts" in err
    assert not (tmp_path / "bad").exists()


def test_unit_criteria_on_numbers():
    """Each built-in on hand-made numbers: which unit it ranks lowest."""
    assert {"magnitude", "activation", "flap", "block_influence", "angular"} <= set(unit_criteria())
    rows = np.array([[1.0, 0.0], [3.0, 0.0], [2.0, 0.0]])
    down = np.array([[1.0, 1.0, 0.1]])
    stats = UnitStats(abs_sum=np.array([10.0, 1.0, 5.0]), sum=np.array([0.0, 1.0, 5.0]),
                      sq_sum=np.array([100.0, 1.0, 25.0]), count=1)
    w = {"rows": rows, "down": down}
    assert np.argmin(get_unit_criterion("magnitude").neuron_scores(w, None)) == 0  # sqrt(1+1) < sqrt(9+1), sqrt(4+.01)
    assert np.argmin(get_unit_criterion("activation").neuron_scores(w, stats)) == 1
    # flap: variance x column norm^2: [100, 0, 0 * 0.01]: neurons 1 and 2 have no fluctuation
    np.testing.assert_allclose(get_unit_criterion("flap").neuron_scores(w, stats), [100.0, 0.0, 0.0])
    cosine = np.array([[0.5, 0.2], [0.9, 0.8], [0.95, np.nan], [0.1, np.nan]])
    angle = np.arccos(cosine) / np.pi
    measured = BlockChoice(cosine, angle)
    assert get_unit_criterion("block_influence").choose_blocks(measured, 2, [1, 2]) == [1, 2]
    assert get_unit_criterion("block_influence").choose_blocks(measured, 1, [0, 1, 2, 3]) == [2]
    assert get_unit_criterion("angular").choose_blocks(measured, 2, [0, 1, 2, 3]) == [1, 2]
    with pytest.raises(CalibrationRequiredError):
        get_unit_criterion("activation").neuron_scores(w, None)

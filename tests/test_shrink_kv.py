"""Removing whole KV groups (``kv_heads``, ``--kv-heads``): a group goes with its k/v rows, the q
rows of all its query heads and their o_proj columns. Without compensation the smaller model
computes exactly what the original computes with those query heads' o_proj columns zeroed (the
removed k/v then feed nothing), in memory and from a directory. Tiny random-weight models of
tests/hf_zoo.py (4 query heads over 2 KV heads, head_dim 8); nothing is downloaded."""

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
from pruneplug.errors import CalibrationRequiredError, InvalidArgumentError  # noqa: E402
from pruneplug.structured import ShrinkRequest, shrink_model_dir  # noqa: E402
from pruneplug.structured.plan import find_block_list  # noqa: E402
from pruneplug.structured.units import (AttentionLayout, group_scores, head_cuts, keep_heads,  # noqa: E402
                                        keep_kv_groups)
from pruneplug.torch.hf import text_batches  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from hf_zoo import build_model_dir, load as _load, sample_texts, ZooCache  # noqa: E402

pytestmark = pytest.mark.hf

GQA_KINDS = ["llama", "qwen2", "qwen3", "mistral", "phi3", "gemma"]
LAYERS = 3
HEAD_DIM = 8


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return ZooCache(tmp_path_factory.mktemp("shrink-kv-zoo"), LAYERS).get


def _ids() -> torch.Tensor:
    return torch.tensor([[2, 5, 9, 17, 33, 60, 7, 100, 11, 4], [2, 8, 8, 1, 90, 45, 6, 30, 21, 3]])


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=_ids()).logits


def _blocks(model):
    return find_block_list(model)[1]


def _masked(model, heads_removed: dict[int, list[int]]):
    """The original model with the removed query heads' o_proj input columns zeroed."""
    with torch.no_grad():
        for i, removed in heads_removed.items():
            o = _blocks(model)[i].self_attn.o_proj
            for h in removed:
                o.weight[:, h * HEAD_DIM:(h + 1) * HEAD_DIM] = 0
    return model


def _group_heads(groups: list[int], group_size: int) -> list[int]:
    return [g * group_size + j for g in groups for j in range(group_size)]


def _batches(src: Path, texts: list[str]) -> list:
    return text_batches(transformers.AutoTokenizer.from_pretrained(str(src)), texts, 16, 4)


@pytest.mark.parametrize("kind", GQA_KINDS)
def test_kv_groups_shrunk_equals_masked_original(zoo, tmp_path, kind):
    """kv_heads=0.5 removes one of the two KV groups of every block, with both its query heads:
    from a directory and in memory, the same groups go, the logits are the original's with those
    heads masked out, the config and the modules say 2 query heads over 1 KV head."""
    src = zoo(kind)
    texts = sample_texts(12)
    report = shrink_model_dir(src, tmp_path / "out", ShrinkRequest(kv_heads=0.5), texts, samples=12, seq_len=16,
                              batch_size=4)
    assert sorted(report.kv_heads_removed) == list(range(LAYERS))
    for i, groups in report.kv_heads_removed.items():
        assert len(groups) == 1 and report.heads_removed[i] == _group_heads(groups, 2)
    expected = _logits(_masked(_load(src, kind), report.heads_removed))

    small = _load(tmp_path / "out", kind)
    torch.testing.assert_close(_logits(small), expected, rtol=1e-5, atol=1e-5)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (2, 1, HEAD_DIM)
    attention = _blocks(small)[0].self_attn
    if kind == "phi3":  # fused: 2 query heads, then 1 k head, then 1 v head
        assert tuple(attention.qkv_proj.weight.shape) == (4 * HEAD_DIM, 32)
    else:
        assert tuple(attention.q_proj.weight.shape) == (2 * HEAD_DIM, 32)
        assert tuple(attention.k_proj.weight.shape) == tuple(attention.v_proj.weight.shape) == (HEAD_DIM, 32)
    assert tuple(attention.o_proj.weight.shape) == (32, 2 * HEAD_DIM)
    assert report.params_after == pp.torch.count_parameters(small) < report.params_before

    model = _load(src, kind)
    in_memory = pp.torch.shrink_model(model, kv_heads=0.5, calibration=_batches(src, texts))
    assert in_memory.kv_heads_removed == report.kv_heads_removed
    assert in_memory.heads_removed == report.heads_removed
    torch.testing.assert_close(_logits(model), expected, rtol=1e-5, atol=1e-5)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (2, 1)
    assert in_memory.params_after == pp.torch.count_parameters(model) == report.params_after
    with torch.no_grad():  # generation with the KV cache, which holds one KV head now
        out = model.generate(_ids()[:1, :4], max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 7)


@pytest.mark.parametrize("kind, overrides", [
    ("llama", dict(num_attention_heads=8, num_key_value_heads=4, head_dim=HEAD_DIM)),
    ("phi3", {}),
])
def test_kv_groups_combine_with_heads(tmp_path, kind, overrides):
    """kv_heads and heads together: whole groups go first, then ``heads`` of the query heads of
    every group that stays (8 heads over 4 KV heads -> 2 over 2; 4 over 2 -> 1 over 1)."""
    src = build_model_dir(kind, tmp_path / "src", num_hidden_layers=2, **overrides)
    heads, kv = overrides.get("num_attention_heads", 4), overrides.get("num_key_value_heads", 2)
    group = heads // kv
    report = shrink_model_dir(src, tmp_path / "out", ShrinkRequest(kv_heads=0.5, heads=0.5, method="magnitude"))
    for i, groups in report.kv_heads_removed.items():
        assert len(groups) == kv // 2
        whole = _group_heads(groups, group)
        assert set(whole) <= set(report.heads_removed[i])
        partial = sorted(set(report.heads_removed[i]) - set(whole))
        kept_groups = [g for g in range(kv) if g not in groups]
        assert sorted(h // group for h in partial) == kept_groups  # group/2 = 1 from each remaining group
    small = _load(tmp_path / "out", kind)
    assert (small.config.num_attention_heads, small.config.num_key_value_heads) == (heads // 4, kv // 2)
    expected = _logits(_masked(_load(src, kind), report.heads_removed))
    torch.testing.assert_close(_logits(small), expected, rtol=1e-5, atol=1e-5)
    model = _load(src, kind)
    pp.torch.shrink_model(model, kv_heads=0.5, heads=0.5, method="magnitude")
    torch.testing.assert_close(_logits(model), expected, rtol=1e-5, atol=1e-5)


def test_kv_groups_compensation(zoo, tmp_path):
    """bias: o_proj's new bias is W[:, removed] @ mean(x[removed]) over the calibration tokens
    (removed: every feature of the removed groups' query heads), the q/k/v biases are zeros of the
    cut sizes, the directory loads. refit: same groups removed as without it, o_proj keeps the
    kept columns' shape, and its output on the calibration tokens is closer to the dense one."""
    src = zoo("llama")
    texts = sample_texts(12)
    batches = _batches(src, texts)
    dense = _load(src, "llama")
    o_proj = _blocks(dense)[1].self_attn.o_proj
    inputs = []
    handle = o_proj.register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach()))
    with torch.no_grad():
        for b in batches:
            dense(**b)
    handle.remove()
    x = torch.cat([t[b["attention_mask"].bool()] for t, b in zip(inputs, batches)]).double()
    w = o_proj.weight.detach().double()

    report = shrink_model_dir(src, tmp_path / "bias", ShrinkRequest(kv_heads=0.5, compensate="bias"), texts,
                              samples=12, seq_len=16, batch_size=4)
    small = _load(tmp_path / "bias", "llama")
    assert small.config.attention_bias is True and small.config.num_key_value_heads == 1
    removed = [h * HEAD_DIM + j for h in report.heads_removed[1] for j in range(HEAD_DIM)]
    attention = _blocks(small)[1].self_attn
    torch.testing.assert_close(attention.o_proj.bias.double(), w[:, removed] @ x[:, removed].mean(0), rtol=1e-5,
                               atol=1e-6)
    assert [tuple(getattr(attention, n).bias.shape) for n in ("q_proj", "k_proj", "v_proj")] == [(16,), (8,), (8,)]
    assert all(float(getattr(attention, n).bias.detach().abs().max()) == 0.0 for n in ("q_proj", "k_proj", "v_proj"))

    plain = pp.torch.shrink_model(_load(src, "llama"), kv_heads=0.5, calibration=batches)
    refit_model = _load(src, "llama")
    refit = pp.torch.shrink_model(refit_model, kv_heads=0.5, calibration=batches, compensate="refit", damping=1e-4)
    assert refit.kv_heads_removed == plain.kv_heads_removed == report.kv_heads_removed
    new_o = _blocks(refit_model)[1].self_attn.o_proj.weight.detach().double()
    assert tuple(new_o.shape) == (32, 2 * HEAD_DIM)
    keep = [f for f in range(4 * HEAD_DIM) if f not in removed]
    target = x @ w.t()
    cut_error = float(((x[:, keep] @ w[:, keep].t()) - target).norm())
    refit_error = float(((x[:, keep] @ new_o.t()) - target).norm())
    assert refit_error < cut_error


def test_kv_heads_refusals_change_nothing(zoo, tmp_path, monkeypatch):
    """Bad kv_heads requests are refused before any change, naming the argument."""
    model = _load(zoo("llama"), "llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cases = [
        (dict(kv_heads=1.0), r"kv_heads=1.0: expected a fraction"),
        (dict(kv_heads=True), r"kv_heads=True: expected a fraction"),
        (dict(kv_heads=0.75), r"removes 2 of the 2 KV groups of each block: none would be left"),
        (dict(kv_heads=0.2), r"nothing to remove"),  # round(0.4) = 0 groups
        (dict(kv_heads=0.5, heads=0.25), r"GQA needs the same whole number"),
        (dict(kv_heads=0.5, method="block_influence"), r"does not score heads"),
    ]
    for kw, words in cases:
        with pytest.raises(InvalidArgumentError, match=words):
            pp.torch.shrink_model(model, **kw)
    with pytest.raises(CalibrationRequiredError, match="activation"):
        pp.torch.shrink_model(model, kv_heads=0.5)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (4, 2)

    mha = build_model_dir("llama", tmp_path / "mha", num_hidden_layers=2, num_key_value_heads=4)
    with pytest.raises(InvalidArgumentError, match=r"multi-head attention .* use heads=0.5"):
        shrink_model_dir(mha, tmp_path / "never", ShrinkRequest(kv_heads=0.5, method="magnitude"))
    for kind in ("gpt2", "bert"):
        with pytest.raises(InvalidArgumentError, match=r"kv_heads: .* head_dim as hidden_size / num_heads"):
            pp.torch.shrink_model(_load(zoo(kind), kind), kv_heads=0.5, method="magnitude")
    with pytest.raises(InvalidArgumentError, match="no bias"):  # Qwen2's o_proj has no bias and no switch
        shrink_model_dir(zoo("qwen2"), tmp_path / "never", ShrinkRequest(kv_heads=0.5, compensate="bias"),
                         sample_texts(4))

    import pruneplug.structured.directory as directory

    def broken(*args, **kwargs):
        raise OSError("disk full (simulated)")
    monkeypatch.setattr(directory, "_save_shard", broken)
    with pytest.raises(OSError, match="simulated"):
        shrink_model_dir(zoo("phi3"), tmp_path / "never", ShrinkRequest(kv_heads=0.5, method="magnitude"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mha"]


def test_cli_kv_heads(zoo, tmp_path, capsys):
    out, report = tmp_path / "small", tmp_path / "report.json"
    assert main(["shrink", str(zoo("mistral")), "-o", str(out), "--kv-heads", "0.5", "--method", "magnitude",
                 "--report", str(report), "--progress", "never"]) == 0
    data = json.loads(report.read_text())
    assert data["config_changes"] == {"num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": HEAD_DIM}
    assert sorted(data["kv_heads_removed"]) == [str(i) for i in range(LAYERS)]
    assert "(1 whole KV group)" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["num_key_value_heads"] == 1
    assert main(["shrink", str(zoo("mistral")), "-o", str(tmp_path / "bad"), "--kv-heads", "0.75",
                 "--method", "magnitude"]) != 0
    assert "none would be left" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    with pytest.raises(SystemExit):
        main(["shrink", "--help"])
    assert "--kv-heads FRACTION" in capsys.readouterr().out


def test_kv_group_scores_and_cuts_on_numbers():
    """Hand-made scores: a group scores the sum of its query heads'; the cuts keep the kept groups'
    k/v rows and the kept query heads' q rows and o columns (separate and fused q/k/v)."""
    layout = AttentionLayout(("q", "k", "v"), "o", heads=6, kv_heads=3, head_dim=2)
    scores = np.array([1.0, 1.0, 5.0, 0.0, 2.0, 2.0])
    assert group_scores(scores, layout).tolist() == [2.0, 5.0, 4.0]
    groups = keep_kv_groups(scores, layout, 1)
    assert groups.tolist() == [1, 2]
    assert keep_heads(scores, layout, 0, groups).tolist() == [2, 3, 4, 5]
    keep = keep_heads(scores, layout, 1, groups)  # group 2's tie: the lower index goes
    assert keep.tolist() == [2, 5]
    cuts = head_cuts(layout, keep, groups)
    assert {name: index.tolist() for name, (axis, index) in cuts.items() if name.endswith("weight")} == {
        "q.weight": [4, 5, 10, 11], "k.weight": [2, 3, 4, 5], "v.weight": [2, 3, 4, 5], "o.weight": [4, 5, 10, 11]}
    assert cuts["o.weight"][0] == 1 and cuts["k.weight"][0] == 0
    fused = AttentionLayout(("qkv",), "o", heads=6, kv_heads=3, head_dim=2)  # q rows 0-11, k 12-17, v 18-23
    assert head_cuts(fused, keep, groups)["qkv.weight"][1].tolist() == [4, 5, 10, 11, 14, 15, 16, 17, 20, 21, 22, 23]
    assert "k.weight" not in head_cuts(layout, keep)  # query heads only: k and v untouched

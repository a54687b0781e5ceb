"""Shrinking with block reconstruction (``shrink_model(..., reconstruct=)``, ``shrink_model_dir(...,
reconstruct=)``, ``pruneplug shrink --reconstruct``): each shrunk block is re-fitted to the dense
block's outputs before the next block is measured. Tiny random-weight models of tests/hf_zoo.py;
nothing is downloaded."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install pruneplug[hf])")
pytest.importorskip("safetensors")

import pruneplug as pp  # noqa: E402
from pruneplug.cli import main  # noqa: E402
from pruneplug.errors import CalibrationRequiredError, InvalidArgumentError  # noqa: E402
from pruneplug.structured import ShrinkRequest, shrink_model_dir  # noqa: E402
from pruneplug.torch.hf import text_batches  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from hf_zoo import load as _load, sample_texts, ZooCache  # noqa: E402

pytestmark = pytest.mark.hf

LAYERS = 4
TEXTS = sample_texts(12)  # 3 calibration batches of 4: 2 trained on, 1 held out
STEPS = pp.ReconstructSettings(steps=3, lr=1e-3)
CALIBRATION = dict(samples=12, seq_len=16, batch_size=4)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return ZooCache(tmp_path_factory.mktemp("shrink-refit-zoo"), LAYERS).get


def _batches(directory: Path) -> list:
    return text_batches(transformers.AutoTokenizer.from_pretrained(str(directory)), TEXTS, 16, 4)


def _same_bits(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sorted(sa) == sorted(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def _first_block_error(model, dense_outputs: list, batches: list) -> float:
    """Mean squared error of the first block's outputs against the dense first block's, over the
    real tokens of every batch (the first block's inputs are the embeddings in both models)."""
    outputs = _first_block_outputs(model, batches)
    err = [((o - d)[b["attention_mask"].bool()]).pow(2) for o, d, b in zip(outputs, dense_outputs, batches)]
    return float(torch.cat(err).mean())


def _first_block_outputs(model, batches: list) -> list:
    from pruneplug.structured.plan import find_block_list

    kept = []
    block = find_block_list(model)[1][0]
    handle = block.register_forward_hook(
        lambda module, args, output: kept.append((output[0] if isinstance(output, tuple) else output).detach()))
    try:
        with torch.no_grad():
            for b in batches:
                model(**b)
    finally:
        handle.remove()
    return kept


def test_refit_lowers_every_block_loss_and_drops_the_same_blocks(zoo):
    """Every kept block's training loss goes down and its held-out loss does not go up; the dropped
    block is the one shrinking without reconstruction drops, and it has no losses; the first
    block's error against the dense first block, measured here on its own, is lower than the plain
    cut's."""
    src = zoo("llama")
    batches = _batches(src)
    kw = dict(mlp=0.25, heads=0.5, drop_blocks=1)
    dense_first = _first_block_outputs(_load(src, "llama"), batches)
    plain_model, refit_model = _load(src, "llama"), _load(src, "llama")
    plain = pp.torch.shrink_model(plain_model, calibration=batches, **kw)
    report = pp.torch.shrink_model(refit_model, calibration=batches, reconstruct=STEPS, **kw)
    assert report.dropped_blocks == plain.dropped_blocks and len(report.dropped_blocks) == 1
    kept = [i for i in range(LAYERS) if i not in report.dropped_blocks]
    assert sorted(report.reconstruction_losses) == kept
    for losses in report.reconstruction_losses.values():
        assert losses["after"] < losses["before"]
        assert losses["held_out_after"] <= losses["held_out_before"]
        assert losses["steps"] == 3 and 0 <= losses["best_step"] <= 3
    assert report.reconstruct == STEPS.describe() and plain.reconstruct is None
    assert report.neurons_removed[0] == plain.neurons_removed[0]  # block 0 sees the same inputs in both
    assert _first_block_error(refit_model, dense_first, batches) < _first_block_error(plain_model, dense_first,
                                                                                      batches)
    assert "re-fitted 3 blocks (3 steps)" in report.summary()
    assert refit_model.config.num_hidden_layers == LAYERS - 1
    assert report.params_after == plain.params_after == pp.torch.count_parameters(refit_model)


def test_refit_is_deterministic_for_a_seed(zoo):
    src = zoo("llama")
    batches = _batches(src)
    models = [_load(src, "llama") for _ in range(3)]
    seeds = [0, 0, 7]
    for model, seed in zip(models, seeds):
        pp.torch.shrink_model(model, mlp=0.25, calibration=batches,
                              reconstruct=pp.ReconstructSettings(steps=3, lr=1e-3, holdout=0.0, seed=seed))
    assert _same_bits(models[0], models[1])
    assert not _same_bits(models[0], models[2])  # the seed orders the batches: it matters


def test_zero_steps_is_shrinking_without_reconstruction(zoo, tmp_path):
    """steps=0 takes the path without reconstruction: the same model in memory, the same bytes
    and the same report on disk."""
    src = zoo("llama")
    batches = _batches(src)
    kw = dict(mlp=0.25, heads=0.5, drop_blocks=1)
    without, off = _load(src, "llama"), _load(src, "llama")
    a = pp.torch.shrink_model(without, calibration=batches, **kw)
    b = pp.torch.shrink_model(off, calibration=batches, reconstruct=pp.ReconstructSettings(steps=0), **kw)
    assert _same_bits(without, off)
    assert {**a.to_dict(), "seconds": 0} == {**b.to_dict(), "seconds": 0}
    shrink_model_dir(src, tmp_path / "without", ShrinkRequest(**kw), TEXTS, report=tmp_path / "a.json",
                     **CALIBRATION)
    shrink_model_dir(src, tmp_path / "off", ShrinkRequest(**kw), TEXTS, report=tmp_path / "b.json",
                     reconstruct=pp.ReconstructSettings(steps=0), **CALIBRATION)
    names = sorted(p.name for p in (tmp_path / "without").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "off").iterdir())
    for name in names:
        assert (tmp_path / "without" / name).read_bytes() == (tmp_path / "off" / name).read_bytes(), name
    reports = [json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json")]
    assert "reconstruction_losses" not in reports[0]
    assert {**reports[0], "seconds": 0} == {**reports[1], "seconds": 0}


@pytest.mark.parametrize("kind, kw", [
    ("llama", dict(mlp=0.25, heads=0.5, drop_blocks=1, compensate="bias")),  # mlp_bias switched on
    ("phi3", dict(mlp=0.25, heads=0.5, drop_blocks=1)),  # fused Linears; the attention reads the config
    ("gpt2", dict(mlp=0.25, compensate="refit")),  # Conv1D
])
def test_memory_and_directory_give_the_same_weights(zoo, tmp_path, kind, kw):
    """Float32 checkpoint, float32 model, same device and threads: the directory's re-fitted
    weights are the in-memory ones bit for bit, and the directory loads with
    AutoModelForCausalLM.from_pretrained and generates."""
    src = zoo(kind)
    model = _load(src, kind)
    report = pp.torch.shrink_model(model, calibration=_batches(src), reconstruct=STEPS, **kw)
    report_dir = shrink_model_dir(src, tmp_path / "out", ShrinkRequest(**kw), TEXTS, reconstruct=STEPS,
                                  **CALIBRATION)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    assert _same_bits(model, loaded)
    assert report_dir.dropped_blocks == report.dropped_blocks
    assert report_dir.neurons_removed == report.neurons_removed and report_dir.heads_removed == report.heads_removed
    assert [v["after"] for v in report_dir.reconstruction_losses.values()] == [
        v["after"] for v in report.reconstruction_losses.values()]
    assert report_dir.params_after == report.params_after == pp.torch.count_parameters(loaded)
    with torch.no_grad():
        out = loaded.generate(torch.tensor([[2, 5, 9, 17]]), max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 7)


@pytest.mark.parametrize("train", ["norms", "lowrank", "all"])
def test_each_train_kind_moves_what_it_names_the_same_in_memory_and_on_disk(zoo, tmp_path, train):
    """qwen2 (q/k/v biases). The first block is cut the same with and without the re-fit (its
    inputs are the embeddings either way), so what the re-fit moved there shows against the run
    without it: norms and biases only (``norms``), 2-D weights only (``lowrank``), both (``all``)."""
    kw = dict(mlp=0.25, heads=0.5)
    settings = pp.ReconstructSettings(steps=3, lr=1e-3, train=train, rank=2)
    src = zoo("qwen2")
    plain = _load(src, "qwen2")
    pp.torch.shrink_model(plain, calibration=_batches(src), **kw)
    model = _load(src, "qwen2")
    report = pp.torch.shrink_model(model, calibration=_batches(src), reconstruct=settings, **kw)
    shrink_model_dir(src, tmp_path / "out", ShrinkRequest(**kw), TEXTS, reconstruct=settings, **CALIBRATION)
    assert _same_bits(model, transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval())
    before, after = plain.state_dict(), model.state_dict()
    moved = {n for n in after if n.startswith("model.layers.0.") and not torch.equal(after[n], before[n])}
    vectors = {n for n in moved if after[n].dim() == 1}
    expected = {"norms": (True, False), "lowrank": (False, True), "all": (True, True)}[train]
    assert (bool(vectors), bool(moved - vectors)) == expected, moved
    if train != "lowrank":
        assert "model.layers.0.self_attn.q_proj.bias" in vectors and "model.layers.0.input_layernorm.weight" in vectors
    for loss in report.reconstruction_losses.values():
        assert loss["after"] <= loss["before"], loss


def test_refusals_come_before_any_change(zoo, tmp_path, capsys):
    src = zoo("llama")
    model = _load(src, "llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InvalidArgumentError, match="nothing to re-fit"):
        pp.torch.shrink_model(model, drop_blocks=1, calibration=_batches(src), reconstruct=STEPS)
    with pytest.raises(CalibrationRequiredError, match="reconstruct"):
        pp.torch.shrink_model(model, mlp=0.25, method="magnitude", reconstruct=STEPS)
    with pytest.raises(InvalidArgumentError, match="expected a pruneplug.ReconstructSettings"):
        pp.torch.shrink_model(model, mlp=0.25, method="magnitude", calibration=_batches(src), reconstruct=20)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and model.config.intermediate_size == 64
    with pytest.raises(CalibrationRequiredError, match="reconstruct"):
        shrink_model_dir(src, tmp_path / "never", ShrinkRequest(mlp=0.25, method="magnitude"), reconstruct=STEPS)
    assert not (tmp_path / "never").exists()
    assert main(["shrink", str(src), "-o", str(tmp_path / "never"), "--mlp", "0.25", "--method", "magnitude",
                 "--reconstruct", "-1"]) != 0
    assert "steps=-1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_reconstruct_options_report_and_progress(zoo, tmp_path, capsys):
    """``pruneplug shrink --reconstruct`` takes prune's options (one definition), writes the
    losses to the report and shows them on the progress line."""
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    out, report = tmp_path / "small", tmp_path / "report.json"
    assert main(["shrink", str(zoo("mistral")), "-o", str(out), "--mlp", "0.25", "--calibration", str(texts),
                 "--samples", "12", "--seq-len", "16", "--batch-size", "4", "--reconstruct", "2",
                 "--reconstruct-lr", "0.0001", "--reconstruct-loss", "nmse", "--reconstruct-seed", "3",
                 "--reconstruct-holdout", "0", "--reconstruct-batches", "2", "--report", str(report),
                 "--progress", "always"]) == 0
    data = json.loads(report.read_text())
    assert data["reconstruct"] == {"steps": 2, "lr": 0.0001, "batches": 2, "loss": "nmse", "holdout": 0.0, "seed": 3}
    assert sorted(data["reconstruction_losses"]) == [str(i) for i in range(LAYERS)]
    # no held-out split: the weights after the last step are kept, and they fit better
    assert all(v["after"] < v["before"] and v["held_out_before"] is None for v in data["reconstruction_losses"].values())
    captured = capsys.readouterr()
    assert "re-fit per block (loss before -> after): 0: " in captured.out
    assert "block 0: reconstructed: loss" in captured.err
    transformers.AutoModelForCausalLM.from_pretrained(str(out))


def test_shrink_and_prune_share_the_reconstruct_options():
    from pruneplug.cli import build_parser

    parser = build_parser()
    actions = {name: {a.dest: (a.type, a.choices, a.default) for a in sub._actions if a.dest.startswith("reconstruct")}
               for name, sub in parser._subparsers._group_actions[0].choices.items() if name in ("prune", "shrink")}
    assert set(actions["shrink"]) == {"reconstruct", "reconstruct_lr", "reconstruct_batches", "reconstruct_loss",
                                      "reconstruct_holdout", "reconstruct_seed", "reconstruct_train",
                                      "reconstruct_rank", "reconstruct_target", "reconstruct_schedule"}
    assert actions["shrink"] == actions["prune"]

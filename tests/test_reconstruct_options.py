"""Block reconstruction's options (issue 21): what is trained (``train="weights"|"norms"|"lowrank"|"all"``),
which teacher (``target="local"|"dense"``) and the learning-rate schedule. For each: pruned weights
stay +0.0 and the counts exact, a fixed seed gives the same bits, early stopping works, the dense
target is refused in one-pass mode (where it would equal the local one) and carries the dense
model's hidden states in sequential mode (in memory, on the stream, spilled to disk, across kill -9
and --resume). Tiny models only (tests/hf_zoo.py and toy
modules); nothing is downloaded."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pruneplug as pp  # noqa: E402
from pruneplug.errors import InvalidArgumentError  # noqa: E402
from pruneplug.torch.blockwise import Activations  # noqa: E402
from pruneplug.torch.layers import Layer  # noqa: E402
from pruneplug.torch.reconstruct import block_loss, norm_and_bias_parameters, reconstruct_block  # noqa: E402

WORDS = "the a cat dog sat on mat ran fast slow big small red blue".split()
OPTS = dict(samples=16, seq_len=16, batch_size=4)  # 4 calibration batches: 3 train, 1 held out
TRAINS = ("weights", "norms", "lowrank", "all")


def recon(**kwargs) -> "pp.ReconstructSettings":
    return pp.ReconstructSettings(**{"steps": 6, "lr": 1e-3, **kwargs})


# -- settings -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"train": "every"}, "train='every'"), ({"train": None}, "train=None"), ({"target": "global"}, "target='global'"),
    ({"rank": 0}, "rank=0"), ({"rank": 2.0}, "rank=2.0"), ({"rank": True}, "rank=True"),
    ({"schedule": "linear"}, "schedule='linear'"), ({"schedule": None}, "schedule=None")])
def test_bad_option_values_are_typed_errors_naming_field_and_value(kwargs, message):
    with pytest.raises(InvalidArgumentError, match=f"reconstruct {message}"):
        pp.ReconstructSettings(steps=1, **kwargs)


def test_describe_names_new_options_only_when_they_are_not_the_defaults():
    """The defaults describe themselves as before the options existed (the output's metadata and the
    stream's fingerprint stay the same bytes); rank only matters, and only shows, with lowrank."""
    assert set(recon().describe()) == {"steps", "lr", "batches", "loss", "holdout", "seed"}
    assert recon(rank=4).describe() == recon().describe()
    assert recon(train="lowrank", rank=4).describe()["rank"] == 4
    assert recon(train="norms", target="dense").describe() == {**recon().describe(), "train": "norms", "target": "dense"}
    assert recon(target="dense").dense_stream(sequential=True)
    assert not recon(target="dense").dense_stream(sequential=False)
    assert not recon(steps=0, target="dense").dense_stream(sequential=True)
    assert not recon().dense_stream(sequential=True)
    assert recon(schedule="cosine").describe() == {**recon().describe(), "schedule": "cosine"}
    moves = {train: (recon(train=train).trains_weights, recon(train=train).trains_norms) for train in TRAINS}
    assert moves == {"weights": (True, False), "norms": (False, True), "lowrank": (True, False), "all": (True, True)}


def test_the_cosine_schedule_decays_from_lr_towards_zero_and_constant_stays():
    cosine, constant = recon(steps=10, lr=0.5, schedule="cosine"), recon(steps=10, lr=0.5)
    rates = [cosine.learning_rate(n) for n in range(1, 11)]
    assert rates[0] == 0.5 and all(a > b > 0 for a, b in zip(rates, rates[1:]))
    assert rates[-1] == pytest.approx(0.5 * (1 + np.cos(np.pi * 0.9)) / 2)
    assert {constant.learning_rate(n) for n in range(1, 11)} == {0.5}


def test_dense_target_is_refused_in_one_pass_mode_only_when_it_would_act():
    with pytest.raises(InvalidArgumentError, match="target='dense' needs calibration mode 'sequential'.*'one-pass'"):
        recon(target="dense").check_mode("one-pass")
    recon(target="dense").check_mode("sequential")
    recon(steps=0, target="dense").check_mode("one-pass")  # off: nothing to refuse
    recon().check_mode("one-pass")


# -- the three kinds of training on a toy block (no transformers) ---------------------------------------------
class ToyBlock(torch.nn.Module):
    """A pre-norm residual MLP: LayerNorm, two biased Linears."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(8)
        self.up = torch.nn.Linear(8, 16)
        self.down = torch.nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.relu(self.up(self.norm(x))))


def _toy(seed: int = 0):
    """A toy block with half of each Linear pruned by magnitude, its dense twin's outputs as
    targets, and 5 calibration batches."""
    torch.manual_seed(seed)
    block = ToyBlock()
    g = torch.Generator().manual_seed(seed)
    batches = [torch.randn(2, 6, 8, generator=g) for _ in range(5)]
    targets = Activations()
    with torch.no_grad():
        for i, x in enumerate(batches):
            targets.put(i, block(x))
        for linear in (block.up, block.down):
            w = linear.weight
            w.masked_fill_(w.abs() <= w.abs().median(), 0.0)
    layers = [Layer("up.weight", block.up, 1), Layer("down.weight", block.down, 1)]
    return block, layers, batches, targets


def _refit(train: str, **kwargs):
    block, layers, batches, targets = _toy()
    before = {n: p.detach().clone() for n, p in block.named_parameters()}
    losses = reconstruct_block(block, layers, lambda i: block(batches[i]), targets, [None] * len(batches),
                               pp.ReconstructSettings(steps=10, lr=1e-2, train=train, **kwargs))
    return block, before, losses


@pytest.mark.parametrize("train", TRAINS)
def test_each_kind_keeps_pruned_weights_at_plus_zero_and_lowers_the_loss(train):
    block, before, losses = _refit(train)
    for name in ("up.weight", "down.weight"):
        w, w0 = block.get_parameter(name), before[name]
        assert torch.equal(w == 0, w0 == 0), f"{name}: the zeros moved"
        assert not torch.signbit(w[w == 0]).any(), f"{name}: a pruned weight is -0.0"
    changed = {n for n, p in block.named_parameters() if not torch.equal(p, before[n])}
    expected = {"weights": {"up.weight", "down.weight"},
                "norms": {"norm.weight", "norm.bias", "up.bias", "down.bias"},
                "lowrank": {"up.weight", "down.weight"},
                "all": {"up.weight", "down.weight", "norm.weight", "norm.bias", "up.bias", "down.bias"}}[train]
    assert changed == expected
    assert losses["after"] < losses["before"] and losses["held_out_after"] < losses["held_out_before"], losses
    assert all(p.requires_grad for p in block.parameters())  # restored (all were True)
    assert all(p.grad is None for p in block.parameters())
    assert not block.up._forward_hooks and not block.down._forward_hooks  # the adapters' hooks are gone


@pytest.mark.parametrize("train", TRAINS)
def test_each_kind_gives_the_same_bits_for_the_same_seed(train):
    a, _, la = _refit(train, seed=3)
    b, _, lb = _refit(train, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert {k: v for k, v in la.items() if k != "seconds"} == {k: v for k, v in lb.items() if k != "seconds"}


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_each_adam_step_runs_at_the_schedules_learning_rate(monkeypatch, schedule):
    """The rate Adam actually uses at each step is ``settings.learning_rate(step)``."""
    used: list[float] = []
    step = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        used.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)
    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    _, _, losses = _refit("weights", schedule=schedule)
    settings = pp.ReconstructSettings(steps=10, lr=1e-2, schedule=schedule)
    assert used == [settings.learning_rate(n) for n in range(1, 11)]
    assert losses["after"] < losses["before"]


def test_the_cosine_schedule_changes_the_result_and_repeats_bit_for_bit():
    cosine, _, _ = _refit("weights", schedule="cosine", holdout=0)
    again, _, _ = _refit("weights", schedule="cosine", holdout=0)
    constant, _, _ = _refit("weights", holdout=0)
    assert all(torch.equal(p, q) for p, q in zip(cosine.parameters(), again.parameters()))
    assert not torch.equal(cosine.up.weight, constant.up.weight)


def test_the_lowrank_seed_draws_the_adapters():
    """holdout=0: every step is kept, so the seed's effect (batch order and A) shows in the weights."""
    a, _, _ = _refit("lowrank", seed=0, holdout=0)
    b, _, _ = _refit("lowrank", seed=1, holdout=0)
    assert not torch.equal(a.up.weight, b.up.weight)


def test_lowrank_trains_a_rank_r_update_merged_into_the_kept_weights():
    """With rank 1 the update W_after - W_before is (b a^T) * mask: every 2x2 minor over kept
    entries vanishes (b_i a_j b_k a_l = b_i a_l b_k a_j); the pruned entries of the update are +0.0.
    (With rank 2 this fails: checked by hand.)"""
    block, before, _ = _refit("lowrank", rank=1, holdout=0)
    update = (block.up.weight - before["up.weight"]).detach().double()
    keep = before["up.weight"] != 0
    assert update.abs().sum() > 0
    assert torch.equal(update[~keep], torch.zeros_like(update[~keep]))
    minors = []
    rows, cols = update.shape
    for i in range(rows):
        for k in range(i + 1, rows):
            both = (keep[i] & keep[k]).nonzero().flatten().tolist()
            for j, l in zip(both, both[1:]):
                minors.append(float(update[i, j] * update[k, l] - update[i, l] * update[k, j]))
    assert len(minors) > 10  # the mask leaves plenty of kept 2x2 minors
    scale = float(update.abs().max()) ** 2
    assert max(abs(m) for m in minors) <= 1e-5 * scale


def test_norm_and_bias_parameters_find_norms_and_linear_biases_by_kind():
    class RMSNorm(torch.nn.Module):  # a model's own norm class, recognised by its name
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(4))

    block = torch.nn.ModuleDict({"ln": RMSNorm(), "q": torch.nn.Linear(4, 4, bias=False), "v": torch.nn.Linear(4, 4),
                                 "act": torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False))})
    assert [n for n, _ in norm_and_bias_parameters(block)] == ["ln.weight", "v.bias"]


# -- on the tiny Hugging Face models ----------------------------------------------------------------------------
HF = all(importlib.util.find_spec(name) is not None for name in ("transformers", "safetensors"))
if HF:  # the toy tests above run without transformers; these need it
    import transformers

    from pruneplug.cli import main
    from pruneplug.stream import StreamOptions, prune_model_dir
    from pruneplug.torch.hf import load_texts, text_batches

    sys.path.insert(0, str(Path(__file__).parent))
    from hf_zoo import build_model_dir
needs_hf = pytest.mark.skipif(not HF, reason="transformers is not installed (pip install pruneplug[hf])")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("recon-options")
    rng = np.random.default_rng(0)
    texts = root / "texts.txt"
    texts.write_text("\n".join(" ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))) for _ in range(20)) + "\n")
    return root, texts


def _model_dir(zoo, kind: str) -> Path:
    root, _ = zoo
    path = root / kind
    return path if path.exists() else build_model_dir(kind, path)


def _stream(model_dir, out, texts, reconstruct, mode="sequential", **options):
    return prune_model_dir(model_dir, out, pp.PruneSettings("wanda", sparsity=0.5), texts,
                           options=StreamOptions(**OPTS, calibration_mode=mode, reconstruct=reconstruct, **options))


def _weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "model.safetensors"))


def _in_memory(model_dir, texts, reconstruct, mode="sequential"):
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    batches = text_batches(tokenizer, load_texts(texts, OPTS["samples"]), OPTS["seq_len"], OPTS["batch_size"])
    report = pp.torch.prune_model(model, 0.5, method="wanda", calibration=batches, calibration_mode=mode,
                                  reconstruct=reconstruct)
    return model, report, batches


def _losses(report) -> dict:
    return {block: {k: v for k, v in loss.items() if k != "seconds"}
            for block, loss in report.settings["reconstruction_losses"].items()}


@pytest.mark.hf
@needs_hf
@pytest.mark.parametrize("kind, train", [("llama", "norms"), ("qwen2", "norms"), ("gpt2", "lowrank"),
                                         ("llama", "lowrank"), ("qwen2", "all"), ("gpt2", "all")])
def test_one_pass_stream_keeps_the_masks_and_counts_for_norms_and_lowrank(zoo, tmp_path, kind, train):
    """One-pass mode: the masks (and with norms every linear weight) are those of the run without
    reconstruction; pruned weights +0.0; the counts the same; the loss falls in every block. qwen2:
    q/k/v biases; gpt2: Conv1D layers ([in, out]) and LayerNorm biases."""
    model_dir, (_, texts) = _model_dir(zoo, kind), zoo
    plain = _stream(model_dir, tmp_path / "plain", texts, pp.ReconstructSettings(), mode="one-pass")
    refit = _stream(model_dir, tmp_path / "refit", texts, recon(train=train, rank=4), mode="one-pass")
    a, b = _weights(tmp_path / "plain"), _weights(tmp_path / "refit")
    pruned = [r.name for r in refit.report.tensors if r.status == "pruned"]
    assert pruned
    for name in pruned:
        assert torch.equal(a[name] == 0, b[name] == 0), name
        assert not torch.signbit(b[name][b[name] == 0]).any(), f"{name}: a pruned weight is -0.0"
        assert torch.equal(a[name], b[name]) == (train == "norms"), name
    rows = lambda result: {r.name: (r.zeros_before, r.zeros_after, r.pruned) for r in result.report.tensors}
    assert rows(plain) == rows(refit)
    refitted = {r.name for r in refit.report.tensors if "re-fitted" in (r.reason or "")}
    changed = {n for n in a if not torch.equal(a[n], b[n])}
    if train == "norms":
        assert refitted == changed and refitted, (refitted, changed)
        assert all(b[n].dim() == 1 for n in refitted)  # norms and biases only
        if kind == "qwen2":
            assert "model.layers.0.self_attn.q_proj.bias" in refitted
    elif train == "all":  # the pruned weights and the norms and biases
        assert refitted and changed == set(pruned) | refitted, (refitted, changed)
        assert all(b[n].dim() == 1 for n in refitted)
    else:
        assert not refitted and changed == set(pruned)
    for block, loss in refit.report.settings["reconstruction_losses"].items():
        assert loss["after"] < loss["before"], (block, loss)
        assert loss["held_out_after"] <= loss["held_out_before"], (block, loss)
    assert refit.report.settings["reconstruct"]["train"] == train


@pytest.mark.hf
@needs_hf
@pytest.mark.parametrize("train, target", [("weights", "dense"), ("norms", "local"), ("norms", "dense"), ("all", "dense"),
                                           ("lowrank", "local"), ("lowrank", "dense")])
def test_every_new_option_gives_the_same_bits_twice_and_the_stream_equals_prune_model(zoo, tmp_path, train, target):
    """Sequential mode, in memory twice (the same bits) and on the stream (the same bits too: one
    engine), every selected sparsity exact."""
    model_dir, (_, texts) = _model_dir(zoo, "llama"), zoo
    settings = recon(train=train, target=target, rank=4)
    first, report, _ = _in_memory(model_dir, texts, settings)
    second, again, _ = _in_memory(model_dir, texts, settings)
    for (name, p), q in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(p, q), name
    assert _losses(report) == _losses(again)
    result = _stream(model_dir, tmp_path / "out", texts, settings)
    for name, tensor in _weights(tmp_path / "out").items():
        assert torch.equal(tensor, first.state_dict()[name]), name
    assert _losses(result.report) == _losses(report)
    assert report.totals()["selected_sparsity_after"] == pytest.approx(0.5)
    assert result.report.totals()["selected_sparsity_after"] == pytest.approx(0.5)


@pytest.mark.hf
@needs_hf
def test_dense_target_in_one_pass_mode_is_refused_before_anything_is_written_or_changed(zoo, tmp_path):
    """In one-pass mode the student's inputs are the dense model's: the dense target would silently
    equal the local one, so both front ends refuse it, and the failed call leaves nothing."""
    model_dir, (_, texts) = _model_dir(zoo, "llama"), zoo
    with pytest.raises(InvalidArgumentError, match="target='dense' needs calibration mode 'sequential'"):
        _stream(model_dir, tmp_path / "out", texts, recon(target="dense"), mode="one-pass")
    assert sorted(tmp_path.iterdir()) == []
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    batches = text_batches(tokenizer, load_texts(texts, OPTS["samples"]), OPTS["seq_len"], OPTS["batch_size"])
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    with pytest.raises(InvalidArgumentError, match="mode 'one-pass'"):
        pp.torch.prune_model(model, 0.5, method="wanda", calibration=batches, reconstruct=recon(target="dense"))
    assert all(torch.equal(p, before[n]) for n, p in model.state_dict().items())


@pytest.mark.hf
@needs_hf
def test_dense_target_teaches_with_the_dense_models_hidden_states(zoo):
    """Three blocks, sequential mode. Block 0 sees the same inputs either way (equal losses). For
    block 1 the dense target's teacher is the dense model's own block-1 output: the re-fit's final
    training loss is the loss between the pruned model's block-1 output and the dense model's, as
    measured on the models themselves. The local target's is not (its teacher is the dense block
    on the pruned model's inputs)."""
    root, texts = zoo
    model_dir = root / "llama3"
    if not model_dir.exists():
        build_model_dir("llama", model_dir, num_hidden_layers=3)
    settings = recon(train="weights", target="dense")
    pruned, report, batches = _in_memory(model_dir, texts, settings)
    local_pruned, local_report, _ = _in_memory(model_dir, texts, recon(train="weights"))
    dense_model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    dense_losses, local_losses = _losses(report), _losses(local_report)
    assert dense_losses["model.layers.0"] == local_losses["model.layers.0"]

    def block_outputs(model, index):
        seen = []
        handle = model.model.layers[index].register_forward_hook(
            lambda m, a, out: seen.append((out[0] if isinstance(out, tuple) else out).detach()))
        with torch.no_grad():
            for batch in batches:
                model(**batch, use_cache=False)
        handle.remove()
        return seen

    train = settings.split(len(batches))[0]
    teacher = block_outputs(dense_model, 1)

    def measured(model):
        student = block_outputs(model, 1)
        return sum(float(block_loss(student[i], teacher[i], batches[i]["attention_mask"] != 0, "mse"))
                   for i in train) / len(train)

    assert measured(pruned) == pytest.approx(dense_losses["model.layers.1"]["after"], rel=1e-4)
    assert measured(local_pruned) != pytest.approx(local_losses["model.layers.1"]["after"], rel=1e-2)


@pytest.mark.hf
@needs_hf
@pytest.mark.parametrize("train", ["norms", "lowrank"])
def test_early_stopping_keeps_the_pruned_block_when_every_step_hurts(zoo, tmp_path, train):
    """lr=10 wrecks the block: no step beats the held-out loss after pruning, so that block is kept
    (the adapters merge as zero): the output equals the run without reconstruction."""
    model_dir, (_, texts) = _model_dir(zoo, "llama"), zoo
    _stream(model_dir, tmp_path / "plain", texts, pp.ReconstructSettings())
    wild = _stream(model_dir, tmp_path / "wild", texts, recon(train=train, target="dense", steps=3, lr=10.0))
    losses = wild.report.settings["reconstruction_losses"]
    assert all(v["best_step"] == 0 and v["held_out_after"] == v["held_out_before"] for v in losses.values()), losses
    a, b = _weights(tmp_path / "plain"), _weights(tmp_path / "wild")
    assert all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.hf
@needs_hf
def test_dense_stream_spilled_to_disk_gives_the_same_bytes_and_leaves_nothing(zoo, tmp_path):
    model_dir, (_, texts) = _model_dir(zoo, "llama"), zoo
    spill = tmp_path / "spill"
    spill.mkdir()
    settings = recon(train="lowrank", target="dense")
    _stream(model_dir, tmp_path / "memory", texts, settings)
    _stream(model_dir, tmp_path / "disk", texts, settings, offload_activations=spill)
    assert (tmp_path / "memory" / "model.safetensors").read_bytes() == (tmp_path / "disk" / "model.safetensors").read_bytes()
    assert not list(spill.iterdir())


from killer_progress import KILLER_PROGRESS  # noqa: E402

_KILLER = KILLER_PROGRESS + textwrap.dedent("""
    import pruneplug as pp
    from pruneplug.stream import StreamOptions, prune_model_dir

    prune_model_dir(sys.argv[1], sys.argv[2], pp.PruneSettings("wanda", sparsity=0.5), sys.argv[3],
                    options=StreamOptions(samples=16, seq_len=16, batch_size=4, calibration_mode="sequential",
                                          resume=sys.argv[6] == "resume",
                                          reconstruct=pp.ReconstructSettings(steps=6, lr=1e-3, train="lowrank",
                                                                             target="dense")),
                    progress=Killer())
""")


@pytest.mark.hf
@needs_hf
@pytest.mark.parametrize("step", ["dense forward", "reconstructing"])
def test_kill_9_in_the_second_block_then_resume_gives_the_same_bytes_with_the_dense_stream(zoo, tmp_path, step):
    """Killed in block 1 (after block 0 finished): the resumed run must take the dense stream
    entering block 1 from the staging area (dense-1/), or its teacher would be wrong."""
    model_dir, (_, texts) = _model_dir(zoo, "llama"), zoo
    whole, out = tmp_path / "whole", tmp_path / "out"

    def run(target, kill_at, mode):
        return subprocess.run([sys.executable, "-c", _KILLER, str(model_dir), str(target), str(texts), kill_at,
                               "1", mode], capture_output=True, text=True)
    assert run(whole, "never", "new").returncode == 0
    proc = run(out, step, "new")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    staging = tmp_path / ".out.pruneplug-stream"
    assert json.loads((staging / "journal.json").read_text())["done"] == 1
    assert sorted(p.name for p in staging.iterdir() if p.name.startswith(("hidden-", "dense-"))) == ["dense-1",
                                                                                                      "hidden-1"]
    proc = run(out, "never", "resume")
    assert proc.returncode == 0, proc.stderr
    digest = lambda p: hashlib.sha256((p / "model.safetensors").read_bytes()).hexdigest()
    assert digest(whole) == digest(out)


@pytest.mark.hf
@needs_hf
def test_cli_train_rank_target_and_schedule_options(zoo, tmp_path, capsys):
    model_dir, (_, texts) = _model_dir(zoo, "llama"), zoo
    base = ["prune", str(model_dir), "-o", str(tmp_path / "o"), "--method", "wanda", "--sparsity", "0.5",
            "--calibration", str(texts), "--samples", "16", "--seq-len", "16", "--batch-size", "4", "--quiet",
            "--reconstruct", "3"]
    assert main(base + ["--reconstruct-rank", "0", "--reconstruct-train", "lowrank"]) != 0
    assert "rank=0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / ".o.pruneplug-stream").exists()
    with pytest.raises(SystemExit):
        main(base + ["--reconstruct-target", "global"])
    assert "global" in capsys.readouterr().err
    assert main(base + ["--reconstruct-target", "dense"]) != 0  # wanda's default mode is one-pass
    assert "--calibration-mode sequential" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / ".o.pruneplug-stream").exists()
    assert main(base + ["--reconstruct-train", "lowrank", "--reconstruct-rank", "2", "--reconstruct-target", "dense",
                        "--reconstruct-schedule", "cosine", "--calibration-mode", "sequential",
                        "--report", str(tmp_path / "r.json")]) == 0
    settings = json.loads((tmp_path / "r.json").read_text())["settings"]
    assert settings["reconstruct"] == {"steps": 3, "lr": 1e-4, "batches": 1, "loss": "mse", "holdout": 0.125,
                                       "seed": 0, "train": "lowrank", "rank": 2, "target": "dense",
                                       "schedule": "cosine"}
    assert len(settings["reconstruction_losses"]) == 2


def test_the_memory_estimate_counts_the_dense_stream_and_what_is_trained():
    from pruneplug.stream.memory import estimate

    shape = dict(outside=1000, block=500, largest_in=64, largest_out=32, distinct_inputs=[32, 64], hidden=32,
                 tokens=4096, compute_bytes=4, stats_bytes=4, hessian=False, sequential=True, offload=False,
                 batch_tokens=512, reconstruct=True, block_out=256)
    weights = estimate(**shape)
    assert estimate(**shape, dense_stream=True).total - weights.total == 4096 * 32 * 4  # one more set
    spilled = {**shape, "offload": True}
    assert estimate(**spilled, dense_stream=True).activations - estimate(**spilled).activations == 512 * 32 * 4
    assert weights.total - estimate(**shape, reconstruct_train="norms").total == 4 * 500 * 4
    lowrank = estimate(**shape, reconstruct_train="lowrank", adapter=300)
    assert weights.total - lowrank.total == 2 * 500 * 4 - 4 * 300 * 4

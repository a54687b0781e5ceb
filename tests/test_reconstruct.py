"""Block reconstruction (pruneplug.ReconstructSettings, pruneplug.torch.reconstruct): after a block
is pruned its surviving weights are re-fitted to the dense block's outputs. On the stream and in
prune_model: masks and counts unchanged (pruned weights +0.0), the block error goes down,
deterministic, resumable after kill -9 byte for byte, off by default with the old bytes, bad
arguments refused. Tiny random-weight models (tests/hf_zoo.py); nothing is downloaded."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install pruneplug[hf])")
pytest.importorskip("safetensors")

import pruneplug as pp  # noqa: E402
from pruneplug.cli import main  # noqa: E402
from pruneplug.errors import CheckpointError, InvalidArgumentError  # noqa: E402
from pruneplug.stream import StreamOptions, prune_model_dir  # noqa: E402
from pruneplug.torch.hf import load_texts, text_batches  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from hf_zoo import build_model_dir  # noqa: E402

WORDS = "the a cat dog sat on mat ran fast slow big small red blue".split()
OPTS = dict(samples=16, seq_len=16, batch_size=4)  # 4 calibration batches: 3 train, 1 held out
RECON = pp.ReconstructSettings(steps=12, lr=1e-3)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    root = tmp_path_factory.mktemp("recon")
    rng = np.random.default_rng(0)
    texts = root / "texts.txt"
    texts.write_text("\n".join(" ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))) for _ in range(20)) + "\n")
    return build_model_dir("llama", root / "llama"), texts


def _stream(model_dir, out, texts, method, reconstruct=RECON, mode="sequential", resume=False, **kwargs):
    options = StreamOptions(**OPTS, calibration_mode=mode, resume=resume, reconstruct=reconstruct)
    return prune_model_dir(model_dir, out, pp.PruneSettings(method, **kwargs), texts, options=options)


def _weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "model.safetensors"))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _in_memory(model_dir, texts, method, reconstruct=RECON, mode="sequential", **kwargs):
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    batches = text_batches(tokenizer, load_texts(texts, OPTS["samples"]), OPTS["seq_len"], OPTS["batch_size"])
    report = pp.torch.prune_model(model, kwargs.pop("sparsity", None), method=method, calibration=batches,
                                  calibration_mode=mode, reconstruct=reconstruct, **kwargs)
    return model, report


CASES = [("wanda", {"sparsity": 0.5}), ("wanda", {"pattern": "2:4"}), ("sparsegpt", {"sparsity": 0.5}),
         ("sparsegpt", {"pattern": "2:4"})]


# -- the block error goes down, the masks stay -----------------------------------------------------------------
@pytest.mark.hf
@pytest.mark.parametrize("method, kwargs", CASES)
def test_block_error_goes_down_and_masks_and_counts_stay(llama, tmp_path, method, kwargs):
    """One-pass mode: every block sees the same (dense) inputs with and without reconstruction, so
    the masks must be the very same; the kept weights must have moved; the loss must fall."""
    model_dir, texts = llama
    plain = _stream(model_dir, tmp_path / "plain", texts, method, reconstruct=pp.ReconstructSettings(), mode="one-pass",
                    **kwargs)
    refit = _stream(model_dir, tmp_path / "refit", texts, method, mode="one-pass", **kwargs)
    a, b = _weights(tmp_path / "plain"), _weights(tmp_path / "refit")
    pruned = [r.name for r in refit.report.tensors if r.status == "pruned"]
    assert len(pruned) == 14
    for name in pruned:
        assert torch.equal(a[name] == 0, b[name] == 0), name
        assert not torch.signbit(b[name][b[name] == 0]).any(), f"{name}: a pruned weight is -0.0"
        assert not torch.equal(a[name], b[name]), f"{name}: reconstruction changed nothing"
    rows_a = {r.name: (r.zeros_before, r.zeros_after, r.pruned) for r in plain.report.tensors}
    assert rows_a == {r.name: (r.zeros_before, r.zeros_after, r.pruned) for r in refit.report.tensors}
    losses = refit.report.settings["reconstruction_losses"]
    assert sorted(losses) == ["model.layers.0", "model.layers.1"]
    for block, loss in losses.items():
        assert loss["after"] < loss["before"], (block, loss)
        assert loss["held_out_after"] <= loss["held_out_before"], (block, loss)
        assert loss["steps"] == RECON.steps and loss["seconds"] >= 0
    assert refit.report.settings["reconstruct"] == RECON.describe()
    assert "reconstruction_losses" not in plain.report.settings


@pytest.mark.hf
@pytest.mark.parametrize("method, kwargs", CASES)
def test_sequential_stream_equals_prune_model_and_lowers_every_block_loss(llama, tmp_path, method, kwargs):
    """The stream and prune_model run the same engine: the same bits (float32 directory), the same
    losses; in sequential mode too the training loss falls in every block."""
    model_dir, texts = llama
    result = _stream(model_dir, tmp_path / "out", texts, method, **kwargs)
    model, report = _in_memory(model_dir, texts, method, **kwargs)
    got, want = _weights(tmp_path / "out"), model.state_dict()
    for name, tensor in got.items():
        assert torch.equal(tensor, want[name]), name
    assert result.report.settings["reconstruction_losses"].keys() == report.settings["reconstruction_losses"].keys()
    for block, loss in report.settings["reconstruction_losses"].items():
        assert loss["after"] < loss["before"], (block, loss)
        assert loss["after"] == result.report.settings["reconstruction_losses"][block]["after"]
    assert report.totals()["selected_sparsity_after"] == pytest.approx(0.5)


@pytest.mark.hf
def test_prune_model_leaves_requires_grad_and_grads_as_they_were(llama):
    model_dir, texts = llama
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    model.model.norm.weight.requires_grad_(False)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    batches = text_batches(tokenizer, load_texts(texts, 8), 16, 4)
    pp.torch.prune_model(model, 0.5, method="wanda", calibration=batches, reconstruct=RECON)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    assert flags.pop("model.norm.weight") is False and all(flags.values())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.hf
def test_magnitude_is_reconstructed_block_by_block_too(llama):
    model_dir, texts = llama
    model, report = _in_memory(model_dir, texts, "l1", sparsity=0.5)
    assert all(v["after"] < v["before"] for v in report.settings["reconstruction_losses"].values())
    assert report.totals()["selected_sparsity_after"] == pytest.approx(0.5)


# -- early stopping on the held-out batches --------------------------------------------------------------------
@pytest.mark.hf
def test_early_stopping_keeps_the_pruned_weights_when_every_step_hurts_the_held_out_loss(llama, tmp_path):
    """A learning rate of 10 wrecks the block: the held-out loss never improves, so the weights
    right after pruning are kept and the output equals the run without reconstruction."""
    model_dir, texts = llama
    _stream(model_dir, tmp_path / "plain", texts, "wanda", reconstruct=pp.ReconstructSettings(), sparsity=0.5)
    wild = _stream(model_dir, tmp_path / "wild", texts, "wanda", reconstruct=pp.ReconstructSettings(steps=3, lr=10.0),
                   sparsity=0.5)
    losses = wild.report.settings["reconstruction_losses"]
    assert all(v["best_step"] == 0 and v["held_out_after"] == v["held_out_before"] for v in losses.values()), losses
    a, b = _weights(tmp_path / "plain"), _weights(tmp_path / "wild")
    assert all(torch.equal(a[n], b[n]) for n in a)


# -- deterministic, resumable, off by default ------------------------------------------------------------------
@pytest.mark.hf
def test_two_runs_give_the_same_bytes_and_the_seed_matters(llama, tmp_path):
    model_dir, texts = llama
    _stream(model_dir, tmp_path / "a", texts, "sparsegpt", sparsity=0.5)
    _stream(model_dir, tmp_path / "b", texts, "sparsegpt", sparsity=0.5)
    _stream(model_dir, tmp_path / "c", texts, "sparsegpt", reconstruct=pp.ReconstructSettings(steps=12, lr=1e-3, seed=1),
            sparsity=0.5)
    assert _digest(tmp_path / "a" / "model.safetensors") == _digest(tmp_path / "b" / "model.safetensors")
    assert _weights(tmp_path / "a")["model.layers.0.self_attn.q_proj.weight"].ne(
        _weights(tmp_path / "c")["model.layers.0.self_attn.q_proj.weight"]).any()


@pytest.mark.hf
def test_steps_0_gives_the_output_without_reconstruction(llama, tmp_path):
    """steps=0 (the default) takes no new path: no reconstruct key in the file's metadata or the
    run's fingerprint, and the bytes of a run that never heard of reconstruction."""
    model_dir, texts = llama
    options = StreamOptions(**OPTS, calibration_mode="sequential")
    prune_model_dir(model_dir, tmp_path / "a", pp.PruneSettings("wanda", sparsity=0.5), texts, options=options)
    result = _stream(model_dir, tmp_path / "b", texts, "wanda", reconstruct=pp.ReconstructSettings(steps=0),
                     sparsity=0.5)
    assert _digest(tmp_path / "a" / "model.safetensors") == _digest(tmp_path / "b" / "model.safetensors")
    header = (tmp_path / "b" / "model.safetensors").read_bytes()
    assert b"reconstruct" not in header[:int.from_bytes(header[:8], "little") + 8]
    assert "reconstruct" not in result.report.settings
    # the same bytes as prune_model without the argument (the engine before reconstruction existed)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    batches = text_batches(tokenizer, load_texts(texts, OPTS["samples"]), OPTS["seq_len"], OPTS["batch_size"])
    pp.torch.prune_model(model, 0.5, method="wanda", calibration=batches, calibration_mode="sequential")
    got = _weights(tmp_path / "b")
    assert all(torch.equal(t, model.state_dict()[n]) for n, t in got.items())


from killer_progress import KILLER_PROGRESS  # noqa: E402

_KILLER = KILLER_PROGRESS + textwrap.dedent("""
    import pruneplug as pp
    from pruneplug.stream import StreamOptions, prune_model_dir

    prune_model_dir(sys.argv[1], sys.argv[2], pp.PruneSettings("sparsegpt", sparsity=0.5), sys.argv[3],
                    options=StreamOptions(samples=16, seq_len=16, batch_size=4, resume=sys.argv[6] == "resume",
                                          reconstruct=pp.ReconstructSettings(steps=12, lr=1e-3)),
                    progress=Killer())
""")


@pytest.mark.hf
@pytest.mark.parametrize("step, blocks_done", [("reconstructing", 0), ("reconstructed", 1), ("writing", 1)])
def test_kill_9_during_reconstruction_then_resume_gives_byte_identical_output(llama, tmp_path, step, blocks_done):
    """Every run in a fresh interpreter of the same settings: the re-fit is bit-exact for one device
    and thread count, and the test process's torch state may differ after other tests."""
    model_dir, texts = llama
    whole, out = tmp_path / "whole", tmp_path / "out"

    def run(target, kill_at, mode):
        return subprocess.run([sys.executable, "-c", _KILLER, str(model_dir), str(target), str(texts), kill_at,
                               str(blocks_done), mode], capture_output=True, text=True)
    assert run(whole, "never", "new").returncode == 0
    proc = run(out, step, "new")
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    journal = json.loads((tmp_path / ".out.pruneplug-stream" / "journal.json").read_text())
    assert journal["done"] == blocks_done
    with pytest.raises(CheckpointError, match="arguments differ.*reconstruct"):
        _stream(model_dir, out, texts, "sparsegpt", reconstruct=pp.ReconstructSettings(steps=11, lr=1e-3),
                resume=True, sparsity=0.5)
    proc = run(out, "never", "resume")
    assert proc.returncode == 0, proc.stderr
    assert _digest(whole / "model.safetensors") == _digest(out / "model.safetensors")


# -- arguments -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"steps": -1}, "steps=-1"), ({"steps": 1.5}, "steps=1.5"), ({"steps": True}, "steps=True"),
    ({"lr": 0}, "lr=0"), ({"lr": float("nan")}, "lr=nan"), ({"batches": 0}, "batches=0"),
    ({"loss": "l1"}, "loss='l1'"), ({"holdout": 1.0}, "holdout=1.0"), ({"holdout": -0.1}, "holdout=-0.1"),
    ({"seed": -2}, "seed=-2")])
def test_bad_settings_are_typed_errors_naming_the_value(kwargs, message):
    with pytest.raises(InvalidArgumentError, match=message.replace("(", r"\(")):
        pp.ReconstructSettings(**kwargs)


def test_the_held_out_split_takes_the_last_batches():
    s = pp.ReconstructSettings(steps=1, holdout=0.25)
    assert s.split(8) == ([0, 1, 2, 3, 4, 5], [6, 7])
    assert s.split(1) == ([0], [])
    assert pp.ReconstructSettings(steps=1, holdout=0.9).split(3) == ([0], [1, 2])
    assert pp.ReconstructSettings(steps=1, holdout=0).split(3) == ([0, 1, 2], [])


def test_prune_model_refuses_what_reconstruction_cannot_use():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    weights = [p.detach().clone() for p in model.parameters()]
    batches = [torch.randn(4, 8)]
    with pytest.raises(InvalidArgumentError, match="reconstruct=5 .*ReconstructSettings"):
        pp.torch.prune_model(model, 0.5, method="wanda", calibration=batches, reconstruct=5)
    ctx = pp.torch.calibrate(model, batches)
    with pytest.raises(InvalidArgumentError, match="needs calibration batches.*statistics context"):
        pp.torch.prune_model(model, 0.5, method="wanda", calibration=ctx, reconstruct=RECON)
    with pytest.raises(InvalidArgumentError, match="needs calibration batches.*no calibration"):
        pp.torch.prune_model(model, 0.5, method="l1", reconstruct=RECON)
    with pytest.raises(InvalidArgumentError, match="scope='global'"):
        pp.torch.prune_model(model, 0.5, method="l1", scope="global", calibration=batches, reconstruct=RECON)
    with pytest.raises(pp.errors.CalibrationError, match="no repeated blocks"):
        pp.torch.prune_model(torch.nn.Sequential(torch.nn.Linear(8, 4)), 0.5, method="wanda", calibration=batches,
                             reconstruct=RECON)
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))


def test_stream_options_refuse_a_bad_reconstruct():
    with pytest.raises(InvalidArgumentError, match="reconstruct=3"):
        StreamOptions(reconstruct=3).check()


@pytest.mark.hf
def test_cli_reconstruct_options(llama, tmp_path, capsys):
    model_dir, texts = llama
    assert main(["prune", str(model_dir), "-o", str(tmp_path / "o"), "--method", "wanda", "--sparsity", "0.5",
                 "--calibration", str(texts), "--reconstruct", "-1"]) != 0
    assert "steps=-1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / ".o.pruneplug-stream").exists()
    assert main(["prune", str(model_dir), "-o", str(tmp_path / "o"), "--method", "wanda", "--sparsity", "0.5",
                 "--calibration", str(texts), "--samples", "16", "--seq-len", "16", "--batch-size", "4",
                 "--reconstruct", "4", "--reconstruct-lr", "0.001", "--reconstruct-loss", "nmse",
                 "--reconstruct-holdout", "0.25", "--reconstruct-seed", "3", "--report",
                 str(tmp_path / "r.json"), "--quiet"]) == 0
    settings = json.loads((tmp_path / "r.json").read_text())["settings"]
    assert settings["reconstruct"] == {"steps": 4, "lr": 0.001, "batches": 1, "loss": "nmse", "holdout": 0.25,
                                       "seed": 3}
    assert len(settings["reconstruction_losses"]) == 2
    st = tmp_path / "model.safetensors"
    st.write_bytes((model_dir / "model.safetensors").read_bytes())
    assert main(["prune", str(st), "-o", str(tmp_path / "x.safetensors"), "--sparsity", "0.5",
                 "--reconstruct", "4"]) != 0
    assert "--reconstruct" in capsys.readouterr().err


def test_the_memory_estimate_counts_the_refit():
    from pruneplug.stream.memory import estimate

    shape = dict(outside=1000, block=500, largest_in=64, largest_out=32, distinct_inputs=[32, 64], hidden=32,
                 tokens=4096, compute_bytes=4, stats_bytes=4, hessian=False, sequential=True, offload=False,
                 batch_tokens=512)
    plain, refit = estimate(**shape), estimate(**shape, reconstruct=True, block_out=256)
    # the teacher's hidden states, 4 float32 copies of the block, one batch's intermediates
    assert refit.total - plain.total == 4096 * 32 * 4 + 4 * 500 * 4 + 512 * (256 + 4 * 32) * 4

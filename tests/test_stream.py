"""The block stream (pruneplug.stream): a model directory pruned block by block from the checkpoint
to the output, checked against the in-memory engine, resumed after kill -9, refused when it
should be. Tiny random-weight models built here (tests/hf_zoo.py); nothing is downloaded."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install pruneplug[hf])")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

import pruneplug as pp  # noqa: E402
from pruneplug.cli import main  # noqa: E402
from pruneplug.errors import CalibrationError, CheckpointError, InvalidArgumentError  # noqa: E402
from pruneplug.stream import StreamOptions, calibrate_model_dir, prune_model_dir  # noqa: E402
from pruneplug.torch.hf import load_texts, text_batches  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from hf_zoo import AUTO_CLASS, KINDS, build_model_dir  # noqa: E402

pytestmark = pytest.mark.hf

WORDS = "the a cat dog sat on mat ran fast slow big small red blue".split()
OPTS = dict(samples=12, seq_len=16, batch_size=4)


def _texts(directory: Path) -> Path:
    rng = np.random.default_rng(0)
    path = directory / "texts.txt"
    path.write_text("\n".join(" ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))) for _ in range(20)) + "\n")
    return path


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    made = {}

    def get(kind: str, dtype: str = "float32") -> Path:
        key = (kind, dtype)
        if key not in made:
            made[key] = build_model_dir(kind, root / f"{kind}-{dtype}", dtype=getattr(torch, dtype))
        return made[key]
    get.texts = _texts(root)
    return get


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _in_memory(model_dir: Path, texts: Path, method: str, **kwargs) -> dict:
    """The in-memory engine on the model transformers loads: the reference the stream must equal."""
    config = transformers.AutoConfig.from_pretrained(model_dir)
    auto = transformers.AutoModelForCausalLM if any(a.endswith("ForCausalLM") for a in config.architectures or []) \
        else getattr(transformers, (config.architectures or ["AutoModel"])[0], transformers.AutoModel)
    model = auto.from_pretrained(model_dir)  # float32 directories (transformers 4.53 has no dtype=)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    batches = text_batches(tokenizer, load_texts(texts, OPTS["samples"]), OPTS["seq_len"], OPTS["batch_size"])
    pp.torch.prune_model(model, kwargs.pop("sparsity", None), method=method, calibration=batches,
                         calibration_mode=kwargs.pop("calibration_mode", "sequential"), **kwargs)
    return {n: p.detach() for n, p in model.state_dict().items()}


def _stream(model_dir: Path, out: Path, texts: Path, method: str, **kwargs) -> pp.stream.StreamResult:
    options = StreamOptions(**OPTS, calibration_mode=kwargs.pop("calibration_mode", "sequential"),
                            resume=kwargs.pop("resume", False))
    return prune_model_dir(model_dir, out, pp.PruneSettings(method, **kwargs), texts, options=options)


def _weights(out: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(out.glob("*.safetensors"))
    tensors = {}
    for f in files:
        tensors.update(load_file(str(f)))
    return tensors


# -- the stream computes what the in-memory engine computes ------------------------------------------------
@pytest.mark.parametrize("method, kwargs", [("wanda", {"sparsity": 0.5}), ("sparsegpt", {"sparsity": 0.5}),
                                            ("sparsegpt", {"pattern": "2:4"}), ("l1", {"sparsity": 0.5})])
def test_stream_equals_the_in_memory_engine(zoo, tmp_path, method, kwargs):
    model_dir = zoo("llama")
    result = _stream(model_dir, tmp_path / "out", zoo.texts, method, **kwargs)
    want = _in_memory(model_dir, zoo.texts, method, **kwargs)
    got = _weights(tmp_path / "out")
    pruned = [r.name for r in result.report.tensors if r.status == "pruned"]
    assert len(pruned) == 7 * 2  # q, k, v, o, gate, up, down of both blocks
    for name, tensor in got.items():
        ref = want[name] if name in want else want["lm_head.weight"]
        assert torch.equal(tensor, ref), name


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_every_architecture_streams_like_the_in_memory_engine(zoo, tmp_path, kind, method):
    """Llama/GQA, Qwen2/3, Mistral, Phi-3 (fused q/k/v), Gemma, GPT-2 (Conv1D), BERT with a head, and
    two MoEs (experts fused in transformers 5): the stream's output equals the block engine run in
    memory on the same model with every weight loaded; routers are left alone; the output loads
    with its Auto class and runs."""
    model_dir = zoo(kind)
    out = tmp_path / "out"
    result = _stream(model_dir, out, zoo.texts, method, sparsity=0.5)
    rows = {r.name: r for r in result.report.tensors}
    skel = pp.stream.build_skeleton(model_dir)
    skel.load_where(lambda name: True, "cpu", torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    batches = text_batches(tokenizer, load_texts(zoo.texts, OPTS["samples"]), OPTS["seq_len"], OPTS["batch_size"])
    pp.torch.prune_model(skel.model, 0.5, method=method, calibration=batches, calibration_mode="sequential")
    got = _weights(out)
    params = dict(skel.model.named_parameters())
    pruned = [n for n, r in rows.items() if r.status == "pruned"]
    assert pruned and all(r.zeros_after >= r.numel // 2 for n, r in rows.items() if n in pruned)
    for name, ckpt in skel.names.items():
        if name in params:
            assert torch.equal(got[ckpt], params[name].detach().to(got[ckpt].dtype)), (name, ckpt)
    if kind in ("mixtral", "qwen2_moe"):
        assert any(".experts.3." in n for n in pruned)
        assert not any(n.endswith(("gate.weight", "shared_expert_gate.weight")) for n in pruned)
        assert all(rows[n].status == "kept" for n in rows if n.endswith(".gate.weight"))
    model = AUTO_CLASS[kind].from_pretrained(out)
    with torch.no_grad():
        model(**tokenizer(["the cat sat"], return_tensors="pt"))


def test_unfused_experts_compute_what_the_fused_ones_do(zoo):
    """transformers 5 fuses MoE experts; the skeleton takes them apart (one Linear per expert and
    projection): the same logits to float rounding."""
    model_dir = zoo("mixtral")
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    skel = pp.stream.build_skeleton(model_dir)
    skel.load_where(lambda name: True, "cpu", torch.float32)
    inputs = transformers.AutoTokenizer.from_pretrained(model_dir)(["the cat sat on the mat"], return_tensors="pt")
    with torch.no_grad():
        want, got = model(**inputs).logits, skel.model(**inputs).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_one_pass_stream_equals_the_two_step_form(zoo, tmp_path):
    """Dense statistics either way: `calibrate` + prune of the checkpoint gives the same bytes as the
    one-step form in one-pass mode (one statistics engine, one plan)."""
    model_dir = zoo("llama")
    stats = tmp_path / "stats.safetensors"
    summary = calibrate_model_dir(model_dir, zoo.texts, stats, hessian=True, options=StreamOptions(**OPTS))
    assert summary["entries"] < summary["layers"]  # q/k/v and gate/up share their input: stored once
    ctx = pp.CalibrationContext.load(stats)
    names = [n for n in ctx if "layers.0." in n]
    assert ctx["model.layers.0.self_attn.k_proj.weight"] is ctx["model.layers.0.self_attn.q_proj.weight"], names
    pp.prune_checkpoint(model_dir, tmp_path / "two", sparsity=0.5, method="sparsegpt", calibration=stats)
    _stream(model_dir, tmp_path / "one", zoo.texts, "sparsegpt", sparsity=0.5, calibration_mode="one-pass")
    two, one = _weights(tmp_path / "two"), _weights(tmp_path / "one")
    assert sorted(two) == sorted(one)
    for name in two:
        assert torch.equal(two[name], one[name]), name
    from safetensors import safe_open

    with safe_open(str(tmp_path / "one" / "model.safetensors"), "np") as f:  # the output says what was done
        meta = f.metadata()
    assert meta["pruneplug.method"] == "sparsegpt" and meta["pruneplug.calibration"] == "one-pass"
    assert meta["format"] == "pt"


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_float32_statistics_give_the_float64_masks(zoo, tmp_path, method):
    """The default float32 accumulation against float64: the same masks here, weights within
    float32 rounding (docs/calibration.md, "Statistics precision")."""
    model_dir = zoo("llama")
    results = {}
    for dtype in ("float32", "float64"):
        options = StreamOptions(**OPTS, stats_dtype=dtype)
        prune_model_dir(model_dir, tmp_path / dtype, pp.PruneSettings(method, sparsity=0.5), zoo.texts,
                        options=options)
        results[dtype] = _weights(tmp_path / dtype)
    for name, w32 in results["float32"].items():
        w64 = results["float64"][name]
        assert torch.equal(w32 == 0, w64 == 0), name
        torch.testing.assert_close(w32, w64, rtol=1e-4, atol=1e-5)


def test_bfloat16_directory_keeps_dtype_names_and_untouched_bytes(zoo, tmp_path):
    model_dir = zoo("llama", "bfloat16")
    result = _stream(model_dir, tmp_path / "out", zoo.texts, "sparsegpt", sparsity=0.5)
    src, dst = _weights(model_dir), _weights(tmp_path / "out")
    assert sorted(src) == sorted(dst)
    pruned = {r.name for r in result.report.tensors if r.status == "pruned"}
    for name in src:
        assert dst[name].dtype == torch.bfloat16 and dst[name].shape == src[name].shape
        if name not in pruned:
            assert torch.equal(src[name], dst[name]), name
        else:
            w = dst[name]
            assert int((w == 0).sum()) >= w.numel() // 2 and not torch.signbit(w[w == 0]).any()
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert torch.equal(dict(model.named_parameters())["model.layers.0.mlp.down_proj.weight"].detach(),
                       dst["model.layers.0.mlp.down_proj.weight"])
    assert (tmp_path / "out" / "tokenizer.json").is_file() and (tmp_path / "out" / "config.json").is_file()


def test_owl_counts_come_from_one_dense_pass_over_the_blocks(zoo, tmp_path):
    model_dir = zoo("llama")
    result = _stream(model_dir, tmp_path / "out", zoo.texts, "wanda", sparsity=0.5, layer_ratios="owl", owl_lambda=0.1)
    counts = result.report.settings["layer_ratios"]["counts"]
    sizes = {r.name: r.numel for r in result.report.tensors if r.status == "pruned"}
    assert sum(counts.values()) == round(0.5 * sum(sizes.values()))
    assert len(set(round(counts[n] / sizes[n], 4) for n in counts)) > 1  # the blocks differ
    for r in result.report.tensors:
        if r.status == "pruned":
            assert r.zeros_after - r.zeros_before == counts[r.name] or r.zeros_after >= counts[r.name]


# -- resume after kill -9 -----------------------------------------------------------------------------------
# A run in a fresh process (as a real kill and rerun are: same thread pools, same bits) whose progress
# object kills it with SIGKILL when the stream reaches STEP after DONE blocks (STEP "never": it runs
# to the end); a sixth argument resumes.
from killer_progress import KILLER_PROGRESS  # noqa: E402

_KILLER = KILLER_PROGRESS + textwrap.dedent("""
    import pruneplug as pp
    from pruneplug.stream import StreamOptions, prune_model_dir

    result = prune_model_dir(sys.argv[1], sys.argv[2], pp.PruneSettings("sparsegpt", sparsity=0.5), sys.argv[3],
                             options=StreamOptions(samples=12, seq_len=16, batch_size=4, resume=len(sys.argv) > 6),
                             progress=Killer())
    print("resumed from", result.resumed_from)
""")


@pytest.mark.parametrize("step, blocks_done", [("capturing inputs", 0), ("pruning", 0), ("writing", 1),
                                               ("forward", 1)])
def test_kill_9_then_resume_gives_byte_identical_output(zoo, tmp_path, step, blocks_done):
    model_dir = zoo("llama")
    whole = tmp_path / "whole"  # uninterrupted, in a fresh process like the killed run and its resume
    proc = subprocess.run([sys.executable, "-c", _KILLER, str(model_dir), str(whole), str(zoo.texts), "never", "0"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", _KILLER, str(model_dir), str(out), str(zoo.texts), step,
                           str(blocks_done)], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    staging = tmp_path / ".out.pruneplug-stream"
    assert not out.exists() and staging.is_dir()
    journal = json.loads((staging / "journal.json").read_text())
    assert journal["done"] == blocks_done
    with pytest.raises(CheckpointError, match="pass --resume"):
        _stream(model_dir, out, zoo.texts, "sparsegpt", sparsity=0.5)
    with pytest.raises(CheckpointError, match="arguments differ.*settings"):
        _stream(model_dir, out, zoo.texts, "sparsegpt", sparsity=0.6, resume=True)
    proc = subprocess.run([sys.executable, "-c", _KILLER, str(model_dir), str(out), str(zoo.texts), "never", "0",
                           "resume"], capture_output=True, text=True)
    assert proc.returncode == 0 and f"resumed from {blocks_done}" in proc.stdout, proc.stderr
    assert _digest(whole / "model.safetensors") == _digest(out / "model.safetensors")
    assert not staging.exists()


def test_resume_refuses_a_changed_input(zoo, tmp_path):
    model_dir = zoo("llama")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", _KILLER, str(model_dir), str(out), str(zoo.texts), "pruning", "1"],
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL
    texts = tmp_path / "other.txt"
    texts.write_text(zoo.texts.read_text() + "the end\n")
    with pytest.raises(CheckpointError, match="arguments differ.*texts"):
        _stream(model_dir, out, texts, "sparsegpt", sparsity=0.5, resume=True)
    with pytest.raises(CheckpointError, match="no interrupted run"):
        _stream(model_dir, tmp_path / "never", zoo.texts, "sparsegpt", sparsity=0.5, resume=True)


def test_a_failure_before_the_first_block_leaves_nothing(zoo, tmp_path, monkeypatch):
    import pruneplug.stream.pipeline as pipeline

    def broken(*args, **kwargs):
        raise CalibrationError("planted failure")

    monkeypatch.setattr(pipeline, "prune_scored", broken)
    with pytest.raises(CalibrationError, match="planted"):
        _stream(zoo("llama"), tmp_path / "out", zoo.texts, "wanda", sparsity=0.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# -- the command line ---------------------------------------------------------------------------------------
def test_cli_one_step_prints_estimate_progress_and_real_time(zoo, tmp_path, capsys):
    import time

    started = time.perf_counter()
    code = main(["prune", str(zoo("llama")), "-o", str(tmp_path / "out"), "--method", "wanda", "--calibration",
                 str(zoo.texts), "--sparsity", "0.5", "--samples", "12", "--seq-len", "16", "--progress", "always",
                 "--report", str(tmp_path / "r.json")])
    wall = time.perf_counter() - started
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "estimated peak memory" in captured.err and "blocks" in captured.err and "pruning" in captured.err
    reported = float(captured.out.strip().splitlines()[-1].split(" in ")[1].split(" s")[0])
    assert reported >= 0.7 * wall - 0.1  # the whole command, not one phase of it
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["settings"]["calibration"] == "one-pass" and report["settings"]["stats_dtype"] == "float32"  # wanda's default
    code = main(["prune", str(zoo("llama")), "-o", str(tmp_path / "q"), "--method", "wanda", "--calibration",
                 str(zoo.texts), "--sparsity", "0.5", "--samples", "12", "--quiet"])
    assert code == 0 and capsys.readouterr().err == ""


def test_cli_statistics_file_is_recognised_by_content_not_name(zoo, tmp_path, capsys):
    stats = tmp_path / "stats.bin"
    assert main(["calibrate", str(zoo("llama")), str(zoo.texts), "-o", str(stats), "--samples", "12", "--quiet"]) == 0
    assert main(["prune", str(zoo("llama") / "model.safetensors"), "-o", str(tmp_path / "p.safetensors"), "--method",
                 "wanda", "--calibration", str(stats), "--sparsity", "0.5", "--quiet"]) == 0
    assert main(["calibrate", str(zoo("llama")), str(stats), "-o", str(tmp_path / "s2.safetensors")]) == 1
    assert "safetensors file, not text" in capsys.readouterr().err


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig"])
def test_texts_with_a_byte_order_mark_are_read(zoo, tmp_path, encoding):
    texts = tmp_path / "t.txt"
    texts.write_bytes(zoo.texts.read_text().encode(encoding))
    assert load_texts(texts) == load_texts(zoo.texts)


def test_texts_that_are_not_text_are_one_clear_error(zoo, tmp_path, capsys):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    assert main(["calibrate", str(zoo("llama")), str(bad), "-o", str(tmp_path / "s.safetensors")]) == 1
    err = capsys.readouterr().err
    assert "not utf-8 text (byte 3" in err and "Traceback" not in err and str(bad) in err
    assert not (tmp_path / "s.safetensors").exists()


@pytest.mark.parametrize("where", ["weights", "texts", "report-texts"])
def test_outputs_never_overwrite_inputs(zoo, tmp_path, capsys, where):
    model_dir = zoo("llama")
    texts = tmp_path / "texts.txt"
    texts.write_text(zoo.texts.read_text())
    before = {p: _digest(p) for p in (model_dir / "model.safetensors", texts)}
    if where == "weights":
        argv = ["calibrate", str(model_dir), str(texts), "-o", str(model_dir / "model.safetensors")]
    elif where == "texts":
        argv = ["calibrate", str(model_dir), str(texts), "-o", str(texts)]
    else:
        argv = ["prune", str(model_dir), "-o", str(tmp_path / "out"), "--method", "wanda", "--calibration", str(texts),
                "--sparsity", "0.5", "--report", str(texts)]
    assert main(argv) == 1
    assert "choose another path" in capsys.readouterr().err
    assert before == {p: _digest(p) for p in before}


# -- name maps: task heads, prefixes, configs without architectures ----------------------------------------
def test_bert_with_a_task_head_and_its_pooler(zoo, tmp_path):
    """bert. prefix in the checkpoint, a pooler outside the blocks (pruned last, from the final hidden
    states), the classifier head left alone; equal to the in-memory engine."""
    model_dir = zoo("bert")
    result = _stream(model_dir, tmp_path / "out", zoo.texts, "wanda", sparsity=0.5)
    names = {r.name for r in result.report.tensors if r.status == "pruned"}
    assert "bert.pooler.dense.weight" in names and not any("classifier" in n for n in names)
    want = _in_memory(model_dir, zoo.texts, "wanda", sparsity=0.5)
    got = _weights(tmp_path / "out")
    for name in names:
        assert torch.equal(got[name], want[name]), name


def test_config_without_architectures_maps_names_with_the_prefix(zoo, tmp_path):
    src = zoo("llama")
    model_dir = tmp_path / "noarch"
    model_dir.mkdir()
    for f in src.iterdir():
        (model_dir / f.name).write_bytes(f.read_bytes())
    config = json.loads((model_dir / "config.json").read_text())
    config.pop("architectures")
    (model_dir / "config.json").write_text(json.dumps(config))
    skel = pp.stream.build_skeleton(model_dir)  # AutoModel: the base model, names without "model."
    assert skel.names["layers.0.mlp.down_proj.weight"] == "model.layers.0.mlp.down_proj.weight"
    result = _stream(model_dir, tmp_path / "out", zoo.texts, "wanda", sparsity=0.5)
    assert "model.layers.1.mlp.down_proj.weight" in {r.name for r in result.report.tensors if r.status == "pruned"}


def test_a_checkpoint_that_does_not_fit_its_config_names_the_parameter(zoo, tmp_path):
    src = zoo("llama")
    model_dir = tmp_path / "bad"
    model_dir.mkdir()
    for f in src.iterdir():
        (model_dir / f.name).write_bytes(f.read_bytes())
    tensors = safetensors_numpy.load_file(str(model_dir / "model.safetensors"))
    tensors["model.layers.0.mlp.up_proj.weightX"] = tensors.pop("model.layers.0.mlp.up_proj.weight")
    safetensors_numpy.save_file(tensors, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="model.layers.0.mlp.up_proj.weight"):
        pp.stream.build_skeleton(model_dir)


# -- statistics files ---------------------------------------------------------------------------------------
def test_version_1_files_are_still_read(tmp_path):
    norms = np.array([1.0, 4.0])
    safetensors_numpy.save_file({"fc.weight::input_norms": norms, "fc.weight::count": np.array([3]),
                                 "fc.weight::hessian": np.eye(2)}, str(tmp_path / "v1.safetensors"),
                                metadata={"format": "pruneplug.calibration", "version": "1", "input_axes": "{}"})
    ctx = pp.CalibrationContext.load(tmp_path / "v1.safetensors")
    assert np.array_equal(ctx["fc.weight"].input_norms, norms) and np.array_equal(np.asarray(ctx["fc.weight"].hessian),
                                                                                  np.eye(2))


def test_a_hessian_is_read_when_its_layer_is_used_and_checked_then(tmp_path):
    h = np.eye(2)
    h[0, 1] = np.nan
    path = tmp_path / "s.safetensors"
    safetensors_numpy.save_file({"fc.weight::input_norms": np.ones(2), "fc.weight::count": np.array([3]),
                                 "fc.weight::hessian": h}, str(path),
                                metadata={"format": "pruneplug.calibration", "version": "2"})
    ctx = pp.CalibrationContext.load(path)  # norms and counts only: the Hessian is not read yet
    w = np.ones((2, 2), dtype=np.float32)
    with pytest.raises(CalibrationError, match=f"{path}.*fc.weight::hessian.*NaN"):
        pp.criteria.prune_scored(w, "sparsegpt", sparsity=0.5, calibration=ctx, layer="fc.weight")
    assert np.array_equal(w, np.ones((2, 2)))


@pytest.mark.parametrize("axes, message", [("[0]", "JSON object"), ('{"fc.weight": 5}', "expected 0 or 1"),
                                           ('{"fc.weight": "x"}', "expected 0 or 1"),
                                           ('{"other.weight": 0}', "no statistics")])
def test_bad_input_axes_name_the_file(tmp_path, axes, message):
    path = tmp_path / "s.safetensors"
    safetensors_numpy.save_file({"fc.weight::input_norms": np.ones(2), "fc.weight::count": np.array([3])}, str(path),
                                metadata={"format": "pruneplug.calibration", "version": "2", "input_axes": axes})
    with pytest.raises(CalibrationError, match=message) as info:
        pp.CalibrationContext.load(path)
    assert str(path) in str(info.value)


def test_statistics_files_get_the_umask_mode(tmp_path):
    ctx = pp.CalibrationContext({"fc.weight": pp.ActivationStats(np.ones(2), 3)})
    old = os.umask(0o022)
    try:
        path = ctx.save(tmp_path / "s.safetensors")
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o644


def test_stream_option_errors(zoo, tmp_path):
    with pytest.raises(InvalidArgumentError, match="--device"):
        prune_model_dir(zoo("llama"), tmp_path / "o", pp.PruneSettings("wanda", sparsity=0.5), zoo.texts,
                        options=StreamOptions(device="tpu"))
    with pytest.raises(InvalidArgumentError, match="--samples"):
        prune_model_dir(zoo("llama"), tmp_path / "o", pp.PruneSettings("wanda", sparsity=0.5), zoo.texts,
                        options=StreamOptions(samples=0))
    assert not (tmp_path / "o").exists() and not (tmp_path / ".o.pruneplug-stream").exists()


def test_a_pattern_that_fits_no_tensor_is_refused_before_any_work(zoo, tmp_path):
    with pytest.raises(InvalidArgumentError, match="fits none of the selected tensors.*not divisible by M=3"):
        prune_model_dir(zoo("llama"), tmp_path / "o", pp.PruneSettings("wanda", pattern="1:3"), zoo.texts,
                        options=StreamOptions(**OPTS))
    assert list(tmp_path.iterdir()) == []


def test_a_forward_that_raises_part_way_says_what_state_things_are_in(zoo, tmp_path, monkeypatch):
    """In memory: a block that raises after earlier blocks were pruned in place names the block and
    says the model is half-pruned (prune_model keeps no dense copy; documented). On the stream: the
    finished blocks stay in the staging area and the error says how to resume."""
    model = transformers.AutoModelForCausalLM.from_pretrained(zoo("llama"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(zoo("llama"))
    batches = text_batches(tokenizer, load_texts(zoo.texts, 8), 16, 4)
    layer = model.model.layers[1].mlp
    original = type(layer).forward
    monkeypatch.setattr(type(layer), "forward", lambda self, x: (_ for _ in ()).throw(RuntimeError("boom"))
                        if self is layer else original(self, x))
    with pytest.raises(CalibrationError, match=r"RuntimeError: boom \(in model.layers.1; 7 layers .* half-pruned"):
        pp.torch.prune_model(model, 0.5, method="wanda", calibration=batches, calibration_mode="sequential")
    assert int((model.model.layers[0].mlp.down_proj.weight == 0).sum()) > 0  # block 0 is pruned: as documented
    import pruneplug.stream.pipeline as pipeline

    real = pipeline._prune_layers
    calls = []

    def fail_in_block_1(m, journal, layers, *args):
        calls.append(journal.done)
        if journal.done == 1:
            raise RuntimeError("disk on fire")
        return real(m, journal, layers, *args)

    monkeypatch.setattr(pipeline, "_prune_layers", fail_in_block_1)
    with pytest.raises(CalibrationError, match="disk on fire; 1 of 2 blocks are finished .* --resume"):
        _stream(zoo("llama"), tmp_path / "out", zoo.texts, "wanda", sparsity=0.5)
    assert (tmp_path / ".out.pruneplug-stream" / "journal.json").is_file() and not (tmp_path / "out").exists()
    monkeypatch.setattr(pipeline, "_prune_layers", real)
    assert _stream(zoo("llama"), tmp_path / "out", zoo.texts, "wanda", sparsity=0.5, resume=True).resumed_from == 1


def test_a_sharded_directory_streams_shard_by_shard_into_the_same_layout(zoo, tmp_path):
    src = zoo("llama")
    sharded = tmp_path / "sharded"
    model = transformers.AutoModelForCausalLM.from_pretrained(src)
    model.save_pretrained(sharded, max_shard_size="20KB")
    for f in src.iterdir():
        if f.name.startswith("tokenizer") or f.name.endswith(("vocab.json", "merges.txt", "special_tokens_map.json")):
            (sharded / f.name).write_bytes(f.read_bytes())
    shards = sorted(p.name for p in sharded.glob("*.safetensors"))
    assert len(shards) > 2
    _stream(sharded, tmp_path / "out", zoo.texts, "sparsegpt", sparsity=0.5)
    _stream(src, tmp_path / "single", zoo.texts, "sparsegpt", sparsity=0.5)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.safetensors")) == shards
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert index == json.loads((sharded / "model.safetensors.index.json").read_text())
    got, want = _weights(tmp_path / "out"), _weights(tmp_path / "single")
    assert sorted(got) == sorted(want) and all(torch.equal(got[n], want[n]) for n in got)
    transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")


def test_offloaded_activations_give_the_same_bytes_and_leave_nothing(zoo, tmp_path):
    spill = tmp_path / "spill"
    spill.mkdir()
    options = StreamOptions(**OPTS, offload_activations=spill)
    settings = pp.PruneSettings("wanda", sparsity=0.5, layer_ratios="owl")
    prune_model_dir(zoo("llama"), tmp_path / "off", settings, zoo.texts, options=options)
    prune_model_dir(zoo("llama"), tmp_path / "mem", settings, zoo.texts, options=StreamOptions(**OPTS))
    assert _digest(tmp_path / "off" / "model.safetensors") == _digest(tmp_path / "mem" / "model.safetensors")
    assert list(spill.iterdir()) == []
    with pytest.raises(CheckpointError, match="--offload-activations .* not a directory"):
        prune_model_dir(zoo("llama"), tmp_path / "x", settings, zoo.texts,
                        options=StreamOptions(**OPTS, offload_activations=tmp_path / "missing"))


def test_an_error_after_the_model_is_built_is_the_one_line_the_user_sees(zoo, tmp_path, capfd):
    """The stream never calls from_pretrained for the weights: no loading bar or warning precedes
    an error found once the skeleton and tokenizer are built (here: a pattern no tensor fits)."""
    model_dir = zoo("llama")
    capfd.readouterr()  # building the test model prints transformers' own bars
    code = main(["prune", str(model_dir), "-o", str(tmp_path / "o"), "--method", "wanda", "--calibration",
                 str(zoo.texts), "--pattern", "1:3", "--progress", "always"])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("pruneplug prune: error:") and "M=3" in err[0], err

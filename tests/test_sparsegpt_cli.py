"""The command line for SparseGPT, OWL and the global cap, on a tiny BERT directory built here."""

import json
from pathlib import Path
import sys

import numpy as np
import pytest

import pruneplug as pp

torch = pytest.importorskip("torch", reason="torch is not installed (pip install pruneplug[torch])")
transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install pruneplug[hf])")
from safetensors.numpy import load_file  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_models import same_layout_untouched_identical, tiny_bert_dir  # noqa: E402


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return tiny_bert_dir(tmp_path_factory.mktemp("tinybert_sgpt"))


@pytest.fixture()
def texts(tmp_path):
    p = tmp_path / "texts.txt"
    p.write_text("the cat sat on the mat\nthe big dog ran fast\na small red cat\nthe blue dog sat\n"
                 "w1 w2 w3 the cat\nw7 w8 dog ran slow\nred blue big small\nthe mat sat on a dog\n")
    return p


def _cli(*args):
    from pruneplug.cli import main

    return main([str(a) for a in args])


@pytest.fixture()
def stats(bert_dir, texts, tmp_path):
    path = tmp_path / "stats.safetensors"
    assert _cli("calibrate", bert_dir, texts, "-o", path, "--seq-len", "8", "--hessian") == 0
    return path


def test_calibrate_hessian_then_prune_sparsegpt_streaming(bert_dir, stats, tmp_path):
    ctx = pp.CalibrationContext.load(stats)
    q = "encoder.layer.0.attention.self.query.weight"
    assert ctx[q].hessian is not None and ctx[q].hessian.shape == (16, 16)
    out = tmp_path / "pruned.safetensors"
    assert _cli("prune", bert_dir / "model.safetensors", "-o", out, "--method", "sparsegpt", "--calibration", stats,
                "--sparsity", "0.5", "--progress", "never") == 0
    src, dst = same_layout_untouched_identical(bert_dir / "model.safetensors", out, ctx)
    for name in ctx:
        assert (dst[name] == 0).sum() == dst[name].size // 2, name
        assert not np.signbit(dst[name][dst[name] == 0]).any()
    kept = dst[q] != 0
    assert not np.array_equal(dst[q][kept], src[q][kept]), "the weights that stay are updated"


def test_sparsegpt_without_hessians_fails_and_writes_nothing(bert_dir, texts, tmp_path, capsys):
    plain = tmp_path / "plain.safetensors"
    assert _cli("calibrate", bert_dir, texts, "-o", plain, "--seq-len", "8") == 0
    out = tmp_path / "never.safetensors"
    assert _cli("prune", bert_dir / "model.safetensors", "-o", out, "--method", "sparsegpt", "--calibration", plain,
                "--sparsity", "0.5", "--progress", "never") == 1
    assert "no Hessian" in capsys.readouterr().err
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("method", ["l1", "wanda", "sparsegpt"])
def test_owl_layer_ratios_exact_total(bert_dir, stats, tmp_path, method):
    out, report = tmp_path / "owl.safetensors", tmp_path / "report.json"
    assert _cli("prune", bert_dir / "model.safetensors", "-o", out, "--method", method, "--calibration", stats,
                "--sparsity", "0.6", "--layer-ratios", "owl", "--owl-lambda", "0.1", "--report", report,
                "--progress", "never") == 0
    ctx = pp.CalibrationContext.load(stats)
    dst = load_file(str(out))
    total = sum(dst[n].size for n in ctx)
    assert sum(int((dst[n] == 0).sum()) for n in ctx) == round(0.6 * total)
    per_tensor = {n: float((dst[n] == 0).mean()) for n in ctx}
    assert max(per_tensor.values()) - min(per_tensor.values()) > 0.05, "OWL gives layers different sparsities"
    settings = json.loads(report.read_text())["settings"]
    assert settings["layer_ratios"]["method"] == "owl" and len(settings["layer_ratios"]["outlier_ratios"]) >= 2


def test_one_step_sparsegpt_model_directory(bert_dir, texts, tmp_path):
    out = tmp_path / "out"
    assert _cli("prune", bert_dir, "-o", out, "--method", "sparsegpt", "--calibration", texts, "--pattern", "2:4",
                "--seq-len", "8", "--progress", "never") == 0
    dst = load_file(str(out / "model.safetensors"))
    assert pp.is_nm_sparse(dst["encoder.layer.1.output.dense.weight"], 2, 4)
    transformers.AutoModel.from_pretrained(str(out))  # loads


def test_global_scope_never_removes_a_whole_layer(bert_dir, tmp_path):
    src = load_file(str(bert_dir / "model.safetensors"))
    # a layer on a much smaller scale than the others: an uncapped global prune removes it whole
    src["pooler.dense.weight"] = (src["pooler.dense.weight"] * 1e-4).astype(np.float32)
    from safetensors.numpy import save_file

    save_file(src, str(tmp_path / "m.safetensors"))
    for extra, expect_full in (([], False), (["--max-layer-sparsity", "1.0"], True)):
        out = tmp_path / f"o{len(extra)}.safetensors"
        assert _cli("prune", tmp_path / "m.safetensors", "-o", out, "--scope", "global", "--sparsity", "0.7",
                    "--progress", "never", *extra) == 0
        pooler = load_file(str(out))["pooler.dense.weight"]
        assert bool((pooler == 0).all()) == expect_full
        if not expect_full:
            assert int((pooler == 0).sum()) == int(0.99 * pooler.size)

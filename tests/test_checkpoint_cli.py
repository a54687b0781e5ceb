"""``pruneplug prune`` / ``pruneplug inspect``: exit codes, one-line errors, never a traceback."""

from __future__ import annotations

import builtins
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pruneplug as pp
from pruneplug import checkpoint as ck
from pruneplug.console import ProgressBar
from pruneplug.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_checkpoint_support import (  # noqa: E402
    run_cli,
    DEFAULT_SELECTED,
    model_tensors,
    read_safetensors,
    reference_global_masks,
    write_sharded,
    write_single,
)


@pytest.fixture
def tensors():
    return model_tensors()


@pytest.fixture
def single(tmp_path, tensors):
    return write_single(tmp_path / "model.safetensors", tensors)


def test_prune_global_table_and_report(tmp_path, capsys, single, tensors):
    rc, out, err = run_cli(capsys, "prune", single, "-o", tmp_path / "o.safetensors", "--sparsity", "0.5",
                       "--scope", "global", "--report", tmp_path / "r.json", "--masks-out", tmp_path / "m.safetensors")
    assert rc == 0, err
    assert err == ""  # stderr is not a terminal: no progress bar
    lines = out.splitlines()
    assert lines[0].split()[:6] == ["tensor", "shape", "dtype", "before", "after", "pruned"]
    assert any(line.startswith("model.layers.0.self_attn.q_proj.weight") and "pruned" in line for line in lines)
    assert not any(line.startswith("lm_head.weight") for line in lines)  # untouched rows need --all
    total = sum(tensors[n].size for n in DEFAULT_SELECTED)
    assert f"{round(0.5 * total):,} of {total:,} selected parameters pruned" in out
    assert "global threshold" in out and "wrote" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["totals"]["parameters_pruned"] == round(0.5 * total)
    out_arrays, _, _ = read_safetensors(tmp_path / "o.safetensors")
    expected = reference_global_masks(tensors, DEFAULT_SELECTED, 0.5, "l1")
    for n in DEFAULT_SELECTED:
        np.testing.assert_array_equal(out_arrays[n] != 0, expected[n] & (tensors[n] != 0))


def test_prune_all_and_quiet(tmp_path, capsys, single):
    rc, out, _ = run_cli(capsys, "prune", single, "-o", tmp_path / "o.safetensors", "--sparsity", "0.2", "--all")
    assert rc == 0 and "lm_head.weight" in out and "kept: output head" in out
    rc, out, _ = run_cli(capsys, "prune", single, "-o", tmp_path / "o.safetensors", "--sparsity", "0.2", "--quiet")
    assert rc == 0 and out.splitlines()[0].startswith("total:")


def test_prune_24_with_strict(tmp_path, capsys, single):
    rc, out, err = run_cli(capsys, "prune", single, "-o", tmp_path / "o.safetensors", "--pattern", "2:4")
    assert rc == 0 and "skipped: axis 1 has 6 elements, not divisible by M=4" in out
    rc, out, err = run_cli(capsys, "prune", single, "-o", tmp_path / "o2.safetensors", "--pattern", "2:4", "--strict")
    assert rc == 1 and err.startswith("pruneplug prune: error:") and "odd.weight" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o2.safetensors").exists()


@pytest.mark.parametrize("argv, message", [
    (["--sparsity", "0.5", "--include", "nomatch"], "--include 'nomatch' matches no tensor"),
    (["--sparsity", "0.5", "--exclude", "["], "not a valid regular expression"),
    (["--sparsity", "1.5"], "sparsity=1.5 must be a real number in [0, 1]"),
    (["--pattern", "2:4", "--sparsity", "0.5"], "N:M fixes it"),
    (["--pattern", "2:4", "--scope", "global"], "scope='global' applies to unstructured"),
    (["--pattern", "3:2"], "must not exceed"),
    (["--pattern", "diagonal", "--sparsity", "0.5"], "pattern='diagonal'"),
    (["--sparsity", "0.5", "--backend", "nosuch"], "backend='nosuch' is not registered"),
])
def test_prune_user_errors_are_one_line(tmp_path, capsys, single, argv, message):
    rc, out, err = run_cli(capsys, "prune", single, "-o", tmp_path / "o.safetensors", *argv)
    assert rc == 1, (out, err)
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.safetensors").exists()


def test_prune_missing_output_or_sparsity_is_usage_error(capsys, single):
    rc, _, err = run_cli(capsys, "prune", single, "--sparsity", "0.5")
    assert rc == 2 and "-o OUT" in err
    rc, _, err = run_cli(capsys, "prune", single, "-o", "x.safetensors")
    assert rc == 2 and "needs --sparsity" in err


def test_out_equal_in_refused_then_in_place(tmp_path, capsys, single):
    before = single.read_bytes()
    rc, _, err = run_cli(capsys, "prune", single, "-o", single, "--sparsity", "0.5")
    assert rc == 1 and "pass --in-place" in err and single.read_bytes() == before
    rc, _, err = run_cli(capsys, "prune", single, "--in-place", "--sparsity", "0.5")
    assert rc == 0, err
    assert single.read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_corrupt_and_truncated_input(tmp_path, capsys, single):
    data = single.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    rc, _, err = run_cli(capsys, "prune", tmp_path / "cut.safetensors", "-o", tmp_path / "o.safetensors", "--sparsity", "0.5")
    assert rc == 1 and "truncated" in err
    (tmp_path / "junk.safetensors").write_bytes(np.random.default_rng(0).bytes(256))
    rc, _, err = run_cli(capsys, "inspect", tmp_path / "junk.safetensors")
    assert rc == 1 and err.startswith("pruneplug inspect: error:")
    rc, _, err = run_cli(capsys, "prune", tmp_path / "nothing.safetensors", "-o", tmp_path / "o.safetensors", "--sparsity", "0.5")
    assert rc == 1 and "no such file" in err
    assert not (tmp_path / "o.safetensors").exists()


def test_unwritable_output(tmp_path, capsys, single):
    rc, _, err = run_cli(capsys, "prune", single, "-o", tmp_path / "missing-dir" / "o.safetensors", "--sparsity", "0.5")
    assert rc == 1 and "does not exist" in err
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        try:
            rc, _, err = run_cli(capsys, "prune", single, "-o", locked / "o.safetensors", "--sparsity", "0.5")
            assert rc == 1 and "cannot write to directory" in err
        finally:
            locked.chmod(0o700)
    rc, _, err = run_cli(capsys, "prune", single, "-o", tmp_path / "o.safetensors", "--sparsity", "0.5",
                     "--report", tmp_path / "missing-dir" / "r.json")
    assert rc == 1 and "does not exist" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_failure_mid_write_cli(tmp_path, capsys, single, monkeypatch):
    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck.SafetensorsWriter, "write", disk_full)
    rc, _, err = run_cli(capsys, "prune", single, "-o", tmp_path / "o.safetensors", "--sparsity", "0.5")
    assert rc == 1 and "No space left on device" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_dry_run_sharded(tmp_path, capsys, tensors):
    src = write_sharded(tmp_path / "in", tensors)
    rc, out, err = run_cli(capsys, "prune", src, "--dry-run", "--sparsity", "0.5", "--scope", "global")
    assert rc == 0 and "dry run: nothing written" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_progress_forced_to_a_pipe(tmp_path, capsys, single):
    rc, _, err = run_cli(capsys, "prune", single, "-o", tmp_path / "o.safetensors", "--sparsity", "0.5",
                     "--scope", "global", "--progress", "always")
    assert rc == 0
    assert "global select, pass 1: [" in err and "pruning: [" in err and "ETA" in err and "tensors" in err


def test_progress_bar_unit():
    quiet = io.StringIO()
    bar = ProgressBar(stream=quiet)  # StringIO is not a terminal
    bar.start("x", 2, 100)
    bar.update(1, 50)
    bar.close()
    assert quiet.getvalue() == ""
    loud = io.StringIO()
    bar = ProgressBar(stream=loud, force=True)
    bar.start("phase", 2, 2000)
    bar.update(2, 2000)
    bar.close()
    text = loud.getvalue()
    assert "phase: [########################] 2/2 tensors 2.0 KB/2.0 KB" in text and text.endswith("\n")


def test_inspect_table_json_and_plot(tmp_path, capsys, single):
    rc, out, _ = run_cli(capsys, "prune", single, "-o", tmp_path / "o.safetensors", "--pattern", "2:4")
    rc, out, err = run_cli(capsys, "inspect", tmp_path / "o.safetensors")
    assert rc == 0, err
    row = next(line for line in out.splitlines() if line.startswith("model.layers.0.self_attn.o_proj.weight"))
    assert " 50.00%  yes 2:4," in row
    rc, out, _ = run_cli(capsys, "inspect", tmp_path / "o.safetensors", "--json")
    data = json.loads(out)
    assert {t["name"]: t["is_24"] for t in data["tensors"]}["model.layers.0.self_attn.o_proj.weight"] is True
    pytest.importorskip("matplotlib")
    rc, out, err = run_cli(capsys, "inspect", single, "--plot", tmp_path / "p.png")
    assert rc == 0, err
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inspect_plot_without_matplotlib(tmp_path, capsys, single, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    rc, _, err = run_cli(capsys, "inspect", single, "--plot", tmp_path / "p.png")
    assert rc == 1 and "pip install 'pruneplug[plot]'" in err
    assert not (tmp_path / "p.png").exists()


def test_help_states_the_selection_rule(capsys):
    with pytest.raises(SystemExit):
        main(["prune", "--help"])
    out = capsys.readouterr().out
    assert "embeddings" in out and "output head" in out and "--include" in out and "sorted-name order" in out


def _console_script() -> str | None:
    here = Path(sys.executable).parent / "pruneplug"
    return str(here) if here.exists() else shutil.which("pruneplug")


def test_console_script_subprocess(tmp_path, single):
    script = _console_script()
    if script is None:
        pytest.skip("the pruneplug console script is not installed")
    ok = subprocess.run([script, "prune", str(single), "-o", str(tmp_path / "o.safetensors"), "--sparsity", "0.5",
                         "--scope", "global"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "selected parameters pruned" in ok.stdout and ok.stderr == ""
    (tmp_path / "bad.safetensors").write_bytes(single.read_bytes()[:100])
    bad = subprocess.run([script, "prune", str(tmp_path / "bad.safetensors"), "-o", str(tmp_path / "x.safetensors"),
                          "--sparsity", "0.5"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    assert "Traceback" not in bad.stderr and bad.stderr.startswith("pruneplug prune: error:")
    assert not (tmp_path / "x.safetensors").exists()

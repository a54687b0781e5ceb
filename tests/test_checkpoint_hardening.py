"""``pruneplug prune`` and ``prune_checkpoint`` on hostile options (issue 19): the per-layer cap and
the OWL parameters validated the same way everywhere, the Dask path refusing what it cannot do,
and the ``--calibration`` statistics file protected from every output."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

import pruneplug as pp
from pruneplug.errors import CheckpointError, InvalidArgumentError

pytest.importorskip("safetensors", reason="safetensors is not installed")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_checkpoint_support import DEFAULT_SELECTED, model_tensors, run_cli, write_sharded, write_single  # noqa: E402


@pytest.fixture
def single(tmp_path):
    return write_single(tmp_path / "model.safetensors", model_tensors())


def _tree(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# --- items 3 and 4: --max-layer-sparsity -----------------------------------------------------------
@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("value", ["nan", "-1", "1.5", "inf"])
def test_cli_max_layer_sparsity_is_validated_in_both_scopes(tmp_path, capsys, single, scope, value):
    before = _tree(tmp_path)
    rc, out, err = run_cli(capsys, "prune", single, "-o", tmp_path / "o.safetensors", "--sparsity", "0.5",
                           "--scope", scope, "--max-layer-sparsity", value)
    assert rc != 0 and "max_layer_sparsity=" in err and len(err.strip().splitlines()) == 1, err
    assert _tree(tmp_path) == before


def test_cli_max_layer_sparsity_below_the_target_with_uniform_layer_scope_is_refused(tmp_path, capsys, single):
    rc, _, err = run_cli(capsys, "prune", single, "-o", tmp_path / "o.safetensors", "--sparsity", "0.5",
                         "--max-layer-sparsity", "0.3")
    assert rc != 0 and "max_layer_sparsity=0.3 applies to scope='global' and layer_ratios='owl'" in err
    assert not (tmp_path / "o.safetensors").exists()
    rc, _, err = run_cli(capsys, "prune", single, "-o", tmp_path / "o.safetensors", "--sparsity", "0.5",
                         "--max-layer-sparsity", "1")
    assert rc == 0, err


def test_every_python_front_end_has_the_same_default_cap(tmp_path):
    """prune_checkpoint, the Dask path and prune_model (and prune_sharded, tests/test_distributed.py)
    record the same default cap with global scope, from one function."""
    from pruneplug.layer_ratios import DEFAULT_GLOBAL_MAX_LAYER_SPARSITY, resolve_max_layer_sparsity

    src = write_single(tmp_path / "m.safetensors", model_tensors())
    report = pp.prune_checkpoint(src, tmp_path / "o.safetensors", sparsity=0.5, scope="global")
    assert report.settings["max_layer_sparsity"] == DEFAULT_GLOBAL_MAX_LAYER_SPARSITY
    assert resolve_max_layer_sparsity(None, "global", 0.5) == DEFAULT_GLOBAL_MAX_LAYER_SPARSITY
    assert resolve_max_layer_sparsity(None, "layer", 0.5) == 1.0


# --- item 5: OWL parameters everywhere; the Dask path refuses what it cannot do ---------------------------
@pytest.mark.parametrize("option, value", [("--owl-m", "-3"), ("--owl-m", "inf"), ("--owl-lambda", "0.7"),
                                           ("--owl-lambda", "nan"), ("--owl-lambda", "-0.1")])
@pytest.mark.parametrize("dask", [False, True])
def test_cli_owl_parameters_are_validated_on_every_path(tmp_path, capsys, option, value, dask):
    src = write_sharded(tmp_path / "in", model_tensors(), shards=2)
    extra = ["--workers", "1"] if dask else []
    rc, _, err = run_cli(capsys, "prune", src, "-o", tmp_path / "out", "--sparsity", "0.5", option, value, *extra)
    assert rc != 0 and option.lstrip("-").replace("-", "_") + "=" in err, err
    assert not (tmp_path / "out").exists()


def test_dask_path_refuses_owl_layer_ratios(tmp_path, capsys):
    src = write_sharded(tmp_path / "in", model_tensors(), shards=2)
    rc, _, err = run_cli(capsys, "prune", src, "-o", tmp_path / "out", "--sparsity", "0.5", "--workers", "1",
                         "--layer-ratios", "owl")
    assert rc != 0 and "--layer-ratios owl cannot be combined with --dask/--workers" in err, err
    assert not (tmp_path / "out").exists()


def test_workers_zero_is_refused_not_single_process(tmp_path, capsys):
    src = write_sharded(tmp_path / "in", model_tensors(), shards=2)
    rc, _, err = run_cli(capsys, "prune", src, "-o", tmp_path / "out", "--sparsity", "0.5", "--workers", "0")
    assert rc != 0 and "workers=0 (--workers) must be an integer >= 1" in err, err
    assert not (tmp_path / "out").exists()


def test_python_dask_path_checks_the_cap_and_workers_before_any_work(tmp_path):
    pytest.importorskip("distributed", reason="distributed is not installed")
    from pruneplug.dask_checkpoint import prune_checkpoint_dask

    src = write_sharded(tmp_path / "in", model_tensors(), shards=2)
    with pytest.raises(InvalidArgumentError, match="max_layer_sparsity=nan"):
        prune_checkpoint_dask(src, tmp_path / "out", sparsity=0.5, scope="global", workers=1,
                              max_layer_sparsity=float("nan"))
    with pytest.raises(InvalidArgumentError, match="workers=0"):
        prune_checkpoint_dask(src, tmp_path / "out", sparsity=0.5, scheduler="tcp://127.0.0.1:1", workers=0)
    assert not (tmp_path / "out").exists()


# --- item 12: the statistics file is an input no output may overwrite ---------------------------------
@pytest.fixture
def stats(tmp_path):
    ctx = pp.CalibrationContext()
    tensors = model_tensors()
    for name in DEFAULT_SELECTED:
        ctx.add(name, pp.ActivationStats(np.arange(1.0, tensors[name].shape[1] + 1), 4))
    return ctx.save(tmp_path / "stats.safetensors")


@pytest.mark.parametrize("role", ["-o", "--report"])
@pytest.mark.parametrize("spelling", ["same", "dot", "symlink", "hardlink"])
def test_outputs_may_not_be_the_calibration_file(tmp_path, capsys, single, stats, role, spelling):
    target = {"same": stats, "dot": tmp_path / "." / stats.name, "symlink": tmp_path / "link.safetensors",
              "hardlink": tmp_path / "hard.safetensors"}[spelling]
    if spelling == "symlink":
        os.symlink(stats, target)
    elif spelling == "hardlink":
        os.link(stats, target)
    content = stats.read_bytes()
    outputs = ["-o", target] if role == "-o" else ["-o", tmp_path / "o.safetensors", "--report", target]
    rc, _, err = run_cli(capsys, "prune", single, *outputs, "--method", "wanda", "--calibration", stats,
                         "--sparsity", "0.5")
    assert rc != 0 and "--calibration" in err and "choose another path" in err, err
    assert stats.read_bytes() == content
    assert not (tmp_path / "o.safetensors").exists()


def test_in_place_may_not_overwrite_the_calibration_file(tmp_path, stats):
    with pytest.raises(CheckpointError, match="--calibration"):
        pp.prune_checkpoint(stats, None, in_place=True, sparsity=0.5, method="wanda", calibration=stats)


def test_calibration_inside_the_input_directory_is_fine(tmp_path, stats):
    """Only outputs are checked against it: a statistics file kept in the model directory is read."""
    src = write_sharded(tmp_path / "in", model_tensors(), shards=2)
    inside = src / "stats.safetensors"
    inside.write_bytes(stats.read_bytes())
    report = pp.prune_checkpoint(src, tmp_path / "out", sparsity=0.5, method="wanda", calibration=inside)
    assert report.output == str(tmp_path / "out") and inside.read_bytes() == stats.read_bytes()

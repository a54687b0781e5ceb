"""Sharded checkpoints on a real Dask cluster (a LocalCluster of 2 worker processes): the output
directory is byte-identical to the single-process command; a worker that dies commits nothing."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

import pruneplug as pp
from pruneplug.errors import CheckpointError, InvalidArgumentError, NonFiniteError

distributed = pytest.importorskip("distributed", reason="distributed is not installed (pip install 'pruneplug[dask]')")
pytest.importorskip("safetensors", reason="safetensors is not installed")
from test_checkpoint_support import model_tensors, write_sharded  # noqa: E402

from pruneplug.dask_checkpoint import prune_checkpoint_dask  # noqa: E402


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  silence_logs=logging.ERROR) as cluster, distributed.Client(cluster) as c:
        yield c


@pytest.fixture
def src(tmp_path):
    return write_sharded(tmp_path / "in", model_tensors(seed=3), shards=3)


def _tree(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and mode bits."""
    return {p.relative_to(directory).as_posix(): (p.read_bytes(), p.stat().st_mode & 0o7777)
            for p in sorted(directory.rglob("*")) if p.is_file()}


SETTINGS = [
    dict(sparsity=0.5, scope="global"),
    dict(sparsity=0.37, scope="global", method="l2"),
    dict(sparsity=0.5, scope="layer"),
    dict(pattern="2:4"),
    dict(sparsity=0.25, pattern="row"),
    dict(sparsity=0.6, scope="global", exclude=[r"q_proj"]),
    dict(sparsity=0.5, scope="global", max_layer_sparsity=0.52),  # a cap that binds: water-filling on both paths
]


@pytest.mark.slow
@pytest.mark.parametrize("settings", SETTINGS, ids=[str(s) for s in SETTINGS])
def test_byte_identical_to_single_process(client, src, tmp_path, settings):
    pp.prune_checkpoint(src, tmp_path / "one", **settings)
    report = prune_checkpoint_dask(src, tmp_path / "many", client=client, **settings)
    one, many = _tree(tmp_path / "one"), _tree(tmp_path / "many")
    assert sorted(one) == sorted(many)
    assert (tmp_path / "one").stat().st_mode == (tmp_path / "many").stat().st_mode
    for name in one:
        assert one[name] == many[name], name
    assert report.output == str(tmp_path / "many")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left
    if "max_layer_sparsity" in settings:  # the cap held on every tensor, the total stayed exact
        rows = [t for t in report.tensors if t.status == "pruned"]
        assert all(t.pruned <= settings["max_layer_sparsity"] * t.numel for t in rows)
        assert sum(t.pruned for t in rows) == round(settings["sparsity"] * sum(t.numel for t in rows))
        assert any(t.pruned > settings["sparsity"] * t.numel + 1 for t in rows)  # global: counts differ per tensor


@pytest.mark.slow
@pytest.mark.parametrize("settings", [dict(sparsity=0.5, scope="global"), dict(sparsity=0.5, scope="layer"),
                                      dict(sparsity=0.5, scope="global", max_layer_sparsity=0.52)],
                         ids=["global", "layer", "global-binding-cap"])
def test_workers_prune_with_the_single_process_step(src, tmp_path, monkeypatch, settings):
    """The workers' per-tensor step is the single-process one (TensorPruner.process, unstructured
    pruning in one pass, never pp.prune), every pruned tensor once: a cluster of threads in this
    process, so that the spies see the workers' calls."""
    from pruneplug.checkpoint import prune as prune_module

    pp.prune_checkpoint(src, tmp_path / "one", **settings)
    processed = []
    real_process = prune_module.TensorPruner.process

    def process(self, task, writer, mask_writer):
        processed.append((task.ref.name, task.status))
        return real_process(self, task, writer, mask_writer)

    def no_unstructured(*args, **kwargs):
        raise AssertionError("pp.prune called for unstructured pruning")

    monkeypatch.setattr(prune_module.TensorPruner, "process", process)
    monkeypatch.setattr(prune_module.api, "prune", no_unstructured)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0",
                                  silence_logs=logging.ERROR) as cluster, distributed.Client(cluster) as threads:
        report = prune_checkpoint_dask(src, tmp_path / "many", client=threads, **settings)
    pruned = sorted(r.name for r in report.tensors if r.status == "pruned")
    assert sorted(name for name, status in processed if status == "pruned") == pruned
    assert sorted(name for name, _ in processed) == sorted(r.name for r in report.tensors)
    assert _tree(tmp_path / "one") == _tree(tmp_path / "many")


@pytest.mark.slow
def test_worker_killed_mid_shard_commits_nothing(client, src, tmp_path):
    marker = tmp_path / "died"
    with pytest.raises(CheckpointError, match="left the cluster"):
        prune_checkpoint_dask(src, tmp_path / "out", sparsity=0.5, scope="global", client=client,
                              _fault=("model-00002-of-00003.safetensors", str(marker)))
    assert marker.exists()  # the worker really died in the middle of its shard
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    client.wait_for_workers(2, timeout=60)


@pytest.mark.slow
def test_errors_commit_nothing(client, src, tmp_path):
    tensors = model_tensors(seed=3)
    tensors["model.layers.0.mlp.up_proj.weight"][2, 3] = np.nan
    bad = write_sharded(tmp_path / "bad", tensors, shards=3)
    with pytest.raises(NonFiniteError, match="up_proj"):
        prune_checkpoint_dask(bad, tmp_path / "out", sparsity=0.5, scope="global", client=client)
    with pytest.raises(NonFiniteError, match="up_proj"):
        prune_checkpoint_dask(bad, tmp_path / "out", sparsity=0.5, client=client)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bad_arguments(src, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(CheckpointError, match="not empty"):
        prune_checkpoint_dask(src, tmp_path / "full", sparsity=0.5, workers=1)
    with pytest.raises(InvalidArgumentError, match="sharded directory"):
        prune_checkpoint_dask(next(src.glob("*.safetensors")), tmp_path / "o", sparsity=0.5, workers=1)
    with pytest.raises(InvalidArgumentError, match="scope"):
        prune_checkpoint_dask(src, tmp_path / "o", sparsity=0.5, scope="model", workers=1)


def test_cli_rejects_unsupported_options(src, tmp_path, capsys):
    from pruneplug.cli import main

    code = main(["prune", str(src), "-o", str(tmp_path / "o"), "--sparsity", "0.5", "--workers", "2",
                 "--report", str(tmp_path / "r.json")])
    assert code != 0
    assert "--report cannot be combined with --dask/--workers" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_cli_local_cluster(src, tmp_path, capsys):
    from pruneplug.cli import main

    assert main(["prune", str(src), "-o", str(tmp_path / "one"), "--sparsity", "0.5", "--scope", "global"]) == 0
    assert main(["prune", str(src), "-o", str(tmp_path / "two"), "--sparsity", "0.5", "--scope", "global",
                 "--workers", "2"]) == 0
    assert _tree(tmp_path / "one") == _tree(tmp_path / "two")
    assert "wrote" in capsys.readouterr().out

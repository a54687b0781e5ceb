"""torch.distributed: a real 4-process gloo group; the union of the ranks' masks is the
single-process result bit for bit."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pruneplug as pp

torch = pytest.importorskip("torch", reason="torch is not installed")
WORKER = Path(__file__).with_name("distributed_worker.py")
WORLD = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def group_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gloo")
    subprocess.run([sys.executable, str(WORKER), str(out), str(_free_port()), str(WORLD)], check=True, timeout=300)
    full = torch.load(out / "full.pt")
    ranks = [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]
    return full, ranks


def _assemble(ranks, key, shape_of):
    """The full pruned tensor and mask of one parameter from the ranks' pieces."""
    name = key[-1]
    n = int(np.prod(shape_of[name].shape))
    pruned = torch.empty(n, dtype=shape_of[name].dtype)
    mask = torch.empty(n, dtype=torch.bool)
    covered = 0
    for r in ranks:
        if key in r["results"]:
            offset, piece, piece_mask = r["results"][key]
            pruned[offset:offset + piece.numel()] = piece.reshape(-1)
            mask[offset:offset + piece.numel()] = piece_mask.reshape(-1)
            covered += piece.numel()
    assert covered == n
    return pruned.reshape(shape_of[name].shape), mask.reshape(shape_of[name].shape)


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["whole", "flat", "rows", "dtensor"])
def test_gloo_group_matches_single_process(group_run, scheme):
    full, ranks = group_run
    for s in (0.3, 0.9):
        want_global = pp.global_unstructured_masks(full, s)
        total_pruned = 0
        for name, weight in full.items():
            pruned, mask = _assemble(ranks, (scheme, "global", s, name), full)
            assert torch.equal(mask, want_global[name].data), (scheme, s, name)
            expect = weight.clone()
            expect[~mask] = 0
            assert torch.equal(pruned.view(torch.uint8) if pruned.dtype != torch.bfloat16 else pruned.view(torch.int16),
                               expect.view(torch.uint8) if expect.dtype != torch.bfloat16 else expect.view(torch.int16))
            total_pruned += int((~mask).sum())
            pruned_l, mask_l = _assemble(ranks, (scheme, "layer", s, name), full)
            want_l, want_mask_l = pp.prune(weight.clone(), s, return_mask=True)
            assert torch.equal(mask_l, want_mask_l.data), (scheme, "layer", s, name)
            assert torch.equal(pruned_l, want_l)
        assert total_pruned == pp.count_to_prune(s, sum(w.numel() for w in full.values()))


@pytest.mark.slow
def test_gloo_group_errors_are_the_same_on_every_rank(group_run):
    _, ranks = group_run
    nan = {r["errors"].get("nan") for r in ranks}
    assert len(nan) == 1 and "non-finite" in nan.pop()
    coverage = {r["errors"].get("coverage") for r in ranks}
    assert len(coverage) == 1 and "piece is missing" in coverage.pop()


@pytest.fixture
def one_rank_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    yield dist
    dist.destroy_process_group()


def test_one_rank_group_and_bad_arguments(one_rank_group):
    from pruneplug.torch.distributed import Shard, prune_sharded
    from pruneplug.errors import InvalidArgumentError

    g = torch.Generator().manual_seed(7)
    params = {"x": torch.randn(10, 12, generator=g), "y": torch.randn(30, generator=g).half()}
    masks = prune_sharded({n: p.clone() for n, p in params.items()}, 0.4, order=list(params), inplace=False)
    want = pp.global_unstructured_masks(params, 0.4)
    assert all(torch.equal(masks[n].data, want[n].data) for n in params)
    with pytest.raises(InvalidArgumentError, match="scope"):
        prune_sharded(params, 0.4, scope="model")
    with pytest.raises(InvalidArgumentError, match="order must name"):
        prune_sharded(params, 0.4, order=["x"])
    with pytest.raises(InvalidArgumentError, match="piece is missing"):
        prune_sharded([Shard("x", params["x"][:5], numel=120)], 0.4)
    with pytest.raises(InvalidArgumentError, match="outside"):
        prune_sharded([Shard("x", params["x"], offset=10)], 0.4)
    with pytest.raises(ValueError, match="sparsity"):
        prune_sharded(params, 1.2)

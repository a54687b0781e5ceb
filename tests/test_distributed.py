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


def _capped_reference(full, sparsity, cap=0.99):
    """The single-process capped global prune: water-filling over exact global selections, each
    tensor then pruned to its count (pruneplug.layer_ratios.capped_counts)."""
    from pruneplug.layer_ratios import capped_counts, layer_caps

    names = list(full)
    sizes = [full[n].numel() for n in names]

    def select(active, k):
        masks = pp.global_unstructured_masks({names[t]: full[names[t]] for t in active}, count=k)
        return [sizes[t] - int(masks[names[t]].data.sum()) for t in active]

    counts = capped_counts(pp.count_to_prune(sparsity, sum(sizes)), layer_caps(sizes, cap), select)
    return {n: pp.prune(full[n].clone(), count=k, return_mask=True)[1].data for n, k in zip(names, counts)}


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["whole", "flat", "rows", "dtensor"])
def test_gloo_group_default_cap_matches_the_single_process_capped_prune(group_run, scheme):
    """Global scope caps every parameter at 0.99 by default, as every other front end (at 0.9 the
    uncapped selection removes all of e.weight, whose weights are all 0.5); the total stays exact."""
    full, ranks = group_run
    for s in (0.3, 0.9):
        want = _capped_reference(full, s)
        masks = {name: _assemble(ranks, (scheme, "capped", s, name), full)[1] for name in full}
        for name in full:
            assert torch.equal(masks[name], want[name]), (scheme, s, name)
            assert int((~masks[name]).sum()) <= int(0.99 * full[name].numel())
        assert sum(int((~m).sum()) for m in masks.values()) == pp.count_to_prune(s, sum(w.numel() for w in full.values()))
    assert int((~masks["e.weight"]).sum()) == int(0.99 * 256)  # the cap bound


def test_one_rank_group_cap_and_its_validation(one_rank_group):
    from pruneplug.torch.distributed import prune_sharded
    from pruneplug.errors import InvalidArgumentError

    g = torch.Generator().manual_seed(7)
    params = {"big": torch.randn(20, 20, generator=g) + 10.0, "pooler": torch.randn(10, 10, generator=g) * 1e-3}
    masks = prune_sharded({n: p.clone() for n, p in params.items()}, 0.6, order=list(params), inplace=False)
    assert int((~masks["pooler"].data).sum()) == 99  # not 100: the default cap of every front end (0.99)
    assert sum(int((~m.data).sum()) for m in masks.values()) == pp.count_to_prune(0.6, 500)
    assert all(torch.equal(masks[n].data, m) for n, m in _capped_reference(params, 0.6).items())
    full = prune_sharded({n: p.clone() for n, p in params.items()}, 0.6, order=list(params), inplace=False,
                         max_layer_sparsity=1.0)
    assert int((~full["pooler"].data).sum()) == 100
    for bad in (float("nan"), -1.0, 1.5, float("inf")):
        with pytest.raises(InvalidArgumentError, match="max_layer_sparsity="):
            prune_sharded(params, 0.6, max_layer_sparsity=bad)
    with pytest.raises(InvalidArgumentError, match="uniform layer scope"):
        prune_sharded(params, 0.6, scope="layer", max_layer_sparsity=0.3)
    frozen = torch.nn.Parameter(params["big"].clone(), requires_grad=False)
    version = frozen._version
    prune_sharded({"big": frozen}, 0.5)  # an in-place write autograd can see, as prune_model's
    assert frozen._version > version and int((frozen == 0).sum()) == 200


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

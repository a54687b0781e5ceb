"""A 4-process gloo group for tests/test_distributed.py (run as a script: spawn re-imports it).

Usage: python distributed_worker.py OUT_DIR PORT [WORLD]. Rank 0 saves the full parameters to
OUT_DIR/full.pt; every rank saves its pruned pieces and masks to OUT_DIR/rank{r}.pt, keyed by
(scheme, scope, sparsity, name) -> (offset, pruned piece, mask piece), and the error messages of
the failure scenarios. Scope "global" runs without a cap (max_layer_sparsity=1.0), "capped" is
global scope with the default cap, which binds on e.weight at 0.9.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

SPARSITIES = (0.3, 0.9)


def full_parameters() -> dict[str, torch.Tensor]:
    """Seeded parameters of mixed dtypes, with many equal magnitudes (ties at the threshold)."""
    g = torch.Generator().manual_seed(1234)
    params = {
        "a.weight": torch.randn(24, 40, generator=g),
        "b.weight": torch.randn(33, 17, generator=g).to(torch.bfloat16),
        "c.bias": torch.randn(50, generator=g).to(torch.float16),
        "d.weight": torch.randn(8, 6, 10, generator=g).double(),
        "e.weight": torch.full((16, 16), 0.5),
    }
    params["a.weight"][::3] = 0.5  # ties with e.weight across parameters and ranks
    params["b.weight"][5:9] = -0.5
    return params


def pieces(params: dict[str, torch.Tensor], scheme: str, rank: int, world: int) -> list:
    from pruneplug.torch.distributed import Shard

    out = []
    for i, (name, p) in enumerate(params.items()):
        p = p.clone()
        n = p.numel()
        if scheme == "whole":  # a plain per-rank parameter list
            if i % world == rank:
                out.append(Shard(name, p))
        elif scheme == "flat":  # FSDP-like: uneven contiguous slices of the flat parameter
            cuts = [0] + [min(n, (r + 1) * (n // world) + r * 3) for r in range(world - 1)] + [n]
            lo, hi = cuts[rank], cuts[rank + 1]
            out.append(Shard(name, p.reshape(-1)[lo:hi].clone(), offset=lo, numel=n))
        elif scheme == "dtensor":  # a real DTensor, Shard(0) on a 1-D CPU mesh (FSDP2's layout)
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.tensor import Shard as DimShard, distribute_tensor

            from pruneplug.torch.distributed import from_dtensor

            mesh = init_device_mesh("cpu", (world,))
            piece = from_dtensor(name, distribute_tensor(p, mesh, [DimShard(0)]))
            if piece is not None and piece.tensor.numel():
                out.append(Shard(name, piece.tensor.clone(), piece.offset, piece.numel))
        else:  # "rows": sharded on dim 0 by hand
            rows = p.shape[0]
            lo, hi = rank * rows // world, (rank + 1) * rows // world
            inner = n // rows
            out.append(Shard(name, p[lo:hi].clone(), offset=lo * inner, numel=n))
    return out


def run(rank: int, world: int, out_dir: str, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    from pruneplug.torch.distributed import prune_sharded
    from pruneplug.errors import PrunePlugError

    params = full_parameters()
    order = list(params)
    if rank == 0:
        torch.save(params, f"{out_dir}/full.pt")
    results, errors = {}, {}
    for scheme in ("whole", "flat", "rows", "dtensor"):
        for scope in ("global", "layer", "capped"):  # "capped": global with the default cap (0.99)
            for s in SPARSITIES:
                mine = pieces(params, scheme, rank, world)
                cap = {"global": 1.0, "layer": None, "capped": None}[scope]
                masks = prune_sharded(mine, s, scope="layer" if scope == "layer" else "global", order=order,
                                      max_layer_sparsity=cap)
                for piece in mine:
                    results[(scheme, scope, s, piece.name)] = (piece.offset, piece.tensor, masks[piece.name].data)
    bad = pieces(params, "flat", rank, world)
    if rank == 2:
        bad[0].tensor[3] = float("nan")
    try:
        prune_sharded(bad, 0.5, order=order)
    except PrunePlugError as exc:
        errors["nan"] = str(exc)
    try:  # rank 3 forgets its pieces: the coverage check fails on every rank
        prune_sharded(pieces(params, "flat", rank, world) if rank != 3 else [], 0.5, order=order)
    except PrunePlugError as exc:
        errors["coverage"] = str(exc)
    torch.save({"results": results, "errors": errors}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    out_dir, port = sys.argv[1], int(sys.argv[2])
    world = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    mp.spawn(run, args=(world, out_dir, port), nprocs=world, join=True)

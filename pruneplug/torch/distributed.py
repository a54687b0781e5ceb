"""torch.distributed: exact magnitude pruning of parameters sharded over a process group.

Every rank holds pieces (:class:`Shard`) of the model's parameters: whole parameters (a plain
per-rank parameter list) or contiguous slices of a parameter's flat C-order elements (FSDP's flat
shards, a ``DTensor`` sharded on dim 0). :func:`prune_sharded` prunes every rank's pieces so that
their union is exactly the single-process result on the full model:

* ``scope="global"``: ``pp.global_unstructured_masks(full_parameters, sparsity)``: exactly
  ``round(sparsity * total)`` lowest scores over all parameters, scores compared as float64 values,
  ties by the parameter order (``order``; default: sorted names), then by flat index;
* ``scope="layer"``: ``pp.prune(full_parameter, sparsity)`` for every parameter: each parameter's
  exact ``k`` across its shards.

The data never moves. The selection is :mod:`pruneplug.partselect`'s radix select: each pass, every
rank histograms its pieces and the histograms are summed with ``dist.all_reduce`` (int64 tensors;
65,537 counts for global scope, 257 per sharded parameter for layer scope, all sharded parameters in
one collective). Then each rank counts what the cut prunes in each piece and prunes that many with
the ordinary exact-``k`` operation on its own backend (``cpu`` for CPU tensors, ``cuda`` for CUDA
tensors). Collectives: one ``all_gather_object`` of the pieces' names and sizes, one
``all_reduce`` to check that the pieces cover every parameter exactly once, then one ``all_reduce``
per pass (global scope: 4 passes of 16-bit digits over float64 keys, plus at most
``ceil(log2(total)/16)`` when ties at the threshold are split).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from pruneplug import api, partselect
from pruneplug.arrays import adapt, array_module, check_float_dtype, dtype_name
from pruneplug.errors import InvalidArgumentError, NonFiniteError
from pruneplug.selection import chunk_histogram
from pruneplug.types import Mask
from pruneplug.layer_ratios import capped_counts, layer_caps, resolve_max_layer_sparsity
from pruneplug.validation import METHODS, count_to_prune

LAYER_DIGIT_BITS = 8  # layer scope: 257 counts per parameter and pass, all sharded parameters at once


@dataclass(frozen=True)
class Shard:
    """One rank's piece of a parameter: ``tensor`` holds the flat C-order elements
    ``offset .. offset + tensor.numel()`` of the parameter ``name`` of ``numel`` elements in all
    (``numel=None``: the whole parameter, ``offset`` 0).

    Example::

        # rank r of 2 holds half of the rows of a (4096, 1024) weight
        rows = weight.shape[0] // 2
        Shard("layers.0.w", full_weight[r * rows:(r + 1) * rows], offset=r * rows * 1024, numel=4096 * 1024)
    """

    name: str
    tensor: Any
    offset: int = 0
    numel: int | None = None

    @property
    def full_numel(self) -> int:
        return int(self.tensor.numel()) if self.numel is None else int(self.numel)


def prune_sharded(shards: Sequence[Shard] | Mapping[str, Any], sparsity: float, *, scope: str = "global",
                  method: str = "l1", order: Sequence[str] | None = None, group: Any = None,
                  backend: str | None = None, inplace: bool = True,
                  max_layer_sparsity: float | None = None) -> dict[str, Mask]:
    """Prune this rank's parameter pieces so that, over the whole group, the result is the
    single-process one (see the module docstring); return this rank's keep-masks by name.

    ``shards`` is a list of :class:`Shard`, or a mapping name -> tensor held by this rank: a whole
    parameter, or a ``DTensor`` (its local piece, see :func:`from_dtensor`; so
    ``dict(model.named_parameters())`` of an FSDP2 model works as it is). Every
    rank of ``group`` must call it with the same ``sparsity``, ``scope``, ``method`` and
    ``order``; ``inplace=False`` computes the masks without writing the tensors.
    ``max_layer_sparsity`` (global scope): no parameter loses more than this fraction; default 0.99,
    as every other front end (:func:`pruneplug.layer_ratios.resolve_max_layer_sparsity`), with the
    total still exact (water-filling, :func:`pruneplug.layer_ratios.capped_counts`: one more
    selection round per round in which a parameter is over its cap).

    Example (each of 4 ranks holds whole layers of the model)::

        import torch.distributed as dist, pruneplug.torch.distributed as ppd
        mine = {n: p for i, (n, p) in enumerate(model.named_parameters()) if i % 4 == dist.get_rank()}
        masks = ppd.prune_sharded(mine, 0.5, order=[n for n, _ in model.named_parameters()])
    """
    import torch
    import torch.distributed as dist

    transform = METHODS[_check_method(method)][0]
    count_to_prune(sparsity, 0)  # validates the sparsity
    if scope not in ("global", "layer"):
        raise InvalidArgumentError(f"scope={scope!r}: expected 'global' or 'layer'")
    cap = resolve_max_layer_sparsity(max_layer_sparsity, scope, sparsity)
    pieces = _as_shards(shards)
    sizes, dtypes, whole = _gather_sizes(pieces, group, dist)
    order = _check_order(order, sizes)
    _check_coverage(pieces, sizes, group, dist)
    if scope == "global":
        counts = _capped_global_counts(pieces, sizes, dtypes, whole, order, sparsity, cap, transform, group, dist)
    else:
        wanted = {n: count_to_prune(sparsity, sizes[n]) for n in order}
        counts = _layer_counts(pieces, sizes, dtypes, whole, wanted, transform, group, dist)
    masks = {}
    for piece, k in zip(pieces, counts):
        result = api.prune(piece.tensor.detach(), count=k, method=method, backend=backend,
                           inplace=inplace, return_mask=True)
        if inplace:  # written through NumPy/DLPack, unseen by autograd: bump the version as prune_model does
            torch.autograd.graph.increment_version(piece.tensor)
        masks[piece.name] = result[1]
    return masks


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise InvalidArgumentError(f"method={method!r} is not supported; expected 'l1' or 'l2'")
    return method



def from_dtensor(name: str, tensor: Any) -> Shard | None:
    """This rank's :class:`Shard` of a ``DTensor`` on a 1-D device mesh (what FSDP2's
    ``fully_shard`` makes of every parameter): ``Shard(0)`` placement gives the local rows
    (``torch.chunk`` split: ``ceil(rows / world)`` rows per rank), ``Replicate`` gives the whole
    parameter on the mesh's first rank and ``None`` elsewhere. Other placements are an error.

    Example::

        pieces = [p for n, t in model.named_parameters() if (p := from_dtensor(n, t)) is not None]
    """
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor import Shard as DimShard

    mesh = tensor.device_mesh
    placement = tensor.placements[0] if len(tensor.placements) == 1 else None
    local = tensor.to_local()
    if mesh.ndim == 1 and isinstance(placement, Replicate):
        return Shard(name, local) if mesh.get_local_rank() == 0 else None
    if mesh.ndim == 1 and isinstance(placement, DimShard) and placement.dim == 0 and tensor.ndim >= 1:
        rows, world, rank = int(tensor.shape[0]), mesh.size(), mesh.get_local_rank()
        per = -(-rows // world)
        start = min(rank * per, rows)
        if int(local.shape[0]) == max(0, min(per, rows - start)):
            inner = int(tensor.numel()) // rows if rows else 0
            return Shard(name, local, offset=start * inner, numel=int(tensor.numel()))
    raise InvalidArgumentError(
        f"DTensor {name!r}: placements {tuple(tensor.placements)} on a {mesh.ndim}-D mesh are not supported; "
        "expected Shard(0) (torch.chunk rows) or Replicate on a 1-D mesh")


def _is_dtensor(tensor: Any) -> bool:
    return type(tensor).__name__ == "DTensor" and type(tensor).__module__.startswith("torch.distributed")


def _as_shards(shards: Sequence[Shard] | Mapping[str, Any]) -> list[Shard]:
    if isinstance(shards, Mapping):
        pieces = [from_dtensor(n, t) if _is_dtensor(t) else Shard(n, t) for n, t in shards.items()]
        pieces = [p for p in pieces if p is not None]
    else:
        pieces = list(shards)
    seen = set()
    for piece in pieces:
        if not isinstance(piece, Shard):
            raise InvalidArgumentError(f"shards: expected Shard objects or a mapping name -> tensor, got {type(piece).__name__}")
        if piece.name in seen:
            raise InvalidArgumentError(f"shards: parameter {piece.name!r} appears twice on this rank (one piece per parameter)")
        seen.add(piece.name)
        check_float_dtype(adapt(piece.tensor.detach(), f"shards[{piece.name!r}]").array, f"shards[{piece.name!r}]")
        if piece.offset < 0 or piece.offset + piece.tensor.numel() > piece.full_numel:
            raise InvalidArgumentError(
                f"shards[{piece.name!r}]: elements {piece.offset}..{piece.offset + piece.tensor.numel()} "
                f"lie outside the parameter's {piece.full_numel}")
    return pieces


def _gather_sizes(pieces: list[Shard], group: Any, dist: Any) -> tuple[dict[str, int], dict[str, str], set[str]]:
    """Every parameter's full size and dtype, and which parameters some rank holds whole, from all
    ranks (one all_gather_object)."""
    mine = [(p.name, p.full_numel, dtype_name(adapt(p.tensor.detach(), p.name).array), int(p.tensor.numel()))
            for p in pieces]
    everyone: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(everyone, mine, group=group)
    sizes: dict[str, int] = {}
    dtypes: dict[str, str] = {}
    whole: set[str] = set()
    for rank_pieces in everyone:
        for name, numel, dtype, held in rank_pieces:
            if held == numel:
                whole.add(name)
            if sizes.setdefault(name, numel) != numel or dtypes.setdefault(name, dtype) != dtype:
                raise InvalidArgumentError(
                    f"parameter {name!r}: ranks disagree on its size or dtype ({sizes[name]} {dtypes[name]} "
                    f"against {numel} {dtype})")
    return sizes, dtypes, whole


def _check_order(order: Sequence[str] | None, sizes: dict[str, int]) -> list[str]:
    if order is None:
        return sorted(sizes)
    order = list(order)
    if sorted(order) != sorted(sizes):
        missing = sorted(set(sizes) - set(order))[:3]
        extra = sorted(set(order) - set(sizes))[:3]
        raise InvalidArgumentError(
            f"order must name every sharded parameter once; missing {missing}, unknown {extra}")
    return order


def _check_coverage(pieces: list[Shard], sizes: dict[str, int], group: Any, dist: Any) -> None:
    """The pieces of all ranks must hold every element once: their sizes add up to the total."""
    import torch

    held = torch.tensor([sum(int(p.tensor.numel()) for p in pieces)], dtype=torch.int64, device=_device(group, dist))
    dist.all_reduce(held, group=group)
    total = sum(sizes.values())
    if int(held.item()) != total:
        raise InvalidArgumentError(
            f"the ranks' pieces hold {int(held.item())} elements but the parameters have {total}: "
            "a piece is missing or held twice")


def _device(group: Any, dist: Any) -> Any:
    import torch

    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce(hist: np.ndarray, group: Any, dist: Any, op: Any = None) -> np.ndarray:
    import torch

    tensor = torch.from_numpy(hist).to(_device(group, dist))
    dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM, group=group)
    return tensor.cpu().numpy()


def _keys(piece: Shard, transform: str, wide: bool) -> tuple[Any, int]:
    return partselect.score_keys(adapt(piece.tensor.detach(), piece.name).array, transform, wide=wide)


def _positions(base: int):
    def positions(where: Any) -> Any:
        xp = array_module(where)
        return xp.nonzero(where)[0].astype(np.int64) + base
    return positions


def _capped_global_counts(pieces: list[Shard], sizes: dict[str, int], dtypes: dict[str, str], whole: set[str],
                          order: list[str], sparsity: float, cap: float, transform: str, group: Any,
                          dist: Any) -> list[int]:
    """Global scope with every parameter capped at ``cap``: water-filling over the exact global
    selection (each round's per-parameter totals all-reduced, so every rank takes the same
    decisions); a parameter fixed at its cap is then pruned to that count alone, whose stable order
    is the global order restricted to it."""
    caps = layer_caps([sizes[n] for n in order], cap)
    last: dict[int, int] = {}  # piece index -> its count in the latest selection round
    active_names: list[str] = []  # that round's parameters (the same on every rank)

    def select(active: Sequence[int], k: int) -> list[int]:
        names = [order[t] for t in active]
        chosen = [i for i, p in enumerate(pieces) if p.name in set(names)]
        counts = [0] * len(chosen) if k == 0 else _global_counts(
            [pieces[i] for i in chosen], {n: sizes[n] for n in names}, {n: dtypes[n] for n in names}, names, k,
            transform, group, dist)
        last.clear()
        last.update(zip(chosen, counts))
        active_names[:] = names
        totals = np.zeros(len(names), dtype=np.int64)
        position = {n: j for j, n in enumerate(names)}
        for i, c in zip(chosen, counts):
            totals[position[pieces[i].name]] += c
        return [int(c) for c in _all_reduce(totals, group, dist)]

    per_name = dict(zip(order, capped_counts(count_to_prune(sparsity, sum(sizes.values())), caps, select)))
    at_cap = [n for n in order if n not in set(active_names)]
    held = iter(_layer_counts([p for p in pieces if p.name in set(at_cap)], sizes, dtypes, whole,
                              {n: per_name[n] for n in at_cap}, transform, group, dist))
    return [last[i] if i in last else next(held) for i in range(len(pieces))]


def _global_counts(pieces: list[Shard], sizes: dict[str, int], dtypes: dict[str, str], order: list[str],
                   k: int, transform: str, group: Any, dist: Any) -> list[int]:
    """Global scope: :func:`pruneplug.partselect.exact_cut` with histograms all-reduced. A rank
    whose weights are not finite reports how many in an extra slot instead of raising alone (the
    others would wait in the collective); then every rank raises the same error."""
    bases = dict(zip(order, np.cumsum([0] + [sizes[n] for n in order[:-1]]).tolist()))
    total = sum(sizes.values())
    arrays = [adapt(p.tensor.detach(), p.name).array for p in pieces]

    def keys(request: Any) -> np.ndarray:
        hist = np.zeros(request.bins + 1, dtype=np.int64)
        for array in arrays:
            try:
                hist[:-1] += chunk_histogram(partselect.host_if_needed(array, None), transform, request)
            except NonFiniteError as exc:
                hist[-1] += exc.count
        merged = _all_reduce(hist, group, dist)
        if merged[-1]:
            raise _invalid_error(pieces, bases, order, transform, int(merged[-1]), group, dist)
        return merged[:-1]

    def ties(request: partselect.Request, threshold: float) -> np.ndarray:
        hist = np.zeros(partselect.BINS + 1, dtype=np.int64)
        for piece, array in zip(pieces, arrays):
            tied = partselect.tied_mask(array, transform, threshold)
            hist += partselect.position_histogram(_positions(bases[piece.name] + piece.offset)(tied), request)
        return _all_reduce(hist, group, dist)

    cut = partselect.exact_cut(k, total, sorted(set(dtypes.values())), transform,
                               keys, ties)
    return [cut.pruned_count(a, transform, _positions(bases[p.name] + p.offset)) for p, a in zip(pieces, arrays)]


def _invalid_error(pieces: list[Shard], bases: dict[str, int], order: list[str], transform: str, count: int,
                   group: Any, dist: Any) -> NonFiniteError:
    """The same error on every rank: the parameter and flat index of the first invalid weight."""
    first = np.array([np.iinfo(np.int64).max], dtype=np.int64)
    for piece in pieces:
        array = adapt(piece.tensor.detach(), piece.name).array.reshape(-1)
        xp = array_module(array)
        bad = ~xp.isfinite(array.astype(np.float64))
        if bool(bad.any()):
            first[0] = min(int(first[0]), bases[piece.name] + piece.offset + int(xp.nonzero(bad)[0][0]))
    position = int(_all_reduce(first, group, dist, dist.ReduceOp.MIN)[0])
    name = next(n for n in reversed(order) if bases[n] <= position)
    base = NonFiniteError.for_values(transform, count, position - bases[name])
    return NonFiniteError(f"tensor {name!r}: {base}", count=count, first_index=position - bases[name])


def _layer_counts(pieces: list[Shard], sizes: dict[str, int], dtypes: dict[str, str], whole: set[str],
                  wanted: dict[str, int], transform: str, group: Any, dist: Any) -> list[int]:
    """Each parameter's exact count ``wanted[name]`` (the same mapping on every rank); parameters
    held whole by one rank need no collective, the sharded ones run their selections in lockstep
    (one all_reduce per pass for all of them)."""
    sharded = [n for n in wanted if n not in whole]
    counts = {p.name: wanted[p.name] for p in pieces if p.name not in sharded}
    mine = {p.name: p for p in pieces}
    selections = {n: partselect.Selection(wanted[n], sizes[n],
                                          _key_width(dtypes[n]), LAYER_DIGIT_BITS) for n in sharded}
    bins = 1 << LAYER_DIGIT_BITS
    while True:
        active = [n for n in sharded if selections[n].request is not None]
        if not active:
            break
        stacked = np.zeros((len(active), bins + 1), dtype=np.int64)
        for row, name in enumerate(active):
            if name in mine:
                keys, invalid = _keys(mine[name], transform, wide=False)
                stacked[row] = partselect.histogram(keys, selections[name].request, _positions(mine[name].offset),
                                                    invalid, bins)
        merged = _all_reduce(stacked, group, dist)
        for row, name in enumerate(active):
            selections[name].update(merged[row])
            if selections[name].passes == 1 and selections[name].invalid:
                raise NonFiniteError(
                    f"tensor {name!r}: weights contain {selections[name].invalid} non-finite value(s) (NaN or Inf)",
                    count=selections[name].invalid, first_index=-1)
    for name in sharded:
        if name in mine:
            counts[name] = selections[name].cut.pruned_count(_keys(mine[name], transform, False)[0],
                                                             _positions(mine[name].offset))
    return [counts[p.name] for p in pieces]


def _key_width(dtype: str) -> int:
    return 64 if dtype.endswith("float64") else 32

"""Routed MoE experts: where they live in a block, how the forward routes tokens to them, the
statistics expert criteria read, and the cuts that removing experts makes.

An MoE block (Mixtral's ``block_sparse_moe`` under transformers 4, ``mlp`` under 5; Qwen2-MoE's
and Qwen3-MoE's ``mlp``) holds a router ``gate`` (weight ``[E, hidden]``, one row per expert) and
the routed ``experts``, in one of two layouts:

* unfused: a ``ModuleList`` of per-expert MLPs (transformers 4: Mixtral ``w1``/``w3``/``w2``,
  Qwen ``gate_proj``/``up_proj``/``down_proj``; the stream's skeleton under transformers 5 takes
  fused experts apart into this layout too, :mod:`pruneplug.stream.experts`);
* fused (transformers 5 in memory): 3-D parameters ``gate_up_proj [E, 2I, H]`` (each expert's gate
  rows, then its up rows) and ``down_proj [E, H, I]``.

Removing experts keeps the router rows of the kept ones (the softmax then runs over the kept
experts only, which is the original routing with the removed experts' logits at -inf) and their
weights, renumbered ``0 .. kept-1`` in their original order. Shared experts (Qwen2-MoE's
``shared_expert`` and ``shared_expert_gate``) are not routed and stay.

Routing is modelled per MoE block class (:data:`ROUTING`): softmax of the router logits (float32),
top-k, then renormalised over the top-k where the model does (Mixtral always; Qwen by the config's
``norm_topk_prob``). A block class not in the table is refused rather than scored by a guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from pruneplug.errors import InvalidArgumentError
from pruneplug.stream.experts import is_fused_experts
from pruneplug.structured.criteria.base import ExpertStats, ExpertWeights

#: MoE block class -> the config switch that renormalises the top-k weights (None: always).
ROUTING = {"MixtralSparseMoeBlock": None, "Qwen2MoeSparseMoeBlock": "norm_topk_prob",
           "Qwen3MoeSparseMoeBlock": "norm_topk_prob"}
#: (gate, up, down) names of an unfused expert's projections.
_PROJECTIONS = (("gate_proj", "up_proj", "down_proj"), ("w1", "w3", "w2"))
#: The config key holding the number of routed experts, in the order they are looked for.
EXPERT_COUNT_KEYS = ("num_local_experts", "num_experts")
_EXPERT_NAME = re.compile(r"(^|\.)experts\.(\d+)\.")


@dataclass(frozen=True)
class MoeLayout:
    """The MoE module of one block (names relative to the block): ``moe`` (the module whose input
    is routed), ``router`` (its gate), ``experts`` (the routed experts), ``fused`` (3-D
    parameters) or the per-expert ``projections`` (gate, up, down), the expert count, ``top_k``
    and whether the top-k weights are renormalised."""

    moe: str
    router: str
    experts: str
    fused: bool
    projections: tuple[str, str, str] | None
    num_experts: int
    top_k: int
    normalize: bool


def _unfused_projections(experts: Any) -> tuple[str, str, str] | None:
    if not isinstance(experts, torch.nn.ModuleList) or len(experts) == 0:
        return None
    names = dict(experts[0].named_children())
    return next((p for p in _PROJECTIONS if all(n in names for n in p)), None)


def _numbered_children(experts: Any) -> int:
    """Experts in a ModuleList (the skeleton's unfused list also holds its ``act_fn``)."""
    return sum(1 for name, _ in experts.named_children() if name.isdigit())


def moe_layout(block: Any, config: Any) -> MoeLayout | None:
    """The MoE module of ``block`` (None when it has none: a dense block). Raises for an MoE block
    whose routing or experts this version does not model."""
    for name, module in block.named_modules():
        router, experts = getattr(module, "gate", None), getattr(module, "experts", None)
        if router is None or experts is None or not isinstance(getattr(router, "weight", None), torch.Tensor):
            continue
        kind = type(module).__name__
        if kind not in ROUTING:
            raise InvalidArgumentError(f"experts: {name} ({kind}) routes tokens in a way this version does not "
                                       f"model (known MoE blocks: {', '.join(sorted(ROUTING))})")
        fused = is_fused_experts(experts)
        if fused and (getattr(experts, "is_transposed", False) or not getattr(experts, "is_concatenated", True)):
            raise InvalidArgumentError(f"experts: {name}.experts stores its fused weights transposed or "
                                       "interleaved; only [E, 2I, H] gate-then-up is supported")
        projections = None if fused else _unfused_projections(experts)
        if not fused and projections is None:
            raise InvalidArgumentError(f"experts: {name}.experts ({type(experts).__name__}) has neither fused "
                                       "gate_up_proj/down_proj nor per-expert gate/up/down projections")
        count = int(experts.gate_up_proj.shape[0]) if fused else _numbered_children(experts)
        if int(router.weight.shape[0]) != count:
            raise InvalidArgumentError(f"experts: {name}.gate has {router.weight.shape[0]} rows for {count} experts")
        rule = ROUTING[kind]
        normalize = True if rule is None else bool(getattr(config, rule, False))
        prefix = f"{name}." if name else ""
        return MoeLayout(name, f"{prefix}gate", f"{prefix}experts", fused, projections, count,
                         int(config.num_experts_per_tok), normalize)
    return None


def moe_layouts(blocks: Sequence[Any], config: Any) -> dict[int, MoeLayout]:
    """Block index -> its MoE layout, for the blocks that have one."""
    found = {i: moe_layout(block, config) for i, block in enumerate(blocks)}
    return {i: layout for i, layout in found.items() if layout is not None}


def expert_count_key(config: Any) -> str:
    """The config attribute that holds the number of routed experts."""
    for key in EXPERT_COUNT_KEYS:
        if isinstance(getattr(config, key, None), int):
            return key
    raise InvalidArgumentError(f"experts: {type(config).__name__} has none of {', '.join(EXPERT_COUNT_KEYS)}; "
                               "no config key could describe fewer experts")


def route(x: torch.Tensor, router_weight: torch.Tensor, layout: MoeLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward's routing of tokens ``x`` [N, hidden]: (weights [N, top_k], expert indices [N, top_k]).
    Logits in x's dtype, softmax in float32 as transformers does."""
    logits = torch.nn.functional.linear(x, router_weight.to(x.dtype))
    probs = torch.softmax(logits.float(), dim=-1)
    weights, indices = torch.topk(probs, layout.top_k, dim=-1)
    if layout.normalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, indices


def expert_matrices(block: Any, layout: MoeLayout, j: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
    """Expert ``j``'s (gate [I, H], up [I, H], down [H, I], activation), for either layout."""
    experts = block.get_submodule(layout.experts)
    if layout.fused:
        gate_up = experts.gate_up_proj[j]
        inner = gate_up.shape[0] // 2
        return gate_up[:inner], gate_up[inner:], experts.down_proj[j], experts.act_fn
    expert = experts[j]
    gate, up, down = (getattr(expert, p).weight for p in layout.projections)
    return gate, up, down, getattr(expert, "act_fn", None) or experts.act_fn


def expert_output(block: Any, layout: MoeLayout, j: int, x: torch.Tensor) -> torch.Tensor:
    """f_j(x) = down(act(gate x) * up x), before the routing weight."""
    gate, up, down, act = expert_matrices(block, layout, j)
    f = torch.nn.functional.linear
    return f(act(f(x, gate.to(x.dtype))) * f(x, up.to(x.dtype)), down.to(x.dtype))


class ExpertAccumulator:
    """Per-expert sums over the calibration tokens entering one MoE block (see :class:`ExpertStats`).
    ``add`` is called from a forward pre-hook on the MoE module, with the batch's token mask."""

    def __init__(self, block: Any, layout: MoeLayout) -> None:
        self.block, self.layout = block, layout
        n = layout.num_experts
        self.tokens = np.zeros(n, dtype=np.int64)
        self.gate_sum = np.zeros(n)
        self.reap_sum = np.zeros(n)
        self.total = 0

    def add(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> None:
        if mask is not None and hidden.dim() == 3 and tuple(hidden.shape[:2]) == tuple(mask.shape):
            hidden = hidden[mask.to(hidden.device)]
        x = hidden.reshape(-1, hidden.shape[-1])
        router = self.block.get_submodule(self.layout.router).weight
        weights, indices = route(x, router, self.layout)
        self.total += int(x.shape[0])
        for j in range(self.layout.num_experts):
            token, slot = torch.where(indices == j)
            if token.numel() == 0:
                continue
            gate = weights[token, slot].to(torch.float64)
            norm = expert_output(self.block, self.layout, j, x[token]).to(torch.float64).norm(dim=-1)
            self.tokens[j] += int(token.numel())
            self.gate_sum[j] += float(gate.sum())
            self.reap_sum[j] += float((gate * norm).sum())

    def stats(self) -> ExpertStats:
        return ExpertStats(self.tokens.copy(), self.gate_sum.copy(), self.reap_sum.copy(), self.total)


def expert_weights(block: Any, layout: MoeLayout) -> ExpertWeights:
    """What an expert criterion reads: the router rows and, on request, one expert's matrices."""
    def load(j: int) -> dict[str, np.ndarray]:
        gate, up, down, _ = expert_matrices(block, layout, j)
        return {k: v.detach().float().cpu().numpy() for k, v in (("gate", gate), ("up", up), ("down", down))}

    router = block.get_submodule(layout.router).weight.detach().float().cpu().numpy()
    return ExpertWeights(router=router, count=layout.num_experts, load_expert=load)


def expert_removal_count(fraction: float, layout: MoeLayout) -> int:
    """Experts removed from every MoE block; refuses a fraction leaving fewer than top_k."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise InvalidArgumentError(f"experts={fraction!r}: expected a fraction in [0, 1)")
    count = round(fraction * layout.num_experts)
    left = layout.num_experts - count
    if left < layout.top_k:
        raise InvalidArgumentError(f"experts={fraction!r} leaves {left} of the {layout.num_experts} experts of each "
                                   f"MoE block, fewer than the {layout.top_k} every token is routed to "
                                   f"(num_experts_per_tok={layout.top_k}); remove at most "
                                   f"{layout.num_experts - layout.top_k}")
    return count


def expert_cuts(layout: MoeLayout, keep: np.ndarray) -> dict[str, tuple[int, np.ndarray]]:
    """The axis cuts keeping experts ``keep`` makes: the router's rows and, fused, the 3-D
    parameters' first axis. (Unfused experts are whole tensors: :func:`renumber_expert`.)"""
    cuts = {f"{layout.router}.weight": (0, keep), f"{layout.router}.bias": (0, keep)}
    if layout.fused:
        cuts[f"{layout.experts}.gate_up_proj"] = (0, keep)
        cuts[f"{layout.experts}.down_proj"] = (0, keep)
    return cuts


def renumber_expert(name: str, keep: np.ndarray) -> str | None:
    """The new name of a per-expert tensor (module or checkpoint name with an ``experts.<j>.``
    component) once only ``keep`` (sorted) stay: None when expert j goes, its new index otherwise;
    any other name is returned unchanged."""
    match = _EXPERT_NAME.search(name)
    if match is None:
        return name
    old = int(match.group(2))
    position = np.searchsorted(keep, old)
    if position >= len(keep) or keep[position] != old:
        return None
    return f"{name[:match.start()]}{match.group(1)}experts.{int(position)}.{name[match.end():]}"


def update_expert_attributes(block: Any, layout: MoeLayout, kept: int) -> None:
    """Module attributes the forward reads instead of the config (the expert count of the MoE
    block, its router and fused experts module: one_hot's ``num_classes``)."""
    moe = block.get_submodule(layout.moe) if layout.moe else block
    for module in moe.modules():
        for attr in EXPERT_COUNT_KEYS:
            if getattr(module, attr, None) == layout.num_experts and isinstance(getattr(module, attr), int):
                setattr(module, attr, kept)

"""What leaves one block, and what the kept weights become: the per-block decision that both front
ends (a model in memory, a model directory) take while the block's weights are loaded.

Compensation (optional, never by default):

* ``"bias"`` (FLAP): the mean contribution of the removed channels over the calibration tokens,
  ``W[:, removed] @ mean(x[removed])``, is added to the bias of the layer that read them
  (down_proj for neurons, o_proj for heads and KV groups: a group's removed channels are those of
  its query heads). Llama-style down_proj/o_proj have no bias: the config's ``mlp_bias`` /
  ``attention_bias`` switch them on (with zero biases for gate/up or q/k/v); an architecture
  without such a switch is refused.
* ``"refit"`` (SlimGPT / ZipLM's structured OBS, as least squares): the kept columns of that layer
  are refitted so that its output on the calibration tokens changes least,
  ``W' = W H[:, K] (H[K, K] + damping * mean(diag H[K, K]) I)^-1`` with ``H = X^T X``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pruneplug.errors import CalibrationRequiredError, InvalidArgumentError
from pruneplug.structured.criteria.base import ExpertStats, UnitCriterion, UnitStats
from pruneplug.structured.experts import MoeLayout, expert_cuts, expert_weights
from pruneplug.structured.units import (AttentionLayout, MlpLayout, head_cuts, head_weights, keep_heads,
                                        keep_kv_groups, keep_lowest_removed, mlp_cuts, neuron_weights)

COMPENSATIONS = ("none", "bias", "refit")


@dataclass
class BlockDecision:
    """The kept neurons, query heads, KV groups and routed experts of one block (None: that unit
    untouched), the cuts they make, the compensated tensors (relative parameter name -> the new,
    already cut, tensor) and, before a dropped run of blocks with ``compensate="refit"``, the map
    folded into its MLP. Per-expert tensors of kept experts are renamed, not cut
    (:func:`~pruneplug.structured.experts.renumber_expert`)."""

    keep_neurons: np.ndarray | None = None
    keep_heads: np.ndarray | None = None
    cuts: dict[str, tuple[int, np.ndarray]] = field(default_factory=dict)
    replaced: dict[str, torch.Tensor] = field(default_factory=dict)
    # the block before a dropped run: the [hidden, hidden] map folded into its down projection
    # (pruneplug.structured.depth_refit)
    fold: torch.Tensor | None = None
    keep_experts: np.ndarray | None = None
    moe: MoeLayout | None = None  # the MoE layout the experts were removed from
    keep_kv_heads: np.ndarray | None = None


def decide_block(block: Any, criterion: UnitCriterion | None, *, mlp: MlpLayout | None, mlp_count: int,
                 attention: AttentionLayout | None, head_count: int, neuron_stats: UnitStats | None,
                 head_stats: UnitStats | None, compensate: str = "none", damping: float = 0.01,
                 neuron_hessian: torch.Tensor | None = None, head_hessian: torch.Tensor | None = None,
                 moe: MoeLayout | None = None, expert_count: int = 0, expert_criterion: UnitCriterion | None = None,
                 expert_stats: ExpertStats | None = None, kv_count: int = 0) -> BlockDecision:
    """The decision for one block whose weights are loaded (see the module docstring). Heads:
    ``kv_count`` whole KV groups go first (lowest group scores: the sum of their query heads'),
    then ``head_count`` query heads from each remaining group."""
    decision = BlockDecision()
    if moe is not None and expert_count:
        scores = np.asarray(expert_criterion.expert_scores(expert_weights(block, moe), expert_stats), dtype=np.float64)
        if scores.shape != (moe.num_experts,):
            raise InvalidArgumentError(f"method={expert_criterion.name!r} returned {scores.shape} expert scores, "
                                       f"expected ({moe.num_experts},)")
        decision.keep_experts, decision.moe = keep_lowest_removed(scores, expert_count), moe
        decision.cuts.update(expert_cuts(moe, decision.keep_experts))
    modules = dict(block.named_modules())
    if mlp is not None and mlp_count:
        scores = np.asarray(criterion.neuron_scores(neuron_weights(block, mlp), neuron_stats), dtype=np.float64)
        keep = keep_lowest_removed(scores, mlp_count)
        decision.keep_neurons = keep
        decision.cuts.update(mlp_cuts(mlp, keep))
        decision.replaced.update(_compensate(modules[mlp.down], mlp.down, keep, 1, mlp.width, mlp.conv1d,
                                             neuron_stats, neuron_hessian, compensate, damping))
    if attention is not None and (head_count or kv_count):
        scores = np.asarray(criterion.head_scores(head_weights(block, attention), head_stats, attention.head_dim),
                            dtype=np.float64)
        groups = keep_kv_groups(scores, attention, kv_count) if kv_count else None
        keep = keep_heads(scores, attention, head_count, groups)
        decision.keep_heads = keep
        decision.keep_kv_heads = groups
        decision.cuts.update(head_cuts(attention, keep, groups))
        decision.replaced.update(_compensate(modules[attention.out], attention.out, keep, attention.head_dim,
                                             attention.heads * attention.head_dim, False, head_stats, head_hessian,
                                             compensate, damping))
    return decision


def _features(keep_units: np.ndarray, size: int) -> np.ndarray:
    return (keep_units[:, None] * size + np.arange(size)[None, :]).reshape(-1)


def _compensate(module: Any, name: str, keep_units: np.ndarray, size: int, features: int, conv1d: bool,
                stats: UnitStats | None, hessian: torch.Tensor | None, how: str,
                damping: float) -> dict[str, torch.Tensor]:
    """The new weight and/or bias of ``module`` (the layer reading the units), cut to the kept
    features, after compensation ``how``."""
    if how == "none":
        return {}
    keep = _features(keep_units, size)
    removed = np.setdiff1d(np.arange(features), keep)
    w = module.weight.detach()
    w = (w.t() if conv1d else w).to(torch.float64)  # [out, in]
    if how == "bias":
        if stats is None:
            raise CalibrationRequiredError("compensate=bias", "it needs the mean of the removed channels")
        mean = torch.from_numpy(stats.mean[removed]).to(w.device)
        delta = w[:, torch.from_numpy(removed).to(w.device)] @ mean
        old = module.bias.detach().to(torch.float64) if getattr(module, "bias", None) is not None else 0.0
        return {f"{name}.bias": (old + delta).to(module.weight.dtype)}
    if hessian is None:
        raise CalibrationRequiredError("compensate=refit", "it needs X^T X of the layer's input")
    k = torch.from_numpy(keep).to(w.device)
    h_kk = hessian[k][:, k]
    damp = damping * float(torch.diagonal(h_kk).mean()) + 1e-12
    h_kk = h_kk + damp * torch.eye(len(keep), dtype=h_kk.dtype, device=h_kk.device)
    rhs = w @ hessian[:, k]  # [out, kept]
    refit = torch.linalg.solve(h_kk, rhs.t()).t()  # H_KK symmetric: (H_KK^-1 rhs^T)^T = rhs H_KK^-1
    refit = refit.t() if conv1d else refit
    return {f"{name}.weight": refit.to(module.weight.dtype).contiguous()}


def check_compensate(compensate: str, damping: float) -> None:
    if compensate not in COMPENSATIONS:
        raise InvalidArgumentError(f"compensate={compensate!r}: expected one of {', '.join(COMPENSATIONS)}")
    if isinstance(damping, bool) or not isinstance(damping, (int, float)) or not damping > 0:
        raise InvalidArgumentError(f"damping={damping!r}: expected a number > 0")

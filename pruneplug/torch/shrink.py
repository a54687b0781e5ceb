"""Structured pruning of a model in memory: :func:`shrink_model` removes MLP neurons, attention
heads (or whole KV groups), routed MoE experts and whole blocks, replacing Linear modules by
smaller ones (and cutting transformers 5's fused expert parameters) and updating ``model.config``
(the decisions: :mod:`pruneplug.structured`)."""

from __future__ import annotations

import time
from typing import Any, Iterable

import torch

from pruneplug.errors import InvalidArgumentError
from pruneplug.reconstruction.block import ReconstructSettings
from pruneplug.structured.decide import BlockDecision
from pruneplug.structured.experts import update_expert_attributes
from pruneplug.structured.plan import (Plan, ShrinkRequest, config_changes, decide, find_block_list,
                                       make_plan, new_tensors, renumbering, shrink_report)
from pruneplug.structured.reconstruct import check_reconstruct, shrink_and_reconstruct
from pruneplug.structured.report import ShrinkReport


def count_parameters(model: Any) -> int:
    """Parameters of ``model``, each shared (tied) tensor once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def shrink_model(model: Any, *, mlp: float = 0.0, heads: float = 0.0, kv_heads: float = 0.0, drop_blocks: int = 0,
                 experts: float | None = None, method: str = "activation", block_method: str = "block_influence",
                 expert_method: str = "reap", calibration: Iterable[Any] | None = None, compensate: str = "none",
                 damping: float = 0.01, keep_ends: bool = True,
                 reconstruct: ReconstructSettings | None = None) -> ShrinkReport:
    """Make ``model`` (a Hugging Face transformers model, in place) smaller: remove the fraction
    ``mlp`` of every block's MLP neurons, ``heads`` of the query heads of every KV group (of all
    heads for multi-head attention), ``kv_heads`` of the KV groups of every block (GQA: a group
    goes with its k/v rows and all its query heads; ``heads`` then applies to the groups that
    stay), ``experts`` of every MoE block's routed experts (Mixtral, Qwen2-MoE, Qwen3-MoE; shared
    experts stay), and ``drop_blocks`` whole blocks (never the first or last with ``keep_ends``).
    Neurons and heads are scored by the unit criterion ``method`` (a KV group by the sum of its
    query heads' scores), experts by ``expert_method`` (default ``"reap"``), blocks by
    ``block_method`` (:mod:`pruneplug.structured.criteria`); calibrated ones need ``calibration``
    (batches, as for ``prune_model``). ``compensate``: ``"none"``, ``"bias"`` or ``"refit"``
    (:mod:`pruneplug.structured.decide`). ``reconstruct``: a :class:`pruneplug.ReconstructSettings`
    with ``steps > 0`` re-fits each shrunk block's Linear weights to the dense block's outputs, block
    by block in forward order (:mod:`pruneplug.structured.reconstruct`; needs ``calibration``);
    ``report.reconstruction_losses``: each block's losses. Every check runs before the first
    change: a failed call leaves the model as it was.

    Example::

        report = pp.torch.shrink_model(model, mlp=0.25, drop_blocks=2, calibration=batches)
        model.config.intermediate_size, model.config.num_hidden_layers   # the smaller widths and depth
        report = pp.torch.shrink_model(mixtral, experts=0.25, calibration=batches)   # REAP
        report.experts_removed   # {block: [expert indices]}; config.num_local_experts updated
        pp.torch.shrink_model(model, kv_heads=0.5, method="magnitude")   # half the KV groups
        print(report.summary())
        report = pp.torch.shrink_model(model, mlp=0.25, calibration=batches,
                                       reconstruct=pp.ReconstructSettings(steps=20, lr=5e-4))
        report.reconstruction_losses[1]   # {'before': ..., 'after': ..., 'held_out_before': ..., ...}
    """
    start = time.perf_counter()
    request = ShrinkRequest(mlp=mlp, heads=heads, kv_heads=kv_heads, drop_blocks=drop_blocks, experts=experts,
                            method=method, block_method=block_method, expert_method=expert_method,
                            compensate=compensate, damping=damping, keep_ends=keep_ends)
    container, blocks = find_block_list(model)
    config = getattr(model, "config", None)
    if config is None:
        raise InvalidArgumentError(f"model: a {type(model).__name__} without a config; shrink_model edits a "
                                   "Hugging Face model and its config")
    plan = make_plan(request, list(blocks), config)
    meta = next((n for n, p in model.named_parameters() if p.device.type == "meta"), None)
    if meta is not None:
        raise InvalidArgumentError(f"model: parameter {meta!r} is on the meta device (no weights to shrink)")
    batches = list(calibration) if calibration is not None else None
    refit = check_reconstruct(reconstruct, plan, batches is not None)
    before = count_parameters(model)
    was_training = model.training
    model.eval()
    losses: dict[int, dict] = {}
    try:
        if refit:
            decisions, losses = shrink_and_reconstruct(plan, model, list(blocks), batches, reconstruct,
                                                       cut=lambda block, d: apply_to_block(block, d, plan),
                                                       device=next(model.parameters()).device)
        else:
            decisions = decide(plan, model, list(blocks), batches, device=next(model.parameters()).device)
    finally:
        model.train(was_training)
    changes = config_changes(plan, config, decisions.dropped)
    for i, block in enumerate(blocks):
        if i not in decisions.dropped and not refit:  # the re-fitting pass cut them already
            apply_to_block(block, decisions.blocks[i], plan)
    if decisions.dropped:
        _drop_blocks(model, container, decisions.dropped)
    for key, value in changes.items():
        setattr(config, key, value)
    return shrink_report(plan, decisions, params_before=before, params_after=count_parameters(model),
                         config_changes=changes, reconstruct=reconstruct if refit else None, losses=losses,
                         seconds=time.perf_counter() - start)


def apply_to_block(block: Any, decision: BlockDecision, plan: Plan) -> None:
    """Replace the block's changed Linear modules by smaller ones (Conv1D and other modules, such
    as transformers 5's routers and fused experts: their parameters replaced in place), and keep
    only the kept experts of an unfused expert list."""
    tensors = new_tensors(dict(block.named_parameters()), decision, plan)
    by_module: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        module, leaf = name.rsplit(".", 1)
        by_module.setdefault(module, {})[leaf] = tensor
    for module_name, parts in by_module.items():
        old = block.get_submodule(module_name)
        if not isinstance(old, torch.nn.Linear) and type(old).__name__ != "Conv1D":
            # a router holding a weight Parameter, fused 3-D experts: same module, smaller tensors
            for leaf, tensor in parts.items():
                old._parameters[leaf] = torch.nn.Parameter(tensor, requires_grad=old._parameters[leaf].requires_grad)
            continue
        weight = parts.get("weight", old.weight.detach())
        bias = parts.get("bias", old.bias.detach() if getattr(old, "bias", None) is not None else None)
        if isinstance(old, torch.nn.Linear):
            new = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                                  device=weight.device, dtype=weight.dtype)
            with torch.no_grad():
                new.weight.copy_(weight)
                if bias is not None:
                    new.bias.copy_(bias)
            new.train(old.training)
            parent, _, leaf = module_name.rpartition(".")
            setattr(block.get_submodule(parent) if parent else block, leaf, new)
        else:  # transformers' Conv1D: weight [in, out], nf = out
            old.weight = torch.nn.Parameter(weight, requires_grad=old.weight.requires_grad)
            if bias is not None:
                old.bias = torch.nn.Parameter(bias, requires_grad=old.weight.requires_grad)
            old.nf = int(weight.shape[1])
    if decision.keep_experts is not None:
        _keep_experts(block, decision)
    _update_attributes(block, plan)


def _keep_experts(block: Any, decision: BlockDecision) -> None:
    """Per-expert modules (unfused): the kept ones, in order, renumbered by their list position."""
    layout = decision.moe
    experts = block.get_submodule(layout.experts)
    if not layout.fused:
        kept = torch.nn.ModuleList([experts[int(j)] for j in decision.keep_experts])
        parent, _, leaf = layout.experts.rpartition(".")
        setattr(block.get_submodule(parent) if parent else block, leaf, kept)
    update_expert_attributes(block, layout, len(decision.keep_experts))


def _update_attributes(block: Any, plan: Plan) -> None:
    """Module attributes the forward code reads instead of the config (head counts, MLP width)."""
    if plan.attention is not None and plan.removes_heads:
        attention = block.get_submodule(plan.attention.out.rpartition(".")[0])
        heads, kv = plan.kept_head_counts()
        for attr, value in (("num_heads", heads), ("num_attention_heads", heads), ("num_key_value_heads", kv),
                            ("num_key_value_groups", heads // kv)):
            if isinstance(getattr(attention, attr, None), int):
                setattr(attention, attr, value)
    if plan.mlp is not None and plan.mlp_count:
        mlp = block.get_submodule(plan.mlp.down.rpartition(".")[0])
        if isinstance(getattr(mlp, "intermediate_size", None), int):
            mlp.intermediate_size = plan.mlp.width - plan.mlp_count


def _drop_blocks(model: Any, container: str, dropped: list[int]) -> None:
    """Remove the dropped blocks from their ModuleList and renumber the rest (``layer_idx``, which
    the KV cache is indexed by)."""
    old = model.get_submodule(container)
    renumber = renumbering(len(old), dropped)
    kept = torch.nn.ModuleList([old[i] for i in sorted(renumber)])
    for new_index, block in enumerate(kept):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    parent, _, leaf = container.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, kept)

"""A shrink request, checked against a model before anything changes, and the decisions for all
its blocks: shared by :func:`pruneplug.torch.shrink_model` (in memory) and
:func:`pruneplug.structured.shrink_model_dir` (block by block from a model directory).

Widths are uniform: every block loses the same number of neurons, of KV groups and of query heads
per KV group, and every MoE block the same number of routed experts, so the Hugging Face config
(one ``intermediate_size``, one ``num_attention_heads``, one ``num_key_value_heads``, one
``num_local_experts`` / ``num_experts``) describes the result. (Non-uniform widths need per-layer
sizes that only a few configs can carry, such as OpenELM's or DeciLM's ``block_configs``; this
version does not make them.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from pruneplug.errors import CalibrationRequiredError, InvalidArgumentError
from pruneplug.structured.criteria import BlockChoice, UnitCriterion, get_unit_criterion
from pruneplug.structured.criteria.block_influence import BlockInfluence
from pruneplug.structured.decide import BlockDecision, check_compensate, decide_block
from pruneplug.structured.depth_refit import fold_bias, fold_into, measure_folds, runs
from pruneplug.structured.experts import MoeLayout, expert_count_key, expert_removal_count, moe_layouts
from pruneplug.structured.measure import BlockMeasure, Wants, measure_blocks
from pruneplug.structured.report import ShrinkReport
from pruneplug.structured.units import (AttentionLayout, MlpLayout, attention_layout, heads_per_group,
                                        kv_groups_removed, mlp_layout, removal_count)


@dataclass
class ShrinkRequest:
    """What to remove: ``mlp`` (fraction of every block's MLP neurons), ``heads`` (fraction of the
    query heads of every KV group; of all heads for multi-head attention), ``kv_heads`` (fraction
    of the KV groups of every block, GQA only: each with its k/v rows and all its query heads;
    combines with ``heads``, which then applies to the groups that stay), ``drop_blocks`` (whole
    blocks), ``experts`` (fraction of every MoE block's routed experts); ``method`` scores neurons
    and heads (a KV group: the sum of its query heads' scores), ``block_method`` blocks,
    ``expert_method`` experts; ``compensate`` is ``"none"``, ``"bias"`` or ``"refit"``;
    ``keep_ends``: never drop the first and last block.

    Example::

        >>> ShrinkRequest(kv_heads=0.5, heads=0.5).kv_heads
        0.5
    """

    mlp: float = 0.0
    heads: float = 0.0
    drop_blocks: int = 0
    experts: float | None = None
    method: str | UnitCriterion = "activation"
    block_method: str | UnitCriterion = "block_influence"
    expert_method: str | UnitCriterion = "reap"
    compensate: str = "none"
    damping: float = 0.01
    keep_ends: bool = True
    kv_heads: float = 0.0


@dataclass
class Plan:
    """A request checked against a model: its layouts, counts and criteria."""

    request: ShrinkRequest
    n_blocks: int
    mlp: MlpLayout | None
    mlp_count: int
    attention: AttentionLayout | None
    head_count: int  # per KV group (GQA) or overall (multi-head)
    unit_criterion: UnitCriterion | None
    block_criterion: UnitCriterion | None
    config_changes: dict = field(default_factory=dict)
    depth_mlp: MlpLayout | None = None  # where dropped blocks' refit folds (compensate="refit")
    moe: dict[int, MoeLayout] = field(default_factory=dict)  # block index -> layout, when experts go
    expert_count: int = 0  # removed from every MoE block
    expert_criterion: UnitCriterion | None = None
    kv_count: int = 0  # whole KV groups removed from every block (GQA)

    @property
    def needs_calibration(self) -> bool:
        return ((self.unit_criterion is not None and self.unit_criterion.requires_calibration())
                or (self.expert_criterion is not None and self.expert_criterion.requires_calibration())
                or (self.block_criterion is not None and self.request.drop_blocks > 0)
                or self.request.compensate != "none")

    def wants(self) -> Wants:
        return Wants(neuron_input=self.mlp.down if self.mlp is not None and self.mlp_count else None,
                     head_input=self.attention.out if self.attention is not None and self.removes_heads else None,
                     hessian=self.request.compensate == "refit", depth=self.request.drop_blocks,
                     experts=self.moe if self.expert_count and self.expert_criterion.requires_calibration() else {})

    @property
    def removes_heads(self) -> bool:
        """Whether query heads go (on their own or with their KV groups)."""
        return bool(self.head_count or self.kv_count)

    def kept_head_counts(self) -> tuple[int, int]:
        """(query heads, KV heads) that every block keeps."""
        a = self.attention
        if a.kv_heads == a.heads:  # multi-head attention: a head is its own KV group
            return a.heads - self.head_count, a.heads - self.head_count
        kv = a.kv_heads - self.kv_count
        return kv * (a.group - self.head_count), kv

    def allowed_blocks(self) -> list[int]:
        ends = {0, self.n_blocks - 1} if self.request.keep_ends else set()
        return [i for i in range(self.n_blocks) if i not in ends]


def make_plan(request: ShrinkRequest, blocks: Sequence[Any], config: Any) -> Plan:
    """Check ``request`` against the model (its blocks' layouts, on any device, and its config);
    every error a request can cause is raised here, before any work."""
    r = request
    first_block, n_blocks = blocks[0], len(blocks)
    check_compensate(r.compensate, r.damping)
    if isinstance(r.drop_blocks, bool) or not isinstance(r.drop_blocks, int) or r.drop_blocks < 0:
        raise InvalidArgumentError(f"drop_blocks={r.drop_blocks!r}: expected an integer >= 0")
    mlp = attention = None
    mlp_count = head_count = kv_count = 0
    if r.mlp:
        mlp = mlp_layout(first_block, "block 0")
        mlp_count = removal_count(r.mlp, mlp.width, "MLP neurons of each block", "mlp")
        for i, block in enumerate(blocks):  # every block, not just the first (MoE models mix dense blocks in)
            if mlp_layout(block, f"block {i}").width != mlp.width:
                raise InvalidArgumentError(f"mlp: block {i}'s MLP is not {mlp.width} neurons wide like block 0's")
    if r.kv_heads:
        attention = attention_layout(first_block, config, "block 0", "kv_heads")
        kv_count = kv_groups_removed(r.kv_heads, attention)
    if r.heads:
        attention = attention_layout(first_block, config, "block 0")
        head_count = heads_per_group(r.heads, attention)
    moe, expert_count = _expert_request(r.experts, blocks, config)
    if not (mlp_count or head_count or kv_count or r.drop_blocks or expert_count):
        raise InvalidArgumentError("nothing to remove: give mlp, heads, kv_heads, experts or drop_blocks (a "
                                   "fraction that rounds to 0 units removes nothing)")
    unit_criterion = None
    if mlp_count:
        unit_criterion = get_unit_criterion(r.method, "neuron")
    if head_count or kv_count:
        unit_criterion = get_unit_criterion(r.method, "head")
    plan = Plan(r, n_blocks, mlp, mlp_count, attention, head_count, unit_criterion, None, moe=moe,
                expert_count=expert_count, kv_count=kv_count)
    if expert_count:
        plan.expert_criterion = get_unit_criterion(r.expert_method, "expert")
    if r.drop_blocks:
        plan.block_criterion = get_unit_criterion(r.block_method, "block")
        allowed = plan.allowed_blocks()
        if r.drop_blocks > len(allowed):
            raise InvalidArgumentError(f"drop_blocks={r.drop_blocks}: the model has {n_blocks} blocks, of which "
                                       f"{len(allowed)} may go (the first and last are kept)")
    if r.compensate == "bias" and not (mlp_count or plan.removes_heads):
        raise InvalidArgumentError("compensate='bias' compensates removed neurons or heads; for dropped blocks "
                                   "use compensate='refit' (a least-squares map folded into the block before); "
                                   "removed experts have nothing to fold into")
    if r.compensate == "refit" and not (mlp_count or plan.removes_heads or r.drop_blocks):
        raise InvalidArgumentError("compensate='refit' compensates removed neurons, heads or dropped blocks; "
                                   "removed experts have nothing to fold into")
    if r.compensate == "refit" and r.drop_blocks:
        plan.depth_mlp = mlp_layout(first_block, "block 0 (compensate='refit' folds into its MLP)")
        if plan.depth_mlp.rows == ("intermediate.dense",):
            raise InvalidArgumentError(f"compensate='refit' with drop_blocks: {type(first_block).__name__} is a "
                                       "post-norm block (its residual sum goes through a LayerNorm), so no map can "
                                       "be folded into its MLP; use compensate='none'")
    return plan


def _expert_request(fraction: float | None, blocks: Sequence[Any], config: Any) -> tuple[dict[int, MoeLayout], int]:
    """The MoE layouts and the experts removed from each MoE block (({}, 0) when none are asked)."""
    if fraction is None:
        return {}, 0
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise InvalidArgumentError(f"experts={fraction!r}: expected a fraction in [0, 1)")
    if fraction == 0:
        return {}, 0
    layouts = moe_layouts(blocks, config)
    if not layouts:
        raise InvalidArgumentError(f"experts={fraction!r}: the model has no MoE blocks (no block has a router "
                                   "'gate' and routed 'experts')")
    counts = {layout.num_experts for layout in layouts.values()}
    if len(counts) != 1:
        raise InvalidArgumentError(f"experts: the MoE blocks have different expert counts ({sorted(counts)}); "
                                   "one config value cannot describe them after a uniform removal")
    expert_count_key(config)  # a config that cannot say how many experts are left is refused now
    return layouts, expert_removal_count(fraction, next(iter(layouts.values())))


@dataclass
class Decisions:
    """Per block (original index) what goes, and the blocks dropped."""

    blocks: list[BlockDecision]
    dropped: list[int]
    depth: BlockChoice | None
    neurons_removed: dict[int, list[int]] = field(default_factory=dict)
    heads_removed: dict[int, list[int]] = field(default_factory=dict)
    folded: dict[int, list[int]] = field(default_factory=dict)  # block -> the dropped run folded into it
    experts_removed: dict[int, list[int]] = field(default_factory=dict)
    kv_heads_removed: dict[int, list[int]] = field(default_factory=dict)


def decide(plan: Plan, model: Any, blocks: Sequence[Any], batches: Sequence[Any] | None, *,
           load: Callable[[int], None] = lambda i: None, unload: Callable[[int], None] = lambda i: None,
           capture: Callable[[Any], list] | None = None, device: Any = None,
           keep: Callable[[int, BlockDecision], BlockDecision] = lambda i, d: d,
           keep_fold: Callable[[int, torch.Tensor], Any] = lambda i, t: t,
           step: Callable[[int], None] = lambda i: None) -> Decisions:
    """Every block's decision (one calibration pass when the plan needs one; a second, up to the
    last dropped block, for the dropped blocks' refit). ``keep(i, d)`` / ``keep_fold(i, t)`` may
    move a decision's compensated tensors elsewhere (the stream writes them to its staging area)."""
    r = plan.request
    decisions: list[BlockDecision | None] = [None] * len(blocks)

    def on_block(i: int, block: Any, measured: BlockMeasure) -> None:
        decisions[i] = keep(i, decide_one(plan, i, block, measured))

    depth = None
    if plan.needs_calibration:
        if batches is None:
            raise CalibrationRequiredError(needs_what(plan), "pass calibration batches (texts for the CLI)")
        depth = measure_blocks(model, blocks, batches, plan.wants(), on_block, load=load, unload=unload,
                               capture=capture, device=device, step=step)
    else:
        for i, block in enumerate(blocks):
            load(i)
            try:
                on_block(i, block, BlockMeasure())
            finally:
                unload(i)
            step(i)
    dropped = plan.block_criterion.choose_blocks(depth, r.drop_blocks, plan.allowed_blocks()) if r.drop_blocks else []
    if len(dropped) != r.drop_blocks:
        raise InvalidArgumentError(f"drop_blocks={r.drop_blocks}: {plan.block_criterion.name} found no run of that "
                                   "many blocks to drop among the allowed ones")
    result = collect_decisions(plan, decisions, dropped, depth)
    if dropped and plan.depth_mlp is not None:
        folds = measure_folds(model, blocks, batches, dropped, plan.depth_mlp.down, r.damping, load=load,
                              unload=unload, capture=capture, device=device)
        for i, fold in folds.items():
            result.blocks[i].fold = keep_fold(i, fold)
            result.folded[i] = next([s, e] for s, e in runs(dropped) if s == i + 1)
    return result


def decide_one(plan: Plan, i: int, block: Any, measured: BlockMeasure) -> BlockDecision:
    """Block ``i``'s decision (its weights loaded) from what the pass measured in it."""
    r = plan.request
    return decide_block(block, plan.unit_criterion, mlp=plan.mlp, mlp_count=plan.mlp_count,
                        attention=plan.attention, head_count=plan.head_count, neuron_stats=measured.neurons,
                        head_stats=measured.heads, compensate=r.compensate, damping=r.damping,
                        neuron_hessian=measured.neuron_hessian, head_hessian=measured.head_hessian,
                        moe=plan.moe.get(i), expert_count=plan.expert_count, expert_criterion=plan.expert_criterion,
                        expert_stats=measured.experts, kv_count=plan.kv_count)


def collect_decisions(plan: Plan, decisions: Sequence[BlockDecision], dropped: Sequence[int],
                      depth: BlockChoice | None) -> Decisions:
    """Every block's decision with the lists of what went from each (original numbering)."""
    result = Decisions(list(decisions), sorted(dropped), depth)
    for i, d in enumerate(result.blocks):
        if d.keep_neurons is not None:
            result.neurons_removed[i] = np.setdiff1d(np.arange(plan.mlp.width), d.keep_neurons).tolist()
        if d.keep_heads is not None:
            result.heads_removed[i] = np.setdiff1d(np.arange(plan.attention.heads), d.keep_heads).tolist()
        if d.keep_experts is not None:
            result.experts_removed[i] = np.setdiff1d(np.arange(plan.moe[i].num_experts), d.keep_experts).tolist()
        if d.keep_kv_heads is not None:
            result.kv_heads_removed[i] = np.setdiff1d(np.arange(plan.attention.kv_heads), d.keep_kv_heads).tolist()
    return result


def needs_what(plan: Plan) -> str:
    """What makes ``plan`` need calibration (for the error saying it is missing)."""
    if plan.unit_criterion is not None and plan.unit_criterion.requires_calibration():
        return plan.unit_criterion.name
    if plan.expert_criterion is not None and plan.expert_criterion.requires_calibration():
        return plan.expert_criterion.name
    if plan.request.drop_blocks:
        return plan.block_criterion.name
    return f"compensate={plan.request.compensate}"


def config_changes(plan: Plan, config: Any, dropped: Sequence[int]) -> dict[str, Any]:
    """The config attributes the shrunk model needs (attribute names; :func:`json_key` maps them to
    the names config.json uses)."""
    r = plan.request
    changes: dict[str, Any] = {}
    if plan.mlp_count:
        key = "n_inner" if hasattr(config, "n_inner") else "intermediate_size"
        changes[key] = plan.mlp.width - plan.mlp_count
        if r.compensate == "bias" and not _has_bias(plan.mlp.down, config, "mlp"):
            changes["mlp_bias"] = True
    if plan.removes_heads:
        a = plan.attention
        changes["num_attention_heads"], changes["num_key_value_heads"] = plan.kept_head_counts()
        changes["head_dim"] = a.head_dim  # explicit: hidden_size / heads no longer gives it
        if r.compensate == "bias" and not _has_bias(a.out, config, "attention"):
            changes["attention_bias"] = True
    if plan.expert_count:
        changes[expert_count_key(config)] = next(iter(plan.moe.values())).num_experts - plan.expert_count
    if dropped:
        n = plan.n_blocks - len(dropped)
        changes["num_hidden_layers"] = n
        gone = set(dropped)
        for key in ("layer_types",):
            value = getattr(config, key, None)
            if isinstance(value, (list, tuple)) and len(value) == plan.n_blocks:
                changes[key] = [v for i, v in enumerate(value) if i not in gone]
        value = getattr(config, "mlp_only_layers", None)
        if isinstance(value, (list, tuple)):
            renumber = renumbering(plan.n_blocks, dropped)
            changes["mlp_only_layers"] = [renumber[i] for i in value if i in renumber]
    return changes


def _has_bias(module_name: str, config: Any, kind: str) -> bool:
    """Whether the config already gives ``module_name`` a bias; raises when it cannot have one."""
    switch = "mlp_bias" if kind == "mlp" else "attention_bias"
    if getattr(config, switch, None) is True:
        return True
    if not hasattr(config, switch):
        raise InvalidArgumentError(f"compensate='bias': {module_name} has no bias and {type(config).__name__} has "
                                   f"no {switch} setting to give it one; use compensate='refit' or 'none'")
    return False


def renumbering(n_blocks: int, dropped: Sequence[int]) -> dict[int, int]:
    """Original block index -> new index, for the kept blocks."""
    gone = set(dropped)
    kept = [i for i in range(n_blocks) if i not in gone]
    return {old: new for new, old in enumerate(kept)}


def json_key(config: Any, attribute: str) -> str:
    """The config.json key of a config attribute (GPT-2 stores ``num_hidden_layers`` as ``n_layer``)."""
    return getattr(config, "attribute_map", {}).get(attribute, attribute)


def find_block_list(model: Any) -> tuple[str, Any]:
    """The model's repeated blocks: the largest ``nn.ModuleList`` whose first child has an MLP or an
    attention this module knows (name, list)."""
    best: tuple[int, str, Any] = (0, "", None)
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) == 0 or len(module) <= best[0]:
            continue
        try:
            mlp_layout(module[0])
        except InvalidArgumentError:
            names = dict(module[0].named_modules())
            if not any(k in names for k in ("self_attn", "attn", "attention")):
                continue
        best = (len(module), name, module)
    if best[2] is None:
        raise InvalidArgumentError(f"{type(model).__name__} has no list of transformer blocks this version knows")
    return best[1], best[2]


def block_scores(plan: Plan, depth: Any) -> list[float] | None:
    """What the block criterion measured, per block: BI, or the angular distance of the run of
    ``drop_blocks`` blocks starting there."""
    if depth is None:
        return None
    if isinstance(plan.block_criterion, BlockInfluence):
        return [float(v) for v in BlockInfluence.influence(depth)]
    return [float(v) for v in depth.angle[:, plan.request.drop_blocks - 1]]


def shrink_report(plan: Plan, decisions: Decisions, *, params_before: int, params_after: int,
                  config_changes: dict[str, Any], reconstruct: Any, losses: dict[int, dict],
                  seconds: float) -> ShrinkReport:
    """The report of one shrink (both front ends): what went from each kept block, the dropped
    blocks, the criteria, the counts. ``reconstruct``: the re-fit's settings, or None."""
    def kept(removed: dict[int, list[int]]) -> dict[int, list[int]]:
        return {i: v for i, v in removed.items() if i not in decisions.dropped}

    return ShrinkReport(
        method=plan.unit_criterion.name if plan.unit_criterion else None,
        block_method=plan.block_criterion.name if plan.block_criterion else None,
        compensate=plan.request.compensate, params_before=params_before, params_after=params_after,
        dropped_blocks=decisions.dropped, neurons_removed=kept(decisions.neurons_removed),
        heads_removed=kept(decisions.heads_removed), kv_heads_removed=kept(decisions.kv_heads_removed),
        experts_removed=kept(decisions.experts_removed),
        expert_method=plan.expert_criterion.name if plan.expert_criterion else None,
        block_scores=block_scores(plan, decisions.depth), folded=decisions.folded, config_changes=config_changes,
        reconstruct=reconstruct.describe() if reconstruct is not None else None, reconstruction_losses=losses,
        seconds=seconds)


def new_tensors(params: dict[str, torch.Tensor], decision: BlockDecision, plan: Plan) -> dict[str, torch.Tensor]:
    """Relative parameter name -> its new tensor, for every tensor of a block (``params``: relative
    name -> tensor, a module's parameters or a checkpoint's tensors) the decision changes: cut,
    compensated, or a zero bias that a config switch such as ``mlp_bias`` adds."""
    out: dict[str, torch.Tensor] = {}
    for name, (axis, index) in decision.cuts.items():
        if name in params:
            idx = torch.from_numpy(np.ascontiguousarray(index)).to(params[name].device)
            out[name] = params[name].detach().index_select(axis, idx).contiguous()
    out.update(decision.replaced)
    if decision.fold is not None:  # after the cut: the fold acts on the outputs, the cut on the inputs
        down = plan.depth_mlp
        name = f"{down.down}.weight"
        out[name] = fold_into(out.get(name, params[name]), decision.fold, down.conv1d)
        bias = f"{down.down}.bias"
        if bias in out or bias in params:
            out[bias] = fold_bias(out.get(bias, params.get(bias)), decision.fold)
    for name in list(out):  # a bias switched on by the config: the modules beside it get zero ones
        if name.endswith(".bias") and name not in params:
            for sibling in zero_bias_siblings(name, plan):
                if sibling + ".bias" not in params and sibling + ".bias" not in out:
                    weight = out.get(sibling + ".weight", params[sibling + ".weight"])
                    out[sibling + ".bias"] = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
    return out


def zero_bias_siblings(bias_name: str, plan: Plan) -> tuple[str, ...]:
    """Modules that get a zero bias when the config switch giving ``bias_name`` one turns on."""
    if plan.mlp is not None and bias_name == f"{plan.mlp.down}.bias":
        return plan.mlp.rows
    if plan.attention is not None and bias_name == f"{plan.attention.out}.bias":
        return plan.attention.rows
    return ()

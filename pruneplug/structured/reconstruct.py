"""Shrinking with block reconstruction: each block is cut, then its remaining Linear weights are
re-fitted with Adam so that the shrunk block reproduces the dense block's outputs on the same
calibration inputs (:func:`pruneplug.torch.reconstruct.reconstruct_block`, the trainer of
unstructured pruning; docs/structured.md). Shared by :func:`pruneplug.torch.shrink_model` and
:func:`pruneplug.structured.shrink_model_dir` (``reconstruct=``).

Without reconstruction every block is decided in one pass over the dense model and cut afterwards
(:func:`pruneplug.structured.plan.decide`). With it the pass is sequential, so each block is
measured, decided and re-fitted on the hidden states the shrunk model really produces:

1. **Blocks to drop** (only with ``drop_blocks``): one dense pass measuring the depth criterion
   alone, the same pass and the same choice as without reconstruction.
2. **Per kept block, in forward order**: one forward pass over the calibration batches measures the
   unit statistics and keeps the dense block's outputs (the teacher); the block is decided,
   compensated and cut (``cut``); every ``nn.Linear`` / ``Conv1D`` weight of the shrunk block is
   re-fitted (no mask: the removed units are gone, not zero); ``keep`` records the result (the
   directory writes it to its staging area and rounds the block to the checkpoint's dtype); the
   re-fitted block's outputs are the next block's inputs. Dropped blocks are skipped: the next
   kept block receives what it will receive in the shrunk model. A cut block runs with a copy of
   the config carrying the new widths (Phi-3's attention reads ``config.num_attention_heads`` in
   its forward) while the blocks after it still read the original; the original is given back to
   every block at the end, and the caller updates it.

Memory: one block's weights, the calibration hidden states twice (inputs and the teacher, then
inputs and the next inputs), and for the trained weights their gradients, Adam's two moments and
the early-stopping copy.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from pruneplug.errors import CalibrationRequiredError, InvalidArgumentError
from pruneplug.reconstruction.block import ReconstructSettings
from pruneplug.report import NullProgress
from pruneplug.structured.decide import BlockDecision
from pruneplug.structured.measure import measure_block
from pruneplug.structured.plan import Decisions, Plan, collect_decisions, config_changes, decide, decide_one


def check_reconstruct(reconstruct: Any, plan: Plan, have_calibration: bool) -> bool:
    """Whether blocks are re-fitted (``reconstruct`` given with ``steps > 0``); a typed error,
    before any change, when it cannot apply to ``plan``."""
    if reconstruct is None:
        return False
    if not isinstance(reconstruct, ReconstructSettings):
        raise InvalidArgumentError(f"reconstruct={reconstruct!r} ({type(reconstruct).__name__}): expected a "
                                   "pruneplug.ReconstructSettings or None")
    reconstruct.check()
    if not reconstruct.enabled:
        return False
    if not (plan.mlp_count or plan.removes_heads or plan.expert_count):
        raise InvalidArgumentError(
            f"reconstruct (steps={reconstruct.steps}) re-fits blocks whose MLP neurons, attention heads or "
            "experts were removed, to the dense block's outputs on the same inputs; drop_blocks alone changes no "
            "kept block, so there is nothing to re-fit: give mlp, heads, kv_heads or experts, or leave "
            "reconstruct off")
    if plan.depth_mlp is not None:
        raise InvalidArgumentError(
            f"reconstruct (steps={reconstruct.steps}) with compensate='refit' and drop_blocks: the re-fit's target "
            "is each block's dense output, which would undo the map folded into the block before a dropped run; "
            "use one or the other")
    if reconstruct.target != "local":
        raise InvalidArgumentError(f"reconstruct target={reconstruct.target!r}: shrink re-fits each block to the dense "
                                   "block's outputs on the same inputs (target='local'); a dense-stream target is "
                                   "built for pruning only")
    if not have_calibration:
        raise CalibrationRequiredError(f"reconstruct (steps={reconstruct.steps})",
                                       "the re-fit needs calibration batches (texts for the CLI)")
    return True


def shrunk_layers(block: Any) -> list[Any]:
    """Every ``nn.Linear`` and Hugging Face ``Conv1D`` of ``block``, as the re-fit's layers (with
    ``train="weights"`` their weights are trained; ``"lowrank"`` adapts them; ``"norms"`` trains
    the norms and biases instead; ``"all"`` both)."""
    from pruneplug.torch.layers import Layer, is_conv1d

    return [Layer(f"{name}.weight", module, 0 if is_conv1d(module) else 1) for name, module in block.named_modules()
            if isinstance(module, torch.nn.Linear) or is_conv1d(module)]


def depth_only(plan: Plan) -> Plan:
    """``plan`` reduced to choosing the blocks to drop (no unit removed, no compensation)."""
    request = dataclasses.replace(plan.request, mlp=0.0, heads=0.0, kv_heads=0.0, experts=None, compensate="none")
    return dataclasses.replace(plan, request=request, mlp=None, mlp_count=0, attention=None, head_count=0,
                               kv_count=0, unit_criterion=None, moe={}, expert_count=0, expert_criterion=None,
                               depth_mlp=None)


def shrink_and_reconstruct(plan: Plan, model: Any, blocks: Sequence[Any], batches: Sequence[Any],
                           settings: ReconstructSettings, *, cut: Callable[[Any, BlockDecision], None],
                           keep: Callable[[int, BlockDecision, Any], BlockDecision] = lambda i, d, block: d,
                           load: Callable[[int], None] = lambda i: None,
                           unload: Callable[[int], None] = lambda i: None,
                           capture: Callable[[Any], list] | None = None, device: Any = None,
                           progress: Any = None) -> tuple[Decisions, dict[int, dict]]:
    """The sequential pass of the module docstring. ``cut(block, decision)`` removes the units from
    the loaded block in place; ``keep(i, decision, block)`` is called once the block is re-fitted
    (it may stash tensors and return the decision to remember). ``load``/``unload``/``capture``/
    ``device`` as for :func:`~pruneplug.structured.plan.decide`. Returns the decisions (blocks
    dropped, and per original index what went) and the re-fit's losses per kept block (original
    index -> :func:`~pruneplug.torch.reconstruct.reconstruct_block`'s dict)."""
    # imported here: pruneplug.torch imports this module (through shrink_model)
    from pruneplug.torch.blockwise import Activations, capture_block_inputs

    progress = progress or NullProgress()
    depth, dropped = None, []
    if plan.request.drop_blocks:
        progress.start("choosing blocks", len(blocks), len(blocks), unit="blocks")
        chosen = decide(depth_only(plan), model, blocks, batches, load=load, unload=unload, capture=capture,
                        device=device, step=lambda i: progress.update(1, 1))
        progress.close()
        depth, dropped = chosen.depth, chosen.dropped
    progress.start("shrinking", len(blocks), len(blocks), unit="blocks")
    activations = Activations()
    with torch.no_grad():
        calls = capture(activations) if capture is not None else capture_block_inputs(
            model, blocks[0], batches, activations, device=device)
    config = getattr(model, "config", None)
    run = _Pass(plan, calls, settings, progress, config, _with_changes(config, config_changes(plan, config, [])))
    decisions: list[BlockDecision] = [BlockDecision() for _ in blocks]
    losses: dict[int, dict] = {}
    try:
        for i, block in enumerate(blocks):
            if i not in dropped:
                load(i)
                try:
                    decision, losses[i] = run.shrink_block(i, block, activations, cut)
                    decisions[i] = keep(i, decision, block)
                    activations = run.forward(block, activations)
                finally:
                    unload(i)
            progress.update(1, 1)
    finally:
        for block in blocks:
            _point_config(block, run.shrunk_config, config)
    progress.close()
    return collect_decisions(plan, decisions, dropped, depth), losses


@dataclass
class _Pass:
    """What every block of the sequential pass shares: the plan, the calibration calls, the
    settings, the progress display, and the original and the shrunk config."""

    plan: Plan
    calls: Sequence[Any]
    settings: ReconstructSettings
    progress: Any
    config: Any
    shrunk_config: Any

    def shrink_block(self, i: int, block: Any, inputs: Any, cut: Callable[[Any, BlockDecision], None]
                     ) -> tuple[BlockDecision, dict]:
        """Measure, decide, cut and re-fit loaded block ``i`` on ``inputs``; (decision, losses)."""
        from pruneplug.torch.blockwise import block_output
        from pruneplug.torch.reconstruct import reconstruct_block

        plan = self.plan
        self.progress.set_step("measuring")
        measured, teacher = measure_block(block, self.calls, inputs, dataclasses.replace(plan.wants(), depth=0), i)
        decision = decide_one(plan, i, block, measured)
        del measured
        cut(block, decision)
        _point_config(block, self.config, self.shrunk_config)
        losses = reconstruct_block(
            block, shrunk_layers(block),
            lambda b: block_output(self.calls[b].run(block, inputs.get(b))), teacher,
            [call.token_mask for call in self.calls], self.settings, i,
            lambda text: self.progress.set_step(f"block {i}: {text}"), masked=False)
        return decision, losses

    def forward(self, block: Any, inputs: Any) -> Any:
        """The (re-fitted) block's outputs: the next block's inputs."""
        from pruneplug.torch.blockwise import Activations, forward_all

        self.progress.set_step("forward")
        outputs = Activations()
        with torch.no_grad():
            forward_all(block, self.calls, inputs, outputs)
        return outputs


def _with_changes(config: Any, changes: dict) -> Any:
    """A shallow copy of ``config`` with ``changes`` (attribute names) set."""
    if config is None:
        return None
    changed = copy.copy(config)
    for key, value in changes.items():
        setattr(changed, key, value)
    return changed


def _point_config(block: Any, old: Any, new: Any) -> None:
    """Every module of ``block`` holding the config ``old`` (by identity) holds ``new`` instead."""
    if old is None:
        return
    for module in block.modules():
        if getattr(module, "config", None) is old:
            module.config = new

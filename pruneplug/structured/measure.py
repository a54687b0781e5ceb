"""One calibration pass over the blocks, in forward order, measuring what unit criteria read.

The block engine of :mod:`pruneplug.torch.blockwise` runs it: the hidden states entering the first
block are captured once per batch, then each block runs on the previous block's outputs (the dense
model's: nothing is changed during the pass). Per block it collects, over the real tokens (the
batch's attention mask):

* the moments of down_proj's input (one feature per neuron) and of o_proj's input (``head_dim``
  features per query head): :class:`~pruneplug.structured.criteria.UnitStats`;
* with ``hessian=True``, ``X^T X`` of those inputs (float64), for the least-squares refit;
* in MoE blocks (``experts``), per routed expert: the tokens routed to it, the sum of its routing
  weights and of routing weight x ``||f_j(x)||_2`` (:class:`~pruneplug.structured.experts.ExpertAccumulator`,
  from the MoE module's input, the router's and the experts' weights);
* the mean cosine and mean angular distance between the hidden states entering block ``l`` and
  those leaving block ``l+n-1``, for n up to ``depth``, for the depth criteria.

``load(i)`` / ``unload(i)`` bracket block ``i`` (the stream materialises its weights there;
in memory they do nothing), and ``on_block(i, block, measured)`` is called while it is loaded, so
that decisions needing its weights are taken then and its statistics can be freed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from pruneplug.structured.criteria.base import BlockChoice, ExpertStats, UnitStats
from pruneplug.structured.experts import ExpertAccumulator, MoeLayout


class _Moments:
    def __init__(self, hessian: bool) -> None:
        self.abs_sum = self.sum = self.sq_sum = self.hessian = None
        self.count = 0
        self.want_hessian = hessian

    def add(self, x: torch.Tensor, mask: torch.Tensor | None) -> None:
        if mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
            x = x[mask.to(x.device)]
        x = x.reshape(-1, x.shape[-1]).to(torch.float64)
        if self.sum is None:
            n = x.shape[-1]
            self.abs_sum, self.sum, self.sq_sum = (torch.zeros(n, dtype=torch.float64, device=x.device)
                                                   for _ in range(3))
            if self.want_hessian:
                self.hessian = torch.zeros((n, n), dtype=torch.float64, device=x.device)
        self.abs_sum += x.abs().sum(0)
        self.sum += x.sum(0)
        self.sq_sum += (x * x).sum(0)
        if self.hessian is not None:
            self.hessian.addmm_(x.t(), x)
        self.count += int(x.shape[0])

    def stats(self) -> UnitStats | None:
        if self.sum is None:
            return None
        return UnitStats(self.abs_sum.cpu().numpy(), self.sum.cpu().numpy(), self.sq_sum.cpu().numpy(), self.count)


@dataclass
class BlockMeasure:
    """What the pass measured in one block: the statistics of the neurons and heads (None when not
    asked for), with ``hessian`` the ``X^T X`` of their inputs, and its experts' statistics."""

    neurons: UnitStats | None = None
    heads: UnitStats | None = None
    experts: ExpertStats | None = None
    neuron_hessian: torch.Tensor | None = None
    head_hessian: torch.Tensor | None = None


@dataclass
class Wants:
    """What to measure: the module names (relative to a block) whose inputs are the neurons and the
    heads, whether ``X^T X`` too, how many consecutive blocks the depth measure spans (0: none), and
    the MoE layouts of the blocks whose experts are measured (block index -> layout)."""

    neuron_input: str | None = None
    head_input: str | None = None
    hessian: bool = False
    depth: int = 0
    experts: dict[int, MoeLayout] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


def _token_cos(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    cos = torch.nn.functional.cosine_similarity(a.to(torch.float64), b.to(torch.float64), dim=-1)
    if mask is not None and cos.shape == mask.shape:
        cos = cos[mask.to(cos.device)]
    return cos.reshape(-1).clamp(-1.0, 1.0)


def measure_block(block: Any, calls: Sequence[Any], activations: Any, wants: Wants,
                  index: int = -1) -> tuple[BlockMeasure, Any]:
    """Block ``index`` of the pass, its weights loaded: what ``wants`` asks for (``wants.depth`` is
    not read here) over every calibration batch (``calls[b]`` with hidden states
    ``activations.get(b)``), and the block's outputs (an ``Activations``)."""
    from pruneplug.torch.blockwise import Activations

    moments = {key: _Moments(wants.hessian) for key, name in
               (("neurons", wants.neuron_input), ("heads", wants.head_input)) if name}
    modules = dict(block.named_modules())
    mask_now: list[Any] = [None]
    handles = [modules[name].register_forward_pre_hook(
        lambda mod, args, acc=moments[key]: acc.add(args[0].detach(), mask_now[0]))
        for key, name in (("neurons", wants.neuron_input), ("heads", wants.head_input)) if name]
    experts = None
    if index in wants.experts:
        experts = ExpertAccumulator(block, wants.experts[index])
        handles.append(modules[wants.experts[index].moe].register_forward_pre_hook(
            lambda mod, args, kwargs, acc=experts: acc.add(
                (args[0] if args else kwargs["hidden_states"]).detach(), mask_now[0]),
            with_kwargs=True))
    outputs = Activations()
    try:
        with torch.no_grad():
            for b, call in enumerate(calls):
                mask_now[0] = call.token_mask
                outputs.put_output(b, call.run(block, activations.get(b)))
    finally:
        for h in handles:
            h.remove()
    measured = BlockMeasure(
        neurons=moments["neurons"].stats() if "neurons" in moments else None,
        heads=moments["heads"].stats() if "heads" in moments else None,
        neuron_hessian=moments["neurons"].hessian if "neurons" in moments else None,
        head_hessian=moments["heads"].hessian if "heads" in moments else None,
        experts=experts.stats() if experts is not None else None)
    return measured, outputs


def measure_blocks(model: Any, blocks: Sequence[Any], batches: Sequence[Any], wants: Wants,
                   on_block: Callable[[int, Any, BlockMeasure], None], *,
                   load: Callable[[int], None] = lambda i: None, unload: Callable[[int], None] = lambda i: None,
                   capture: Callable[[Any], list] | None = None, device: Any = None,
                   step: Callable[[int], None] = lambda i: None) -> BlockChoice | None:
    """Run the pass (module docstring); returns the depth measure (None when ``wants.depth`` is 0).
    ``capture(activations)`` captures the first block's inputs (default: the model's own forward)."""
    from pruneplug.torch.blockwise import Activations, capture_block_inputs

    activations = Activations()
    with torch.no_grad():
        calls = capture(activations) if capture is not None else capture_block_inputs(
            model, blocks[0], batches, activations, device=device)
    n_blocks = len(blocks)
    depth = wants.depth
    cos_sum = np.zeros((n_blocks, max(depth, 1)))
    ang_sum = np.zeros((n_blocks, max(depth, 1)))
    counts = np.zeros((n_blocks, max(depth, 1)))
    window: deque = deque(maxlen=max(depth, 1))  # (block index, its input activations)
    for i, block in enumerate(blocks):
        load(i)
        try:
            measured, outputs = measure_block(block, calls, activations, wants, i)
            if depth:
                window.append((i, activations))
                for start, inputs in window:
                    n = i - start + 1
                    for b, call in enumerate(calls):
                        cos = _token_cos(inputs.get(b), outputs.get(b), call.token_mask)
                        cos_sum[start, n - 1] += float(cos.sum())
                        ang_sum[start, n - 1] += float((torch.arccos(cos) / np.pi).sum())
                        counts[start, n - 1] += cos.numel()
            on_block(i, block, measured)
        finally:
            unload(i)
        activations = outputs
        step(i)
    if not depth:
        return None
    with np.errstate(invalid="ignore", divide="ignore"):
        return BlockChoice(cosine=np.where(counts > 0, cos_sum / np.maximum(counts, 1), np.nan),
                           angle=np.where(counts > 0, ang_sum / np.maximum(counts, 1), np.nan))

"""Reconstruction of a pruned block: keep the masks, re-fit the block with Adam so that the pruned
block reproduces the dense block's outputs on the calibration tokens (block-wise fine-tuning as in
EBFT, BESA's block reconstruction; docs/reconstruction.md).

The block engine (:func:`pruneplug.torch.blockwise.calibrate_and_prune_block`) calls
:func:`reconstruct_block` once per block, after pruning and before the next block's inputs are
made, so ``prune_model`` and the checkpoint stream both get it. The teacher's outputs are given
(``targets``): the dense block on the student's own inputs (``target="local"``) or on the dense
model's hidden states (``target="dense"``); the engine makes them.

What is trained (``ReconstructSettings.train``), one small class each:

* ``"weights"`` (:class:`PrunedWeights`): the block's pruned Linear/Conv1D weights. The mask is
  every weight that is zero right after pruning: gradients are masked before each Adam step and
  the weights re-masked after it, so pruned weights stay exactly ``+0.0``.
* ``"norms"`` (:class:`NormsAndBiases`): the block's normalisation weights and biases and its
  linear layers' biases; no linear weight is touched.
* ``"lowrank"`` (:class:`LowRankAdapters`): per pruned layer ``W + (B @ A) * mask``, with ``B``
  zero and ``A`` seeded at the start, merged into ``W`` at the end (pruned entries ``+0.0``).
* ``"all"`` (:class:`PrunedWeights` with the block): both ``"weights"`` and ``"norms"``: every
  parameter of the block that pruning left meaningful (EBFT trains the whole block under its mask).

The settings: :class:`pruneplug.ReconstructSettings` (:mod:`pruneplug.reconstruction.block`).
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable, Iterator, Sequence

import torch

from pruneplug.reconstruction.block import ReconstructSettings
from pruneplug.torch.layers import Layer, is_conv1d


def block_loss(output: torch.Tensor, target: torch.Tensor, token_mask: torch.Tensor | None,
               kind: str) -> torch.Tensor:
    """The loss of one batch between a block's ``output`` and the dense ``target``
    (``[batch, tokens, features]``), over the real tokens, in float32."""
    out, ref = output.float(), target.float()
    if token_mask is not None and out.dim() == 3 and tuple(out.shape[:2]) == tuple(token_mask.shape):
        mask = token_mask.to(out.device)
        out, ref = out[mask], ref[mask]
    err = (out - ref).pow(2)
    if kind == "nmse":
        return err.sum() / ref.pow(2).sum().clamp_min(torch.finfo(torch.float32).tiny)
    return err.mean()


def is_norm(module: Any) -> bool:
    """A normalisation layer: ``torch.nn.LayerNorm``/``GroupNorm``, or a class named ``...Norm``
    (``LlamaRMSNorm``, ``torch.nn.RMSNorm``, T5's ``LayerNorm``: models define their own)."""
    return isinstance(module, (torch.nn.LayerNorm, torch.nn.GroupNorm)) or type(module).__name__.endswith("Norm")


def norm_and_bias_parameters(block: Any) -> list[tuple[str, torch.nn.Parameter]]:
    """``(name inside block, parameter)`` of what ``train="norms"`` re-fits: every parameter of the
    block's normalisation layers and the bias of each of its linear layers, in module order (a
    parameter shared by two modules once).

    Example::

        >>> block = torch.nn.Sequential(torch.nn.LayerNorm(4), torch.nn.Linear(4, 4))
        >>> [name for name, _ in norm_and_bias_parameters(block)]
        ['0.weight', '0.bias', '1.bias']
    """
    found: list[tuple[str, torch.nn.Parameter]] = []
    seen: set[int] = set()
    for prefix, module in block.named_modules():
        if is_norm(module):
            owned = list(module.named_parameters(recurse=False))
        elif isinstance(module, torch.nn.Linear) or is_conv1d(module):
            owned = [("bias", module.bias)] if isinstance(getattr(module, "bias", None), torch.nn.Parameter) else []
        else:
            continue
        for leaf, param in owned:
            if id(param) not in seen:
                seen.add(id(param))
                found.append((f"{prefix}.{leaf}" if prefix else leaf, param))
    return found


class PrunedWeights:
    """``train="weights"``: Adam moves the pruned layers' weights; masked gradients and a re-mask
    after each step keep the pruned entries at exactly ``+0.0``. With ``block`` (``train="all"``)
    the block's norms and biases (:func:`norm_and_bias_parameters`) move too, unmasked."""

    def __init__(self, layers: Sequence[Layer], masked: bool = True, block: Any = None) -> None:
        self.weights = [layer.module.weight for layer in layers]
        self.masks = [w.detach() != 0 for w in self.weights] if masked else []
        # norms and linear biases only: never one of the weights above
        self.parameters = self.weights + ([p for _, p in norm_and_bias_parameters(block)] if block is not None else [])
        self.in_block = self.parameters  # the block's own parameters that need gradients

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        yield

    def before_step(self) -> None:
        for w, mask in zip(self.weights, self.masks):
            if w.grad is not None:
                w.grad.masked_fill_(~mask, 0.0)

    def after_step(self) -> None:
        for w, mask in zip(self.weights, self.masks):
            w.masked_fill_(~mask, 0.0)  # +0.0 exactly, whatever Adam's rounding did

    def finish(self) -> None:
        """Nothing to merge: the weights were trained in place."""


class NormsAndBiases:
    """``train="norms"``: Adam moves the norms and biases (:func:`norm_and_bias_parameters`) and
    nothing else; every linear weight keeps its pruned value bit for bit."""

    def __init__(self, block: Any) -> None:
        self.parameters = [p for _, p in norm_and_bias_parameters(block)]
        self.in_block = self.parameters

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        yield

    def before_step(self) -> None:
        """No mask: none of these is pruned."""

    def after_step(self) -> None:
        """No mask: none of these is pruned."""

    def finish(self) -> None:
        """Nothing to merge: trained in place."""


class LowRankAdapters:
    """``train="lowrank"``: per pruned layer an adapter ``B`` (``rows x rank``, zeros) and ``A``
    (``rank x cols``, seeded normal with variance ``1 / rank``, so that a step of ``lr`` on every
    entry of ``B`` moves each entry of ``B @ A`` by about ``lr``, the ``"weights"`` mode's scale).
    While training, a forward hook adds the output of ``(B @ A) * mask`` (the same shape as the
    weight; ``mask`` = the weight's non-zero entries) to the layer's output, so the layer computes
    ``W + (B @ A) * mask``; :meth:`finish` merges that into ``W``. The adapters are float32 (float64
    for a float64 weight), whatever the compute dtype; Adam keeps state for them only."""

    def __init__(self, layers: Sequence[Layer], rank: int, generator: torch.Generator, masked: bool = True) -> None:
        self.layers = list(layers)
        self.in_block: list[torch.nn.Parameter] = []  # the weights stay frozen
        self.masks = [layer.module.weight.detach() != 0 if masked
                      else torch.ones_like(layer.module.weight, dtype=torch.bool) for layer in self.layers]
        self.a: list[torch.Tensor] = []
        self.b: list[torch.Tensor] = []
        for layer in self.layers:
            w = layer.module.weight
            dtype = torch.promote_types(w.dtype, torch.float32)
            rows, cols = w.shape
            a = torch.randn(rank, cols, generator=generator) / math.sqrt(rank)  # on the CPU: the same bits anywhere
            self.a.append(a.to(device=w.device, dtype=dtype).requires_grad_(True))
            self.b.append(torch.zeros(rows, rank, device=w.device, dtype=dtype, requires_grad=True))
        self.parameters = [t for pair in zip(self.b, self.a) for t in pair]

    def delta(self, i: int) -> torch.Tensor:
        """Layer ``i``'s masked update ``(B @ A) * mask`` (pruned entries exactly +0.0)."""
        return torch.where(self.masks[i], self.b[i] @ self.a[i], 0.0)

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        handles = [layer.module.register_forward_hook(self._hook(i)) for i, layer in enumerate(self.layers)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, i: int) -> Callable:
        linear = self.layers[i].input_axis == 1  # nn.Linear: [out, in]; Conv1D: [in, out]

        def hook(module: Any, args: tuple, output: torch.Tensor) -> torch.Tensor:
            x = args[0]
            delta = self.delta(i).to(x.dtype)
            return output + (torch.nn.functional.linear(x, delta) if linear else x @ delta)
        return hook

    def before_step(self) -> None:
        """No mask on the adapters: the mask is inside :meth:`delta`."""

    def after_step(self) -> None:
        """Nothing to re-mask: the weights do not move."""

    def finish(self) -> None:
        """Merge each adapter into its weight, rounded to the weight's dtype, pruned entries +0.0."""
        with torch.no_grad():
            for i, layer in enumerate(self.layers):
                w = layer.module.weight
                merged = (w.to(self.a[i].dtype) + self.delta(i)).to(w.dtype)
                w.copy_(merged.masked_fill_(~self.masks[i], 0.0))


def trained_parts(block: Any, layers: Sequence[Layer], settings: ReconstructSettings, index: int,
                  masked: bool = True) -> PrunedWeights | NormsAndBiases | LowRankAdapters:
    """The object for ``settings.train`` (block ``index`` seeds the adapters with ``seed + index``;
    ``masked=False``: the layers' zeros are not a mask)."""
    if settings.train == "norms":
        return NormsAndBiases(block)
    if settings.train == "lowrank":
        return LowRankAdapters(layers, settings.rank, torch.Generator().manual_seed(settings.seed + index), masked)
    return PrunedWeights(layers, masked, block if settings.trains_norms else None)


@contextlib.contextmanager
def _training(block: Any, wanted: Sequence[torch.Tensor]) -> Iterator[None]:
    """Gradients for the block's ``wanted`` parameters only, the block in eval mode (no dropout);
    every parameter's ``requires_grad`` and ``.grad`` restored after (a user's model is left as it
    was)."""
    params = list(block.parameters())
    saved = [(p, p.requires_grad, p.grad) for p in params]
    wanted_ids = {id(w) for w in wanted}
    was_training = block.training
    try:
        for p in params:
            p.requires_grad_(id(p) in wanted_ids)
            p.grad = None
        block.eval()
        with torch.enable_grad():
            yield
    finally:
        for p, flag, grad in saved:
            p.requires_grad_(flag)
            p.grad = grad
        block.train(was_training)


def reconstruct_block(block: Any, layers: Sequence[Layer], run: Callable[[int], torch.Tensor],
                      targets: Any, token_masks: Sequence[torch.Tensor | None], settings: ReconstructSettings,
                      index: int = 0, step: Callable[[str], None] = lambda s: None, *, masked: bool = True) -> dict:
    """Re-fit the block (what ``settings.train`` names, in place; ``layers``: its pruned layers)
    so that ``run(i)``, the block's hidden-state output on calibration batch ``i``, gives
    ``targets.get(i)`` (the teacher's; ``token_masks[i]``: the batch's real tokens, or None).
    Returns the losses: ``before`` / ``after`` on the training batches, ``held_out_before`` /
    ``held_out_after`` (None without a held-out split), ``best_step`` (the step whose weights were
    kept, 0 = none), ``steps`` and ``seconds``. ``masked=False``: no mask, every entry of the
    layers' weights may move (a structurally shrunk block, whose removed units are gone rather
    than zero)."""
    started = time.perf_counter()
    train, held = settings.split(len(token_masks))
    generator = torch.Generator().manual_seed(settings.seed + index)
    parts = trained_parts(block, layers, settings, index, masked)
    steps = settings.steps if parts.parameters else 0  # a block without norms or biases has nothing to train

    def loss_of(i: int) -> torch.Tensor:
        return block_loss(run(i), targets.get(i), token_masks[i], settings.loss)

    def mean_loss(indices: Sequence[int]) -> float | None:
        if not indices:
            return None
        with torch.no_grad():
            return sum(float(loss_of(i)) for i in indices) / len(indices)

    with _training(block, parts.in_block):
        with parts.attached():
            before, held_before = mean_loss(train), mean_loss(held)
            step(f"reconstructing: loss {before:.4g}")
            best_step = _descend(parts, loss_of, mean_loss, train, held, held_before, steps, settings, generator)
        parts.finish()
        after, held_after = mean_loss(train), mean_loss(held)
    result = {"before": before, "after": after, "held_out_before": held_before, "held_out_after": held_after,
              "best_step": best_step, "steps": settings.steps, "seconds": time.perf_counter() - started}
    step(f"reconstructed: loss {before:.4g} -> {after:.4g}"
         + (f" (held-out {held_before:.4g} -> {held_after:.4g})" if held else ""))
    return result


def _descend(parts: Any, loss_of: Callable[[int], torch.Tensor], mean_loss: Callable, train: Sequence[int],
             held: Sequence[int], held_before: float | None, steps: int, settings: ReconstructSettings,
             generator: torch.Generator) -> int:
    """The Adam steps with early stopping: leaves ``parts.parameters`` at the values with the
    lowest held-out loss (those before the first step when none helped; the last step's without a
    held-out split) and returns that step (0 = none)."""
    if steps == 0:
        return 0
    optimiser = torch.optim.Adam(list(parts.parameters), lr=settings.lr)
    best, best_step = held_before, 0
    kept = [p.detach().clone() for p in parts.parameters] if held else None
    every = max(1, steps // 10)
    order: list[int] = []
    for n in range(1, steps + 1):
        optimiser.zero_grad(set_to_none=True)
        chosen = []
        for _ in range(min(settings.batches, len(train))):
            if not order:
                order = [train[j] for j in torch.randperm(len(train), generator=generator).tolist()]
            chosen.append(order.pop())
        for i in chosen:
            (loss_of(i) / len(chosen)).backward()
        with torch.no_grad():
            parts.before_step()
            for group in optimiser.param_groups:
                group["lr"] = settings.learning_rate(n)
            optimiser.step()
            parts.after_step()
        if held and (n % every == 0 or n == steps):
            now = mean_loss(held)
            if now < best:
                best, best_step = now, n
                kept = [p.detach().clone() for p in parts.parameters]
    if not held:
        return steps
    with torch.no_grad():
        for p, k in zip(parts.parameters, kept):
            p.copy_(k)
    return best_step

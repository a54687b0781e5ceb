"""Local reconstruction of a pruned block: keep the masks, re-fit the surviving weights with Adam so
that the pruned block reproduces the dense block's outputs on the calibration tokens (block-wise
fine-tuning as in EBFT, BESA's block reconstruction; docs/reconstruction.md).

The block engine (:func:`pruneplug.torch.blockwise.calibrate_and_prune_block`) calls
:func:`reconstruct_block` once per block, after pruning and before the next block's inputs are
made, so ``prune_model`` and the checkpoint stream both get it. The teacher is the dense block's
output on the *same* inputs as the student (captured before pruning); in sequential mode those
inputs are the pruned model's hidden states, in one-pass mode the dense model's.

What is trained: the block's pruned Linear/Conv1D weights (the selected ones), nothing else. The
mask is every weight that is zero right after pruning: gradients are masked before each Adam step
and the weights re-masked after it, so pruned weights stay exactly ``+0.0`` and the counts of the
report do not change.

The settings: :class:`pruneplug.ReconstructSettings` (:mod:`pruneplug.reconstruction.block`).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator, Sequence

import torch

from pruneplug.reconstruction.block import ReconstructSettings

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


@contextlib.contextmanager
def _training(block: Any, weights: Sequence[torch.Tensor]) -> Iterator[None]:
    """Gradients for ``weights`` only, the block in eval mode (no dropout); every parameter's
    ``requires_grad`` and ``.grad`` restored after (a user's model is left as it was)."""
    params = list(block.parameters())
    saved = [(p, p.requires_grad, p.grad) for p in params]
    wanted = {id(w) for w in weights}
    was_training = block.training
    try:
        for p in params:
            p.requires_grad_(id(p) in wanted)
            p.grad = None
        block.eval()
        with torch.enable_grad():
            yield
    finally:
        for p, flag, grad in saved:
            p.requires_grad_(flag)
            p.grad = grad
        block.train(was_training)


def reconstruct_block(block: Any, weights: Sequence[torch.Tensor], run: Callable[[int], torch.Tensor],
                      targets: Any, token_masks: Sequence[torch.Tensor | None], settings: ReconstructSettings,
                      index: int = 0, step: Callable[[str], None] = lambda s: None, *, masked: bool = True) -> dict:
    """Re-fit ``weights`` (the block's pruned weights, in place) so that ``run(i)``, the block's
    hidden-state output on calibration batch ``i``, gives ``targets.get(i)`` (the dense block's;
    ``token_masks[i]``: the batch's real tokens, or None). Returns the losses:
    ``before`` / ``after`` on the training batches, ``held_out_before`` / ``held_out_after`` (None
    without a held-out split), ``best_step`` (the step whose weights were kept, 0 = none),
    ``steps`` and ``seconds``. ``masked=False``: no mask, every entry of ``weights`` is trained
    (a structurally shrunk block, whose removed units are gone rather than zero)."""
    started = time.perf_counter()
    train, held = settings.split(len(token_masks))
    masks = [w.detach() != 0 for w in weights] if masked else []
    generator = torch.Generator().manual_seed(settings.seed + index)

    def loss_of(i: int) -> torch.Tensor:
        return block_loss(run(i), targets.get(i), token_masks[i], settings.loss)

    def mean_loss(indices: Sequence[int]) -> float | None:
        if not indices:
            return None
        with torch.no_grad():
            return sum(float(loss_of(i)) for i in indices) / len(indices)

    with _training(block, weights):
        before, held_before = mean_loss(train), mean_loss(held)
        step(f"reconstructing: loss {before:.4g}")
        optimiser = torch.optim.Adam(list(weights), lr=settings.lr)
        best, best_step = held_before, 0
        kept = [w.detach().clone() for w in weights] if held else None
        every = max(1, settings.steps // 10)
        order: list[int] = []
        for n in range(1, settings.steps + 1):
            optimiser.zero_grad(set_to_none=True)
            chosen = []
            for _ in range(min(settings.batches, len(train))):
                if not order:
                    order = [train[j] for j in torch.randperm(len(train), generator=generator).tolist()]
                chosen.append(order.pop())
            for i in chosen:
                (loss_of(i) / len(chosen)).backward()
            with torch.no_grad():
                for w, mask in zip(weights, masks):
                    if w.grad is not None:
                        w.grad.masked_fill_(~mask, 0.0)
                optimiser.step()
                for w, mask in zip(weights, masks):
                    w.masked_fill_(~mask, 0.0)  # +0.0 exactly, whatever Adam's rounding did
            if held and (n % every == 0 or n == settings.steps):
                now = mean_loss(held)
                if now < best:
                    best, best_step = now, n
                    kept = [w.detach().clone() for w in weights]
        if held:
            with torch.no_grad():
                for w, k in zip(weights, kept):
                    w.copy_(k)
        else:
            best_step = settings.steps
        del optimiser, kept
        after, held_after = mean_loss(train), mean_loss(held)
    result = {"before": before, "after": after, "held_out_before": held_before, "held_out_after": held_after,
              "best_step": best_step, "steps": settings.steps, "seconds": time.perf_counter() - started}
    step(f"reconstructed: loss {before:.4g} -> {after:.4g}"
         + (f" (held-out {held_before:.4g} -> {held_after:.4g})" if held else ""))
    return result

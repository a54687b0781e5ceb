"""Least-squares compensation for dropped blocks (``compensate="refit"`` with ``drop_blocks``).

A pre-norm block adds its MLP's output ``m`` to the residual stream ``a``; a run of blocks
``s..e`` then maps the stream to ``h_e``. With the run dropped, the block before it (``i = s - 1``)
can still carry part of what the run did, for free: a linear map ``T`` [hidden, hidden] applied to
``m`` is the same as ``T^T`` folded into the rows of its MLP's down projection (``W' = T^T W``, and
``b' = T^T b``), no parameter added. ``T`` is the least-squares fit of ``a + m T`` to ``h_e`` over
the calibration tokens, pulled towards the identity (no change) by ``damping``:

    T = (M^T M + d I)^-1 (M^T (H_e - A) + d I),   d = damping * mean(diag(M^T M))

``M`` = block ``i``'s MLP outputs, ``A`` = its output less them, ``H_e`` = block ``e``'s output, all
from the dense model. This is the training-free variant of ReplaceMe (Shopkhoev et al., "ReplaceMe:
Network Simplification via Depth Pruning and Linear Transformations", 2025), which estimates a
linear map for the removed span and merges it into the preceding block's MLP.

It needs a second calibration pass, over blocks ``0 .. e`` of the last run only (the runs are known
once every block is measured), holding one run's ``M`` at a time beside the hidden states, and two
``[hidden, hidden]`` float64 sums per run. Post-norm blocks (BERT: the residual sum goes through a
LayerNorm) have no such fold and are refused when the plan is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch


def runs(dropped: Sequence[int]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive dropped blocks, as (first, last)."""
    out: list[list[int]] = []
    for b in sorted(dropped):
        if out and out[-1][1] == b - 1:
            out[-1][1] = b
        else:
            out.append([b, b])
    return [(s, e) for s, e in out]


@dataclass
class _RunSums:
    """``M^T M`` and ``M^T (H_e - A)`` of one run, and the held ``M`` and ``A`` per batch until
    block ``e`` is reached."""

    gram: torch.Tensor | None = None
    cross: torch.Tensor | None = None
    mlp_out: dict | None = None
    rest: dict | None = None


def fold_matrix(gram: torch.Tensor, cross: torch.Tensor, damping: float) -> torch.Tensor:
    """The damped least-squares map ``T`` (module docstring), float64."""
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    d = damping * float(gram.diagonal().mean()) if float(gram.diagonal().mean()) > 0 else damping
    return torch.linalg.solve(gram + d * eye, cross + d * eye)


def fold_into(weight: torch.Tensor, fold: torch.Tensor, conv1d: bool) -> torch.Tensor:
    """``weight`` of the down projection (Linear ``[hidden, inner]`` or Conv1D ``[inner, hidden]``)
    with ``T`` folded into its outputs, in the weight's dtype."""
    w = weight.detach().to(torch.float64)
    t = fold.to(device=w.device, dtype=torch.float64)
    return (w @ t if conv1d else t.T @ w).to(weight.dtype)


def fold_bias(bias: torch.Tensor, fold: torch.Tensor) -> torch.Tensor:
    t = fold.to(device=bias.device, dtype=torch.float64)
    return (bias.detach().to(torch.float64) @ t).to(bias.dtype)


def _flat(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
        x = x[mask.to(x.device)]
    return x.reshape(-1, x.shape[-1]).to(torch.float64)


def measure_folds(model: Any, blocks: Sequence[Any], batches: Sequence[Any], dropped: Sequence[int], down: str,
                  damping: float, *, load: Callable[[int], None] = lambda i: None,
                  unload: Callable[[int], None] = lambda i: None, capture: Callable[[Any], list] | None = None,
                  device: Any = None) -> dict[int, torch.Tensor]:
    """The second pass (module docstring): block index ``i`` (the block before each run) -> ``T``
    (float32, on the CPU). Runs starting at block 0 have no block before them and get none."""
    from pruneplug.torch.blockwise import Activations, capture_block_inputs

    spans = [(s, e) for s, e in runs(dropped) if s > 0]
    if not spans:
        return {}
    before = {s - 1: (s, e) for s, e in spans}
    ends = {e: s - 1 for s, e in spans}
    sums: dict[int, _RunSums] = {}
    activations = Activations()
    with torch.no_grad():
        calls = capture(activations) if capture is not None else capture_block_inputs(
            model, blocks[0], batches, activations, device=device)
    for i in range(max(e for _, e in spans) + 1):
        load(i)
        try:
            block = blocks[i]
            held: dict[int, torch.Tensor] = {}
            current: list[int] = [0]
            handle = None
            if i in before:
                handle = dict(block.named_modules())[down].register_forward_hook(
                    lambda mod, args, out: held.__setitem__(current[0], out.detach()))
            outputs = Activations()
            try:
                with torch.no_grad():
                    for b, call in enumerate(calls):
                        current[0] = b
                        outputs.put_output(b, call.run(block, activations.get(b)))
            finally:
                if handle is not None:
                    handle.remove()
        finally:
            unload(i)
        if i in before:
            run = sums.setdefault(i, _RunSums(mlp_out={}, rest={}))
            for b, call in enumerate(calls):
                m = _flat(held[b], call.token_mask)
                a = _flat(outputs.get(b), call.token_mask) - m
                run.gram = m.T @ m if run.gram is None else run.gram.addmm_(m.T, m)
                run.cross = -(m.T @ a) if run.cross is None else run.cross.addmm_(m.T, a, alpha=-1)
                run.mlp_out[b] = m
        if i in ends:
            run = sums[ends[i]]
            for b, call in enumerate(calls):
                run.cross.addmm_(run.mlp_out.pop(b).T, _flat(outputs.get(b), call.token_mask))
        activations = outputs
    return {i: fold_matrix(run.gram, run.cross, damping).to(torch.float32).cpu() for i, run in sums.items()}

"""``pruneplug example``: the Aprender magnitude-pruning walkthrough, every number computed.

A 16->8 linear layer with Kaiming-uniform weights; L1 and L2 importance with statistics; a 50%
unstructured mask; a 2:4 mask on an 8->8 layer (16 groups of 4, as in Aprender's example); the
mask applied; a summary box.
"""

from __future__ import annotations

import math
from typing import TextIO

import numpy as np

import pruneplug as pp


def kaiming_uniform(out_features: int, in_features: int, rng: np.random.Generator) -> np.ndarray:
    """He/Kaiming uniform init for a ReLU layer: U(-b, b) with b = sqrt(6 / fan_in)."""
    bound = math.sqrt(6.0 / in_features)
    return rng.uniform(-bound, bound, size=(out_features, in_features)).astype(np.float32)


def count_valid_nm_groups(mask: np.ndarray, n: int, m: int) -> tuple[int, int]:
    """How many groups of ``m`` along the last axis keep exactly ``n`` entries, and how many groups."""
    kept = mask.reshape(-1, m).sum(axis=1)
    return int((kept == n).sum()), int(kept.size)


def run_example(seed: int = 42, backend: str | None = None, stream: TextIO | None = None) -> dict:
    """Print the walkthrough to ``stream`` and return its numbers (for tests)."""
    out = stream.write if stream is not None else (lambda s: None)
    rng = np.random.default_rng(seed)
    weights = kaiming_uniform(8, 16, rng)
    total = int(weights.size)
    result: dict = {"seed": seed, "total": total}

    out(_box(["Magnitude pruning with pruneplug", "prune weights by magnitude (Aprender's walkthrough)"]))
    out(f"\nLinear layer 16 -> 8 (Kaiming-uniform, seed {seed})\n")
    out(f"   weight shape: {weights.shape}, parameters: {total}\n")

    for importance in (pp.MagnitudeImportance.l1(), pp.MagnitudeImportance.l2()):
        scores = importance.compute(weights, backend=backend)
        out(f"\n{importance.method.upper()} magnitude importance\n   method: {scores.method}\n")
        for field in ("min", "max", "mean", "std"):
            out(f"     {field + ':':<6}{getattr(scores.stats, field):.6f}\n")
        result[importance.method] = scores.stats
        if importance.method == "l1":
            l1_scores = scores

    mask = pp.generate_unstructured_mask(l1_scores, 0.5, backend=backend)
    out("\nUnstructured mask, 50% sparsity\n")
    out(f"   achieved sparsity: {mask.sparsity * 100:.1f}%\n")
    out(f"   kept (nnz): {mask.nnz}   pruned: {mask.num_zeros}\n")
    result["unstructured"] = (mask.sparsity, mask.nnz, mask.num_zeros)

    nm_weights = kaiming_uniform(8, 8, rng)
    nm_mask = pp.generate_nm_mask(pp.importance(nm_weights, backend=backend), 2, 4, backend=backend)
    valid, groups = count_valid_nm_groups(nm_mask.data, 2, 4)
    out("\n2:4 mask on an 8 -> 8 layer (keep 2 of every 4 inputs)\n")
    out(f"   achieved sparsity: {nm_mask.sparsity * 100:.1f}%\n")
    out(f"   Valid 2:4 groups: {valid}/{groups}\n")
    result["nm"] = (nm_mask.sparsity, valid, groups)

    pruned = mask.apply(weights.copy(), backend=backend)
    zeros = int((pruned == 0).sum())
    out("\nApplying the unstructured mask\n")
    out(f"   zeros after pruning: {zeros} ({zeros / total * 100:.1f}%)\n\n")
    result["zeros_after"] = zeros

    out(_box([
        "Pruning summary",
        None,
        f"original parameters:  {total:>6}",
        f"pruned parameters:    {zeros:>6} ({mask.sparsity * 100:.0f}% reduction)",
        f"remaining parameters: {total - zeros:>6}",
    ]))
    return result


def _box(lines: list[str | None], width: int = 62) -> str:
    """A box drawn with box-drawing characters; ``None`` is a separator line."""
    rows = ["╔" + "═" * width + "╗"]
    for line in lines:
        rows.append("╠" + "═" * width + "╣" if line is None else "║  " + line.ljust(width - 2) + "║")
    rows.append("╚" + "═" * width + "╝")
    return "\n".join(rows) + "\n"

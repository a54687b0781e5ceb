"""``magnitude``: a unit's importance is the L2 norm of all its weights (no calibration).

A neuron: its rows of gate/up (or fc) and its column of down; a head: its q rows and its o_proj
columns; a routed MoE expert: its gate, up and down matrices (not its router row). Source: the weight-norm baseline of structured pruning (Li et al., "Pruning Filters for
Efficient ConvNets", 2017, applied to transformer units as in LLM-Pruner's baselines)."""

from __future__ import annotations

import numpy as np

from pruneplug.structured.criteria.base import UnitCriterion, column_sq_norms, per_head


def _row_sq_norms(rows: np.ndarray) -> np.ndarray:
    rows = rows.astype(np.float64, copy=False)
    return (rows * rows).sum(axis=1)


class Magnitude(UnitCriterion):
    """L2 norm of the unit's weights."""

    name = "magnitude"
    units = frozenset({"neuron", "head", "expert"})

    def neuron_scores(self, weights, stats):
        return np.sqrt(_row_sq_norms(weights["rows"]) + column_sq_norms(weights["down"]))

    def head_scores(self, weights, stats, head_dim):
        return np.sqrt(_row_sq_norms(weights["rows"]) + per_head(column_sq_norms(weights["out"]), head_dim))

    def expert_scores(self, weights, stats):
        scores = np.zeros(weights.count)
        for j in range(weights.count):  # one expert's matrices at a time
            scores[j] = np.sqrt(sum(float(_row_sq_norms(m).sum()) for m in weights.load_expert(j).values()))
        return scores

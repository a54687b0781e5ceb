"""``activation``: Minitron's activation-based importance (Muralidharan et al., "Compact Language
Models via Pruning and Knowledge Distillation", 2024): a neuron's score is the mean ``|a|`` of its
activation (the input of down_proj) over the calibration tokens; a head's is the L2 norm of its
output (its ``head_dim`` features of o_proj's input) over the tokens."""

from __future__ import annotations

import numpy as np

from pruneplug.structured.criteria.base import UnitCriterion, per_head


class Activation(UnitCriterion):
    """Minitron: mean |activation| per neuron, L2 of the output per head."""

    name = "activation"
    units = frozenset({"neuron", "head"})
    needs_calibration = True

    def neuron_scores(self, weights, stats):
        stats = self.require_stats(stats)
        return stats.mean_abs

    def head_scores(self, weights, stats, head_dim):
        stats = self.require_stats(stats)
        return np.sqrt(per_head(stats.sq_sum, head_dim))

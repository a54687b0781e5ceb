"""``flap``: FLAP's fluctuation metric (An et al., "Fluctuation-based Adaptive Structured Pruning
for Large Language Models", AAAI 2024): a channel's score is the variance of its input over the
calibration tokens times the squared norm of the output-weight column it feeds (down_proj for a
neuron; o_proj's columns, summed per head, for a head). A channel that barely fluctuates can be
replaced by its mean, which is what ``compensate="bias"`` does."""

from __future__ import annotations

from pruneplug.structured.criteria.base import UnitCriterion, column_sq_norms, per_head


class Flap(UnitCriterion):
    """Variance of the channel x squared norm of its output column."""

    name = "flap"
    units = frozenset({"neuron", "head"})
    needs_calibration = True

    def neuron_scores(self, weights, stats):
        stats = self.require_stats(stats)
        return stats.variance * column_sq_norms(weights["down"])

    def head_scores(self, weights, stats, head_dim):
        stats = self.require_stats(stats)
        return per_head(stats.variance * column_sq_norms(weights["out"]), head_dim)

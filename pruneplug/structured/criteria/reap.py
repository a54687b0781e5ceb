"""``reap``: REAP, Router-weighted Expert Activation Pruning (Lasby et al., "REAP the Experts: Why
Pruning Prevails for One-Shot MoE Compression", 2025, arXiv:2510.13999). The saliency of routed expert j
is the mean, over the calibration tokens that route to j (j in their top-k), of the router's
weight for j times the L2 norm of j's output::

    S_j = 1/|X_j| * sum_{x in X_j} g_j(x) * ||f_j(x)||_2

``g_j(x)`` is the weight the forward multiplies f_j(x) by (after the model's own top-k
renormalisation, e.g. ``norm_topk_prob``). An expert no calibration token routes to scores 0.
The experts of lowest saliency go; the paper finds pruning them beats merging them for
generative tasks."""

from __future__ import annotations

import numpy as np

from pruneplug.structured.criteria.base import UnitCriterion


class Reap(UnitCriterion):
    """Mean router weight x expert output norm over the tokens routed to the expert."""

    name = "reap"
    units = frozenset({"expert"})
    needs_calibration = True

    def expert_scores(self, weights, stats):
        stats = self.require_stats(stats)
        tokens = np.asarray(stats.tokens, dtype=np.float64)
        return np.where(tokens > 0, stats.reap_sum / np.maximum(tokens, 1.0), 0.0)

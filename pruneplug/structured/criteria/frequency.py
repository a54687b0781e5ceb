"""``frequency``: how many calibration tokens route to a routed expert (it is in their top-k); the
least used experts go. The common baseline of expert pruning: it ignores how much an expert's
output weighs, which is what REAP (:mod:`.reap`) adds."""

from __future__ import annotations

import numpy as np

from pruneplug.structured.criteria.base import UnitCriterion


class Frequency(UnitCriterion):
    """Tokens routed to the expert."""

    name = "frequency"
    units = frozenset({"expert"})
    needs_calibration = True

    def expert_scores(self, weights, stats):
        stats = self.require_stats(stats)
        return np.asarray(stats.tokens, dtype=np.float64)

"""``angular``: Gromov et al. ("The Unreasonable Ineffectiveness of the Deeper Layers", 2024): drop
the run of ``n`` consecutive blocks whose input and output hidden states have the smallest mean
angular distance ``arccos(cos)/pi`` over the calibration tokens (ties: the earlier run)."""

from __future__ import annotations

import math

from pruneplug.structured.criteria.base import UnitCriterion


class Angular(UnitCriterion):
    """Drop the contiguous run of ``count`` blocks with the smallest angular distance."""

    name = "angular"
    units = frozenset({"block"})
    needs_calibration = True

    def choose_blocks(self, measured, count, allowed):
        allowed_set = set(allowed)
        best: tuple[float, int] | None = None
        for start in range(measured.angle.shape[0]):
            run = range(start, start + count)
            if not all(i in allowed_set for i in run):
                continue
            d = float(measured.angle[start, count - 1])
            if math.isnan(d):
                continue
            if best is None or d < best[0]:
                best = (d, start)
        if best is None:
            return []
        return list(range(best[1], best[1] + count))

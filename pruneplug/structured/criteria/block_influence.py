"""``block_influence``: ShortGPT's Block Influence (Men et al., "ShortGPT: Layers in Large Language
Models are More Redundant Than You Expect", 2024): BI = 1 - mean cosine between the hidden states
entering and leaving a block, over the calibration tokens; the blocks with the lowest BI go,
chosen independently."""

from __future__ import annotations

import numpy as np

from pruneplug.structured.criteria.base import UnitCriterion


class BlockInfluence(UnitCriterion):
    """Drop the ``count`` blocks of lowest BI."""

    name = "block_influence"
    units = frozenset({"block"})
    needs_calibration = True

    def choose_blocks(self, measured, count, allowed):
        bi = 1.0 - measured.cosine[:, 0]
        order = sorted(allowed, key=lambda i: (bi[i], i))
        return sorted(order[:count])

    @staticmethod
    def influence(measured) -> np.ndarray:
        return 1.0 - measured.cosine[:, 0]

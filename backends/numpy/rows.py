"""Per-row exact selection, the reference (``pruneplug_row_mask``): a stable sort of each row."""

from __future__ import annotations

import numpy as np

from pruneplug.hookspecs import hookimpl
from pruneplug_backends.numpy.scores import scores_of  # the reference's one scoring rule


@hookimpl
def pruneplug_row_mask(values: np.ndarray, k: int, transform: str, out=None) -> np.ndarray:
    scores = scores_of(values, transform)
    rows = scores.shape[0]
    # Stable ascending sort of each row: equal scores keep column order, so the lower column
    # index is pruned first (-0.0 and +0.0 compare equal).
    order = np.argsort(scores, axis=1, kind="stable")
    keep = np.ones(scores.shape, dtype=bool)
    keep[np.arange(rows)[:, None], order[:, :k]] = False
    if out is None:
        return keep
    out[...] = keep
    return out

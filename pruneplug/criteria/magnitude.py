"""Magnitude criteria: ``magnitude_l1`` (``|w|``) and ``magnitude_l2`` (``w*w``), no calibration."""

from __future__ import annotations

from typing import Any

from pruneplug import api
from pruneplug.criteria.base import Criterion


class MagnitudeL1(Criterion):
    """``|w|`` through the backends' importance operation (Aprender's ``MagnitudeImportance::l1``).

    Example::

        >>> import numpy as np, pruneplug as pp
        >>> pp.criteria.get_criterion("magnitude_l1").compute(np.array([-3.0, 1.0])).values
        array([3., 1.])
    """

    name = "magnitude_l1"
    method = "l1"  # the core's magnitude method (pp.importance / pp.prune)

    def compute(self, weights: Any, calibration: Any = None, *, layer: str | None = None,
                backend: str | None = None) -> Any:
        return api.importance(weights, self.method, backend=backend)


class MagnitudeL2(MagnitudeL1):
    """``w*w`` (Aprender's ``MagnitudeImportance::l2``)."""

    name = "magnitude_l2"
    method = "l2"

"""Magnitude criteria: ``magnitude_l1`` (``|w|``) and ``magnitude_l2`` (``w*w``), no calibration;
:class:`MagnitudeImportance` is Aprender's name for both."""

from __future__ import annotations

from typing import Any

from pruneplug import api
from pruneplug.criteria.base import Criterion
from pruneplug.types import ImportanceScores
from pruneplug.validation import METHODS, check_method


class MagnitudeImportance(Criterion):
    """Aprender's ``MagnitudeImportance``: ``MagnitudeImportance.l1()`` (``|w|``) or ``.l2()``
    (``w*w``), through the backends' importance operation.

    Example::

        >>> import numpy as np, pruneplug as pp
        >>> pp.MagnitudeImportance.l1().compute(np.array([-3.0, 1.0])).values
        array([3., 1.])
    """

    def __init__(self, method: str = "l1") -> None:
        check_method(method)
        self.method = method  # the core's magnitude method (pp.importance / pp.prune)

    @classmethod
    def l1(cls) -> "MagnitudeImportance":
        return cls("l1")

    @classmethod
    def l2(cls) -> "MagnitudeImportance":
        return cls("l2")

    @property
    def name(self) -> str:  # type: ignore[override]  (the criterion's name follows its method)
        return METHODS[self.method][1]

    def compute(self, weights: Any, calibration: Any = None, *, layer: str | None = None,
                backend: str | None = None) -> ImportanceScores:
        """Scores of ``weights``; ``calibration`` and ``layer`` are accepted for API parity and ignored."""
        return api.importance(weights, self.method, backend=backend)

    def __repr__(self) -> str:
        return f"MagnitudeImportance.{self.method}()"


class MagnitudeL1(MagnitudeImportance):
    """``|w|``: the criterion registered as ``magnitude_l1`` (alias ``l1``).

    Example::

        >>> import numpy as np, pruneplug as pp
        >>> pp.criteria.get_criterion("magnitude_l1").compute(np.array([-3.0, 1.0])).values
        array([3., 1.])
    """

    def __init__(self) -> None:
        super().__init__("l1")


class MagnitudeL2(MagnitudeImportance):
    """``w*w``: the criterion registered as ``magnitude_l2`` (alias ``l2``)."""

    def __init__(self) -> None:
        super().__init__("l2")

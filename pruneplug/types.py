"""Value types of the public API: importance scores, masks (and, re-exported from
:mod:`pruneplug.backend_info`, backend declarations)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pruneplug.arrays import FLOAT_DTYPES, adapt  # FLOAT_DTYPES: also read from here by backends
from pruneplug.backend_info import OPERATIONS, BackendInfo, BackendStatus, implemented_operations  # noqa: F401  (backends import them from here)
from pruneplug.apply import apply_bool_mask


@dataclass(frozen=True)
class ScoreStats:
    """Statistics of importance scores (Python floats; ``std`` is the population std)."""

    min: float
    max: float
    mean: float
    std: float


@dataclass(frozen=True)
class ImportanceScores:
    """Importance scores: ``values`` (same array type and shape as the weights), the ``method``
    (``"magnitude_l1"`` or ``"magnitude_l2"``) and their ``stats``.

    Example::

        >>> import numpy as np, pruneplug as pp
        >>> s = pp.importance(np.array([-2.0, 1.0], dtype=np.float32), method="l1")
        >>> s.method, s.stats.max
        ('magnitude_l1', 2.0)
    """

    values: Any
    method: str
    stats: ScoreStats


@dataclass(frozen=True, eq=False)
class Mask:
    """A keep-mask: ``data`` is a ``bool`` array (``True`` = keep) of the scores' array type.

    Example::

        >>> import numpy as np, pruneplug as pp
        >>> w = np.array([[0.1, -3.0, 0.2, 4.0]], dtype=np.float32)
        >>> m = pp.generate_nm_mask(pp.importance(w), 2, 4)
        >>> m.pattern, m.nnz, m.sparsity
        ('2:4', 2, 0.5)
        >>> m.apply(w)
        array([[ 0., -3.,  0.,  4.]], dtype=float32)
    """

    data: Any
    pattern: str
    backend: str | None = None
    _counts: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def size(self) -> int:
        """Number of entries. From the shape, which every array type has as a tuple of ints
        (``size`` is an int on NumPy/CuPy arrays but a method on PyTorch tensors)."""
        return math.prod(int(s) for s in self.data.shape)

    @property
    def nnz(self) -> int:
        """Number of kept entries."""
        if "nnz" not in self._counts:
            self._counts["nnz"] = int(self.data.sum())
        return self._counts["nnz"]

    @property
    def num_zeros(self) -> int:
        """Number of pruned entries."""
        return self.size - self.nnz

    @property
    def sparsity(self) -> float:
        """Fraction of entries pruned (0.0 for an empty mask)."""
        return self.num_zeros / self.size if self.size else 0.0

    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape)

    def apply(self, weights: Any, *, backend: str | None = None) -> Any:
        """Set the pruned entries of ``weights`` to ``+0.0`` in place and return ``weights``."""
        return apply_bool_mask(self.data, weights, backend=backend)

    def to_float(self, dtype: Any = "float32") -> Any:
        """The mask as numbers: 1.0 keep, 0.0 prune (Aprender's representation)."""
        adapted = adapt(self.data, "mask")
        return adapted.wrap(adapted.array.astype(dtype))

    def __repr__(self) -> str:
        return (
            f"Mask(pattern={self.pattern!r}, shape={self.shape}, nnz={self.nnz}, "
            f"sparsity={self.sparsity:.4f}, backend={self.backend!r})"
        )

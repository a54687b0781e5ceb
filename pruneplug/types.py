"""Value types of the public API: backend declarations, importance scores, masks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, FrozenSet

#: Every operation name a backend may declare (the hook names without ``pruneplug_``).
OPERATIONS: FrozenSet[str] = frozenset(
    {
        "importance",
        "unstructured_mask",
        "nm_mask",
        "block_mask",
        "apply_mask",
        "prune_unstructured",
        "prune_nm",
        "compress_24",
        "decompress_24",
        "prune_compress_24",
        "row_mask",
    }
)

#: Dtypes magnitude pruning accepts.
FLOAT_DTYPES: FrozenSet[str] = frozenset({"float16", "bfloat16", "float32", "float64"})


@dataclass(frozen=True)
class BackendInfo:
    """What a backend declares about itself through ``pruneplug_backend_info``.

    Example::

        BackendInfo(name="mine", priority=50, array_types={"numpy"},
                    dtypes={"float32"}, operations={"unstructured_mask", "apply_mask"})
    """

    name: str
    priority: int = 0
    array_types: FrozenSet[str] = frozenset({"numpy"})
    dtypes: FrozenSet[str] = FLOAT_DTYPES
    operations: FrozenSet[str] = frozenset()
    available: bool = True
    reason: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        # Accept any iterable of names; store frozensets so the info is hashable and immutable.
        for name in ("array_types", "dtypes", "operations"):
            object.__setattr__(self, name, frozenset(getattr(self, name)))
        unknown = self.operations - OPERATIONS
        if unknown:
            raise ValueError(
                f"BackendInfo(name={self.name!r}): unknown operations {sorted(unknown)}; "
                f"expected a subset of {sorted(OPERATIONS)}"
            )

    def supports(self, array_type: str, dtype: str, operation: str) -> bool:
        return array_type in self.array_types and dtype in self.dtypes and operation in self.operations


@dataclass(frozen=True)
class BackendStatus:
    """One row of :func:`pruneplug.backends`: a backend's declaration plus where it came from."""

    name: str
    available: bool
    reason: str | None
    priority: int
    array_types: FrozenSet[str]
    dtypes: FrozenSet[str]
    operations: FrozenSet[str]
    plugin: str
    error: str | None = None


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
        return int(self.data.size)

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
        from pruneplug.api import apply_mask

        return apply_mask(self, weights, backend=backend)

    def to_float(self, dtype: Any = "float32") -> Any:
        """The mask as numbers: 1.0 keep, 0.0 prune (Aprender's representation)."""
        from pruneplug.arrays import adapt

        adapted = adapt(self.data, "mask")
        return adapted.wrap(adapted.array.astype(dtype))

    def __repr__(self) -> str:
        return (
            f"Mask(pattern={self.pattern!r}, shape={self.shape}, nnz={self.nnz}, "
            f"sparsity={self.sparsity:.4f}, backend={self.backend!r})"
        )

"""What a backend declares about itself (:class:`BackendInfo`, the :data:`OPERATIONS` it may
implement) and what :func:`pruneplug.backends` reports (:class:`BackendStatus`).

Its own module, below the registry: the registry reads these declarations, and the value types
(:mod:`pruneplug.types`, whose ``Mask.apply`` calls a backend through the registry) sit above it.
``pruneplug.types`` re-exports every name, the import path backends use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, FrozenSet

from pruneplug.arrays import FLOAT_DTYPES

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
        "key_histogram",
        "count_zeros",
        "prune_below_key",
        "row_mask",
    }
)


def implemented_operations(plugin: Any) -> FrozenSet[str]:
    """The operations of :data:`OPERATIONS` that ``plugin`` (a module, class or object) implements
    with a ``@pruneplug.hookimpl`` function ``pruneplug_<operation>``: what a backend declares, read
    from its hooks so that the declaration and the implementation cannot drift apart.

    Example::

        >>> import pruneplug_backends.numpy as reference
        >>> sorted(implemented_operations(reference))[:3]
        ['apply_mask', 'block_mask', 'compress_24']
    """
    return frozenset(op for op in OPERATIONS if hasattr(getattr(plugin, f"pruneplug_{op}", None), "pruneplug_impl"))


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

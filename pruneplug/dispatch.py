"""Running one operation on the backend the registry selects for an array: the one call every
front end's dispatch goes through."""

from __future__ import annotations

from typing import Any

from pruneplug.arrays import dtype_name
from pruneplug.registry import get_registry


def run_operation(backend: str | None, operation: str, array: Any, array_type: str, **kwargs: Any) -> tuple[str, Any]:
    """Select a backend for ``array`` (``backend`` by name, or the best available one) and call its
    hook ``pruneplug_<operation>(**kwargs)``; return the backend's name and the hook's result.
    Selection and call use one snapshot of the registry.

    Example::

        >>> import numpy as np
        >>> w = np.array([1.0, -3.0], dtype=np.float32)
        >>> run_operation("numpy", "importance", w, "numpy", weights=w, transform="abs")[0]
        'numpy'
    """
    registry = get_registry().snapshot()  # select and call on the same backends
    name = registry.select(backend, array_type=array_type, dtype=dtype_name(array), operation=operation)
    return name, registry.call(name, operation, **kwargs)

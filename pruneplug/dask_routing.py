"""Routing a call of the array API whose array is a Dask array to :mod:`pruneplug.dask`, which has
a function of the same name and signature. Dask is optional and heavy: it is imported only when a
Dask array comes, and no Dask array can exist before Dask itself is imported."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

from pruneplug.types import ImportanceScores, Mask


def is_dask_array(value: Any) -> bool:
    """Whether ``value`` (or the array inside :class:`~pruneplug.ImportanceScores` or
    :class:`~pruneplug.Mask`) is a Dask array; False at no cost while Dask is not imported.

    Example::

        >>> import numpy as np
        >>> is_dask_array(np.zeros(3))
        False
    """
    if "dask.array" not in sys.modules:
        return False
    inner = value.values if isinstance(value, ImportanceScores) else value.data if isinstance(value, Mask) else value
    return type(inner).__module__.startswith("dask.")


def dask_aware(function: Callable) -> Callable:
    """Decorate an array-API function so that a call whose first array argument (positional, or
    ``weights=``/``scores=``) is a Dask array runs ``pruneplug.dask.<same name>`` instead."""
    @functools.wraps(function)
    def dispatch(*args: Any, **kwargs: Any) -> Any:
        if any(is_dask_array(arg) for arg in (*args[:2], kwargs.get("weights"), kwargs.get("scores"))):
            from pruneplug import dask as dask_api  # here, not at the top: it imports Dask (optional, heavy)

            return getattr(dask_api, function.__name__)(*args, **kwargs)
        return function(*args, **kwargs)
    return dispatch

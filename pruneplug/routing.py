"""The array API that ``pruneplug`` exports: each function runs its in-memory implementation
(:mod:`pruneplug.api`, :mod:`pruneplug.masks`: NumPy, CuPy, PyTorch) or, for a Dask array, the
function of the same name and signature in :mod:`pruneplug.dask`.

Dask is optional and heavy: it is imported only when a Dask array comes, and no Dask array can
exist before Dask itself is imported. This module sits above both implementations, so that
``pruneplug.dask`` (which runs the in-memory functions on each chunk) and the in-memory modules
do not import each other.

Example::

    >>> import numpy as np
    >>> prune(np.array([3.0, -1.0, 2.0, 0.5]), 0.5)
    array([3., 0., 2., 0.])
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

from pruneplug import api, masks
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


def _routed(function: Callable) -> Callable:
    """``function``, except that a call whose first array argument (positional, or
    ``weights=``/``scores=``) is a Dask array runs ``pruneplug.dask.<same name>`` instead."""
    @functools.wraps(function)
    def route(*args: Any, **kwargs: Any) -> Any:
        if "dask.array" in sys.modules and any(  # no Dask array can exist before: one dict lookup per call
                is_dask_array(arg) for arg in (*args[:2], kwargs.get("weights"), kwargs.get("scores"))):
            from pruneplug import dask as dask_api  # here, not at the top: it imports Dask (optional, heavy)

            return getattr(dask_api, function.__name__)(*args, **kwargs)
        return function(*args, **kwargs)
    return route


importance = _routed(api.importance)
prune = _routed(api.prune)
apply_mask = _routed(api.apply_mask)
generate_unstructured_mask = _routed(masks.generate_unstructured_mask)
generate_nm_mask = _routed(masks.generate_nm_mask)
generate_block_mask = _routed(masks.generate_block_mask)
generate_row_mask = _routed(masks.generate_row_mask)
generate_column_mask = _routed(masks.generate_column_mask)

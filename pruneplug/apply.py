"""Applying a bool mask to weights in place: the core that :func:`pruneplug.apply_mask` and
:meth:`pruneplug.Mask.apply` share. It depends only on the array adapters and the dispatch, so that
the value types (:mod:`pruneplug.types`) can use it without importing the user API."""

from __future__ import annotations

from typing import Any

from pruneplug.arrays import adapt, check_float_dtype, check_in_place, contiguous, dtype_name
from pruneplug.dispatch import run_operation
from pruneplug.errors import InvalidArgumentError, ShapeError, UnsupportedDtypeError


def apply_bool_mask(mask_data: Any, weights: Any, *, backend: str | None = None) -> Any:
    """Set the entries of ``weights`` where the bool array ``mask_data`` is False to ``+0.0``, in
    place; return ``weights``. A shape mismatch or a read-only ``weights`` is an error and nothing is
    written.

    Example::

        >>> import numpy as np
        >>> w = np.array([1.0, -2.0, 3.0], dtype=np.float32)
        >>> apply_bool_mask(np.array([True, False, True]), w)
        array([1., 0., 3.], dtype=float32)
    """
    w = adapt(weights, "weights")
    m = adapt(mask_data, "mask")
    check_float_dtype(w.array, "weights")
    if dtype_name(m.array) != "bool":
        raise UnsupportedDtypeError(f"mask: dtype {dtype_name(m.array)} is not supported; expected bool")
    if tuple(m.array.shape) != tuple(w.array.shape):
        raise ShapeError(f"mask shape {tuple(m.array.shape)} does not match weights shape {tuple(w.array.shape)}")
    if m.array_type != w.array_type:
        raise InvalidArgumentError(f"mask is a {m.array_type} array but weights are a {w.array_type} array")
    check_in_place(weights, w, "weights")
    target = contiguous(w.array)
    run_operation(backend, "apply_mask", target, w.array_type, weights=target, mask=contiguous(m.array))
    if target is not w.array:  # a strided view: write the result back through it
        w.array[...] = target
    return weights

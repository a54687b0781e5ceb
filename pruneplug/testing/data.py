"""The kit's test inputs, every one seeded: :func:`tricky_array` (ties, signed zeros, denormals),
:func:`tie_levels` (quantised values, heavy ties), :func:`sparse_24` (weights already 2:4),
:func:`with_layout` (the same values as a C, Fortran, transposed or strided view) and
:func:`np_dtype` (a dtype name, bfloat16 included, as a NumPy dtype).

    >>> w = tricky_array((4, 8), "float32", seed=1)
    >>> w.shape, w.dtype.name, bool(np.signbit(w[w == 0]).any())
    ((4, 8), 'float32', True)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pruneplug.sparse24 import format_of
from pruneplug.testing.harness import Harness

#: The memory layouts :func:`with_layout` builds.
LAYOUTS = ("C", "F", "transposed", "strided")

# A denormal of each dtype (small multiples of it stay denormal).
_DENORMAL = {"float16": 2.0**-20, "bfloat16": 2.0**-130, "float32": 2.0**-140, "float64": 2.0**-1060}


def np_dtype(name: str) -> np.dtype:
    """The NumPy dtype named ``name``; ``"bfloat16"`` is ``ml_dtypes.bfloat16``.

    >>> np_dtype("bfloat16").name, np_dtype("float16").name
    ('bfloat16', 'float16')
    """
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def tricky_array(shape: tuple, dtype: str, seed: int = 0, *, signed: bool = True) -> np.ndarray:
    """Normal values mixed with heavy ties (few levels, +x and -x), signed zeros and denormals.

    >>> a = tricky_array((1000,), "float16", seed=3)
    >>> bool((a == 0).any() and np.signbit(a[a == 0]).any()), bool((np.abs(a[a != 0]) < 2.0**-14).any())
    (True, True)
    """
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape, dtype=np.int64))
    x = rng.standard_normal(size)
    kind = rng.integers(0, 6, size)
    x[kind == 1] = np.round(x[kind == 1] * 2) / 4  # few levels: many exact ties
    x[kind == 2] = 0.0
    x[kind == 3] = -0.0
    x[kind == 4] = _DENORMAL[dtype] * rng.integers(1, 4, int((kind == 4).sum()))
    if not signed:
        x = np.abs(x)
    else:
        x *= np.where(rng.random(size) < 0.5, -1.0, 1.0)
    return x.astype(np_dtype(dtype)).reshape(shape)


def tie_levels(rng: np.random.Generator, shape: int | tuple, dtype: str) -> np.ndarray:
    """Quantised weights: multiples of 1/64 in [-300/64, 300/64), so most values are tied with
    many others (a selection must break each tie by index). Draws from ``rng``.

    >>> x = tie_levels(np.random.default_rng(0), 10_000, "float32")
    >>> len(np.unique(x)) <= 600, bool(np.all(x * 64 == np.round(x * 64)))
    (True, True)
    """
    return (rng.integers(-300, 300, shape) / 64).astype(np_dtype(dtype))


def sparse_24(shape: tuple[int, int], dtype: str, seed: int = 0) -> np.ndarray:
    """A weight that is 2:4 (1:2 for float32) along its rows with groups of 0, 1 and m/2 nonzeros,
    signed zeros in the pruned slots, ties, denormals and a few NaN among the kept values.

    >>> w = sparse_24((2, 16), "float16", seed=1)
    >>> bool((w != 0).reshape(2, 4, 4).sum(axis=2).max() <= 2)
    True
    """
    rng = np.random.default_rng(seed)
    fmt = format_of(dtype)
    rows, cols = shape
    if dtype == "int8":
        x = rng.integers(-128, 128, shape).astype(np.int8)
        x[x == 0] = 1
    else:
        x = tricky_array(shape, dtype, seed)
        x.ravel()[rng.choice(x.size, max(1, x.size // 500), replace=False)] = np.nan
    groups = x.reshape(rows, cols // fmt.m, fmt.m)
    count = np.minimum(rng.integers(0, 4, (rows, cols // fmt.m)), fmt.m // 2)
    rank = np.argsort(np.argsort(rng.random(groups.shape), axis=2), axis=2)
    zero = np.zeros((), np.int8) if dtype == "int8" else np.where(
        rng.random(groups.shape) < 0.5, -0.0, 0.0).astype(np_dtype(dtype))
    return np.ascontiguousarray(np.where(rank < count[..., None], groups, zero).reshape(shape))


def with_layout(harness: Harness, source: np.ndarray, layout: str) -> tuple[np.ndarray, Any]:
    """The same logical array as a NumPy view (for the reference) and as a backend array view.

    ``source`` is a C-contiguous "base"; the layouts (:data:`LAYOUTS`) are views of it: Fortran
    order, a transposed view, a strided slice.

    >>> from pruneplug.testing.harness import harness_for
    >>> ref_view, view = with_layout(harness_for("numpy"), np.arange(12.0).reshape(3, 4), "strided")
    >>> ref_view.tolist() == view.tolist() == [[1.0, 2.0, 3.0], [9.0, 10.0, 11.0]]
    True
    """
    if layout == "C":
        return source, harness.to_backend(source.copy())
    if layout == "F":
        # A Fortran-ordered copy holding the same logical values.
        view = np.asfortranarray(source)
        base = harness.to_backend(np.ascontiguousarray(source.T)).T
        return view, base
    if layout == "transposed":
        view = source.T
        return view, harness.to_backend(source.copy()).T
    if layout == "strided":
        slices = tuple(slice(None, None, 2) if i == 0 else slice(1, None) for i in range(source.ndim))
        return source[slices], harness.to_backend(source.copy())[slices]
    raise ValueError(layout)

"""Test data for the 2:4 tests: random weights that are 2:4 (1:2 for float32) sparse along the last
axis, with groups of 0, 1 and 2 nonzeros, signed zeros everywhere, NaN and denormals among kept
values."""

from __future__ import annotations

import numpy as np

from pruneplug.testing import np_dtype

DTYPES = ("float16", "bfloat16", "float32", "int8")


def group_size(dtype: str) -> int:
    return 2 if dtype == "float32" else 4


def sparse_weight(shape: tuple[int, int], dtype: str, seed: int = 0, *, nan: bool = True) -> np.ndarray:
    """An (m, k) weight with at most m/2 nonzeros per group, every nonzero count represented."""
    rng = np.random.default_rng(seed)
    rows, cols = shape
    m = group_size(dtype)
    size = rows * cols
    if dtype == "int8":
        x = rng.integers(-128, 128, size).astype(np.int8)
        x[x == 0] = 1
        x[rng.random(size) < 0.02] = -128
    else:
        v = rng.standard_normal(size)
        kind = rng.integers(0, 10, size)
        v[kind == 0] = np.round(v[kind == 0])  # ties (and some zeros)
        tiny = {"float16": 2.0**-20, "bfloat16": 2.0**-130, "float32": 2.0**-140}[dtype]
        v[kind == 1] = tiny * np.sign(v[kind == 1] + 0.5)
        if nan:
            v[(kind == 2) & (rng.random(size) < 0.05)] = np.nan
        x = v.astype(np_dtype(dtype))
    groups = x.reshape(rows, cols // m, m)
    # nonzero count per group: 0, 1 or m/2 (mostly m/2, as in a pruned weight)
    count = np.minimum(rng.choice([0, 1, m // 2, m // 2, m // 2], size=(rows, cols // m)), m // 2)
    order = np.argsort(rng.random(groups.shape), axis=2)
    keep = np.argsort(order, axis=2) < count[..., None]
    if dtype == "int8":
        zero = np.zeros((), np.int8)
        out = np.where(keep, groups, zero)
    else:
        signed_zero = np.where(rng.random(groups.shape) < 0.5, -0.0, 0.0).astype(np_dtype(dtype))
        out = np.where(keep, groups, signed_zero)
    return np.ascontiguousarray(out.reshape(rows, cols))


def shapes_for(dtype: str, layout: str, rng: np.random.Generator, count: int) -> list[tuple[int, int]]:
    """Random shapes the layout accepts, small and odd-looking ones first."""
    from pruneplug.sparse24 import format_of

    fmt = format_of(dtype)
    row_step = fmt.row_group if layout == "cutlass" else 1
    col_step = fmt.columns_per_word * (2 if layout == "cutlass" else 1)
    shapes = [(row_step, col_step), (row_step * 2, col_step * 3)]
    while len(shapes) < count:
        shapes.append((row_step * int(rng.integers(1, 6)), col_step * int(rng.integers(1, 9))))
    return shapes

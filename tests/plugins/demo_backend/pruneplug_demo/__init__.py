"""A third-party backend as a plugin author would write it: N:M masks and mask application in
plain NumPy, written independently of pruneplug's reference (pairwise comparisons inside each group
instead of a sort)."""

import numpy as np

import pruneplug as pp
from pruneplug.errors import NonFiniteError


@pp.hookimpl
def pruneplug_backend_info():
    return pp.BackendInfo(
        name="demo",
        priority=-10,  # never chosen by backend="auto" over the built-ins
        array_types={"numpy"},
        dtypes={"float32", "float64"},
        operations={"nm_mask", "apply_mask"},
    )


def _scores(values, transform):
    if transform == "identity":
        bad = np.isnan(values)
    else:
        bad = ~np.isfinite(values)
    if bad.any():
        first = int(np.flatnonzero(bad.ravel())[0])
        raise NonFiniteError.for_values(transform, int(bad.sum()), first)
    if transform == "abs":
        return np.abs(values)
    if transform == "square":
        with np.errstate(over="ignore", under="ignore"):
            return values * values
    return values + 0.0  # a copy; turns -0.0 into +0.0, which ranks the same


@pp.hookimpl
def pruneplug_nm_mask(values, n, m, axis, transform, out):
    scores = _scores(values, transform)
    groups = np.moveaxis(scores, axis, -1)
    groups = groups.reshape(groups.shape[:-1] + (groups.shape[-1] // m, m))
    # Element i of a group is kept when fewer than n elements outrank it: a larger score, or an
    # equal score at a lower index. Pairwise comparisons, no sort.
    a = groups[..., :, None]
    b = groups[..., None, :]
    lower = np.arange(m)[None, :] < np.arange(m)[:, None]  # [i, j]: j < i
    outranked_by = (b > a) | ((b == a) & lower)
    keep = outranked_by.sum(axis=-1) < n
    keep = np.moveaxis(keep.reshape(keep.shape[:-2] + (-1,)), -1, axis)
    if out is not None:
        out[...] = keep
        return out
    return np.ascontiguousarray(keep)


@pp.hookimpl
def pruneplug_apply_mask(weights, mask):
    np.multiply(weights, mask, out=weights)
    weights[~mask] = 0.0  # multiply leaves NaN * 0 = NaN and -x * 0 = -0.0

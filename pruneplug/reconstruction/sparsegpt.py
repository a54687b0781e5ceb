"""SparseGPT: prune a linear layer and update the weights that stay, from its Hessian ``H = X^T X``.

The algorithm (Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
One-Shot", 2023), as implemented here:

1. Dead inputs (``H_jj == 0``) get ``H_jj = 1`` and their weight column is set to 0; damping
   ``damping * mean(diag(H))`` is added to the diagonal (:mod:`pruneplug.reconstruction.hessian`,
   which raises the damping and retries when the factorisation fails).
2. ``U`` = upper Cholesky factor of ``H^-1``. Row ``j`` of ``U`` (from column ``j`` on) is the
   optimal-brain-surgeon update direction for the weights of columns ``>= j`` once columns ``< j``
   are fixed, and ``U_jj^2`` its denominator.
3. Columns are swept left to right in blocks of ``block_size`` (128). At the start of each block the
   mask of the block is chosen on the *current* (already updated) weights by the saliency
   ``w^2 / U_jj^2``: for ``"unstructured"`` the block's share of the pruned count (lowest saliency
   first, ties by lower row-major index in the block; per row with ``groups="row"``); for N:M the
   mask of each group of ``m`` columns is chosen when the sweep reaches it (keep the ``n`` highest,
   ties keep the lower index). Inside the block each column is fixed (pruned weights set to 0),
   its error ``(w - q) / U_jj`` is spread over the block's remaining columns (rank-1 update), and
   after the block the accumulated errors update all later columns at once (the "lazy batch"
   update: one matrix product per block).
4. The result is written in the weight's dtype; pruned positions are exactly ``+0.0``. An update
   that does not fit that dtype (a float16 weight beyond 65504) raises
   :class:`~pruneplug.errors.NonFiniteError` naming the tensor: nothing is returned to write.

Counts are exact: ``"unstructured"`` prunes ``K = round(sparsity * rows * cols)`` weights (per
row ``round(sparsity * cols)`` with ``groups="row"``), spread over the blocks by the integer rule
``c(x) = floor(K * x / cols + 1/2)`` (block ``[i1, i2)`` prunes ``c(i2) - c(i1)``). Dead-input
columns are zeroed but count as pruned only where the mask prunes them (their zero saliency puts
them first), so a layer with dead inputs may hold more zeros than the count.

Precision: ``dtype="float32"`` (default, as the reference) or ``"float64"`` for the
factorisation and the sweep; the Hessian is always damped in float64. Determinism: a fixed order of
operations (no atomics, stable sorts), so the same inputs give the same bits run to run on one
machine and thread count; results on different devices or BLAS libraries agree to round-off
(``docs/sparsegpt.md`` gives the tolerances the tests use).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from pruneplug.errors import InvalidArgumentError, NonFiniteError, ShapeError, UnsupportedDtypeError
from pruneplug.reconstruction.hessian import check_hessian, damped_inverse_factor
from pruneplug.patterns import parse_pattern
from pruneplug.validation import check_groups, check_sparsity, count_to_prune

_DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class SparseGPTResult:
    """What :func:`sparsegpt_prune` returns.

    ``weight``: the updated, pruned weight (same array type, device, dtype and shape as the input);
    ``mask``: ``True`` = kept (same array type); ``pruned``: the number of pruned positions;
    ``damping``: the relative damping used and ``retries`` how often it had to be raised;
    ``dead_inputs``: inputs with a zero Hessian diagonal; ``error``: the summed OBS loss
    ``sum((w - q)^2 / U_jj^2) / 2`` (the reference's "error": an estimate of the increase of
    ``||W X - W' X||^2`` up to the Hessian's scale); ``dtype``: the compute dtype.
    """

    weight: Any
    mask: Any
    pruned: int
    damping: float
    retries: int
    dead_inputs: int
    error: float
    dtype: str


def _to_torch(array: Any, argname: str) -> "tuple[Any, Callable[[Any], Any]]":
    """A torch view of a torch tensor, NumPy array or CuPy array (DLPack), and the way back."""
    import numpy as np
    import torch

    if isinstance(array, torch.Tensor):
        return array.detach(), lambda t: t
    if isinstance(array, np.ndarray):
        if array.dtype.name == "bfloat16":
            import ml_dtypes

            tensor = torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16)
            return tensor, lambda t: t.view(torch.int16).numpy().view(ml_dtypes.bfloat16) if t.dtype == torch.bfloat16 else t.numpy()
        return torch.from_numpy(array), lambda t: t.numpy()
    if type(array).__module__.split(".", 1)[0] == "cupy":
        import cupy

        return torch.from_dlpack(array), lambda t: cupy.from_dlpack(t)
    raise UnsupportedDtypeError(f"{argname}: expected a torch tensor, NumPy array or CuPy array, got {type(array).__name__}")


def _check_weight(weight: Any, name: str) -> None:
    import torch

    if weight.ndim != 2:
        raise ShapeError(f"tensor {name!r}: SparseGPT needs a 2-D weight (out_features x in_features), got shape {tuple(weight.shape)}")
    if weight.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise UnsupportedDtypeError(f"tensor {name!r}: dtype {weight.dtype} is not supported; expected float16, bfloat16, float32 or float64")
    bad = ~torch.isfinite(weight)
    if bool(bad.any()):
        first = int(torch.nonzero(bad.reshape(-1))[0])
        raise NonFiniteError(
            f"tensor {name!r}: weights contain {int(bad.sum())} non-finite value(s) (NaN or Inf), first at flat "
            f"index {first}; SparseGPT needs finite weights", count=int(bad.sum()), first_index=first)


def _check_updated(out: Any, dtype: Any, name: str) -> None:
    """The updated weights must be finite in the weight's dtype: an update that overflows it (float16
    tops out at 65504) is refused, naming the tensor, before anything is written."""
    import torch

    bad = ~torch.isfinite(out)
    if bool(bad.any()):
        first = int(torch.nonzero(bad.reshape(-1))[0])
        raise NonFiniteError(
            f"tensor {name!r}: the SparseGPT update overflows {str(dtype).removeprefix('torch.')} in {int(bad.sum())} "
            f"weight(s), first at flat index {first}; nothing was written (prune a float32 copy, or raise the "
            "damping)", count=int(bad.sum()), first_index=first)


def _parse_pattern(pattern: str, sparsity: Any, groups: str, mask: Any) -> "tuple[int, int] | None":
    """``None`` for unstructured, ``(n, m)`` (keep n of every m) for N:M; validates the combination."""
    check_groups(groups)
    if mask is not None:
        if sparsity is not None or pattern != "unstructured":
            raise InvalidArgumentError("mask= fixes the mask: do not pass sparsity= or pattern= with it")
        return None
    spec = parse_pattern(pattern)
    if spec.kind == "nm":
        if sparsity is not None:
            raise InvalidArgumentError(f"sparsity={sparsity!r} cannot be combined with pattern={pattern!r}: N:M fixes it")
        return spec.n, spec.m
    if spec.kind != "unstructured":
        raise InvalidArgumentError(f"pattern={pattern!r} is not supported; expected 'unstructured' or 'N:M' such as '2:4'")
    if sparsity is None:
        raise InvalidArgumentError("pattern='unstructured' needs sparsity= (a real number in [0, 1])")
    check_sparsity(sparsity)
    return None


def _share(total: int, x: int, cols: int) -> int:
    """``floor(total * x / cols + 1/2)`` in integers: how many of ``total`` fall in columns ``< x``."""
    return (2 * total * x + cols) // (2 * cols)


def _unstructured_keep(scores: Any, k: Any, per_row: bool) -> Any:
    """Keep-mask pruning the ``k`` lowest scores of a block (with ``per_row``: of each row, ``k`` an
    integer tensor of one count per row), ties by lower index."""
    import torch

    keep = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    if per_row:
        order = torch.sort(scores, dim=1, stable=True).indices
        rank = torch.arange(scores.shape[1], device=scores.device)
        return keep.scatter_(1, order, rank[None, :] >= k[:, None])
    if k == 0:
        return keep
    order = torch.sort(scores.reshape(-1), stable=True).indices[:k]
    keep.view(-1)[order] = False
    return keep


def _nm_keep(scores: Any, n: int) -> Any:
    """Keep the ``n`` highest scores of each row of a ``(rows, m)`` group, ties keep the lower index."""
    import torch

    keep = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    if n == 0:
        return keep
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :n]
    return keep.scatter_(1, order, True)


@contextmanager
def _threads(n: "int | None") -> Iterator[None]:
    """torch's CPU thread count set to ``n`` for the block, restored afterwards (``None``: untouched)."""
    import torch

    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _sweep(w1: Any, q1: Any, err1: Any, u1: Any, d1: Any, keep1: Any, keep1t: Any, nm: "tuple[int, int] | None",
           zero: Any) -> None:
    """The column sweep of one block (transposed: row ``i`` of ``w1`` is weight column ``i1 + i``):
    fix each column, record its scaled error, spread the error over the block's later columns."""
    import torch

    for i in range(w1.shape[0]):
        if nm is not None and i % nm[1] == 0:
            g = slice(i, i + nm[1])
            keep1[:, g] = _nm_keep((w1[g] * w1[g] / (d1[g] * d1[g])[:, None]).t(), nm[0])
        col = w1[i]
        q = torch.where(keep1t[i], col, zero)
        e = (col - q) / d1[i]
        q1[i] = q
        err1[i] = e
        if i + 1 < w1.shape[0]:
            w1[i + 1:].addr_(u1[i, i + 1:], e, alpha=-1)


def sparsegpt_prune(weight: Any, hessian: Any, *, sparsity: "float | None" = None, pattern: str = "unstructured",
                    groups: str = "layer", mask: Any = None, count: "int | None" = None, block_size: int = 128,
                    damping: float = 0.01, dtype: str = "float32", max_retries: int = 4,
                    name: str = "weight", sweep_threads: "int | None" = 1) -> SparseGPTResult:
    """Prune ``weight`` (``out_features x in_features``) with SparseGPT and return the updated weight.

    ``hessian``: ``X^T X`` over the layer's calibration inputs (``in_features x in_features``; any
    positive scale, float64 recommended). ``sparsity`` with ``pattern="unstructured"``
    (``groups="layer"``: exact count over the whole weight; ``"row"``: the same count in every
    row), or ``pattern="N:M"`` such as ``"2:4"`` (keep N of every M consecutive inputs of a row),
    or ``mask=`` (``True`` = keep) chosen by any other criterion: then only the weights are updated.
    ``count`` (unstructured, instead of ``sparsity``): prune exactly this many (per-layer sparsities
    such as OWL's); with ``groups="row"`` the first ``count % rows`` rows prune one more.
    ``sweep_threads``: torch CPU threads for the column sweep inside a block (many small rank-1
    updates, where a thread pool costs more than it gains: 4.5 s with 1 thread against 40 s with 2
    for a 384 x 1536 layer on a loaded 2-core machine); the factorisation and the block updates
    use torch's own setting, which is restored afterwards. ``None`` leaves the setting alone.
    Accepts torch tensors on any device (the computation runs there), NumPy arrays and CuPy arrays
    (through DLPack); returns the same type. Nothing is modified in place.

    Example::

        >>> import torch
        >>> from pruneplug.reconstruction import sparsegpt_prune
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(256, 8, generator=g, dtype=torch.float64)
        >>> w = torch.randn(4, 8, generator=g)
        >>> r = sparsegpt_prune(w, x.T @ x, pattern="2:4")
        >>> int((r.weight == 0).sum()), r.pruned, r.retries
        (16, 16, 0)
    """
    import torch

    if count is not None:
        if sparsity is not None or pattern != "unstructured" or mask is not None:
            raise InvalidArgumentError("count= replaces sparsity= for pattern='unstructured' (no mask=)")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise InvalidArgumentError(f"count={count!r} must be an integer >= 0")
        sparsity = 0.0  # validated below; the count decides
    nm = _parse_pattern(pattern, sparsity, groups, mask)
    if dtype not in _DTYPES:
        raise InvalidArgumentError(f"dtype={dtype!r} is not supported; expected 'float32' or 'float64'")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise InvalidArgumentError(f"block_size={block_size!r} must be an integer >= 1")
    w_in, back = _to_torch(weight, "weight")
    h_in, _ = _to_torch(hessian, "hessian")
    _check_weight(w_in, name)
    rows, cols = w_in.shape
    check_hessian(h_in, cols, name)
    keep_in = None
    if mask is not None:
        keep_in, _ = _to_torch(mask, "mask")
        if tuple(keep_in.shape) != (rows, cols):
            raise ShapeError(f"tensor {name!r}: mask shape {tuple(keep_in.shape)} differs from the weight's {(rows, cols)}")
        keep_in = keep_in.to(device=w_in.device, dtype=torch.bool)
    if nm is not None:
        n, m = nm
        if cols % m:
            raise ShapeError(f"tensor {name!r}: {cols} input columns cannot be split into groups of m={m}")
        if block_size % m:
            raise InvalidArgumentError(f"block_size={block_size} must be a multiple of m={m} for pattern={pattern!r}")

    cdtype = torch.float32 if dtype == "float32" else torch.float64
    inv = damped_inverse_factor(h_in.to(w_in.device), damping=damping, dtype=cdtype, max_retries=max_retries, name=name)
    upper = inv.value
    # The sweep runs on the transpose (inputs x outputs, C-contiguous): a weight column is then a
    # contiguous row, and the rank-1 and block updates touch contiguous slabs (a strided column
    # update is several times slower on the CPU).
    wt = w_in.to(cdtype).t().contiguous()
    wt[inv.dead] = 0
    keep = torch.ones((rows, cols), dtype=torch.bool, device=wt.device)
    if count is not None and count > rows * cols:
        raise InvalidArgumentError(f"tensor {name!r}: count={count} exceeds its {rows * cols} weights")
    if nm is not None or keep_in is not None:
        total: Any = 0
    elif groups == "row":  # one count per row (an int64 tensor), spread over the blocks like the layer count
        per_row, extra = divmod(count, rows) if count is not None else (count_to_prune(sparsity, cols), 0)
        total = torch.full((rows,), per_row, dtype=torch.int64, device=wt.device)
        total[:extra] += 1
    else:
        total = count if count is not None else count_to_prune(sparsity, rows * cols)
    error = torch.zeros((), dtype=torch.float64, device=wt.device)
    zero = torch.zeros((), dtype=cdtype, device=wt.device)

    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        w1 = wt[i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        u1 = upper[i1:i2, i1:i2]
        d1 = torch.diagonal(u1)
        if keep_in is not None:
            keep1 = keep_in[:, i1:i2].clone()
        elif nm is None:
            k = _share(total, i2, cols) - _share(total, i1, cols)
            keep1 = _unstructured_keep((w1 * w1 / (d1 * d1)[:, None]).t(), k, groups == "row")
        else:
            keep1 = torch.ones((rows, i2 - i1), dtype=torch.bool, device=wt.device)
        keep1t = keep1.t()
        with _threads(sweep_threads if wt.device.type == "cpu" else None):
            _sweep(w1, q1, err1, u1, d1, keep1, keep1t, nm, zero)
        wt[i1:i2] = q1
        keep[:, i1:i2] = keep1
        error += (err1.to(torch.float64) ** 2).sum() / 2  # in units of H / scale (the factor's own)
        if i2 < cols:
            wt[i2:].addmm_(upper[i1:i2, i2:].t(), err1, alpha=-1)

    w = wt.t()
    out = torch.where(keep, w.to(w_in.dtype), torch.zeros((), dtype=w_in.dtype, device=w.device))
    _check_updated(out, w_in.dtype, name)
    return SparseGPTResult(
        weight=back(out), mask=back(keep), pruned=int((~keep).sum()), damping=inv.damping, retries=inv.retries,
        dead_inputs=int(inv.dead.sum()), error=float(error) * inv.scale, dtype=dtype)

"""Exact global magnitude pruning: per-tensor prune counts from a bounded-memory radix select.

Global pruning in bounded memory
--------------------------------
Global scope prunes exactly ``k = round(sparsity * total)`` weights over all selected tensors, the
``k`` lowest scores in one order: by score, ties by *tensor order*, then by flat C-order index.
Tensor order is the sorted order of the tensor names for checkpoints, and the dict's iteration order
for :func:`global_unstructured_masks`. Scores are the core's (``|w|`` or ``w*w``, float32 for
float16/bfloat16 weights, the weights' dtype otherwise), compared as float64 values, which is exact
across dtypes.

Nothing is concatenated. Scores become 64-bit keys (the float64 bits of a non-negative score order
like the score), and a radix select over 16-bit digits finds the threshold key ``T`` in a few
streaming passes over the tensors, chunk by chunk, holding one 65,536-bin histogram; once the
threshold's bin holds few keys they are gathered and the exact ``T`` is picked. Then per tensor
``k_t = count(score < T)`` plus the ties at ``T`` handed out in tensor order, and each tensor is pruned
by the ordinary exact-``k`` operation (:func:`pruneplug.prune`, on the fastest backend): its stable
order prunes exactly the scores below ``T`` and its first ties. Peak memory is one tensor's
memory-mapped input, its pruned copy and its mask (plus the backend's own working memory for one
tensor), whatever the number of tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from pruneplug import api
from pruneplug.arrays import adapt, check_float_dtype, score_dtype
from pruneplug.checkpoint.formats import _ST_DTYPES, TensorRef, _flat_chunks
from pruneplug.checkpoint.report import ProgressLike, _NullProgress
from pruneplug.errors import InvalidArgumentError, NonFiniteError
from pruneplug.types import Mask
from pruneplug.validation import check_method, check_sparsity


def _score_keys(x: np.ndarray, method: str) -> np.ndarray:
    """The scores of a chunk of weights as uint64 keys (the float64 bits of the non-negative score),
    raising ValueError when a weight is NaN or infinite. Scores are the core's: float32 for 16-bit
    weights, otherwise the weights' dtype (so float32 ``w*w`` is rounded in float32)."""
    x = x.astype(score_dtype(x.dtype), copy=False)
    a = np.abs(x)
    if a.size and not (a.max() <= np.finfo(a.dtype).max):
        raise ValueError("non-finite")
    if method == "l2":
        with np.errstate(over="ignore"):  # a square beyond the dtype's range is +inf, a valid score
            np.multiply(a, a, out=a)
    if a.dtype != np.float64:
        a = a.astype(np.float64)
    return a.view(np.uint64)


def _nonfinite_error(name: str, chunks: Callable[[], Iterator[np.ndarray]], method: str) -> NonFiniteError:
    count, first, seen = 0, -1, 0
    for chunk in chunks():
        bad = ~np.isfinite(chunk.astype(np.float64))
        if bad.any():
            if first < 0:
                first = seen + int(np.flatnonzero(bad)[0])
            count += int(bad.sum())
        seen += chunk.size
    base = NonFiniteError.for_values("abs" if method == "l1" else "square", count, max(first, 0))
    return NonFiniteError(f"tensor {name!r}: {base}", count=count, first_index=max(first, 0))


@dataclass
class _Source:
    """A tensor the global select streams: its name, size and a chunk iterator factory."""

    name: str
    numel: int
    chunks: Callable[[], Iterator[np.ndarray]]
    itemsize: int = 4


@dataclass
class GlobalPlan:
    """The outcome of the global select: how many weights to prune in each tensor, the threshold
    score (float64; ``None`` when nothing or everything is pruned) and the number of passes."""

    counts: list[int]
    threshold: float | None
    passes: int


def _keys_of(source: _Source, method: str, progress: ProgressLike) -> Iterator[np.ndarray]:
    try:
        for chunk in source.chunks():
            progress.update(0, chunk.size * source.itemsize)
            yield _score_keys(chunk, method)
    except ValueError:
        raise _nonfinite_error(source.name, source.chunks, method) from None


def plan_global(sources: Sequence[_Source], sparsity: float, method: str,
                progress: "ProgressLike | None" = None, gather_limit: int | None = None) -> GlobalPlan:
    """Exact per-tensor prune counts for global magnitude pruning (see the module docstring)."""
    progress = progress or _NullProgress()
    total = sum(s.numel for s in sources)
    nbytes = sum(s.numel * s.itemsize for s in sources)
    k = api.count_to_prune(sparsity, total)
    if k == 0 or k == total:
        return GlobalPlan([0 if k == 0 else s.numel for s in sources], None, 0)
    if gather_limit is None:
        # candidates gathered at the end: at most 1 byte per element of the largest tensor (8-byte keys)
        gather_limit = max(1 << 16, max(s.numel for s in sources) // 8)
    rank = k - 1  # 0-based rank of the threshold key among the keys still in play
    prefix, bits, passes = 0, 0, 0
    zeros = [0] * len(sources)
    while True:
        passes += 1
        shift = 48 - bits
        hist = np.zeros(1 << 16, dtype=np.int64)
        progress.start(f"global select, pass {passes}", len(sources), nbytes)
        for t, source in enumerate(sources):
            for keys in _keys_of(source, method, progress):
                if bits == 0:
                    zeros[t] += int(np.count_nonzero(keys == 0))
                else:
                    keys = keys[(keys >> np.uint64(64 - bits)) == np.uint64(prefix)]
                hist += np.bincount(((keys >> np.uint64(shift)) & np.uint64(0xFFFF)).astype(np.intp), minlength=1 << 16)
            progress.update(1, 0)
        progress.close()
        if bits == 0 and rank < sum(zeros):
            # The threshold is a zero score: every tensor's zeros are its ties, nothing is below.
            return _assign(k, [0] * len(sources), zeros, 0.0, passes)
        cum = np.cumsum(hist)
        digit = int(np.searchsorted(cum, rank, side="right"))
        rank -= int(cum[digit - 1]) if digit else 0
        prefix, bits = (prefix << 16) | digit, bits + 16
        if bits == 64 or int(hist[digit]) <= gather_limit:
            break
    rest = 64 - bits
    passes += 1
    below = [0] * len(sources)
    cands: list[np.ndarray] = []
    progress.start("global select, final pass", len(sources), nbytes)
    for t, source in enumerate(sources):
        parts = []
        for keys in _keys_of(source, method, progress):
            top = keys >> np.uint64(rest) if rest else keys
            below[t] += int(np.count_nonzero(top < np.uint64(prefix)))
            parts.append(keys[top == np.uint64(prefix)])
        cands.append(np.concatenate(parts) if parts else np.empty(0, np.uint64))
        progress.update(1, 0)
    progress.close()
    pooled = np.concatenate(cands)
    threshold = np.partition(pooled, rank)[rank]
    del pooled
    less = [b + int(np.count_nonzero(c < threshold)) for b, c in zip(below, cands)]
    ties = [int(np.count_nonzero(c == threshold)) for c in cands]
    return _assign(k, less, ties, float(np.array(threshold, np.uint64).view(np.float64)), passes)


def _assign(k: int, less: list[int], ties: list[int], threshold: float, passes: int) -> GlobalPlan:
    need = k - sum(less)
    counts = []
    for lt, eq in zip(less, ties):
        take = min(eq, need)
        need -= take
        counts.append(lt + take)
    assert need == 0 and sum(counts) == k, "global select lost count"  # an internal invariant
    return GlobalPlan(counts, threshold, passes)


def _source(ref: TensorRef) -> _Source:
    return _Source(ref.name, ref.numel, ref.chunks, _ST_DTYPES[ref.dtype][1])


def _sparsity_for(k: int, n: int) -> float:
    """A sparsity that makes the core prune exactly ``k`` of ``n`` (``round(s*n) == k``)."""
    s = k / n if n else 0.0
    assert api.count_to_prune(s, n) == k
    return s


def global_unstructured_masks(tensors: Mapping[str, Any], sparsity: float, *, method: str = "l1",
                              backend: str | None = None) -> dict[str, Mask]:
    """Exact global magnitude pruning of arrays in memory: masks that prune exactly
    ``round(sparsity * total)`` weights over all ``tensors`` (NumPy arrays or PyTorch CPU tensors),
    the lowest scores first, ties by the dict's iteration order, then by flat index.

    Nothing is concatenated: peak extra memory is one tensor's scores and its mask (plus the
    backend's working memory), whatever the number of tensors. Returns name -> :class:`Mask`
    (``True`` = keep), in the user's array type.

    Example::

        >>> import numpy as np, pruneplug as pp
        >>> masks = pp.global_unstructured_masks({"a": np.array([1.0, 5.0]), "b": np.array([2.0, 1.0])}, 0.5)
        >>> masks["a"].data, masks["b"].data
        (array([False,  True]), array([ True, False]))
    """
    check_method(method)
    check_sparsity(sparsity)
    if not isinstance(tensors, Mapping):
        raise InvalidArgumentError(f"tensors must be a mapping of name -> array, got {type(tensors).__name__}")
    arrays = {}
    for name, value in tensors.items():
        adapted = adapt(value, f"tensors[{name!r}]")
        check_float_dtype(adapted.array, f"tensors[{name!r}]")
        if adapted.array_type != "numpy":
            raise InvalidArgumentError(f"tensors[{name!r}]: only NumPy arrays and CPU tensors are supported here")
        arrays[name] = adapted.array

    def chunker(array: np.ndarray) -> Callable[[], Iterator[np.ndarray]]:
        def chunks() -> Iterator[np.ndarray]:
            return _flat_chunks(array)  # reshape: a view for C-contiguous arrays, a copy otherwise
        return chunks

    sources = [_Source(name, int(a.size), chunker(a), a.dtype.itemsize) for name, a in arrays.items()]
    if not sources:
        return {}
    plan = plan_global(sources, sparsity, method)
    masks = {}
    for (name, value), k_t in zip(tensors.items(), plan.counts):
        n = int(arrays[name].size)
        scores = api.importance(value, method, backend=backend).values
        masks[name] = api.generate_unstructured_mask(scores, _sparsity_for(k_t, n), backend=backend)
        del scores
    return masks

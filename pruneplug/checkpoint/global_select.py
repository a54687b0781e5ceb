"""Global magnitude pruning over many tensors: the drivers of :mod:`pruneplug.selection` for
checkpoints (tensors streamed from disk) and for arrays in memory.

Global scope prunes exactly ``k = round(sparsity * total)`` weights over all selected tensors, the
``k`` lowest scores in one order: by score, ties by *tensor order*, then by flat C-order index.
Tensor order is the sorted order of the tensor names for checkpoints, and the dict's iteration order
for :func:`global_unstructured_masks`. Scores are the core's, compared as float64 values.

Nothing is concatenated: :func:`decide_global` streams every tensor once per digit of the key (one
pass for float16/bfloat16 checkpoints, two for float32, four with float64) through the backend's
key histogram, holding one histogram; then each tensor prunes its keys below the threshold ``T``
and its share of the ties at ``T`` (:func:`pruneplug.selection.prune_part`). Peak memory is one
tensor's memory-mapped input, its pruned copy and its mask, whatever the number of tensors.

The first histogram pass over each tensor also counts its zeros (the same C pass). Where each
tensor's exact count is needed (a per-layer cap to test, a backend without ``prune_below_key``,
files written out of tensor order, a dry run's report), one counting pass (:func:`count_shares`)
gives every tensor's count *and* its share of the ties together, and :func:`plan_capped` keeps
them: no pass is run twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from pruneplug.arrays import adapt, check_float_dtype, dtype_name, float_view
from pruneplug.checkpoint import formats
from pruneplug.checkpoint.formats import ST_DTYPES, TensorRef, flat_chunks
from pruneplug.report import ProgressLike, NullProgress
from pruneplug.errors import InvalidArgumentError, NonFiniteError
from pruneplug.layer_ratios import capped_counts
from pruneplug.registry import get_registry
from pruneplug.selection import ExactSelection, chunk_histogram, mag16_keys, part_counts, prune_part
from pruneplug.types import Mask
from pruneplug.validation import check_method, check_sparsity, resolve_count



def _nonfinite_error(source: "Source", method: str) -> NonFiniteError:
    name = source.name
    count, first, seen = 0, -1, 0
    for chunk in source.chunks():
        if source.raw:
            chunk = float_view(chunk, source.dtype)
        bad = ~np.isfinite(chunk.astype(np.float64))
        if bad.any():
            if first < 0:
                first = seen + int(np.flatnonzero(bad)[0])
            count += int(bad.sum())
        seen += chunk.size
    base = NonFiniteError.for_values(check_method(method), count, max(first, 0))
    return NonFiniteError(f"tensor {name!r}: {base}", count=count, first_index=max(first, 0))


@dataclass
class Source:
    """A tensor the global select streams: its name, size, a chunk iterator factory, its itemsize
    and dtype name (``None``: read from its first chunk); ``raw``: the chunks are the raw bits of
    ``dtype`` floats (:meth:`pruneplug.checkpoint.formats.TensorRef.bits`)."""

    name: str
    numel: int
    chunks: Callable[[], Iterator[np.ndarray]]
    itemsize: int = 4
    dtype: str | None = None
    raw: bool = False
    sample: Callable[[int], np.ndarray] | None = None  # runs -> a sample of the raw bits (a bracket)

    @property
    def bits_of(self) -> str | None:
        """The ``dtype=`` of the selection calls: the float dtype when the chunks are raw bits."""
        return self.dtype if self.raw else None

    def dtype_name(self) -> str | None:
        if self.dtype is None:
            first = next(iter(self.chunks()), None)
            self.dtype = dtype_name(first) if first is not None else None
        return self.dtype


@dataclass
class GlobalPlan:
    """The outcome of the global select: how many weights to prune in each tensor (``None`` until
    the tensors are pruned, when they are counted on the way), the threshold score (float64;
    ``None`` when nothing or everything is pruned), the number of passes, and the decided
    :class:`~pruneplug.selection.ExactSelection` (the last one, when a layer cap made the select
    run again). ``quotas``: with ``counts``, each tensor's share of the ties at ``selection``'s
    ``T`` (its count minus its keys below ``T``), so that it is pruned in one pass
    (:func:`pruneplug.selection.prune_part`); ``None`` for a tensor held at its cap (only its count
    says what to prune)."""

    counts: list[int] | None
    threshold: float | None
    passes: int
    selection: ExactSelection | None = None
    quotas: list[int | None] | None = None
    zeros: list[tuple[int, int] | None] | None = None  # per tensor: zeros and zero scores before (count_zeros)


@dataclass(frozen=True)
class Shares:
    """Each part's exact count to prune under a decided selection and its share of the ties at
    ``T`` (both in part order; ``counts[i] - quotas[i]`` keys of part ``i`` are below ``T``)."""

    counts: list[int]
    quotas: list[int]


def shares_of(selection: ExactSelection, tallies: Sequence[tuple[int, int]]) -> Shares:
    """The :class:`Shares` of parts whose ``(count(key < T), count(key == T))`` are ``tallies``
    (part order): the ties go to the parts in order (:meth:`ExactSelection.tie_quota`).

    Example::

        >>> from pruneplug.selection import ExactSelection
        >>> sel = ExactSelection(k=3, n=6, dtypes=["float32"], transform="abs")
        >>> sel.below, sel.ties, sel._request, sel._digits = 1, 4, None, []   # as if decided
        >>> shares_of(sel, [(1, 1), (0, 0), (0, 3)])
        Shares(counts=[2, 0, 1], quotas=[1, 0, 1])
    """
    quotas = selection.tie_quota([equal for _, equal in tallies])
    return Shares([less + q for (less, _), q in zip(tallies, quotas)], quotas)


def histogram(source: Source, method: str, request: Any, backend: str | None = None,
              progress: "ProgressLike | None" = None, zeros: np.ndarray | None = None) -> np.ndarray:
    """The key histogram of one source for ``request``, summed over its chunks (one pass over it;
    a non-finite weight is an error naming the tensor). ``zeros`` (int64, 2): its zeros and zero
    scores, counted in the same pass."""
    progress = progress or NullProgress()
    total = np.zeros(request.bins, np.int64)
    part = None if zeros is None else np.zeros(2, np.int64)
    if zeros is not None:
        zeros[:] = 0
    try:
        for chunk in source.chunks():
            progress.update(0, chunk.size * source.itemsize)
            total += chunk_histogram(chunk, check_method(method), request, backend=backend, dtype=source.bits_of,
                                     zeros=part)
            if zeros is not None:
                zeros += part
    except NonFiniteError:
        raise _nonfinite_error(source, method) from None
    return total


#: Runs of the global select's key sample (pruneplug.selection.sample_starts), over all tensors:
#: 65,536 keys put rank k within about +-1.2 % of n, a bracket of a few bfloat16 magnitudes.
GLOBAL_SAMPLE_RUNS = 2048


class Brackets:
    """Each source's histogram of the bracket request that decided a selection in one pass
    (:meth:`pruneplug.selection.ExactSelection.bracket_request`): ``2**bits + 2`` counts per
    tensor (at most 1,026), from which its counts below and at ``T`` follow with no counting pass
    (:meth:`~pruneplug.selection.ExactSelection.counts_in_bracket`), and a later selection over
    some of the tensors (a layer cap's second round) is decided again when ``T`` falls inside."""

    def __init__(self) -> None:
        self.request: Any = None
        self.histograms: dict[str, np.ndarray] = {}
        self.passes = 0  # bracket passes run (decided or not)

    def decide(self, selection: ExactSelection, sources: Sequence[Source]) -> bool:
        """Decide ``selection`` over ``sources`` from their kept histograms (no pass), if it can."""
        if self.request is None or any(s.name not in self.histograms for s in sources):
            return False
        merged = sum((self.histograms[s.name] for s in sources), np.zeros(self.request.bins, np.int64))
        return selection.update_bracket(self.request, merged)

    def tallies(self, selection: ExactSelection, sources: Sequence[Source]) -> list[tuple[int, int]] | None:
        """Each source's ``(count(key < T), count(key == T))``, or None when ``T`` is not inside."""
        if self.request is None or selection.k in (0, selection.n) or any(s.name not in self.histograms for s in sources):
            return None
        if selection.threshold_key >> self.request.bits != self.request.prefix:
            return None
        return [selection.counts_in_bracket(self.request, self.histograms[s.name]) for s in sources]


def _one_pass(sources: Sequence[Source], method: str, request: Any, backend: str | None, progress: ProgressLike,
              zeros: dict[str, tuple[int, int]] | None) -> Iterator[tuple[str, np.ndarray]]:
    """Each source's name and histogram of ``request``, one source at a time; the zeros of a source
    not yet in ``zeros`` are counted in the same pass and added there."""
    for source in sources:
        counted = np.zeros(2, np.int64) if zeros is not None and source.name not in zeros else None
        hist = histogram(source, method, request, backend, progress, counted)
        if counted is not None:
            zeros[source.name] = (int(counted[0]), int(counted[1]))
        progress.update(1, 0)
        yield source.name, hist


def _try_bracket(selection: ExactSelection, sources: Sequence[Source], method: str, backend: str | None,
                 progress: ProgressLike, zeros: dict[str, tuple[int, int]] | None, brackets: Brackets) -> bool:
    """One pass that decides ``selection`` when a key sample brackets rank ``k`` (mag16 keys, every
    source sampled); the histograms are kept in ``brackets``. False (the pass wasted, its zeros
    kept) when the sample missed."""
    if selection.keys != "mag16" or any(s.sample is None for s in sources) or not selection.n:
        return False
    total = sum(s.numel for s in sources)
    sample = [s.sample(max(1, round(GLOBAL_SAMPLE_RUNS * s.numel / total))) for s in sources]
    request = selection.bracket_request(np.concatenate(
        [mag16_keys(x, s.dtype, selection.transform) for x, s in zip(sample, sources)]))
    if request is None:
        return False
    progress.start("global select, pass 1 (sampled bracket)", len(sources), sum(s.numel * s.itemsize for s in sources))
    brackets.request, brackets.passes = request, brackets.passes + 1
    brackets.histograms = dict(_one_pass(sources, method, request, backend, progress, zeros))
    progress.close()
    merged = sum(brackets.histograms.values(), np.zeros(request.bins, np.int64))
    if selection.update_bracket(request, merged):
        return True
    brackets.request, brackets.histograms = None, {}
    return False


def decide_global(sources: Sequence[Source], sparsity: float | None, method: str,
                  progress: "ProgressLike | None" = None, backend: str | None = None, *,
                  count: int | None = None, zeros: dict[str, tuple[int, int]] | None = None,
                  brackets: Brackets | None = None) -> ExactSelection:
    """Run the exact selection of ``round(sparsity * total)`` weights over ``sources`` (or of
    exactly ``count``, with ``sparsity=None``) until the threshold is decided (one streaming pass
    per key digit). ``zeros``: a dict that receives each source's zeros and zero scores
    (:func:`pruneplug.selection.count_zeros`), counted in the same pass as its first histogram
    (sources already in it are not counted again). ``brackets``: first try to decide it from the
    kept bracket histograms (no pass), then from a sampled bracket (one narrow pass, kept there);
    the radix passes run only when both miss."""
    progress = progress or NullProgress()
    total = sum(s.numel for s in sources)
    nbytes = sum(s.numel * s.itemsize for s in sources)
    dtypes = [d for d in (s.dtype_name() for s in sources) if d is not None]
    selection = ExactSelection(resolve_count(sparsity, count, total, "weights", "the global select"), total, dtypes,
                               check_method(method))
    if brackets is not None and not selection.decided and (
            brackets.decide(selection, sources)
            or _try_bracket(selection, sources, method, backend, progress, zeros, brackets)):
        return selection
    while (request := selection.next_request()) is not None:
        progress.start(f"global select, pass {selection.passes + 1}", len(sources), nbytes)
        merged = np.zeros(request.bins, np.int64)
        for _, hist in _one_pass(sources, method, request, backend, progress, zeros):
            merged += hist  # summed as it comes: one histogram held, whatever the number of tensors
        progress.close()
        selection.update(merged)
    return selection


def tie_quotas(selection: ExactSelection, sources: Sequence[Source], method: str,
               backend: str | None = None) -> list[int]:
    """Each source's share of the ties at ``T``, in source order. Counting the ties of each source
    (one more pass) is needed only when some but not all of them are pruned."""
    need = selection.k - selection.below
    if need <= 0 or need >= selection.ties:
        return [0 if need <= 0 else s.numel for s in sources]  # none, or every tie (a cap, not a count)
    equal = [tally(source, selection, method, backend)[1] for source in sources]
    return selection.tie_quota(equal)


def tally(source: Source, selection: ExactSelection, method: str, backend: str | None = None) -> tuple[int, int]:
    """``(count(key < T), count(key == T))`` of one source under a decided selection (one pass over
    it; a non-finite weight is an error naming the tensor)."""
    less = equal = 0
    try:
        for chunk in source.chunks():
            lt, eq = part_counts(chunk, check_method(method), selection, backend=backend, dtype=source.bits_of)
            less, equal = less + lt, equal + eq
    except NonFiniteError:
        raise _nonfinite_error(source, method) from None
    return less, equal


def count_shares(selection: ExactSelection, sources: Sequence[Source], method: str,
                 backend: str | None = None) -> Shares:
    """Each source's exact count to prune under a decided selection and its share of the ties
    (one counting pass; none when nothing or everything is pruned)."""
    if selection.k in (0, selection.n):
        everything = [0 if selection.k == 0 else s.numel for s in sources]
        return Shares(everything, [0] * len(sources))
    return shares_of(selection, [tally(s, selection, method, backend) for s in sources])


def plan_capped(k: int, caps: Sequence[int], select: Callable[[Sequence[int], int], tuple[ExactSelection, Shares]]
                ) -> GlobalPlan:
    """The exact global selection of ``k`` weights over parts with no part ``t`` losing more than
    ``caps[t]`` weights (:func:`pruneplug.layer_ratios.capped_counts`; the caps from
    :func:`~pruneplug.layer_ratios.layer_caps`), each round's
    selection and counting pass run by ``select(parts, k_parts)`` (a decided selection of
    ``k_parts`` over the listed parts and their :class:`Shares`) and kept: the first round runs
    once (when no cap binds, it is the plan), and the last round's selection and tie shares are the
    plan's for the parts below their caps (``quotas`` ``None`` for the parts held at their caps).

    Example::

        >>> import numpy as np
        >>> from pruneplug.selection import select_exact
        >>> parts = [np.array([0.1, 0.2, 0.3]), np.array([5.0, 6.0, 7.0])]
        >>> def select(active, k):
        ...     chosen = [parts[t] for t in active]
        ...     sel = select_exact(chosen, k, "abs", backend="numpy")
        ...     return sel, shares_of(sel, [(int((abs(p) < sel.threshold).sum()), int((abs(p) == sel.threshold).sum()))
        ...                                 for p in chosen])
        >>> plan_capped(4, [3, 3], select).counts, plan_capped(4, [2, 2], select).counts
        ([3, 1], [2, 2])
    """
    rounds: list[tuple[Sequence[int], ExactSelection, Shares]] = []

    def counts_of(active: Sequence[int], k_active: int) -> list[int]:
        rounds.append((list(active), *select(active, k_active)))
        return rounds[-1][2].counts

    counts = capped_counts(k, caps, counts_of)
    passes = sum(selection.passes + 1 for _, selection, _ in rounds)  # each round: its digits and a count
    active, last, shares = rounds[-1]  # the last round: the parts not held at their caps
    quotas: list[int | None] = [None] * len(caps)
    for t, quota in zip(active, shares.quotas):
        quotas[t] = quota
    return GlobalPlan(counts, last.threshold, passes, last, quotas)


def plan_global(sources: Sequence[Source], sparsity: float, method: str,
                progress: "ProgressLike | None" = None, gather_limit: int | None = None,
                backend: str | None = None) -> GlobalPlan:
    """Exact per-tensor prune counts for global magnitude pruning: :func:`decide_global` plus one
    counting pass. (``gather_limit`` is accepted for compatibility and has no effect: the select
    no longer gathers candidates.)"""
    del gather_limit
    selection = decide_global(sources, sparsity, method, progress, backend)
    shares = count_shares(selection, sources, method, backend)
    return GlobalPlan(shares.counts, selection.threshold, selection.passes, selection, shares.quotas)


def tensor_source(ref: TensorRef, chunk: int | None = None) -> Source:
    """A tensor of a checkpoint as a :class:`Source`: its raw bits, memory-mapped, in chunks; a key
    sample (for a bracket) where reading one costs no more than a few small reads (in a file, not
    loaded whole: an ``.npz`` member or a compressed input is decoded on each read)."""
    size = chunk if chunk is not None else formats.CHUNK * 16  # read at call time (tests shrink CHUNK)
    return Source(ref.name, ref.numel, lambda: ref.bit_chunks(size), ST_DTYPES[ref.dtype][1], ref.float_dtype, raw=True,
                  sample=ref.sample_bits if ref.loader is None else None)



def global_unstructured_masks(tensors: Mapping[str, Any], sparsity: float | None = None, *,
                              count: int | None = None, method: str = "l1",
                              backend: str | None = None) -> dict[str, Mask]:
    """Exact global magnitude pruning of arrays in memory: masks that prune exactly
    ``round(sparsity * total)`` (or ``count``) weights over all ``tensors`` (NumPy arrays or
    PyTorch CPU tensors), the lowest scores first, ties by the dict's iteration order, then by
    flat index.

    Nothing is concatenated: peak extra memory is one chunk's keys and one mask, whatever the
    number of tensors. Returns name -> :class:`Mask` (``True`` = keep), in the user's array type.

    Example::

        >>> import numpy as np, pruneplug as pp
        >>> masks = pp.global_unstructured_masks({"a": np.array([1.0, 5.0]), "b": np.array([2.0, 1.0])}, 0.5)
        >>> masks["a"].data, masks["b"].data
        (array([False,  True]), array([ True, False]))
    """
    check_method(method)
    if sparsity is not None:
        check_sparsity(sparsity)
    if not isinstance(tensors, Mapping):
        raise InvalidArgumentError(f"tensors must be a mapping of name -> array, got {type(tensors).__name__}")
    adapted = {}
    for name, value in tensors.items():
        a = adapt(value, f"tensors[{name!r}]")
        check_float_dtype(a.array, f"tensors[{name!r}]")
        if a.array_type != "numpy":
            raise InvalidArgumentError(f"tensors[{name!r}]: only NumPy arrays and CPU tensors are supported here")
        adapted[name] = a
    if not adapted:
        return {}

    def chunker(array: np.ndarray) -> Callable[[], Iterator[np.ndarray]]:
        def chunks() -> Iterator[np.ndarray]:
            return flat_chunks(array, formats.CHUNK * 16)  # a view for C-contiguous arrays, else a copy
        return chunks

    sources = [Source(name, int(a.array.size), chunker(a.array), a.array.dtype.itemsize, dtype_name(a.array))
               for name, a in adapted.items()]
    selection = decide_global(sources, sparsity, method, backend=backend, count=count)
    quotas = tie_quotas(selection, sources, method, backend)
    registry = get_registry()
    masks = {}
    for (name, a), quota in zip(adapted.items(), quotas):
        array = np.ascontiguousarray(a.array)
        used = registry.select(backend, array_type="numpy", dtype=dtype_name(array), operation="prune_below_key")
        keep = np.empty(array.shape, dtype=bool)
        prune_part(array, check_method(method), selection, quota, mask=keep, backend=used)
        masks[name] = Mask(a.wrap(keep), "unstructured", used)
    return masks

"""Exact k-smallest selection over data split into parts that may interleave in the global order.

The rule is the core's: prune the ``k`` lowest scores, ties by lower *global position*. A part is
whatever holds some of the elements (a block of a Dask array, the parameter shards of one rank, the
tensors of one checkpoint shard); a global position is an element's place in one global order
(the flat C-order index of the whole array, or the offset of its tensor in the global tensor order
plus its flat index). Inside a part, the local C order must agree with the global order, which holds
for blocks of an array and for contiguous slices of flat tensors, but the parts themselves may
interleave (the blocks of a 2-D array do).

Every element has two integers: its score *key* (an unsigned integer that orders like the score)
and its global position. The selection touches the data only through per-part histograms, merged
by addition, in two phases:

1. the threshold key ``T`` and how many ties at ``T`` are pruned: for magnitudes,
   :class:`pruneplug.selection.ExactSelection` on the backends' ``key_histogram`` hook
   (:func:`exact_cut`); for scores given as such (possibly negative or infinite) and block sums
   (NaN ranks highest), :class:`Selection` on this module's :func:`score_keys` (16-bit digits of
   the score's orderable bits: 2 passes for float32, 4 for float64);
2. only when the ties at ``T`` are split (some pruned, some kept), a radix select over the global
   positions of the elements whose key is ``T`` (:meth:`Selection.for_ties`): at most
   ``ceil(log2(total) / 16)`` more passes, each one histogram of 65,537 counts (512 KiB) whatever
   the data size.

The result is a cut: an element is pruned exactly when ``key < T``, or ``key == T`` and
``position < P`` (:class:`Cut`, :class:`ScoreCut`). Each part then counts its own pruned elements
and prunes that many with the backend's ordinary exact-``k`` operation, whose stable local order
is the global one. The drivers are pure: they see merged histograms only, so the same loop runs
over Dask blocks (:mod:`pruneplug.dask`) and torch.distributed ranks
(:mod:`pruneplug.torch.distributed`); the caller supplies the map-and-sum step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from pruneplug.arrays import array_module, score_dtype
from pruneplug.errors import BackendError, NonFiniteError
from pruneplug.registry import get_registry
from pruneplug.selection import ExactSelection, part_counts

DIGIT_BITS = 16
BINS = 1 << DIGIT_BITS


@dataclass(frozen=True)
class Request:
    """What every part histograms in one pass.

    ``what == "keys"``: the digit of width ``digit`` below the top ``bits`` bits of the keys whose
    top ``bits`` bits equal ``prefix`` (all keys when ``bits == 0``). ``what == "positions"``: the
    same over the global positions of the elements whose key equals ``threshold``.
    """

    what: str
    prefix: int
    bits: int
    digit: int
    width: int  # bits of the keys (or positions) in play
    threshold: int = 0


@dataclass(frozen=True)
class Cut:
    """The selection: prune an element when ``key < threshold`` or (``key == threshold`` and
    ``position < position_cut``)."""

    threshold: int
    position_cut: int
    passes: int

    def pruned_count(self, keys: Any, positions: Callable[[Any], Any]) -> int:
        """How many of a part's elements the cut prunes: ``keys`` are the part's keys,
        ``positions(where)`` gives the global positions of the elements selected by the bool array
        ``where`` (computed only for ties)."""
        xp = array_module(keys)
        below = int(xp.count_nonzero(keys < xp.uint64(self.threshold)))
        tied = keys == xp.uint64(self.threshold)
        if not bool(tied.any()):
            return below
        return below + int(xp.count_nonzero(positions(tied) < self.position_cut))


def key_dtype(dtype: Any, wide: bool) -> np.dtype:
    """The dtype keys are taken from: float64 when ``wide`` (several dtypes compared as float64
    values), else the core's score dtype (:func:`pruneplug.arrays.score_dtype`)."""
    return np.dtype(np.float64) if wide else score_dtype(dtype)


def key_bits(dtype: Any, wide: bool) -> int:
    return 8 * key_dtype(dtype, wide).itemsize


def score_keys(values: Any, transform: str, *, wide: bool = False, nan_high: bool = False) -> tuple[Any, int]:
    """The flat uint64 keys of ``values``' scores (``transform`` "abs", "square" or "identity",
    as the hooks define them) and how many values are invalid (NaN/Inf weights, NaN scores).

    A key orders like its score: the score's IEEE bits with the sign bit set for non-negative
    scores and all bits flipped for negative ones; ``-0.0`` counts as ``+0.0``. Invalid values get
    the largest key (with ``nan_high``, as block sums rank NaN highest, they are not counted).
    """
    xp = array_module(values)
    flat = values.reshape(-1)
    sdt = score_dtype(values.dtype)
    x = flat.astype(sdt)
    if transform == "identity":
        bad = xp.isnan(x)
    else:
        bad = ~xp.isfinite(x)
    invalid = 0 if nan_high else int(xp.count_nonzero(bad))
    if transform == "abs":
        x = xp.abs(x)
    elif transform == "square":
        with np.errstate(over="ignore", under="ignore"):
            x = x * x
    if wide and sdt != np.float64:
        x = x.astype(np.float64)
    x = x + x.dtype.type(0.0)  # -0.0 + 0.0 == +0.0 in round-to-nearest
    bits = 8 * x.dtype.itemsize
    raw = x.view(np.uint32 if bits == 32 else np.uint64).astype(np.uint64)
    sign = xp.uint64(1 << (bits - 1))
    mask = xp.uint64((1 << bits) - 1)
    keys = xp.where(raw & sign, (~raw) & mask, raw | sign)
    if bool(bad.any()):
        keys[bad] = mask
    return keys, invalid


def histogram(keys: Any, request: Request, positions: Callable[[Any], Any] | None = None,
              invalid: int = 0, bins: int = BINS) -> np.ndarray:
    """One part's histogram for ``request`` (a NumPy int64 array of ``bins + 1`` counts; the last
    slot holds ``invalid``). ``positions(where)`` gives the global positions of the selected
    elements (needed for ``what == "positions"``)."""
    xp = array_module(keys)
    if request.what == "keys":
        values = keys
    else:
        values = positions(keys == xp.uint64(request.threshold)).astype(np.uint64)
    if request.bits:
        values = values[(values >> xp.uint64(request.width - request.bits)) == xp.uint64(request.prefix)]
    shift = request.width - request.bits - request.digit
    digits = (values >> xp.uint64(shift)) & xp.uint64((1 << request.digit) - 1)
    hist = xp.bincount(digits.astype(np.int64), minlength=bins)
    out = np.zeros(bins + 1, dtype=np.int64)
    out[:bins] = hist.get() if xp is not np else hist
    out[bins] = invalid
    return out


class Selection:
    """The selection as a state machine, so that several can run in lockstep (one collective per
    pass for all of them): ask :attr:`request`, histogram every part for it, :meth:`update` with the
    merged histogram, until :attr:`request` is ``None``; then :attr:`cut` is the answer.

    ``digit_bits`` trades passes for histogram size (16: 512 KiB per histogram; 8: 2 KiB).
    """

    def __init__(self, k: int, total: int, key_width: int, digit_bits: int = DIGIT_BITS) -> None:
        self.k, self.total, self.digit_bits = k, total, digit_bits
        self.passes, self.invalid = 0, 0
        self.cut: Cut | None = None
        if k <= 0:
            self.cut = Cut(0, 0, 0)
        elif k >= total:
            self.cut = Cut((1 << 64) - 1, total, 0)  # every key is at most the largest uint64
        self._start("keys", key_width, k - 1, 0)

    @classmethod
    def for_ties(cls, rank: int, total: int, threshold: int = 0, digit_bits: int = DIGIT_BITS) -> "Selection":
        """The position select alone: among the tied elements, the one of 0-based ``rank`` by
        global position (its cut prunes the tied elements up to it)."""
        selection = cls(1, 2, 1, digit_bits)  # a placeholder key phase, replaced at once
        selection.total = total
        selection._start("positions", max(1, (total - 1).bit_length()), rank, threshold)
        return selection

    @property
    def bins(self) -> int:
        return 1 << self.digit_bits

    def _start(self, what: str, width: int, rank: int, threshold: int) -> None:
        self.what, self.width, self.rank, self.threshold = what, width, rank, threshold
        self.prefix, self.bits = 0, 0

    @property
    def request(self) -> Request | None:
        if self.cut is not None:
            return None
        digit = min(self.digit_bits, self.width - self.bits)
        return Request(self.what, self.prefix, self.bits, digit, self.width, self.threshold)

    def update(self, hist: np.ndarray) -> None:
        """Advance by one pass with the merged histogram (``bins + 1`` counts, the last one invalid)."""
        digit = self.request.digit
        self.passes += 1
        if self.passes == 1:
            self.invalid = int(hist[-1])
        cum = np.cumsum(hist[:-1])
        d = int(np.searchsorted(cum, self.rank, side="right"))
        self.rank -= int(cum[d - 1]) if d else 0
        self.prefix, self.bits = (self.prefix << digit) | d, self.bits + digit
        if self.bits < self.width:
            return
        if self.what == "positions":
            self.cut = Cut(self.threshold, self.prefix + 1, self.passes)
        elif self.rank + 1 == int(hist[d]):  # rank is the threshold's 0-based rank among its ties
            self.cut = Cut(self.prefix, self.total, self.passes)  # every tie is pruned
        else:  # ties split: pick them by global position
            self._start("positions", max(1, (self.total - 1).bit_length()), self.rank, self.prefix)


def select(k: int, total: int, key_width: int, merged_histogram: Callable[[Request], np.ndarray],
           on_invalid: Callable[[int], None] | None = None, digit_bits: int = DIGIT_BITS) -> Cut:
    """The exact cut pruning the ``k`` smallest (key, position) pairs among ``total``.

    ``merged_histogram(request)`` histograms every part for ``request`` and returns the sum. When
    the first pass reports invalid values, ``on_invalid(count)`` is called (it should raise).
    """
    selection = Selection(k, total, key_width, digit_bits)
    while selection.request is not None:
        selection.update(merged_histogram(selection.request))
        if selection.passes == 1 and selection.invalid and on_invalid is not None:
            on_invalid(selection.invalid)
    return selection.cut


def nonfinite_error(transform: str, count: int, first_position: int) -> NonFiniteError:
    """The core's error for ``count`` invalid values, the first at ``first_position``."""
    return NonFiniteError.for_values(transform, count, first_position)


def position_histogram(positions: Any, request: Request, bins: int = BINS) -> np.ndarray:
    """One part's histogram of the global ``positions`` of its tied elements for a ``positions``
    request (``bins + 1`` counts, the last one 0)."""
    xp = array_module(positions)
    values = positions.astype(np.uint64)
    if request.bits:
        values = values[(values >> xp.uint64(request.width - request.bits)) == xp.uint64(request.prefix)]
    digits = (values >> xp.uint64(request.width - request.bits - request.digit)) & xp.uint64((1 << request.digit) - 1)
    hist = xp.bincount(digits.astype(np.int64), minlength=bins)
    out = np.zeros(bins + 1, dtype=np.int64)
    out[:bins] = hist.get() if xp is not np else hist
    return out


def tied_mask(values: Any, transform: str, threshold: float) -> Any:
    """Flat bool mask of the elements of ``values`` whose score (``abs`` or ``square``, the core's
    score dtype) equals ``threshold`` (a float64 value)."""
    xp = array_module(values)
    x = values.reshape(-1).astype(score_dtype(values.dtype))
    with np.errstate(over="ignore", under="ignore"):
        scores = xp.abs(x) if transform == "abs" else x * x
    return scores == scores.dtype.type(threshold)  # a score of this dtype: exact in it


GATHER_LIMIT = 1 << 16  # ties gathered as positions (at most 512 KiB) instead of a position select


@dataclass(frozen=True)
class ScoreCut:
    """The outcome of :func:`exact_cut`: the decided key selection of :mod:`pruneplug.selection`
    and the position cut of its ties (ties with global position ``< position_cut`` are pruned);
    ``quotas``, when the ties were gathered, is how many ties each part prunes (parts in the order
    ``gather_ties`` listed them)."""

    selection: Any  # pruneplug.selection.ExactSelection, decided
    position_cut: int
    total: int
    passes: int
    quotas: tuple | None = None

    def quota(self, part: int | None = None) -> int | None:
        """How many of its first ties part ``part`` prunes (``None``: unknown, count the ties
        below ``position_cut`` by position)."""
        if self.position_cut == 0:
            return 0
        if self.position_cut >= self.total:
            return self.total  # every tie (a quota above a part's ties prunes all of them)
        return None if self.quotas is None or part is None else self.quotas[part]

    def pruned_count(self, values: Any, transform: str, positions: Callable[[Any], Any],
                     backend: str | None = None, part: int | None = None) -> int:
        """How many of one part's elements the cut prunes (``positions(where)``: the global
        positions of the part's elements selected by a flat bool array; ``part``: the part's index
        in ``quotas``)."""
        less, equal = part_counts(host_if_needed(values, backend), transform, self.selection, backend=backend)
        quota = self.quota(part)
        if quota is not None:
            return less + min(equal, quota)
        if equal == 0:
            return less
        tied = tied_mask(values, transform, self.selection.threshold)
        xp = array_module(tied)
        return less + int(xp.count_nonzero(positions(tied) < self.position_cut))


def host_if_needed(values: Any, backend: str | None) -> Any:
    """``values`` itself when a backend histograms its array type, else a NumPy copy (CuPy blocks
    are histogrammed on the host until a CUDA ``key_histogram`` exists)."""
    if array_module(values) is np:
        return values
    try:
        get_registry().select(backend, array_type="cupy", dtype=np.dtype(values.dtype).name, operation="key_histogram")
        return values
    except BackendError:
        return values.get()


def exact_cut(k: int, total: int, dtypes: list[str], transform: str,
              key_histogram: Callable[[Any], np.ndarray], tie_histogram: Callable[[Request, float], np.ndarray],
              gather_ties: Callable[[float], list] | None = None, gather_limit: int | None = None) -> ScoreCut:
    """The exact cut over parts that may interleave: :class:`pruneplug.selection.ExactSelection`
    decides the threshold score from the merged ``key_histogram(request)``. When its ties are
    split, either (at most ``gather_limit`` ties, default :data:`GATHER_LIMIT`, and ``gather_ties`` given) one pass gathers the
    tied elements' global positions per part (``gather_ties(threshold)``: a list of int arrays, one
    per part) and decides each part's quota exactly, or a position select over the merged
    ``tie_histogram(request, threshold)`` decides the position cut."""
    selection = ExactSelection(k, total, dtypes, transform)
    while (request := selection.next_request()) is not None:
        selection.update(key_histogram(request))
    need = k - selection.below
    if k == 0 or need == selection.ties:
        return ScoreCut(selection, 0 if k == 0 else total, total, selection.passes)
    if gather_ties is not None and selection.ties <= (GATHER_LIMIT if gather_limit is None else gather_limit):
        per_part = [np.asarray(p, dtype=np.int64) for p in gather_ties(selection.threshold)]
        cut = int(np.sort(np.concatenate(per_part))[need - 1]) + 1
        quotas = tuple(int(np.count_nonzero(p < cut)) for p in per_part)
        return ScoreCut(selection, cut, total, selection.passes + 1, quotas)
    ties = Selection.for_ties(need - 1, total)
    while ties.request is not None:
        ties.update(tie_histogram(ties.request, selection.threshold))
    return ScoreCut(selection, ties.cut.position_cut, total, selection.passes + ties.passes)

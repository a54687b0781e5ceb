"""Exact selection over many arrays: the ``k`` lowest scores, mergeable by plain addition.

One rule, used by :func:`pruneplug.global_unstructured_masks`, global checkpoint pruning and layer
checkpoint pruning, and meant to run unchanged over the blocks of a Dask array or the ranks of a
``torch.distributed`` group: prune exactly ``k`` of the ``n`` weights of several *parts* (arrays),
the ``k`` lowest scores in one global order: by score, ties by part order, then by flat C-order
index inside the part.

How it works
------------
Scores become unsigned integer *keys* whose order is the score order (equal scores, equal keys).
A radix select finds the threshold key ``T`` (the ``k``-th smallest) one digit at a time. The only
step that touches data is a backend hook, :func:`chunk_histogram` (``pruneplug_key_histogram``):
the histogram of one digit of the keys of one chunk, restricted to the keys whose higher bits equal
the prefix decided so far. Histograms of different chunks, parts, blocks or ranks are merged by
adding the integer arrays; every decision is a pure function of the merged histograms:

* :meth:`ExactSelection.next_request` says which digit and prefix to histogram next (``None`` when
  ``T`` is decided);
* :meth:`ExactSelection.update` takes the merged histogram of that request and decides one digit;
* then ``T`` (:attr:`~ExactSelection.threshold_key`), how many keys are below it
  (:attr:`~ExactSelection.below`) and how many equal it (:attr:`~ExactSelection.ties`), and
  :meth:`ExactSelection.tie_quota` hands out the ties in global order: given each part's number of
  keys equal to ``T`` (parts in order), how many of its *first* tied elements each part prunes.

With 16-bit keys a driver may first try a *bracket*: from a sample of the keys
(:func:`sample_bits`), :meth:`ExactSelection.bracket_request` names a narrow key range around rank
``k``; if the merged histogram of that range holds rank ``k``, :meth:`ExactSelection.update_bracket`
decides ``T`` in that one pass, and each part's own histogram of it gives its counts below and at
``T`` (:meth:`ExactSelection.counts_in_bracket`) without a counting pass; else the digits run as
above. A dry run needs no selection at all where the counts decide the report:
:func:`count_zeros` and :func:`zeros_after_pruning`.

A part then prunes every key ``< T`` and its first ``quota`` keys ``== T``: :func:`prune_part`
(a backend call that also counts zeros for reports), or :func:`part_counts` plus any exact-``k``
operation (``k_part = less + quota``; its stable order prunes exactly those).

Keys (the ``keys`` kind, chosen from the parts' dtypes by :func:`key_kind`)
--------------------------------------------------------------------------
Scores are the core's: ``|w|`` (``abs``) or ``w*w`` (``square``), in float32 for float16/bfloat16
weights and in the weights' dtype otherwise; they compare as float64 values across dtypes.

* ``"mag16"`` (every part float16, or every part bfloat16): the 15 magnitude bits of the weight,
  which order exactly like the score; for bfloat16 with ``square``, whose float32 square
  underflows to 0 or to subnormals and overflows to inf (different magnitudes, equal scores), the
  smallest magnitude with the same score (:func:`bf16_square_keys`). One pass of 32,768 bins.
* ``"f32"`` (float16, bfloat16 and float32 mixed, or all float32): the float32 bits of the score.
  Two passes (16 then 15 bits).
* ``"f64"`` (any float64 part): the float64 bits of the score. Four passes (16, 16, 16, 15 bits).

A histogram request (:class:`HistogramRequest`) is ``(keys, shift, bits, prefix)``; the histogram
has ``2**bits + 2`` int64 bins: ``[0]`` counts keys with ``key >> (shift + bits) < prefix``, ``[-1]``
those with a greater prefix, and ``[1 + d]`` those with the prefix and digit
``(key >> shift) & (2**bits - 1) == d``. With ``bits=0, shift=0, prefix=T`` (:meth:`count_request`)
it is ``[count(key < T), count(key == T), count(key > T)]``.

Example: three parts by hand (the loop a Dask or ``torch.distributed`` driver runs, with its own
``sum``)::

    >>> import numpy as np
    >>> from pruneplug.selection import ExactSelection, chunk_histogram, part_counts
    >>> parts = [np.array([0.5, -2.0, 1.0], np.float32), np.array([1.0, 3.0], np.float32),
    ...          np.array([-1.0, 0.25], np.float32)]
    >>> sel = ExactSelection(k=4, n=7, dtypes=["float32"], transform="abs")
    >>> while (request := sel.next_request()) is not None:
    ...     sel.update(sum(chunk_histogram(p, "abs", request, backend="numpy") for p in parts))
    >>> sel.threshold, sel.below, sel.ties, sel.passes
    (1.0, 2, 3, 2)
    >>> counts = [part_counts(p, "abs", sel, backend="numpy") for p in parts]  # (less, equal) each
    >>> counts
    [(1, 1), (0, 1), (1, 1)]
    >>> sel.tie_quota([eq for _, eq in counts])
    [1, 1, 0]

So the first part prunes ``0.5`` and its ``1.0``, the second its ``1.0``, the third ``0.25`` and
keeps ``-1.0``: four weights, ties broken by part order.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from pruneplug.arrays import adapt, check_bits, check_float_dtype, contiguous, dtype_name, float_view
from pruneplug.errors import InvalidArgumentError, PrunePlugError
from pruneplug.registry import get_registry

KEY_KINDS = ("mag16", "f32", "f64")
#: significant bits of each key kind (keys are below ``2**KEY_BITS[kind]``)
KEY_BITS = {"mag16": 15, "f32": 31, "f64": 63}
#: the digits each kind is decided in, most significant first
DIGITS = {"mag16": (15,), "f32": (16, 15), "f64": (16, 16, 16, 15)}
#: A sampled bracket (ExactSelection.bracket_request): its margin on each side of rank k in
#: standard deviations of the sample's rank, the fewest sample keys it is tried with, and the widest
#: range it may histogram (2**10 keys: 8 KiB of counts per part kept, in L1 while counted).
BRACKET_SIGMAS = 6.0
BRACKET_MIN_SAMPLE = 1024
BRACKET_MAX_BITS = 10
TRANSFORMS = ("abs", "square")
_HALF = ("float16", "bfloat16")


@dataclass(frozen=True)
class HistogramRequest:
    """Which histogram to build: the digit ``(key >> shift) & (2**bits - 1)`` of the keys whose
    ``key >> (shift + bits)`` equals ``prefix``; below and above counted in the two end bins."""

    keys: str
    shift: int
    bits: int
    prefix: int

    @property
    def bins(self) -> int:
        return (1 << self.bits) + 2


def key_kind(dtypes: Iterable[str], transform: str) -> str:
    """The key kind for parts of these dtypes (see the module docstring).

    >>> key_kind(["bfloat16"], "abs"), key_kind(["bfloat16", "float32"], "abs"), key_kind(["float64"], "square")
    ('mag16', 'f32', 'f64')
    """
    if transform not in TRANSFORMS:
        raise InvalidArgumentError(f"transform={transform!r}: exact selection over parts takes {list(TRANSFORMS)}")
    names = set(dtypes)
    bad = names - {"float16", "bfloat16", "float32", "float64"}
    if bad:
        raise InvalidArgumentError(f"dtypes {sorted(bad)} cannot be selected on; expected floating dtypes")
    if len(names) == 1 and names <= set(_HALF):
        return "mag16"
    if names <= {"float16", "bfloat16", "float32"}:
        return "f32"
    return "f64"


@functools.lru_cache(maxsize=None)
def bf16_square_keys() -> np.ndarray:
    """The ``mag16`` key of bfloat16 weights under ``square``: for each of the 32,768 magnitudes,
    the smallest magnitude whose float32 square is the same (read-only uint16 array).

    >>> t = bf16_square_keys(); int(t[0x3F80]), int(t[1]), int(t[0x7F7F]) == int(t[0x5F80])
    (16256, 0, True)
    """
    mags = np.arange(0x8000, dtype=np.uint32)
    scores = (mags << 16).view(np.float32)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        squares = scores * scores
    finite = np.isfinite(scores)  # NaN/inf magnitudes are errors; they keep their own bits
    table = mags.astype(np.uint16)
    sq = squares[finite]
    # squares are non-decreasing in the magnitude: the first index of each run of equal squares
    first = np.flatnonzero(np.concatenate(([True], sq[1:] != sq[:-1])))
    run = np.cumsum(np.concatenate(([True], sq[1:] != sq[:-1]))) - 1
    table[finite] = first[run].astype(np.uint16)
    table.setflags(write=False)
    return table


def mag16_keys(bits: np.ndarray, dtype: str, transform: str) -> np.ndarray:
    """The mag16 keys (uint16) of raw float16/bfloat16 bits: the magnitude bits, or for bfloat16
    under ``square`` the table :func:`bf16_square_keys` (non-finite values keep their bits)."""
    mag = bits.astype(np.uint16, copy=False) & np.uint16(0x7FFF)
    return bf16_square_keys()[mag] if transform == "square" and dtype == "bfloat16" else mag


#: A key sample for a bracket is read in runs of this many adjacent weights (one small read each).
SAMPLE_RUN = 32


def sample_starts(n: int, runs: int, run: int = SAMPLE_RUN) -> np.ndarray:
    """Where to read ``runs`` runs of ``run`` adjacent elements spread evenly over ``n`` (flat
    C-order starts; fewer when ``n`` is small)."""
    runs = max(0, min(runs, n // run))
    return (np.arange(runs, dtype=np.int64) * (n // max(runs, 1))) if runs else np.empty(0, np.int64)


def sample_bits(flat: np.ndarray, runs: int, run: int = SAMPLE_RUN) -> np.ndarray:
    """The elements of ``flat`` (1-D) at :func:`sample_starts`: a sample for
    :meth:`ExactSelection.bracket_request` (adjacent weights are nearly independent samples of a
    weight matrix; the bracket is checked exactly anyway)."""
    starts = sample_starts(flat.size, runs, run)
    return flat[(starts[:, None] + np.arange(run)).reshape(-1)]


def score_of_key(key: int, keys: str, dtype: str | None, transform: str) -> float:
    """The score (a Python float, exact) whose key is ``key``; ``dtype`` is the parts' dtype for
    ``mag16`` keys."""
    if keys == "f64":
        return float(np.array(key, np.uint64).view(np.float64))
    if keys == "f32":
        return float(np.array(key, np.uint32).view(np.float32))
    if dtype == "float16":
        value = np.float32(np.array(key, np.uint16).view(np.float16))
    else:
        value = np.array(key << 16, np.uint32).view(np.float32)[()]
    with np.errstate(over="ignore", under="ignore"):
        return float(value * value if transform == "square" else value)


class ExactSelection:
    """The state of one exact selection of ``k`` of ``n`` keys (see the module docstring).

    ``dtypes`` are the parts' dtypes (all of them, for the key kind), ``transform`` ``"abs"`` (l1)
    or ``"square"`` (l2). For ``k == 0`` nothing is requested and ``T = 0`` (nothing is below it);
    for ``k == n`` nothing is requested and ``T = 2**KEY_BITS`` (everything is below it).
    """

    def __init__(self, k: int, n: int, dtypes: Iterable[str], transform: str) -> None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= n:
            raise InvalidArgumentError(f"k={k!r} must be an integer in [0, n={n}]")
        names = sorted(set(dtypes))
        self.k, self.n, self.transform = int(k), int(n), transform
        self.keys = key_kind(names, transform) if names else "f64"
        self.dtype = names[0] if self.keys == "mag16" else None
        self._digits = list(DIGITS[self.keys])
        self._prefix = 0  # key bits decided so far
        self._decided = 0  # how many of them
        self._rank = self.k - 1  # 0-based rank of T among the keys with the prefix
        self.below = 0  # keys below the prefix range: once decided, keys < T
        self.ties = 0  # keys equal to T, once decided
        self.passes = 0
        self._request: HistogramRequest | None = None
        if self.k == 0 or self.k == self.n:
            self._digits = []
            self._prefix = 0 if self.k == 0 else 1 << KEY_BITS[self.keys]
            self.below, self._decided = self.k, KEY_BITS[self.keys]
        else:
            self._request = self._make_request()

    def _make_request(self) -> HistogramRequest:
        bits = self._digits[0]
        shift = KEY_BITS[self.keys] - self._decided - bits
        return HistogramRequest(self.keys, shift, bits, self._prefix)

    def next_request(self) -> HistogramRequest | None:
        """The histogram to build next (merged over every chunk of every part), or ``None``."""
        return self._request

    def update(self, histogram: Any) -> None:
        """Decide one digit from the merged histogram of :meth:`next_request`'s request."""
        request = self._request
        if request is None:
            raise InvalidArgumentError("the selection is decided: no histogram was requested")
        hist = np.asarray(histogram, dtype=np.int64)
        if hist.shape != (request.bins,):
            raise InvalidArgumentError(f"histogram has shape {hist.shape}, expected ({request.bins},)")
        if int(hist.sum()) != self.n or int(hist[0]) != self.below:
            raise InvalidArgumentError(
                f"the merged histogram counts {int(hist.sum())} keys ({int(hist[0])} below the prefix); "
                f"expected n={self.n} ({self.below} below): a chunk is missing or counted twice")
        digits = hist[1:-1]
        cum = np.cumsum(digits)
        digit = int(np.searchsorted(cum, self._rank, side="right"))
        skipped = int(cum[digit - 1]) if digit else 0
        self._rank -= skipped
        self.below += skipped
        self._prefix = (self._prefix << request.bits) | digit
        self._decided += request.bits
        self._digits.pop(0)
        self.passes += 1
        if self._digits:
            self._request = self._make_request()
        else:
            self.ties = int(digits[digit])
            self._request = None

    def bracket_request(self, sample_keys: np.ndarray) -> HistogramRequest | None:
        """A request that can decide ``T`` in one pass, from a sample of the keys (mag16 keys only,
        before any pass): the digit at shift 0 of the smallest aligned key range that holds the
        sample's keys within :data:`BRACKET_SIGMAS` standard deviations of rank ``k`` (so most
        weights fall below or above it, and its histogram is small). ``None`` where no such range
        of at most :data:`BRACKET_MAX_BITS` bits exists or the sample is too small. Its merged
        histogram goes to :meth:`update_bracket`; a sample that misses only costs that pass.

        Why only mag16: its keys are 15 bits, so a few dozen tied magnitudes around the cut fit a
        range of ~2^6; float32/float64 keys spread a sample's bracket over far more than 2^16 keys.
        """
        if self.keys != "mag16" or self._request is None or self.passes or np.size(sample_keys) < BRACKET_MIN_SAMPLE:
            return None
        keys = np.sort(np.asarray(sample_keys))  # uint16 keys: NumPy's radix sort
        p = self.k / self.n
        spread = BRACKET_SIGMAS * math.sqrt(keys.size * p * (1 - p)) + 1
        lo = int(keys[max(0, int(p * keys.size - spread))])
        hi = int(keys[min(keys.size - 1, int(p * keys.size + spread))])
        bits = (lo ^ hi).bit_length()  # the smallest aligned range 2**bits holding lo and hi
        if bits > BRACKET_MAX_BITS:
            return None
        return HistogramRequest(self.keys, 0, bits, lo >> bits)

    def update_bracket(self, request: HistogramRequest, histogram: Any) -> bool:
        """Decide ``T`` from the merged histogram of :meth:`bracket_request`'s ``request`` when
        rank ``k`` falls inside its range (True); else leave the selection as it was (False): the
        caller then runs the ordinary passes (:meth:`next_request`)."""
        hist = np.asarray(histogram, dtype=np.int64)
        if self._request is None or self.passes or request.shift != 0 or hist.shape != (request.bins,):
            raise InvalidArgumentError("update_bracket takes the histogram of bracket_request, before any pass")
        if int(hist.sum()) != self.n:
            raise InvalidArgumentError(f"the merged histogram counts {int(hist.sum())} keys; expected n={self.n}")
        below, inside = int(hist[0]), hist[1:-1]
        if not below <= self._rank < below + int(inside.sum()):
            return False
        cum = np.cumsum(inside)
        digit = int(np.searchsorted(cum, self._rank - below, side="right"))
        self.below = below + (int(cum[digit - 1]) if digit else 0)
        self.ties = int(inside[digit])
        self._prefix = (request.prefix << request.bits) | digit
        self._decided = KEY_BITS[self.keys]
        self._digits, self._request = [], None
        self.passes = 1
        return True

    def counts_in_bracket(self, request: HistogramRequest, histogram: Any) -> tuple[int, int]:
        """``(count(key < T), count(key == T))`` of one part from its own histogram of the bracket
        ``request`` that decided ``T`` (:meth:`update_bracket`): no counting pass."""
        self._require_decided()
        if self._prefix >> request.bits != request.prefix or request.shift != 0:
            raise InvalidArgumentError("T is not inside this bracket")
        hist = np.asarray(histogram, dtype=np.int64)
        digit = self._prefix & ((1 << request.bits) - 1)
        return int(hist[0]) + int(hist[1:1 + digit].sum()), int(hist[1 + digit])

    @property
    def decided(self) -> bool:
        return self._request is None

    @property
    def threshold_key(self) -> int:
        """``T``: the ``k``-th smallest key (``k >= 1``); see the class docstring for 0 and n."""
        self._require_decided()
        return self._prefix

    @property
    def threshold(self) -> float | None:
        """The score at ``T`` (``None`` when ``k`` is 0 or ``n``: no score is at the cut)."""
        self._require_decided()
        if self.k == 0 or self.k == self.n:
            return None
        return score_of_key(self._prefix, self.keys, self.dtype, self.transform)

    def count_request(self) -> HistogramRequest:
        """The request whose histogram of one part is ``[less, equal, greater]`` than ``T``."""
        self._require_decided()
        return HistogramRequest(self.keys, 0, 0, self._prefix)

    def tie_quota(self, equal_counts: Sequence[int]) -> list[int]:
        """Per part, how many of its first elements equal to ``T`` (flat order) it prunes, given
        each part's count of keys equal to ``T`` in global part order: the ties go to the parts in
        order until exactly ``k`` are pruned.

        >>> sel = ExactSelection(k=3, n=6, dtypes=["float32"], transform="abs")
        >>> sel.below, sel.ties, sel._request, sel._digits = 1, 4, None, []   # as if decided
        >>> sel.tie_quota([1, 0, 3])
        [1, 0, 1]
        """
        self._require_decided()
        counts = [int(c) for c in equal_counts]
        if min(counts, default=0) < 0 or (0 < self.k < self.n and sum(counts) != self.ties):
            raise InvalidArgumentError(f"equal counts {counts} do not add up to the {self.ties} keys equal to T")
        need = self.k - self.below
        quota = []
        for eq in counts:
            take = min(eq, need)
            need -= take
            quota.append(take)
        return quota

    def _require_decided(self) -> None:
        if self._request is not None:
            raise InvalidArgumentError("the selection is not decided yet: call update() until next_request() is None")


def _backend_array(values: Any, argname: str) -> tuple[Any, str]:
    adapted = adapt(values, argname)
    check_float_dtype(adapted.array, argname)
    return contiguous(adapted.array), adapted.array_type


def _values(values: Any, dtype: str | None, argname: str = "values") -> tuple[Any, str, str]:
    """``(array, array type, float dtype name)`` of ``values``: floats, or with ``dtype`` the raw
    bits of ``dtype`` floats (a NumPy array, see :func:`pruneplug.arrays.check_bits`)."""
    if dtype is None:
        array, array_type = _backend_array(values, argname)
        return array, array_type, dtype_name(array)
    check_bits(values, dtype, argname)
    return values, "numpy", dtype


def _call(name: str, operation: str, array: Any, dtype: str | None, **kwargs: Any) -> Any:
    """Call a hook on ``array``; raw bits go as they are to a backend that takes ``dtype=``, and
    viewed as their floats to one that does not."""
    if dtype is not None:
        if get_registry().accepts(name, operation, "dtype"):
            kwargs["dtype"] = dtype
        else:
            array = float_view(array, dtype)
            if kwargs.get("out") is not None:
                kwargs["out"] = float_view(kwargs["out"], dtype)
    return get_registry().call(name, operation, values=array, **kwargs)


def _check_request(request: HistogramRequest, dtype: str) -> None:
    if request.keys not in KEY_KINDS:
        raise InvalidArgumentError(f"request.keys={request.keys!r}: expected one of {list(KEY_KINDS)}")
    if request.keys == "mag16" and dtype not in _HALF:
        raise InvalidArgumentError(f"mag16 keys are for float16/bfloat16 values, got {dtype}")
    if request.keys == "f32" and dtype == "float64":
        raise InvalidArgumentError("f32 keys cannot hold float64 scores; use f64 keys")
    top = request.shift + request.bits
    if not (0 <= request.bits <= 16 and request.shift >= 0 and top <= 64
            and 0 <= request.prefix < (1 << 64) and (top < 64 or request.prefix == 0)):
        raise InvalidArgumentError(f"invalid histogram request {request}")


def chunk_histogram(values: Any, transform: str, request: HistogramRequest, *, backend: str | None = None,
                    dtype: str | None = None, zeros: np.ndarray | None = None) -> np.ndarray:
    """The key histogram of one chunk of weights for ``request`` (``request.bins`` int64 counts,
    a NumPy array whatever the backend): the one data-touching step of :class:`ExactSelection`.

    ``values`` is any float array the backends take (NumPy, CuPy, PyTorch), or with ``dtype`` the
    raw bits of ``dtype`` floats (NumPy); non-finite weights raise
    :class:`~pruneplug.errors.NonFiniteError`. ``zeros`` (an int64 NumPy array of 2) receives the
    chunk's :func:`count_zeros`, in the same pass where the backend can.
    """
    array, array_type, name_of_dtype = _values(values, dtype)
    if transform not in TRANSFORMS:
        raise InvalidArgumentError(f"transform={transform!r}: expected one of {list(TRANSFORMS)}")
    _check_request(request, name_of_dtype)
    registry = get_registry()
    name = registry.select(backend, array_type=array_type, dtype=name_of_dtype, operation="key_histogram")
    fused = zeros is not None and registry.accepts(name, "key_histogram", "zeros")
    hist = _call(name, "key_histogram", array, dtype, transform=transform, keys=request.keys, shift=request.shift,
                 bits=request.bits, prefix=request.prefix, **({"zeros": zeros} if fused else {}))
    if zeros is not None and not fused:
        zeros[:] = count_zeros(values, transform, backend=backend, dtype=dtype)
    if not isinstance(hist, np.ndarray):
        hist = hist.get()  # a CuPy array: histograms are merged on the host
    return np.asarray(hist, dtype=np.int64)


def count_zeros(values: Any, transform: str | None, *, backend: str | None = None,
                dtype: str | None = None) -> tuple[int, int]:
    """``(zeros, zero_scores)`` of one part: its exact zeros (``-0.0`` included) and its weights of
    score 0 (key 0: the zeros, and under ``"square"`` the weights whose square underflows), in one
    pass; ``transform=None`` counts zeros only and rejects nothing. ``values`` as for
    :func:`chunk_histogram`. Non-finite weights (with a transform) raise
    :class:`~pruneplug.errors.NonFiniteError`.

    Why both: pruning exactly ``k`` keys prunes the lowest keys first, so when ``k`` reaches the
    zero scores every one of them is pruned, and the zeros after pruning are ``k``; below that, only
    zero scores are pruned, and where those are all exact zeros nothing changes
    (:func:`zeros_after_pruning`).
    """
    array, array_type, name_of_dtype = _values(values, dtype)
    if transform is not None and transform not in TRANSFORMS:
        raise InvalidArgumentError(f"transform={transform!r}: expected one of {list(TRANSFORMS)} or None")
    name = get_registry().select(backend, array_type=array_type, dtype=name_of_dtype, operation="count_zeros")
    zeros, zero_scores = _call(name, "count_zeros", array, dtype, transform=transform)
    return int(zeros), int(zero_scores)


def zeros_after_pruning(pruned: int, zeros: int, zero_scores: int) -> int | None:
    """The exact zeros of a part after its ``pruned`` lowest keys (ties in any order) are set to
    ``+0.0``, from its counts before (:func:`count_zeros`), or ``None`` when they depend on which
    of the tied zero scores are pruned.

    Zero scores have the lowest key (0). Pruning at least all of them prunes every zero, and every
    weight left has a nonzero score: ``pruned`` zeros. Pruning fewer prunes only zero scores; when
    those are all exact zeros (always under ``"abs"``) nothing changes: ``zeros``. Otherwise
    (``"square"`` with underflowing squares) it depends on their order: ``None``.

    >>> zeros_after_pruning(5, 2, 2), zeros_after_pruning(1, 2, 2), zeros_after_pruning(1, 2, 3)
    (5, 2, None)
    """
    if pruned >= zero_scores:
        return pruned
    return zeros if zero_scores == zeros else None


def part_counts(values: Any, transform: str, selection: ExactSelection, *, backend: str | None = None,
                dtype: str | None = None) -> tuple[int, int]:
    """``(count(key < T), count(key == T))`` of one part (or chunk) once ``selection`` is decided:
    the backend's ``prune_below_key`` pass counting only (branch-free, it vectorises), else its
    histogram of :meth:`ExactSelection.count_request`."""
    array, array_type, float_dtype = _values(values, dtype)
    registry = get_registry()
    try:
        name = registry.select(backend, array_type=array_type, dtype=float_dtype, operation="prune_below_key")
    except PrunePlugError:
        hist = chunk_histogram(values, transform, selection.count_request(), backend=backend, dtype=dtype)
        return int(hist[0]), int(hist[1])
    result = prune_part(array, transform, selection, 0, backend=name, dtype=dtype)
    return result.less, result.equal


@dataclass
class PartResult:
    """What :func:`prune_part` did to one part: keys below ``T``, keys equal to ``T``, how many
    weights it pruned (``less + ties pruned``), and exact zeros before and after."""

    less: int
    equal: int
    pruned: int
    zeros_before: int
    zeros_after: int


def prune_part(values: Any, transform: str, selection: ExactSelection, quota: int, *, out: Any = None,
               mask: Any = None, backend: str | None = None, dtype: str | None = None) -> PartResult:
    """Apply a decided selection to one part in one pass: prune every key ``< T`` and the first
    ``quota`` keys ``== T`` (flat C order), writing the pruned weights into ``out`` (an array like
    ``values``, not ``values`` itself; ``None`` to only count) and the keep-mask into ``mask``
    (``bool``, ``None`` for none). ``values`` is never modified. Returns the counts
    (:class:`PartResult`); ``quota`` larger than the part's ties prunes all of them.

    Runs on the backends that implement ``prune_below_key`` (``numpy``, ``cpu``); elsewhere use
    :func:`part_counts` and an exact-``k`` prune with ``k = less + quota``. With ``dtype``,
    ``values`` and ``out`` are raw bits of ``dtype`` floats (see :func:`chunk_histogram`).

    >>> import numpy as np
    >>> from pruneplug.selection import ExactSelection, prune_part
    >>> w = np.array([3.0, -1.0, 0.0, 1.0, 2.0], np.float32)
    >>> sel = ExactSelection(k=2, n=5, dtypes=["float32"], transform="abs")
    >>> while (r := sel.next_request()) is not None:
    ...     sel.update(chunk_histogram(w, "abs", r, backend="numpy"))
    >>> out = np.empty_like(w)
    >>> prune_part(w, "abs", sel, sel.tie_quota([sel.ties])[0], out=out, backend="numpy"), out
    (PartResult(less=1, equal=2, pruned=2, zeros_before=1, zeros_after=2), array([3., 0., 0., 1., 2.], dtype=float32))
    """
    array, array_type, float_dtype = _values(values, dtype)
    selection._require_decided()
    if selection.keys == "mag16" and float_dtype not in _HALF:
        raise InvalidArgumentError(f"the selection uses mag16 keys; values have dtype {float_dtype}")
    if out is not None:
        if out is values or (getattr(out, "shape", None) != array.shape or out.dtype != array.dtype
                             or not out.flags.c_contiguous or np.shares_memory(out, array)):
            raise InvalidArgumentError("out must be a C-contiguous array of the values' shape and dtype, not the values")
    if mask is not None and (getattr(mask, "shape", None) != array.shape or dtype_name(mask) != "bool"
                             or not mask.flags.c_contiguous):
        raise InvalidArgumentError("mask must be a C-contiguous bool array of the values' shape")
    name = get_registry().select(backend, array_type=array_type, dtype=float_dtype, operation="prune_below_key")
    less, equal, zb, za = _call(name, "prune_below_key", array, dtype, transform=transform, keys=selection.keys,
                                threshold=selection.threshold_key, ties=max(0, int(quota)), out=out, mask=mask)
    return PartResult(int(less), int(equal), int(less) + min(int(equal), max(0, int(quota))), int(zb), int(za))


def select_exact(parts: Sequence[Any], k: int, transform: str, *, backend: str | None = None,
                 chunk: int = 1 << 22) -> ExactSelection:
    """Run an :class:`ExactSelection` over in-memory ``parts`` (each fed in flat chunks of
    ``chunk`` elements, which bounds the reference backend's temporary keys) and return it decided."""
    arrays = [_backend_array(p, f"parts[{i}]")[0] for i, p in enumerate(parts)]
    selection = ExactSelection(k, sum(int(a.size) for a in arrays), [dtype_name(a) for a in arrays], transform)
    while (request := selection.next_request()) is not None:
        total = np.zeros(request.bins, np.int64)
        for a in arrays:
            flat = a.reshape(-1)
            for start in range(0, flat.size, chunk):
                total += chunk_histogram(flat[start:start + chunk], transform, request, backend=backend)
        selection.update(total)
    return selection

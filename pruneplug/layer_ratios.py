"""Per-layer sparsities that differ from layer to layer but meet a global count exactly.

Two uses:

* **OWL** (outlier-weighted layerwise sparsity; Yin et al., "Outlier Weighed Layerwise Sparsity
  (OWL): A Missing Secret Sauce for Pruning LLMs to High Sparsity", 2024). Per *unit* (a transformer
  block: every tensor whose name shares the prefix up to the first numeric component, e.g.
  ``model.layers.3``; a name without one is its own unit) the outlier ratio
  ``D = fraction of scores > M * mean(score)`` over all the unit's tensors, where the scores are
  Wanda's ``|W_ij| * ||X_j||`` (the OWL reference uses them whatever the pruning method). The
  ratios are mapped linearly onto a window of width ``2 * lambda``
  (``x = 2 * lambda * (D - min D) / (max D - min D)``, all 0 when every D is equal) and shifted so
  the mean sparsity is the target: ``s_u = target - (x_u - mean(x))``. More outliers, lower
  sparsity. The OWL reference takes the plain mean over blocks (its blocks have equal sizes); here
  the mean is weighted by the units' weight counts, so the total stays the target for any sizes.
  The window is ``[target - lambda, target + lambda]`` when the ratios are spread symmetrically;
  otherwise it is shifted but still ``2 * lambda`` wide and contains ``target``. Defaults:
  ``M = 5``, ``lambda = 0.08`` (the paper's settings for LLaMA; the reference code's own default M
  is 3).
* **A cap on any layer's sparsity** (``max_layer_sparsity``) so that a global prune cannot remove
  a whole layer: :func:`capped_counts` is the exact global selection with caps ("water-filling").

Exact totals (:func:`exact_counts`): real per-tensor targets ``r_t = s_t * n_t`` are clipped to
``[0, cap_t]`` and shifted by a common sparsity offset until their sum is the global count
``K = round(target * total)`` (Python rounding, as :func:`pruneplug.count_to_prune`); then each
tensor gets ``floor`` of its value and the remaining ``K - sum(floor)`` are handed out one each to
the tensors with the largest fractional parts (ties: the lower tensor index), never above a cap.
Deterministic: the same inputs give the same counts.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from pruneplug.arrays import to_numpy
from pruneplug.errors import InvalidArgumentError
from pruneplug.validation import count_to_prune

#: The OWL paper's settings for LLaMA models.
DEFAULT_M = 5.0
DEFAULT_LAMBDA = 0.08
#: Default cap for ``--scope global`` (see :func:`layer_caps`).
DEFAULT_GLOBAL_MAX_LAYER_SPARSITY = 0.99

_UNIT = re.compile(r"^(.*?\.\d+)(\.|$)")


def _check_fraction(value: Any, argname: str, *, low: float = 0.0, high: float = 1.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= float(value) <= high:
        raise InvalidArgumentError(f"{argname}={value!r} must be a number in [{low}, {high}]")
    return float(value)


def _check_m(m: Any, argname: str) -> float:
    if isinstance(m, bool) or not isinstance(m, (int, float)) or not m > 0 or math.isinf(m):
        raise InvalidArgumentError(f"{argname}={m!r} must be a finite number > 0 (outliers are scores above m x the mean)")
    return float(m)


def outlier_ratio(scores: Any, m: float = DEFAULT_M) -> float:
    """The fraction of ``scores`` above ``m`` times their mean (float64 mean).

    Example::

        >>> import numpy as np
        >>> from pruneplug.layer_ratios import outlier_ratio
        >>> outlier_ratio(np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 30.0]), m=3.0)
        0.1
    """
    return unit_outlier_ratios({"x": scores}, {"x": "x"}, m)["x"]


def block_units(names: Sequence[str]) -> dict[str, str]:
    """name -> unit: the name's prefix up to its first numeric component (``encoder.layer.0``,
    ``model.layers.11``), or the name itself when it has none (``pooler.dense.weight``).

    Example::

        >>> from pruneplug.layer_ratios import block_units
        >>> block_units(["model.layers.3.mlp.up_proj.weight", "pooler.dense.weight"])
        {'model.layers.3.mlp.up_proj.weight': 'model.layers.3', 'pooler.dense.weight': 'pooler.dense.weight'}
    """
    units = {}
    for name in names:
        match = _UNIT.match(name)
        units[name] = match.group(1) if match else name
    return units


def unit_outlier_ratios(scores: Mapping[str, Any], units: Mapping[str, str], m: float = DEFAULT_M) -> dict[str, float]:
    """Per unit, the fraction of all its tensors' scores above ``m`` times the unit's mean score.
    Nothing is concatenated: one pass for the sums, one for the counts."""
    _check_m(m, "m")
    sums: dict[str, float] = {}
    sizes: dict[str, int] = {}
    for name in scores:  # indexing, not items(): a lazy mapping computes each tensor's scores when asked
        array = to_numpy(scores[name])
        if array.size and not np.isfinite(array).all():
            raise InvalidArgumentError(f"tensor {name!r}: its scores contain NaN or Inf; outlier ratios need finite scores")
        unit = units[name]
        sums[unit] = sums.get(unit, 0.0) + float(np.sum(array, dtype=np.float64))
        sizes[unit] = sizes.get(unit, 0) + array.size
    above: dict[str, int] = {unit: 0 for unit in sums}
    for name in scores:
        unit = units[name]
        threshold = m * sums[unit] / sizes[unit] if sizes[unit] else 0.0
        above[unit] += int(np.count_nonzero(to_numpy(scores[name]).astype(np.float64, copy=False) > threshold))
    return {unit: (above[unit] / sizes[unit] if sizes[unit] else 0.0) for unit in sums}


def owl_sparsities(ratios: Sequence[float], sizes: Sequence[int], target: float,
                   lam: float = DEFAULT_LAMBDA) -> list[float]:
    """OWL's per-unit sparsities (before clipping and rounding): ``target - (x - mean(x))`` with
    ``x = 2 * lam * (D - min D) / (max D - min D)``, the mean weighted by ``sizes``.

    Example::

        >>> from pruneplug.layer_ratios import owl_sparsities
        >>> [round(s, 6) for s in owl_sparsities([0.01, 0.03, 0.02], [100, 100, 100], 0.5, lam=0.1)]
        [0.6, 0.4, 0.5]
    """
    target = _check_fraction(target, "target sparsity")
    lam = _check_fraction(lam, "lambda", high=0.5)
    if len(ratios) != len(sizes) or not ratios:
        raise InvalidArgumentError(f"need one outlier ratio per unit: {len(ratios)} ratios for {len(sizes)} sizes")
    d = np.asarray(ratios, dtype=np.float64)
    n = np.asarray(sizes, dtype=np.float64)
    spread = float(d.max() - d.min())
    x = np.zeros_like(d) if spread == 0 else 2.0 * lam * (d - d.min()) / spread
    mean = float(np.sum(x * n) / np.sum(n)) if n.sum() else 0.0
    return [float(v) for v in target - (x - mean)]


def default_max_layer_sparsity(scope: str, sparsity: "float | None") -> float:
    """The cap used when none is given: :data:`DEFAULT_GLOBAL_MAX_LAYER_SPARSITY` (0.99) for global
    scope, 1.0 (no cap) for layer scope, and 1.0 when the requested sparsity itself is above 0.99
    (a request to prune nearly everything is honoured, not refused)."""
    if scope == "global" and (sparsity is None or sparsity <= DEFAULT_GLOBAL_MAX_LAYER_SPARSITY):
        return DEFAULT_GLOBAL_MAX_LAYER_SPARSITY
    return 1.0


def resolve_max_layer_sparsity(max_layer_sparsity: Any, scope: str, sparsity: "float | None",
                               layer_ratios: "str | None" = None) -> float:
    """The per-layer cap every front end uses (CLI, ``prune_checkpoint``, ``prune_model``,
    ``prune_sharded``, the Dask path): ``max_layer_sparsity`` checked (a finite number in [0, 1]),
    or :func:`default_max_layer_sparsity` when it is None.

    A cap applies where sparsities differ from layer to layer: ``scope="global"`` and
    ``layer_ratios="owl"``. With uniform layer scope every tensor is pruned to ``sparsity`` itself,
    so a cap below 1 could only lower that sparsity for every layer alike (or do nothing): it is
    refused, naming both values, rather than silently ignored or silently lowering the target.

    Example::

        >>> from pruneplug.layer_ratios import resolve_max_layer_sparsity
        >>> resolve_max_layer_sparsity(None, "global", 0.5), resolve_max_layer_sparsity(None, "layer", 0.5)
        (0.99, 1.0)
        >>> resolve_max_layer_sparsity(0.3, "layer", 0.5)
        Traceback (most recent call last):
        ...
        pruneplug.errors.InvalidArgumentError: max_layer_sparsity=0.3 applies to scope='global' and layer_ratios='owl' (where layers get different sparsities); with uniform layer scope every selected tensor is pruned to the same sparsity (0.5): lower the sparsity instead, or leave max_layer_sparsity out
    """
    if max_layer_sparsity is None:
        return default_max_layer_sparsity(scope, sparsity)
    cap = _check_fraction(max_layer_sparsity, "max_layer_sparsity")
    if cap < 1.0 and scope != "global" and layer_ratios != "owl":
        raise InvalidArgumentError(
            f"max_layer_sparsity={max_layer_sparsity!r} applies to scope='global' and layer_ratios='owl' (where "
            f"layers get different sparsities); with uniform layer scope every selected tensor is pruned to the same "
            f"sparsity ({sparsity!r}): lower the sparsity instead, or leave max_layer_sparsity out")
    return cap


def check_owl_parameters(m: Any, lam: Any) -> tuple[float, float]:
    """OWL's ``m`` (a finite number > 0: outliers are scores above ``m`` times the mean) and
    ``lam`` (a number in [0, 0.5]: the half-width of the sparsity window), checked the same way by
    every front end, whether or not OWL is asked for (a bad value is refused, never ignored).

    Example::

        >>> from pruneplug.layer_ratios import check_owl_parameters
        >>> check_owl_parameters(5, 0.08)
        (5.0, 0.08)
    """
    return _check_m(m, "owl_m"), _check_fraction(lam, "owl_lambda", high=0.5)


def layer_caps(sizes: Sequence[int], max_layer_sparsity: float) -> list[int]:
    """``floor(max_layer_sparsity * n)`` per layer: the most weights a layer may lose.

    Why 0.99 is the default for global scope: a global order ranks every layer's scores together,
    and a layer whose scores are all small (a pooler or a down-scaled projection) can lose *all* its
    weights, which turns its output into a constant. Keeping at least 1% of every layer rules that
    out, and it never binds on a layer that a global prune up to 90% treats like the others.
    """
    cap = _check_fraction(max_layer_sparsity, "max_layer_sparsity")
    exact = Fraction(repr(cap))  # the decimal the user wrote: floor(0.99 * 100) is 99, not 98
    return [int(math.floor(exact * int(n))) for n in sizes]


def exact_counts(sparsities: Sequence[float], sizes: Sequence[int], k: int, caps: "Sequence[int] | None" = None) -> list[int]:
    """Integer counts ``c_t`` close to ``sparsities[t] * sizes[t]``, each in ``[0, caps[t]]``,
    summing exactly to ``k`` (see the module docstring for the rule).

    Example::

        >>> from pruneplug.layer_ratios import exact_counts
        >>> exact_counts([0.45, 0.55, 1.2], [10, 10, 10], 17, caps=[10, 10, 9])
        [4, 4, 9]
    """
    sizes = [int(n) for n in sizes]
    caps = list(sizes) if caps is None else [min(int(c), n) for c, n in zip(caps, sizes)]
    if len(sparsities) != len(sizes) or len(caps) != len(sizes):
        raise InvalidArgumentError("sparsities, sizes and caps need one entry per tensor")
    if not 0 <= k <= sum(caps):
        raise InvalidArgumentError(
            f"cannot prune {k} weights: the per-layer caps allow at most {sum(caps)} of {sum(sizes)} "
            "(raise max_layer_sparsity or lower the sparsity)")
    s = np.asarray(sparsities, dtype=np.float64)
    n = np.asarray(sizes, dtype=np.float64)
    cap = np.asarray(caps, dtype=np.float64)

    def total(shift: float) -> np.ndarray:
        return np.clip((s + shift) * n, 0.0, cap)

    # Common sparsity offset by bisection: sum(total(shift)) is continuous and non-decreasing.
    low, high = -1.0 - float(s.max(initial=0.0)), 1.0 - float(s.min(initial=0.0))
    for _ in range(200):
        mid = (low + high) / 2
        if total(mid).sum() < k:
            low = mid
        else:
            high = mid
    real = total(high)
    counts = np.minimum(np.floor(real), cap).astype(np.int64)
    need = k - int(counts.sum())
    # fractional parts rounded to 1e-9 so that bisection round-off cannot break a tie
    order = sorted(range(len(sizes)), key=lambda t: (-round(float(real[t] - counts[t]), 9), t))
    while need > 0:  # hand out the remainder by largest fractional part, ties by lower index
        progressed = False
        for t in order:
            if need and counts[t] < caps[t]:
                counts[t] += 1
                need -= 1
                progressed = True
        assert progressed, "exact_counts: caps too small (checked above)"
    for t in reversed(order):  # bisection overshoot (never more than round-off): take back
        while need < 0 and counts[t] > 0:
            counts[t] -= 1
            need += 1
    return [int(c) for c in counts]


def capped_counts(k: int, caps: Sequence[int], select: Callable[[Sequence[int], int], Sequence[int]]) -> list[int]:
    """Exact global selection of ``k`` weights with a per-layer cap, by water-filling.

    ``select(parts, k_parts)`` is the uncapped exact selection (``k_parts`` lowest scores over the
    listed parts, in their order; returns one count per listed part). Layers whose uncapped count
    exceeds their cap are fixed at the cap and the rest re-selected with what is left, until no
    cap is exceeded: at most one round per layer, usually one or two. The result is the capped
    greedy order: the lowest scores first, skipping layers that are full, ties as ``select`` breaks
    them. (Why it is exact: raising the threshold only adds weights, so a layer full at one round's
    threshold is full at the final one.)

    Example::

        >>> from pruneplug.layer_ratios import capped_counts
        >>> scores = [[0.1, 0.2, 0.3], [5.0, 6.0, 7.0]]
        >>> def select(parts, k):
        ...     pooled = sorted((v, p) for p in parts for v in scores[p])[:k]
        ...     return [sum(1 for _, q in pooled if q == p) for p in parts]
        >>> capped_counts(4, [2, 2], select)
        [2, 2]
    """
    caps = [int(c) for c in caps]
    if not 0 <= k <= sum(caps):
        raise InvalidArgumentError(
            f"cannot prune {k} weights: the per-layer caps allow at most {sum(caps)} "
            "(raise max_layer_sparsity or lower the sparsity)")
    fixed: dict[int, int] = {}
    while True:
        active = [t for t in range(len(caps)) if t not in fixed]
        left = k - sum(fixed.values())
        counts = dict(zip(active, select(active, left))) if active else {}
        over = [t for t in active if counts[t] > caps[t]]
        if not over:
            return [fixed[t] if t in fixed else counts[t] for t in range(len(caps))]
        for t in over:
            fixed[t] = caps[t]


@dataclass(frozen=True)
class LayerRatios:
    """Per-tensor sparsities and exact counts from :func:`owl_counts` (tensor order as given), and
    the per-unit outlier ratios they came from."""

    names: list[str]
    counts: list[int]
    sparsities: list[float]
    units: dict[str, str]
    outlier_ratios: dict[str, float]

    def sparsity_of(self, name: str) -> float:
        return self.sparsities[self.names.index(name)]


def owl_counts(scores: Mapping[str, Any], target: float, *, m: float = DEFAULT_M, lam: float = DEFAULT_LAMBDA,
               max_layer_sparsity: float = 1.0, units: "Mapping[str, str] | None" = None,
               sizes: "Mapping[str, int] | None" = None) -> LayerRatios:
    """OWL from score arrays (name -> Wanda scores ``|W| * ||X||``, any array type): per-tensor
    prune counts summing to ``round(target * total)`` exactly, capped at ``max_layer_sparsity``.
    ``scores`` may compute each tensor's scores when asked for (it is read twice); ``sizes``
    (name -> number of weights) spares a third read.

    Example::

        >>> import numpy as np
        >>> from pruneplug.layer_ratios import owl_counts
        >>> rng = np.random.default_rng(0)
        >>> spiky = rng.random((8, 8)); spiky[0, :4] = 50.0
        >>> r = owl_counts({"layers.0.w": spiky, "layers.1.w": rng.random((8, 8))}, 0.5, lam=0.1)
        >>> r.counts, sum(r.counts)
        ([26, 38], 64)
    """
    names = list(scores)
    units = dict(units) if units is not None else block_units(names)
    ratios = unit_outlier_ratios(scores, units, m)
    sizes = dict(sizes) if sizes is not None else {name: int(to_numpy(scores[name]).size) for name in names}
    counts = counts_from_ratios(ratios, units, {n: sizes[n] for n in names}, target, lam=lam,
                                max_layer_sparsity=max_layer_sparsity)
    tensor_sizes = [sizes[n] for n in names]
    counts_list = [counts[n] for n in names]
    return LayerRatios(names, counts_list, [c / n if n else 0.0 for c, n in zip(counts_list, tensor_sizes)], units,
                       ratios)


def counts_from_ratios(ratios: Mapping[str, float], units: Mapping[str, str], sizes: Mapping[str, int],
                       target: float, *, lam: float = DEFAULT_LAMBDA, max_layer_sparsity: float = 1.0) -> dict[str, int]:
    """OWL's exact per-tensor counts from the units' outlier ratios (``ratios``: unit -> D;
    ``units``: tensor name -> unit; ``sizes``: tensor name -> weights, in tensor order): the counts
    sum to ``round(target * total)`` and none exceeds ``max_layer_sparsity``. The stream computes
    the ratios one block at a time and calls this once.

    Example::

        >>> from pruneplug.layer_ratios import counts_from_ratios
        >>> counts_from_ratios({"b.0": 0.01, "b.1": 0.03}, {"b.0.w": "b.0", "b.1.w": "b.1"},
        ...                    {"b.0.w": 100, "b.1.w": 100}, 0.5, lam=0.1)
        {'b.0.w': 60, 'b.1.w': 40}
    """
    names = list(sizes)
    unit_names = list(ratios)
    unit_sizes = [sum(sizes[n] for n in names if units[n] == u) for u in unit_names]
    unit_sparsity = dict(zip(unit_names, owl_sparsities([ratios[u] for u in unit_names], unit_sizes, target, lam)))
    per_tensor = [unit_sparsity[units[n]] for n in names]
    tensor_sizes = [sizes[n] for n in names]
    k = count_to_prune(target, sum(tensor_sizes))
    counts = exact_counts(per_tensor, tensor_sizes, k, layer_caps(tensor_sizes, max_layer_sparsity))
    return dict(zip(names, counts))

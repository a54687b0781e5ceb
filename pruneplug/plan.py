"""One plan for every front end: what each selected tensor gets (a sparsity or an exact count, the
pattern, the comparison group), from what the user asked for.

``prune_model``, the block stream and the checkpoint front ends all build a :class:`PruneSettings`
from their arguments and ask it for :meth:`PruneSettings.plan`. It checks the combination once
(pattern against sparsity, OWL only for unstructured, the cap's range), applies the per-layer cap,
and turns OWL's per-block outlier ratios into exact per-tensor counts
(:func:`pruneplug.layer_ratios.counts_from_ratios`).

Example::

    >>> import pruneplug as pp
    >>> s = pp.PruneSettings("wanda", sparsity=0.5)
    >>> s.plan({"a.weight": 10, "b.weight": 6})["b.weight"]
    TensorPlan(sparsity=0.5, count=None, pattern='unstructured', groups=None)
    >>> pp.PruneSettings("l1", sparsity=0.5, max_layer_sparsity=0.3).plan({"a.weight": 10})["a.weight"].count
    3
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from pruneplug.criteria import Criterion, get_criterion
from pruneplug.errors import CalibrationRequiredError, InvalidArgumentError
from pruneplug.layer_ratios import DEFAULT_LAMBDA, DEFAULT_M, block_units, counts_from_ratios, layer_caps
from pruneplug.patterns import parse_pattern
from pruneplug.validation import check_groups, count_to_prune

LAYER_RATIOS = ("uniform", "owl")


@dataclass(frozen=True)
class TensorPlan:
    """How one tensor is pruned: ``sparsity`` or an exact ``count`` (one of them, or neither for
    N:M), the ``pattern`` and the comparison ``groups`` (None: the criterion's own)."""

    sparsity: float | None
    count: int | None
    pattern: str
    groups: str | None

    def kwargs(self) -> dict:
        """The keyword arguments of :func:`pruneplug.criteria.prune_scored`."""
        return {"sparsity": self.sparsity, "count": self.count, "pattern": self.pattern, "groups": self.groups}


class PruneSettings:
    """What the user asked for, checked: ``method`` (a criterion name or object), ``sparsity`` /
    ``pattern``, ``groups``, ``layer_ratios`` (None/"uniform" or "owl", with ``owl_m`` and
    ``owl_lambda``) and ``max_layer_sparsity`` (no tensor loses more than this fraction; None: no
    cap)."""

    def __init__(self, method: Any = "l1", *, sparsity: float | None = None, pattern: str = "unstructured",
                 groups: str | None = None, layer_ratios: str | None = None, owl_m: float = DEFAULT_M,
                 owl_lambda: float = DEFAULT_LAMBDA, max_layer_sparsity: float | None = None) -> None:
        self.criterion: Criterion = get_criterion(method)
        self.sparsity, self.pattern, self.groups = sparsity, pattern, groups
        self.layer_ratios = None if layer_ratios == "uniform" else layer_ratios
        self.owl_m, self.owl_lambda = owl_m, owl_lambda
        self.max_layer_sparsity = max_layer_sparsity
        self._check()

    def _check(self) -> None:
        spec = parse_pattern(self.pattern)
        if spec.kind == "nm":
            if self.sparsity is not None:
                raise InvalidArgumentError(f"sparsity={self.sparsity!r} cannot be combined with pattern="
                                           f"{self.pattern!r}: N:M fixes it")
        elif self.sparsity is None:
            raise InvalidArgumentError(f"pattern={self.pattern!r} needs sparsity= (a real number in [0, 1])")
        else:
            count_to_prune(self.sparsity, 1)  # validates it
        if self.groups is not None:
            check_groups(self.groups)
        if self.layer_ratios not in (None, "owl"):
            raise InvalidArgumentError(f"layer_ratios={self.layer_ratios!r}: expected None, 'uniform' or 'owl'")
        if self.layer_ratios == "owl":
            if spec.kind != "unstructured":
                raise InvalidArgumentError(f"layer_ratios='owl' applies to unstructured pruning (got pattern="
                                           f"{self.pattern!r})")
            _check_number(self.owl_m, "owl_m", low=0.0, low_open=True)
            _check_number(self.owl_lambda, "owl_lambda", low=0.0, high=0.5)
        if self.max_layer_sparsity is not None:
            _check_number(self.max_layer_sparsity, "max_layer_sparsity", low=0.0, high=1.0)
            if spec.kind != "unstructured":
                raise InvalidArgumentError(f"max_layer_sparsity applies to unstructured pruning (got pattern="
                                           f"{self.pattern!r}, which fixes each layer's sparsity)")

    @property
    def owl(self) -> bool:
        return self.layer_ratios == "owl"

    @property
    def statistics(self) -> frozenset:
        """The calibration statistics this needs: the criterion's, plus input norms for OWL (whose
        outlier ratios are computed from Wanda scores whatever the method)."""
        return self.criterion.statistics | (frozenset({"input_norms"}) if self.owl else frozenset())

    def check_calibration(self, available: bool) -> None:
        if not available and self.statistics:
            raise CalibrationRequiredError("owl" if self.owl and not self.criterion.statistics else self.criterion.name)

    def plan(self, sizes: Mapping[str, int], owl_ratios: Mapping[str, float] | None = None,
             units: Mapping[str, str] | None = None) -> dict[str, TensorPlan]:
        """name -> :class:`TensorPlan` for tensors of ``sizes`` (name -> number of weights).
        With OWL, ``owl_ratios`` are the outlier ratios of the units (``units``: name -> unit, by
        default the block prefix); tensors outside every unit get the uniform sparsity."""
        names = list(sizes)
        plans = {n: TensorPlan(self.sparsity, None, self.pattern, self.groups) for n in names}
        if self.owl:
            if owl_ratios is None:
                raise InvalidArgumentError("layer_ratios='owl' needs the units' outlier ratios")
            units = dict(units) if units is not None else block_units(names)
            inside = [n for n in names if units.get(n) in owl_ratios]
            counts = counts_from_ratios({units[n]: owl_ratios[units[n]] for n in inside},
                                        {n: units[n] for n in inside}, {n: sizes[n] for n in inside},
                                        self.sparsity, lam=self.owl_lambda,
                                        max_layer_sparsity=self.cap())
            for name, k in counts.items():
                plans[name] = TensorPlan(None, k, self.pattern, self.groups)
        elif self.max_layer_sparsity is not None and self.max_layer_sparsity < 1.0:
            for name in names:
                k = min(count_to_prune(self.sparsity, sizes[name]), layer_caps([sizes[name]], self.cap())[0])
                plans[name] = TensorPlan(None, k, self.pattern, self.groups)
        return plans

    def cap(self) -> float:
        return 1.0 if self.max_layer_sparsity is None else float(self.max_layer_sparsity)

    def describe(self) -> dict:
        """The settings as the report's ``settings`` shows them."""
        d = {"method": self.criterion.name, "sparsity": self.sparsity, "pattern": self.pattern,
             "groups": self.groups or (self.criterion.default_groups if self.pattern == "unstructured" else "layer")}
        if self.owl:
            d["layer_ratios"] = {"method": "owl", "m": self.owl_m, "lambda": self.owl_lambda,
                                 "max_layer_sparsity": self.cap()}
        elif self.max_layer_sparsity is not None:
            d["max_layer_sparsity"] = self.max_layer_sparsity
        return d


def pattern_misfit(pattern: str, shape: tuple, axis: int = -1) -> str | None:
    """Why ``pattern`` cannot be applied to a tensor of ``shape`` (N:M groups along ``axis``), or
    None when it can: the one rule by which every front end skips (or, strict, refuses) a tensor."""
    spec = parse_pattern(pattern)
    if spec.kind == "nm":
        if not shape:
            return "0-d tensor cannot be grouped"
        if not -len(shape) <= axis < len(shape):
            return f"axis {axis} out of range for shape {list(shape)}"
        if shape[axis] % spec.m:
            return f"axis {axis % len(shape)} has {shape[axis]} elements, not divisible by M={spec.m}"
        return None
    if spec.kind in ("row", "column", "block"):
        if len(shape) != 2:
            return f"{pattern} pruning needs a 2-D tensor, shape is {list(shape)}"
        if spec.kind == "block" and (shape[0] % spec.block_shape[0] or shape[1] % spec.block_shape[1]):
            return f"{pattern} does not divide shape {list(shape)}"
    return None


def _check_number(value: Any, argname: str, *, low: float, high: float = math.inf, low_open: bool = False) -> float:
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and (value > low if low_open else value >= low) and value <= high)
    if not ok:
        bound = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if math.isfinite(high) else "")
        raise InvalidArgumentError(f"{argname}={value!r} must be a finite number {bound}")
    return float(value)

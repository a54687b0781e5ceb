"""One plan for every front end: what each selected tensor gets (a sparsity or an exact count, the
pattern, the comparison group), from what the user asked for.

``prune_model``, the block stream and the checkpoint front ends all build a :class:`PruneSettings`
from their arguments and ask it for :meth:`PruneSettings.plan`. It checks the combination once
(pattern against sparsity, scope, OWL only for unstructured, the cap), and turns OWL's per-block outlier ratios into exact per-tensor counts
(:func:`pruneplug.layer_ratios.counts_from_ratios`).

Example::

    >>> import pruneplug as pp
    >>> s = pp.PruneSettings("wanda", sparsity=0.5)
    >>> s.plan({"a.weight": 10, "b.weight": 6})["b.weight"]
    TensorPlan(sparsity=0.5, count=None, pattern='unstructured', groups=None)
    >>> pp.PruneSettings("l1", sparsity=0.5, scope="global").cap()   # no layer removed whole
    0.99
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from pruneplug.criteria import Criterion, get_criterion
from pruneplug.errors import CalibrationRequiredError, InvalidArgumentError
from pruneplug.layer_ratios import (DEFAULT_LAMBDA, DEFAULT_M, block_units, check_owl_parameters,
                                    counts_from_ratios, resolve_max_layer_sparsity)
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
    """What the user asked for, checked once for every front end: ``method`` (a criterion name or
    object), ``sparsity`` / ``pattern``, ``scope`` (``"layer"``, or ``"global"`` for unstructured
    magnitude), ``groups``, ``layer_ratios`` (None/"uniform" or "owl", with ``owl_m`` and
    ``owl_lambda``, checked even without OWL) and ``max_layer_sparsity`` (no tensor loses more than
    this fraction; :func:`pruneplug.layer_ratios.resolve_max_layer_sparsity` gives the default and
    refuses a cap below 1 where every layer gets the same sparsity)."""

    def __init__(self, method: Any = "l1", *, sparsity: float | None = None, pattern: str = "unstructured",
                 scope: str = "layer", groups: str | None = None, layer_ratios: str | None = None,
                 owl_m: float = DEFAULT_M, owl_lambda: float = DEFAULT_LAMBDA,
                 max_layer_sparsity: float | None = None) -> None:
        self.criterion: Criterion = get_criterion(method)
        self.sparsity, self.pattern, self.scope, self.groups = sparsity, pattern, scope, groups
        if layer_ratios not in (None, *LAYER_RATIOS):
            raise InvalidArgumentError(f"layer_ratios={layer_ratios!r}: expected None, 'uniform' or 'owl'")
        self.layer_ratios = None if layer_ratios == "uniform" else layer_ratios
        self.owl_m, self.owl_lambda = check_owl_parameters(owl_m, owl_lambda)
        self._check()
        self.max_layer_sparsity = resolve_max_layer_sparsity(max_layer_sparsity, scope, sparsity, self.layer_ratios)

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
        if self.scope not in ("layer", "global"):
            raise InvalidArgumentError(f"scope={self.scope!r}: expected 'layer' or 'global'")
        if self.scope == "global" and (spec.kind != "unstructured"
                                       or getattr(self.criterion, "method", None) not in ("l1", "l2")):
            raise InvalidArgumentError(f"scope='global' applies to unstructured magnitude pruning, not pattern="
                                       f"{self.pattern!r} with method={self.criterion.name!r} (Wanda compares scores "
                                       "within each output row)")
        if self.owl and (spec.kind != "unstructured" or self.scope != "layer"):
            raise InvalidArgumentError("layer_ratios='owl' applies to unstructured pruning with scope='layer' "
                                       f"(got pattern={self.pattern!r}, scope={self.scope!r})")

    @property
    def owl(self) -> bool:
        return self.layer_ratios == "owl"

    @property
    def statistics(self) -> frozenset:
        """The calibration statistics this needs: the criterion's, plus input norms for OWL (whose
        outlier ratios are computed from Wanda scores whatever the method)."""
        return self.criterion.statistics | (frozenset({"input_norms"}) if self.owl else frozenset())

    def check_calibration(self, available: bool) -> None:
        """A :class:`CalibrationRequiredError` when statistics are needed and none are given."""
        if not available and self.statistics:
            if self.owl and not self.criterion.statistics:
                raise CalibrationRequiredError("owl", "OWL's outlier ratios are computed from Wanda scores")
            raise CalibrationRequiredError(self.criterion.name)

    def plan(self, sizes: Mapping[str, int], owl_ratios: Mapping[str, float] | None = None,
             units: Mapping[str, str] | None = None) -> dict[str, TensorPlan]:
        """name -> :class:`TensorPlan` for tensors of ``sizes`` (name -> number of weights), layer
        scope. With OWL, ``owl_ratios`` are the outlier ratios of the units (``units``: name ->
        unit, by default the block prefix); tensors outside every unit get the uniform sparsity."""
        names = list(sizes)
        plans = {n: TensorPlan(self.sparsity, None, self.pattern, self.groups) for n in names}
        if self.owl:
            if owl_ratios is None:
                raise InvalidArgumentError("layer_ratios='owl' needs the units' outlier ratios")
            units = dict(units) if units is not None else block_units(names)
            inside = [n for n in names if units.get(n) in owl_ratios]
            counts = counts_from_ratios({units[n]: owl_ratios[units[n]] for n in inside},
                                        {n: units[n] for n in inside}, {n: sizes[n] for n in inside},
                                        self.sparsity, lam=self.owl_lambda, max_layer_sparsity=self.cap())
            for name, k in counts.items():
                plans[name] = TensorPlan(None, k, self.pattern, self.groups)
        return plans

    def cap(self) -> float:
        return float(self.max_layer_sparsity)

    def describe(self) -> dict:
        """The settings as the report's ``settings`` shows them."""
        d = {"method": self.criterion.name, "sparsity": self.sparsity, "pattern": self.pattern, "scope": self.scope,
             "groups": self.groups or (self.criterion.default_groups if self.pattern == "unstructured" else "layer")}
        if self.owl:
            d["layer_ratios"] = {"method": "owl", "m": self.owl_m, "lambda": self.owl_lambda,
                                 "max_layer_sparsity": self.cap()}
        elif self.cap() < 1.0:
            d["max_layer_sparsity"] = self.cap()
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

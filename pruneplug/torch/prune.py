"""prune_model: prune the selected weights of a ``torch.nn.Module`` in place, by any criterion."""

from __future__ import annotations

import os
import time
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from pruneplug import api
from pruneplug.calibration import ActivationStats, CalibrationContext
from pruneplug.checkpoint import global_unstructured_masks
from pruneplug.report import PruneReport, TensorReport
from pruneplug.selection_rule import SELECTION_RULE
from pruneplug.criteria import prune_scored
from pruneplug.errors import (CalibrationError, CalibrationRequiredError, HessianError, InvalidArgumentError,
                              NonFiniteError, PrunePlugError)
from pruneplug.torch.calibrate import calibrate, calibrate_blockwise
from pruneplug.torch.layers import linear_layers, selected_parameters
from pruneplug.layer_ratios import (DEFAULT_LAMBDA, DEFAULT_M, block_units, capped_counts, layer_caps,
                                    unit_outlier_ratios)
from pruneplug.plan import PruneSettings
from pruneplug.reconstruction.block import ReconstructSettings
from pruneplug.criteria.wanda import WandaImportance
from pruneplug.reconstruction.hessian import check_hessian
from pruneplug.validation import count_to_prune, shown

_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64"}


def prune_model(model: Any, sparsity: float | None = None, *, pattern: str = "unstructured", scope: str = "layer",
                method: str = "l1", groups: str | None = None, calibration: Any = None,
                calibration_mode: str | None = None, include: Sequence[str] | None = None,
                exclude: Sequence[str] | None = None, backend: str | None = None,
                axis: int | None = None, statistics: CalibrationContext | None = None,
                layer_ratios: str | None = None, owl_m: float = DEFAULT_M, owl_lambda: float = DEFAULT_LAMBDA,
                max_layer_sparsity: float | None = None, stats_dtype: str = "float32",
                reconstruct: ReconstructSettings | None = None) -> PruneReport:
    """Prune the selected weights of ``model`` in place and return the report the CLI prints.

    * Which weights: the CLI's rule (:data:`pruneplug.selection_rule.SELECTION_RULE`) applied
      to ``model.named_parameters()`` names, with ``include`` / ``exclude`` regexes.
    * ``method``: a criterion name (``"l1"``, ``"l2"``, ``"wanda"``, a plugin's) or a
      :class:`~pruneplug.criteria.Criterion`. Criteria that need calibration take ``calibration``:
      a :class:`CalibrationContext`, a statistics file path, or an iterable of batches (run through
      the model, ``calibration_mode`` ``"sequential"`` or ``"one-pass"``; by default sequential for
      SparseGPT and one-pass otherwise: :meth:`pruneplug.PruneSettings.calibration_mode`).
    * ``sparsity`` with ``pattern="unstructured"`` (``scope`` ``"layer"``, or ``"global"`` for
      magnitude on CPU tensors: exactly ``round(sparsity * total)`` over all selected weights),
      ``"row"``, ``"column"``, ``"block(H,W)"``; or ``pattern="N:M"`` alone. ``groups`` for
      unstructured: ``"layer"`` or ``"row"`` (the criterion's default: ``"row"`` for Wanda).
    * ``statistics``: a :class:`CalibrationContext` that receives the statistics the weights were
      scored with (those collected from batches included), e.g. to save them.
    * ``method="sparsegpt"``: SparseGPT with its weight update (the Hessian ``X^T X`` of each layer
      is collected; in sequential mode one layer at a time, see ``docs/sparsegpt.md``).
    * ``layer_ratios="owl"`` (unstructured, layer scope; needs calibration): per-layer sparsities
      from activation outliers (``owl_m``, ``owl_lambda``), with the total count exact; the report
      gives each tensor's sparsity and ``settings["layer_ratios"]`` the outlier ratios.
    * ``max_layer_sparsity``: no tensor loses more than this fraction (default 0.99 with
      ``scope="global"``, so that no layer is removed whole; 1.0 otherwise). Global scope stays exact
      in total (water-filling: :func:`pruneplug.layer_ratios.capped_counts`).
    * ``stats_dtype``: accumulation dtype of the statistics collected from batches (``"float32"``,
      as the references; ``"float64"``; docs/calibration.md gives the measured difference).
    * ``reconstruct``: a :class:`pruneplug.ReconstructSettings` with ``steps > 0`` re-fits each
      pruned block's surviving weights (masks fixed) to the dense block's outputs on the
      calibration batches, with Adam (docs/reconstruction.md). Needs ``calibration`` batches and
      ``scope="layer"``; works with every criterion and pattern (magnitude too: it is then
      pruned block by block). ``settings["reconstruction_losses"]``: each block's losses.
    * CPU tensors are pruned through NumPy views, CUDA tensors through DLPack on the ``cuda``
      backend: no host copies.

    Example::

        >>> import torch, pruneplug as pp
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
        >>> report = pp.torch.prune_model(model, 0.5, method="wanda", calibration=[torch.randn(16, 8)])
        >>> report.totals()["selected_sparsity_after"]
        0.5
    """
    started = time.perf_counter()
    _check_calibration_type(calibration)
    plan = PruneSettings(method, sparsity=sparsity, pattern=pattern, scope=scope, groups=groups,
                         layer_ratios=layer_ratios, owl_m=owl_m, owl_lambda=owl_lambda,
                         max_layer_sparsity=max_layer_sparsity)
    calibration_mode = plan.calibration_mode(calibration_mode)
    criterion, owl, cap = plan.criterion, plan.owl, plan.cap()
    refit = _check_reconstruct(reconstruct, calibration, scope, calibration_mode)
    if owl and calibration is not None and not isinstance(calibration, (CalibrationContext, str, os.PathLike)):
        calibration = list(calibration)  # read twice: OWL's pass over the dense model, then the pruning
    if owl:
        plan.check_calibration(calibration is not None)
    params = selected_parameters(model, include, exclude)
    if not params:
        raise InvalidArgumentError(f"prune_model: no parameter selected (rule: {SELECTION_RULE})")
    _check_materialized(params)
    input_axes = {layer.name: layer.input_axis for layer in linear_layers(model, list(params))}
    rows = {n: _row(n, p) for n, p in model.named_parameters() if n in params}
    zeros_before = {n: _zeros(p) for n, p in params.items()}

    counts: dict[str, int] = {}
    ratios_info: dict[str, Any] = {}
    if owl:
        outlier_ratios = _owl_ratios(model, params, calibration, plan.owl_m)
        counts = {n: p.count for n, p in plan.plan({n: p.numel() for n, p in params.items()}, outlier_ratios).items()
                  if p.count is not None}
        ratios_info = {"method": "owl", "m": plan.owl_m, "lambda": plan.owl_lambda, "max_layer_sparsity": cap,
                       "outlier_ratios": outlier_ratios}

    metrics: dict[str, dict] = {}
    block_losses: dict[str, dict] = {}

    def prune_some(ctx: CalibrationContext | None, names: Iterable[str]) -> None:
        names = list(names)
        _check_ready(names, params, criterion, ctx)  # everything that can fail, before the first write
        if statistics is not None and ctx is not None:
            for name in names:
                statistics.add(name, ctx[name])
        for name in names:
            result = _prune_one(name, params[name], criterion, None if name in counts else sparsity, pattern, groups,
                                ctx, backend, axis, counts.get(name), input_axes.get(name))
            if result is not None:
                metrics[name] = dict(result.metrics)

    hessian = "hessian" in criterion.statistics
    if scope == "global":
        ratios_info = {"max_layer_sparsity": cap}
        _prune_global(params, sparsity, criterion, backend, cap)
    elif criterion.requires_calibration() or refit:
        if calibration is None:
            raise CalibrationRequiredError(criterion.name)
        _calibrated(model, params, calibration, calibration_mode, prune_some, hessian, stats_dtype,
                    reconstruct if refit else None, block_losses)
    else:
        prune_some(None, params)

    for name, row in rows.items():
        row.zeros_before = zeros_before[name]
        row.zeros_after = _zeros(params[name])
        row.pruned = row.zeros_after - row.zeros_before if row.zeros_after >= row.zeros_before else 0
    settings = {"sparsity": sparsity, "pattern": pattern, "scope": scope, "method": criterion.name,
                "groups": groups or criterion.default_groups, "include": list(include or []),
                "exclude": list(exclude or []), "backend": backend or "auto"}
    if ratios_info:
        settings["layer_ratios"] = ratios_info
    if metrics:
        settings["reconstruction"] = metrics
    if refit:
        settings["reconstruct"] = reconstruct.describe()
        settings["reconstruction_losses"] = block_losses
    if criterion.requires_calibration():
        settings["calibration"] = calibration_mode if not isinstance(calibration, (CalibrationContext, str,
                                                                                   os.PathLike)) else str(
            getattr(calibration, "source", calibration))
    kept = [TensorReport(n, list(p.shape), _DTYPES.get(p.dtype, str(p.dtype)), p.numel(), "kept", "not selected")
            for n, p in model.named_parameters() if n not in params]
    return PruneReport(input=type(model).__name__, output=None, settings=settings,
                       selection_rule=SELECTION_RULE if not include else "--include/--exclude regexes",
                       tensors=sorted(list(rows.values()) + kept, key=lambda r: r.name),
                       seconds=time.perf_counter() - started)


def _zeros(p: torch.Tensor) -> int:
    """Zeros of a parameter (NumPy on CPU tensors: no torch thread pool for a count)."""
    t = p.detach()
    if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64, torch.float16):
        return int(t.numel() - np.count_nonzero(t.numpy()))
    return int((t == 0).sum())


def _row(name: str, p: torch.Tensor) -> TensorReport:
    return TensorReport(name, list(p.shape), _DTYPES.get(p.dtype, str(p.dtype)), p.numel(), "pruned")


def _check_calibration_type(calibration: Any) -> None:
    """``calibration`` is None, a context, a statistics file path or an iterable of batches: any
    other value is refused up front, naming the argument (not a bare TypeError later)."""
    if isinstance(calibration, ActivationStats):
        raise InvalidArgumentError("calibration: prune_model needs per-layer statistics (a CalibrationContext), not "
                                   "one layer's ActivationStats")
    if calibration is None or isinstance(calibration, (CalibrationContext, str, os.PathLike)):
        return
    if isinstance(calibration, (bytes, bytearray)) or not isinstance(calibration, Iterable):
        raise InvalidArgumentError(f"calibration={shown(calibration)} ({type(calibration).__name__}): expected a "
                                   "CalibrationContext, a statistics file path or an iterable of batches")


def _check_materialized(params: dict[str, torch.Tensor]) -> None:
    """A parameter on the meta device has a shape but no values: nothing to score or prune."""
    meta = [n for n, p in params.items() if p.device.type == "meta"]
    if meta:
        raise InvalidArgumentError(
            f"tensor {meta[0]!r} is on the meta device ({len(meta)} selected parameter(s)): it has no values to prune; "
            "materialize the model first (e.g. model.to_empty(device=...) and load_state_dict)")


def _check_ready(names: Sequence[str], params: dict[str, torch.Tensor], criterion: Any,
                 ctx: CalibrationContext | None) -> None:
    """The checks the per-tensor pruning would make one tensor at a time, made for every tensor of
    ``names`` before the first is written, so that a failure leaves all of them as they were:
    finite weights, statistics present and fitting each shape, a Hessian where the criterion needs
    one."""
    for name in names:
        p = params[name]
        bad = int((~torch.isfinite(p.detach())).sum())
        if bad:
            first = int(torch.nonzero(~torch.isfinite(p.detach().reshape(-1)))[0, 0])
            raise NonFiniteError(f"tensor {name!r}: weights contain {bad} non-finite value(s) (NaN or Inf), first at "
                                 f"flat index {first}; {criterion.name} needs finite weights (nothing was pruned)",
                                 count=bad, first_index=first)
        if ctx is None:
            continue
        stats = ctx.check_layer(name, tuple(p.shape))
        if "hessian" not in criterion.statistics:
            continue
        where = f"{ctx.source}: " if ctx.source else ""
        if stats.hessian is None:
            raise CalibrationError(f"{where}{criterion.name}: the statistics of tensor {name!r} have no Hessian; collect "
                                   "them with pp.torch.calibrate(..., hessian=True) or `pruneplug calibrate --hessian`"
                                   "; nothing was pruned")
        try:
            hessian = stats.hessian
            check_hessian(hessian if isinstance(hessian, torch.Tensor) else torch.from_numpy(np.asarray(hessian)),
                          stats.in_features, name)
        except PrunePlugError as exc:
            exc.args = (f"{where}{exc.args[0]}",) + exc.args[1:]
            raise


def _mark_written(p: torch.Tensor) -> None:
    """Pruning writes the parameter's storage from outside autograd (NumPy views, DLPack, ``.data``),
    which autograd cannot see; bump its version counter as an in-place op on the parameter itself
    would, so that a tensor saved for backward before pruning raises autograd's in-place error
    instead of silently differentiating with the new values. Frozen parameters
    (``requires_grad=False``) are weights like any other: pruned, and marked the same way."""
    torch.autograd.graph.increment_version(p)


def _prune_one(name: str, p: torch.Tensor, criterion: Any, sparsity: float | None, pattern: str, groups: str | None,
               ctx: CalibrationContext | None, backend: str | None, axis: int | None, count: int | None = None,
               input_axis: int | None = None) -> Any:
    try:
        if ctx is not None:
            ctx.check_layer(name, tuple(p.shape))
        with torch.no_grad():
            result = prune_scored(p.data, criterion, sparsity=sparsity, pattern=pattern, groups=groups,
                                  calibration=ctx, layer=name, axis=axis, backend=backend, count=count,
                                  input_axis=input_axis)
            _mark_written(p)
            return result
    except PrunePlugError as exc:
        if exc.args and name not in str(exc.args[0]):  # name the tensor: the core does not know it
            exc.args = (f"tensor {name!r}: {exc.args[0]}",) + exc.args[1:]
        source = getattr(ctx, "source", None)
        if isinstance(exc, HessianError) and exc.args and source and str(source) not in str(exc.args[0]):
            exc.args = (f"{source}: {exc.args[0]}",) + exc.args[1:]  # and the file the Hessian came from
        raise


def _prune_global(params: dict[str, torch.Tensor], sparsity: float, criterion: Any, backend: str | None,
                  cap: float) -> None:
    """Exact global magnitude pruning with every tensor capped at ``cap`` (water-filling over the
    exact global selection; then each tensor pruned to its count, whose stable order is the global
    order restricted to it)."""
    if any(p.device.type != "cpu" for p in params.values()):
        raise InvalidArgumentError("scope='global' supports CPU tensors only (prune CUDA models with scope='layer')")
    names = list(params)
    sizes = [params[n].numel() for n in names]

    def select(active: Sequence[int], k: int) -> list[int]:
        if k == 0:
            return [0] * len(active)
        masks = global_unstructured_masks({names[t]: params[names[t]].data for t in active}, count=k,
                                          method=criterion.method, backend=backend)
        return [sizes[t] - int(np.count_nonzero(np.asarray(masks[names[t]].data))) for t in active]

    counts = capped_counts(count_to_prune(sparsity, sum(sizes)), layer_caps(sizes, cap), select)
    with torch.no_grad():
        for name, size, k in zip(names, sizes, counts):
            api.prune(params[name].data, count=k, method=criterion.method, backend=backend, inplace=True)
            _mark_written(params[name])


class _WandaScores(Mapping):
    """name -> Wanda scores (NumPy), computed when asked for: OWL reads each tensor's scores twice
    (sums, then counts) without holding every tensor's scores at once."""

    def __init__(self, params: dict[str, torch.Tensor], ctx: CalibrationContext) -> None:
        self.params, self.ctx = params, ctx

    def __getitem__(self, name: str) -> Any:
        scores = WandaImportance().compute(self.params[name].data, self.ctx, layer=name).values
        return scores.cpu().numpy() if isinstance(scores, torch.Tensor) else scores

    def __iter__(self) -> Any:
        return iter(self.params)

    def __len__(self) -> int:
        return len(self.params)


def _owl_ratios(model: Any, params: dict[str, torch.Tensor], calibration: Any, m: float) -> dict[str, float]:
    """OWL's outlier ratio of every block from the dense model's Wanda scores (statistics from the
    given context or file, or one pass of the batches through the dense model, as the OWL
    reference); the counts follow from :meth:`pruneplug.PruneSettings.plan`."""
    if isinstance(calibration, (str, os.PathLike)):
        ctx = CalibrationContext.load(calibration)
    elif isinstance(calibration, CalibrationContext):
        ctx = calibration
    else:
        calibration = list(calibration)
        ctx = calibrate(model, calibration, layers=linear_layers(model, list(params)))
    missing = [n for n in params if n not in ctx]
    if missing:
        raise CalibrationError(f"OWL: no statistics for tensor {missing[0]!r} ({len(missing)} selected weight(s))")
    return unit_outlier_ratios(_WandaScores(params, ctx), block_units(list(params)), m)

def _check_reconstruct(reconstruct: Any, calibration: Any, scope: str, mode: str) -> bool:
    """Whether blocks are re-fitted; a typed error when ``reconstruct`` cannot apply."""
    if reconstruct is None:
        return False
    if not isinstance(reconstruct, ReconstructSettings):
        raise InvalidArgumentError(f"reconstruct={shown(reconstruct)} ({type(reconstruct).__name__}): expected a "
                                   "pruneplug.ReconstructSettings or None")
    if not reconstruct.enabled:
        return False
    if calibration is None or isinstance(calibration, (CalibrationContext, str, os.PathLike)):
        raise InvalidArgumentError(f"reconstruct (steps={reconstruct.steps}) needs calibration batches (the dense "
                                   "block's outputs are its targets), not "
                                   f"{'no calibration' if calibration is None else 'a statistics context or file'}")
    if scope != "layer":
        raise InvalidArgumentError(f"reconstruct (steps={reconstruct.steps}) works block by block: scope={scope!r} "
                                   "is not supported (use scope='layer')")
    reconstruct.check_mode(mode)
    return True


def _calibrated(model: Any, params: dict[str, torch.Tensor], calibration: Any, mode: str, prune_some: Any,
                hessian: bool = False, stats_dtype: str = "float32", reconstruct: ReconstructSettings | None = None,
                losses: dict | None = None) -> None:
    """Criteria with statistics: from a context or file (every selected weight must have its
    statistics), or from batches run through the model (sequential or one pass)."""
    if isinstance(calibration, (str, os.PathLike)):
        calibration = CalibrationContext.load(calibration)
    if isinstance(calibration, ActivationStats):
        raise InvalidArgumentError("calibration: prune_model needs per-layer statistics (a CalibrationContext), not "
                                   "one layer's ActivationStats")
    if isinstance(calibration, CalibrationContext):
        missing = [n for n in params if n not in calibration]
        if missing:
            raise CalibrationError(f"{calibration.source or 'calibration'}: no statistics for tensor {missing[0]!r} "
                                   f"({len(missing)} selected weight(s) without statistics)")
        calibration.check_names(dict(model.named_parameters()))
        prune_some(calibration, params)
        return
    layers = linear_layers(model, list(params))
    without = [n for n in params if n not in {l.name for l in layers}]
    if without:
        raise CalibrationError(f"tensor {without[0]!r} is not the weight of an nn.Linear or Conv1D: calibration cannot "
                               "collect its statistics (exclude it with exclude=[...])")
    calibrate_blockwise(model, calibration, lambda ctx: prune_some(ctx, list(ctx)), layers=layers, hessian=hessian,
                        sequential=mode == "sequential", stats_dtype=stats_dtype, reconstruct=reconstruct,
                        losses=losses)

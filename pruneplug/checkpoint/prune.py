"""prune_checkpoint: read a checkpoint one tensor at a time, prune the selected tensors and write
the same form.

The steps, in order: check the arguments; open the input and check every output path before any
work; decide each tensor's fate (pruned, skipped or kept); for global scope, plan each tensor's
exact count; then prune or copy every tensor inside one transaction, which renames the outputs into
place only when all of it succeeded.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pruneplug import api
from pruneplug.arrays import float_view
from pruneplug.checkpoint.formats import Checkpoint, TensorRef, array_zeros, open_checkpoint
from pruneplug.checkpoint.global_select import (
    Brackets,
    GlobalPlan,
    count_shares,
    decide_global,
    plan_capped,
    shares_of,
    tensor_source,
    tie_quotas,
)
from pruneplug.checkpoint.outputs import (
    check_side_outputs,
    check_writable_form,
    stores_compressed,
    check_space,
    finish_directory,
    plan_outputs,
    resolve_output,
    settings_metadata,
)
from pruneplug.report import ProgressLike, PruneReport, TensorReport, NullProgress
from pruneplug.selection_rule import as_patterns
from pruneplug.selection_rule import SELECTION_RULE, select_tensors
from pruneplug.checkpoint.writers import (
    SafetensorsWriter,
    Transaction,
    terminate_like_interrupt,
    write_guard,
)
from pruneplug.errors import BackendUnavailableError, CheckpointError, HessianError, InvalidArgumentError, PrunePlugError
from pruneplug.layer_ratios import block_units, layer_caps, unit_outlier_ratios
from pruneplug.patterns import parse_pattern
from pruneplug.plan import PruneSettings, pattern_misfit
from pruneplug.validation import check_method, check_sparsity, count_to_prune
from pruneplug.registry import get_registry
from pruneplug.selection import (
    ExactSelection,
    chunk_histogram,
    count_zeros as count_zero_scores,
    mag16_keys,
    prune_part,
    sample_bits,
    zeros_after_pruning,
)


FORMATS = ("dense", "sparse-24-bitmask", "sparse-bitmask")


@dataclass
class TensorTask:
    """One tensor's fate (``status`` "pruned", "skipped" or "kept", and why) and, where decided
    beforehand, its exact count to prune ``k`` (global scope, OWL; else known once it is pruned)
    and its share of the ties at the global threshold ``quota`` (when the tensors were counted under
    the plan's selection; ``None`` for a tensor held at a layer cap)."""

    ref: TensorRef
    status: str
    reason: str | None = None
    k: int | None = None
    quota: int | None = None
    zeros: tuple[int, int] | None = None  # zeros and zero scores before, when the plan's pass counted them


@dataclass(frozen=True)
class HowToPrune:
    """The settings every tensor is pruned and stored with, passed to the per-tensor step
    (:class:`TensorPruner`) as one."""

    pattern: str
    sparsity: float | None
    method: str
    axis: int
    format: str
    backend: str | None
    kind: str  # the checkpoint's form: how an unpruned tensor is copied
    xp: Any = None  # CuPy to prune on the GPU (see _device_module), None for NumPy
    plan: GlobalPlan | None = None  # global scope: the decided selection
    calibration: Any = None  # a CalibrationContext: criteria with statistics (Wanda) score through it
    groups: str | None = None  # comparison group of unstructured pruning (None: the criterion's own)


def prune_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike | None = None,
    *,
    sparsity: float | None = None,
    pattern: str = "unstructured",
    scope: str = "layer",
    method: str = "l1",
    axis: int = -1,
    format: str = "dense",
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    backend: str | None = None,
    masks_out: str | os.PathLike | None = None,
    report: str | os.PathLike | None = None,
    warn_sparsity: float = 0.95,
    dry_run: bool = False,
    strict: bool = False,
    in_place: bool = False,
    progress: ProgressLike | None = None,
    calibration: Any = None,
    groups: str | None = None,
    layer_ratios: str | None = None,
    owl_m: float = 5.0,
    owl_lambda: float = 0.08,
    max_layer_sparsity: float | None = None,
    _before_commit: Callable[[], None] | None = None,
) -> PruneReport:
    """Prune a checkpoint and write it in the same form; return a :class:`PruneReport`.

    ``src`` is a ``.safetensors`` file, a sharded directory (``model.safetensors.index.json``), a
    model directory (one ``model.safetensors``, config and tokenizer files) or an ``.npz``; ``dst``
    the output (a file, or a directory for a directory input; an existing directory
    given for a single file receives a file of the input's name). ``dst`` equal to ``src`` needs
    ``in_place=True``; ``dry_run=True`` computes everything and writes nothing but the report.

    ``pattern="unstructured"`` with ``sparsity`` and ``scope="layer"`` (each tensor) or ``"global"``
    (exactly ``round(sparsity*total)`` over all selected tensors, see :mod:`pruneplug.checkpoint.global_select`);
    ``"N:M"`` along ``axis``; ``"row"``, ``"column"``, ``"block(H,W)"`` per tensor. Tensors the pattern
    does not fit are skipped and reported, or an error with ``strict=True``. ``format`` stores pruned
    weights dense or in a compressed-tensors format. Which tensors: :data:`SELECTION_RULE`.
    ``method`` is any importance criterion (``pruneplug.criteria``); one that needs statistics
    (``"wanda"``) takes ``calibration`` (a statistics file or :class:`~pruneplug.CalibrationContext`),
    checked against the checkpoint (names, feature counts) before anything is written. ``groups``:
    ``"layer"`` or ``"row"`` for unstructured pruning (default: the criterion's own).
    ``layer_ratios="owl"`` (unstructured, layer scope, with ``calibration``): per-tensor counts from
    OWL (``owl_m``, ``owl_lambda``; Wanda scores of the checkpoint's tensors, read once more),
    exact in total. ``max_layer_sparsity``: no tensor loses more than this fraction (default 0.99
    with global scope; ``docs/sparsegpt.md``).

    Every output (checkpoint, masks, report) is written to a temporary file next to it and renamed
    at the end; any error leaves no partial output. ``include``/``exclude`` are regexes, a single
    string being one regex. A pruned tensor that ends ``warn_sparsity`` or more zero (default 0.95)
    is flagged in the report (``nearly_removed``).

    Example::

        report = pp.prune_checkpoint("model.safetensors", "pruned.safetensors", sparsity=0.5, scope="global")
        print(report.format_table())
    """
    include, exclude = as_patterns(include, "include"), as_patterns(exclude, "exclude")
    if isinstance(warn_sparsity, bool) or not isinstance(warn_sparsity, (int, float)) or not 0 <= warn_sparsity <= 1:
        raise InvalidArgumentError(f"warn_sparsity={warn_sparsity!r} must be a number in [0, 1]")
    started = time.perf_counter()
    progress = progress or NullProgress()
    src_path = Path(src)
    owl_stats = calibration  # OWL reads Wanda scores whatever the method (magnitude too)
    calibration_path = Path(calibration) if isinstance(calibration, (str, os.PathLike)) else None
    calibration, groups = _check_criterion(method, scope, calibration, masks_out, groups)
    _check_arguments(sparsity, pattern, scope, method if method in ("l1", "l2") else "l1", axis, format)
    prune_settings = PruneSettings(method, sparsity=sparsity, pattern=pattern, scope=scope, groups=groups,
                                   layer_ratios=layer_ratios, owl_m=owl_m, owl_lambda=owl_lambda,
                                   max_layer_sparsity=max_layer_sparsity)  # the plan every front end shares
    owl_m, owl_lambda, cap = prune_settings.owl_m, prune_settings.owl_lambda, prune_settings.cap()
    ckpt = open_checkpoint(src_path)
    if format != "dense" and ckpt.kind == "npz":
        raise InvalidArgumentError(f"format={format!r} is a safetensors format; an npz checkpoint can only be written dense")
    out_path = resolve_output(ckpt, dst, in_place, dry_run)
    masks_path = Path(masks_out) if masks_out is not None else None
    report_path = Path(report) if report is not None else None
    check_side_outputs(ckpt, out_path, masks_path, report_path, in_place, dry_run, calibration_path)

    names = sorted(ckpt.tensors)  # tensor order: sorted by name, whatever the file layout
    tasks = _decide_tasks(ckpt, names, include, exclude, pattern, axis, strict)
    selected = [n for n in names if tasks[n].status == "pruned"]
    if not selected:
        raise CheckpointError(
            f"{src_path}: no tensor selected for pruning ({len(names)} tensors; rule: {SELECTION_RULE})")
    if calibration is not None:  # statistics for exactly these tensors, of these shapes, before any work
        calibration.check_names(names)
        for n in selected:
            calibration.check_layer(n, tasks[n].ref.shape)
    if out_path is not None:
        check_space(out_path, ckpt.total_bytes + (sum(ckpt.tensors[n].numel for n in selected) if masks_path else 0))
    check_writable_form(ckpt, [n for n in selected if stores_compressed(ckpt.tensors[n].shape, format)], format)
    plan = _plan_global_counts(tasks, selected, sparsity, method, progress, cap) if scope == "global" else None
    if plan is not None:
        apply_plan(tasks, selected, plan)
    if layer_ratios == "owl" and calibration is None and owl_stats is not None:
        from pruneplug.calibration import CalibrationContext

        calibration_for_owl = owl_stats if isinstance(owl_stats, CalibrationContext) else CalibrationContext.load(owl_stats)
    else:
        calibration_for_owl = calibration
    owl = _owl_plan(tasks, selected, prune_settings, calibration_for_owl) if prune_settings.owl else None

    settings = {
        "sparsity": sparsity, "pattern": pattern, "scope": scope, "method": method,
        "axis": axis, "format": format, "include": list(include or []), "exclude": list(exclude or []),
        "backend": backend or "auto", "strict": strict,
    }
    if owl is not None:
        settings["layer_ratios"] = owl
    if scope == "global":
        settings["max_layer_sparsity"] = cap
    how = HowToPrune(pattern, sparsity, method, axis, format, backend, ckpt.kind, _device_module(backend), plan=plan,
                      calibration=calibration, groups=groups)
    metadata_extra = settings_metadata(settings, selected, plan)

    with terminate_like_interrupt(), Transaction() as txn:
        writers: list[Any] = []  # open writers: discarded (their temporaries closed) whatever happens
        try:
            outputs = plan_outputs(ckpt, out_path, txn, dry_run, format)
            mask_writer = None
            if masks_path is not None and not dry_run:
                mask_writer = _open_mask_writer(txn, masks_path, outputs, tasks, metadata_extra)
                writers.append(mask_writer)
            progress.start("pruning" if not dry_run else "pruning (dry run)", len(names), ckpt.total_bytes)
            rows = _prune_tensors(outputs, tasks, mask_writer, how, metadata_extra, writers, progress, dry_run)
            if mask_writer is not None:
                mask_writer.close()
                writers.remove(mask_writer)
            progress.close()
            if out_path is not None and not dry_run:
                finish_directory(ckpt, outputs, rows, format, settings, plan, out_path)
            report_obj = PruneReport(
                input=str(src_path), output=None if dry_run or out_path is None else str(out_path),
                settings=settings, selection_rule=SELECTION_RULE if not include else "--include/--exclude regexes",
                tensors=[rows[n] for n in names], threshold=plan.threshold if plan else None,
                passes=plan.passes if plan else 0, dry_run=dry_run, seconds=time.perf_counter() - started,
                masks_out=str(masks_path) if masks_path is not None and not dry_run else None,
                warn_sparsity=warn_sparsity,
            )
            if report_path is not None:
                _write_report(txn, report_path, report_obj)
            if _before_commit is not None:
                _before_commit()
            txn.commit()
        except OSError as exc:
            raise CheckpointError(f"cannot write the output: {exc.strerror or exc}") from exc
        finally:
            for w in writers:
                w.discard()
            progress.close()
    return report_obj


# ---------------------------------------------------------------------------------------------
# before the work: arguments, each tensor's fate, the global plan
# ---------------------------------------------------------------------------------------------
def _check_criterion(method: Any, scope: str, calibration: Any, masks_out: Any, groups: str | None) -> tuple[Any, str]:
    """The CalibrationContext of a criterion that needs statistics (None for magnitude) and the
    comparison group (the criterion's own unless ``groups`` says), after the checks that only
    concern them."""
    from pruneplug.calibration import CalibrationContext
    from pruneplug.criteria import get_criterion
    from pruneplug.errors import CalibrationRequiredError

    if groups not in (None, "layer", "row"):
        raise InvalidArgumentError(f"groups={groups!r}: expected 'layer' or 'row'")
    if groups == "row" and scope == "global":
        raise InvalidArgumentError("groups='row' compares within each row of each tensor: it cannot be combined "
                                   "with scope='global'")
    if method in ("l1", "l2"):  # the core's magnitude methods (checked with the other arguments)
        return None, groups or "layer"
    criterion = get_criterion(method)
    groups = groups or criterion.default_groups
    if scope == "global":
        raise InvalidArgumentError(f"scope='global' applies to magnitude pruning (method 'l1' or 'l2'); "
                                   f"method={criterion.name!r} compares scores within each tensor")
    if not criterion.requires_calibration():
        return None, groups
    if calibration is None:
        raise CalibrationRequiredError(criterion.name)
    if masks_out is not None:
        raise InvalidArgumentError(f"--masks-out is not supported with method={criterion.name!r}")
    if not isinstance(calibration, CalibrationContext):
        calibration = CalibrationContext.load(calibration)
    return calibration, groups


def _check_arguments(sparsity: float | None, pattern: str, scope: str, method: str, axis: int, format: str) -> None:
    if scope not in ("layer", "global"):
        raise InvalidArgumentError(f"scope={scope!r}: expected 'layer' or 'global'")
    if format not in FORMATS:
        raise InvalidArgumentError(f"format={format!r}: expected one of {list(FORMATS)}")
    check_method(method)
    _check_pattern(sparsity, pattern, scope)
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise InvalidArgumentError(f"axis={axis!r} must be an integer")
    if format == "sparse-24-bitmask" and (pattern != "2:4" or axis not in (-1,)):
        raise InvalidArgumentError("format='sparse-24-bitmask' stores 2:4 sparsity along the last axis: use pattern='2:4' with axis=-1")


def _check_pattern(sparsity: float | None, pattern: str, scope: str) -> None:
    """N:M fixes the sparsity and is per tensor; the other patterns need a sparsity, and only
    unstructured pruning has a global scope."""
    spec = parse_pattern(pattern)
    if not spec.needs_sparsity:
        if sparsity is not None:
            raise InvalidArgumentError(f"sparsity={sparsity!r} cannot be combined with pattern={pattern!r}: N:M fixes it")
        if scope == "global":
            raise InvalidArgumentError(f"scope='global' applies to unstructured pruning, not pattern={pattern!r}")
        return
    if sparsity is None:
        raise InvalidArgumentError(f"pattern={pattern!r} needs a sparsity (a number in [0, 1])")
    check_sparsity(sparsity)
    if scope == "global" and pattern != "unstructured":
        raise InvalidArgumentError(f"scope='global' applies to unstructured pruning, not pattern={pattern!r}")


def _decide_tasks(ckpt: Checkpoint, names: list[str], include: Sequence[str] | None, exclude: Sequence[str] | None,
                  pattern: str, axis: int, strict: bool) -> dict[str, TensorTask]:
    """Each tensor's fate: "kept" (not selected), "skipped" (selected, but the pattern does not fit
    it; an error with ``strict``) or "pruned"."""
    reasons = select_tensors((ckpt.tensors[n] for n in names), include, exclude)
    tasks: dict[str, TensorTask] = {}
    for name in names:
        ref = ckpt.tensors[name]
        if reasons[name] is not None:
            tasks[name] = TensorTask(ref, "kept", reasons[name])
            continue
        why = _fits(ref, pattern, axis)
        if why is not None:
            if strict:
                raise CheckpointError(f"tensor {name!r} cannot be pruned with pattern {pattern!r}: {why} (drop --strict to skip it)")
            tasks[name] = TensorTask(ref, "skipped", why)
        else:
            tasks[name] = TensorTask(ref, "pruned")
    return tasks


def _fits(ref: TensorRef, pattern: str, axis: int) -> str | None:
    """Why ``pattern`` cannot be applied to ``ref`` (None when it can): the plan's one rule."""
    return pattern_misfit(pattern, tuple(ref.shape), axis)

def _pruned_count(pattern: str, sparsity: float | None, shape: tuple, k: int | None) -> int:
    n = math.prod(shape)
    if k is not None:
        return k
    spec = parse_pattern(pattern)
    if spec.kind == "nm":
        return n // spec.m * (spec.m - spec.n)
    if spec.kind == "unstructured":
        return count_to_prune(sparsity, n)
    if spec.kind == "row":
        return count_to_prune(sparsity, shape[0]) * shape[1]
    if spec.kind == "column":
        return count_to_prune(sparsity, shape[1]) * shape[0]
    bh, bw = spec.block_shape
    return count_to_prune(sparsity, (shape[0] // bh) * (shape[1] // bw)) * bh * bw


def _plan_global_counts(tasks: dict[str, TensorTask], selected: list[str], sparsity: float, method: str,
                        progress: ProgressLike, cap: float = 1.0) -> GlobalPlan:
    """Global scope: decide the threshold (a 16-bit checkpoint: one sampled-bracket pass; else, or
    when the sample misses, one streaming pass per key digit), each tensor's zeros counted in its
    first pass. Each tensor's exact count and tie share come from its bracket histogram, else (with
    a cap) from one counting pass; without a cap and a bracket they follow as the tensors are pruned.
    A dry run reports from them with no pass more. Where the cap binds (a tensor over it), the
    select runs again for the tensors below their caps
    (:func:`~pruneplug.checkpoint.global_select.plan_capped`; a kept bracket may decide it with no
    pass) and each tensor gets its exact count. ``plan.passes``: the passes over the data made."""
    sources = [tensor_source(tasks[n].ref) for n in selected]
    caps = layer_caps([s.numel for s in sources], cap)  # checks the cap before any pass
    k = count_to_prune(sparsity, sum(s.numel for s in sources))
    zeros: dict[str, tuple[int, int]] = {}
    brackets = Brackets()
    passes = [0]  # the passes over the data actually made

    def decide(chosen: Sequence[Any], k_chosen: int) -> tuple[ExactSelection, list[tuple[int, int]] | None]:
        before = brackets.passes
        selection = decide_global(chosen, None, method, progress, count=k_chosen, zeros=zeros, brackets=brackets)
        tallies = brackets.tallies(selection, chosen)  # a sampled bracket's histograms: no counting pass
        passes[0] += brackets.passes - before + (selection.passes if tallies is None else 0)
        return selection, tallies

    def select(active: Sequence[int], k_active: int):
        chosen = [sources[t] for t in active]
        selection, tallies = decide(chosen, k_active)
        if tallies is not None:
            return selection, shares_of(selection, tallies)
        passes[0] += selection.k not in (0, selection.n)  # the counting pass
        return selection, count_shares(selection, chosen, method)

    if cap >= 1.0 or k == 0:
        selection, tallies = decide(sources, k)
        plan = GlobalPlan(None, selection.threshold, 0, selection)
        if tallies is not None:  # every tensor's count and share of the ties, known without a pass
            shares = shares_of(selection, tallies)
            plan.counts, plan.quotas = shares.counts, list(shares.quotas)
    else:
        plan = plan_capped(k, caps, select)
    plan.passes = passes[0]
    plan.zeros = [zeros.get(s.name) for s in sources]
    return plan


def apply_plan(tasks: dict[str, TensorTask], selected: list[str], plan: GlobalPlan) -> None:
    """Give each selected tensor (in tensor order, as planned) its planned count, tie share and
    zeros."""
    for i, name in enumerate(selected):
        if plan.counts is not None:
            tasks[name].k = plan.counts[i]
        if plan.quotas is not None:
            tasks[name].quota = plan.quotas[i]
        if plan.zeros is not None:
            tasks[name].zeros = plan.zeros[i]


def _owl_plan(tasks: dict[str, TensorTask], selected: list[str], settings: PruneSettings, calibration: Any) -> dict:
    """OWL: exact per-tensor counts (``task.k``) from the outlier ratios of the Wanda scores of the
    selected tensors, by the plan every front end shares (:meth:`PruneSettings.plan`)."""
    from pruneplug.criteria.wanda import WandaImportance

    if calibration is None:
        raise InvalidArgumentError("layer_ratios='owl' needs calibration statistics (its outlier ratios come from "
                                   "Wanda scores): pass calibration=STATS")

    class Scores(dict):
        def __getitem__(self, name: str) -> Any:
            return WandaImportance().compute(tasks[name].ref.array(), calibration, layer=name).values

    units = block_units(selected)
    ratios = unit_outlier_ratios(Scores.fromkeys(selected), units, settings.owl_m)
    plans = settings.plan({n: tasks[n].ref.numel for n in selected}, ratios, units)
    for n in selected:
        tasks[n].k = plans[n].count
    return {"method": "owl", "m": settings.owl_m, "lambda": settings.owl_lambda,
            "max_layer_sparsity": settings.cap(), "outlier_ratios": ratios}

def _device_module(backend: str | None) -> Any:
    """CuPy when ``backend`` names an available backend that takes CuPy arrays and not NumPy ones
    (``--backend cuda``): tensors are then copied to the GPU, pruned there and copied back.
    Otherwise None (NumPy arrays; the core reports a backend that cannot run)."""
    if backend in (None, "auto"):
        return None
    status = next((b for b in api.backends() if b.name == backend), None)
    if status is None or not status.available or "numpy" in status.array_types or "cupy" not in status.array_types:
        return None
    import cupy

    return cupy


# ---------------------------------------------------------------------------------------------
# the work: every tensor pruned or copied, written, reported
# ---------------------------------------------------------------------------------------------
def _open_mask_writer(txn: Transaction, masks_path: Path, outputs, tasks: dict[str, TensorTask],
                      metadata_extra: dict[str, str]) -> SafetensorsWriter:
    """The ``--masks-out`` file: one BOOL keep-mask per pruned tensor, in the inputs' data order
    (the order the tensors are processed in, so the header can go first)."""
    order = [name for _, in_names, _, _ in outputs for name in in_names]
    mtmp = txn.stage_file(masks_path)
    with write_guard(masks_path):
        return SafetensorsWriter(
            mtmp, {"pruneplug.kind": "keep-masks (True = keep)", **metadata_extra},
            [(n, "BOOL", tasks[n].ref.shape, tasks[n].ref.numel) for n in order if tasks[n].status == "pruned"])


def _prune_tensors(outputs, tasks: dict[str, TensorTask], mask_writer: SafetensorsWriter | None, how: HowToPrune,
                   metadata_extra: dict[str, str], writers: list[Any], progress: ProgressLike,
                   dry_run: bool = False) -> dict[str, TensorReport]:
    """Every tensor, each file's writer added to ``writers`` while open.

    Dense safetensors outputs (and dry runs) take tensors at their offsets in any order: every
    writer is opened first and the tensors are processed in tensor order (sorted names), so the
    ties of a global selection are handed out as the tensors go by. Compressed formats and ``.npz``
    are written in file order, one file at a time, with the ties counted beforehand."""
    rows: dict[str, TensorReport] = {}
    pass_ = TensorPruner(how, [tasks[n] for n in sorted(tasks)], dry_run)
    in_tensor_order = how.format == "dense" and how.kind != "npz"
    pass_.count_first(in_tensor_order)
    if in_tensor_order:
        writer_of: dict[str, Any] = {}
        for _out_file, in_names, metadata, make_writer in outputs:
            writer = make_writer({**metadata, **metadata_extra}) if make_writer else None
            if writer is not None:
                writers.append(writer)
            writer_of.update(dict.fromkeys(in_names, writer))
        for name in sorted(writer_of):
            rows[name] = pass_.process(tasks[name], writer_of[name], mask_writer)
            progress.update(1, tasks[name].ref.nbytes)
        for writer in [w for w in writers if w is not mask_writer]:
            writer.close()
            writers.remove(writer)
        return rows
    for _out_file, in_names, metadata, make_writer in outputs:
        writer = make_writer({**metadata, **metadata_extra}) if make_writer else None
        if writer is not None:
            writers.append(writer)
        for name in in_names:
            rows[name] = pass_.process(tasks[name], writer, mask_writer)
            progress.update(1, tasks[name].ref.nbytes)
        if writer is not None:
            writer.close()
            writers.remove(writer)
    return rows


class TensorPruner:
    """The per-tensor step of checkpoint pruning, for :func:`prune_checkpoint` and the Dask workers
    of :mod:`pruneplug.dask_checkpoint` alike: :meth:`process` prunes (or copies) one tensor, counts
    its zeros before and after, writes it and returns its report row.

    Unstructured pruning (layer or global) on a backend with ``prune_below_key`` reads the
    memory-mapped input once per key digit (layer scope; global scope decided beforehand) and then
    once more to write the pruned copy into a reused buffer, counting the zeros before and after in
    that same pass (a dry run only counts); the buffer goes to the file with ``pwrite``. Other
    patterns and backends prune a copy with :func:`pruneplug.prune`.

    ``tasks`` are the tensors this pruner will see, in tensor order (those not pruned are ignored
    here). Under a global selection each tensor prunes its keys below the threshold and its share
    of the ties: the planned ``quota`` when known, else handed out as the tensors come in tensor
    order (see :meth:`count_first` for any other order).

    Example (the loop of one output file)::

        pruner = TensorPruner(how, [tasks[n] for n in names])
        rows = [pruner.process(tasks[n], writer, None) for n in names]
    """

    def __init__(self, how: HowToPrune, tasks: Sequence[TensorTask], dry_run: bool = False) -> None:
        self.how, self.dry_run = how, dry_run
        self.tasks = [t for t in tasks if t.status == "pruned"]
        self.fast = self._fast_path_applies()
        self.counts_zeros = self.fast and self._backend_counts_zeros()
        self.selection = how.plan.selection if how.plan is not None else None
        self.remaining = None if self.selection is None else self.selection.k - self.selection.below
        largest = max((t.ref.nbytes for t in self.tasks), default=0) if self.fast and not dry_run else 0
        self.scratch = np.empty(largest, np.uint8)  # reused: no page faults per tensor
        self.mask_scratch = np.empty(0, np.bool_)

    def _fast_path_applies(self) -> bool:
        how = self.how
        if how.pattern != "unstructured" or how.xp is not None:
            return False
        if how.calibration is not None or how.groups == "row" or how.method not in ("l1", "l2"):
            return False  # a criterion's scores or per-row groups: pruned through pruneplug.criteria
        dtypes = {t.ref.float_dtype for t in self.tasks}
        if not dtypes:
            return False
        registry = get_registry()
        try:
            for dtype in dtypes:
                name = registry.select(how.backend, array_type="numpy", dtype=dtype, operation="prune_below_key")
                registry.select(name, array_type="numpy", dtype=dtype, operation="key_histogram")
        except PrunePlugError:
            return False
        return True

    def _backend_counts_zeros(self) -> bool:
        """Whether the backend counts zeros (``count_zeros``) for every selected dtype."""
        registry = get_registry()
        try:
            for dtype in {t.ref.float_dtype for t in self.tasks}:
                registry.select(self.how.backend, array_type="numpy", dtype=dtype, operation="count_zeros")
        except PrunePlugError:
            return False
        return True

    def count_first(self, in_tensor_order: bool) -> None:
        """Global scope, before the first tensor, where the plan did not count the tensors (no
        layer cap): without the fast path each tensor is pruned by its exact count, and in any
        order but tensor order (compressed formats, ``.npz``: file order) each needs its share of
        the ties: one counting pass gives what is needed."""
        if self.selection is None or all(t.k is not None for t in self.tasks) or (self.fast and in_tensor_order):
            return  # layer scope; counts planned (a layer cap); or ties handed out in tensor order
        sources = [tensor_source(t.ref) for t in self.tasks]
        if not self.fast:
            shares = count_shares(self.selection, sources, self.how.method)
            for task, k, quota in zip(self.tasks, shares.counts, shares.quotas):
                task.k, task.quota = k, quota
        else:
            for task, quota in zip(self.tasks, tie_quotas(self.selection, sources, self.how.method, self.how.backend)):
                task.quota = quota

    def process(self, task: TensorTask, writer: Any, mask_writer: Any) -> TensorReport:
        """One tensor: pruned when selected, else copied unchanged; written (unless a dry run) and reported."""
        ref = task.ref
        row = TensorReport(ref.name, list(ref.shape), ref.dtype, ref.numel, task.status, task.reason)
        if task.status != "pruned":
            _count_unchanged(ref, row, self.how)
            if writer is not None:
                _copy_unchanged(ref, writer, self.how.kind)
            return row
        if self.fast:
            try:
                if writer is None and mask_writer is None and self._report_without_pruning(task, row):
                    return row
                pruned, mask = self._threshold_prune(task, row, want_out=writer is not None,
                                                     want_mask=mask_writer is not None)
            except PrunePlugError as exc:
                if exc.args:  # name the tensor: the core does not know it
                    exc.args = (f"tensor {ref.name!r}: {exc.args[0]}",) + exc.args[1:]
                raise
        else:
            pruned, mask = _prune_tensor(task, self.how, row, want_mask=mask_writer is not None)
            row.pruned = _pruned_count(self.how.pattern, self.how.sparsity, ref.shape, task.k)
            if self.how.pattern == "unstructured" and self.how.groups == "row" and len(ref.shape) == 2 and task.k is None:
                row.pruned = count_to_prune(self.how.sparsity, ref.shape[1]) * ref.shape[0]  # exact per row
            row.zeros_after = array_zeros(pruned)
        if mask is not None and not isinstance(mask, np.ndarray):  # a Mask from pruneplug.prune, maybe on the GPU
            mask = self.how.xp.asnumpy(mask.data) if self.how.xp is not None else np.asarray(mask.data)

        if mask is not None:
            mask_writer.write(ref.name, mask)
        if writer is not None:
            _write_pruned(writer, ref, pruned, row, self.how.format)
        return row

    def _report_without_pruning(self, task: TensorTask, row: TensorReport) -> bool:
        """A dry run's row without a selection pass, where the count to prune is known (layer
        scope, OWL, a global plan's count): exact pruning takes the lowest keys and zeros have the
        lowest, so the zeros after follow from the zeros and zero scores before
        (:func:`pruneplug.selection.zeros_after_pruning`; one vectorised counting pass, or none
        when the plan's pass counted them). False where they depend on which ties are pruned, or
        the tensor's ties are handed out as the tensors go by: then it is pruned (counted)."""
        ref, how = task.ref, self.how
        if task.quota is not None or (self.selection is not None and task.k is None):
            if task.k is None or task.zeros is None:  # global: its planned count and the plan's zeros
                return False
            k, zeros = task.k, task.zeros
        else:  # this tensor alone: its own count (OWL, held at a layer cap) or the sparsity's
            k = task.k if task.k is not None else count_to_prune(how.sparsity, ref.numel)
            zeros = task.zeros
            if zeros is None:
                if not self.counts_zeros:
                    return False
                zeros = count_zero_scores(ref.bits(), check_method(how.method), backend=how.backend,
                                          dtype=ref.float_dtype)
        after = zeros_after_pruning(k, *zeros)
        if after is None:
            return False
        task.k = row.pruned = k
        row.zeros_before, row.zeros_after = zeros[0], after
        return True

    def _threshold_prune(self, task: TensorTask, row: TensorReport, want_out: bool, want_mask: bool):
        ref, how = task.ref, self.how
        transform = check_method(how.method)
        view, dtype = ref.bits(), ref.float_dtype  # raw bits: the kernels read bits
        if task.quota is not None:  # the global selection and this tensor's planned share of its ties
            selection, quota = self.selection, task.quota
        elif self.selection is None or task.k is not None:
            # this tensor is the whole selection: its own count (OWL, held at a layer cap) or the sparsity's
            k = task.k if task.k is not None else count_to_prune(how.sparsity, ref.numel)
            selection = _select_own(view, dtype, transform, k, how.backend)
            quota = selection.k - selection.below
        else:  # the global selection, tensors in tensor order: the ties left
            selection, quota = self.selection, self.remaining
        out = self.scratch[:ref.nbytes].view(view.dtype).reshape(view.shape) if want_out else None
        mask = None
        if want_mask:
            if self.mask_scratch.size < ref.numel:
                self.mask_scratch = np.empty(ref.numel, np.bool_)
            mask = self.mask_scratch[:ref.numel].reshape(view.shape)
        result = prune_part(view, transform, selection, quota, out=out, mask=mask, backend=how.backend, dtype=dtype)
        del view
        if selection is self.selection and task.quota is None:
            self.remaining -= result.pruned - result.less  # the ties this tensor took
        task.k = result.pruned
        row.pruned, row.zeros_before, row.zeros_after = result.pruned, result.zeros_before, result.zeros_after
        return out, mask


#: Runs of a tensor's own key sample (pruneplug.selection.sample_starts): 32,768 keys put rank k
#: within about +-1.7 % of the tensor, a bracket of a few bfloat16 magnitudes.
LAYER_SAMPLE_RUNS = 1024


def _select_own(bits: np.ndarray, dtype: str, transform: str, k: int, backend: str | None) -> ExactSelection:
    """The decided exact selection of ``k`` of one tensor (raw ``bits`` of ``dtype``): one narrow
    pass over a sampled bracket where the keys allow it and the sample holds rank ``k``, else the
    radix passes."""
    selection = ExactSelection(k, bits.size, [dtype], transform)
    if selection.decided:
        return selection
    if selection.keys == "mag16":
        flat = bits.reshape(-1)
        request = selection.bracket_request(mag16_keys(sample_bits(flat, LAYER_SAMPLE_RUNS), dtype, transform))
        if request is not None and selection.update_bracket(
                request, chunk_histogram(bits, transform, request, backend=backend, dtype=dtype)):
            return selection
    while (request := selection.next_request()) is not None:
        selection.update(chunk_histogram(bits, transform, request, backend=backend, dtype=dtype))
    return selection


def _count_unchanged(ref: TensorRef, row: TensorReport, how: HowToPrune) -> None:
    if ref.prunable:  # a floating tensor: its zeros are counted in the report
        row.zeros_before = row.zeros_after = _zeros_of(ref, how.backend if how.xp is None else None)


def _copy_unchanged(ref: TensorRef, writer: Any, kind: str) -> None:
    if kind == "npz" or ref.loader is not None:  # npz, or a compressed input decoded on read
        writer.write(ref.name, ref.array())
    elif hasattr(writer, "copy_from"):  # the stored bytes, copied inside the kernel
        writer.copy_from(ref.name, ref.file, ref.offset, ref.nbytes, ref.dtype, ref.shape)
    else:  # the stored bytes, so any dtype (even one NumPy cannot hold) is copied exactly
        writer.write(ref.name, ref.raw_chunks(), ref.dtype, ref.shape)


def _zeros_of(ref: TensorRef, backend: str | None) -> int:
    """The exact zeros of a floating tensor that is not pruned: the backend's vectorised count of
    its raw bits where it has one, else NumPy's."""
    try:
        return count_zero_scores(ref.bits(), None, backend=backend, dtype=ref.float_dtype)[0]
    except BackendUnavailableError:
        return array_zeros(ref.array())


def _prune_tensor(task: TensorTask, how: HowToPrune, row: TensorReport, want_mask: bool) -> tuple[np.ndarray, Any]:
    """The pruned NumPy array and its mask (None unless ``want_mask``); counts the zeros before."""
    ref = task.ref
    view = ref.array()
    row.zeros_before = array_zeros(view)
    if how.xp is not None:
        view = how.xp.asarray(np.ascontiguousarray(view))
    try:
        result = _call_prune(view, task, how, want_mask)
    except PrunePlugError as exc:
        if exc.args and repr(ref.name) not in str(exc.args[0]):  # name the tensor: the core does not know it
            exc.args = (f"tensor {ref.name!r}: {exc.args[0]}",) + exc.args[1:]
        source = getattr(how.calibration, "source", None)
        if isinstance(exc, HessianError) and exc.args and source and str(source) not in str(exc.args[0]):
            exc.args = (f"{source}: {exc.args[0]}",) + exc.args[1:]  # and the file the Hessian came from
        raise
    del view
    pruned, mask = result if want_mask else (result, None)
    if how.xp is not None:
        pruned = how.xp.asnumpy(pruned)
    return pruned, mask


def _call_prune(view: Any, task: TensorTask, how: HowToPrune, want_mask: bool) -> Any:
    if how.calibration is not None or how.groups == "row" or how.method not in ("l1", "l2"):  # criteria, row groups
        from pruneplug.criteria import prune_scored

        xp = how.xp if how.xp is not None else np
        target = xp.array(view, copy=True)
        prune_scored(target, how.method, sparsity=how.sparsity if task.k is None else None, pattern=how.pattern,
                     groups=how.groups, calibration=how.calibration, layer=task.ref.name,
                     axis=None if how.axis == -1 else how.axis, backend=how.backend, count=task.k)
        return target
    if task.k is not None:  # global scope: exactly this tensor's share of the global count
        return api.prune(view, count=task.k, method=how.method,
                         backend=how.backend, return_mask=want_mask)
    if not parse_pattern(how.pattern).needs_sparsity:
        return api.prune(view, pattern=how.pattern, method=how.method, axis=how.axis, backend=how.backend,
                         return_mask=want_mask)
    return api.prune(view, sparsity=how.sparsity, pattern=how.pattern, method=how.method, backend=how.backend,
                     return_mask=want_mask)


def _write_pruned(writer: Any, ref: TensorRef, pruned: np.ndarray, row: TensorReport, format: str) -> None:
    """Write a pruned tensor (floats, or raw bits of the tensor's dtype from the fast path)."""
    raw = pruned.dtype.kind == "u"
    if stores_compressed(ref.shape, format):
        from pruneplug import compressed_tensors

        floats = float_view(pruned, ref.float_dtype) if raw else pruned
        for key, value in compressed_tensors.encode(ref.name, floats, format).items():
            writer.write(key, value)
        row.stored_as = format
    else:
        if format != "dense":
            row.reason = f"kept dense: {format} stores 2-D weights only"
        if raw and isinstance(writer, SafetensorsWriter):
            writer.write(ref.name, pruned, ref.dtype)  # the bits, under the tensor's own dtype
        else:
            writer.write(ref.name, float_view(pruned, ref.float_dtype) if raw else pruned)


def _write_report(txn: Transaction, path: Path, report: PruneReport) -> None:
    """The ``--report`` JSON, staged in the transaction like every other output."""
    tmp = txn.stage_file(path)
    with write_guard(path):
        tmp.write_text(json.dumps(report.to_dict(), indent=2) + "\n")


# Public names for front ends that run these steps elsewhere (pruneplug.dask_checkpoint prunes the
# shards of a directory on Dask workers and must decide exactly as prune_checkpoint does).
check_arguments = _check_arguments
decide_tasks = _decide_tasks

"""Calibration statistics of a ``torch.nn.Module``: forward hooks on its linear layers.

Two modes:

* **one-pass** (:func:`calibrate`): one forward pass per batch through the dense model; every
  selected layer accumulates the float64 sum of squares of its input features and its token count.
* **block by block** (:func:`calibrate_blockwise`, :func:`calibrate_sequential`; ``prune_model``
  with batches): the engine of :mod:`pruneplug.torch.blockwise`, shared with the checkpoint
  stream. The blocks are the children of the model's largest ``nn.ModuleList``/``nn.Sequential``
  of layers (``encoder.layer``, ``model.layers``, ...); each runs on its own with the keyword
  arguments the model passed it, the KV cache off.

Padding is excluded: when a batch is a mapping with an ``attention_mask`` of shape
``[batch, tokens]`` and a layer's input is ``[batch, tokens, features]``, only the tokens whose
mask is nonzero are counted. Activations are never kept by the hooks: each batch's input is
squared and summed in float64 as it passes.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterable, Sequence

import torch

from pruneplug.calibration import ActivationStats, CalibrationContext
from pruneplug.errors import CalibrationError, InvalidArgumentError, PrunePlugError
from pruneplug.reconstruction.block import ReconstructSettings
from pruneplug.torch.layers import Layer, linear_layers, selected_parameters


class _Accumulator:
    """Statistics of a set of layers, filled by forward pre-hooks with the arithmetic of the block
    engine (:class:`pruneplug.torch.blockwise.InputStats`: sums of squares, token counts and, with
    ``hessian=True``, ``X^T X``, in ``dtype``)."""

    def __init__(self, layers: Sequence[Layer], hessian: bool = False, dtype: Any = torch.float32) -> None:
        from pruneplug.torch.blockwise import InputStats

        self.layers = list(layers)
        self.stats = {l.name: InputStats(hessian, dtype) for l in layers}
        self.token_mask: torch.Tensor | None = None  # [batch, tokens] bool of the running batch
        self._handles: list[Any] = []

    def __enter__(self) -> "_Accumulator":
        for layer in self.layers:
            self._handles.append(layer.module.register_forward_pre_hook(self._hook(layer)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, layer: Layer) -> Callable[..., None]:
        def hook(module: Any, args: tuple) -> None:
            self.stats[layer.name].add(args[0].detach(), self.token_mask)
        return hook

    def context(self, source: str) -> CalibrationContext:
        ctx = CalibrationContext(source=source)
        for layer in self.layers:
            acc = self.stats[layer.name]
            if acc.count == 0:
                raise CalibrationError(f"calibration: layer {layer.name!r} saw no tokens (it is never called in the "
                                       "forward pass, or every token was padding)")
            stats = acc.stats(layer.input_axis)
            if stats.hessian is not None:
                stats.hessian = stats.hessian.cpu().numpy()
            ctx.add(layer.name, stats)
        return ctx


def _layers(model: Any, include: Sequence[str] | None, exclude: Sequence[str] | None) -> list[Layer]:
    names = list(selected_parameters(model, include, exclude))
    layers = linear_layers(model, names)
    if not layers:
        raise InvalidArgumentError("calibration: no nn.Linear or Conv1D weight is selected (selection: the CLI's "
                                   "rule with include/exclude)")
    return layers


def calibrate(model: Any, batches: Iterable[Any], *, include: Sequence[str] | None = None,
              exclude: Sequence[str] | None = None, layers: Sequence[Layer] | None = None,
              hessian: bool = False, stats_dtype: str = "float32") -> CalibrationContext:
    """One-pass calibration: run ``batches`` through ``model`` (in eval mode, without gradients) and
    return the :class:`CalibrationContext` of every selected ``nn.Linear``/``Conv1D`` weight.
    ``hessian=True`` also collects each layer's ``X^T X`` (``in_features^2`` per layer, all layers
    at once in this mode) for SparseGPT. Sums accumulate in ``stats_dtype`` (float32, as the
    references, or float64). This runs the whole model, output head included; for big models
    :func:`calibrate_blockwise` (and ``pruneplug calibrate``) go block by block.

    A batch is a mapping of keyword arguments (``{"input_ids": ..., "attention_mask": ...}``: padding
    excluded through the mask), a tuple of positional arguments, or one tensor.

    Example::

        >>> import torch, pruneplug as pp
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
        >>> ctx = pp.torch.calibrate(model, [torch.ones(5, 4)])
        >>> sorted(ctx), ctx["0.weight"].count, ctx["0.weight"].input_norms.tolist()
        (['0.weight', '2.weight'], 5, [5.0, 5.0, 5.0, 5.0])
    """
    from pruneplug.torch.blockwise import STATS_DTYPES, run_model, token_mask

    if stats_dtype not in STATS_DTYPES:
        raise InvalidArgumentError(f"stats_dtype={stats_dtype!r}: expected 'float32' or 'float64'")
    layers = list(layers) if layers is not None else _layers(model, include, exclude)
    started = time.perf_counter()
    seen = 0
    with torch.no_grad(), _eval(model), _Accumulator(layers, hessian, STATS_DTYPES[stats_dtype]) as acc:
        for batch in batches:
            acc.token_mask = token_mask(batch)
            run_model(model, batch)
            seen += 1
    if seen == 0:
        raise CalibrationError("calibration: no batches were given")
    ctx = acc.context(f"one-pass calibration of {seen} batches")
    ctx.metadata.update({"mode": "one-pass", "batches": str(seen), "seconds": f"{time.perf_counter() - started:.3f}"})
    return ctx


@contextlib.contextmanager
def _eval(model: Any):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------------------------
# sequential calibration
# ---------------------------------------------------------------------------------------------
def split_by_block(layers: Sequence[Layer], container: str, blocks: int) -> tuple[list[list[Layer]], list[Layer]]:
    """The layers of each block (``container.<i>.``), and the rest (outside the blocks), in order."""
    prefix = f"{container}." if container else ""
    by_block: list[list[Layer]] = [[] for _ in range(blocks)]
    rest: list[Layer] = []
    for layer in layers:
        head = layer.name[len(prefix):].split(".", 1)[0] if layer.name.startswith(prefix) else ""
        if head.isdigit() and int(head) < blocks:
            by_block[int(head)].append(layer)
        else:
            rest.append(layer)
    return by_block, rest


def find_blocks(model: Any, layers: Sequence[Layer]) -> tuple[str, list[Any]]:
    """The model's repeated blocks: the ``nn.ModuleList``/``nn.Sequential`` whose children contain
    the most selected layers (``("", [])`` when no container holds two or more blocks)."""
    best: tuple[int, str, list[Any]] = (0, "", [])
    names = [l.name for l in layers]
    for mod_name, module in model.named_modules():
        if not isinstance(module, (torch.nn.ModuleList, torch.nn.Sequential)) or len(module) < 2:
            continue
        prefix = f"{mod_name}." if mod_name else ""
        covered = sum(1 for n in names if n.startswith(prefix) and n[len(prefix):].split(".", 1)[0].isdigit())
        if covered > best[0]:
            best = (covered, mod_name, list(module))
    return best[1], best[2]


def calibrate_blockwise(model: Any, batches: Iterable[Any], prune_block: Callable[[CalibrationContext], None], *,
                        include: Sequence[str] | None = None, exclude: Sequence[str] | None = None,
                        layers: Sequence[Layer] | None = None, hessian: bool = False, sequential: bool = True,
                        stats_dtype: str = "float32", reconstruct: ReconstructSettings | None = None,
                        losses: dict | None = None) -> CalibrationContext:
    """Calibration interleaved with pruning, block by block (:mod:`pruneplug.torch.blockwise`, the
    engine the checkpoint stream runs too): for each block in forward order, collect the
    statistics of its layers (once per distinct input), then call ``prune_block(ctx)`` with them (it
    prunes those layers in place). ``sequential=True``: each block is calibrated on the outputs of
    the already pruned blocks before it (the papers); ``False`` ("one-pass"): on the dense model's.
    Hessian criteria take a block's input groups one at a time (one ``X^T X`` in memory). The
    forward pass stops at the first block: no output head runs. Layers outside the blocks (a
    pooler) come last, from the final hidden states. Falls back to one pass through the model (one
    ``prune_block`` call) when it has no repeated blocks.

    ``reconstruct`` (``steps > 0``): each pruned block's weights are re-fitted to the dense block's
    outputs (:mod:`pruneplug.torch.reconstruct`); ``losses`` (a dict) receives each block's losses
    under its name (``"model.layers.0"``). Needs the repeated blocks.

    Returns the statistics used (norms and counts; Hessians are not kept).
    """
    from pruneplug.torch.blockwise import (STATS_DTYPES, Activations, calibrate_and_prune_block,
                                           capture_block_inputs, context_of, tail_pass)

    layers = list(layers) if layers is not None else _layers(model, include, exclude)
    batches = list(batches)
    if not batches:
        raise CalibrationError("calibration: no batches were given")
    if stats_dtype not in STATS_DTYPES:
        raise InvalidArgumentError(f"stats_dtype={stats_dtype!r}: expected 'float32' or 'float64'")
    dtype = STATS_DTYPES[stats_dtype]
    total = CalibrationContext(source=f"{'sequential' if sequential else 'one-pass'} calibration of "
                                      f"{len(batches)} batches")

    def prune_and_keep(ctx: CalibrationContext) -> None:
        prune_block(ctx)
        for name in ctx:
            s = ctx[name]
            total.add(name, ActivationStats(s.input_norms, s.count, s.input_axis))  # no Hessian kept

    container, blocks = find_blocks(model, layers)
    started = time.perf_counter()
    with torch.no_grad(), _eval(model):
        if not blocks:
            if reconstruct is not None and reconstruct.enabled:
                raise CalibrationError("reconstruct: the model has no repeated blocks (no ModuleList of layers holding "
                                       "the selected weights) to re-fit one at a time")
            groups = [[layer] for layer in layers] if hessian and sequential else [layers]
            for group in groups:  # one layer at a time with Hessians, each on the pruned layers' outputs
                prune_and_keep(calibrate(model, batches, layers=group, hessian=hessian))
            return total
        prefix = f"{container}." if container else ""
        by_block, rest = split_by_block(layers, container, len(blocks))
        current = Activations()
        calls = capture_block_inputs(model, blocks[0], batches, current)
        # target="dense": the dense model's hidden states, a second stream (the same at the first block)
        dense = current if reconstruct is not None and reconstruct.dense_stream(sequential) else None
        for index, (block, block_layers) in enumerate(zip(blocks, by_block)):
            outputs = Activations()
            dense_outputs = Activations() if dense is not None else None
            try:
                block_losses = calibrate_and_prune_block(block, block_layers, calls, current, outputs,
                                          lambda group, ctx: prune_and_keep(ctx), hessian=hessian,
                                          sequential=sequential, dtype=dtype, source=total.source,
                                          reconstruct=reconstruct, index=index, dense=dense,
                                          dense_outputs=dense_outputs)
                if block_losses is not None and losses is not None:
                    losses[f"{prefix}{index}"] = block_losses
            except Exception as exc:
                if index == 0 and not total:
                    raise
                _half_pruned(exc, f"{prefix}{index}", len(total))
            current, dense = outputs, dense_outputs
        if rest:
            acc = tail_pass(model, model.get_submodule(container), current, batches, rest, hessian=hessian,
                            dtype=dtype, tuple_outputs=bool(current.from_tuples))
            ctx = context_of([[layer] for layer in rest], acc, total.source)
            for layer in rest:
                if layer.name not in ctx:
                    raise CalibrationError(f"calibration: layer {layer.name!r} saw no tokens (it is never called in "
                                           "the forward pass, or every token was padding)")
            prune_and_keep(ctx)
    total.metadata.update({"mode": "sequential" if sequential else "one-pass", "batches": str(len(batches)),
                           "seconds": f"{time.perf_counter() - started:.3f}"})
    return total


def _half_pruned(exc: Exception, where: str, pruned: int) -> None:
    """Re-raise a failure inside a block after earlier layers were pruned in place, saying so: the
    model is then half-pruned (prune_model works in place and keeps no copy of the dense weights)."""
    hint = (f" (in {where}; {pruned} layers before it are already pruned in place: the model is half-pruned, "
            "reload it before trying again)")
    if isinstance(exc, PrunePlugError):
        exc.args = (f"{exc.args[0] if exc.args else exc}{hint}",) + tuple(exc.args[1:])
        raise exc
    raise CalibrationError(f"{type(exc).__name__}: {exc}{hint}") from exc


def calibrate_sequential(model: Any, batches: Iterable[Any], prune_block: Callable[[CalibrationContext], None], *,
                         include: Sequence[str] | None = None, exclude: Sequence[str] | None = None,
                         layers: Sequence[Layer] | None = None, hessian: bool = False,
                         stats_dtype: str = "float32") -> CalibrationContext:
    """:func:`calibrate_blockwise` with ``sequential=True`` (each block on the outputs of the
    pruned blocks before it, as the Wanda and SparseGPT papers do)."""
    return calibrate_blockwise(model, batches, prune_block, include=include, exclude=exclude, layers=layers,
                               hessian=hessian, sequential=True, stats_dtype=stats_dtype)

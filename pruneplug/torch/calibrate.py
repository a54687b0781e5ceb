"""Calibration statistics of a ``torch.nn.Module``: forward hooks on its linear layers.

Two modes:

* **one-pass** (:func:`calibrate`): one forward pass per batch through the dense model; every
  selected layer accumulates the float64 sum of squares of its input features and its token count.
* **sequential** (:func:`calibrate_sequential`; ``prune_model(..., calibration_mode="sequential")``
  and the one-step CLI): the layers are calibrated block by block in forward order, each block on the
  outputs of the *already pruned* earlier blocks, as the Wanda and SparseGPT papers do. The
  blocks are the children of the model's largest ``nn.ModuleList``/``nn.Sequential`` of layers
  (``encoder.layer``, ``model.layers``, ...); the hidden states entering the current block are
  kept for every calibration batch (``batches x tokens x hidden`` floats), and each block runs on
  its own with the keyword arguments the model passed it. Layers outside the blocks (a pooler)
  are calibrated last, by one forward pass of the pruned model.

Padding is excluded: when a batch is a mapping with an ``attention_mask`` of shape
``[batch, tokens]`` and a layer's input is ``[batch, tokens, features]``, only the tokens whose
mask is nonzero are counted. Activations are never kept by the hooks: each batch's input is
squared and summed in float64 as it passes.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from pruneplug.calibration import ActivationStats, CalibrationContext
from pruneplug.errors import CalibrationError, InvalidArgumentError
from pruneplug.torch.layers import Layer, linear_layers, selected_parameters


class _Accumulator:
    """float64 sums of squares and token counts for a set of layers, filled by forward pre-hooks;
    with ``hessian=True`` also the float64 ``X^T X`` of each layer's inputs (SparseGPT), and with
    ``stop=True`` the forward pass is stopped (:class:`_Stop`) once the layers have seen the batch."""

    def __init__(self, layers: Sequence[Layer], hessian: bool = False, stop: bool = False) -> None:
        self.layers = list(layers)
        self.sums: dict[str, torch.Tensor] = {}
        self.hessians: dict[str, torch.Tensor] = {}
        self.want_hessian = hessian
        self.stop = stop
        self.counts: dict[str, int] = {l.name: 0 for l in layers}
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
            x = args[0].detach()
            mask = self.token_mask
            if mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
                x = x[mask.to(x.device)]  # the real tokens only
            x = x.reshape(-1, x.shape[-1])
            total = self.sums.get(layer.name)
            if total is None:
                total = self.sums[layer.name] = torch.zeros(x.shape[-1], dtype=torch.float64, device=x.device)
            total += _sum_of_squares(x)
            self.counts[layer.name] += int(x.shape[0])
            if self.want_hessian:
                h = self.hessians.get(layer.name)
                if h is None:
                    h = self.hessians[layer.name] = torch.zeros((x.shape[-1],) * 2, dtype=torch.float64, device=x.device)
                xd = x.to(torch.float64)
                h.addmm_(xd.t(), xd)
            if self.stop:
                raise _Stop

        return hook

    def context(self, source: str) -> CalibrationContext:
        ctx = CalibrationContext(source=source)
        for layer in self.layers:
            if self.counts[layer.name] == 0:
                raise CalibrationError(f"calibration: layer {layer.name!r} saw no tokens (it is never called in the "
                                       "forward pass, or every token was padding)")
            hessian = self.hessians.get(layer.name)
            ctx.add(layer.name, ActivationStats(self.sums[layer.name].cpu().numpy(), self.counts[layer.name],
                                                layer.input_axis, None if hessian is None else hessian.cpu().numpy()))
        return ctx


def _sum_of_squares(x: torch.Tensor) -> torch.Tensor:
    """float64 sum over rows of ``x * x`` (``[tokens, features]`` -> ``[features]``). On the CPU
    through NumPy's einsum on a float64 copy (one fused multiply-and-sum pass, no squared
    temporary, and no torch thread pool for small per-layer work); on a device, in torch."""
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64, torch.float16):
        a = x.numpy().astype(np.float64)
        return torch.from_numpy(np.einsum("ij,ij->j", a, a))
    xd = x.to(torch.float64)
    return (xd * xd).sum(dim=0)


def _token_mask(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, dict) and batch.get("attention_mask") is not None:
        mask = batch["attention_mask"]
        if mask.dim() == 2:
            return mask != 0
    return None


def _run(model: Any, batch: Any) -> Any:
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def _layers(model: Any, include: Sequence[str] | None, exclude: Sequence[str] | None) -> list[Layer]:
    names = list(selected_parameters(model, include, exclude))
    layers = linear_layers(model, names)
    if not layers:
        raise InvalidArgumentError("calibration: no nn.Linear or Conv1D weight is selected (selection: the CLI's "
                                   "rule with include/exclude)")
    return layers


def calibrate(model: Any, batches: Iterable[Any], *, include: Sequence[str] | None = None,
              exclude: Sequence[str] | None = None, layers: Sequence[Layer] | None = None,
              hessian: bool = False) -> CalibrationContext:
    """One-pass calibration: run ``batches`` through ``model`` (in eval mode, without gradients) and
    return the :class:`CalibrationContext` of every selected ``nn.Linear``/``Conv1D`` weight.
    ``hessian=True`` also collects each layer's float64 ``X^T X`` (``in_features^2`` per layer, all
    layers at once in this mode) for SparseGPT.

    A batch is a mapping of keyword arguments (``{"input_ids": ..., "attention_mask": ...}``: padding
    excluded through the mask), a tuple of positional arguments, or one tensor.

    Example::

        >>> import torch, pruneplug as pp
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
        >>> ctx = pp.torch.calibrate(model, [torch.ones(5, 4)])
        >>> sorted(ctx), ctx["0.weight"].count, ctx["0.weight"].input_norms.tolist()
        (['0.weight', '2.weight'], 5, [5.0, 5.0, 5.0, 5.0])
    """
    layers = list(layers) if layers is not None else _layers(model, include, exclude)
    started = time.perf_counter()
    seen = 0
    with torch.no_grad(), _eval(model), _Accumulator(layers, hessian) as acc:
        for batch in batches:
            acc.token_mask = _token_mask(batch)
            _run(model, batch)
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
class _Stop(Exception):
    """Raised by the capture hook: the model's forward stops at the first block."""


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


def calibrate_sequential(model: Any, batches: Iterable[Any], prune_block: Callable[[CalibrationContext], None], *,
                         include: Sequence[str] | None = None, exclude: Sequence[str] | None = None,
                         layers: Sequence[Layer] | None = None, hessian: bool = False) -> CalibrationContext:
    """Sequential calibration interleaved with pruning: for each block in forward order, collect
    the statistics of its layers on the outputs of the already-pruned earlier blocks, then call
    ``prune_block(ctx)`` with those statistics (it prunes that block's layers in place). Returns
    all statistics. Falls back to one pass (then one ``prune_block`` call) when the model has no
    repeated blocks.

    ``hessian=True`` (SparseGPT): the layers of a block are taken *one at a time* in forward order:
    the block runs on the stored inputs up to the layer (the forward pass stops there), the layer's
    ``X^T X`` is collected, ``prune_block`` prunes it, and its Hessian is dropped before the next
    layer. So the memory for Hessians is one layer's (``in_features^2`` float64), and each layer is
    calibrated on the outputs of the already-pruned layers before it, in its own block too. The
    returned statistics keep the norms and counts, not the Hessians.
    """
    layers = list(layers) if layers is not None else _layers(model, include, exclude)
    batches = list(batches)
    if not batches:
        raise CalibrationError("calibration: no batches were given")
    container, blocks = find_blocks(model, layers)
    if not blocks:
        if hessian:  # one layer at a time, each on the outputs of the pruned layers before it
            total = CalibrationContext(source=f"sequential calibration of {len(batches)} batches")
            for layer in layers:
                ctx = calibrate(model, batches, layers=[layer], hessian=True)
                prune_block(ctx)
                s = ctx[layer.name]
                total.add(layer.name, ActivationStats(s.input_norms, s.count, s.input_axis))
            return total
        ctx = calibrate(model, batches, layers=layers)
        prune_block(ctx)
        return ctx
    started = time.perf_counter()
    prefix = f"{container}." if container else ""
    by_block: list[list[Layer]] = [[] for _ in blocks]
    rest: list[Layer] = []
    for layer in layers:
        head = layer.name[len(prefix):].split(".", 1)[0] if layer.name.startswith(prefix) else ""
        if head.isdigit() and int(head) < len(blocks):
            by_block[int(head)].append(layer)
        else:
            rest.append(layer)
    total = CalibrationContext(source=f"sequential calibration of {len(batches)} batches")
    with torch.no_grad(), _eval(model):
        inputs = _capture_first_block_inputs(model, blocks[0], batches)
        for block, block_layers in zip(blocks, by_block):
            groups = [[layer] for layer in block_layers] if hessian else ([block_layers] if block_layers else [])
            for group in groups:
                with _Accumulator(group, hessian, stop=hessian) as acc:
                    for batch, (args, kwargs) in zip(batches, inputs):
                        acc.token_mask = _token_mask(batch)
                        try:
                            block(*args, **kwargs)
                        except _Stop:
                            pass
                ctx = acc.context(total.source)
                prune_block(ctx)
                for name in ctx:
                    s = ctx[name]
                    total.add(name, ActivationStats(s.input_norms, s.count, s.input_axis))  # no Hessian kept
                del ctx, acc
            # the next block's inputs: this (pruned) block's outputs
            inputs = [_with_hidden(args, kwargs, _hidden(block(*args, **kwargs))) for args, kwargs in inputs]
        del inputs
        if rest:  # layers outside the blocks: one pass of the pruned model (one layer at a time with Hessians)
            for group in ([[layer] for layer in rest] if hessian else [rest]):
                ctx = calibrate(model, batches, layers=group, hessian=hessian)
                prune_block(ctx)
                for name in ctx:
                    s = ctx[name]
                    total.add(name, ActivationStats(s.input_norms, s.count, s.input_axis))
                del ctx
    total.metadata.update({"mode": "sequential", "batches": str(len(batches)),
                           "seconds": f"{time.perf_counter() - started:.3f}"})
    return total


def _capture_first_block_inputs(model: Any, block: Any, batches: list[Any]) -> list[tuple[tuple, dict]]:
    captured: list[tuple[tuple, dict]] = []

    def hook(module: Any, args: tuple, kwargs: dict) -> None:
        kwargs = dict(kwargs)
        for key in ("past_key_value", "past_key_values", "layer_past"):  # no cache: each block runs twice
            if key in kwargs:
                kwargs[key] = None
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        captured.append((tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args), kwargs))
        raise _Stop

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in batches:
            try:
                _run(model, batch)
            except _Stop:
                continue
            raise CalibrationError("calibration: the model's forward pass never reached its first block")
    finally:
        handle.remove()
    return captured


def _hidden(output: Any) -> torch.Tensor:
    """A block's hidden-state output (HF blocks return a tuple whose first item it is)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def _with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    """The block's call arguments with its hidden-state input replaced (positional or keyword)."""
    if args:
        return (hidden,) + tuple(args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}

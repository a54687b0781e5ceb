"""Calibration and pruning block by block: the engine of ``prune_model(..., calibration=batches)``
and of the checkpoint stream (:mod:`pruneplug.stream`).

The protocol of the Wanda and SparseGPT papers. The hidden states entering the model's first
repeated block are captured once per calibration batch (the forward pass stops there: no later
block and no output head runs). Then, for each block in forward order:

1. **Statistics once per distinct input.** Layers that read the same input tensor (q/k/v, gate/up)
   share one accumulator, found by identity on the first batch (:func:`input_groups`); experts of
   an MoE block each see their own routed tokens. Sums of squares (Wanda) and ``X^T X``
   (SparseGPT) accumulate in ``stats_dtype`` (float32 by default, as the references) on the block's
   device. Padding tokens are excluded through the batch's attention mask where a layer's input is
   ``[batch, tokens, features]``.
2. **Prune.** Criteria that read a Hessian take the block's input groups one at a time in forward
   order, each calibrated on the outputs of the groups already pruned before it, one group's
   Hessian in memory at a time (the SparseGPT reference's "true sequential" order); the others
   calibrate the whole block in one pass, then prune it (the Wanda reference).
   With reconstruction on (:class:`pruneplug.ReconstructSettings`, ``steps > 0``), the dense
   block's outputs on the same inputs are kept first (from the statistics pass; one extra dense
   pass for sequential Hessian criteria, whose statistics passes stop early), and after pruning
   the block is re-fitted to them (:mod:`pruneplug.torch.reconstruct`). With ``target="dense"``
   in sequential mode the caller carries a second stream, the dense model's hidden states: the
   dense block runs on it first (its outputs are the teacher and the next block's dense inputs).
3. **Next inputs.** ``sequential=True``: the pruned block runs on its inputs to make the next
   block's (the papers); ``sequential=False`` ("one-pass"): the dense block's outputs, captured
   during the statistics pass before anything is pruned.

The model's own forward code runs every block, with the keyword arguments the model passed the
first one (attention mask, rotary embeddings) and the KV cache off (``use_cache=False`` and no
cache object, under every transformers version). A host (:class:`BlockHost`) may load a block's
weights before it and write and free them after it: the stream does that; in memory, nothing.
"""

from __future__ import annotations

import inspect
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from pruneplug.calibration import ActivationStats, CalibrationContext
from pruneplug.errors import CalibrationError
from pruneplug.torch.layers import Layer
from pruneplug.reconstruction.block import ReconstructSettings
from pruneplug.torch.reconstruct import norm_and_bias_parameters, reconstruct_block

#: Keyword arguments through which a block receives a KV cache (transformers 4.x; ``cache`` in 5.x;
#: GPT-2's ``layer_past``).
CACHE_KEYWORDS = ("past_key_value", "past_key_values", "layer_past", "cache")
STATS_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class Stop(Exception):
    """Raised inside a forward pass once it has given what was wanted (the rest is not computed)."""


@dataclass
class BlockCall:
    """How the model called its first block for one batch, less the hidden states (which the
    :class:`Activations` hold): the other positional and keyword arguments, and the batch's token
    mask (``[batch, tokens]``, True = a real token) for excluding padding."""

    args: tuple
    kwargs: dict
    hidden_keyword: bool
    token_mask: torch.Tensor | None

    def run(self, block: Any, hidden: torch.Tensor) -> Any:
        if self.hidden_keyword:
            return block(*self.args, hidden_states=hidden, **self.kwargs)
        return block(hidden, *self.args, **self.kwargs)


class Activations:
    """The hidden states of every calibration batch at one block boundary: in memory, or spilled to
    ``directory`` (one ``.npy`` file per batch, read back when needed)."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self.from_tuples: bool | None = None  # whether the block that made them returned tuples
        self._held: dict[int, torch.Tensor] = {}
        self._spilled: dict[int, tuple[torch.dtype, torch.device]] = {}

    def __len__(self) -> int:
        return len(self._held) + len(self._spilled)

    def put(self, index: int, hidden: torch.Tensor) -> None:
        hidden = hidden.detach()
        if self.directory is None:
            self._held[index] = hidden
            return
        save_tensor(self.directory / f"{index:06d}.npy", hidden)
        self._spilled[index] = (hidden.dtype, hidden.device)

    def put_output(self, index: int, output: Any) -> None:
        """Keep a block's output (its hidden states, from a tuple or a tensor)."""
        self.from_tuples = isinstance(output, (tuple, list))
        self.put(index, block_output(output))

    def get(self, index: int) -> torch.Tensor:
        if index in self._held:
            return self._held[index]
        dtype, device = self._spilled[index]
        return load_tensor(self.directory / f"{index:06d}.npy", dtype).to(device)

    def clear(self) -> None:
        """Forget every batch (a spill directory is removed)."""
        self._held.clear()
        self._spilled.clear()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._held.values())

    def discard(self) -> None:
        """Drop every hidden state (and the spill directory, when there is one)."""
        import shutil

        self._held.clear()
        self._spilled.clear()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


def save_tensor(path: Path, tensor: torch.Tensor) -> None:
    """Write ``tensor`` to ``path`` as ``.npy`` (bfloat16 as its 16 bits), via a temporary renamed
    into place so a killed run never leaves half a file under the name."""
    t = tensor.detach().cpu().contiguous()
    array = t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    tmp.replace(path)


def load_tensor(path: Path, dtype: torch.dtype) -> torch.Tensor:
    array = np.load(path)
    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if dtype == torch.bfloat16 else tensor


class InputStats:
    """Accumulated statistics of one distinct input: the sum of squares of each feature, the token
    count and, when wanted, ``X^T X``; in ``dtype`` on the inputs' device."""

    def __init__(self, hessian: bool, dtype: torch.dtype) -> None:
        self.want_hessian, self.dtype = hessian, dtype
        self.sums: torch.Tensor | None = None
        self.hessian: torch.Tensor | None = None
        self.count = 0

    def add(self, x: torch.Tensor, token_mask: torch.Tensor | None) -> None:
        if token_mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(token_mask.shape):
            x = x[token_mask.to(x.device)]  # the real tokens only
        x = x.reshape(-1, x.shape[-1]).to(self.dtype)
        if self.sums is None:
            self.sums = torch.zeros(x.shape[-1], dtype=self.dtype, device=x.device)
            if self.want_hessian:
                self.hessian = torch.zeros((x.shape[-1],) * 2, dtype=self.dtype, device=x.device)
        self.sums += (x * x).sum(dim=0)
        if self.hessian is not None:
            self.hessian.addmm_(x.t(), x)
        self.count += int(x.shape[0])

    def stats(self, input_axis: int) -> ActivationStats:
        norms = self.sums.to(torch.float64).cpu().numpy()
        return ActivationStats(norms, self.count, input_axis, self.hessian)


def run_model(model: Any, batch: Any) -> Any:
    """One forward pass of ``batch`` (keywords, positional tuple or one tensor), the cache off."""
    if isinstance(batch, dict):
        kwargs = dict(batch)
        if "use_cache" not in kwargs and _accepts(model, "use_cache"):
            kwargs["use_cache"] = False
        return model(**kwargs)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def _accepts(model: Any, keyword: str) -> bool:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return keyword in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def token_mask(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, dict) and batch.get("attention_mask") is not None:
        mask = batch["attention_mask"]
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            return mask != 0
    return None


def capture_block_inputs(model: Any, first_block: Any, batches: Sequence[Any], activations: Activations,
                         device: Any = None) -> list[BlockCall]:
    """Run each batch through ``model`` until it reaches ``first_block``; keep the block's hidden
    states (in ``activations``) and the rest of its call (returned). The KV cache is dropped."""
    calls: list[BlockCall] = []

    def hook(module: Any, args: tuple, kwargs: dict) -> None:
        kwargs = dict(kwargs)
        for key in CACHE_KEYWORDS:
            if key in kwargs:
                kwargs[key] = None
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        if args:
            hidden, rest, by_keyword = args[0], tuple(args[1:]), False
        else:
            hidden, rest, by_keyword = kwargs.pop("hidden_states"), (), True
        activations.put(len(calls), hidden)
        calls.append(BlockCall(_detached(rest), _detached(kwargs), by_keyword, None))
        raise Stop

    handle = first_block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in batches:
            if device is not None:
                batch = _to_device(batch, device)
            try:
                run_model(model, batch)
            except Stop:
                calls[-1].token_mask = token_mask(batch)
                continue
            raise CalibrationError("calibration: the model's forward pass never reached its first block")
    finally:
        handle.remove()
    return calls


def _detached(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, tuple):
        return tuple(_detached(v) for v in value)
    if isinstance(value, list):
        return [_detached(v) for v in value]
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value


def _to_device(batch: Any, device: Any) -> Any:
    if isinstance(batch, dict):
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(v.to(device) if isinstance(v, torch.Tensor) else v for v in batch)
    return batch.to(device) if isinstance(batch, torch.Tensor) else batch


def block_output(output: Any) -> torch.Tensor:
    """A block's hidden-state output (Hugging Face blocks may return a tuple whose first item it is)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def input_groups(block: Any, layers: Sequence[Layer], call: BlockCall, hidden: torch.Tensor) -> list[list[Layer]]:
    """The block's layers grouped by the input tensor they read, in forward order, found on one
    batch: layers called with the very same tensor object share a group. Layers the batch does not
    reach (an MoE expert no token was routed to) form groups of their own, after the others."""
    seen: list[tuple[torch.Tensor, list[Layer]]] = []  # the tensors are held: no address is reused

    def hook_for(layer: Layer) -> Callable:
        def hook(module: Any, args: tuple) -> None:
            x = args[0]
            for tensor, group in seen:
                if tensor is x:
                    group.append(layer)
                    return
            seen.append((x, [layer]))
        return hook

    handles = [layer.module.register_forward_pre_hook(hook_for(layer)) for layer in layers]
    try:
        call.run(block, hidden)
    finally:
        for h in handles:
            h.remove()
    groups = [group for _, group in seen]
    reached = {id(layer) for group in groups for layer in group}
    groups += [[layer] for layer in layers if id(layer) not in reached]
    return groups


def collect(block: Any, groups: Sequence[Sequence[Layer]], calls: Sequence[BlockCall], activations: Activations, *,
            hessian: bool, dtype: torch.dtype, stop: bool = False,
            outputs: Activations | None = None) -> list[InputStats]:
    """Run every batch through ``block`` and accumulate the statistics of each group's input (the
    hook sits on the group's first layer). ``stop``: the pass ends at the (single) group's first
    layer. ``outputs``: also keep the block's outputs (before anything is pruned)."""
    accumulators = [InputStats(hessian, dtype) for _ in groups]
    mask_of_batch: list[torch.Tensor | None] = [None]

    def hook_for(acc: InputStats) -> Callable:
        def hook(module: Any, args: tuple) -> None:
            acc.add(args[0].detach(), mask_of_batch[0])
            if stop:
                raise Stop
        return hook

    handles = [group[0].module.register_forward_pre_hook(hook_for(acc)) for group, acc in zip(groups, accumulators)]
    try:
        for i, call in enumerate(calls):
            mask_of_batch[0] = call.token_mask
            try:
                out = call.run(block, activations.get(i))
            except Stop:
                continue
            if outputs is not None:
                outputs.put_output(i, out)
    finally:
        for h in handles:
            h.remove()
    return accumulators


def context_of(groups: Sequence[Sequence[Layer]], accumulators: Sequence[InputStats], source: str) -> CalibrationContext:
    """Every layer of every group -> its group's statistics (one object shared by the group)."""
    ctx = CalibrationContext(source=source)
    for group, acc in zip(groups, accumulators):
        if acc.count == 0:
            continue  # no token reached the group (an unused expert): the caller decides
        shared = acc.stats(group[0].input_axis)
        for layer in group:
            ctx.add(layer.name, shared if layer.input_axis == shared.input_axis else
                    ActivationStats(shared.input_norms, shared.count, layer.input_axis, shared.hessian))
    return ctx


def forward_all(block: Any, calls: Sequence[BlockCall], activations: Activations, outputs: Activations) -> None:
    for i, call in enumerate(calls):
        outputs.put_output(i, call.run(block, activations.get(i)))


PruneGroup = Callable[[Sequence[Layer], CalibrationContext], None]


def calibrate_and_prune_block(block: Any, layers: Sequence[Layer], calls: Sequence[BlockCall],
                              activations: Activations, outputs: Activations, prune: PruneGroup, *,
                              hessian: bool, sequential: bool, dtype: torch.dtype, source: str,
                              step: Callable[[str], None] = lambda s: None,
                              reconstruct: ReconstructSettings | None = None, index: int = 0,
                              rewrite: Callable[[Sequence[Layer], Sequence[tuple[str, Any]]], None] | None = None,
                              dense: Activations | None = None,
                              dense_outputs: Activations | None = None) -> dict | None:
    """Steps 1-3 of the module docstring for one block: ``prune(layers, ctx)`` is called once per
    group (Hessian criteria) or once for the block, and ``outputs`` receives the next block's
    inputs.

    ``reconstruct`` (enabled: ``steps > 0``): after pruning, the block is re-fitted to the teacher's
    outputs (:mod:`pruneplug.torch.reconstruct`; ``index`` seeds it), then ``rewrite(layers,
    params)`` is called with what changed (the stream writes and rounds it there: the pruned layers
    for ``train="weights"``/``"lowrank"``, ``(name inside the block, parameter)`` pairs for
    ``"norms"``, both for ``"all"``) before the next block's inputs are made. The teacher is the dense block's output
    on the same inputs (``target="local"``), or with ``dense`` (the dense model's hidden states
    entering this block: ``target="dense"`` in sequential mode,
    :meth:`~pruneplug.ReconstructSettings.dense_stream`) its output on those, which goes into
    ``dense_outputs`` (the next block's dense inputs) before anything is pruned. Returns the
    reconstruction's losses, or None.
    """
    if dense is not None and dense_outputs is None:
        raise CalibrationError("internal error: a dense stream without dense_outputs")
    if not layers:
        step("forward")
        forward_all(block, calls, activations, outputs)
        if dense is not None:
            forward_all(block, calls, dense, dense_outputs)
        return None
    refit = reconstruct is not None and reconstruct.enabled
    if dense is not None:
        step("dense forward")
        forward_all(block, calls, dense, dense_outputs)  # the dense block on the dense stream: the teacher
        targets = dense_outputs
    else:
        # the dense block's outputs on these inputs, the teacher; in one-pass mode they are the outputs
        targets = (outputs if not sequential else Activations(_beside(outputs.directory, "targets"))) if refit else None
    local_targets = targets if dense is None else None
    groups = input_groups(block, layers, calls[0], activations.get(0))
    step("calibrating")
    if hessian and sequential:
        if local_targets is not None:
            forward_all(block, calls, activations, local_targets)  # the stats pass stops early: one dense pass
        for group in groups:
            acc = collect(block, [group], calls, activations, hessian=True, dtype=dtype, stop=True)
            step("pruning")
            prune(group, context_of([group], acc, source))
            del acc
    else:
        accumulators = collect(block, groups, calls, activations, hessian=hessian, dtype=dtype,
                               outputs=outputs if not sequential else local_targets)
        ctx = context_of(groups, accumulators, source)
        del accumulators
        step("pruning")
        prune([layer for group in groups for layer in group], ctx)
        del ctx
    losses = None
    if refit:
        losses = reconstruct_block(block, layers, lambda i: block_output(calls[i].run(block, activations.get(i))),
                                   targets, [call.token_mask for call in calls], reconstruct, index, step)
        if local_targets is not None and local_targets is not outputs:
            local_targets.clear()
        if rewrite is not None:
            rewrite(layers if reconstruct.trains_weights else [],
                    norm_and_bias_parameters(block) if reconstruct.trains_norms else [])
    if sequential:
        step("forward")
        forward_all(block, calls, activations, outputs)
    return losses


def _beside(directory: Path | None, suffix: str) -> Path | None:
    """A spill directory next to ``directory`` (None: in memory)."""
    if directory is None:
        return None
    path = directory.with_name(f"{directory.name}-{suffix}")
    path.mkdir(parents=True, exist_ok=True)
    return path


class _Replay(torch.nn.Module):
    """Stands in for the whole stack of blocks in a tail pass: the first returns the stored final
    hidden states of the batch, the others pass them on."""

    def __init__(self, final: Activations | None, counter: list[int], like_tuple: bool) -> None:
        super().__init__()
        self.final, self.counter, self.like_tuple = final, counter, like_tuple

    def forward(self, hidden_states: Any = None, *args: Any, **kwargs: Any) -> Any:
        if hidden_states is None:
            hidden_states = kwargs.get("hidden_states")
        out = hidden_states if self.final is None else self.final.get(self.counter[0])
        return (out,) if self.like_tuple else out


def tail_pass(model: Any, container: Any, final: Activations, batches: Sequence[Any], layers: Sequence[Layer], *,
              hessian: bool, dtype: torch.dtype, tuple_outputs: bool, device: Any = None) -> list[InputStats]:
    """Statistics of layers outside the blocks (a pooler, a selected head), from the model's own
    forward with its block stack replaced by the stored final hidden states: no block runs again."""
    counter = [0]
    saved = list(container)
    stand_ins = [_Replay(final if i == 0 else None, counter, tuple_outputs) for i in range(len(saved))]
    for i, m in enumerate(stand_ins):
        container[i] = m
    accumulators = [InputStats(hessian, dtype) for _ in layers]
    mask_of_batch: list[torch.Tensor | None] = [None]
    handles = [layer.module.register_forward_pre_hook(
        lambda module, args, acc=acc: acc.add(args[0].detach(), mask_of_batch[0])) for layer, acc in zip(layers, accumulators)]
    try:
        for i, batch in enumerate(batches):
            counter[0] = i
            if device is not None:
                batch = _to_device(batch, device)
            mask_of_batch[0] = token_mask(batch)
            run_model(model, batch)
    finally:
        for h in handles:
            h.remove()
        for i, m in enumerate(saved):
            container[i] = m
    return accumulators

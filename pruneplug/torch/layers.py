"""Which weights of a ``torch.nn.Module`` are pruned, and which of them have calibration hooks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from pruneplug.selection_rule import select_tensors

_FLOATS = {"torch.float16": "F16", "torch.bfloat16": "BF16", "torch.float32": "F32", "torch.float64": "F64"}


@dataclass(frozen=True)
class _Ref:
    """What the checkpoint selection rule reads of a tensor: name, shape, dtype, prunable."""

    name: str
    shape: tuple
    dtype: str
    prunable: bool


@dataclass(frozen=True)
class Layer:
    """A selected linear layer: the weight's parameter name, the module, and the weight's input
    axis (1 for ``nn.Linear`` ``[out, in]``, 0 for Hugging Face ``Conv1D`` ``[in, out]``)."""

    name: str
    module: Any
    input_axis: int

    @property
    def in_features(self) -> int:
        return int(self.module.weight.shape[self.input_axis])


def is_conv1d(module: Any) -> bool:
    """Hugging Face's ``Conv1D`` (GPT-2 style: a linear layer storing its weight as ``[in, out]``),
    recognised by name so that transformers need not be imported."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "weight")


def selected_parameters(model: Any, include: Sequence[str] | None = None,
                        exclude: Sequence[str] | None = None) -> dict[str, Any]:
    """name -> parameter for the parameters the CLI's selection rule picks (``SELECTION_RULE`` of
    :mod:`pruneplug.selection_rule`: two or more dimensions, floating, not embeddings, norms or
    the output head; ``include``/``exclude`` regexes as on the command line). Tied parameters
    appear once, under their first name."""
    params = dict(model.named_parameters())
    refs = [_Ref(n, tuple(p.shape), _FLOATS.get(str(p.dtype), str(p.dtype)), str(p.dtype) in _FLOATS)
            for n, p in params.items()]
    reasons = select_tensors(refs, include, exclude)
    return {n: params[n] for n in params if reasons[n] is None}


def linear_layers(model: Any, names: Sequence[str]) -> list[Layer]:
    """The ``nn.Linear`` / ``Conv1D`` modules whose weight is one of ``names``, in module order
    (the order ``model.named_modules()`` gives, which for the usual models is forward order)."""
    import torch

    wanted = set(names)
    layers = []
    for mod_name, module in model.named_modules():
        weight_name = f"{mod_name}.weight" if mod_name else "weight"
        if weight_name not in wanted:
            continue
        if isinstance(module, torch.nn.Linear):
            layers.append(Layer(weight_name, module, 1))
        elif is_conv1d(module):
            layers.append(Layer(weight_name, module, 0))
    return layers

"""MoE experts that transformers 5 fuses, taken apart again for calibration and pruning.

transformers 5 stores a block's routed experts as two 3-D parameters of one module
(``MixtralExperts``, ``Qwen2MoeExperts``, ...): ``gate_up_proj`` ``[E, 2 x I, H]`` (each expert's
gate rows, then its up rows) and ``down_proj`` ``[E, H, I]``, while checkpoints keep one
``[out, in]`` tensor per expert and projection (``experts.3.w1.weight``). Each expert is a linear
layer of its own for the papers (Wanda and SparseGPT prune it with the statistics of the tokens
routed to it), so :func:`unfuse_experts` replaces such a module of the skeleton by
an unfused module: a ``ModuleList`` of per-expert ``gate_proj``/``up_proj``/``down_proj`` ``nn.Linear``\\ s
with the same forward (route, ``act(gate(x)) * up(x)``, ``down``, weighted sum). Each of those
Linears maps to one checkpoint tensor, so the stream loads, calibrates, prunes and writes experts
like any other layer. 4.x models have per-expert Linears already and are left alone.

The checkpoint names of a fused parameter come from transformers' own reverse conversion
(``revert_weight_conversion``, what ``save_pretrained`` uses): ``P x E`` tensors, part-major
(``gate_0 .. gate_{E-1}, up_0 .. up_{E-1}``), each ``[rows / P, cols]``; :func:`split_fused`
checks that layout before anything relies on it.

Numerics: ``gate(x)`` and ``up(x)`` are two matrix products where the fused module does one and
splits it; the results agree to float rounding (not always bit for bit).
"""

from __future__ import annotations

from typing import Any

from pruneplug.errors import CheckpointError

#: The part names of a fused parameter with P parts.
PARTS = {"gate_up_proj": ("gate_proj", "up_proj"), "down_proj": ("down_proj",)}


def is_fused_experts(module: Any) -> bool:
    """A transformers-5 experts module of the MixtralExperts shape (3-D ``gate_up_proj`` and
    ``down_proj``, an ``act_fn``)."""
    params = getattr(module, "_parameters", {})
    return (all(name in params and params[name] is not None and params[name].dim() == 3 for name in PARTS)
            and hasattr(module, "act_fn"))


def split_fused(name: str, shape: tuple, checkpoint_names: list[str]) -> list[list[str]]:
    """``checkpoint_names`` of the fused parameter ``name`` (shape ``[E, R, C]``) as
    ``[part][expert]``; an error naming the parameter when they do not have that layout."""
    experts = int(shape[0])
    parts = len(PARTS[name.rsplit(".", 1)[-1]])
    if len(checkpoint_names) != experts * parts:
        raise CheckpointError(f"fused experts {name!r} {list(shape)}: transformers names {len(checkpoint_names)} "
                              f"checkpoint tensors, expected {experts} experts x {parts} parts")
    split = [checkpoint_names[p * experts:(p + 1) * experts] for p in range(parts)]
    for p, names in enumerate(split):
        for e, ckpt in enumerate(names):
            if f".{e}." not in ckpt:
                raise CheckpointError(f"fused experts {name!r}: checkpoint tensor {ckpt!r} is not expert {e} of part "
                                      f"{p}; this layout of fused experts is not supported")
    return split


def _unfused_class() -> Any:
    """The unfused module's class (made on first use: torch is imported lazily)."""
    import torch

    class _Expert(torch.nn.Module):
        def __init__(self, hidden: int, inner: int) -> None:
            super().__init__()
            self.gate_proj = torch.nn.Linear(hidden, inner, bias=False)
            self.up_proj = torch.nn.Linear(hidden, inner, bias=False)
            self.down_proj = torch.nn.Linear(inner, hidden, bias=False)

    class Unfused(torch.nn.ModuleList):
        """Per-expert Linears with the forward of transformers' fused experts module."""

        def __init__(self, fused: Any) -> None:
            experts, rows, hidden = fused.gate_up_proj.shape
            super().__init__([_Expert(hidden, rows // 2) for _ in range(experts)])
            self.num_experts = int(experts)
            self.act_fn = fused.act_fn

        def forward(self, hidden_states: Any, top_k_index: Any, top_k_weights: Any) -> Any:
            final = torch.zeros_like(hidden_states)
            with torch.no_grad():
                expert_mask = torch.nn.functional.one_hot(top_k_index, num_classes=self.num_experts + 1)
                expert_mask = expert_mask.permute(2, 1, 0)
                hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()
            for index in hit:
                e = int(index[0])
                if e == self.num_experts:
                    continue
                top_k_pos, token_idx = torch.where(expert_mask[e])
                x = hidden_states[token_idx]
                expert = self[e]
                h = expert.down_proj(self.act_fn(expert.gate_proj(x)) * expert.up_proj(x))
                h = h * top_k_weights[token_idx, top_k_pos, None]
                final.index_add_(0, token_idx, h.to(final.dtype))
            return final

    return Unfused


def unfuse_experts(model: Any, fused_names: dict[str, list[str]]) -> dict[str, str]:
    """Replace every fused experts module of ``model`` (on the meta device) by per-expert Linears.
    ``fused_names``: fused parameter name -> its checkpoint tensor names (transformers' reverse
    conversion). Returns the new parameter names -> checkpoint names."""
    import torch

    unfused_cls = _unfused_class()
    names: dict[str, str] = {}
    for mod_name, module in list(model.named_modules()):
        if not is_fused_experts(module):
            continue
        split = {}
        for param in PARTS:
            full = f"{mod_name}.{param}"
            if full not in fused_names:
                raise CheckpointError(f"fused experts {full!r}: no checkpoint tensors found for it")
            split[param] = split_fused(full, tuple(module._parameters[param].shape), fused_names[full])
        with torch.device("meta"):
            replacement = unfused_cls(module)
        parent_name, _, child = mod_name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, replacement)
        for param, parts in PARTS.items():
            for p, part in enumerate(parts):
                for e, ckpt in enumerate(split[param][p]):
                    names[f"{mod_name}.{e}.{part}.weight"] = ckpt
    return names

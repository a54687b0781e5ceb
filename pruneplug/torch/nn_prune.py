"""Pruning methods for ``torch.nn.utils.prune``: exact, deterministic selection through pruneplug."""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.utils import prune as torch_prune

from pruneplug import api
from pruneplug import masks


class ExactL1Unstructured(torch_prune.BasePruningMethod):
    """``torch.nn.utils.prune.L1Unstructured`` with pruneplug's selection: exactly the number of
    entries torch would prune (``amount`` a fraction or a count), the smallest ``|w|``, ties by lower
    flat index (torch's ``topk`` leaves ties unspecified), on CPU or CUDA tensors without a sort.

    Example::

        import torch.nn.utils.prune as prune
        prune.global_unstructured([(m, "weight") for m in linears], pruning_method=pp.torch.ExactL1Unstructured,
                                  amount=0.5)
        pp.torch.ExactL1Unstructured.apply(layer, "weight", amount=0.3)   # the per-tensor form
    """

    PRUNING_TYPE = "unstructured"
    method = "l1"

    def __init__(self, amount: float | int) -> None:
        torch_prune._validate_pruning_amount_init(amount)
        self.amount = amount

    def compute_mask(self, t: torch.Tensor, default_mask: torch.Tensor) -> torch.Tensor:
        n = t.nelement()
        torch_prune._validate_pruning_amount(self.amount, n)
        k = torch_prune._compute_nparams_toprune(self.amount, n)
        mask = default_mask.clone(memory_format=torch.contiguous_format)
        if k == 0:
            return mask
        scores = api.importance(t.detach().contiguous(), self.method).values
        keep = masks.generate_unstructured_mask(scores, count=k).data
        mask.mul_(keep.to(mask.dtype).reshape(mask.shape))
        return mask

    @classmethod
    def apply(cls, module: Any, name: str, amount: float | int, importance_scores: Any = None) -> Any:
        return super().apply(module, name, amount=amount, importance_scores=importance_scores)


class ExactL2Unstructured(ExactL1Unstructured):
    """:class:`ExactL1Unstructured` ranked by ``w*w`` (the same order as ``|w|`` up to ties
    created by rounding the squares)."""

    method = "l2"

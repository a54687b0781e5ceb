"""The interface of unit criteria and the statistics they read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from pruneplug.errors import CalibrationRequiredError


@dataclass
class UnitStats:
    """Moments of one layer input over the calibration tokens (real tokens only), per feature:
    ``abs_sum`` (sum of ``|x|``), ``sum`` (of ``x``), ``sq_sum`` (of ``x*x``), ``count`` (tokens),
    float64. For MLP neurons the layer is down_proj (one feature per neuron); for heads, o_proj
    (``head_dim`` consecutive features per query head)."""

    abs_sum: np.ndarray
    sum: np.ndarray
    sq_sum: np.ndarray
    count: int

    @property
    def mean(self) -> np.ndarray:
        return self.sum / max(self.count, 1)

    @property
    def mean_abs(self) -> np.ndarray:
        return self.abs_sum / max(self.count, 1)

    @property
    def variance(self) -> np.ndarray:
        return np.maximum(self.sq_sum / max(self.count, 1) - self.mean ** 2, 0.0)


@dataclass
class BlockChoice:
    """What a depth criterion measured: ``cosine[l][n-1]`` is the mean cosine between the hidden
    states entering block ``l`` and those leaving block ``l+n-1`` (n consecutive blocks), and
    ``angle[l][n-1]`` the mean of ``arccos(cos)/pi``, over the calibration tokens; NaN where the run
    passes the last block."""

    cosine: np.ndarray
    angle: np.ndarray


@dataclass
class ExpertStats:
    """What the calibration tokens entering one MoE block did, per routed expert j (real tokens
    only): ``tokens[j]`` (how many had j in their top-k), ``gate_sum[j]`` (the sum of j's routing
    weight over those tokens, as the forward uses it: after the model's top-k renormalisation),
    ``reap_sum[j]`` (the sum of ``weight_j(x) * ||f_j(x)||_2``, f_j the expert's output), and
    ``total`` (tokens seen by the block)."""

    tokens: np.ndarray
    gate_sum: np.ndarray
    reap_sum: np.ndarray
    total: int


@dataclass
class ExpertWeights:
    """The weights an expert criterion reads: ``router`` ([experts, hidden], the gate's rows),
    ``count`` (experts) and ``load_expert(j)``: expert j's ``{"gate": [I, H], "up": [I, H],
    "down": [H, I]}`` float32 copies, one expert at a time (a block's experts together can be
    as large as the rest of the model)."""

    router: np.ndarray
    count: int
    load_expert: Callable[[int], dict[str, np.ndarray]]


class UnitCriterion:
    """A structured importance criterion. Subclasses set ``name``, ``units`` (a subset of
    ``{"neuron", "head", "block", "expert"}``) and ``needs_calibration``, and implement the methods of the
    units they support. Higher scores are more important: the lowest go.

    Example::

        class RandomUnits(UnitCriterion):
            name, units = "random", frozenset({"neuron"})
            def neuron_scores(self, weights, stats):
                return np.random.default_rng(0).random(weights["down"].shape[1])
    """

    name: str = ""
    units: frozenset = frozenset()
    needs_calibration: bool = False

    def requires_calibration(self) -> bool:
        return self.needs_calibration

    def require_stats(self, stats: Any) -> Any:
        """``stats``, or the error saying this criterion needs calibration when there are none."""
        if stats is None:
            raise CalibrationRequiredError(self.name)
        return stats

    def neuron_scores(self, weights: dict[str, np.ndarray], stats: UnitStats | None) -> np.ndarray:
        """One score per MLP neuron. ``weights``: ``"rows"`` ([neurons, in] stacked rows of every
        tensor whose output is the neuron, e.g. gate and up side by side: [neurons, 2*hidden]) and
        ``"down"`` ([hidden, neurons], the columns that read the neuron); ``stats``: the moments
        of the neurons (down_proj's input)."""
        raise NotImplementedError

    def head_scores(self, weights: dict[str, np.ndarray], stats: UnitStats | None, head_dim: int) -> np.ndarray:
        """One score per query head. ``weights``: ``"rows"`` ([heads, head_dim * in], the head's
        q rows) and ``"out"`` ([hidden, heads * head_dim], o_proj); ``stats``: o_proj's input."""
        raise NotImplementedError

    def expert_scores(self, weights: ExpertWeights, stats: ExpertStats | None) -> np.ndarray:
        """One score per routed expert of an MoE block. ``weights``: the router rows and each
        expert's matrices on request; ``stats``: what the calibration tokens did (None without
        calibration)."""
        raise NotImplementedError

    def choose_blocks(self, measured: BlockChoice, count: int, allowed: Sequence[int]) -> list[int]:
        """The ``count`` blocks to drop, among ``allowed``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<unit criterion {self.name!r}>"


def per_head(values: np.ndarray, head_dim: int) -> np.ndarray:
    """Feature values summed per head: [heads * head_dim] -> [heads]."""
    return values.reshape(-1, head_dim).sum(axis=1)


def column_sq_norms(out: np.ndarray) -> np.ndarray:
    """Squared L2 norm of every column of ``out`` ([hidden, features]), float64."""
    out = out.astype(np.float64, copy=False)
    return (out * out).sum(axis=0)

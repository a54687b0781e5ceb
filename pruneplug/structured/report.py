"""What a shrink did: which units went from where, the config changes and the parameter counts."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ShrinkReport:
    """The report of :func:`pruneplug.torch.shrink_model` and ``pruneplug shrink``.

    ``neurons_removed`` / ``heads_removed`` / ``experts_removed``: original block index -> removed
    neuron / query-head / routed-expert indices (of the original numbering; the query heads of a
    removed KV group included; kept experts are renumbered 0.. in their original order);
    ``kv_heads_removed``: original block index -> removed KV groups (``kv_heads``);
    ``expert_method``: the criterion that scored experts; ``dropped_blocks``: original indices;
    ``block_scores``:
    what the block criterion measured per block (BI, or the angular distance of the run starting
    there), when it ran; ``folded``: with ``compensate="refit"``, block -> the dropped run (first,
    last) whose least-squares map was folded into its MLP; ``config_changes``: the config.json keys
    and their new values;
    ``reconstruct``: the re-fit's settings (None: no re-fit) and ``reconstruction_losses``: original
    block index -> that block's losses (``before``/``after`` on the training batches,
    ``held_out_before``/``held_out_after``, ``best_step``, ``steps``, ``seconds``)."""

    method: str | None
    block_method: str | None
    compensate: str
    params_before: int
    params_after: int
    dropped_blocks: list[int] = field(default_factory=list)
    neurons_removed: dict[int, list[int]] = field(default_factory=dict)
    heads_removed: dict[int, list[int]] = field(default_factory=dict)
    experts_removed: dict[int, list[int]] = field(default_factory=dict)
    expert_method: str | None = None
    block_scores: list[float] | None = None
    folded: dict[int, list[int]] = field(default_factory=dict)
    config_changes: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    kv_heads_removed: dict[int, list[int]] = field(default_factory=dict)
    reconstruct: dict[str, Any] | None = None
    reconstruction_losses: dict[int, dict[str, Any]] = field(default_factory=dict)

    def summary(self) -> str:
        """One paragraph for the terminal."""
        parts = []
        if self.neurons_removed:
            per = len(next(iter(self.neurons_removed.values())))
            parts.append(f"{per} MLP neurons from each of {len(self.neurons_removed)} blocks")
        if self.heads_removed:
            per = len(next(iter(self.heads_removed.values())))
            groups = len(next(iter(self.kv_heads_removed.values()))) if self.kv_heads_removed else 0
            whole = f" ({groups} whole KV group{'s' if groups > 1 else ''})" if groups else ""
            parts.append(f"{per} attention heads{whole} from each of {len(self.heads_removed)} blocks")
        if self.experts_removed:
            per = len(next(iter(self.experts_removed.values())))
            parts.append(f"{per} routed experts from each of {len(self.experts_removed)} MoE blocks")
        if self.dropped_blocks:
            parts.append(f"blocks {', '.join(map(str, self.dropped_blocks))}")
        ratio = self.params_after / self.params_before if self.params_before else 1.0
        methods = ", ".join(m for m in (self.method, self.expert_method, self.block_method) if m)
        return (f"removed {'; '.join(parts) or 'nothing'} ({methods}, compensate "
                f"{self.compensate}); parameters {self.params_before:,} -> {self.params_after:,} ({ratio:.1%})"
                + self._refit_summary())

    def _refit_summary(self) -> str:
        losses = list(self.reconstruction_losses.values())
        if not losses:
            return ""

        def mean(key: str) -> float:
            return sum(v[key] for v in losses) / len(losses)

        held = (f", held-out {mean('held_out_before'):.4g} -> {mean('held_out_after'):.4g}"
                if all(v["held_out_before"] is not None for v in losses) else "")
        return (f"; re-fitted {len(losses)} blocks ({self.reconstruct['steps']} steps): mean block loss "
                f"{mean('before'):.4g} -> {mean('after'):.4g}{held}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["neurons_removed"] = {str(k): v for k, v in self.neurons_removed.items()}
        data["heads_removed"] = {str(k): v for k, v in self.heads_removed.items()}
        data["folded"] = {str(k): v for k, v in self.folded.items()}
        data["experts_removed"] = {str(k): v for k, v in self.experts_removed.items()}
        data["kv_heads_removed"] = {str(k): v for k, v in self.kv_heads_removed.items()}
        if self.reconstruct is None:  # without a re-fit the report is what it was before re-fits existed
            del data["reconstruct"], data["reconstruction_losses"]
        else:
            data["reconstruction_losses"] = {str(k): v for k, v in self.reconstruction_losses.items()}
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

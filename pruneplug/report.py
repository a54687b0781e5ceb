"""What every pruning front end reports (``prune_checkpoint``, ``pp.torch.prune_model``, the block
stream): progress while it runs (the CLI draws a bar; the library stays quiet) and the per-tensor
rows and totals when it is done."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


class ProgressLike:
    """What long runs report progress to (:func:`prune_checkpoint`, the block stream, ``shrink``):
    one ``start`` per phase, ``update`` per item (a tensor with its bytes, or a block), ``set_step``
    for what the current item is doing, ``close`` at the end of the phase. ``unit`` is
    ``"tensors"`` (``amount``: bytes) or ``"blocks"`` (``amount``: the block count)."""

    def start(self, label: str, items: int, amount: int, unit: str = "tensors") -> None: ...
    def update(self, items: int = 0, amount: int = 0) -> None: ...
    def set_step(self, step: str) -> None: ...
    def close(self) -> None: ...


class NullProgress(ProgressLike):
    pass


@dataclass
class TensorReport:
    """One tensor's row: status is ``"pruned"``, ``"skipped"`` (selected but the pattern does not
    fit) or ``"kept"`` (not selected); ``pruned`` is how many weights the mask removed (zeros
    included), ``zeros_*`` count exact zeros before and after (``None`` for non-float tensors)."""

    name: str
    shape: list
    dtype: str
    numel: int
    status: str
    reason: str | None = None
    zeros_before: int | None = None
    zeros_after: int | None = None
    pruned: int = 0
    stored_as: str = "dense"

    @property
    def sparsity_before(self) -> float | None:
        return None if self.zeros_before is None else (self.zeros_before / self.numel if self.numel else 0.0)

    @property
    def sparsity_after(self) -> float | None:
        return None if self.zeros_after is None else (self.zeros_after / self.numel if self.numel else 0.0)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["sparsity_before"], d["sparsity_after"] = self.sparsity_before, self.sparsity_after
        return d


@dataclass
class PruneReport:
    """What :func:`prune_checkpoint` did: settings, per-tensor rows, totals; ``to_dict()`` is the
    ``--report`` JSON and ``format_table()`` the CLI's summary."""

    input: str
    output: str | None
    settings: dict
    selection_rule: str
    tensors: list[TensorReport]
    threshold: float | None = None
    passes: int = 0
    dry_run: bool = False
    seconds: float = 0.0
    masks_out: str | None = None
    warn_sparsity: float = 0.95  # a pruned tensor this sparse or more is flagged: the layer is (nearly) removed

    def nearly_removed(self) -> list[TensorReport]:
        """The pruned tensors that are ``warn_sparsity`` or more zero after pruning (a global prune
        can take a layer to 100 %), in tensor order."""
        return [t for t in self.tensors if t.status == "pruned" and t.sparsity_after is not None
                and t.numel and t.sparsity_after >= self.warn_sparsity]

    def warning(self) -> str | None:
        """One line naming the (nearly) removed tensors, or None."""
        hits = self.nearly_removed()
        if not hits:
            return None
        shown = ", ".join(f"{t.name} {100 * t.sparsity_after:.2f}%" for t in hits[:8])
        more = f" and {len(hits) - 8} more" if len(hits) > 8 else ""
        return (f"{len(hits)} pruned tensor(s) are {100 * self.warn_sparsity:g}% or more zero, the layer (nearly) "
                f"removed: {shown}{more}")

    def totals(self) -> dict:
        pruned_rows = [t for t in self.tensors if t.status == "pruned"]
        counted = [t for t in self.tensors if t.zeros_before is not None]
        selected = sum(t.numel for t in pruned_rows)
        zb = sum(t.zeros_before for t in pruned_rows)
        za = sum(t.zeros_after for t in pruned_rows)
        return {
            "tensors": len(self.tensors),
            "tensors_pruned": len(pruned_rows),
            "tensors_skipped": sum(t.status == "skipped" for t in self.tensors),
            "parameters": sum(t.numel for t in self.tensors),
            "parameters_selected": selected,
            "parameters_pruned": sum(t.pruned for t in pruned_rows),
            "selected_sparsity_before": zb / selected if selected else 0.0,
            "selected_sparsity_after": za / selected if selected else 0.0,
            "float_sparsity_after": (sum(t.zeros_after for t in counted) / sum(t.numel for t in counted)
                                     if counted and sum(t.numel for t in counted) else 0.0),
        }

    def to_dict(self) -> dict:
        flagged = {id(t) for t in self.nearly_removed()}
        return {
            "input": self.input, "output": self.output, "dry_run": self.dry_run,
            "settings": self.settings, "selection_rule": self.selection_rule,
            "threshold": self.threshold, "passes": self.passes, "seconds": round(self.seconds, 3),
            "masks_out": self.masks_out, "totals": self.totals(),
            "warn_sparsity": self.warn_sparsity,
            "nearly_removed": [t.name for t in self.nearly_removed()],
            "tensors": [{**t.to_dict(), "nearly_removed": id(t) in flagged} for t in self.tensors],
        }

    def format_table(self, show_kept: bool = True) -> str:
        rows = [t for t in self.tensors if show_kept or t.status != "kept"]
        width = max([len("tensor")] + [len(t.name) for t in rows])
        pct = lambda v: "-" if v is None else f"{100 * v:6.2f}%"  # noqa: E731
        lines = [f"{'tensor':<{width}}  {'shape':<18} {'dtype':<5} {'before':>7} {'after':>7} {'pruned':>12}  note"]
        for t in rows:
            note = t.reason or ("" if t.stored_as == "dense" else f"stored as {t.stored_as}")
            lines.append(f"{t.name:<{width}}  {str(tuple(t.shape)):<18} {t.dtype:<5} {pct(t.sparsity_before):>7} "
                         f"{pct(t.sparsity_after):>7} {t.pruned:>12,}  {t.status}{': ' + note if note else ''}")
        return "\n".join(lines + [self.format_totals()])

    def format_totals(self) -> str:
        lines = []
        tot = self.totals()
        lines.append(
            f"total: {tot['tensors_pruned']} of {tot['tensors']} tensors pruned ({tot['tensors_skipped']} skipped); "
            f"{tot['parameters_pruned']:,} of {tot['parameters_selected']:,} selected parameters pruned; "
            f"selected sparsity {100 * tot['selected_sparsity_before']:.2f}% -> {100 * tot['selected_sparsity_after']:.2f}%; "
            f"all floating parameters {100 * tot['float_sparsity_after']:.2f}% zero"
        )
        if self.threshold is not None:
            lines.append(f"global threshold: score {self.threshold!r} ({self.settings.get('method')}), {self.passes} passes")
        return "\n".join(lines)

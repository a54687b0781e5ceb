"""``pruneplug inspect``: per-tensor sparsity, N:M structure and magnitude quantiles of a checkpoint,
and the plot of them."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from pruneplug.checkpoint.formats import CHUNK, count_zeros, flat_chunks, open_checkpoint
from pruneplug.checkpoint.global_select import tensor_source, plan_global
from pruneplug.checkpoint.paths import Place, check_distinct
from pruneplug.report import ProgressLike, NullProgress
from pruneplug.selection_rule import select_tensors
from pruneplug.errors import CheckpointError
from pruneplug import masks


QUANTILES = (0.0, 0.01, 0.25, 0.5, 0.75, 0.99, 1.0)
NM_MS = (4, 8, 16)


@dataclass
class InspectRow:
    """One tensor of :func:`inspect_checkpoint`: ``is_24`` (2:4 along the last axis; ``None`` when the
    last axis does not divide by 4), ``nm`` the tightest ``"N:M"`` per common ``M`` (the most nonzeros
    in any group of ``M`` along the last axis), ``quantiles`` of ``|w|`` at :data:`QUANTILES`."""

    name: str
    shape: list
    dtype: str
    numel: int
    zeros: int | None = None
    is_24: bool | None = None
    nm: dict = field(default_factory=dict)
    quantiles: list | None = None
    selected: bool = False
    stored_as: str = "dense"  # or the compressed-tensors format it was decompressed from

    @property
    def sparsity(self) -> float | None:
        return None if self.zeros is None else (self.zeros / self.numel if self.numel else 0.0)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["sparsity"] = self.sparsity
        return d


@dataclass
class InspectReport:
    path: str
    kind: str
    metadata: dict
    tensors: list[InspectRow]
    histogram: dict | None = None  # log10 |w| histogram of the selected tensors: edges, counts, zeros
    threshold: float | None = None  # |w| (l1) threshold of a global prune at threshold_sparsity
    threshold_sparsity: float | None = None

    def to_dict(self) -> dict:
        return {"path": self.path, "kind": self.kind, "metadata": self.metadata,
                "threshold": self.threshold, "threshold_sparsity": self.threshold_sparsity,
                "tensors": [t.to_dict() for t in self.tensors]}

    def format_table(self) -> str:
        width = max([len("tensor")] + [len(t.name) for t in self.tensors])
        lines = [f"{'tensor':<{width}}  {'shape':<18} {'dtype':<5} {'sparsity':>8} {'2:4':>4} {'N:M (M=4,8,16)':<16} "
                 f"{'|w| min':>9} {'p1':>9} {'p50':>9} {'p99':>9} {'max':>9}"]
        fmt = lambda v: f"{v:9.3g}"  # noqa: E731
        for t in self.tensors:
            sp = "-" if t.sparsity is None else f"{100 * t.sparsity:7.2f}%"
            is24 = "-" if t.is_24 is None else ("yes" if t.is_24 else "no")
            nm = ",".join(t.nm.values()) or "-"
            q = t.quantiles
            qs = " ".join(fmt(q[i]) for i in (0, 1, 3, 5, 6)) if q else ""
            lines.append(f"{t.name:<{width}}  {str(tuple(t.shape)):<18} {t.dtype:<5} {sp:>8} {is24:>4} {nm:<16} {qs}")
        counted = [t for t in self.tensors if t.zeros is not None]
        numel = sum(t.numel for t in counted)
        lines.append(f"total: {len(self.tensors)} tensors, {sum(t.numel for t in self.tensors):,} parameters, "
                     f"floating sparsity {100 * (sum(t.zeros for t in counted) / numel if numel else 0):.2f}%")
        stored = [t for t in self.tensors if t.stored_as != "dense"]
        if stored:
            formats = ", ".join(sorted({t.stored_as for t in stored}))
            lines.append(f"{len(stored)} weights stored compressed ({formats}), shown decompressed")
        pp_meta = {k: v for k, v in self.metadata.items() if k.startswith("pruneplug.")}
        if pp_meta:
            lines.append("pruned by pruneplug: " + ", ".join(f"{k[10:]}={v}" for k, v in sorted(pp_meta.items())))
        return "\n".join(lines)


_HIST_EDGES = np.linspace(-12.0, 4.0, 321)  # log10 |w|, 0.05 decades a bin


def _max_group_nnz(array: np.ndarray, m: int) -> int:
    rows = array.reshape(-1, array.shape[-1] // m, m)
    step = max(1, CHUNK // array.shape[-1])
    most = 0
    for start in range(0, rows.shape[0], step):
        part = rows[start:start + step]
        if part.size:
            most = max(most, int((part != 0).sum(axis=2).max()))
    return most


def inspect_checkpoint(src: str | os.PathLike, *, include: Sequence[str] | None = None,
                       exclude: Sequence[str] | None = None, threshold_sparsity: float | None = 0.5,
                       histogram: bool = False, progress: ProgressLike | None = None) -> InspectReport:
    """Per tensor: shape, dtype, sparsity (exact zeros), whether it is 2:4 along the last axis, the
    tightest N:M for M in 4, 8, 16, and ``|w|`` quantiles. With ``histogram=True`` also the
    ``log10 |w|`` histogram of the tensors the selection rule picks, and the ``|w|`` threshold a global
    L1 prune to ``threshold_sparsity`` would use (what ``--plot`` draws). One tensor in memory at a time.
    """
    progress = progress or NullProgress()
    ckpt = open_checkpoint(src)
    names = sorted(ckpt.tensors)
    reasons = select_tensors((ckpt.tensors[n] for n in names), include, exclude)
    rows = []
    counts = np.zeros(len(_HIST_EDGES) - 1, dtype=np.int64)
    zero_total = 0
    progress.start("inspecting", len(names), ckpt.total_bytes)
    for name in names:
        ref = ckpt.tensors[name]
        row = InspectRow(name, list(ref.shape), ref.dtype, ref.numel, selected=reasons[name] is None,
                         stored_as=ref.stored_as)
        if ref.prunable:
            array = ref.array()
            row.zeros = count_zeros(flat_chunks(array))
            if array.ndim and array.shape[-1] % 4 == 0 and array.size:
                row.is_24 = masks.is_nm_sparse(array, 2, 4)
            if array.ndim and array.size:
                for m in NM_MS:
                    if array.shape[-1] % m == 0:
                        row.nm[str(m)] = f"{_max_group_nnz(array, m)}:{m}"
            if array.size:
                mags = np.abs(array.reshape(-1).astype(np.float64 if array.dtype == np.float64 else np.float32))
                if not np.isfinite(mags).all():
                    row.quantiles = None
                else:
                    row.quantiles = [float(v) for v in np.quantile(mags, QUANTILES)]
                if histogram and row.selected:
                    nz = mags[mags > 0]
                    zero_total += mags.size - nz.size
                    logs = np.clip(np.log10(nz), _HIST_EDGES[0], _HIST_EDGES[-1])
                    counts += np.histogram(logs, bins=_HIST_EDGES)[0]
                del mags
            del array
        rows.append(row)
        progress.update(1, ref.nbytes)
    progress.close()
    result = InspectReport(str(src), ckpt.kind, ckpt.metadata, rows)
    if histogram:
        result.histogram = {"log10_edges": _HIST_EDGES.tolist(), "counts": counts.tolist(), "zeros": zero_total}
        chosen = [n for n in names if reasons[n] is None]
        if threshold_sparsity is not None and chosen:
            sources = [tensor_source(ckpt.tensors[n]) for n in chosen]
            plan = plan_global(sources, threshold_sparsity, "l1", progress)
            result.threshold, result.threshold_sparsity = plan.threshold, threshold_sparsity
    return result


def check_plot_path(src: str | os.PathLike, path: str | os.PathLike) -> None:
    """Refuse a ``--plot`` path that names the input (or a file inside an input directory)."""
    check_distinct([Place("IN", Path(src), Path(src).is_dir()), Place("--plot", Path(path), False)])


def plot_inspection(report: InspectReport, path: str | os.PathLike) -> None:
    """Draw per-tensor sparsity and the ``|w|`` histogram with the pruning threshold into a PNG."""
    check_plot_path(report.path, path)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CheckpointError("--plot needs matplotlib: pip install 'pruneplug[plot]'") from None
    rows = [t for t in report.tensors if t.sparsity is not None]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 4 + 0.12 * len(rows)), gridspec_kw={"height_ratios": [max(len(rows), 4), 8]})
    ax1.barh(range(len(rows)), [100 * t.sparsity for t in rows], color=["C0" if t.selected else "C7" for t in rows])
    ax1.set_yticks(range(len(rows)))
    ax1.set_yticklabels([t.name for t in rows], fontsize=6)
    ax1.invert_yaxis()
    ax1.set_xlim(0, 100)
    ax1.set_xlabel("sparsity (% exact zeros); grey: not selected for pruning")
    ax1.set_title(f"{report.path}")
    hist = report.histogram
    if hist:
        edges = np.array(hist["log10_edges"])
        ax2.stairs(hist["counts"], edges, fill=True, alpha=0.7, label=f"|w| of selected tensors ({hist['zeros']:,} zeros not shown)")
        used = report.metadata.get("pruneplug.threshold")
        if used is not None:  # the score threshold this checkpoint was pruned with
            method = report.metadata.get("pruneplug.method", "l1")
            value = float(used) ** (0.5 if method == "l2" else 1.0)
            if value > 0:
                ax2.axvline(math.log10(value), color="C2", linestyle="--",
                            label=f"threshold this checkpoint was pruned at (|w| = {value:.3g})")
        if report.threshold is not None and report.threshold > 0:
            ax2.axvline(math.log10(report.threshold), color="C3",
                        label=f"global L1 threshold at {100 * report.threshold_sparsity:g}%: |w| = {report.threshold:.3g}")
        elif report.threshold is not None:
            ax2.plot([], [], " ", label=f"global L1 threshold at {100 * report.threshold_sparsity:g}% is 0 (that many zeros already)")
        ax2.set_xlabel("log10 |w|")
        ax2.set_ylabel("weights")
        nz = np.flatnonzero(hist["counts"])
        if nz.size:
            ax2.set_xlim(edges[max(nz[0] - 2, 0)], edges[min(nz[-1] + 3, len(edges) - 1)])
        ax2.legend(fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as exc:
        raise CheckpointError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        plt.close(fig)

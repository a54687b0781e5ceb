"""Where :func:`~pruneplug.checkpoint.prune_checkpoint` writes: checking the output paths before any
work, one writer per output file, and the rest of a sharded output directory (index, config, the
input's other files)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from pruneplug.checkpoint.formats import INDEX_NAME, Checkpoint, read_safetensors_header
from pruneplug.checkpoint.global_select import GlobalPlan
from pruneplug.checkpoint.report import TensorReport
from pruneplug.checkpoint.writers import NpzWriter, SafetensorsWriter, _Transaction, _write_guard
from pruneplug.errors import CheckpointError, InvalidArgumentError


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _resolve_output(ckpt: Checkpoint, dst: Any, in_place: bool, dry_run: bool) -> Path | None:
    if dst is None:
        if in_place:
            return ckpt.path
        if dry_run:
            return None
        raise InvalidArgumentError("an output path is needed (-o OUT), or in_place=True / --in-place")
    out = Path(dst)
    if ckpt.kind != "sharded" and out.is_dir():
        out = out / ckpt.path.name
    if out.resolve() == ckpt.path.resolve() or _same_path(out, ckpt.path):
        if not in_place:
            raise CheckpointError(f"the output {out} is the input; pass --in-place (in_place=True) to overwrite it")
        return ckpt.path
    if in_place:
        raise InvalidArgumentError(f"--in-place with an output {out} that is not the input {ckpt.path}")
    if ckpt.kind == "sharded":
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise CheckpointError(f"the output directory {out} exists and is not empty; remove it or choose another")
    else:
        wanted = ".npz" if ckpt.kind == "npz" else ".safetensors"
        if out.suffix != wanted:
            raise CheckpointError(f"the output {out} should end in {wanted}, the input's form")
    if not out.parent.is_dir():
        raise CheckpointError(f"cannot write {out}: directory {out.parent} does not exist")
    if not dry_run and not os.access(out.parent, os.W_OK | os.X_OK):
        raise CheckpointError(f"cannot write to directory {out.parent}: permission denied")
    return out


def _check_target_dir(path: Path) -> None:
    if path.is_dir():
        raise CheckpointError(f"cannot write {path}: it is a directory")
    if not path.parent.is_dir():
        raise CheckpointError(f"cannot write {path}: directory {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise CheckpointError(f"cannot write to directory {path.parent}: permission denied")


def _check_side_outputs(src: Path, masks: Path | None, report: Path | None, dry_run: bool) -> None:
    """Fail before the work, not after it, when ``--masks-out`` or ``--report`` cannot be written."""
    if masks is not None and _same_path(masks, src):
        raise CheckpointError(f"--masks-out {masks} is the input checkpoint")
    for extra in (masks if not dry_run else None, report):
        if extra is not None:
            _check_target_dir(extra)


def _check_space(out: Path, needed: int) -> None:
    with contextlib.suppress(OSError):
        free = shutil.disk_usage(out.parent if not out.is_dir() else out).free
        if needed > free:
            raise CheckpointError(f"not enough disk space in {out.parent}: about {needed / 1e9:.2f} GB needed, {free / 1e9:.2f} GB free")


def _plan_outputs(ckpt: Checkpoint, out: Path | None, txn: _Transaction, dry_run: bool, format: str):
    """(output file, tensor names in write order, its metadata, writer factory or None) per file."""
    if out is None or dry_run:
        if ckpt.kind == "npz":
            return [(None, list(ckpt.tensors), ckpt.metadata, None)]
        return [(None, [r.name for r in f.tensors], f.metadata, None) for f in ckpt.files]
    if ckpt.kind == "npz":
        tmp = txn.stage_file(out)
        return [(out, list(ckpt.tensors), ckpt.metadata,
                 lambda meta: NpzWriter(tmp, meta, ckpt.npz_compressed))]
    if ckpt.kind == "safetensors":
        tmp = txn.stage_file(out)
        files = [(tmp, ckpt.files[0])]
    else:
        tmpdir = txn.stage_dir(out)
        files = [(tmpdir / f.path.name, f) for f in ckpt.files]
    result = []
    for target, f in files:
        # dense output has the input's layout: the header goes first and tensors stream after it
        entries = [(r.name, r.dtype, r.shape, r.nbytes) for r in f.tensors] if format == "dense" else None

        def factory(meta, target=target, entries=entries):
            with _write_guard(out if ckpt.kind == "safetensors" else out / target.name):  # the name users know
                return SafetensorsWriter(target, meta, entries)
        result.append((target, [r.name for r in f.tensors], f.metadata, factory))
    return result


def _settings_metadata(settings: dict, selected: list[str], plan: GlobalPlan | None) -> dict[str, str]:
    from pruneplug import __version__

    meta = {f"pruneplug.{k}": json.dumps(v) if isinstance(v, (list, bool)) or v is None else str(v)
            for k, v in settings.items()}
    meta["pruneplug.version"] = __version__
    meta["pruneplug.pruned_tensors"] = str(len(selected))
    if plan is not None and plan.threshold is not None:
        meta["pruneplug.threshold"] = repr(plan.threshold)
    return meta


def _finish_directory(ckpt: Checkpoint, outputs, rows: dict[str, TensorReport], format: str, settings: dict,
                      plan: GlobalPlan | None) -> None:
    """For a sharded output: the index (new weight map and total size) and the other files of the
    input directory (config, tokenizer, ...) copied; with a compressed format, config.json gains
    the compressed-tensors ``quantization_config``."""
    if ckpt.kind != "sharded":
        return
    tmpdir = outputs[0][0].parent
    with _write_guard(tmpdir / INDEX_NAME):
        _write_index(ckpt, outputs, rows, settings, plan, tmpdir)
        _copy_other_files(ckpt, tmpdir)
        config = tmpdir / "config.json"
        if format != "dense" and config.is_file():
            _add_sparsity_config(config, rows, format)


def _write_index(ckpt: Checkpoint, outputs, rows: dict[str, TensorReport], settings: dict,
                 plan: GlobalPlan | None, tmpdir: Path) -> None:
    """The input's index with the weight map and total size of the shards as written (a compressed
    format renames and resizes tensors) and the pruneplug settings in its metadata."""
    weight_map, total = {}, 0
    for target, *_ in outputs:
        st = read_safetensors_header(target)
        for ref in st.tensors:
            weight_map[ref.name] = target.name
            total += ref.nbytes
    index = dict(ckpt.index or {})
    meta = dict(index.get("metadata") or {})
    meta["total_size"] = total
    pruned = [n for n, r in rows.items() if r.status == "pruned"]
    meta.update(_settings_metadata(settings, pruned, plan))
    index["metadata"] = meta
    index["weight_map"] = dict(sorted(weight_map.items()))
    (tmpdir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")


def _copy_other_files(ckpt: Checkpoint, tmpdir: Path) -> None:
    """Everything in the input directory but its shards, index and hidden files (config, tokenizer, ...)."""
    shards = {f.path.name for f in ckpt.files} | {INDEX_NAME}
    for item in sorted(ckpt.path.iterdir()):
        if item.name in shards or item.name.startswith("."):
            continue
        if item.is_dir():
            shutil.copytree(item, tmpdir / item.name, symlinks=True)
        else:
            shutil.copy2(item, tmpdir / item.name)


def _add_sparsity_config(config: Path, rows: dict[str, TensorReport], format: str) -> None:
    """Record the compressed format in config.json, so compressed-tensors loaders decompress it."""
    from pruneplug import compressed_tensors as ct

    compressed = [r for r in rows.values() if r.stored_as == format]
    numel = sum(r.numel for r in compressed)
    zeros = sum(r.zeros_after for r in compressed)
    cfg = json.loads(config.read_text())
    sparsity_cfg = ct.sparsity_config(
        format, global_sparsity=zeros / numel if numel else 0.0,
        targets=sorted(ct.prefix_of(r.name) for r in compressed),
        ignore=sorted(ct.prefix_of(r.name) for r in rows.values() if r.stored_as != format and r.numel),
    )
    qc = cfg.get("quantization_config")
    if isinstance(qc, dict) and qc.get("quant_method") == "compressed-tensors":
        qc["sparsity_config"] = sparsity_cfg
    else:
        cfg["quantization_config"] = ct.quantization_config(sparsity_cfg)
    config.write_text(json.dumps(cfg, indent=2) + "\n")


# Public names for front ends that write the shards elsewhere (pruneplug.dask_checkpoint) and finish
# the directory exactly as prune_checkpoint does.
settings_metadata = _settings_metadata
finish_directory = _finish_directory

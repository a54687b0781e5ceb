"""Where :func:`~pruneplug.checkpoint.prune_checkpoint` writes: checking the output paths before any
work, one writer per output file, and the rest of a sharded output directory (index, config, the
input's other files)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

from pruneplug.checkpoint.formats import DIRECTORY_KINDS, INDEX_NAME, Checkpoint, read_safetensors_header
from pruneplug.checkpoint.global_select import GlobalPlan
from pruneplug.checkpoint.paths import Place, check_distinct, check_inputs_apart, check_replaceable_dir
from pruneplug.report import TensorReport
from pruneplug.checkpoint.writers import NpzWriter, SafetensorsWriter, Transaction, write_guard
from pruneplug.errors import CheckpointError, InvalidArgumentError
from pruneplug.version import __version__


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def resolve_output(ckpt: Checkpoint, dst: Any, in_place: bool, dry_run: bool) -> Path | None:
    if dst is None:
        if in_place:
            return ckpt.path
        if dry_run:
            return None
        raise InvalidArgumentError("an output path is needed (-o OUT), or in_place=True / --in-place")
    out = Path(dst)
    if ckpt.kind not in DIRECTORY_KINDS and out.is_dir():
        out = out / ckpt.path.name
    if out.resolve() == ckpt.path.resolve() or _same_path(out, ckpt.path):
        if not in_place:
            raise CheckpointError(f"the output {out} is the input; pass --in-place (in_place=True) to overwrite it")
        return ckpt.path
    if in_place:
        raise InvalidArgumentError(f"--in-place with an output {out} that is not the input {ckpt.path}")
    if ckpt.kind in DIRECTORY_KINDS:
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


def check_side_outputs(ckpt: Checkpoint, out: Path | None, masks: Path | None, report: Path | None,
                       in_place: bool, dry_run: bool, calibration: Path | None = None) -> None:
    """Fail before the work, not after it, when ``--masks-out`` or ``--report`` cannot be written or
    clash with IN, OUT or each other, or when an output would overwrite the ``--calibration``
    statistics file (an input read during the work; the rules: :mod:`pruneplug.checkpoint.paths`)."""
    is_dir = ckpt.kind in DIRECTORY_KINDS
    places = [Place("IN", ckpt.path, is_dir)]
    if out is not None and not in_place:
        places.append(Place("OUT", out, is_dir))
    places += [Place(role, p, False) for role, p in (("--report", report), ("--masks-out", masks)) if p is not None]
    check_distinct(places)
    if calibration is not None:  # an input like IN, but only read: it may lie inside IN, never under an output
        written = places[1:] if not in_place else places
        check_inputs_apart([Place("--calibration", calibration, False)], written)
    if in_place and is_dir and not dry_run:
        check_replaceable_dir(ckpt.path)
    for extra in (masks if not dry_run else None, report):
        if extra is not None:
            _check_target_dir(extra)


def check_space(out: Path, needed: int) -> None:
    with contextlib.suppress(OSError):
        free = shutil.disk_usage(out.parent if not out.is_dir() else out).free
        if needed > free:
            raise CheckpointError(f"not enough disk space in {out.parent}: about {needed / 1e9:.2f} GB needed, {free / 1e9:.2f} GB free")


def plan_outputs(ckpt: Checkpoint, out: Path | None, txn: Transaction, dry_run: bool, format: str):
    """(output file, tensor names in write order, its metadata, writer factory or None) per file."""
    if out is None or dry_run:
        if ckpt.kind == "npz":
            return [(None, list(ckpt.tensors), ckpt.metadata, None)]
        return [(None, [r.name for r in f.tensors], f.metadata, None) for f in ckpt.files]
    if ckpt.kind == "npz":
        tmp = txn.stage_file(out, mode=output_mode(ckpt.path, out))
        return [(out, list(ckpt.tensors), ckpt.metadata,
                 lambda meta: NpzWriter(tmp, meta, ckpt.npz_compressed))]
    if ckpt.kind == "safetensors":
        tmp = txn.stage_file(out, mode=output_mode(ckpt.path, out))
        files = [(tmp, ckpt.files[0])]
    else:
        tmpdir = txn.stage_dir(out, mode=output_mode(ckpt.path, out))
        files = [(tmpdir / f.path.name, f) for f in ckpt.files]
    result = []
    for target, f in files:
        # dense output has the input's layout: the header goes first and tensors stream after it
        entries = [(r.name, r.dtype, r.shape, r.nbytes) for r in f.tensors] if format == "dense" else None

        def factory(meta, target=target, entries=entries):
            with write_guard(out if ckpt.kind == "safetensors" else out / target.name):  # the name users know
                return SafetensorsWriter(target, meta, entries)
        result.append((target, [r.name for r in f.tensors], file_metadata(f.metadata, ckpt.kind, format), factory))
    return result


def file_metadata(metadata: dict[str, str], kind: str, format: str) -> dict[str, str]:
    """A safetensors output's own metadata. A bare file in a compressed format gets ``format`` set
    to the format's name, not ``pt``: transformers then refuses to load it as a dense model (it
    would silently re-initialise every compressed weight); a file in a directory keeps (or gets
    back) ``pt`` and has config.json tell loaders to decompress, and so does a dense output."""
    from pruneplug import compressed_tensors as ct

    if kind == "safetensors" and format != "dense":
        return {**metadata, "format": format}
    if metadata.get("format") in ct.FORMATS:
        return {**metadata, "format": "pt"}
    return metadata


def settings_metadata(settings: dict, selected: list[str], plan: GlobalPlan | None) -> dict[str, str]:
    meta = {f"pruneplug.{k}": json.dumps(v) if isinstance(v, (list, bool)) or v is None else str(v)
            for k, v in settings.items()}
    meta["pruneplug.version"] = __version__
    meta["pruneplug.pruned_tensors"] = str(len(selected))
    if plan is not None and plan.threshold is not None:
        meta["pruneplug.threshold"] = repr(plan.threshold)
    return meta


def finish_directory(ckpt: Checkpoint, outputs, rows: dict[str, TensorReport], format: str, settings: dict,
                      plan: GlobalPlan | None, out: Path | None = None) -> None:
    """For a sharded output: the index (new weight map and total size) and the other files of the
    input directory (config, tokenizer, ...) copied; with a compressed format, config.json gains
    the compressed-tensors ``quantization_config``."""
    if ckpt.kind not in DIRECTORY_KINDS:
        return
    tmpdir = outputs[0][0].parent
    with write_guard(tmpdir):
        if ckpt.kind == "sharded":
            _write_index(ckpt, outputs, rows, settings, plan, tmpdir)
        _copy_other_files(ckpt, tmpdir, out)
        config = tmpdir / "config.json"
        if config.is_file():
            update_config(config, ckpt, rows, format)


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
    meta.update(settings_metadata(settings, pruned, plan))
    index["metadata"] = meta
    index["weight_map"] = dict(sorted(weight_map.items()))
    (tmpdir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")


def _copy_link(link: Path, dest: Path, out: Path | None) -> None:
    """Copy a symbolic link as a link. A relative target is rewritten so that the copy, once the
    output is at ``out``, points where the original does (unchanged when ``out`` is the input or
    not given)."""
    target = os.readlink(link)
    if out is not None and not os.path.isabs(target) and os.path.abspath(out) != os.path.abspath(link.parent):
        target = os.path.relpath(os.path.join(os.path.abspath(link.parent), target), os.path.abspath(out))
    os.symlink(target, dest)


def _copy_other_files(ckpt: Checkpoint, tmpdir: Path, out: Path | None) -> None:
    """Everything in the input directory but its weights, index and hidden directories (config,
    tokenizer, .gitattributes, ...), byte for byte; symbolic links are copied as links (see
    :func:`_copy_link`)."""
    shards = {f.path.name for f in ckpt.files} | {INDEX_NAME}
    for item in sorted(ckpt.path.iterdir()):
        if item.name in shards or (item.name.startswith(".") and item.is_dir() and not item.is_symlink()):
            continue  # hidden directories (.git, .cache) are not part of the model; hidden files are
        if item.is_symlink():  # copied as a link, never followed
            _copy_link(item, tmpdir / item.name, out)
        elif item.is_dir():
            shutil.copytree(item, tmpdir / item.name, symlinks=True)
        else:
            shutil.copy2(item, tmpdir / item.name)


def output_mode(src: Path, out: Path) -> int | None:
    """The mode an output gets: in place, the input's; an existing (empty) output directory keeps
    its own; anything new the umask's (None)."""
    with contextlib.suppress(OSError):
        if _same_path(src, out) or (out.is_dir() and not out.is_symlink()):
            return stat.S_IMODE(os.stat(out).st_mode)
    return None


def stores_compressed(shape: tuple, format: str) -> bool:
    """Whether a pruned tensor of ``shape`` is stored in the compressed ``format`` (else dense:
    ``sparse-24-bitmask`` holds 2-D weights only)."""
    return format != "dense" and (format == "sparse-bitmask" or len(shape) == 2)


def check_writable_form(ckpt: Checkpoint, stored_compressed: list[str], format: str) -> None:
    """Refuse, before any work, what the output could not hold faithfully: npz members that are not
    arrays, and compressed-format names that collide with other tensors' names."""
    if ckpt.other_members:
        raise CheckpointError(
            f"{ckpt.path}: members that are not .npy arrays ({', '.join(map(repr, ckpt.other_members[:5]))}) "
            "would not survive the rewrite: refused (remove them, or keep them in another file)")
    if not stored_compressed:
        return
    from pruneplug import compressed_tensors as ct

    owner: dict[str, str] = {n: n for n in ckpt.tensors if n not in set(stored_compressed)}
    for name in stored_compressed:
        prefix = ct.prefix_of(name)
        for added in (prefix,) + tuple(f"{prefix}.{p}" for p in ct.PARAM_NAMES[format]):
            if added in owner and owner[added] != name:
                raise CheckpointError(
                    f"--format {format} stores {name!r} as {prefix}.{{{','.join(ct.PARAM_NAMES[format])}}}, "
                    f"which collides with tensor {owner[added]!r} ({added!r}): refused (rename the tensor, "
                    "--exclude it, or write --format dense)")
            owner[added] = name


def module_of(name: str) -> str:
    """The module a parameter belongs to: ``a.b.weight`` -> ``a.b`` (compressed-tensors' targets
    and ignore lists name modules, not parameters)."""
    return name.rsplit(".", 1)[0] if "." in name else name


_TORCH_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def _main_dtype(rows: dict[str, TensorReport]) -> str:
    """The floating dtype that holds most parameters (what the model was saved in)."""
    counts: dict[str, int] = {}
    for r in rows.values():
        if r.dtype in _TORCH_DTYPES:
            counts[r.dtype] = counts.get(r.dtype, 0) + r.numel
    return _TORCH_DTYPES[max(counts, key=counts.get)] if counts else "float32"


def update_config(config: Path, ckpt: Checkpoint, rows: dict[str, TensorReport], format: str) -> None:
    """The output's config.json: with a compressed format, the compressed-tensors
    ``quantization_config`` (so loaders decompress it) and ``torch_dtype`` when absent (transformers
    would otherwise load a compressed-tensors model in float16); with dense output of a compressed
    input, its ``sparsity_config`` removed (the weights are dense now). Untouched otherwise."""
    from pruneplug import compressed_tensors as ct

    was_compressed = any(r.stored_as != "dense" for r in ckpt.tensors.values())
    if format == "dense" and not was_compressed:
        return
    try:
        cfg = json.loads(config.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"cannot update {config.name} of the output: {exc}") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"cannot update {config.name} of the output: not a JSON object")
    qc = cfg.get("quantization_config")
    is_ct = isinstance(qc, dict) and qc.get("quant_method") == "compressed-tensors"
    if format == "dense":
        if is_ct:
            qc.pop("sparsity_config", None)
            if not qc.get("config_groups"):  # sparse-only: nothing left to decompress
                del cfg["quantization_config"]
    else:
        compressed = [r for r in rows.values() if r.stored_as == format]
        numel = sum(r.numel for r in compressed)
        zeros = sum(r.zeros_after for r in compressed)
        targets = sorted({ct.prefix_of(r.name) for r in compressed})
        modules = {module_of(r.name) for r in rows.values() if r.numel}
        sparsity_cfg = ct.sparsity_config(format, global_sparsity=zeros / numel if numel else 0.0,
                                          targets=targets, ignore=sorted(modules - set(targets)))
        if is_ct:
            qc["sparsity_config"] = sparsity_cfg
        else:
            cfg["quantization_config"] = ct.quantization_config(sparsity_cfg)
        if "torch_dtype" not in cfg and "dtype" not in cfg:
            cfg["torch_dtype"] = _main_dtype(rows)
    if config.is_symlink():  # a copied link (a Hugging Face cache points into its blobs): never write through it
        config.unlink()
    config.write_text(json.dumps(cfg, indent=2) + "\n")

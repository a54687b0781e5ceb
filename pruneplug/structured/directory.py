"""``pruneplug shrink MODEL_DIR -o OUT_DIR``: a smaller Hugging Face model directory, made block by
block on the stream's machinery (:mod:`pruneplug.stream`), never loading the whole model.

1. The skeleton (the model's classes on the meta device, the name map) and the checks of the
   request against its first block and config: every request error is raised before any work.
2. The decisions (neurons, heads, routed experts, blocks): one calibration pass (when a criterion or the compensation needs one), each
   block's weights materialised from the checkpoint while it runs and freed after; the
   compensated tensors of a block go to the staging area at once.
3. The output, in a staging directory beside OUT: one safetensors shard per kept block (its
   tensors cut, renumbered, removed experts' tensors left out and kept ones renumbered, in the
   checkpoint's dtype) plus one for everything outside the blocks
   (copied as is), the shard index, config.json with the new widths and depth, every other file
   (tokenizer, generation config) copied. Then one rename: a failure leaves nothing at OUT and
   removes the staging directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from pruneplug.checkpoint.paths import Place, check_distinct
from pruneplug.errors import CheckpointError
from pruneplug.structured.decide import BlockDecision
from pruneplug.structured.plan import (Plan, ShrinkRequest, config_changes, decide, find_block_list,
                                       json_key, make_plan, needs_what, new_tensors, renumbering, shrink_report,
                                       zero_bias_siblings)
from pruneplug.structured.experts import renumber_expert
from pruneplug.reconstruction.block import ReconstructSettings
from pruneplug.structured.reconstruct import check_reconstruct, shrink_and_reconstruct
from pruneplug.report import NullProgress
from pruneplug.structured.report import ShrinkReport
from pruneplug.torch.shrink import apply_to_block

#: Weight files of other formats that would describe the unshrunk model: not copied.
_STALE = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
_SKIP = {"config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json"}


def shrink_model_dir(model_dir: str | os.PathLike, out: str | os.PathLike, request: ShrinkRequest,
                     texts: Any = None, *, samples: int = 128, seq_len: int = 128, batch_size: int = 16,
                     device: str = "cpu", report: str | os.PathLike | None = None, dry_run: bool = False,
                     progress: Any = None, reconstruct: ReconstructSettings | None = None) -> ShrinkReport:
    """Write a smaller copy of the Hugging Face model directory ``model_dir`` to the new directory
    ``out`` (the module docstring); ``texts``: calibration texts (a file or a list of strings),
    needed by calibrated criteria, compensation and ``reconstruct``. ``dry_run``: decide and report,
    write nothing. ``reconstruct``: a :class:`pruneplug.ReconstructSettings` with ``steps > 0``
    re-fits each shrunk block to the dense block's outputs before the next block is measured
    (:mod:`pruneplug.structured.reconstruct`); the re-fitted weights are written in the checkpoint's
    dtype and the next block's inputs are computed with those rounded values.

    Example::

        report = shrink_model_dir("SmolLM2-135M", "SmolLM2-small", ShrinkRequest(mlp=0.25, drop_blocks=2),
                                  "calibration.txt")
        report.params_after / report.params_before
        report = shrink_model_dir("SmolLM2-135M", "SmolLM2-refit", ShrinkRequest(mlp=0.25), "calibration.txt",
                                  reconstruct=pp.ReconstructSettings(steps=20, lr=5e-4))
        report.reconstruction_losses   # block -> {'before': ..., 'after': ..., ...}
    """
    from pruneplug.stream.skeleton import build_skeleton

    start = time.perf_counter()
    model_dir, out = Path(model_dir), Path(out)
    places = [Place("MODEL_DIR", model_dir, True), Place("-o", out, True)]
    if isinstance(texts, (str, os.PathLike)):
        places.append(Place("--calibration", Path(texts), False))
    if report is not None:
        places.append(Place("--report", Path(report), False))
    check_distinct(places)
    if not dry_run and (out.exists() or out.is_symlink()):
        raise CheckpointError(f"-o {out}: exists; shrink writes a new directory (remove it or choose another)")
    skel = build_skeleton(model_dir)
    container, blocks = find_block_list(skel.model)
    plan = make_plan(request, list(blocks), skel.config)
    refit = check_reconstruct(reconstruct, plan, texts is not None)
    batches = _batches(model_dir, texts, plan, samples, seq_len, batch_size, needed=refit)
    progress = progress or NullProgress()
    torch_device = torch.device(device)
    staging = out.parent / f".{out.name}.shrink-{os.getpid()}"
    pending = staging / ".pending"
    try:
        if not dry_run:
            pending.mkdir(parents=True)
        def load(i: int) -> None:
            skel.load_where(_in_block(container, i), torch_device, torch.float32)

        def unload(i: int) -> None:
            skel.unload_where(_in_block(container, i))

        def capture(acts: Any) -> list:
            return _capture(skel, container, blocks, batches, acts, torch_device)

        losses: dict[int, dict] = {}
        if refit:
            decisions, losses = shrink_and_reconstruct(
                plan, skel.model, list(blocks), batches, reconstruct,
                cut=lambda block, d: apply_to_block(block, d, plan),
                keep=lambda i, d, block: _stash(pending, i, _refitted(skel, container, i, d, block), dry_run),
                load=load, unload=unload, capture=capture, device=torch_device, progress=progress)
        else:
            progress.start("deciding", len(blocks), len(blocks), unit="blocks")
            decisions = decide(plan, skel.model, list(blocks), batches, load=load, unload=unload, capture=capture,
                               keep=lambda i, d: _stash(pending, i, d, dry_run),
                               keep_fold=lambda i, t: _stash_fold(pending, i, t, dry_run),
                               step=lambda i: progress.update(1, 1))
            progress.close()
        changes = config_changes(plan, skel.config, decisions.dropped)
        before, after = _parameter_counts(skel, container, plan, decisions)
        if not dry_run:
            _write(skel, container, plan, decisions, changes, staging, pending, model_dir, progress)
            shutil.rmtree(pending)
            _sync(staging)
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    result = shrink_report(plan, decisions, params_before=before, params_after=after,
                           config_changes={json_key(skel.config, k): v for k, v in changes.items()},
                           reconstruct=reconstruct if refit else None, losses=losses,
                           seconds=time.perf_counter() - start)
    if report is not None:
        tmp = Path(str(report) + ".tmp")
        tmp.write_text(result.to_json(), encoding="utf-8")
        os.replace(tmp, report)
    return result


def _batches(model_dir: Path, texts: Any, plan: Plan, samples: int, seq_len: int, batch_size: int,
             needed: bool = False) -> list | None:
    if not (needed or plan.needs_calibration):
        return None
    from pruneplug.calibration import is_safetensors_file
    from pruneplug.errors import CalibrationError, CalibrationRequiredError
    from pruneplug.torch.hf import load_texts, load_tokenizer, text_batches

    if texts is None:
        raise CalibrationRequiredError(needs_what(plan), "give --calibration TEXTS")
    if isinstance(texts, (str, os.PathLike)) and is_safetensors_file(Path(texts)):
        raise CalibrationError(
            f"--calibration {str(texts)!r} is a statistics file (pruneplug calibrate); shrink needs calibration "
            "texts: its criteria read what such a file does not hold (mean |activation| and variance per channel, "
            "X^T X of o_proj/down_proj inputs, the hidden states around each block, the routing of each expert), "
            "measured in its own pass over the texts")
    texts_list = list(texts)[:samples] if isinstance(texts, list) else load_texts(texts, samples)
    return text_batches(load_tokenizer(model_dir), texts_list, seq_len, batch_size, where=str(texts))


def _in_block(container: str, i: int):
    prefix = f"{container}.{i}."
    return lambda name: name.startswith(prefix)


def _capture(skel: Any, container: str, blocks: Sequence[Any], batches: list, activations: Any, device: Any) -> list:
    """The first block's inputs: the layers before it loaded, the forward stopped there, freed."""
    from pruneplug.stream.skeleton import HEAD_NAMES
    from pruneplug.torch.blockwise import capture_block_inputs

    prefix = container + "."
    outside = lambda n: not n.startswith(prefix) and n not in HEAD_NAMES  # noqa: E731
    skel.load_where(outside, device, torch.float32)
    try:
        return capture_block_inputs(skel.model, blocks[0], batches, activations, device=device)
    finally:
        skel.unload_where(lambda n: not n.startswith(prefix))


def _stash(pending: Path, i: int, decision: BlockDecision, dry_run: bool) -> BlockDecision:
    """Move a block's compensated tensors to the staging area (memory stays one block's)."""
    if dry_run:
        decision.replaced = {name: None for name in decision.replaced}
        return decision
    stashed = {}
    for name, tensor in decision.replaced.items():
        path = pending / f"{i}.{name}.pt"
        torch.save(tensor.detach().cpu(), path)
        stashed[name] = path
    decision.replaced = stashed
    return decision


def _stash_fold(pending: Path, i: int, fold: torch.Tensor, dry_run: bool) -> Path | None:
    """Move a block's fold map ([hidden, hidden]) to the staging area."""
    if dry_run:
        return None
    path = pending / f"{i}.fold.pt"
    torch.save(fold, path)
    return path


def _refitted(skel: Any, container: str, i: int, decision: BlockDecision, block: Any) -> BlockDecision:
    """Block ``i`` after its re-fit: every floating-point parameter (the re-fit may have moved
    Linear weights, or norms and biases with ``train="norms"``) rounded, in place, to the
    checkpoint's dtype (the next block's inputs come from what is written) and added to the
    decision's replaced tensors, for the writer."""
    for rel, weight in dict(block.named_parameters()).items():
        if not weight.is_floating_point():
            continue
        stored = skel.names.get(f"{container}.{i}.{rel}")
        if stored is None and rel not in decision.replaced:
            continue  # no checkpoint tensor of that name (transformers 5's fused experts): not trained
        dtype = getattr(torch, skel.checkpoint.tensors[stored].float_dtype or "", None) if stored else None
        with torch.no_grad():
            if dtype is not None and dtype != weight.dtype:
                weight.copy_(weight.to(dtype))
        decision.replaced[rel] = weight.detach()
    return decision


def _block_of(checkpoint_name: str, last: str) -> tuple[int, str, str] | None:
    """(block index, name before the index, name relative to the block) of a checkpoint tensor."""
    m = re.match(rf"^(.*?(?:^|\.)?{re.escape(last)})\.(\d+)\.(.+)$", checkpoint_name)
    if m is None:
        return None
    return int(m.group(2)), m.group(1), m.group(3)


def _grouped(skel: Any, container: str) -> tuple[dict[int, list[tuple[str, str, str]]], list[str]]:
    """Checkpoint tensors per block (name, prefix, relative name), and the others."""
    last = container.rsplit(".", 1)[-1]
    blocks: dict[int, list[tuple[str, str, str]]] = {}
    outside = []
    for name in skel.checkpoint.tensors:
        found = _block_of(name, last)
        if found is None:
            outside.append(name)
        else:
            blocks.setdefault(found[0], []).append((name, found[1], found[2]))
    return blocks, outside


def _checkpoint_cuts(skel: Any, container: str, i: int, cuts: dict) -> dict[str, tuple[int, np.ndarray]]:
    """A decision's cuts (keyed by the skeleton's parameter names) keyed by the checkpoint's names,
    relative to the block: transformers 5 renames some modules on loading (Mixtral's
    ``block_sparse_moe`` is ``mlp`` in the model)."""
    last = container.rsplit(".", 1)[-1]
    out = {}
    for rel, cut in cuts.items():
        stored = skel.names.get(f"{container}.{i}.{rel}")
        found = _block_of(stored, last) if stored else None
        out[found[2] if found else rel] = cut
    return out


def _new_name(rel: str, decision: BlockDecision) -> str | None:
    """A block tensor's new relative name: a kept expert's renumbered, a removed expert's None."""
    return rel if decision.keep_experts is None else renumber_expert(rel, decision.keep_experts)


def _cut_shape(shape: Sequence[int], cut: tuple[int, np.ndarray] | None) -> list[int]:
    shape = list(shape)
    if cut is not None:
        shape[cut[0]] = len(cut[1])
    return shape


def _parameter_counts(skel: Any, container: str, plan: Plan, decisions: Any) -> tuple[int, int]:
    """Parameters stored in the checkpoint before, and after the shrink (from shapes alone)."""
    grouped, outside = _grouped(skel, container)
    tensors = skel.checkpoint.tensors
    before = sum(int(ref.numel) for ref in tensors.values())
    after = sum(int(tensors[n].numel) for n in outside)
    for i, members in grouped.items():
        if i in decisions.dropped:
            continue
        cuts = _checkpoint_cuts(skel, container, i, decisions.blocks[i].cuts)
        present = {rel for _, _, rel in members}
        for name, _, rel in members:
            if _new_name(rel, decisions.blocks[i]) is not None:
                after += int(np.prod(_cut_shape(tensors[name].shape, cuts.get(rel))))
        for rel in decisions.blocks[i].replaced:  # a bias the compensation adds
            if rel not in present:
                after += _added_bias_size(rel, plan, cuts, tensors, members)
    return before, after


def _added_bias_size(rel: str, plan: Plan, cuts: dict, tensors: Any, members: list) -> int:
    by_rel = {r: n for n, _, r in members}
    size = _cut_shape(tensors[by_rel[rel.replace(".bias", ".weight")]].shape, None)[0]
    for sibling in zero_bias_siblings(rel, plan):
        if sibling + ".bias" not in by_rel:
            size += _cut_shape(tensors[by_rel[sibling + ".weight"]].shape, cuts.get(sibling + ".weight"))[0]
    return size


def _write(skel: Any, container: str, plan: Plan, decisions: Any, changes: dict, staging: Path, pending: Path,
           model_dir: Path, progress: Any) -> None:
    from safetensors.torch import save_file

    from pruneplug.stream.skeleton import to_torch

    grouped, outside = _grouped(skel, container)
    renumber = renumbering(len(decisions.blocks), decisions.dropped)
    kept = sorted(renumber)
    shards = len(kept) + 1
    weight_map: dict[str, str] = {}
    total = 0
    progress.start("writing", shards, shards, unit="blocks")
    for k, i in enumerate(kept):
        members = grouped.get(i, [])
        stored = {rel: to_torch(skel.checkpoint.tensors[name].array()) for name, _, rel in members}
        decision = decisions.blocks[i]
        replaced = {rel: torch.load(path) for rel, path in decision.replaced.items()}
        fold = torch.load(decision.fold) if decision.fold is not None else None
        cuts = _checkpoint_cuts(skel, container, i, decision.cuts)
        tensors = new_tensors(stored, replace(decision, cuts=cuts, replaced=replaced, fold=fold), plan)
        prefix = members[0][1] if members else f"{container}"
        out: dict[str, torch.Tensor] = {}
        dtype = next(iter(stored.values())).dtype if stored else torch.float32
        for rel in sorted(set(stored) | set(tensors)):
            new_rel = _new_name(rel, decision)
            if new_rel is None:  # a removed expert's tensor
                continue
            tensor = tensors.get(rel, stored.get(rel))
            if tensor.is_floating_point():
                tensor = tensor.to(stored[rel].dtype if rel in stored else dtype)
            out[f"{prefix}.{renumber[i]}.{new_rel}"] = tensor.contiguous()
        total += _save_shard(save_file, out, staging, k + 1, shards, weight_map)
        progress.update(1, 1)
    rest = {name: to_torch(skel.checkpoint.tensors[name].array()) for name in outside}
    total += _save_shard(save_file, rest, staging, shards, shards, weight_map)
    progress.update(1, 1)
    progress.close()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (staging / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    for key, value in changes.items():
        config[json_key(skel.config, key)] = value
    (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for path in sorted(model_dir.iterdir()):
        if path.name in _SKIP or path.name.startswith(".") or path.name.endswith(_STALE):
            continue
        if path.is_file():
            shutil.copy2(path, staging / path.name)
        elif path.is_dir():
            shutil.copytree(path, staging / path.name, symlinks=True)


def _save_shard(save_file: Any, tensors: dict, staging: Path, k: int, n: int, weight_map: dict) -> int:
    name = f"model-{k:05d}-of-{n:05d}.safetensors"
    save_file(tensors, str(staging / name), metadata={"format": "pt"})
    for key in tensors:
        weight_map[key] = name
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _sync(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

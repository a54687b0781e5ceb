"""Calibrated pruning of a Hugging Face model directory, block by block, from the checkpoint to the
output, in the memory of one block.

:func:`prune_model_dir` (``pruneplug prune MODEL_DIR -o OUT_DIR --method wanda --calibration
texts.txt``) and :func:`calibrate_model_dir` (``pruneplug calibrate``) both:

1. build the model without weights (:mod:`pruneplug.stream.skeleton`) and tokenize the texts;
2. load the layers before the first block (embeddings), capture every batch's hidden states at
   the first block, and free them;
3. with OWL, run one cheap pass over the dense blocks (input norms only) for the outlier ratios,
   and turn them into exact per-tensor counts;
4. for each block in forward order: load its tensors (memory-mapped, one at a time) on the device
   in the compute dtype, calibrate and prune it (:mod:`pruneplug.torch.blockwise`), write its
   tensors in the checkpoint's dtype into the output's slots, make the next block's inputs, free
   it;
5. layers outside the blocks (a pooler, a selected head) last, from the final hidden states;
6. copy every other file, and rename the output into place.

Every tensor is written in the checkpoint's dtype and name; a tensor the run does not prune keeps
its stored bytes. The next block's inputs are computed with the weights as written (rounded to
the checkpoint's dtype), so the calibration sees what the saved model computes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pruneplug.calibration import CalibrationContext, StatisticsWriter
from pruneplug.checkpoint.formats import INDEX_NAME, array_zeros
from pruneplug.checkpoint.paths import Place, check_distinct
from pruneplug.report import NullProgress, PruneReport, TensorReport
from pruneplug.selection_rule import SELECTION_RULE
from pruneplug.checkpoint.outputs import settings_metadata
from pruneplug.checkpoint.writers import copy_range, current_umask, pwrite_all
from pruneplug.criteria import prune_scored
from pruneplug.errors import CalibrationError, CheckpointError, InvalidArgumentError, NonFiniteError, PrunePlugError
from pruneplug.layer_ratios import unit_outlier_ratios
from pruneplug.plan import CALIBRATION_MODES, PruneSettings, TensorPlan, pattern_misfit
from pruneplug.reconstruction.block import ReconstructSettings
from pruneplug.stream import journal as journals
from pruneplug.stream.memory import MemoryEstimate, call_bytes_per_token, estimate
from pruneplug.stream.skeleton import HEAD_NAMES, Skeleton, build_skeleton



@dataclass
class StreamOptions:
    """How the stream runs (not what it computes, except ``dtype``/``stats_dtype``/``device``, which
    decide the bits and so belong to a run's fingerprint)."""

    device: str = "cpu"
    dtype: str | None = None  # compute dtype; None: float32 on the CPU, the checkpoint's dtype on a GPU
    stats_dtype: str = "float32"
    calibration_mode: str | None = None  # None: the plan's default (PruneSettings.calibration_mode)
    samples: int = 128
    seq_len: int = 128
    batch_size: int = 16
    include: Sequence[str] | None = None
    exclude: Sequence[str] | None = None
    offload_activations: Path | None = None
    resume: bool = False
    reconstruct: ReconstructSettings = field(default_factory=ReconstructSettings)  # off by default

    def check(self) -> None:
        for name in ("samples", "seq_len", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"--{name.replace('_', '-')} {value!r}: must be an integer >= 1")
        if self.calibration_mode not in (None, *CALIBRATION_MODES):
            raise InvalidArgumentError(f"--calibration-mode {self.calibration_mode!r}: expected one of "
                                       f"{', '.join(CALIBRATION_MODES)}")
        if self.stats_dtype not in ("float32", "float64"):
            raise InvalidArgumentError(f"--stats-dtype {self.stats_dtype!r}: expected float32 or float64")
        if self.offload_activations is not None and not Path(self.offload_activations).is_dir():
            raise CheckpointError(f"--offload-activations {self.offload_activations}: not a directory")
        if self.dtype not in (None, "float32", "float64", "bfloat16", "float16"):
            raise InvalidArgumentError(f"--dtype {self.dtype!r}: expected float32, bfloat16, float16 or float64")
        if not isinstance(self.reconstruct, ReconstructSettings):
            raise InvalidArgumentError(f"reconstruct={self.reconstruct!r}: expected a pruneplug.ReconstructSettings")
        self.reconstruct.check()


@dataclass
class _Model:
    """A model directory opened for the stream: skeleton, batches, blocks and selected layers."""

    skel: Skeleton
    batches: list[dict]
    container: str
    container_module: Any
    blocks: list[Any]
    block_layers: list[list[Any]]  # per block, the selected Layers (module names)
    tail_layers: list[Any]
    selected: dict[str, int]  # module name -> number of weights
    device: Any
    compute_dtype: Any
    stats_dtype: Any
    texts: int = 0
    tokens: int = 0
    estimate: MemoryEstimate | None = None
    offsets: dict = field(default_factory=dict)  # checkpoint tensor name -> its offset in the output file
    misfits: dict = field(default_factory=dict)  # checkpoint tensor name -> why the pattern does not fit it


def _torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
            "float16": torch.float16}[name]


def _checkpoint_dtype(skel: Skeleton) -> str:
    counts: dict[str, int] = {}
    for ref in skel.checkpoint.tensors.values():
        counts[ref.dtype] = counts.get(ref.dtype, 0) + ref.numel
    main = max(counts, key=counts.get) if counts else "F32"
    return {"BF16": "bfloat16", "F16": "float16", "F64": "float64"}.get(main, "float32")


def _device(name: str) -> Any:
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise InvalidArgumentError(f"--device {name!r}: expected cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise InvalidArgumentError(f"--device {name!r}: expected cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError(f"--device {name!r}: torch sees no CUDA device here")
    return device


def open_model(model_dir: Path, texts: Any, options: StreamOptions, statistics: frozenset,
               pattern: str = "unstructured") -> _Model:
    """Step 1 of the module docstring, and the memory estimate."""
    from pruneplug.torch.blockwise import STATS_DTYPES
    from pruneplug.torch.calibrate import find_blocks, split_by_block
    from pruneplug.torch.hf import load_texts, load_tokenizer, text_batches
    from pruneplug.torch.layers import linear_layers, selected_parameters

    options.check()
    device = _device(options.device)
    skel = build_skeleton(model_dir)
    texts_list = load_texts(texts, options.samples) if not isinstance(texts, list) else texts[:options.samples]
    tokenizer = load_tokenizer(model_dir)
    batches = text_batches(tokenizer, texts_list, options.seq_len, options.batch_size, where=str(texts))
    params = selected_parameters(skel.model, options.include, options.exclude)
    if not params:
        raise InvalidArgumentError(f"{model_dir}: no tensor is selected (rule: {SELECTION_RULE})")
    layers = linear_layers(skel.model, list(params))
    not_linear = [n for n in params if n not in {layer.name for layer in layers}]
    if not_linear and statistics:
        raise CalibrationError(f"tensor {skel.names.get(not_linear[0], not_linear[0])!r} is not the weight of an "
                               "nn.Linear or Conv1D: calibration cannot collect its statistics (exclude it with "
                               "--exclude)")
    container, blocks = find_blocks(skel.model, layers)
    if not blocks:
        raise CalibrationError(f"{model_dir}: the model has no repeated blocks (no ModuleList of layers) that hold "
                               "the selected weights; the stream prunes block by block")
    misfits = {}
    for layer in list(layers):  # tensors the pattern does not fit are skipped, as on the checkpoint path
        why = pattern_misfit(pattern, tuple(layer.module.weight.shape), -1 if layer.input_axis == 1 else 0)
        if why is not None:
            misfits[skel.names[layer.name]] = why
            layers.remove(layer)
            params.pop(layer.name)
    if not layers:
        raise InvalidArgumentError(f"{model_dir}: --pattern {pattern} fits none of the selected tensors "
                                   f"({next(iter(misfits.items()), ('', ''))[0]}: {next(iter(misfits.values()), '')})")
    block_layers, tail = split_by_block(layers, container, len(blocks))
    compute = options.dtype or ("float32" if device.type == "cpu" else _checkpoint_dtype(skel))
    model = _Model(skel, batches, container, skel.model.get_submodule(container), blocks, block_layers, tail,
                   {n: int(p.numel()) for n, p in params.items()}, device, _torch_dtype(compute),
                   STATS_DTYPES[options.stats_dtype], len(texts_list),
                   sum(int(b["attention_mask"].sum()) for b in batches), misfits=misfits)
    model.estimate = _estimate(model, statistics, options)
    return model


def _estimate(m: _Model, statistics: frozenset, options: StreamOptions) -> MemoryEstimate:
    import torch

    prefix = m.container + "."
    outside = sum(p.numel() for n, p in m.skel.model.named_parameters()
                  if not n.startswith(prefix) and n not in HEAD_NAMES)
    block_sizes = [sum(p.numel() for p in b.parameters()) for b in m.blocks]
    largest = max(range(len(m.blocks)), key=lambda i: block_sizes[i])
    linears = m.block_layers[largest] or [None]
    ins = [int(l.in_features) for l in linears if l is not None] or [1]
    outs = [int(l.module.weight.numel() // l.in_features) for l in linears if l is not None] or [1]
    hidden = int(getattr(m.skel.config, "hidden_size", 0) or getattr(m.skel.config, "n_embd", 0) or max(ins))
    tokens = sum(int(b["input_ids"].numel()) for b in m.batches)
    batch_tokens = max(int(b["input_ids"].numel()) for b in m.batches)
    distinct = sorted(set(ins)) if "hessian" not in statistics else ins  # an upper bound without grouping
    return estimate(outside=outside, block=block_sizes[largest], largest_in=max(ins), largest_out=max(outs),
                    distinct_inputs=distinct, hidden=hidden, tokens=tokens,
                    compute_bytes=torch.empty((), dtype=m.compute_dtype).element_size(),
                    stats_bytes=torch.empty((), dtype=m.stats_dtype).element_size(),
                    hessian="hessian" in statistics, sequential=options.calibration_mode == "sequential",
                    offload=options.offload_activations is not None, batch_tokens=batch_tokens,
                    extra_per_token=call_bytes_per_token(options.seq_len, _head_dim(m.skel.config, hidden)),
                    reconstruct=options.reconstruct.enabled, block_out=sum(outs),
                    reconstruct_train=options.reconstruct.train,
                    adapter=options.reconstruct.rank * (sum(ins) + sum(outs)),
                    dense_stream=options.reconstruct.dense_stream(options.calibration_mode == "sequential"))


def _head_dim(config: Any, hidden: int) -> int:
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None) or 1
    return int(getattr(config, "head_dim", None) or hidden // heads)


def _outside(m: _Model, with_head: bool) -> Callable[[str], bool]:
    prefix = m.container + "."
    return lambda n: not n.startswith(prefix) and (with_head or n not in HEAD_NAMES)


def _capture(m: _Model, activations: Any) -> list[Any]:
    """Step 2: the first block's inputs of every batch (the layers before it loaded, then freed)."""
    import torch

    from pruneplug.torch.blockwise import capture_block_inputs

    m.skel.load_where(_outside(m, False), m.device, m.compute_dtype)
    try:
        with torch.no_grad():
            calls = capture_block_inputs(m.skel.model, m.blocks[0], m.batches, activations, device=m.device)
    finally:
        m.skel.unload_where(_outside(m, True))
    return calls


class _Progress:
    """The block bar: ``start`` once, ``step`` for the current step, ``advance`` per block."""

    def __init__(self, progress: Any, label: str, blocks: int) -> None:
        self.progress, self.label, self.blocks = progress or NullProgress(), label, blocks
        self.progress.start(label, blocks, blocks, unit="blocks")

    def step(self, what: str) -> None:
        self.progress.set_step(what)

    def advance(self) -> None:
        self.progress.update(1, 1)

    def close(self) -> None:
        self.progress.close()


# ---------------------------------------------------------------------------------------------
# OWL: one cheap pass over the dense blocks
# ---------------------------------------------------------------------------------------------
def owl_ratios(m: _Model, settings: PruneSettings, calls: Sequence[Any], activations: Any,
               progress: _Progress, spill: Callable[[Any], Path | None] = lambda key: None) -> dict[str, float]:
    """Outlier ratio of every block (Wanda scores of the dense block on dense inputs, one-pass
    statistics of input norms only)."""
    import torch

    from pruneplug.criteria.wanda import WandaImportance
    from pruneplug.torch.blockwise import Activations, collect, context_of, input_groups

    ratios: dict[str, float] = {}
    current = activations
    for index, block in enumerate(m.blocks):
        progress.step("OWL pass")
        prefix = f"{m.container}.{index}"
        m.skel.load_where(lambda n, p=prefix + ".": n.startswith(p), m.device, m.compute_dtype)
        try:
            layers = m.block_layers[index]
            nxt = Activations(spill(f"owl-{index + 1}"))
            with torch.no_grad():
                if layers:
                    groups = input_groups(block, layers, calls[0], current.get(0))
                    acc = collect(block, groups, calls, current, hessian=False, dtype=m.stats_dtype, outputs=nxt)
                    ctx = context_of(groups, acc, "OWL pass")
                    scores = {l.name: WandaImportance().compute(l.module.weight.detach(), ctx, layer=l.name).values
                              for l in layers if l.name in ctx}
                    ratios.update(unit_outlier_ratios(scores, {n: prefix for n in scores}, settings.owl_m))
                else:
                    from pruneplug.torch.blockwise import forward_all
                    forward_all(block, calls, current, nxt)
        finally:
            m.skel.unload(block)
        if current is not activations:
            current.discard()  # the dense pass's own boundaries; the captured inputs stay for the main pass
        current = nxt
        progress.advance()
    if current is not activations:
        current.discard()
    return ratios


# ---------------------------------------------------------------------------------------------
# the output: the input's files, copied header and untouched tensors first, pruned slots later
# ---------------------------------------------------------------------------------------------
def output_layout(m: _Model, metadata: dict[str, str]) -> tuple[dict[Path, bytes], dict[str, int]]:
    """The output files' headers (the input's tensors in the input's order, the input's metadata plus
    ``metadata``) and every tensor's absolute offset in its output file. A function of the input
    and the settings only, so a resumed run finds the same slots."""
    headers: dict[Path, bytes] = {}
    offsets: dict[str, int] = {}
    for st in m.skel.checkpoint.files:
        data_start = 8 + st.header_size
        header: dict[str, Any] = {"__metadata__": {**st.metadata, **metadata}}
        for ref in st.tensors:
            rel = ref.offset - data_start
            header[ref.name] = {"dtype": ref.dtype, "shape": list(ref.shape), "data_offsets": [rel, rel + ref.nbytes]}
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)  # 8-byte alignment, as safetensors writes it
        headers[Path(st.path.name)] = len(raw).to_bytes(8, "little") + raw
        for ref in st.tensors:
            offsets[ref.name] = 8 + len(raw) + ref.offset - data_start
    return headers, offsets


def _prepare_output(m: _Model, out: Path, selected_ckpt: set[str], headers: dict[Path, bytes],
                    offsets: dict[str, int]) -> None:
    """Create the output's safetensors files in ``out``: the new header, and every tensor that will
    not be rewritten copied from the input as stored."""
    ckpt = m.skel.checkpoint
    for st in ckpt.files:
        header = headers[Path(st.path.name)]
        src_fd = os.open(st.path, os.O_RDONLY)
        fd = os.open(out / st.path.name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 & ~current_umask())
        try:
            data = os.fstat(src_fd).st_size - (8 + st.header_size)
            os.ftruncate(fd, len(header) + data)
            pwrite_all(fd, header, 0)
            for ref in st.tensors:
                if ref.name not in selected_ckpt and ref.nbytes:
                    copy_range(src_fd, ref.offset, fd, offsets[ref.name], ref.nbytes)
        finally:
            os.close(fd)
            os.close(src_fd)
    if ckpt.kind == "sharded":
        shutil.copy2(ckpt.path / INDEX_NAME, out / INDEX_NAME)


def _write_tensor(m: _Model, out: Path, ckpt_name: str, weight: Any) -> np.ndarray:
    """Write ``weight`` (a torch tensor) into its slot of the output in the checkpoint's dtype;
    returns what was written (NumPy). A value that does not fit the dtype (float16 overflow) is
    an error naming the tensor."""
    import torch

    from pruneplug.checkpoint.formats import numpy_dtype

    ref = m.skel.checkpoint.tensors[ckpt_name]
    dtype = numpy_dtype(ref.dtype)
    t = weight.detach().to("cpu")
    if dtype.name == "bfloat16":
        stored = t.to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(dtype)
    else:
        stored = t.to(_torch_dtype(dtype.name)).contiguous().numpy()
    if tuple(stored.shape) != tuple(ref.shape):
        raise CheckpointError(f"internal error: tensor {ckpt_name!r} has shape {list(stored.shape)}, the slot "
                              f"{list(ref.shape)}")
    finite = np.isfinite(stored.astype(np.float32) if dtype.name == "bfloat16" else stored)
    if not finite.all():
        bad = int((~finite).sum())
        raise NonFiniteError(f"tensor {ckpt_name!r}: {bad} pruned weight(s) are not finite in {ref.dtype} (an "
                             "update overflowed the checkpoint's dtype); nothing was written", count=bad,
                             first_index=int(np.flatnonzero(~finite.reshape(-1))[0]))
    fd = os.open(out / ref.file.name, os.O_WRONLY)
    try:
        pwrite_all(fd, memoryview(np.ascontiguousarray(stored).reshape(-1).view(np.uint8)), m.offsets[ckpt_name])
    finally:
        os.close(fd)
    return stored


def _sync_output(out: Path) -> None:
    for path in out.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _copy_other_files(model_dir: Path, out: Path, skip: set[str]) -> None:
    """Every other file of the model directory (config, tokenizer), as it is."""
    for path in sorted(model_dir.iterdir()):
        if path.name in skip or path.name.startswith("."):
            continue
        if path.is_file():
            shutil.copy2(path, out / path.name)
        elif path.is_dir():
            shutil.copytree(path, out / path.name, symlinks=True)


# ---------------------------------------------------------------------------------------------
# the one-step prune
# ---------------------------------------------------------------------------------------------
@dataclass
class StreamResult:
    """What :func:`prune_model_dir` did: the report and the memory estimate it printed."""

    report: PruneReport
    estimate: MemoryEstimate
    blocks: int
    resumed_from: int = 0
    seconds_per_block: list = field(default_factory=list)


def check_paths(model_dir: Path, out: Path, texts: Any, report: Path | None,
                offload: Path | None = None) -> None:
    """The path rules of ``checkpoint/paths.py`` over every input (the model directory, the texts)
    and every output (``-o``, ``--report``, ``--offload-activations``)."""
    places = [Place("MODEL_DIR", model_dir, True), Place("-o", out, True)]
    if isinstance(texts, (str, os.PathLike)):
        places.append(Place("--calibration", Path(texts), False))
    if report is not None:
        places.append(Place("--report", Path(report), False))
    if offload is not None:
        places.append(Place("--offload-activations", Path(offload), True))
    check_distinct(places)


def prune_model_dir(model_dir: str | os.PathLike, out: str | os.PathLike, settings: PruneSettings, texts: Any, *,
                    options: StreamOptions | None = None, progress: Any = None,
                    report: str | os.PathLike | None = None,
                    on_estimate: Callable[[MemoryEstimate], None] | None = None) -> StreamResult:
    """Prune the model directory ``model_dir`` into the new directory ``out`` block by block (the
    module docstring), calibrated on ``texts`` (a text file, or a list of strings).

    Example::

        settings = pp.PruneSettings("sparsegpt", sparsity=0.5)
        result = prune_model_dir("SmolLM2-135M", "SmolLM2-50", settings, "texts.txt")
        print(result.report.format_table())
    """
    options = options or StreamOptions()
    model_dir, out = Path(model_dir), Path(out)
    if out.exists():
        raise CheckpointError(f"-o {out}: already exists (the one-step form writes a new model directory)")
    if not out.parent.is_dir():
        raise CheckpointError(f"-o {out}: the directory {str(out.parent)!r} does not exist")
    check_paths(model_dir, out, texts, Path(report) if report else None, options.offload_activations)
    settings.check_calibration(True)
    options = dataclasses.replace(options, calibration_mode=settings.calibration_mode(options.calibration_mode))
    options.reconstruct.check_mode(options.calibration_mode)
    m = open_model(model_dir, texts, options, settings.statistics, settings.pattern)
    if on_estimate is not None:
        on_estimate(m.estimate)
    arguments = journals.describe({
        "settings": settings.describe(), "samples": options.samples, "seq_len": options.seq_len,
        "batch_size": options.batch_size, "calibration_mode": options.calibration_mode,
        "dtype": str(m.compute_dtype), "stats_dtype": options.stats_dtype, "device": m.device.type,
        "include": list(options.include or []), "exclude": list(options.exclude or []),
        "texts": str(texts) if not isinstance(texts, list) else texts,
        **_reconstruct_arguments(options)})
    inputs = [st.path for st in m.skel.checkpoint.files] + ([Path(texts)] if not isinstance(texts, list) else [])
    journal = journals.open_journal(out, journals.fingerprint(arguments, inputs), arguments, options.resume)
    started, seconds_before = time.perf_counter(), journal.seconds
    try:
        result = _run_prune(m, journal, settings, options, progress)
    except BaseException as exc:
        if journal.done == 0 and not options.resume:
            journal.remove()  # nothing worth resuming: leave nothing behind
            raise
        if isinstance(exc, Exception):  # finished blocks are kept: say how to continue
            hint = (f"; {journal.done} of {len(m.blocks)} blocks are finished in {journal.directory}: fix the cause "
                    "and rerun with --resume to continue, or remove that directory")
            if isinstance(exc, PrunePlugError):
                exc.args = (f"{exc.args[0] if exc.args else exc}{hint}",) + tuple(exc.args[1:])
                raise
            raise CalibrationError(f"{type(exc).__name__}: {exc}{hint}") from exc
        raise
    _copy_other_files(model_dir, journal.out, {st.path.name for st in m.skel.checkpoint.files} | {INDEX_NAME})
    _sync_output(journal.out)
    os.rename(journal.out, out)
    journal.remove()
    elapsed = seconds_before + time.perf_counter() - started
    result.report.output = str(out)
    result.report.seconds = elapsed
    if report is not None:
        _write_report(Path(report), result.report)
    return result


def _reconstruct_arguments(options: StreamOptions) -> dict:
    """The reconstruction settings, for the fingerprint and the output's metadata; nothing when it
    is off, so that a run without it gives the bytes it gave before reconstruction existed."""
    return {"reconstruct": options.reconstruct.describe()} if options.reconstruct.enabled else {}


def _run_prune(m: _Model, journal: journals.Journal, settings: PruneSettings, options: StreamOptions,
               progress: Any) -> StreamResult:
    """Steps 2-5 of the module docstring, into the journal's staging area."""
    run_started, seconds_before = time.perf_counter(), journal.seconds
    names = m.skel.names
    selected_ckpt = {names[n] for n in m.selected}
    resumed_from = journal.done
    headers, m.offsets = output_layout(m, settings_metadata(
        {**settings.describe(), "calibration": options.calibration_mode, "stats_dtype": options.stats_dtype,
         "samples": m.texts, "seq_len": options.seq_len, **_reconstruct_arguments(options)},
        sorted(selected_ckpt), None))
    if journal.done == 0:
        _prepare_output(m, journal.out, selected_ckpt, headers, m.offsets)
    offload = options.offload_activations
    bar = _Progress(progress, "pruning blocks", len(m.blocks) + (len(m.blocks) if settings.owl and
                                                                    journal.owl_counts is None else 0))
    bar.step("capturing inputs")
    spill_root = _spill_root(offload)
    try:
        return _run_blocks(m, journal, settings, options, bar, spill_root, seconds_before, run_started,
                           selected_ckpt, resumed_from)
    finally:
        if spill_root is not None:
            shutil.rmtree(spill_root, ignore_errors=True)


def _run_blocks(m: _Model, journal: journals.Journal, settings: PruneSettings, options: StreamOptions, bar: _Progress,
                spill_root: Path | None, seconds_before: float, run_started: float, selected_ckpt: set[str],
                resumed_from: int) -> StreamResult:
    import torch

    from pruneplug.torch.blockwise import Activations, calibrate_and_prune_block, context_of, tail_pass

    names = m.skel.names
    spill = (lambda k: _spill_dir(spill_root, k)) if spill_root is not None else (lambda k: None)
    first = Activations(spill("capture"))
    with torch.no_grad():
        calls = _capture(m, first)
    if settings.owl and journal.owl_counts is None:
        ratios = owl_ratios(m, settings, calls, first, bar, spill)
        units = {n: n.split(m.container + ".", 1)[1].split(".", 1)[0] for n in m.selected
                 if n.startswith(m.container + ".")}
        units = {n: f"{m.container}.{u}" for n, u in units.items()}
        plan = settings.plan(m.selected, ratios, units)
        journal.owl_counts = {n: p.count for n, p in plan.items() if p.count is not None}
        journal.save()
    plans = _plans(settings, m.selected, journal.owl_counts)
    hessian = "hessian" in settings.statistics
    sequential = options.calibration_mode == "sequential"
    with_dense = options.reconstruct.dense_stream(sequential)  # target="dense": the dense hidden states too
    if journal.done:
        first.discard()
        current = _reload(journal.hidden(journal.done), Activations(spill("resume")), len(calls), m)
        dense = _reload(journal.dense_hidden(journal.done), Activations(spill("resume-dense")), len(calls),
                        m) if with_dense else None
    else:
        current = first
        dense = first if with_dense else None  # the same hidden states at the first block
    block_seconds: list[float] = []
    for _ in range(journal.done):
        bar.advance()
    for index in range(journal.done, len(m.blocks)):
        t0 = time.perf_counter()
        block = m.blocks[index]
        prefix = f"{m.container}.{index}."
        m.skel.load_where(lambda n, p=prefix: n.startswith(p), m.device, m.compute_dtype)
        outputs = Activations(spill(index + 1))
        dense_outputs = Activations(spill(f"dense-{index + 1}")) if with_dense else None
        rows_before = {l.name: _zeros(l.module.weight) for l in m.block_layers[index]}
        try:
            with torch.no_grad():
                losses = calibrate_and_prune_block(
                    block, m.block_layers[index], calls, current, outputs,
                    lambda layers, ctx: _prune_layers(m, journal, layers, ctx, settings, plans, rows_before),
                    hessian=hessian, sequential=sequential, dtype=m.stats_dtype, source="calibration",
                    step=bar.step, reconstruct=options.reconstruct, index=index,
                    rewrite=lambda layers, params: _rewrite(m, journal, layers, params, prefix, rows_before),
                    dense=dense, dense_outputs=dense_outputs)
            if losses is not None:
                journal.reconstruction_losses[f"{m.container}.{index}"] = losses
            bar.step("writing")
            for layer in m.block_layers[index]:
                if names[layer.name] not in journal.rows:
                    raise CalibrationError(f"internal error: tensor {names[layer.name]!r} was not pruned")
        finally:
            m.skel.unload(block)
        _sync_output(journal.out)
        _save_hidden(journal.hidden(index + 1), outputs, len(calls))
        if with_dense:
            _save_hidden(journal.dense_hidden(index + 1), dense_outputs, len(calls))
        journal.done = index + 1
        journal.seconds = seconds_before + time.perf_counter() - run_started
        if outputs.from_tuples is not None:
            journal.tuple_outputs = outputs.from_tuples
        journal.save()
        journal.drop_hidden_except(index + 1)
        if dense is not None and dense is not current:
            dense.discard()
        current.discard()
        current, dense = outputs, dense_outputs
        block_seconds.append(time.perf_counter() - t0)
        bar.advance()
    if m.tail_layers:
        bar.step("tail layers")
        m.skel.load_where(_outside(m, True), m.device, m.compute_dtype)
        try:
            with torch.no_grad():
                acc = tail_pass(m.skel.model, m.container_module, current, m.batches, m.tail_layers,
                                hessian=hessian, dtype=m.stats_dtype, tuple_outputs=bool(journal.tuple_outputs),
                                device=m.device)
                groups = [[l] for l in m.tail_layers]
                ctx = context_of(groups, acc, "calibration")
                rows_before = {l.name: _zeros(l.module.weight) for l in m.tail_layers}
                _prune_layers(m, journal, m.tail_layers, ctx, settings, plans, rows_before)
        finally:
            m.skel.unload_where(_outside(m, True))
        _sync_output(journal.out)
    bar.close()
    report = _report(m, journal, settings, options)
    return StreamResult(report, m.estimate, len(m.blocks), resumed_from, block_seconds)


def _spill_root(offload: Path | None) -> Path | None:
    """This run's own directory inside ``--offload-activations DIR`` (removed at the end)."""
    if offload is None:
        return None
    root = Path(offload) / f".pruneplug-activations-{os.getpid()}"
    root.mkdir()
    return root


def _spill_dir(root: Path, key: Any) -> Path:
    directory = root / str(key)
    directory.mkdir(exist_ok=True)
    return directory


def _plans(settings: PruneSettings, sizes: dict[str, int], owl_counts: dict | None) -> dict[str, TensorPlan]:
    """Each selected tensor's plan; with OWL the counts of the OWL pass (tensors outside the blocks,
    which are no OWL unit, keep the uniform sparsity)."""
    if not settings.owl:
        return settings.plan(sizes)
    plans = {n: TensorPlan(settings.sparsity, None, settings.pattern, settings.groups) for n in sizes}
    plans.update({n: TensorPlan(None, int(k), settings.pattern, settings.groups) for n, k in (owl_counts or {}).items()})
    return plans


def _zeros(weight: Any) -> int:
    return int((weight.detach() == 0).sum())


def _reload(directory: Path, activations: Any, count: int, m: _Model) -> Any:
    """The hidden states a resumed run continues from (one ``.npy`` per batch in ``directory``)."""
    for i in range(count):
        activations.put(i, _load_hidden(directory, i, m.compute_dtype).to(m.device))
    return activations


def _prune_layers(m: _Model, journal: journals.Journal, layers: Sequence[Any], ctx: CalibrationContext,
                  settings: PruneSettings, plans: dict[str, TensorPlan], zeros_before: dict[str, int]) -> None:
    """Prune each layer with its plan, round it to the checkpoint's dtype, write it, record its row."""
    names = m.skel.names
    for layer in layers:
        weight = layer.module.weight
        ckpt_name = names[layer.name]
        plan = plans[layer.name]
        method = settings.criterion
        stats = ctx.get_stats(layer.name)
        reason = None
        if stats is None and settings.statistics:
            # no calibration token reached this layer (an MoE expert nobody was routed to)
            method, reason = ("l2" if "hessian" in settings.statistics else "l1"), "no calibration tokens: magnitude"
        calibration = None if stats is None else CalibrationContext({ckpt_name: stats}, source="calibration")
        try:
            result = prune_scored(weight.data, method, calibration=calibration, layer=ckpt_name, **plan.kwargs())
        except Exception as exc:
            if hasattr(exc, "args") and exc.args and ckpt_name not in str(exc.args[0]):
                exc.args = (f"tensor {ckpt_name!r}: {exc.args[0]}",) + exc.args[1:]
            raise
        _store(m, journal, layer, zeros_before, reason)
        if result is not None:
            journal.metrics[ckpt_name] = dict(result.metrics)


def _store(m: _Model, journal: journals.Journal, layer: Any, zeros_before: dict[str, int],
           reason: str | None = None) -> None:
    """Write a pruned (or re-fitted) layer's weight in the checkpoint's dtype, round the weight in
    memory to what was written (the next block's inputs come from the weights as written) and
    record its report row (a rewrite keeps the row's reason)."""
    import torch

    ckpt_name = m.skel.names[layer.name]
    weight = layer.module.weight
    stored = _write_tensor(m, journal.out, ckpt_name, weight)
    with torch.no_grad():
        weight.copy_(_from_stored(stored, weight))
    zeros_after = int(stored.size - np.count_nonzero(stored))
    ref = m.skel.checkpoint.tensors[ckpt_name]
    reason = reason if ckpt_name not in journal.rows else journal.rows[ckpt_name]["reason"]
    row = TensorReport(ckpt_name, list(ref.shape), ref.dtype, ref.numel, "pruned", reason,
                       zeros_before[layer.name], zeros_after, max(zeros_after - zeros_before[layer.name], 0))
    journal.rows[ckpt_name] = row.to_dict()


def _rewrite(m: _Model, journal: journals.Journal, layers: Sequence[Any], params: Sequence[tuple[str, Any]],
             prefix: str, zeros_before: dict[str, int]) -> None:
    """Write what a block's re-fit changed: its pruned layers (with their report rows), or the
    norms and biases (``(name inside the block, parameter)``, recorded as re-fitted), each rounded
    to the checkpoint's dtype in memory too."""
    import torch

    for layer in layers:
        _store(m, journal, layer, zeros_before)
    for name, param in params:
        ckpt_name = m.skel.names.get(prefix + name) or m.skel.names.get(m.skel.tied.get(prefix + name, ""))
        if ckpt_name is None:
            raise CheckpointError(f"internal error: the re-fitted parameter {prefix + name!r} has no checkpoint tensor")
        stored = _write_tensor(m, journal.out, ckpt_name, param)
        with torch.no_grad():
            param.copy_(_from_stored(stored, param))
        if ckpt_name not in journal.refitted:
            journal.refitted.append(ckpt_name)


def _from_stored(stored: np.ndarray, like: Any) -> Any:
    from pruneplug.stream.skeleton import to_torch

    return to_torch(stored).to(device=like.device, dtype=like.dtype)


def _save_hidden(directory: Path, activations: Any, count: int) -> None:
    from pruneplug.torch.blockwise import save_tensor

    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for i in range(count):
        save_tensor(tmp / f"{i:06d}.npy", activations.get(i))
    shutil.rmtree(directory, ignore_errors=True)
    os.rename(tmp, directory)


def _load_hidden(directory: Path, index: int, dtype: Any) -> Any:
    from pruneplug.torch.blockwise import load_tensor

    return load_tensor(directory / f"{index:06d}.npy", dtype)


def _report(m: _Model, journal: journals.Journal, settings: PruneSettings, options: StreamOptions) -> PruneReport:
    rows = {name: TensorReport(**{k: v for k, v in row.items() if k not in ("sparsity_before", "sparsity_after")})
            for name, row in journal.rows.items()}
    for name, ref in m.skel.checkpoint.tensors.items():
        if name not in rows:
            zeros = array_zeros(ref.array()) if ref.prunable else None
            status, why = ("skipped", m.misfits[name]) if name in m.misfits else ("kept", "not selected")
            if name in journal.refitted:
                why = f"not selected; re-fitted by reconstruction (train={options.reconstruct.train!r})"
            rows[name] = TensorReport(name, list(ref.shape), ref.dtype, ref.numel, status, why, zeros, zeros)
    settings_dict = {**settings.describe(), "calibration": options.calibration_mode, "samples": m.texts,
                     "seq_len": options.seq_len, "tokens": m.tokens, "device": str(m.device),
                     "dtype": str(m.compute_dtype).replace("torch.", ""), "stats_dtype": options.stats_dtype,
                     "blocks": len(m.blocks), "include": list(options.include or []),
                     "exclude": list(options.exclude or [])}
    if journal.owl_counts:
        settings_dict["layer_ratios"] = {**settings_dict.get("layer_ratios", {}), "counts": journal.owl_counts}
    if journal.metrics:
        settings_dict["reconstruction"] = journal.metrics
    if options.reconstruct.enabled:
        settings_dict["reconstruct"] = options.reconstruct.describe()
        settings_dict["reconstruction_losses"] = journal.reconstruction_losses
    return PruneReport(input=str(m.skel.model_dir), output=None, settings=settings_dict,
                       selection_rule=SELECTION_RULE if not options.include else "--include/--exclude regexes",
                       tensors=sorted(rows.values(), key=lambda r: r.name), seconds=0.0)


def _write_report(path: Path, report: PruneReport) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# pruneplug calibrate: the statistics file, streamed
# ---------------------------------------------------------------------------------------------
def calibrate_model_dir(model_dir: str | os.PathLike, texts: Any, output: str | os.PathLike, *, hessian: bool = False,
                        options: StreamOptions | None = None, progress: Any = None,
                        on_estimate: Callable[[MemoryEstimate], None] | None = None) -> dict:
    """Dense-model (one-pass) statistics of every selected layer of ``model_dir``, block by block,
    written to the statistics file ``output`` (format v2: one entry per distinct input) as they are
    collected. Returns a summary (layers, entries, tokens, seconds)."""
    import torch

    from pruneplug.torch.blockwise import Activations, collect, input_groups, tail_pass

    started = time.perf_counter()
    options = options or StreamOptions()
    options.calibration_mode = "one-pass"
    model_dir, output = Path(model_dir), Path(output)
    if not output.parent.is_dir():
        raise CheckpointError(f"-o {output}: the directory {str(output.parent)!r} does not exist")
    if output.is_dir():
        raise CheckpointError(f"-o {output}: is a directory; expected the statistics file to write")
    check_distinct([Place("MODEL_DIR", model_dir, True), Place("-o", output, False)]
                   + ([Place("TEXTS", Path(texts), False)] if isinstance(texts, (str, os.PathLike)) else []))
    statistics = frozenset({"input_norms", "hessian"} if hessian else {"input_norms"})
    m = open_model(model_dir, texts, options, statistics)
    if on_estimate is not None:
        on_estimate(m.estimate)
    names = m.skel.names
    bar = _Progress(progress, "calibrating blocks", len(m.blocks))
    bar.step("capturing inputs")
    layers_seen = entries = 0
    with StatisticsWriter(output, {"model": str(model_dir), "texts": str(texts), "samples": str(m.texts),
                                   "seq_len": str(options.seq_len), "tokens": str(m.tokens), "mode": "one-pass",
                                   "stats_dtype": options.stats_dtype}) as writer:
        with torch.no_grad():
            current = Activations()
            calls = _capture(m, current)
            for index, block in enumerate(m.blocks):
                bar.step("calibrating")
                m.skel.load_where(lambda n, p=f"{m.container}.{index}.": n.startswith(p), m.device, m.compute_dtype)
                try:
                    nxt = Activations()
                    layers = m.block_layers[index]
                    if layers:
                        groups = input_groups(block, layers, calls[0], current.get(0))
                        acc = collect(block, groups, calls, current, hessian=hessian, dtype=m.stats_dtype, outputs=nxt)
                        entries += _write_groups(writer, groups, acc, names)
                        layers_seen += len(layers)
                        del acc
                    else:
                        from pruneplug.torch.blockwise import forward_all
                        forward_all(block, calls, current, nxt)
                finally:
                    m.skel.unload(block)
                current = nxt
                bar.advance()
            if m.tail_layers:
                m.skel.load_where(_outside(m, True), m.device, m.compute_dtype)
                try:
                    acc = tail_pass(m.skel.model, m.container_module, current, m.batches, m.tail_layers,
                                    hessian=hessian, dtype=m.stats_dtype, tuple_outputs=bool(current.from_tuples),
                                    device=m.device)
                    entries += _write_groups(writer, [[l] for l in m.tail_layers], acc, names)
                    layers_seen += len(m.tail_layers)
                finally:
                    m.skel.unload_where(_outside(m, True))
        bar.close()
        writer.metadata["seconds"] = f"{time.perf_counter() - started:.3f}"
    return {"layers": layers_seen, "entries": entries, "tokens": m.tokens, "texts": m.texts,
            "seconds": time.perf_counter() - started, "estimate": m.estimate}


def _write_groups(writer: Any, groups: Sequence[Sequence[Any]], accumulators: Sequence[Any], names: dict) -> int:
    written = 0
    for group, acc in zip(groups, accumulators):
        if acc.count == 0:
            raise CalibrationError(f"calibration: layer {names[group[0].name]!r} saw no tokens (it is never called in "
                                   "the forward pass, or every token was padding)")
        stats = acc.stats(group[0].input_axis)
        writer.add([names[l.name] for l in group], stats, [l.input_axis for l in group])
        written += 1
    return written

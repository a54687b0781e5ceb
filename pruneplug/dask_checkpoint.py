"""Prune a sharded checkpoint on a Dask cluster: ``pruneplug prune IN_DIR -o OUT_DIR --dask ADDRESS``
(or ``--workers N`` for a local cluster of N processes).

The client reads only the headers. Every worker task reads and writes *whole shards* of the
directory, which must be on a file system every worker sees (the same path everywhere):

1. the client decides each tensor's fate exactly as :func:`pruneplug.prune_checkpoint` does
   (selection rule, ``--include``/``--exclude``, patterns that do not fit);
2. global scope only: a :class:`pruneplug.selection.ExactSelection` whose histograms are computed
   per shard on the workers (the backends' ``key_histogram`` hook, chunk by chunk) and summed in a
   tree of Dask tasks; then one more task per shard counts each tensor's keys below and at the
   threshold, and the client hands out the ties in tensor order (sorted names), so every tensor gets
   its exact count and its share of the ties. Only histograms (512 KiB per shard and pass) and
   counts move, never weights;
3. one task per shard prunes its tensors and writes the shard into a hidden staging directory next
   to the output, each tensor through the single-process command's own per-tensor step
   (:class:`pruneplug.checkpoint.prune.TensorPruner`), so the bytes are the same: same header,
   metadata and data;
4. the client writes the index and copies the input's other files into the staging directory, then
   renames it to the output: the commit is one ``rename``.

Any failure (a task's error, a worker that dies or leaves during the run, even if Dask retried its
tasks elsewhere) removes the staging directory: nothing is committed. Supported: sharded safetensors
directories, ``--format dense``, every pattern and scope; ``--masks-out``, ``--report``,
``--dry-run``, ``--in-place`` and compressed formats need the single-process command.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from pruneplug.arrays import dtype_name
from pruneplug.checkpoint import (
    SELECTION_RULE,
    GlobalPlan,
    PruneReport,
    SafetensorsWriter,
    TensorReport,
    open_checkpoint,
)
from pruneplug.checkpoint.global_select import Shares, histogram, plan_capped, shares_of, tally, tensor_source
from pruneplug.checkpoint.outputs import finish_directory, settings_metadata
from pruneplug.checkpoint.prune import HowToPrune, TensorPruner, TensorTask, apply_plan, check_arguments, decide_tasks
from pruneplug.checkpoint.writers import current_umask, fsync_path
from pruneplug.errors import CheckpointError, InvalidArgumentError
from pruneplug.layer_ratios import check_owl_parameters, layer_caps, resolve_max_layer_sparsity
from pruneplug.selection import ExactSelection
from pruneplug.validation import check_method, count_to_prune


def prune_checkpoint_dask(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    sparsity: float | None = None,
    pattern: str = "unstructured",
    scope: str = "layer",
    method: str = "l1",
    axis: int = -1,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    backend: str | None = None,
    strict: bool = False,
    scheduler: str | None = None,
    workers: int | None = None,
    max_layer_sparsity: float | None = None,
    client: Any = None,
    _fault: tuple[str, str] | None = None,
) -> PruneReport:
    """:func:`pruneplug.prune_checkpoint` of a sharded directory on a Dask cluster (see the module
    docstring); the output directory is byte-identical to the single-process one.

    The cluster is ``client`` (a ``distributed.Client``), else the scheduler at ``scheduler``
    (``"tcp://host:8786"``), else a local cluster of ``workers`` processes started for the call.

    Example::

        from pruneplug.dask_checkpoint import prune_checkpoint_dask
        report = prune_checkpoint_dask("llama-dir", "llama-pruned", sparsity=0.5, scope="global",
                                       scheduler="tcp://10.0.0.1:8786")
    """
    started = time.perf_counter()
    check_arguments(sparsity, pattern, scope, method, axis, "dense")
    cap = resolve_max_layer_sparsity(max_layer_sparsity, scope, sparsity)
    if workers is not None:  # before any work, and even beside a scheduler address: never "no cluster"
        _check_workers_count(workers)
    src_path = Path(src)
    ckpt = open_checkpoint(src_path)
    if ckpt.kind != "sharded":
        raise InvalidArgumentError(
            f"{src_path}: pruning on a Dask cluster takes a sharded directory (model.safetensors.index.json); "
            "prune a single file without --dask/--workers")
    out = _check_output(src_path, Path(dst))
    names = sorted(ckpt.tensors)
    tasks = decide_tasks(ckpt, names, include, exclude, pattern, axis, strict)
    selected = [n for n in names if tasks[n].status == "pruned"]
    if not selected:
        raise CheckpointError(f"{src_path}: no tensor selected for pruning ({len(names)} tensors; rule: {SELECTION_RULE})")
    settings = {
        "sparsity": sparsity, "pattern": pattern, "scope": scope, "method": method,
        "axis": axis, "format": "dense", "include": list(include or []), "exclude": list(exclude or []),
        "backend": backend or "auto", "strict": strict,
    }
    if scope == "global":
        settings["max_layer_sparsity"] = cap  # as the single-process command records it
    with _client(client, scheduler, workers) as dask_client:
        before = set(dask_client.scheduler_info()["workers"])
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        try:
            plan = None
            if scope == "global":
                plan = _global_plan(dask_client, src_path, ckpt, selected, sparsity, method, cap)
                apply_plan(tasks, selected, plan)
            # NumPy arrays on the workers (xp=None), l1/l2 only: the options prune_from_args lets through
            how = HowToPrune(pattern, sparsity, method, axis, "dense", backend, ckpt.kind, plan=plan, groups="layer")
            metadata = settings_metadata(settings, selected, plan)
            futures = []
            for f in ckpt.files:
                fates = {r.name: (tasks[r.name].status, tasks[r.name].reason, tasks[r.name].k, tasks[r.name].quota)
                         for r in f.tensors}
                futures.append(dask_client.submit(_prune_shard, str(src_path), f.path.name, str(staging / f.path.name),
                                                  fates, how, metadata, _fault, pure=False))
            rows = {row.name: row for shard_rows in dask_client.gather(futures) for row in shard_rows}
            _check_workers(dask_client, before)
            finish_directory(ckpt, [(staging / f.path.name,) for f in ckpt.files], rows, "dense", settings, plan)
            _commit(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return PruneReport(
        input=str(src_path), output=str(out), settings=settings,
        selection_rule=SELECTION_RULE if not include else "--include/--exclude regexes",
        tensors=[rows[n] for n in names], threshold=plan.threshold if plan else None,
        passes=plan.passes if plan else 0, dry_run=False, seconds=time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------
# the client's part
# ---------------------------------------------------------------------------------------------
def _check_output(src: Path, out: Path) -> Path:
    if out.resolve() == src.resolve():
        raise CheckpointError(f"the output {out} is the input; --in-place needs the single-process command")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"the output directory {out} exists and is not empty; remove it or choose another")
    if not out.parent.is_dir():
        raise CheckpointError(f"cannot write {out}: directory {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise CheckpointError(f"cannot write to directory {out.parent}: permission denied")
    return out


@contextlib.contextmanager
def _client(client: Any, scheduler: str | None, workers: int | None) -> Iterator[Any]:
    if client is not None:
        yield client
        return
    from distributed import Client, LocalCluster

    if scheduler is not None:
        with Client(scheduler) as connected:
            yield connected
        return
    _check_workers_count(workers)
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as local:
        yield local


def _check_workers_count(workers: Any) -> None:
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise InvalidArgumentError(f"workers={workers!r} (--workers) must be an integer >= 1 (or give a scheduler "
                                   "address)")


def _check_workers(client: Any, before: set[str]) -> None:
    """Fail the run when a worker left while it ran (it died, or was restarted by its nanny), even
    if Dask retried its tasks elsewhere: a half-written shard is never trusted."""
    gone = before - set(client.scheduler_info()["workers"])
    if gone:
        raise CheckpointError(f"worker(s) {sorted(gone)} left the cluster during the run; nothing was written")


def _commit(staging: Path, out: Path) -> None:
    """The directory's mode as the single-process command leaves it (files keep the writer's), its
    entries durable, then one rename."""
    os.chmod(staging, 0o777 & ~current_umask())
    fsync_path(staging)
    try:
        os.replace(staging, out)  # onto a missing or empty directory: one rename
    except OSError as exc:
        raise CheckpointError(f"cannot move the output into place: {exc.strerror or exc}") from exc


def _tree_sum(client: Any, futures: list) -> Any:
    while len(futures) > 1:
        futures = [client.submit(np.add, futures[i], futures[i + 1], pure=False) if i + 1 < len(futures) else futures[i]
                   for i in range(0, len(futures), 2)]
    return futures[0].result()


def _global_plan(client: Any, src: Path, ckpt: Any, selected: list[str], sparsity: float, method: str,
                 cap: float = 1.0) -> GlobalPlan:
    """Exact per-tensor counts and tie shares: the selection's histograms from the shards, ties in
    tensor order; where a layer cap binds, the water-filling of
    :func:`~pruneplug.checkpoint.global_select.plan_capped` runs the selection again over the
    tensors below their caps (as the single-process command)."""
    def select(active: Sequence[int], k: int) -> tuple[ExactSelection, Shares]:
        return _select(client, src, ckpt, [selected[i] for i in active], k, method)

    sizes = [ckpt.tensors[n].numel for n in selected]
    return plan_capped(count_to_prune(sparsity, sum(sizes)), layer_caps(sizes, cap), select)


def _select(client: Any, src: Path, ckpt: Any, names: list[str], k: int, method: str) -> tuple[ExactSelection, Shares]:
    """The exact selection of ``k`` over ``names`` and each one's count and share of the ties."""
    transform = check_method(method)
    wanted = set(names)
    per_file = [(f.path.name, [r.name for r in f.tensors if r.name in wanted]) for f in ckpt.files]
    per_file = [(name, tensors) for name, tensors in per_file if tensors]
    total = sum(ckpt.tensors[n].numel for n in names)
    dtypes = {dtype_name(ckpt.tensors[n].array()) for n in names}
    selection = ExactSelection(k, total, dtypes, transform)
    while (request := selection.next_request()) is not None:
        futures = [client.submit(_shard_histogram, str(src), file, tensors, method, request, pure=False)
                   for file, tensors in per_file]
        selection.update(_tree_sum(client, futures))
    counted = client.gather([client.submit(_shard_counts, str(src), file, tensors, method, selection, pure=False)
                             for file, tensors in per_file])
    less_equal = {name: pair for shard in counted for name, pair in shard}
    return selection, shares_of(selection, [less_equal[n] for n in names])


# ---------------------------------------------------------------------------------------------
# the workers' part: whole shards
# ---------------------------------------------------------------------------------------------
def _refs(src: str, file: str) -> dict[str, Any]:
    ckpt = open_checkpoint(Path(src))
    shard = next(f for f in ckpt.files if f.path.name == file)
    return {r.name: r for r in shard.tensors}


def _shard_histogram(src: str, file: str, tensors: list[str], method: str, request: Any) -> np.ndarray:
    refs = _refs(src, file)
    return sum((histogram(tensor_source(refs[name]), method, request) for name in tensors),
               np.zeros(request.bins, dtype=np.int64))


def _shard_counts(src: str, file: str, tensors: list[str], method: str, selection: ExactSelection) -> list:
    refs = _refs(src, file)
    return [(name, tally(tensor_source(refs[name]), selection, method)) for name in tensors]


def _prune_shard(src: str, file: str, target: str, fates: dict, how: HowToPrune, metadata: dict,
                 fault: tuple[str, str] | None) -> list[TensorReport]:
    """Prune (or copy) every tensor of one shard, in its order, into ``target`` with the
    single-process command's per-tensor step; its report rows."""
    ckpt = open_checkpoint(Path(src))
    shard = next(f for f in ckpt.files if f.path.name == file)
    entries = [(r.name, r.dtype, r.shape, r.nbytes) for r in shard.tensors]
    tasks = [TensorTask(ref, *fates[ref.name]) for ref in shard.tensors]
    pruner = TensorPruner(how, tasks)
    writer = SafetensorsWriter(Path(target), {**shard.metadata, **metadata}, entries)
    rows = []
    try:
        for i, task in enumerate(tasks):
            if fault is not None and fault[0] == file and i == 1 and not os.path.exists(fault[1]):
                Path(fault[1]).touch()  # tests: this worker dies in the middle of its shard, once
                os._exit(1)
            rows.append(pruner.process(task, writer, None))
        writer.close()
        fsync_path(Path(target))  # durable before the client's rename, from the machine that wrote it
    except BaseException:
        writer.discard()
        raise
    return rows


# ---------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------
def prune_from_args(args: Any) -> PruneReport:
    """``pruneplug prune ... --dask ADDRESS`` / ``--workers N``: the options this path supports."""
    unsupported = [flag for flag, value in (("--masks-out", args.masks_out), ("--report", args.report),
                                            ("--dry-run", args.dry_run), ("--in-place", args.in_place))
                   if value] + ([f"--format {args.format}"] if args.format != "dense" else []) \
        + ([f"--method {args.method}"] if args.method not in ("l1", "l2") else []) \
        + (["--calibration"] if getattr(args, "calibration", None) else []) \
        + ([f"--groups {args.groups}"] if getattr(args, "groups", None) == "row" else []) \
        + (["--layer-ratios owl"] if getattr(args, "layer_ratios", None) == "owl" else [])
    check_owl_parameters(getattr(args, "owl_m", 5.0), getattr(args, "owl_lambda", 0.08))  # as everywhere, OWL or not
    if unsupported:
        raise InvalidArgumentError(f"{', '.join(unsupported)} cannot be combined with --dask/--workers; "
                                   "use the single-process command")
    if args.output is None:
        raise InvalidArgumentError("--dask/--workers need an output directory (-o OUT_DIR)")
    return prune_checkpoint_dask(
        args.input, args.output, sparsity=args.sparsity, pattern=args.pattern, scope=args.scope, method=args.method,
        axis=args.axis, include=args.include, exclude=args.exclude,
        backend=None if args.backend == "auto" else args.backend, strict=args.strict,
        scheduler=args.dask, workers=args.workers, max_layer_sparsity=getattr(args, "max_layer_sparsity", None))

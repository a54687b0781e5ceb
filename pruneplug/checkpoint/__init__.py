"""Prune whole checkpoints: safetensors files, sharded safetensors directories, Hugging Face model
directories, ``.npz`` archives.

Three entry points, used by the ``pruneplug prune`` / ``pruneplug inspect`` commands:

* :func:`prune_checkpoint` reads a checkpoint one tensor at a time (safetensors memory-mapped),
  prunes the selected tensors layer by layer, globally or N:M, and writes the same form atomically;
* :func:`inspect_checkpoint` reports per-tensor shape, dtype, sparsity, N:M structure and magnitude
  quantiles;
* :func:`global_unstructured_masks` is exact global magnitude pruning of arrays already in memory.

Where things are:

* :mod:`~pruneplug.checkpoint.formats`: reading (safetensors headers, sharded and model directories,
  ``.npz``, compressed-tensors weights decoded on read),
  :class:`TensorRef` and :class:`Checkpoint`, the dtype maps;
* :mod:`pruneplug.selection_rule` (core, shared with the torch front end and the stream): which
  tensors are pruned (:data:`SELECTION_RULE`);
* :mod:`~pruneplug.checkpoint.global_select`: global pruning in bounded memory (drives
  :mod:`pruneplug.selection` over the tensors);
* :mod:`~pruneplug.checkpoint.prune`: :func:`prune_checkpoint`, step by step, and its per-tensor
  step (``TensorPruner``), which the workers of :mod:`pruneplug.dask_checkpoint` run too;
* :mod:`~pruneplug.checkpoint.paths`: the path rules (IN, OUT, ``--report``, ``--masks-out`` and
  ``--plot`` name different things; side outputs stay out of checkpoint directories);
* :mod:`~pruneplug.checkpoint.outputs`: output paths, one writer per output file, a directory's
  index, config.json and other files;
* :mod:`~pruneplug.checkpoint.writers`: the transaction (unnamed temporaries linked and renamed at
  the end) and the safetensors (``pwrite``, ``copy_file_range``) and ``.npz`` writers;
* :mod:`pruneplug.report` (core, shared): progress and the prune report;
* :mod:`~pruneplug.checkpoint.inspect`: :func:`inspect_checkpoint` and its plot.
"""

from pruneplug.checkpoint.formats import Checkpoint, TensorRef, open_checkpoint, read_safetensors_header
from pruneplug.checkpoint.global_select import GlobalPlan, global_unstructured_masks, plan_global
from pruneplug.checkpoint.inspect import InspectReport, InspectRow, check_plot_path, inspect_checkpoint, plot_inspection
from pruneplug.checkpoint.prune import FORMATS, prune_checkpoint
from pruneplug.report import ProgressLike, PruneReport, TensorReport
from pruneplug.selection_rule import SELECTION_RULE, select_tensors
from pruneplug.checkpoint.writers import SafetensorsWriter

__all__ = [
    "SELECTION_RULE", "Checkpoint", "GlobalPlan", "InspectReport", "InspectRow", "PruneReport", "TensorRef",
    "TensorReport", "global_unstructured_masks", "inspect_checkpoint", "open_checkpoint", "plan_global",
    "plot_inspection", "prune_checkpoint", "read_safetensors_header", "select_tensors",
]

"""pruneplug: magnitude pruning of neural-network weights, fast on the CPU and the GPU, behind a
plugin registry.

Example::

    >>> import numpy as np, pruneplug as pp
    >>> w = np.array([[0.5, -2.0, 0.1, 3.0]], dtype=np.float32)
    >>> pp.prune(w, pattern="2:4")
    array([[ 0., -2.,  0.,  3.]], dtype=float32)
"""

from pruneplug.api import backends, register_backend, unregister_backend
from pruneplug.masks import is_nm_sparse
from pruneplug.routing import (  # NumPy, CuPy, PyTorch and Dask arrays
    apply_mask,
    generate_block_mask,
    generate_column_mask,
    generate_nm_mask,
    generate_row_mask,
    generate_unstructured_mask,
    importance,
    prune,
)
from pruneplug.validation import count_to_prune
from pruneplug.hookspecs import hookimpl, hookspec
from pruneplug.backend_info import BackendInfo, BackendStatus
from pruneplug.types import ImportanceScores, Mask, ScoreStats
from pruneplug.checkpoint import global_unstructured_masks, inspect_checkpoint, prune_checkpoint
from pruneplug.sparse24 import SparseWeight24, compress_24, decompress_24, prune_24
from pruneplug import compressed_tensors  # noqa: E402  (a submodule, imported for pp.compressed_tensors)
from pruneplug.calibration import ActivationStats, CalibrationContext
from pruneplug.criteria.magnitude import MagnitudeImportance
from pruneplug.criteria.wanda import WandaImportance
from pruneplug.criteria.sparsegpt import SparseGPTImportance
from pruneplug.plan import PruneSettings, TensorPlan  # noqa: E402
from pruneplug.reconstruction.block import ReconstructSettings  # noqa: E402
from pruneplug import criteria  # noqa: E402  (importance criteria: pp.criteria.get_criterion, ...)

from pruneplug.version import __version__  # noqa: E402

__all__ = [
    "ActivationStats",
    "CalibrationContext",
    "WandaImportance",
    "SparseGPTImportance",
    "PruneSettings",
    "ReconstructSettings",
    "TensorPlan",
    "criteria",
    "BackendInfo",
    "BackendStatus",
    "ImportanceScores",
    "MagnitudeImportance",
    "Mask",
    "ScoreStats",
    "SparseWeight24",
    "apply_mask",
    "backends",
    "compress_24",
    "compressed_tensors",
    "decompress_24",
    "count_to_prune",
    "generate_block_mask",
    "generate_column_mask",
    "generate_nm_mask",
    "generate_row_mask",
    "generate_unstructured_mask",
    "global_unstructured_masks",
    "hookimpl",
    "hookspec",
    "importance",
    "inspect_checkpoint",
    "is_nm_sparse",
    "prune",
    "prune_24",
    "prune_checkpoint",
    "register_backend",
    "unregister_backend",
]


def __getattr__(name: str):
    # pp.torch (the PyTorch front end) is imported on first use: `import pruneplug` never imports torch.
    if name == "torch":
        import importlib

        return importlib.import_module("pruneplug.torch")
    raise AttributeError(f"module 'pruneplug' has no attribute {name!r}")

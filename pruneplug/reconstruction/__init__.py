"""Reconstruction steps that run *after* a mask is chosen: they update the weights that stay so the
layer's output changes as little as possible.

:func:`sparsegpt_prune` is the SparseGPT step (optimal brain surgeon updates from a layer's Hessian
``H = X^T X``). It chooses its own mask block by block (``pattern=``/``sparsity=``), or it takes a
mask from any criterion (``mask=``: Wanda, magnitude, ...) and only updates the weights.
:mod:`pruneplug.reconstruction.hessian` holds the Hessian preparation both use. :class:`ReconstructSettings`: how a whole pruned block is
re-fitted to the dense block's outputs (:mod:`pruneplug.torch.reconstruct`, docs/reconstruction.md).
"""

from pruneplug.reconstruction.block import ReconstructSettings
from pruneplug.reconstruction.hessian import DampedInverse, damped_inverse_factor, inverse_diagonal
from pruneplug.reconstruction.sparsegpt import SparseGPTResult, sparsegpt_prune

__all__ = ["DampedInverse", "ReconstructSettings", "SparseGPTResult", "damped_inverse_factor", "inverse_diagonal", "sparsegpt_prune"]

"""pruneplug's PyTorch front end (``pip install "pruneplug[torch]"``).

* :func:`prune_model`: prune the selected weights of an ``nn.Module`` in place by magnitude, Wanda
  or any criterion plugin, on CPU or CUDA tensors; returns the CLI's report.
* :func:`calibrate`: one-pass calibration statistics (:class:`pruneplug.CalibrationContext`) of
  every selected ``nn.Linear`` / Hugging Face ``Conv1D``; :func:`calibrate_blockwise` interleaves
  block-by-block calibration with pruning (the engine of the checkpoint stream too).
* :class:`ExactL1Unstructured`: a ``torch.nn.utils.prune`` method with exact, deterministic
  selection (``prune.global_unstructured(params, pruning_method=pp.torch.ExactL1Unstructured,
  amount=0.5)``).

Example::

    import pruneplug as pp
    report = pp.torch.prune_model(model, 0.5, method="wanda", calibration=batches)
    print(report.format_table())
"""

from pruneplug.torch.calibrate import calibrate, calibrate_blockwise, calibrate_sequential, find_blocks
from pruneplug.torch.layers import Layer, linear_layers, selected_parameters
from pruneplug.torch.nn_prune import ExactL1Unstructured, ExactL2Unstructured
from pruneplug.torch.prune import prune_model
from pruneplug.torch.shrink import count_parameters, shrink_model

__all__ = ["ExactL1Unstructured", "ExactL2Unstructured", "Layer", "calibrate", "count_parameters", "shrink_model",
           "calibrate_blockwise", "calibrate_sequential", "find_blocks", "linear_layers", "prune_model", "selected_parameters"]

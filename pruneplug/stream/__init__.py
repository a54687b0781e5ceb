"""Calibrated pruning of Hugging Face model directories, block by block, from the checkpoint to the
output in the memory of one block (``docs/calibration.md``, "The stream").

* :func:`prune_model_dir`: the one-step form (``pruneplug prune MODEL_DIR -o OUT_DIR --method
  wanda --calibration texts.txt``), resumable after a kill (``--resume``);
* :func:`calibrate_model_dir`: ``pruneplug calibrate``, the statistics file written as it is
  collected;
* :mod:`~pruneplug.stream.skeleton`: the model without weights and the name map;
* :mod:`~pruneplug.stream.memory`: the peak-memory formula the CLI prints before it starts.
"""

from pruneplug.stream.memory import MemoryEstimate, llama_estimate
from pruneplug.stream.pipeline import StreamOptions, StreamResult, calibrate_model_dir, prune_model_dir
from pruneplug.stream.skeleton import Skeleton, build_skeleton

__all__ = ["MemoryEstimate", "Skeleton", "StreamOptions",
           "StreamResult", "build_skeleton", "calibrate_model_dir", "llama_estimate", "prune_model_dir"]

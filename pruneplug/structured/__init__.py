"""Structured pruning: smaller, not sparser. MLP neurons, attention heads and whole blocks are
removed (real rows and columns, fewer blocks) and the config updated, so the result is a smaller
model that runs faster on any runtime (docs/structured.md).

* :func:`pruneplug.torch.shrink_model`: a model in memory, in place;
* :func:`shrink_model_dir`: a Hugging Face model directory into a new, smaller one, block by
  block (``pruneplug shrink``);
* :mod:`.criteria`: the unit criteria (plugins, entry-point group ``pruneplug.unit_criteria``);
* :mod:`.units` (where units live and the cuts they make), :mod:`.measure` (the calibration
  pass), :mod:`.decide` (per-block decision and compensation), :mod:`.plan` (requests, checks,
  config changes).
"""

from pruneplug.structured.directory import shrink_model_dir
from pruneplug.structured.plan import ShrinkRequest
from pruneplug.structured.report import ShrinkReport

__all__ = ["ShrinkReport", "ShrinkRequest", "shrink_model_dir"]

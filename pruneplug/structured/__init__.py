"""Structured pruning: smaller, not sparser. MLP neurons, attention heads, routed MoE experts and
whole blocks are removed (real rows and columns, fewer blocks) and the config updated, so the result is a smaller
model that runs faster on any runtime (docs/structured.md).

* :func:`pruneplug.torch.shrink_model`: a model in memory, in place;
* :func:`shrink_model_dir`: a Hugging Face model directory into a new, smaller one, block by
  block (``pruneplug shrink``);
* :mod:`.criteria`: the unit criteria (plugins, entry-point group ``pruneplug.unit_criteria``);
* :mod:`.units` (where units live and the cuts they make), :mod:`.experts` (MoE blocks: layouts,
  routing, expert statistics and cuts), :mod:`.measure` (the calibration
  pass), :mod:`.decide` (per-block decision and compensation), :mod:`.plan` (requests, checks,
  config changes).
"""

__all__ = ["ShrinkReport", "ShrinkRequest", "shrink_model_dir"]

# The names are imported on first use: the `pruneplug` command imports this package to add
# `shrink`, and every other command (prune, inspect) must not pay for torch (1 s, 180 MB).
_HOMES = {"ShrinkReport": "pruneplug.structured.report", "ShrinkRequest": "pruneplug.structured.plan",
          "shrink_model_dir": "pruneplug.structured.directory"}


def __getattr__(name: str):
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'pruneplug.structured' has no attribute {name!r}")

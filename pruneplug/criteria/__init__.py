"""Importance criteria: a plugin dimension of their own, found through entry points.

A criterion is a :class:`Criterion` subclass, registered under the ``pruneplug.criteria``
entry-point group with the name users pass as ``method=`` (the built-ins are registered exactly the
same way, in pruneplug's own ``pyproject.toml``)::

    # your pyproject.toml
    [project.entry-points."pruneplug.criteria"]
    random = "my_package.criteria:Random"      # a Criterion subclass, built with no arguments

A criterion declares its ``name``, whether it needs calibration (``requires_calibration()``) and
its default comparison group, and computes scores from weights plus the calibration context
(:meth:`Criterion.compute`). :func:`get_criterion` builds one by name (``"l1"``/``"l2"`` are
aliases of ``magnitude_l1``/``magnitude_l2``); :func:`criteria` lists them all, with the error of
any that fails to load (a broken criterion never breaks ``import pruneplug``: it fails only when
asked for by name). Built-ins: ``magnitude_l1``, ``magnitude_l2``, ``wanda``, ``sparsegpt``.

Entry points are read on each call (no cache, no global state): front ends resolve the criterion
once per model or checkpoint.

Example::

    >>> import pruneplug as pp
    >>> [c.name for c in pp.criteria.criteria()][:4]
    ['magnitude_l1', 'magnitude_l2', 'sparsegpt', 'wanda']
    >>> pp.criteria.get_criterion("wanda").requires_calibration()
    True
"""

from __future__ import annotations

from pruneplug.criteria.base import Criterion, LayerResult, Reconstruction, score_stats
from pruneplug.criteria.pruning import prune_scored
from pruneplug.criteria.registry import ALIASES, ENTRY_POINT_GROUP, CriterionInfo, criteria, get_criterion

__all__ = ["ALIASES", "ENTRY_POINT_GROUP", "Criterion", "CriterionInfo", "LayerResult", "Reconstruction", "criteria",
           "get_criterion", "prune_scored", "score_stats"]

"""Importance criteria of structured units (MLP neurons, attention heads, whole blocks): plugins of
their own, found through the ``pruneplug.unit_criteria`` entry-point group.

Why a group of their own and not ``pruneplug.criteria``: an unstructured criterion scores every
weight of one tensor; a unit criterion scores units that span several tensors (a neuron is a row of
gate/up and a column of down) or a whole block, from statistics of a different kind (a unit's
activations, the cosine between a block's input and output). The two interfaces share nothing.

A criterion is a :class:`UnitCriterion` subclass registered with the name users pass as
``--method`` / ``method=``::

    # your pyproject.toml
    [project.entry-points."pruneplug.unit_criteria"]
    random = "my_package.criteria:RandomUnits"      # built with no arguments

Built-ins, each in its own module, with its source:

* ``magnitude`` (:mod:`.magnitude`): the L2 norm of all the unit's weights; no calibration.
* ``activation`` (:mod:`.activation`): Minitron (Muralidharan et al., 2024): the mean ``|a|`` of
  a neuron's activation (the input of down_proj), the L2 norm of a head's output (the input of
  o_proj, per head) over the calibration tokens.
* ``flap`` (:mod:`.flap`): FLAP (An et al., 2024): the fluctuation of a channel, its variance over
  the calibration tokens times the squared norm of the output weights it feeds.
* ``block_influence`` (:mod:`.block_influence`): ShortGPT (Men et al., 2024): BI = 1 - mean cosine
  between a block's input and output hidden states; the lowest go.
* ``angular`` (:mod:`.angular`): Gromov et al. (2024): the run of n consecutive blocks whose input
  and output hidden states have the smallest mean angular distance ``arccos(cos)/pi``.
* ``reap`` (:mod:`.reap`): REAP (Lasby et al., 2025): a routed MoE expert's mean, over the tokens
  routed to it, of its routing weight times the L2 norm of its output.
* ``frequency`` (:mod:`.frequency`): how many calibration tokens route to an expert.

``magnitude`` also scores experts (the norm of their weights).

Example::

    >>> from pruneplug.structured.criteria import get_unit_criterion
    >>> sorted(get_unit_criterion("activation").units)
    ['head', 'neuron']
"""

from __future__ import annotations

from pruneplug.structured.criteria.base import BlockChoice, ExpertStats, ExpertWeights, UnitCriterion, UnitStats
from pruneplug.structured.criteria.registry import ENTRY_POINT_GROUP, get_unit_criterion, unit_criteria

__all__ = ["BlockChoice", "ENTRY_POINT_GROUP", "ExpertStats", "ExpertWeights", "UnitCriterion", "UnitStats",
           "get_unit_criterion", "unit_criteria"]

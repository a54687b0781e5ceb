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
asked for by name). Built-ins: ``magnitude_l1``, ``magnitude_l2``, ``wanda``.

Entry points are read on each call (no cache, no global state): front ends resolve the criterion
once per model or checkpoint.

Example::

    >>> import pruneplug as pp
    >>> [c.name for c in pp.criteria.criteria()][:3]
    ['magnitude_l1', 'magnitude_l2', 'wanda']
    >>> pp.criteria.get_criterion("wanda").requires_calibration()
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import Any

from pruneplug.criteria.base import Criterion, score_stats
from pruneplug.errors import InvalidArgumentError

ENTRY_POINT_GROUP = "pruneplug.criteria"
#: Short names accepted wherever a criterion name is.
ALIASES = {"l1": "magnitude_l1", "l2": "magnitude_l2"}


@dataclass(frozen=True)
class CriterionInfo:
    """One row of :func:`criteria`: the name, whether it needs calibration, where it comes from,
    and the load error (None when it loads)."""

    name: str
    requires_calibration: bool | None
    source: str
    error: str | None = None


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _load(entry_point: Any) -> Criterion:
    obj = entry_point.load()
    criterion = obj() if isinstance(obj, type) else obj
    if not isinstance(criterion, Criterion):
        raise TypeError(f"{entry_point.value} is a {type(criterion).__name__}, not a pruneplug.criteria.Criterion")
    return criterion


def criteria() -> list[CriterionInfo]:
    """Every registered criterion, sorted by name."""
    rows = []
    for name, ep in sorted(_entry_points().items()):
        try:
            c = _load(ep)
            rows.append(CriterionInfo(name, c.requires_calibration(), ep.value))
        except Exception as exc:  # noqa: BLE001 - a broken third-party criterion is reported, not raised
            rows.append(CriterionInfo(name, None, ep.value, f"{type(exc).__name__}: {exc}"))
    return rows


def get_criterion(method: str | Criterion) -> Criterion:
    """The criterion named ``method`` (or ``method`` itself when it already is one).

    Example::

        >>> import pruneplug as pp
        >>> pp.criteria.get_criterion("l2").name
        'magnitude_l2'
    """
    if isinstance(method, Criterion):
        return method
    if not isinstance(method, str):
        raise InvalidArgumentError(f"method={method!r}: expected a criterion name or a Criterion")
    eps = _entry_points()
    name = ALIASES.get(method, method)
    if name not in eps:
        known = ", ".join(sorted(set(eps) | set(ALIASES)))
        raise InvalidArgumentError(f"method={method!r} is not a registered importance criterion; known: {known}")
    try:
        return _load(eps[name])
    except Exception as exc:  # noqa: BLE001
        raise InvalidArgumentError(f"method={method!r}: the criterion failed to load: {type(exc).__name__}: {exc}") from exc


from pruneplug.criteria.pruning import prune_scored  # noqa: E402  (uses Criterion)

__all__ = ["ALIASES", "ENTRY_POINT_GROUP", "Criterion", "CriterionInfo", "criteria", "get_criterion",
           "prune_scored", "score_stats"]

"""Finding unit criteria: the ``pruneplug.unit_criteria`` entry-point group, read on each call."""

from __future__ import annotations

from importlib import metadata

from pruneplug.errors import InvalidArgumentError
from pruneplug.structured.criteria.base import UnitCriterion

ENTRY_POINT_GROUP = "pruneplug.unit_criteria"


def unit_criteria() -> list[str]:
    """The names of every registered unit criterion, sorted."""
    return sorted(ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP))


def get_unit_criterion(method: str | UnitCriterion, unit: str | None = None) -> UnitCriterion:
    """The unit criterion named ``method`` (or ``method`` itself); with ``unit``, one that supports it.

    Example::

        >>> get_unit_criterion("block_influence", "block").name
        'block_influence'
    """
    if isinstance(method, UnitCriterion):
        criterion = method
    else:
        eps = {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
        if not isinstance(method, str) or method not in eps:
            raise InvalidArgumentError(f"method={method!r} is not a registered unit criterion; known: "
                                       f"{', '.join(sorted(eps))}")
        try:
            obj = eps[method].load()
            criterion = obj() if isinstance(obj, type) else obj
        except Exception as exc:  # noqa: BLE001 - a broken plugin is named, not a traceback
            raise InvalidArgumentError(f"method={method!r}: the criterion failed to load: "
                                       f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(criterion, UnitCriterion):
            raise InvalidArgumentError(f"method={method!r}: {eps[method].value} is not a UnitCriterion")
    if unit is not None and unit not in criterion.units:
        raise InvalidArgumentError(f"method={criterion.name!r} does not score {unit}s (it scores: "
                                   f"{', '.join(sorted(criterion.units))})")
    return criterion

"""Finding importance criteria: the ``pruneplug.criteria`` entry-point group, read on each call
(see the package docstring)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import Any

from pruneplug.criteria.base import Criterion
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

"""The pruning-pattern grammar, in one place: every front end (``pp.prune``, checkpoints, the CLI)
parses a pattern string here.

The grammar is ASCII and exact (no surrounding whitespace, no other digits than ``0-9``)::

    unstructured | row | column | N:M | block(H,W)      (block(H, W): one space after the comma allowed)

``N:M`` keeps ``N`` of every ``M`` (``0 <= N <= M``, ``M >= 1``); ``block(H,W)`` has ``H, W >= 1``.
Numbers are below 2**63.

Example::

    >>> from pruneplug.patterns import parse_pattern
    >>> parse_pattern("2:4")
    Pattern(kind='nm', n=2, m=4, block_shape=None)
    >>> str(parse_pattern("block(4, 8)")), parse_pattern("row").needs_sparsity
    ('block(4,8)', True)
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from pruneplug.errors import InvalidArgumentError, ShapeError
from pruneplug.validation import check_block_shape, check_nm, shown

#: The pattern kinds, in the order the grammar lists them.
KINDS = ("unstructured", "nm", "row", "column", "block")

_NUMBER = r"([0-9]{1,19})"  # ASCII digits only; 19 digits hold every number below 2**63
_NM = re.compile(_NUMBER + ":" + _NUMBER)
_BLOCK = re.compile(r"block\(" + _NUMBER + ", ?" + _NUMBER + r"\)")
_EXPECTED = "expected 'unstructured', 'N:M' (e.g. '2:4'), 'row', 'column' or 'block(H,W)'"


@dataclass(frozen=True)
class Pattern:
    """A parsed pruning pattern: ``kind`` is one of :data:`KINDS`; ``n``/``m`` are set for
    ``"nm"`` and ``block_shape`` for ``"block"``. ``str(pattern)`` is its canonical text."""

    kind: str
    n: int | None = None
    m: int | None = None
    block_shape: tuple[int, int] | None = None

    @property
    def needs_sparsity(self) -> bool:
        """N:M fixes the sparsity; every other pattern needs one."""
        return self.kind != "nm"

    def __str__(self) -> str:
        if self.kind == "nm":
            return f"{self.n}:{self.m}"
        if self.kind == "block":
            return f"block({self.block_shape[0]},{self.block_shape[1]})"
        return self.kind


def parse_pattern(text: Any) -> Pattern:
    """Parse a pattern string (see the module docstring for the grammar).

    Raises :class:`~pruneplug.errors.InvalidArgumentError` naming ``pattern`` for anything else:
    another type, unknown words, non-ASCII digits, surrounding whitespace or a newline,
    ``N > M``, ``M = 0``, a zero block side, numbers of 2**63 or more.

    Example::

        >>> parse_pattern("block(2,3)").block_shape
        (2, 3)
        >>> parse_pattern("2:4\\n")
        Traceback (most recent call last):
        ...
        pruneplug.errors.InvalidArgumentError: pattern='2:4\\n' is not supported; expected 'unstructured', 'N:M' (e.g. '2:4'), 'row', 'column' or 'block(H,W)'
    """
    if not isinstance(text, str):
        raise InvalidArgumentError(f"pattern={shown(text)} must be a string; {_EXPECTED}")
    return _parse(text)


@functools.lru_cache(maxsize=64)  # a pure function of a string to an immutable value; ~1-4 us a parse
def _parse(text: str) -> Pattern:
    if text in ("unstructured", "row", "column"):
        return Pattern(text)
    nm = _NM.fullmatch(text)
    if nm:
        try:
            n, m = check_nm(int(nm.group(1)), int(nm.group(2)))
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"pattern={shown(text)}: {exc}") from None
        return Pattern("nm", n=n, m=m)
    block = _BLOCK.fullmatch(text)
    if block:
        try:
            shape = check_block_shape((int(block.group(1)), int(block.group(2))))
        except InvalidArgumentError:
            raise InvalidArgumentError(
                f"pattern={shown(text)}: block sides must be integers >= 1 and < 2**63") from None
        return Pattern("block", block_shape=shape)
    raise InvalidArgumentError(f"pattern={shown(text)} is not supported; {_EXPECTED}")


def check_2d(shape: tuple, what: str) -> tuple[int, int]:
    """``(rows, columns)`` of a 2-D ``shape``; a ShapeError naming ``what`` otherwise.

    Example::

        >>> check_2d((3, 4), "a row mask")
        (3, 4)
    """
    if len(shape) != 2:
        raise ShapeError(f"{what} needs 2-D scores, got shape {tuple(shape)}")
    return int(shape[0]), int(shape[1])


def line_block(kind: str, shape: tuple) -> tuple[int, int]:
    """The block of a ``"row"`` ``(1, columns)`` or ``"column"`` ``(rows, 1)`` pattern on a 2-D
    ``shape``: row and column masks are block masks of whole lines. With no columns (rows) the
    lines are empty and a side of 1 is the same.

    Example::

        >>> line_block("row", (3, 4)), line_block("column", (3, 4))
        ((1, 4), (3, 1))
    """
    rows, cols = check_2d(shape, f"a {kind} mask")
    return (1, max(cols, 1)) if kind == "row" else (max(rows, 1), 1)


def block_count(shape: tuple, block_shape: tuple[int, int], pattern: str) -> int:
    """How many blocks of ``block_shape`` tile the 2-D ``shape`` (a ShapeError when they do not).

    Example::

        >>> block_count((4, 6), (2, 3), "block(2,3)")
        4
    """
    rows, cols = check_2d(shape, f"a {pattern} mask")
    block_rows, block_cols = block_shape
    if rows % block_rows or cols % block_cols:
        raise ShapeError(f"block_shape={tuple(block_shape)} does not divide the scores' shape {(rows, cols)}")
    return (rows // block_rows) * (cols // block_cols)


def pattern_units(pattern: Pattern, shape: tuple) -> tuple[int, tuple[int, int] | None]:
    """What ``sparsity``/``count`` count for ``pattern`` on ``shape``: ``(units, block_shape)``,
    where units are the array's entries (``unstructured``) or its rows, columns or blocks (then
    ``block_shape`` is the block hook's block). N:M has no count.

    Example::

        >>> pattern_units(parse_pattern("row"), (3, 4)), pattern_units(parse_pattern("unstructured"), (3, 4))
        ((3, (1, 4)), (12, None))
    """
    if pattern.kind == "unstructured":
        size = 1
        for side in shape:
            size *= int(side)
        return size, None
    if pattern.kind == "nm":
        raise InvalidArgumentError(f"pattern={str(pattern)!r} fixes the sparsity: it has no count")
    block = pattern.block_shape or line_block(pattern.kind, shape)
    return block_count(shape, block, str(pattern)), block

"""Argument checks shared by every front end (the array API, checkpoints, 2:4, the CLI).

Each check raises a typed error from :mod:`pruneplug.errors` whose message names the argument,
the value received (escaped and shortened, so that a hostile value cannot break a one-line
message) and what was expected, and returns the normalised value.

Example::

    >>> from pruneplug.validation import check_nm, check_sparsity, count_to_prune
    >>> check_nm(2, 4), check_sparsity(0.5), count_to_prune(0.5, 7)
    ((2, 4), 0.5, 4)
"""

from __future__ import annotations

import numbers
from typing import Any

from pruneplug.errors import InvalidArgumentError, ShapeError

#: ``method`` -> (the transform backends apply, the importance name reported in scores).
METHODS = {"l1": ("abs", "magnitude_l1"), "l2": ("square", "magnitude_l2")}

#: The largest element count, group size or block side a backend is ever asked to handle: sizes
#: and counts travel as int64 through the C and CUDA contracts.
MAX_SIZE = 2**63 - 1

_SHOWN = 60  # characters of a value shown in a message


def shown(value: Any) -> str:
    r"""``repr(value)``, shortened to about 60 characters: a message quoting a user's value stays
    one readable line (``repr`` escapes newlines and other control characters).

    Example::

        >>> print(shown("two\nlines"), shown("x" * 100)[-11:])
        'two\nlines' (102 chars)
    """
    try:
        text = repr(value)
    except ValueError:  # an integer beyond Python's digit limit for str()
        text = f"<{type(value).__name__} too large to show>"
    if len(text) <= _SHOWN:
        return text
    return f"{text[:_SHOWN]}... ({len(text)} chars)"


def check_method(method: Any) -> str:
    """The transform (``"abs"`` or ``"square"``) of importance ``method`` ``"l1"`` or ``"l2"``."""
    if not isinstance(method, str) or method not in METHODS:
        raise InvalidArgumentError(f"method={shown(method)} is not supported; expected 'l1' or 'l2'")
    return METHODS[method][0]


def check_sparsity(sparsity: Any) -> float:
    """``sparsity`` as a float in [0, 1]: any real number (int, float, Fraction, NumPy scalar).

    The range is checked on the number itself before converting, so that an int or Fraction too
    large for a float is an ``InvalidArgumentError``, not an ``OverflowError``."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise InvalidArgumentError(f"sparsity={shown(sparsity)} must be a real number in [0, 1]")
    try:
        in_range = bool(0 <= sparsity <= 1)  # False for NaN
        value = float(sparsity) if in_range else 0.0
    except (ArithmeticError, ValueError, TypeError):
        in_range = False
    if not in_range or not 0.0 <= value <= 1.0:
        raise InvalidArgumentError(f"sparsity={shown(sparsity)} must be a real number in [0, 1]")
    return value


def count_to_prune(sparsity: float, total: int) -> int:
    """``round(sparsity * total)`` with Python's half-to-even rounding, as torch's pruning does.

    Example::

        >>> count_to_prune(0.5, 5), count_to_prune(0.3, 10)
        (2, 3)
    """
    return int(round(check_sparsity(sparsity) * total))


def check_groups(groups: Any) -> str:
    """The comparison group of unstructured pruning: ``"layer"`` (the whole array) or ``"row"``
    (an exact count in every row of a 2-D array, as Wanda compares)."""
    if not isinstance(groups, str) or groups not in ("layer", "row"):
        raise InvalidArgumentError(f"groups={shown(groups)}: expected 'layer' (one comparison over the whole array) "
                                   "or 'row' (exact count in every row of a 2-D array)")
    return groups


def resolve_count(sparsity: Any, count: Any, total: int, unit: str, context: str = "pruning") -> int:
    """The exact number of ``unit`` to prune out of ``total``: ``count`` itself, or
    ``round(sparsity * total)`` (:func:`count_to_prune`). Exactly one of the two is given; a front
    end that decided exact counts passes ``count`` and no float travels in between.

    Example::

        >>> resolve_count(0.5, None, 7, "entries"), resolve_count(None, 3, 7, "entries")
        (4, 3)
        >>> resolve_count(None, 8, 7, "rows")
        Traceback (most recent call last):
        ...
        pruneplug.errors.InvalidArgumentError: count=8 must be an integer in [0, 7] (rows to prune)
    """
    if sparsity is None and count is None:
        raise InvalidArgumentError(f"{context} needs sparsity= (a real number in [0, 1]) or count= (an integer in "
                                   f"[0, {total}], the {unit} to prune)")
    if sparsity is not None and count is not None:
        raise InvalidArgumentError(f"sparsity={shown(sparsity)} and count={shown(count)} are exclusive: pass one")
    if sparsity is not None:
        return count_to_prune(sparsity, total)
    if isinstance(count, bool) or not isinstance(count, numbers.Integral) or not 0 <= int(count) <= total:
        raise InvalidArgumentError(f"count={shown(count)} must be an integer in [0, {total}] ({unit} to prune)")
    return int(count)


def check_int(value: Any, argname: str, minimum: int, maximum: int = MAX_SIZE) -> int:
    """``value`` as an int in [minimum, maximum] (bool is not an integer here)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not minimum <= int(value) <= maximum:
        bound = f"in [{minimum}, {maximum}]" if maximum != MAX_SIZE else f">= {minimum} and < 2**63"
        raise InvalidArgumentError(f"{argname}={shown(value)} must be an integer {bound}")
    return int(value)


def check_nm(n: Any, m: Any) -> tuple[int, int]:
    """``(n, m)`` of an N:M pattern: keep ``n`` of every ``m`` (``0 <= n <= m``, ``m >= 1``)."""
    m = check_int(m, "m", 1)
    n = check_int(n, "n", 0)
    if n > m:
        raise InvalidArgumentError(f"n={n} must not exceed m={m} (keep n of every m)")
    return n, m


def check_block_shape(block_shape: Any) -> tuple[int, int]:
    """``(height, width)`` of a block: two integers in [1, 2**63)."""
    if (not isinstance(block_shape, (tuple, list)) or len(block_shape) != 2
            or any(isinstance(b, bool) or not isinstance(b, numbers.Integral) or not 1 <= b <= MAX_SIZE
                   for b in block_shape)):
        raise InvalidArgumentError(f"block_shape={shown(block_shape)} must be two integers >= 1 and < 2**63")
    return int(block_shape[0]), int(block_shape[1])


def normalize_axis(axis: Any, shape: tuple, m: int) -> int:
    """The non-negative N:M grouping axis of an array of ``shape``; its length must divide by ``m``."""
    ndim = len(shape)
    if ndim == 0:
        raise ShapeError("N:M needs an array with at least one dimension, got a 0-d array")
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral) or not -ndim <= int(axis) < ndim:
        raise InvalidArgumentError(f"axis={shown(axis)} is out of range for an array of shape {shape}")
    axis = int(axis) % ndim
    if shape[axis] % m:
        raise ShapeError(
            f"shape {shape} cannot be split into groups of m={m} along axis={axis}: "
            f"{shape[axis]} is not a multiple of {m}"
        )
    return axis

"""How the ``pruneplug`` commands talk: one-line errors and warnings on stderr, exit statuses.

Example::

    >>> print(one_line("bad" + chr(10) + "name.safetensors"))
    bad\\nname.safetensors
"""

from __future__ import annotations

import sys

EXIT_USAGE = 2  # the command line is wrong (argparse uses 2 too)
EXIT_ERROR = 1  # the command failed


def one_line(text: str) -> str:
    """``text`` with every unprintable character (newline, tab, escape, ...) written as ``repr``
    writes it, so that a file or tensor name cannot break a one-line message or a terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def error(command: str, message: str) -> None:
    """Print ``pruneplug COMMAND: error: MESSAGE`` as one line on stderr."""
    print(f"pruneplug {command}: error: {one_line(message)}", file=sys.stderr)


def warn(command: str, message: str) -> None:
    """Print ``pruneplug COMMAND: warning: MESSAGE`` as one line on stderr."""
    print(f"pruneplug {command}: warning: {one_line(message)}", file=sys.stderr)

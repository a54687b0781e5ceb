"""How the ``pruneplug`` commands talk: one-line errors and warnings on stderr, exit statuses.

Example::

    >>> print(one_line("bad" + chr(10) + "name.safetensors"))
    bad\\nname.safetensors
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any

from pruneplug.report import ProgressLike

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


class ProgressBar(ProgressLike):
    """A one-line progress bar on stderr: phase, tensors done, bytes, rate and ETA.

    Quiet unless the stream is a terminal, or ``force=True`` (``--progress always`` or
    ``PRUNEPLUG_PROGRESS=1``). Redraws at most ten times a second.
    """

    def __init__(self, stream: IO[str] | None = None, force: bool | None = None, width: int = 24) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if force is None:
            force = os.environ.get("PRUNEPLUG_PROGRESS", "") in ("1", "always") or None
        isatty = getattr(self.stream, "isatty", lambda: False)
        self.enabled = bool(force) if force is not None else bool(isatty())
        self.width = width
        self.active = False

    def start(self, label: str, items: int, amount: int, unit: str = "tensors") -> None:
        """A new phase of ``items`` (``unit``: "tensors", with ``amount`` bytes; "blocks": the amount
        is the block count and no bytes are shown)."""
        self.close()
        self.label, self.items, self.amount, self.unit = label, items, max(amount, 0), unit
        self.step = ""
        self.done_items = self.done_amount = 0
        self.t0 = self.last = time.monotonic()
        self.active = True
        self._draw(force=True)

    def set_step(self, step: str) -> None:
        """What the current item is doing (calibrating, pruning, writing), shown after the counts."""
        if self.active and step != self.step:
            self.step = step
            self._draw(force=True)

    def update(self, items: int = 0, amount: int = 0) -> None:
        if not self.active:
            return
        self.done_items += items
        self.done_amount += amount
        now = time.monotonic()
        if now - self.last >= 0.1 or self.done_items >= self.items:
            self.last = now
            self._draw()

    def close(self) -> None:
        if self.active:
            self._draw(force=True)
            if self.enabled:
                self.stream.write("\n")
                self.stream.flush()
            self.active = False

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.t0
        frac = min(self.done_amount / self.amount, 1.0) if self.amount else (
            self.done_items / self.items if self.items else 1.0)
        filled = int(frac * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        rate = self.done_amount / elapsed if elapsed > 0 else 0.0
        eta = (self.amount - self.done_amount) / rate if rate > 0 else None
        eta_text = "--:--" if eta is None else _clock(eta)
        if self.unit == "tensors":
            line = (f"\r{self.label}: [{bar}] {self.done_items}/{self.items} tensors "
                    f"{_size(self.done_amount)}/{_size(self.amount)} {_size(rate)}/s "
                    f"elapsed {_clock(elapsed)} ETA {eta_text}")
        else:
            line = (f"\r{self.label}: [{bar}] {self.done_items}/{self.items} {self.unit} "
                    f"elapsed {_clock(elapsed)} ETA {eta_text}{' - ' + self.step if self.step else ''}")
        self.stream.write(line + "\x1b[K" if getattr(self.stream, "isatty", lambda: False)() else line)
        self.stream.flush()


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def progress_for(args: Any) -> ProgressBar:
    """The bar a command asked for: ``--progress auto|always|never``; ``--quiet`` turns auto off."""
    if getattr(args, "quiet", False) and args.progress == "auto":
        return ProgressBar(force=False)
    return ProgressBar(force={"auto": None, "always": True, "never": False}[args.progress])

"""The path rules of :func:`~pruneplug.checkpoint.prune_checkpoint` (and of ``inspect --plot``),
checked before any work.

Every pair among IN, OUT, ``--report`` and ``--masks-out`` must name different things, whatever
the spelling: ``./``, ``..``, symbolic links and hard links (the same ``st_dev``/``st_ino``) are
seen through. A checkpoint directory (sharded, or a model directory) also owns every file inside
it: a side output inside IN or OUT is refused, because the directory is replaced as one and a
file written into it would either be lost or break that replacement. (With ``--in-place`` OUT *is*
IN; that pair alone is allowed.)

The ``--calibration`` statistics file is an input read during the work: no output (OUT, IN
with ``--in-place``, ``--report``, ``--masks-out``) may be it, a link to it, or a directory holding
it (:func:`check_inputs_apart`); it may lie inside IN, which is only read.

A directory replaced in place must be one a rename can move: not a mount point, and not the
current working directory or one of its parents (``prune . --in-place``).

Example::

    >>> from pathlib import Path
    >>> places = [Place("IN", Path("m.safetensors"), False), Place("--report", Path("./m.safetensors"), False)]
    >>> check_distinct(places)
    Traceback (most recent call last):
    ...
    pruneplug.errors.CheckpointError: IN m.safetensors and --report m.safetensors are the same path; choose another path
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

from pruneplug.errors import CheckpointError


@dataclass(frozen=True)
class Place:
    """One path argument: its role in messages (``"IN"``, ``"OUT"``, ``"--report"``, ...), the
    path as given, and whether it is a checkpoint directory (which owns the files inside it)."""

    role: str
    path: Path
    is_dir: bool


def real(path: Path) -> Path:
    """``path`` with ``.``, ``..`` and symbolic links resolved, whether or not it exists."""
    return Path(os.path.realpath(path))


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _inodes_inside(directory: Path) -> set[tuple[int, int]]:
    """The (device, inode) of every file directly inside ``directory`` (a checkpoint is flat)."""
    found = set()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return found
    for entry in entries:
        ino = _inode(Path(entry.path))
        if ino is not None:
            found.add(ino)
    return found


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _clash(a: Place, b: Place) -> str | None:
    """Why ``a`` and ``b`` may not both be written/read as given (None when they may)."""
    ra, rb = real(a.path), real(b.path)
    if ra == rb:
        return "are the same path"
    ia, ib = _inode(a.path), _inode(b.path)
    if ia is not None and ia == ib:
        return "are the same file (a hard or symbolic link)"
    for outer, inner, r_out, r_in in ((a, b, ra, rb), (b, a, rb, ra)):
        if outer.is_dir and _is_within(r_in, r_out):
            return f"{inner.role} is inside the {outer.role} directory"
        if outer.is_dir and not inner.is_dir and _inode(inner.path) in _inodes_inside(outer.path):
            return f"{inner.role} is a hard link to a file inside the {outer.role} directory"
    return None


def check_distinct(places: list[Place]) -> None:
    """Raise :class:`CheckpointError` naming both arguments when two of ``places`` clash."""
    for a, b in itertools.combinations(places, 2):
        why = _clash(a, b)
        if why is not None:
            raise CheckpointError(f"{a.role} {a.path} and {b.role} {b.path} {why}; choose another path")


def check_inputs_apart(inputs: list[Place], outputs: list[Place]) -> None:
    """Raise :class:`CheckpointError` when an output of ``outputs`` would overwrite (or replace the
    directory holding) a read-only input of ``inputs``, such as the ``--calibration`` statistics
    file: the same path, a symbolic or hard link to it, or a file inside an output directory.
    Inputs are only read, so two inputs may be the same file and an input may lie inside IN."""
    for a in inputs:
        for b in outputs:
            why = _clash(a, b)
            if why is not None:
                raise CheckpointError(f"{a.role} {a.path} and {b.role} {b.path} {why}: writing {b.role} would destroy "
                                      f"the {a.role} input; choose another path")


def check_replaceable_dir(path: Path) -> None:
    """A directory replaced in place is swapped by two renames: refuse, before any work, one that
    cannot be renamed (a mount point) or that holds the current working directory."""
    target = real(path)
    if os.path.ismount(target):
        raise CheckpointError(f"cannot replace {path} in place: it is a mount point; write to another directory with -o")
    try:
        cwd = real(Path(os.getcwd()))
    except OSError:
        return
    if _is_within(cwd, target):
        raise CheckpointError(
            f"cannot replace {path} in place: it is (or holds) the current working directory; "
            "run the command from outside it, or write to another directory with -o")

"""The staging area of a stream run and its journal: what lets ``--resume`` continue a killed run.

Beside the output ``OUT_DIR`` a run keeps ``.OUT_DIR.pruneplug-stream/``:

* ``out/``: the output directory being built (the input's safetensors files with their headers and
  untouched tensors copied at the start, each pruned block written into its slots);
* ``hidden-K/``: the hidden states entering block ``K`` (one ``.npy`` per calibration batch), for
  the last finished block only; ``dense-K/`` beside it the dense model's hidden states entering
  block ``K`` when reconstruction's ``target="dense"`` carries them (sequential mode);
* ``journal.json``: the run's fingerprint (arguments and input identity), the number of finished
  blocks, the OWL counts and the report rows so far. It is replaced atomically after each block,
  once that block's tensors are durable and its ``hidden-K`` directory complete.

``kill -9`` at any point leaves a journal that describes finished work only, so a rerun with
``--resume`` and the same arguments starts at the next block and writes byte-identical output. At
the end ``out/`` is renamed to ``OUT_DIR`` (one atomic rename) and the staging area removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pruneplug.errors import CheckpointError

JOURNAL_VERSION = 1


def staging_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.pruneplug-stream"


def file_identity(path: Path) -> dict:
    """What identifies an input file without reading it whole: size, mtime and the hash of its
    first MiB (a safetensors header lives there)."""
    st = path.stat()
    with open(path, "rb") as f:
        head = hashlib.sha256(f.read(1 << 20)).hexdigest()
    return {"name": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "head": head}


def fingerprint(arguments: dict, inputs: list[Path]) -> str:
    """One hash of the run's arguments and its input files' identities."""
    blob = json.dumps({"arguments": arguments, "inputs": [file_identity(p) for p in inputs]}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class Journal:
    """The journal of one staging area (see the module docstring)."""

    directory: Path
    fingerprint: str
    arguments: dict
    done: int = 0  # blocks finished
    owl_counts: dict | None = None
    rows: dict = field(default_factory=dict)  # tensor name -> report row (dict)
    metrics: dict = field(default_factory=dict)  # tensor name -> reconstruction metrics
    seconds: float = 0.0  # wall time spent so far, by this run and earlier (interrupted) ones
    tuple_outputs: bool | None = None  # whether the blocks return tuples (the tail pass must too)
    reconstruction_losses: dict = field(default_factory=dict)  # block prefix -> losses of its re-fit
    refitted: list = field(default_factory=list)  # unselected tensors a re-fit rewrote (train="norms")

    @property
    def path(self) -> Path:
        return self.directory / "journal.json"

    @property
    def out(self) -> Path:
        return self.directory / "out"

    def hidden(self, block: int) -> Path:
        return self.directory / f"hidden-{block}"

    def dense_hidden(self, block: int) -> Path:
        return self.directory / f"dense-{block}"

    def save(self) -> None:
        """Replace the journal atomically (written, synced, renamed)."""
        data = {"version": JOURNAL_VERSION, "fingerprint": self.fingerprint, "arguments": self.arguments,
                "done": self.done, "owl_counts": self.owl_counts, "rows": self.rows, "metrics": self.metrics,
                "seconds": self.seconds, "tuple_outputs": self.tuple_outputs,
                "reconstruction_losses": self.reconstruction_losses, "refitted": self.refitted}
        tmp = self.path.with_name("journal.json.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.directory)

    def drop_hidden_except(self, keep: int) -> None:
        for path in [*self.directory.glob("hidden-*"), *self.directory.glob("dense-*")]:
            if path.name not in (f"hidden-{keep}", f"dense-{keep}"):
                shutil.rmtree(path, ignore_errors=True)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_journal(out: Path, fp: str, arguments: dict, resume: bool) -> Journal:
    """A new staging area for ``out``, or with ``resume`` the existing one, after checking that it
    was made by the same arguments and input. Refuses to start over a staging area without
    ``resume`` (it may hold hours of work) and to resume one that does not match."""
    directory = staging_dir(out)
    path = directory / "journal.json"
    if not resume:
        if directory.exists():
            raise CheckpointError(f"-o {out}: an interrupted run left {directory}; pass --resume (with the same "
                                  "arguments) to continue it, or remove that directory to start over")
        directory.mkdir()
        (directory / "out").mkdir()
        journal = Journal(directory, fp, arguments)
        journal.save()
        return journal
    if not path.is_file():
        raise CheckpointError(f"--resume: there is no interrupted run to resume for -o {out} (no {path})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"--resume: cannot read {path}: {exc}") from None
    if data.get("version") != JOURNAL_VERSION:
        raise CheckpointError(f"--resume: {path} has version {data.get('version')!r}; this pruneplug writes "
                              f"{JOURNAL_VERSION}")
    if data.get("fingerprint") != fp:
        changed = sorted(k for k in set(arguments) | set(data.get("arguments", {}))
                         if arguments.get(k) != data.get("arguments", {}).get(k))
        what = (f"the arguments differ ({', '.join(changed)})" if changed else
                "the input files changed since it started")
        raise CheckpointError(f"--resume: the interrupted run in {directory} was started differently: {what}; rerun "
                              "with its arguments, or remove that directory to start over")
    return Journal(directory, fp, arguments, int(data["done"]), data.get("owl_counts"), data.get("rows", {}),
                   data.get("metrics", {}), float(data.get("seconds", 0.0)), data.get("tuple_outputs"),
                   data.get("reconstruction_losses", {}), data.get("refitted", []))


def describe(arguments: dict[str, Any]) -> dict:
    """The arguments as JSON-able values (paths as strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in arguments.items()}

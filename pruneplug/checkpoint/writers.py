"""Writing outputs: temporary files in the target directory, renamed into place at the end
(:class:`_Transaction`), and streaming writers for safetensors and ``.npz``."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from pruneplug.checkpoint.formats import _ST_DTYPES, _st_dtype
from pruneplug.errors import CheckpointError


class _Transaction:
    """Stage files and directories next to their targets; ``commit`` renames them into place,
    ``abort`` removes every temporary. Used as a context manager: an exception aborts."""

    def __init__(self) -> None:
        self.staged: list[tuple[Path, Path, bool]] = []  # (temporary, final, is_dir)
        self.modes: dict[Path, int] = {}  # temporary -> its mode at commit (default: the umask's)

    def stage_file(self, final: Path, mode: int | None = None) -> Path:
        fd, tmp = self._make(final, lambda d: tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=d))
        os.close(fd)
        self.staged.append((Path(tmp), final, False))
        self.modes[Path(tmp)] = (0o666 & ~_umask()) if mode is None else mode
        return Path(tmp)

    def stage_dir(self, final: Path, mode: int | None = None) -> Path:
        tmp = Path(self._make(final, lambda d: tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=d)))
        self.staged.append((tmp, final, True))
        self.modes[tmp] = (0o777 & ~_umask()) if mode is None else mode
        return tmp

    @staticmethod
    def _make(final: Path, make: Callable[[str], Any]) -> Any:
        directory = final.parent
        if not directory.is_dir():
            raise CheckpointError(f"cannot write {final}: directory {directory} does not exist")
        try:
            return make(str(directory))
        except OSError as exc:
            raise CheckpointError(f"cannot write to directory {directory}: {exc.strerror or exc}") from exc

    def commit(self) -> None:
        try:
            for tmp, final, is_dir in self.staged:
                os.chmod(tmp, self.modes[tmp])
                if is_dir and final.exists():
                    # replace a directory (in place): move the old one aside, the new one in, then drop the old
                    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=final.parent))
                    old.rmdir()
                    os.replace(final, old)
                    try:
                        os.replace(tmp, final)
                    except OSError:
                        os.replace(old, final)
                        raise
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    os.replace(tmp, final)
        except OSError as exc:
            raise CheckpointError(f"cannot move the output into place: {exc.strerror or exc}") from exc
        self.staged = []

    def abort(self) -> None:
        for tmp, _, is_dir in self.staged:
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp) if is_dir else tmp.unlink()
        self.staged = []

    def __enter__(self) -> "_Transaction":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_guard(what: Path):
    """Turn OSErrors while writing into CheckpointError (disk full, permissions)."""
    @contextlib.contextmanager
    def guard():
        try:
            yield
        except OSError as exc:
            raise CheckpointError(f"cannot write {what}: {exc.strerror or exc}") from exc
    return guard()


class SafetensorsWriter:
    """Write a safetensors file one tensor at a time.

    With ``entries`` (name, dtype, shape, nbytes) known up front, the header goes first and every
    tensor is streamed straight after it. Without (compressed formats, whose sizes are known only
    once pruned) the data is spooled to a second temporary file and the header written at close.
    """

    def __init__(self, path: Path, metadata: Mapping[str, str], entries: Sequence[tuple] | None = None) -> None:
        self.path, self.metadata = path, dict(metadata)
        self.entries: list[tuple] = []
        self.expected = list(entries) if entries is not None else None
        self.f = open(path, "wb")
        self.spool = None
        if self.expected is not None:
            self._write_header(self.f, self.expected)
        else:
            self.spool_path = path.with_name(path.name + ".body")
            self.spool = open(self.spool_path, "wb")

    def _write_header(self, f, entries: Sequence[tuple]) -> None:
        header: dict[str, Any] = {}
        if self.metadata:
            header["__metadata__"] = self.metadata
        offset = 0
        for name, dtype, shape, nbytes in entries:
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)  # pad to 8 bytes, as safetensors does
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)

    def write(self, name: str, data: np.ndarray | Iterable[bytes], dtype: str | None = None,
              shape: Sequence[int] | None = None) -> None:
        """Append a tensor: an array, or the raw bytes of one (with its dtype and shape)."""
        target = self.spool or self.f
        if isinstance(data, np.ndarray):
            dtype, shape = _st_dtype(data), data.shape
            array = np.ascontiguousarray(data)
            target.write(array.reshape(-1).view(np.uint8).data if array.size else b"")
            nbytes = array.nbytes
        else:
            nbytes = 0
            for piece in data:
                target.write(piece)
                nbytes += len(piece)
        entry = (name, dtype, tuple(shape), nbytes)
        if self.expected is not None:
            want = self.expected[len(self.entries)]
            if want != entry:
                raise CheckpointError(f"internal error: writing {entry} where the header says {want}")
        self.entries.append(entry)

    def close(self) -> None:
        if self.expected is not None and len(self.entries) != len(self.expected):
            raise CheckpointError(f"internal error: {len(self.entries)} of {len(self.expected)} tensors written")
        if self.spool is not None:
            self.spool.close()
            # lay the data out by alignment, widest dtype first (as safetensors' own serializer
            # does), so every tensor of a memory-mapped file is aligned to its itemsize
            starts, position = [], 0
            for entry in self.entries:
                starts.append(position)
                position += entry[3]
            order = sorted(range(len(self.entries)), key=lambda i: -_ST_DTYPES[self.entries[i][1]][1])
            self._write_header(self.f, [self.entries[i] for i in order])
            with open(self.spool_path, "rb") as body:
                for i in order:
                    body.seek(starts[i])
                    left = self.entries[i][3]
                    while left:
                        piece = body.read(min(left, 64 << 20))
                        if not piece:
                            raise CheckpointError(f"{self.spool_path}: spooled data is short")
                        self.f.write(piece)
                        left -= len(piece)
            os.unlink(self.spool_path)
            self.spool = None
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()

    def discard(self) -> None:
        for f in (self.f, self.spool):
            if f is not None:
                f.close()
        if self.spool is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.spool_path)


class NpzWriter:
    """Write an ``.npz`` one array at a time (what ``numpy.savez`` does, streamed); metadata goes
    into the zip comment as JSON, bfloat16 arrays are stored as raw 2-byte values and their dtype
    recorded under ``pruneplug.dtypes``."""

    def __init__(self, path: Path, metadata: Mapping[str, str], compressed: bool) -> None:
        self.zf = zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED, allowZip64=True)
        self.metadata = dict(metadata)
        self.dtypes = json.loads(self.metadata.get("pruneplug.dtypes", "{}"))

    def write(self, name: str, array: np.ndarray) -> None:
        if np.dtype(array.dtype).name == "bfloat16":
            self.dtypes[name] = "bfloat16"
            array = array.view(np.uint16)
        with self.zf.open(name + ".npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)

    def close(self) -> None:
        if self.dtypes:
            self.metadata["pruneplug.dtypes"] = json.dumps(self.dtypes, sort_keys=True)
        comment = json.dumps(self.metadata, sort_keys=True).encode("utf-8")
        if len(comment) > 65535:
            raise CheckpointError("the npz metadata does not fit in a zip comment (64 KiB)")
        self.zf.comment = comment
        self.zf.close()

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self.zf.close()

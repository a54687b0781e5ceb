"""Writing outputs: staged files renamed into place at the end (:class:`Transaction`), and the
safetensors and ``.npz`` writers.

No name until commit
--------------------
On Linux a staged file is an *unnamed* file (``O_TMPFILE``) in the target's directory, reached
through ``/proc/self/fd/N`` while it is written; at commit it is made durable (one ``fsync``),
given a name (``linkat`` through ``/proc``) and renamed over the target, then the directory is
synced. A process killed at any point (``kill -9`` included) therefore leaves no file behind,
only the kernel's unnamed inode, which is freed with the process. Where ``O_TMPFILE`` is not
available, and for staged *directories* (sharded outputs), the temporary has a recognisable name,
``.<target name>.pruneplug-<host>-<pid>-<token>.tmp`` (``.old`` for a directory being replaced),
and every later run that writes the same target removes those whose process is gone.

Writes without Python copies
----------------------------
:class:`SafetensorsWriter` writes the header first and each tensor at its own offset with
``os.pwrite`` straight from the array's buffer (in any order), copies stored bytes of untouched
tensors with ``os.copy_file_range`` (falling back to ``os.sendfile``, then read/write), and reserves
the file's size up front (``posix_fallocate``) so a full disk fails before the work.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from pruneplug.checkpoint.formats import ST_DTYPES, st_dtype_of
from pruneplug.errors import CheckpointError

_TAG = "pruneplug"
_O_TMPFILE = getattr(os, "O_TMPFILE", 0)
_PROC_FD = Path("/proc/self/fd")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:32] or "host"


def stage_name(final: Path, suffix: str = "tmp") -> str:
    """The recognisable name of a staged temporary for ``final`` (see the module docstring)."""
    return f".{final.name}.{_TAG}-{_host()}-{os.getpid()}-{secrets.token_hex(4)}.{suffix}"


def _stale_re(final_name: str) -> re.Pattern:
    return re.compile(rf"^\.{re.escape(final_name)}\.{_TAG}-(?P<host>\w+)-(?P<pid>\d+)-[0-9a-f]+\.(tmp|old)$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(final: Path) -> list[Path]:
    """Remove the temporaries that earlier runs on this host left for ``final`` (their process is
    gone: killed while writing); return what was removed."""
    pattern, host, removed = _stale_re(final.name), _host(), []
    with contextlib.suppress(OSError):
        for entry in os.scandir(final.parent):
            m = pattern.match(entry.name)
            if not m or m.group("host") != host or int(m.group("pid")) == os.getpid() or _alive(int(m.group("pid"))):
                continue
            path = Path(entry.path)
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed.append(path)
    return removed


@dataclass
class _Staged:
    tmp: Path  # where it is written: /proc/self/fd/N for an unnamed file
    final: Path
    is_dir: bool
    fd: int | None  # the unnamed file's descriptor (its only handle), None for named temporaries


@dataclass
class _Committed:
    """One output renamed into place: where its previous version was set aside (None: there was
    none, or it could not be kept) and whether the target existed before."""

    staged: _Staged
    aside: Path | None
    existed: bool


def _undo(done: "list[_Committed]") -> None:
    """Put the previous outputs back, last committed first (a failed commit changes nothing)."""
    for c in reversed(done):
        final = c.staged.final
        with contextlib.suppress(OSError):
            if c.aside is not None:
                if c.staged.is_dir:  # a directory cannot be renamed over a non-empty one: new one out first
                    gone = final.parent / stage_name(final, "tmp")
                    os.replace(final, gone)
                    os.replace(c.aside, final)
                    _remove_entry(gone)
                else:
                    os.replace(c.aside, final)
            elif not c.existed:
                _remove_entry(final)


class Transaction:
    """Stage files and directories next to their targets; ``commit`` makes them durable and renames
    them into place, ``abort`` removes every temporary. Used as a context manager: an exception
    aborts. Staging a target first removes the stale temporaries of killed runs for it."""

    def __init__(self) -> None:
        self.staged: list[_Staged] = []
        self.modes: dict[Path, int] = {}  # temporary -> its mode at commit (default: the umask's)
        self.removed_stale: list[Path] = []

    def stage_file(self, final: Path, mode: int | None = None) -> Path:
        directory = self._directory(final)
        fd = None
        if _O_TMPFILE and _PROC_FD.is_dir():
            with contextlib.suppress(OSError):  # EOPNOTSUPP/EISDIR where the filesystem has no O_TMPFILE
                fd = os.open(directory, _O_TMPFILE | os.O_RDWR, 0o600)
        if fd is not None:
            tmp = _PROC_FD / str(fd)
        else:
            tmp = directory / stage_name(final)
            try:
                os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            except OSError as exc:
                raise CheckpointError(f"cannot write to directory {directory}: {exc.strerror or exc}") from exc
        self.staged.append(_Staged(tmp, final, False, fd))
        self.modes[tmp] = (0o666 & ~current_umask()) if mode is None else mode
        return tmp

    def stage_dir(self, final: Path, mode: int | None = None) -> Path:
        directory = self._directory(final)
        tmp = directory / stage_name(final)
        try:
            os.mkdir(tmp, 0o700)
        except OSError as exc:
            raise CheckpointError(f"cannot write to directory {directory}: {exc.strerror or exc}") from exc
        self.staged.append(_Staged(tmp, final, True, None))
        self.modes[tmp] = (0o777 & ~current_umask()) if mode is None else mode
        return tmp

    def _directory(self, final: Path) -> Path:
        directory = final.parent
        if not directory.is_dir():
            raise CheckpointError(f"cannot write {final}: directory {directory} does not exist")
        self.removed_stale += remove_stale_temporaries(final)
        return directory

    def commit(self) -> None:
        """Make every staged output durable, then rename each into place. All or nothing: the
        previous outputs are set aside (hard links for files, a rename for directories) and put
        back if a later rename fails, so that a failed commit leaves every target as it was."""
        done: list[_Committed] = []
        try:
            for s in self.staged:  # everything durable before any rename
                _sync_tree(s.tmp) if s.is_dir else fsync_path(s.tmp, s.fd)
            for s in self.staged:
                done.append(self._commit_one(s))
            for directory in {s.final.parent for s in self.staged}:
                _fsync_dir(directory)
        except OSError as exc:
            _undo(done)
            raise CheckpointError(f"cannot move the output into place: {exc.strerror or exc}") from exc
        for c in done:  # committed: the previous outputs go
            if c.aside is not None:
                _remove_entry(c.aside)
        self._close()
        self.staged = []

    def _commit_one(self, s: _Staged) -> "_Committed":
        mode = self.modes[s.tmp]
        existed = s.final.exists() or s.final.is_symlink()
        aside = s.final.parent / stage_name(s.final, "old") if existed else None
        if s.is_dir:
            os.chmod(s.tmp, mode)
            if aside is not None:  # the old directory (or link) aside, the new one in
                os.replace(s.final, aside)
                try:
                    os.replace(s.tmp, s.final)
                except OSError:
                    os.replace(aside, s.final)
                    raise
            else:
                os.replace(s.tmp, s.final)
            return _Committed(s, aside, existed)
        if aside is not None:
            try:  # a second name for the previous file, so that it can be put back
                os.link(s.final, aside, follow_symlinks=False)
            except OSError:  # no hard links here: this one target cannot be put back
                aside = None
        try:
            self._rename_file(s, mode)
        except OSError:
            if aside is not None:
                with contextlib.suppress(OSError):
                    aside.unlink()
            raise
        return _Committed(s, aside, existed)

    def _rename_file(self, s: _Staged, mode: int) -> None:
        if s.fd is None:
            os.chmod(s.tmp, mode)
            os.replace(s.tmp, s.final)
            return
        os.fchmod(s.fd, mode)
        named = s.final.parent / stage_name(s.final)
        dir_fd = os.open(s.final.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:  # linkat(AT_SYMLINK_FOLLOW) of /proc/self/fd/N (a dir_fd makes Python call linkat, not link)
            os.link(s.tmp, named.name, dst_dir_fd=dir_fd, follow_symlinks=True)
        finally:
            os.close(dir_fd)
        try:
            os.replace(named, s.final)
        except OSError:
            with contextlib.suppress(OSError):
                named.unlink()
            raise

    def abort(self) -> None:
        for s in self.staged:
            if s.fd is None:
                with contextlib.suppress(OSError):
                    shutil.rmtree(s.tmp) if s.is_dir else s.tmp.unlink()
        self._close()  # an unnamed file disappears with its last descriptor
        self.staged = []

    def _close(self) -> None:
        for s in self.staged:
            if s.fd is not None:
                with contextlib.suppress(OSError):
                    os.close(s.fd)
                s.fd = None

    def __enter__(self) -> "Transaction":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def _remove_entry(path: Path) -> None:
    """Remove what was set aside at ``path``: a directory tree, or the symbolic link itself when the
    replaced output was a link to a directory (``rmtree`` refuses links, and ignoring that left the
    ``.old`` link behind)."""
    if path.is_symlink() or not path.is_dir():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def fsync_path(path: Path, fd: int | None = None) -> None:
    """Make ``path``'s data durable: fsync ``fd`` when the file is open, else open it (a file or a
    directory) read-only and fsync that."""
    if fd is not None:
        os.fsync(fd)
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems refuse fsync on directories
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _sync_tree(root: Path) -> None:
    """fsync every regular file under ``root``, then each directory (files first)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                fsync_path(path, None)
    for dirpath, _dirnames, _filenames in os.walk(root, topdown=False):
        _fsync_dir(Path(dirpath))


def current_umask() -> int:
    """The process's umask (reading it means setting it: it is put back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_guard(what: Path):
    """Turn OSErrors while writing into CheckpointError (disk full, permissions)."""
    @contextlib.contextmanager
    def guard():
        try:
            yield
        except OSError as exc:
            raise CheckpointError(f"cannot write {what}: {exc.strerror or exc}") from exc
    return guard()


@contextlib.contextmanager
def terminate_like_interrupt() -> Iterator[None]:
    """While the block runs (in the main thread, where SIGTERM has its default action), SIGTERM
    raises ``SystemExit(143)`` instead of killing the process, so the ``finally`` clauses and the
    transaction's abort remove the temporaries as they do for Ctrl-C; the exit status is the one a
    SIGTERM death reports (128 + 15)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def handler(signum, frame):  # noqa: ARG001
        raise SystemExit(128 + signal.SIGTERM)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


# ---------------------------------------------------------------------------------------------
# raw I/O
# ---------------------------------------------------------------------------------------------
def pwrite_all(fd: int, data: Any, offset: int) -> None:
    """Write all of ``data`` (any buffer) at ``offset``, looping over short writes."""
    view = memoryview(data).cast("B")
    while view.nbytes:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(errno.EIO, "short write")
        view, offset = view[n:], offset + n


def copy_range(src_fd: int, src_offset: int, dst_fd: int, dst_offset: int, nbytes: int) -> None:
    """Copy ``nbytes`` between files inside the kernel: ``copy_file_range``, else ``sendfile``,
    else read/write in 16 MiB pieces."""
    left = nbytes
    if hasattr(os, "copy_file_range"):
        try:
            while left:
                n = os.copy_file_range(src_fd, dst_fd, min(left, 1 << 30), src_offset, dst_offset)
                if n == 0:
                    raise OSError(errno.EIO, "the input ended early (truncated while copying)")
                src_offset, dst_offset, left = src_offset + n, dst_offset + n, left - n
            return
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF):
                raise
    while left:
        piece = os.pread(src_fd, min(left, 16 << 20), src_offset)
        if not piece:
            raise OSError(errno.EIO, "the input ended early (truncated while copying)")
        pwrite_all(dst_fd, piece, dst_offset)
        src_offset, dst_offset, left = src_offset + len(piece), dst_offset + len(piece), left - len(piece)


def _reserve(fd: int, size: int) -> None:
    """Allocate the file's blocks now, so a full disk fails before the work (where supported)."""
    if size and hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS, getattr(errno, "ENOTSUP", -1)):
                raise


def _array_bytes(array: np.ndarray) -> memoryview:
    array = np.ascontiguousarray(array)
    return memoryview(array.reshape(-1).view(np.uint8)) if array.size else memoryview(b"")


def _directory_of(path: Path) -> Path:
    """The directory a (possibly unnamed, ``/proc/self/fd/N``) file lives in."""
    if path.parent == _PROC_FD:
        return Path(os.readlink(path)).parent  # "/dir/#inode (deleted)" for an O_TMPFILE file
    return path.parent


class SafetensorsWriter:
    """Write a safetensors file one tensor at a time.

    With ``entries`` (name, dtype, shape, nbytes) known up front, the header goes first and every
    tensor is written at its offset, in any order (:meth:`write`, :meth:`copy_from`). Without
    (compressed formats, whose sizes are known only once pruned) the data is spooled to an unnamed
    temporary file beside the output and the header written at close, the data laid out widest
    dtype first as safetensors' own serializer does. The writer does not fsync: the transaction
    that staged the file makes it durable once, at commit.
    """

    def __init__(self, path: Path, metadata: Mapping[str, str], entries: Sequence[tuple] | None = None) -> None:
        self.path, self.metadata = Path(path), dict(metadata)
        self.fd: int | None = None
        self.spool: Any = None
        self.expected = list(entries) if entries is not None else None
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self.written: dict[str, tuple] = {}
        self.order: list[str] = []
        if self.expected is not None:
            header = self._header(self.expected)
            self.slots: dict[str, tuple[int, tuple]] = {}
            offset = len(header)
            for name, dtype, shape, nbytes in self.expected:
                self.slots[name] = (offset, (name, dtype, tuple(shape), nbytes))
                offset += nbytes
            _reserve(self.fd, offset)
            pwrite_all(self.fd, header, 0)
        else:
            self.spool = tempfile.TemporaryFile(dir=_directory_of(self.path))  # unnamed on Linux
            self.spool_size = 0
            self.spooled: dict[str, tuple[int, tuple]] = {}

    def _header(self, entries: Sequence[tuple]) -> bytes:
        header: dict[str, Any] = {}
        if self.metadata:
            header["__metadata__"] = self.metadata
        offset = 0
        for name, dtype, shape, nbytes in entries:
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)  # pad to 8 bytes, as safetensors does
        return struct.pack("<Q", len(raw)) + raw

    def _slot(self, entry: tuple) -> int:
        """Where ``entry`` goes in the output (dense) or in the spool (compressed); checks it."""
        name = entry[0]
        if name in self.written:
            raise CheckpointError(f"internal error: tensor {name!r} written twice")
        if self.expected is not None:
            if name not in self.slots or self.slots[name][1] != entry:
                raise CheckpointError(f"internal error: writing {entry} where the header says {self.slots.get(name)}")
            offset = self.slots[name][0]
        else:
            offset = self.spool_size
            self.spooled[name] = (offset, entry)
            self.spool_size += entry[3]
        self.written[name] = entry
        self.order.append(name)
        return offset

    def _fd_for_data(self) -> int:
        return self.spool.fileno() if self.spool is not None else self.fd

    def write(self, name: str, data: np.ndarray | Iterable[bytes], dtype: str | None = None,
              shape: Sequence[int] | None = None) -> None:
        """Write a tensor: an array (from its buffer, no copy; ``dtype``, when given, is the
        safetensors dtype its bytes are stored as: raw bits of bfloat16 in a ``uint16`` array), or
        the raw bytes of one as pieces (with its dtype and shape)."""
        if isinstance(data, np.ndarray):
            buf = _array_bytes(data)
            offset = self._slot((name, dtype or st_dtype_of(data), tuple(data.shape), buf.nbytes))
            pwrite_all(self._fd_for_data(), buf, offset)
            return
        if self.spool is not None:
            offset = self.spool_size
        elif name in self.slots:
            offset = self.slots[name][0]
        else:
            raise CheckpointError(f"internal error: tensor {name!r} is not in the header")
        nbytes = 0
        for piece in data:  # streamed: a piece at a time is in memory
            pwrite_all(self._fd_for_data(), piece, offset + nbytes)
            nbytes += len(piece)
        if self._slot((name, dtype, tuple(shape), nbytes)) != offset:
            raise CheckpointError(f"internal error: tensor {name!r} written at the wrong offset")

    def copy_from(self, name: str, src: Path, src_offset: int, nbytes: int, dtype: str, shape: Sequence[int]) -> None:
        """Copy a tensor's stored bytes from another file inside the kernel (``copy_file_range``)."""
        offset = self._slot((name, dtype, tuple(shape), nbytes))
        if nbytes:
            src_fd = os.open(src, os.O_RDONLY)
            try:
                copy_range(src_fd, src_offset, self._fd_for_data(), offset, nbytes)
            finally:
                os.close(src_fd)

    def close(self) -> None:
        if self.expected is not None and len(self.written) != len(self.expected):
            raise CheckpointError(f"internal error: {len(self.written)} of {len(self.expected)} tensors written")
        if self.spool is not None:
            # lay the data out by alignment, widest dtype first (stable in write order), so every
            # tensor of a memory-mapped file is aligned to its itemsize
            order = sorted(self.order, key=lambda n: -ST_DTYPES[self.spooled[n][1][1]][1])
            header = self._header([self.spooled[n][1] for n in order])
            _reserve(self.fd, len(header) + self.spool_size)
            pwrite_all(self.fd, header, 0)
            offset = len(header)
            for n in order:
                start, entry = self.spooled[n]
                copy_range(self.spool.fileno(), start, self.fd, offset, entry[3])
                offset += entry[3]
            self.spool.close()
            self.spool = None
        os.close(self.fd)
        self.fd = None

    def discard(self) -> None:
        """Release everything without raising (the transaction removes the file itself)."""
        with contextlib.suppress(Exception):
            if self.spool is not None:
                self.spool.close()
        self.spool = None
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


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

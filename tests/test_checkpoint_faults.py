"""Faults injected into checkpoint writes (issue 19): a full disk at the first write and half-way,
and a failure at commit, for small and large tensors, safetensors, npz and sharded directories.
Every test asserts that its fault was actually hit (a fault test that never fires proves nothing),
then that nothing changed: no output, no temporary, the existing output untouched. Also an output
that is a symbolic link to an empty directory, and npz comments that are (not) metadata."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import pruneplug as pp
from pruneplug.checkpoint import writers
from pruneplug.errors import CheckpointError

pytest.importorskip("safetensors", reason="safetensors is not installed")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_checkpoint_support import run_cli, write_sharded, write_single  # noqa: E402

SIZES = {"small": (8, 16), "large": (512, 1024)}  # 512 B and 2 MiB float32 tensors
FORMS = ["safetensors", "npz", "sharded"]


def _tensors(size: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {f"model.layers.{i}.mlp.up_proj.weight": rng.standard_normal(SIZES[size]).astype(np.float32)
            for i in range(4)} | {"model.norm.weight": np.ones(SIZES[size][1], np.float32)}


def _source(root: Path, form: str, size: str) -> tuple[Path, Path]:
    """(input, output path) of one form; the input lives in root/src, outputs in root."""
    (root / "src").mkdir()
    tensors = _tensors(size)
    if form == "safetensors":
        return write_single(root / "src" / "m.safetensors", tensors), root / "o.safetensors"
    if form == "npz":
        np.savez(root / "src" / "m.npz", **tensors)
        return root / "src" / "m.npz", root / "o.npz"
    return write_sharded(root / "src" / "ckpt", tensors, shards=2), root / "out"


def _snapshot(root: Path) -> dict[str, str]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            found[str(p.relative_to(root))] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return found


class FullDisk:
    """Every way the writers put bytes on disk (pwrite, write, copy_file_range, sendfile, fallocate,
    and the zip stream of an npz) draws on one budget; past it, ENOSPC, as a full file system."""

    def __init__(self, monkeypatch, budget: int) -> None:
        self.budget, self.hits = budget, 0
        for name, size_of in (("pwrite", lambda a: memoryview(a[1]).nbytes), ("write", lambda a: memoryview(a[1]).nbytes),
                              ("copy_file_range", lambda a: a[2]), ("sendfile", lambda a: a[3]),
                              ("posix_fallocate", lambda a: a[2])):
            if hasattr(os, name):
                monkeypatch.setattr(os, name, self._wrap(getattr(os, name), size_of))
        disk = self

        class FullZip(zipfile.ZipFile):
            def __init__(self, file, mode="r", *args, **kwargs):
                super().__init__(file, mode, *args, **kwargs)
                if mode == "w":
                    self.fp = _Stream(self.fp, disk)

        monkeypatch.setattr(writers.zipfile, "ZipFile", FullZip)

    def spend(self, n: int) -> None:
        self.budget -= n
        if self.budget < 0:
            self.hits += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def _wrap(self, real, size_of):
        def call(*args):
            self.spend(size_of(args))
            return real(*args)
        return call


class _Stream:
    """A zip file's output stream whose writes draw on the disk's budget."""

    def __init__(self, fp, disk: FullDisk) -> None:
        self._fp, self._disk = fp, disk

    def write(self, data):
        self._disk.spend(memoryview(data).nbytes)
        return self._fp.write(data)

    def __getattr__(self, name):
        return getattr(self._fp, name)


def _input_bytes(src: Path) -> int:
    return sum(p.stat().st_size for p in ([src] if src.is_file() else src.iterdir()))


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("when", ["first write", "half-way"])
def test_full_disk_leaves_nothing_at_every_size_and_form(tmp_path, monkeypatch, form, size, when):
    src, out = _source(tmp_path, form, size)
    if form != "sharded":
        out.write_bytes(b"old output")
    report = tmp_path / "r.json"
    before = _snapshot(tmp_path)
    disk = FullDisk(monkeypatch, 0 if when == "first write" else _input_bytes(src) // 2)
    with pytest.raises(CheckpointError, match="No space left on device"):
        pp.prune_checkpoint(src, out, sparsity=0.5, report=report)
    monkeypatch.undo()
    assert disk.hits >= 1, "the full disk was never hit: this test would prove nothing"
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("form", FORMS)
def test_failure_just_before_commit_leaves_nothing(tmp_path, form, size):
    src, out = _source(tmp_path, form, size)
    if form != "sharded":
        out.write_bytes(b"old output")
    before = _snapshot(tmp_path)
    calls = []

    def fail():
        calls.append(1)
        raise OSError(errno.EIO, "injected at commit")

    with pytest.raises(CheckpointError, match="injected at commit"):
        pp.prune_checkpoint(src, out, sparsity=0.5, report=tmp_path / "r.json", _before_commit=fail)
    assert calls == [1]
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("which", ["first", "last"])
@pytest.mark.parametrize("existing", [True, False])
def test_failing_rename_at_commit_leaves_nothing(tmp_path, monkeypatch, form, size, which, existing):
    """A rename of the commit fails (os.replace, a file system gone read-only): the first one, when
    nothing is in place yet, or the last (the report's), when the checkpoint already is: it is put
    back as it was (or removed when it is new); the staged outputs are removed."""
    src, out = _source(tmp_path, form, size)
    report = tmp_path / "r.json"
    if existing:
        report.write_text("old report")
        if form != "sharded":
            out.write_bytes(b"old output")
        else:
            out.mkdir()  # an existing output directory must be empty
    before = _snapshot(tmp_path)
    calls = []
    real = os.replace

    def replace(a, b, *args, **kwargs):
        if Path(b) == (out if which == "first" else report) and Path(a).name.endswith(".tmp"):  # staged -> final
            calls.append(b)
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real(a, b, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(CheckpointError, match="Read-only file system"):
        pp.prune_checkpoint(src, out, sparsity=0.5, report=report)
    monkeypatch.undo()
    assert len(calls) == 1
    assert _snapshot(tmp_path) == before


# --- an output that is a symbolic link to an empty directory ----------------------------------------
def test_output_symlink_to_an_empty_directory_leaves_no_old_entry(tmp_path, capsys):
    src = write_sharded(tmp_path / "in", _tensors("small"), shards=2)
    (tmp_path / "empty").mkdir()
    (tmp_path / "out").symlink_to("empty")
    rc, _, err = run_cli(capsys, "prune", src, "-o", tmp_path / "out", "--sparsity", "0.5")
    assert rc == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "in", "out"]  # no .out.pruneplug-*.old
    assert (tmp_path / "out").is_dir() and not (tmp_path / "out").is_symlink()  # the link is replaced, as for files
    assert (tmp_path / "out" / "model.safetensors.index.json").is_file() and not any((tmp_path / "empty").iterdir())


# --- npz comments: metadata or an ordinary comment --------------------------------------------------
def _npz(path: Path, comment: str) -> Path:
    np.savez(path, w=np.ones((4, 4), np.float32))
    with zipfile.ZipFile(path, "a") as zf:
        zf.comment = comment.encode()
    return path


@pytest.mark.parametrize("comment", ['{"a": ' + "[" * 20000 + "]" * 20000 + "}",
                                     '{"pruneplug.dtypes": "{}", "x": ' + "[" * 5000 + "]" * 5000 + "}",
                                     '{"a": 1', '  {not json}', '{"a": 1} [2]'])
@pytest.mark.parametrize("command", ["prune", "inspect"])
def test_npz_comment_that_starts_like_json_metadata_must_be_readable(tmp_path, capsys, comment, command):
    src = _npz(tmp_path / "m.npz", comment)
    extra = ["-o", tmp_path / "o.npz", "--sparsity", "0.5", "--include", "w"] if command == "prune" else []
    rc, _, err = run_cli(capsys, command, src, *extra)
    assert rc == 1 and "corrupt npz comment" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o.npz").exists()


@pytest.mark.parametrize("comment", ["[" * 20000 + "]" * 20000, "made by hand", '[{"pruneplug.dtypes": 1}]'])
def test_npz_comment_that_is_not_metadata_is_kept_as_it_is(tmp_path, capsys, comment):
    src = _npz(tmp_path / "m.npz", comment)
    rc, _, err = run_cli(capsys, "prune", src, "-o", tmp_path / "o.npz", "--sparsity", "0.5", "--include", "w")
    assert rc == 0, err
    with zipfile.ZipFile(tmp_path / "o.npz") as zf:
        assert json.loads(zf.comment)["comment"] == comment

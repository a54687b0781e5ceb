"""The checkpoint writers under kill -9, SIGTERM, a full disk or a file-size limit: nothing is left
behind that a user cannot see, existing outputs are untouched, errors are one line."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pruneplug.checkpoint import writers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_checkpoint_support import BF16, write_sharded, write_single  # noqa: E402


def _model(scale: int = 1) -> dict:
    rng = np.random.default_rng(0)
    return {f"layers.{i}.w": rng.standard_normal((64 * scale, 256)).astype(np.float32) for i in range(6)} | {
        "layers.9.h": rng.standard_normal((32, 64)).astype(BF16)}


def _entries(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def _run(code: str, *, fsize: int | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (optionally under ``ulimit -f``, in bytes)."""
    def limit():  # pragma: no cover - runs in the child
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          preexec_fn=limit, timeout=120)


KILL_AFTER_FIRST_TENSOR = """
    import os, signal, sys
    import pruneplug as pp
    from pruneplug.checkpoint import prune
    real = prune._write_pruned
    def write_then_die(*args, **kwargs):
        real(*args, **kwargs)
        os.kill(os.getpid(), getattr(signal, sys.argv[1] if len(sys.argv) > 1 else "{signal}"))
    prune._write_pruned = write_then_die
    {call}
"""


@pytest.mark.parametrize("tmpfile", [True, False])
def test_kill_9_while_writing_a_file_leaves_no_name(tmp_path, tmpfile):
    src = write_single(tmp_path / "in.safetensors", _model())
    out = tmp_path / "out"
    out.mkdir()
    (out / "o.safetensors").write_bytes(b"old output")
    call = (f"from pruneplug.checkpoint import writers; writers._O_TMPFILE = {writers._O_TMPFILE if tmpfile else 0}\n"
            f"    pp.prune_checkpoint({str(src)!r}, {str(out / 'o.safetensors')!r}, sparsity=0.5, "
            f"masks_out={str(out / 'm.safetensors')!r}, report={str(out / 'r.json')!r})")
    proc = _run(KILL_AFTER_FIRST_TENSOR.format(signal="SIGKILL", call=call))
    assert proc.returncode == -signal.SIGKILL
    left = _entries(out) - {"o.safetensors"}
    assert (out / "o.safetensors").read_bytes() == b"old output"
    if tmpfile:
        assert left == set(), left  # unnamed files: nothing to see, nothing to clean
    else:
        assert left and all(".pruneplug-" in n and n.endswith(".tmp") for n in left), left
    # the next run removes what the killed one left (its process is gone) and succeeds
    import pruneplug as pp

    pp.prune_checkpoint(src, out / "o.safetensors", sparsity=0.5, masks_out=out / "m.safetensors")
    assert _entries(out) == {"o.safetensors", "m.safetensors"}


def test_kill_9_while_writing_a_sharded_directory_is_cleaned_next_run(tmp_path):
    src = write_sharded(tmp_path / "in", _model(), shards=2)
    out = tmp_path / "out"
    call = f"pp.prune_checkpoint({str(src)!r}, {str(out)!r}, sparsity=0.5, scope='global')"
    proc = _run(KILL_AFTER_FIRST_TENSOR.format(signal="SIGKILL", call=call))
    assert proc.returncode == -signal.SIGKILL
    staged = [n for n in _entries(tmp_path) if n.startswith(".out.pruneplug-")]
    assert len(staged) == 1 and staged[0].endswith(".tmp") and str(proc.args) and not out.exists()
    import pruneplug as pp

    pp.prune_checkpoint(src, out, sparsity=0.5, scope="global")
    assert _entries(tmp_path) == {"in", "out"}


def test_stale_temporaries_of_live_processes_and_other_names_are_kept(tmp_path):
    final = tmp_path / "o.safetensors"
    mine = tmp_path / writers.stage_name(final)  # this process is alive
    other = tmp_path / ".other.safetensors.pruneplug-x-1-ab.tmp"
    user = tmp_path / ".o.safetensors.mine.tmp"
    for p in (mine, other, user):
        p.write_text("x")
    dead = tmp_path / f".o.safetensors.pruneplug-{writers._host()}-{2**22 + 12345}-0a1b.tmp"
    dead.mkdir()
    assert writers.remove_stale_temporaries(final) == [dead]
    assert mine.exists() and other.exists() and user.exists() and not dead.exists()


@pytest.mark.parametrize("fmt", ["dense", "sparse-bitmask"])
@pytest.mark.parametrize("tmpfile", [True, False])
def test_file_size_limit_is_one_line_and_leaves_nothing(tmp_path, fmt, tmpfile):
    """ulimit -f (EFBIG), the way a full disk or quota fails (ENOSPC): one line, exit 1, nothing
    left behind (the compressed format's spool included), the existing output untouched."""
    src = write_single(tmp_path / "in.safetensors", _model(scale=4))
    out = tmp_path / "out"
    out.mkdir()
    (out / "o.safetensors").write_bytes(b"old output")
    code = f"""
        import sys
        from pruneplug import cli
        from pruneplug.checkpoint import writers
        writers._O_TMPFILE = {writers._O_TMPFILE if tmpfile else 0}
        sys.exit(cli.main(["prune", {str(src)!r}, "-o", {str(out / 'o.safetensors')!r}, "--sparsity", "0.5",
                           "--format", {fmt!r}, "--masks-out", {str(out / 'm.safetensors')!r}]))
    """
    proc = _run(code, fsize=256 * 1024)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "file too large" in lines[0].lower() or "no space" in lines[0].lower(), lines
    assert _entries(out) == {"o.safetensors"} and (out / "o.safetensors").read_bytes() == b"old output"


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm")
def test_sigterm_cleans_up_like_sigint(tmp_path):
    src = write_single(tmp_path / "in.safetensors", _model())
    for name, sig, expected in (("file", "SIGTERM", 143), ("file", "SIGINT", 130)):
        out = tmp_path / f"out_{sig}"
        out.mkdir()
        code = KILL_AFTER_FIRST_TENSOR.format(signal=sig, call=(
            f"from pruneplug import cli\n"
            f"    from pruneplug.checkpoint import writers\n"
            f"    writers._O_TMPFILE = 0  # named temporaries: their removal is visible\n"
            f"    sys.exit(cli.main(['prune', {str(src)!r}, '-o', {str(out / 'o.safetensors')!r}, "
            f"'--sparsity', '0.5', '--report', {str(out / 'r.json')!r}]))"))
        proc = _run(code)
        assert proc.returncode == expected, (name, sig, proc.returncode, proc.stderr)
        assert "Traceback" not in proc.stderr, proc.stderr
        assert _entries(out) == set(), (sig, _entries(out))


@pytest.mark.parametrize("fmt", ["dense", "sparse-bitmask"])
def test_full_disk_is_one_line_and_leaves_nothing(tmp_path, fmt):
    """ENOSPC (a full disk) from any write or reservation after the first 256 KiB: one line, exit 1,
    nothing left behind, the existing output untouched. The disk is simulated in the child by
    failing the os calls the writers use, as a full file system fails them."""
    src = write_single(tmp_path / "in.safetensors", _model(scale=4))
    out = tmp_path / "out"
    out.mkdir()
    (out / "o.safetensors").write_bytes(b"old output")
    code = f"""
        import errno, os, sys
        from pruneplug import cli
        budget = [256 * 1024]
        def full(real, size_of):
            def call(*args):
                budget[0] -= size_of(args)
                if budget[0] < 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return real(*args)
            return call
        os.pwrite = full(os.pwrite, lambda a: len(memoryview(a[1]).cast("B")))
        os.write = full(os.write, lambda a: len(memoryview(a[1]).cast("B")))
        os.posix_fallocate = full(os.posix_fallocate, lambda a: a[2])
        sys.exit(cli.main(["prune", {str(src)!r}, "-o", {str(out / 'o.safetensors')!r}, "--sparsity", "0.5",
                           "--format", {fmt!r}]))
    """
    proc = _run(code)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "no space" in lines[0].lower(), lines
    assert _entries(out) == {"o.safetensors"} and (out / "o.safetensors").read_bytes() == b"old output"

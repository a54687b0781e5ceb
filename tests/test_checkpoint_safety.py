"""Never lose a byte: output paths that clash, all-or-nothing commits, permissions, corrupt inputs
that must give one line (not a traceback), and what the output can hold (issue 9)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import pruneplug as pp
from pruneplug.checkpoint import open_checkpoint
from pruneplug.errors import CheckpointError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_checkpoint_support import model_tensors, read_safetensors, write_sharded, write_single, run_cli  # noqa: E402


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root``: file contents hashed, links by target, directories by name."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                found[rel] = "-> " + os.readlink(p)
            elif p.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def one_line_error(rc, err, *names):
    assert rc == 1, err
    assert err.startswith("pruneplug prune: error:") and len(err.strip().splitlines()) == 1, err
    for name in names:
        assert name in err, (name, err)


@pytest.fixture
def tensors():
    return model_tensors()


@pytest.fixture
def single(tmp_path, tensors):
    return write_single(tmp_path / "in.safetensors", tensors)


# -- 1. every pair of paths is checked before any work ---------------------------------------------
@pytest.mark.parametrize("extra, roles", [
    (["--report", "{in}"], ["--report", "IN"]),
    (["--report", "./{dir}/../{dir}/in.safetensors"], ["--report", "IN"]),
    (["--report", "{out}"], ["--report", "OUT"]),
    (["--masks-out", "{out}"], ["--masks-out", "OUT"]),
    (["--masks-out", "{dir}/x.safetensors", "--report", "{dir}/x.safetensors"], ["--report", "--masks-out"]),
    (["--report", "{dir}/link.json"], ["--report", "IN"]),   # a symbolic link to IN
    (["--report", "{dir}/hard.json"], ["--report", "IN"]),   # a hard link to IN
])
def test_side_outputs_that_name_in_out_or_each_other_are_refused(tmp_path, capsys, monkeypatch, single, extra, roles):
    monkeypatch.chdir(tmp_path.parent)
    (tmp_path / "link.json").symlink_to(single)
    os.link(single, tmp_path / "hard.json")
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"an existing output, kept when the call is refused")
    before = snapshot(tmp_path)
    fill = {"in": single, "out": out, "dir": tmp_path.name}
    rc, _, err = run_cli(capsys, "prune", single, "-o", out, "--sparsity", "0.5",
                     *[a.format(**fill) for a in extra])
    one_line_error(rc, err, *roles)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("extra", [["--report", "{in}/r.json"], ["--masks-out", "{in}/m.safetensors"],
                                   ["--report", "{in}/config.json"], ["--report", "{out}/r.json"],
                                   ["--masks-out", "{out}/m.safetensors"], ["--report", "{dir}/hard.json"]])
def test_side_outputs_inside_a_checkpoint_directory_are_refused(tmp_path, capsys, tensors, extra):
    src = write_sharded(tmp_path / "in", tensors)
    os.link(src / "config.json", tmp_path / "hard.json")  # a hard link to a file of IN
    out = tmp_path / "out"
    out.mkdir()  # an existing empty OUT directory: the case that failed after writing everything
    before = snapshot(tmp_path)
    rc, _, err = run_cli(capsys, "prune", src, "-o", out, "--sparsity", "0.5",
                     *[a.format(**{"in": src, "out": out, "dir": tmp_path}) for a in extra])
    one_line_error(rc, err, extra[0])
    assert snapshot(tmp_path) == before


def test_in_place_with_a_report_inside_the_input_directory_is_refused_first(tmp_path, capsys, tensors):
    src = write_sharded(tmp_path / "in", tensors)
    before = snapshot(tmp_path)
    rc, _, err = run_cli(capsys, "prune", src, "--in-place", "--sparsity", "0.5", "--report", src / "r.json")
    one_line_error(rc, err, "--report", "IN")
    assert snapshot(tmp_path) == before
    rc, _, err = run_cli(capsys, "prune", src, "--in-place", "--sparsity", "0.5", "--report", tmp_path / "r.json")
    assert rc == 0, err
    assert json.loads((tmp_path / "r.json").read_text())["output"] == str(src)


def test_in_place_of_the_current_directory_is_refused_before_any_work(tmp_path, capsys, monkeypatch, tensors):
    src = write_sharded(tmp_path / "in", tensors)
    before = snapshot(tmp_path)
    monkeypatch.chdir(src)
    rc, _, err = run_cli(capsys, "prune", ".", "--in-place", "--sparsity", "0.5")
    one_line_error(rc, err, "current working directory")
    assert snapshot(tmp_path) == before
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_cli(capsys, "prune", "in", "--in-place", "--sparsity", "0.5")
    assert rc == 0, err


# -- 3. include / exclude as one string --------------------------------------------------------------
def test_include_and_exclude_strings_are_one_regex(tmp_path, single, tensors):
    as_string = pp.prune_checkpoint(single, tmp_path / "a.safetensors", sparsity=0.5, include="mlp", exclude="odd")
    as_list = pp.prune_checkpoint(single, tmp_path / "b.safetensors", sparsity=0.5, include=["mlp"], exclude=["odd"])
    pruned = sorted(t.name for t in as_string.tensors if t.status == "pruned")
    assert pruned == ["model.layers.0.mlp.down_proj.weight", "model.layers.0.mlp.up_proj.weight"]
    assert pruned == sorted(t.name for t in as_list.tensors if t.status == "pruned")
    a, _, meta = read_safetensors(tmp_path / "a.safetensors")
    np.testing.assert_array_equal(a["model.embed_tokens.weight"], tensors["model.embed_tokens.weight"])
    assert json.loads(meta["pruneplug.include"]) == ["mlp"] and json.loads(meta["pruneplug.exclude"]) == ["odd"]
    info = pp.inspect_checkpoint(single, include="mlp", histogram=True)
    assert [t.name for t in info.tensors if t.selected] == [
        "model.layers.0.mlp.down_proj.weight", "model.layers.0.mlp.odd.weight", "model.layers.0.mlp.up_proj.weight"]


# -- 5a. compressed formats: names the format adds must not collide -------------------------------
@pytest.mark.parametrize("fmt, pattern, other", [
    ("sparse-bitmask", ["--sparsity", "0.5"], "x.bitmask"),
    ("sparse-bitmask", ["--sparsity", "0.5"], "x.compressed"),
    ("sparse-bitmask", ["--sparsity", "0.5"], "x.shape"),
    ("sparse-24-bitmask", ["--pattern", "2:4"], "x"),
    ("sparse-24-bitmask", ["--pattern", "2:4"], "x.bitmask"),
])
def test_compressed_name_collisions_are_refused_before_work(tmp_path, capsys, fmt, pattern, other):
    rng = np.random.default_rng(1)
    src = write_single(tmp_path / "c.safetensors", {
        "x.weight": rng.standard_normal((8, 16)).astype(np.float32),
        other: rng.standard_normal((4, 8)).astype(np.float32) if other == "x" else np.arange(3, dtype=np.int64)})
    rc, _, err = run_cli(capsys, "prune", src, "-o", tmp_path / "o.safetensors", "--format", fmt, "--include", "x.weight",
                     *pattern)
    one_line_error(rc, err, "x.weight", "collides")
    assert not (tmp_path / "o.safetensors").exists()


# -- 7. corrupt input: one line, never a traceback ------------------------------------------------
def _raw_safetensors(path: Path, header_text: str, data: bytes = b"\0" * 16) -> Path:
    raw = header_text.encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


CORRUPT_HEADERS = {
    "nested": "[" * 100_000 + "]" * 100_000,
    "huge-int": '{"w": {"dtype": "F32", "shape": [' + "9" * 5000 + '], "data_offsets": [0, 16]}}',
    "dtype-list": '{"w": {"dtype": ["F32"], "shape": [4], "data_offsets": [0, 16]}}',
    "dtype-object": '{"w": {"dtype": {}, "shape": [4], "data_offsets": [0, 16]}}',
    "offsets-float": '{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0.0, 16.0]}}',
    "entry-list": '{"w": [1, 2]}',
    "duplicate": '{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, '
                 '"w": {"dtype": "I32", "shape": [4], "data_offsets": [0, 16]}}',
}


@pytest.mark.parametrize("case", sorted(CORRUPT_HEADERS))
def test_corrupt_safetensors_header_is_one_line(tmp_path, capsys, case):
    src = _raw_safetensors(tmp_path / "bad\nname.safetensors", CORRUPT_HEADERS[case])
    for argv in (["prune", src, "-o", tmp_path / "o.safetensors", "--sparsity", "0.5"], ["inspect", src]):
        rc, _, err = run_cli(capsys, *argv)
        assert rc == 1 and len(err.strip().splitlines()) == 1, err
        assert "bad\\nname.safetensors" in err  # the newline in the name is escaped
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]


def test_duplicate_tensor_with_conflicting_declarations_is_refused(tmp_path):
    src = _raw_safetensors(tmp_path / "d.safetensors", CORRUPT_HEADERS["duplicate"])
    with pytest.raises(CheckpointError, match="'w' is declared twice"):
        open_checkpoint(src)


@pytest.mark.parametrize("index", [
    {"weight_map": {"a": 3}}, {"weight_map": {"a": None}}, {"weight_map": {"a": ["s.safetensors"]}},
    {"weight_map": {"a": "s.safetensors"}, "metadata": ["x"]},
    {"weight_map": {"a": "s.safetensors"}, "metadata": "x"},
    {"weight_map": []}, [1, 2],
])
def test_corrupt_sharded_index_is_one_line(tmp_path, capsys, index, tensors):
    src = write_sharded(tmp_path / "in", tensors)
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    rc, _, err = run_cli(capsys, "inspect", src)
    assert rc == 1 and "corrupt index" in err and len(err.strip().splitlines()) == 1, err


def test_deeply_nested_index_is_one_line(tmp_path, capsys, tensors):
    src = write_sharded(tmp_path / "in", tensors)
    (src / "model.safetensors.index.json").write_text('{"weight_map": ' + "[" * 100_000 + "]" * 100_000 + "}")
    rc, _, err = run_cli(capsys, "prune", src, "-o", tmp_path / "o", "--sparsity", "0.5")
    one_line_error(rc, err, "nested too deeply")


def test_shard_outside_the_directory_is_named_as_such(tmp_path, capsys, tensors):
    src = write_sharded(tmp_path / "in", tensors, shards=1)
    (tmp_path / "outside").mkdir()
    (src / "model-00001-of-00001.safetensors").rename(tmp_path / "outside" / "x.safetensors")
    index = json.loads((src / "model.safetensors.index.json").read_text())
    for target in ("../outside/x.safetensors", str(tmp_path / "outside" / "x.safetensors")):
        index["weight_map"] = {k: target for k in index["weight_map"]}
        (src / "model.safetensors.index.json").write_text(json.dumps(index))
        rc, _, err = run_cli(capsys, "inspect", src)
        assert rc == 1 and "outside the checkpoint directory" in err and "missing" not in err, err


def _npz_with_comment(path: Path, arrays: dict, comment: bytes, extra: dict | None = None) -> Path:
    np.savez(path, **arrays)
    with zipfile.ZipFile(path, "a") as zf:
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
        zf.comment = comment
    return path


@pytest.mark.parametrize("dtypes", ["not json", '["w"]', '{"w": ["bfloat16"]}', '{"w": {}}'])
def test_corrupt_npz_dtype_comment_is_one_line(tmp_path, capsys, dtypes):
    src = _npz_with_comment(tmp_path / "m.npz", {"w": np.ones((4, 4), np.uint16)},
                            json.dumps({"pruneplug.dtypes": dtypes}).encode())
    rc, _, err = run_cli(capsys, "prune", src, "-o", tmp_path / "o.npz", "--sparsity", "0.5", "--include", "w")
    one_line_error(rc, err, "pruneplug.dtypes")
    assert not (tmp_path / "o.npz").exists()


def test_npz_declared_bfloat16_over_float32_is_refused(tmp_path, capsys):
    src = _npz_with_comment(tmp_path / "m.npz", {"w": np.ones((8, 8), np.float32)},
                            json.dumps({"pruneplug.dtypes": json.dumps({"w": "bfloat16"})}).encode())
    rc, _, err = run_cli(capsys, "inspect", src)
    assert rc == 1 and "stored as float32" in err and "bfloat16" in err, err


def test_npz_bfloat16_round_trip_still_works(tmp_path):
    import ml_dtypes

    w = np.random.default_rng(2).standard_normal((8, 8)).astype(ml_dtypes.bfloat16)
    src = tmp_path / "m.npz"
    np.savez(src, w=w.view(np.uint16))
    with zipfile.ZipFile(src, "a") as zf:
        zf.comment = json.dumps({"pruneplug.dtypes": json.dumps({"w": "bfloat16"})}).encode()
    info = pp.inspect_checkpoint(src)
    assert info.tensors[0].dtype == "BF16"
    assert open_checkpoint(src).tensors["w"].array().tobytes() == w.tobytes()


def test_npz_members_that_are_not_arrays_are_refused(tmp_path, capsys):
    src = _npz_with_comment(tmp_path / "m.npz", {"w": np.ones((4, 4), np.float32)}, b"",
                            extra={"README.txt": b"keep me"})
    rc, _, err = run_cli(capsys, "prune", src, "-o", tmp_path / "o.npz", "--sparsity", "0.5")
    one_line_error(rc, err, "README.txt")
    assert not (tmp_path / "o.npz").exists()


def test_block_pattern_of_size_zero_is_one_line(tmp_path, capsys, single):
    rc, _, err = run_cli(capsys, "prune", single, "-o", tmp_path / "o.safetensors", "--pattern", "block(0,1)",
                     "--sparsity", "0.5")
    one_line_error(rc, err, "block(0,1)")


def test_missing_input_with_a_newline_in_its_name_is_one_line(tmp_path, capsys):
    rc, _, err = run_cli(capsys, "inspect", tmp_path / "no\nsuch.safetensors")
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "no\\nsuch" in err


def test_os_errors_from_any_command_are_one_line(tmp_path, capsys, single, monkeypatch):
    from pruneplug.checkpoint import cli as checkpoint_cli

    def fails(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(checkpoint_cli, "inspect_checkpoint", fails)
    rc, _, err = run_cli(capsys, "inspect", single)
    assert rc == 1 and err.strip() == "pruneplug inspect: error: OSError: Input/output error"


def test_inspect_into_a_closed_pipe_prints_no_traceback(tmp_path, single):
    big = write_single(tmp_path / "big.safetensors",
                       {f"layer.{i}.weight": np.ones((4, 4), np.float32) for i in range(400)})
    code = ("import sys; from pruneplug.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-c", code, "inspect", "--json", str(big)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.read(10)
    proc.stdout.close()  # what `| head -c 10` does
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert proc.returncode == 1


# -- 11. permissions -----------------------------------------------------------------------------------
@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_in_place_keeps_the_input_mode(tmp_path, capsys, single, tensors, umask_022):
    single.chmod(0o600)
    rc, _, err = run_cli(capsys, "prune", single, "--in-place", "--sparsity", "0.5")
    assert rc == 0, err
    assert _mode(single) == 0o600
    src = write_sharded(tmp_path / "shards", tensors)
    src.chmod(0o750)
    rc, _, err = run_cli(capsys, "prune", src, "--in-place", "--sparsity", "0.5")
    assert rc == 0, err
    assert _mode(src) == 0o750


def test_new_outputs_get_the_umask_mode(tmp_path, capsys, single, tensors, umask_022):
    rc, _, err = run_cli(capsys, "prune", single, "-o", tmp_path / "o.safetensors", "--sparsity", "0.5")
    assert rc == 0 and _mode(tmp_path / "o.safetensors") == 0o644
    src = write_sharded(tmp_path / "shards", tensors)
    rc, _, err = run_cli(capsys, "prune", src, "-o", tmp_path / "new", "--sparsity", "0.5")
    assert rc == 0 and _mode(tmp_path / "new") == 0o755
    (tmp_path / "empty").mkdir(mode=0o755)
    rc, _, err = run_cli(capsys, "prune", src, "-o", tmp_path / "empty", "--sparsity", "0.5")
    assert rc == 0, err
    assert _mode(tmp_path / "empty") == 0o755  # not mkdtemp's 0700


# -- 13. symbolic links in a checkpoint directory are copied as links -----------------------------
def test_symlinks_in_a_directory_are_copied_as_links(tmp_path, capsys, tensors):
    src = write_sharded(tmp_path / "in", tensors)
    (tmp_path / "shared.txt").write_text("outside the checkpoint")
    (src / "vocab.txt").symlink_to("../shared.txt")
    (src / "abs.txt").symlink_to(tmp_path / "shared.txt")
    (tmp_path / "sub").mkdir()
    rc, _, err = run_cli(capsys, "prune", src, "-o", tmp_path / "sub" / "out", "--sparsity", "0.5")
    assert rc == 0, err
    out = tmp_path / "sub" / "out"
    assert (out / "vocab.txt").is_symlink() and (out / "abs.txt").is_symlink()
    assert os.readlink(out / "abs.txt") == str(tmp_path / "shared.txt")
    assert (out / "vocab.txt").resolve() == (tmp_path / "shared.txt").resolve()  # same file, from OUT
    rc, _, err = run_cli(capsys, "prune", src, "--in-place", "--sparsity", "0.5")
    assert rc == 0 and os.readlink(src / "vocab.txt") == "../shared.txt"


def test_plot_path_that_is_the_input_is_refused(tmp_path, capsys, single, tensors):
    pytest.importorskip("matplotlib")
    before = single.read_bytes()
    rc, _, err = run_cli(capsys, "inspect", single, "--plot", tmp_path / "." / single.name)
    assert rc == 1 and "--plot" in err and "IN" in err and single.read_bytes() == before
    src = write_sharded(tmp_path / "d", tensors)
    rc, _, err = run_cli(capsys, "inspect", src, "--plot", src / "config.json")
    assert rc == 1 and "inside the IN directory" in err

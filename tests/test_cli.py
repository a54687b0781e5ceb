"""The command line: `pruneplug example` and `pruneplug backends`."""

import json
import subprocess
import sys

import numpy as np

from pruneplug.cli import main
from pruneplug.example import kaiming_uniform, run_example


def test_example_prints_computed_numbers(capsys):
    assert main(["example", "--seed", "7"]) == 0
    out = capsys.readouterr().out
    numbers = run_example(seed=7)
    assert f"{numbers['l1'].mean:.6f}" in out and f"{numbers['l2'].std:.6f}" in out
    assert "Valid 2:4 groups: 16/16" in out
    assert "zeros after pruning: 64 (50.0%)" in out
    assert numbers["total"] == 128 and numbers["zeros_after"] == 64


def test_example_seed_is_reproducible_and_matters():
    assert run_example(seed=3)["l1"] == run_example(seed=3)["l1"]
    assert run_example(seed=3)["l1"] != run_example(seed=4)["l1"]


def test_kaiming_uniform_bound():
    w = kaiming_uniform(8, 16, np.random.default_rng(0))
    assert w.shape == (8, 16) and w.dtype == np.float32
    assert np.abs(w).max() <= np.sqrt(6 / 16)


def test_backends_command_json(capsys):
    assert main(["backends", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["numpy"]["available"] is True
    assert "cuda" in rows and (rows["cuda"]["available"] or rows["cuda"]["reason"])


def test_backends_command_table(capsys):
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:2] == ["backend", "available"]
    assert any(line.startswith("numpy") for line in out.splitlines())


def test_console_script_runs_example():
    result = subprocess.run([sys.executable, "-m", "pruneplug.cli", "example"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "Pruning summary" in result.stdout


def test_user_error_is_one_line_and_nonzero(capsys):
    assert main(["example", "--backend", "nope"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pruneplug example: error: backend='nope' is not registered") and "Traceback" not in err


def test_the_command_line_imports_neither_torch_nor_transformers_to_start():
    """Every command builds the whole parser; commands that need no torch (prune by magnitude,
    inspect) must not pay ~1 s and 180 MB for it (issue 22 measured exactly that regression)."""
    import subprocess
    import sys

    code = ("import sys; from pruneplug.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers', 'ml_dtypes') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out

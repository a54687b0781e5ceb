"""CUDA_EMU_SANITIZE=1: the -fsanitize=address,undefined build catches out-of-bounds accesses and
misaligned vector loads.  Runs in subprocesses with libasan preloaded (cuda_emu.sanitizer_env())."""

import subprocess
import sys
from pathlib import Path

import pytest

import cuda_emu

RUNNER = Path(__file__).resolve().parent / "_sanitize_runner.py"


@pytest.fixture(scope="module")
def san_env():
    if cuda_emu.libasan_path() is None:
        pytest.skip("libasan is not installed (g++ -print-file-name=libasan.so names no file): "
                    "no sanitizer build can run here")
    return cuda_emu.sanitizer_env()


def _run(case, env):
    return subprocess.run([sys.executable, str(RUNNER), case], env=env, capture_output=True, text=True,
                          timeout=300)


def test_sanitizer_env_contents(san_env):
    assert "libasan" in san_env["LD_PRELOAD"]
    assert "detect_leaks=0" in san_env["ASAN_OPTIONS"]
    assert san_env["CUDA_EMU_SANITIZE"] == "1"


def test_correct_kernels_run_clean_under_sanitizer(san_env):
    r = _run("ok", san_env)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "CASE-COMPLETED ok" in r.stdout


@pytest.mark.parametrize("case", ["oob_write", "oob_write_view"])
def test_out_of_bounds_write_caught(san_env, case):
    r = _run(case, san_env)
    assert r.returncode != 0
    assert "CASE-COMPLETED" not in r.stdout
    assert "AddressSanitizer: heap-buffer-overflow" in r.stderr, r.stderr[-4000:]
    assert "in oob_write" in r.stderr


def test_misaligned_vector_load_caught(san_env):
    r = _run("misaligned_vec", san_env)
    assert r.returncode != 0
    assert "misaligned address" in r.stderr and "uint4" in r.stderr, r.stderr[-4000:]


def test_dynamic_shared_read_past_request_caught(san_env):
    r = _run("dyn_overflow_read", san_env)
    assert r.returncode != 0
    assert "AddressSanitizer" in r.stderr and "in dyn_overflow" in r.stderr, r.stderr[-4000:]

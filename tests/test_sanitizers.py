"""The C extension built with AddressSanitizer and UBSan, and the conformance kit run under it.

The build goes into a temporary directory (``pip install --target``), so the normal install is
untouched; the kit runs in a subprocess with libasan preloaded (Python itself is not instrumented).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _libasan() -> str | None:
    try:
        path = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return path if os.path.isabs(path) and os.path.exists(path) else None


@pytest.mark.slow
def test_conformance_kit_under_asan_and_ubsan(tmp_path):
    libasan = _libasan()
    if libasan is None:
        pytest.skip("gcc's libasan.so is not installed here, so no sanitizer build can run")
    # Build from a clean copy of the sources: an in-tree build/ directory could hold objects
    # compiled without the sanitizers, which setuptools would happily re-link.
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "csrc", "pruneplug", "backends"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, source / name, **({"ignore": shutil.ignore_patterns("*.so", "__pycache__")}
                                            if (ROOT / name).is_dir() else {}))
    target = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(source)],
        capture_output=True, text=True, env={**os.environ, "PRUNEPLUG_SANITIZE": "1"}, timeout=900,
    )
    assert build.returncode == 0, build.stderr[-4000:]
    env = {
        **os.environ,
        "PYTHONPATH": str(target),
        "LD_PRELOAD": libasan,
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
        "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
        "PRUNEPLUG_DISABLE_PLUGINS": "cuda",
    }
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", "kit_for_cpu.py"],
        cwd=ROOT / "tests" / "sanitize", capture_output=True, text=True, env=env, timeout=1800,
    )
    output = run.stdout[-4000:] + run.stderr[-4000:]
    assert run.returncode == 0, output
    assert "ERROR: AddressSanitizer" not in output and "runtime error:" not in output, output
    assert "passed" in run.stdout.splitlines()[-1], output
    # The sanitized build really is the one that ran.
    probe = subprocess.run(
        [sys.executable, "-c", "import pruneplug_backends.cpu._native as n; print(n.__file__)"],
        cwd=tmp_path, capture_output=True, text=True, env=env,
    )
    assert probe.stdout.strip().startswith(str(target)), probe.stdout + probe.stderr
    symbols = subprocess.run(["nm", "-D", probe.stdout.strip()], capture_output=True, text=True).stdout
    assert "__asan_report_load" in symbols and "__ubsan_handle" in symbols, "the extension is not instrumented"

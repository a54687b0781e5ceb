"""In CI every test extra must really be importable, so that no comparison test skips silently
because an install step broke (a skip there would hide a missing dependency)."""

import importlib
import os

import pytest

TEST_EXTRAS = ["torch", "safetensors", "cupy", "compressed_tensors", "matplotlib", "ml_dtypes"]


@pytest.mark.skipif(os.environ.get("CI") != "true", reason="only enforced in CI (CI=true)")
@pytest.mark.parametrize("module", TEST_EXTRAS)
def test_test_extra_is_importable_in_ci(module):
    importlib.import_module(module)


@pytest.mark.skipif(os.environ.get("CI") != "true", reason="only enforced in CI (CI=true)")
def test_nvrtc_is_available_in_ci():
    """The CUDA compile gate needs NVRTC (nvidia-cuda-nvrtc-cu12), no device."""
    from cupy.cuda import nvrtc

    assert nvrtc.getVersion() >= (12, 0)


@pytest.mark.skipif(os.environ.get("CI") != "true", reason="only enforced in CI (CI=true)")
def test_nvdisasm_is_available_in_ci():
    """The compile gate's SASS checks need nvdisasm (nvidia-cuda-nvdisasm)."""
    from cuda_helpers import disassembler_path

    assert disassembler_path(), "nvdisasm not found"


def test_readme_test_command_is_what_ci_runs():
    """Issue 8 item 13: the README's test command installed a CUDA torch (3.4 GB of nvidia wheels)
    where CI pinned the CPU build first. Both now run the same line, whose install is .ci/install."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    line = "python3 -m venv .venv && .ci/install && .venv/bin/pytest"
    assert line in (root / "README.md").read_text()
    ci = [ln for ln in (root / ".ci" / "run").read_text().splitlines() if ln and not ln.startswith(("#", "set ", "cd "))]
    assert ci == [line], ci
    install = (root / ".ci" / "install").read_text()
    assert '"torch==2.13.0+cpu" --extra-index-url https://download.pytorch.org/whl/cpu' in install
    assert install.index("torch==2.13.0+cpu") < install.index('".[test]"'), "CPU torch must come first"

"""In CI every test extra must really be importable, so that no comparison test skips silently
because an install step broke (a skip there would hide a missing dependency)."""

import importlib
import os

import pytest

TEST_EXTRAS = ["torch", "safetensors", "cupy", "compressed_tensors", "matplotlib", "ml_dtypes", "transformers"]


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
    lines = ["python3 -m venv .venv && .ci/install && .venv/bin/pytest",
             "python3 -m venv .venv-hf && .ci/install .venv-hf hf && .venv-hf/bin/pytest -m hf"]
    readme = (root / "README.md").read_text()
    assert all(line in readme for line in lines)
    ci = [ln for ln in (root / ".ci" / "run").read_text().splitlines() if ln and not ln.startswith(("#", "set ", "cd "))]
    assert ci == lines, ci
    install = (root / ".ci" / "install").read_text()
    assert '"torch==2.13.0+cpu" --extra-index-url https://download.pytorch.org/whl/cpu' in install
    for extras in ('".[test]"', '".[hf]"'):
        assert install.index("torch==2.13.0+cpu") < install.index(extras), "CPU torch must come first"


def test_the_main_environment_pins_the_low_end_of_the_transformers_range():
    """CI tests both ends of the hf extra's transformers range: .venv at its lower bound (this
    constraint), .venv-hf at the newest (an unpinned `pip install ".[hf]"`)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    pyproject = (root / "pyproject.toml").read_text()
    hf = re.search(r'^hf = \[.*"transformers>=([0-9.]+),<6".*\]$', pyproject, re.M)
    assert hf, "the hf extra's transformers range"
    pins = re.findall(r"^transformers==([0-9.]+)$", (root / ".ci" / "constraints-low.txt").read_text(), re.M)

    def release(version):  # "4.53" and "4.53.0" are the same release
        parts = [int(part) for part in version.split(".")]
        return parts + [0] * (3 - len(parts))

    assert [release(pin) for pin in pins] == [release(hf.group(1))], (pins, hf.group(1))
    assert "--constraint .ci/constraints-low.txt" in (root / ".ci" / "install").read_text()

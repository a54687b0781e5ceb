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

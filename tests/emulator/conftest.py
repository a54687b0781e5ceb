"""Make the CPU emulator under <repo>/tools importable and share the compiled test modules."""

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
if str(ROOT / "tools") not in sys.path:
    sys.path.insert(0, str(ROOT / "tools"))

import cuda_emu  # noqa: E402

KERNEL_NAMES = ["block_sum<int, 128>", "block_sum<double, 64>", "block_max<256>"]


def kernel_source(name: str) -> str:
    return (HERE / name).read_text()


@pytest.fixture(scope="session")
def kernels():
    """kernels.cu compiled once (forward schedule unless a test overrides it)."""
    return cuda_emu.Module(kernel_source("kernels.cu"), options=("-std=c++17",), name_expressions=KERNEL_NAMES)


@pytest.fixture(scope="session")
def bugs():
    return cuda_emu.Module(kernel_source("bug_kernels.cu"))


@pytest.fixture(scope="session")
def kernel_names():
    return list(KERNEL_NAMES)

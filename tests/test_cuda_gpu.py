"""The CUDA backend on a real device: the conformance kit plus device-only checks.

Runs wherever ``cupy.is_available()``; elsewhere every test skips with the reason. (On the machines
this backend was written on there is no GPU: these tests have never run; see docs/cuda.md.)
"""

from __future__ import annotations

import numpy as np
import pytest

import pruneplug as pp
from pruneplug.testing import parametrize_backend_checks, run_check, tricky_array


def _no_device_reason() -> str | None:
    try:
        import cupy
    except ImportError:
        return "no CUDA device: cupy is not installed"
    try:
        if cupy.is_available():
            return None
        cupy.cuda.runtime.getDeviceCount()
        return "no CUDA device: cupy.is_available() is False"
    except Exception as exc:  # noqa: BLE001
        return f"no CUDA device: {type(exc).__name__}: {exc}"


REASON = _no_device_reason()
pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _skip_without_device():
    if REASON is not None:
        pytest.skip(REASON)


@parametrize_backend_checks("cuda")
def test_conformance_gpu(backend_check):
    run_check(backend_check)


def test_backend_is_available_and_preferred():
    info = {s.name: s for s in pp.backends()}["cuda"]
    assert info.available, info.reason


def test_large_selection_matches_reference():
    import cupy

    import pruneplug_backends.numpy as ref
    from pruneplug_backends.cuda import backend

    rng = np.random.default_rng(0)
    for dtype in ("float32", "float16", "float64"):
        x = (rng.integers(-3000, 3000, 3_000_017) / 64).astype(dtype)
        for k in (1, 1_500_000, 3_000_016):
            got = backend().unstructured_mask(cupy.asarray(x), k, "abs")
            exp = ref.pruneplug_unstructured_mask(values=x, k=k, transform="abs")
            assert np.array_equal(cupy.asnumpy(got), exp), (dtype, k)


def test_importance_deterministic_and_close():
    import cupy

    import pruneplug_backends.numpy as ref
    from pruneplug_backends.cuda import backend

    x = tricky_array((2_000_003,), "float32", seed=3)
    s1, st1 = backend().importance(cupy.asarray(x), "l2")
    s2, st2 = backend().importance(cupy.asarray(x), "l2")
    assert st1 == st2
    rs, rst = ref.pruneplug_importance(weights=x, method="l2")
    assert np.array_equal(cupy.asnumpy(s1).view(np.uint32), rs.view(np.uint32))
    assert st1[:2] == rst[:2]
    assert abs(st1[2] - rst[2]) <= 1e-12 * abs(rst[2]) and abs(st1[3] - rst[3]) <= 1e-12 * abs(rst[3])


def test_other_device_is_rejected():
    import cupy

    from pruneplug.errors import InvalidArgumentError
    from pruneplug_backends.cuda import backend

    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two CUDA devices")
    with cupy.cuda.Device(1):
        x = cupy.ones(100, cupy.float32)
    with cupy.cuda.Device(0), pytest.raises(InvalidArgumentError, match="device 1"):
        backend().unstructured_mask(x, 10, "abs")


def test_out_of_memory_is_a_device_memory_error():
    import cupy

    from pruneplug.errors import DeviceMemoryError
    from pruneplug_backends.cuda import backend

    free, _total = cupy.cuda.runtime.memGetInfo()
    x = cupy.zeros(1, cupy.float32)
    # every key equal: the candidate buffer needs 8 bytes per element; ask for more than exists
    n = int(free // 4 * 0.9)
    try:
        x = cupy.zeros(n, cupy.float32)
    except cupy.cuda.memory.OutOfMemoryError:
        pytest.skip("could not allocate the input")
    with pytest.raises(DeviceMemoryError, match="bytes"):
        backend().prune_unstructured(x, n // 2, "abs")
    assert not bool(cupy.any(x != 0))


def test_torch_cuda_tensors():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    w = torch.randn(256, 512, device="cuda")
    got = pp.prune(w.clone(), 0.5, backend="cuda")
    exp = pp.prune(w.cpu().numpy(), 0.5, backend="numpy")
    assert np.array_equal(got.cpu().numpy(), exp)

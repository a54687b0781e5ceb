"""The CUDA backend on a real device: the conformance kit plus device-only checks.

Runs wherever ``cupy.is_available()``; elsewhere every test skips with the reason. (On the machines
this backend was written on there is no GPU: these tests have never run; see docs/cuda.md.)
"""

from __future__ import annotations

import numpy as np
import pytest

import pruneplug as pp
from pruneplug.testing import parametrize_backend_checks, run_check, tricky_array
from pruneplug.testing_sparse24 import CHECKS as SPARSE24_CHECKS
from pruneplug.testing_sparse24 import sparse_24


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


# The 2:4 checks are in the kit's default list already; naming them keeps them if that changes.
@parametrize_backend_checks("cuda", extra=SPARSE24_CHECKS)
def test_conformance_gpu(backend_check):
    run_check(backend_check)


def test_backend_is_available_and_preferred():
    import cupy

    info = {s.name: s for s in pp.backends()}["cuda"]
    assert info.available, info.reason
    assert "bfloat16" in info.dtypes, info.reason  # the test extras require CuPy >= 14
    _, mask = pp.prune(cupy.arange(64, dtype=cupy.float32), 0.5, return_mask=True)
    assert mask.backend == "cuda" and isinstance(mask.data, cupy.ndarray)
    assert (mask.nnz, mask.num_zeros, mask.sparsity) == (32, 32, 0.5)


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
    s1, st1 = backend().importance(cupy.asarray(x), "square")
    s2, st2 = backend().importance(cupy.asarray(x), "square")
    assert st1 == st2
    rs, rst = ref.pruneplug_importance(weights=x, transform="square")
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

    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    free, _total = cupy.cuda.runtime.memGetInfo()
    # Every key equal (and non-zero, so the check below means something): the candidate buffers
    # need 12 bytes per element (uint32 keys + int64 indices), the input takes 90% of free memory.
    n = int(free // 4 * 0.9)
    try:
        x = cupy.full(n, 1.5, cupy.float32)
    except cupy.cuda.memory.OutOfMemoryError:
        pytest.skip("could not allocate the input")
    try:
        with pytest.raises(DeviceMemoryError, match="bytes"):
            backend().prune_unstructured(x, n // 2, "abs")
        # count_nonzero is a reduction: no n-byte temporary (x != 0 would need one, and fail here)
        assert int(cupy.count_nonzero(x)) == n, "a prune that ran out of memory wrote"
    finally:
        del x
        pool.free_all_blocks()  # the next tests (and PyTorch's allocator) need that memory back


def test_torch_cuda_tensors():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: torch has no CUDA here")
    cpu = torch.randn(256, 512, generator=torch.Generator().manual_seed(5))
    w = cpu.cuda()
    got = pp.prune(w.clone(), 0.5, backend="cuda")
    exp = pp.prune(cpu.numpy(), 0.5, backend="numpy")
    assert got.is_cuda and np.array_equal(got.cpu().numpy(), exp)


def test_torch_bfloat16_cuda_tensors():
    """bfloat16 tensors go through DLPack as int16 bits and come back as bfloat16 tensors; in
    place, fused 2:4 with squares (the backend copies bits, never runs CuPy's bfloat16 kernels)."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: torch has no CUDA here")
    from pruneplug.sparse24 import prune_24

    cpu = torch.randn(128, 256, generator=torch.Generator().manual_seed(6)).to(torch.bfloat16)
    for kwargs in ({"sparsity": 0.5}, {"pattern": "2:4", "method": "l2"}, {"pattern": "row", "sparsity": 0.25}):
        exp = pp.prune(cpu.clone(), backend="numpy", **kwargs)
        got = pp.prune(cpu.cuda(), backend="cuda", **kwargs)
        assert got.is_cuda and got.dtype == torch.bfloat16
        assert torch.equal(got.cpu().view(torch.int16), exp.view(torch.int16)), kwargs
        w = cpu.cuda()
        assert pp.prune(w, backend="cuda", inplace=True, **kwargs) is w
        assert torch.equal(w.cpu().view(torch.int16), exp.view(torch.int16)), kwargs
    for method in ("l1", "l2"):
        got = prune_24(cpu.cuda(), "cutlass", method, backend="cuda")
        exp = prune_24(cpu, "cutlass", method, backend="numpy")
        assert torch.equal(got.values.cpu().view(torch.int16), exp.values.view(torch.int16)), method


def test_in_place_prune_is_ordered_on_torchs_current_stream():
    """Issue 8 item 4: under `with torch.cuda.stream(s)`, the kernels of an in-place prune run on s,
    so the next PyTorch work on s sees the pruned weights. A long sleep kernel queued on s first
    makes a prune on any other stream finish too late (or start too early) to go unnoticed."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: torch has no CUDA here")
    cpu = torch.randn(4096, 1024, generator=torch.Generator().manual_seed(7))
    exp = torch.from_numpy(pp.prune(cpu.numpy(), 0.5, backend="numpy"))
    w = cpu.cuda()
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time queued on s before the prune
        pp.prune(w, 0.5, backend="cuda", inplace=True)
        zeros = (w == 0).sum()  # PyTorch work on s, queued right after
        snapshot = w.clone()
    s.synchronize()
    assert int(zeros) == int((exp == 0).sum())
    assert torch.equal(snapshot.cpu(), exp)


@pytest.mark.parametrize("dtype", ["float16", "float32", "int8"])
@pytest.mark.parametrize("layout", ["cutlass", "ptx"])
def test_compress24_large_matches_reference(dtype, layout):
    import cupy

    from pruneplug.sparse24 import compress_24, decompress_24, prune_24

    w = sparse_24((2048, 4096), dtype, seed=1)
    got = compress_24(cupy.asarray(w), layout, backend="cuda")
    exp = compress_24(w, layout, backend="numpy")
    assert isinstance(got.values, cupy.ndarray) and got.backend == "cuda"
    assert np.array_equal(cupy.asnumpy(got.values).view(np.uint8), exp.values.view(np.uint8))
    assert np.array_equal(cupy.asnumpy(got.metadata), exp.metadata)
    dense = decompress_24(got, backend="cuda")
    assert np.array_equal(cupy.asnumpy(dense).view(np.uint8),
                          decompress_24(exp, backend="numpy").view(np.uint8))
    x = w if dtype == "int8" else tricky_array(w.shape, dtype, seed=2)
    for method in ("l1", "l2"):
        got = prune_24(cupy.asarray(x), layout, method, backend="cuda")
        exp = prune_24(x, layout, method, backend="numpy")
        assert np.array_equal(cupy.asnumpy(got.values).view(np.uint8), exp.values.view(np.uint8)), method
        assert np.array_equal(cupy.asnumpy(got.metadata), exp.metadata), method


def test_compress24_errors_leave_the_device_usable():
    """A rejected weight raises the reference's error and the next call works (the error is a
    word the kernel writes, not a device fault); misaligned views are copied, not launched."""
    import cupy

    from pruneplug.errors import NotNMSparseError
    from pruneplug.sparse24 import compress_24

    w = sparse_24((64, 256), "float16", seed=3)
    w[40, 8:11] = 1
    with pytest.raises(NotNMSparseError) as got:
        compress_24(cupy.asarray(w), backend="cuda")
    with pytest.raises(NotNMSparseError) as exp:
        compress_24(w, backend="numpy")
    assert str(got.value) == str(exp.value)
    w[40, 8:11] = 0
    base = cupy.zeros(w.size + 8, cupy.float16)
    view = base[1:1 + w.size].reshape(w.shape)
    view[...] = cupy.asarray(w)
    got = compress_24(view, backend="cuda")
    exp = compress_24(w, backend="numpy")
    assert np.array_equal(cupy.asnumpy(got.values).view(np.uint16), exp.values.view(np.uint16))
    cupy.cuda.Device().synchronize()


def test_compress24_torch_cuda_tensors():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: torch has no CUDA here")
    from pruneplug.sparse24 import compress_24, decompress_24

    x = sparse_24((128, 256), "float16", seed=4)
    sw = compress_24(torch.from_numpy(x).cuda(), backend="cuda")
    assert sw.values.is_cuda and sw.metadata.dtype == torch.int16
    exp = decompress_24(compress_24(x, backend="numpy"), backend="numpy")  # dropped -0.0 come back +0.0
    got = decompress_24(sw, backend="cuda").cpu().numpy()
    assert np.array_equal(got.view(np.uint16), exp.view(np.uint16))

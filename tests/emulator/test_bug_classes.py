"""Each bug class the emulator claims to catch is caught (and the fixed kernel passes)."""

import numpy as np
import pytest

import cuda_emu


def test_missing_syncthreads_detected_by_some_schedule(bugs):
    x = np.arange(2 * 128, dtype=np.int32) + 100
    ref = np.roll(x.reshape(2, 128), -1, axis=1).ravel()
    wrong = []
    for sched, seed, y in cuda_emu.run_all_schedules(lambda: _run(bugs, "missing_sync", x), seeds=(0, 1, 2)):
        if not np.array_equal(y, ref):
            wrong.append((sched, seed))
    assert wrong, "no schedule exposed the missing __syncthreads"
    # the schedules disagree with each other, which is itself the signal
    outs = {s + str(k): tuple(y) for s, k, y in cuda_emu.run_all_schedules(lambda: _run(bugs, "missing_sync", x))}
    assert len(set(outs.values())) > 1
    # the fixed kernel is right under every schedule
    for _s, _k, y in cuda_emu.run_all_schedules(lambda: _run(bugs, "with_sync", x), seeds=(0, 1, 2)):
        np.testing.assert_array_equal(y, ref)


def _run(mod, name, x):
    y = np.zeros_like(x)
    mod.get_function(name)(x.size // 128, 128, (x, y))
    return y


def test_missing_second_barrier_in_loop_detected():
    # reference: every thread ends with x[(t+iters) % 64] + iters
    code = (__import__("pathlib").Path(__file__).parent / "bug_kernels.cu").read_text()
    x = (np.arange(64, dtype=np.int32) * 7) % 13
    iters = 5
    ref = np.array([x[(t + iters) % 64] + iters for t in range(64)], np.int32)
    bad = 0
    for sched, seed in [("forward", 0), ("reverse", 0), ("random", 1), ("random", 2), ("random", 3)]:
        y = np.zeros(64, np.int32)
        cuda_emu.Module(code, schedule=sched, seed=seed).get_function("missing_sync_loop")(
            1, 64, (x, y, np.int32(iters)))
        bad += not np.array_equal(y, ref)
    assert bad >= 1


def test_early_return_before_barrier_raises(bugs):
    x = np.ones(100, np.float32)
    y = np.zeros(100, np.float32)
    with pytest.raises(cuda_emu.KernelError, match="barrier divergence.*exited"):
        bugs.get_function("early_return")(1, 128, (x, y, np.int32(100)))
    # all threads in range: fine
    bugs.get_function("early_return")(1, 100, (x, y, np.int32(100)))
    np.testing.assert_array_equal(y, 2.0)


def test_threads_at_different_barriers_raise(bugs):
    with pytest.raises(cuda_emu.KernelError, match="different barriers"):
        bugs.get_function("split_barrier")(1, 32, (np.zeros(32, np.int32),))


def test_shuffle_naming_exited_lane_raises(bugs):
    with pytest.raises(cuda_emu.KernelError, match=r"__shfl_sync.*lane 7.*exited"):
        bugs.get_function("shfl_exited")(1, 32, (np.zeros(32, np.int32), np.zeros(32, np.int32)))


def test_shuffle_reading_lane_outside_mask_raises(bugs):
    with pytest.raises(cuda_emu.KernelError, match="not in the mask"):
        bugs.get_function("shfl_outside_mask")(1, 32, (np.zeros(32, np.int32),))


def test_vote_mask_without_calling_lane_raises(bugs):
    with pytest.raises(cuda_emu.KernelError, match="does not include the calling lane 0"):
        bugs.get_function("ballot_bad_mask")(1, 32, (np.zeros(32, np.uint32),))


def test_full_mask_in_partial_warp_raises():
    code = 'extern "C" __global__ void k(int* o) { o[threadIdx.x] = __shfl_sync(0xffffffffu, (int)threadIdx.x, 0); }'
    fn = cuda_emu.Module(code).get_function("k")
    fn(1, 64, (np.zeros(64, np.int32),))
    with pytest.raises(cuda_emu.KernelError, match="does not exist"):
        fn(1, 48, (np.zeros(48, np.int32),))


def test_deadlock_shuffle_vs_barrier_raises(bugs):
    with pytest.raises(cuda_emu.KernelError, match="deadlock"):
        bugs.get_function("shfl_vs_barrier")(1, 32, (np.zeros(1, np.int32),))


def test_misaligned_ldg_raises_without_sanitizer(bugs):
    x = np.zeros(64, np.uint32)
    with pytest.raises(cuda_emu.KernelError, match="misaligned"):
        bugs.get_function("misaligned_ldg")(1, 4, (x, np.zeros(4, np.uint32)))


def test_dynamic_shared_overflow_raises(bugs):
    fn = bugs.get_function("dyn_overflow")
    y = np.zeros(32, np.int32)
    fn(1, 32, (y,), shared_mem=4 * 32)
    with pytest.raises(cuda_emu.KernelError, match="beyond the 124 bytes"):
        fn(1, 32, (y,), shared_mem=4 * 31)


def test_crash_becomes_kernel_error(bugs):
    with pytest.raises(cuda_emu.KernelError, match="segmentation fault"):
        bugs.get_function("null_deref")(1, 4, (np.zeros(4, np.int32),))
    # the process and the emulator are still usable afterwards
    y = np.zeros(32, np.int32)
    bugs.get_function("with_sync")(1, 32, (np.arange(32, dtype=np.int32), y))
    np.testing.assert_array_equal(y, np.roll(np.arange(32), -1))


def test_device_assert_becomes_kernel_error():
    code = '#include <assert.h>\nextern "C" __global__ void k(int* o) { assert(o[threadIdx.x] == 0); }'
    fn = cuda_emu.Module(code).get_function("k")
    fn(1, 4, (np.zeros(4, np.int32),))
    with pytest.raises(cuda_emu.KernelError, match="assertion"):
        fn(1, 4, (np.array([0, 0, 5, 0], np.int32),))


def test_static_shared_over_48k_raises(bugs):
    fn = bugs.get_function("too_much_shared")
    assert fn.static_shared_bytes == 65536
    with pytest.raises(cuda_emu.KernelError, match="static __shared__"):
        fn(1, 32, (np.zeros(32, np.int32),))


def test_static_shared_size_is_per_kernel(kernels):
    assert kernels.get_function("block_sum<int, 128>").static_shared_bytes == 512
    assert kernels.get_function("block_sum<double, 64>").static_shared_bytes == 512
    assert kernels.get_function("block_max<256>").static_shared_bytes == 1024
    assert kernels.get_function("warp_ops").static_shared_bytes == 0


@pytest.mark.parametrize("grid,block,match", [
    (1, 1025, "1024"), (1, (32, 32, 2), "1024"), (1, (1, 1, 65), "z=65"), (1, (2048, 1, 1), "x=2048"),
    (0, 32, "grid dimension x=0"), ((1, 70000), 32, "y=70000"), (1, 0, "block dimension x=0"),
])
def test_launch_limits(kernels, grid, block, match):
    with pytest.raises(cuda_emu.KernelError, match=match):
        kernels.get_function("fmul_kernel")(grid, block, (np.zeros(1, np.float32),) * 3 + (np.int32(0),))


def test_dynamic_shared_limit(kernels):
    fn = kernels.get_function("dyn_reverse")
    x = np.zeros(32, np.float32)
    with pytest.raises(cuda_emu.KernelError, match="dynamic shared memory"):
        fn(1, 32, (x, x.copy()), shared_mem=48 * 1024 + 4)
    fn.max_dynamic_shared_size_bytes = 64 * 1024   # opt in, like cupy's attribute
    fn(1, 32, (x, x.copy()), shared_mem=48 * 1024 + 4)
    fn.max_dynamic_shared_size_bytes = 0


def test_compile_error_has_log():
    with pytest.raises(cuda_emu.CompileError) as ei:
        cuda_emu.Module('extern "C" __global__ void k(int* o) { o[0] = undefined_name; }')
    assert "undefined_name" in ei.value.log


def test_fp16_header_is_a_clear_compile_error():
    with pytest.raises(cuda_emu.CompileError, match="cuda_fp16.h> is not supported"):
        cuda_emu.Module('#include <cuda_fp16.h>\nextern "C" __global__ void k(__half* o) {}')


def test_sanitize_without_libasan_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CUDA_EMU_SANITIZE", "1")
    with pytest.raises(cuda_emu.SanitizerError, match="sanitizer_env"):
        cuda_emu.Module('extern "C" __global__ void k(int* o) { }')


# --- get_function is as strict as cupy.RawModule ---------------------------------------------
def test_uninstantiated_template_is_not_found(kernels):
    """A template instantiation outside name_expressions does not exist in the compiled module:
    CuPy's get_function fails with CUDA_ERROR_NOT_FOUND, and so does the emulator's (it used to
    compile any name it was asked for, which hid a kernel the backend launched but never
    instantiated)."""
    assert kernels.get_function("block_sum<int, 128>").num_params == 3  # instantiated: found
    for name in ("block_sum<float, 128>", "block_sum<int, 64>", "block_max<128>", "no_such_kernel"):
        with pytest.raises(cuda_emu.NotFoundError, match="CUDA_ERROR_NOT_FOUND") as exc:
            kernels.get_function(name)
        assert name in str(exc.value) and isinstance(exc.value, KeyError)


def test_extern_c_kernels_need_no_name_expression(bugs):
    """An extern "C" kernel has an unmangled symbol: found by its name, as with CuPy."""
    assert bugs.get_function("with_sync").num_params >= 1

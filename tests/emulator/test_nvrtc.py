"""The example kernels compile with NVRTC as well (the compiler CuPy's RawModule uses), proving
that the spelling the emulator accepts -- plain `__shared__`, `extern __shared__ T name[]`, the
intrinsics -- is real CUDA.  Uses CuPy's low-level NVRTC binding, which needs no GPU."""

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

nvrtc = pytest.importorskip("cupy_backends.cuda.libs.nvrtc", reason="CuPy's NVRTC binding is not installed")


def _nvrtc_available():
    try:
        nvrtc.getVersion()
        return True
    except Exception:  # libnvrtc.so missing
        return False


pytestmark = pytest.mark.skipif(not _nvrtc_available(), reason="libnvrtc is not loadable "
                                "(pip install nvidia-cuda-nvrtc-cu12)")


def compile_nvrtc(source: str, names=(), arch="compute_80", extra=()):
    prog = nvrtc.createProgram(source, "kernel.cu", [], [])
    try:
        for n in names:
            nvrtc.addNameExpression(prog, n)
        opts = [f"--gpu-architecture={arch}", "-std=c++17", "-ftz=true", "--device-as-default-execution-space",
                *extra]
        try:
            nvrtc.compileProgram(prog, opts)
        except nvrtc.NVRTCError as e:
            raise AssertionError(f"NVRTC failed: {e}\n{nvrtc.getProgramLog(prog)}") from None
        ptx = nvrtc.getPTX(prog)
        lowered = {n: nvrtc.getLoweredName(prog, n) for n in names}
        return ptx.decode() if isinstance(ptx, bytes) else ptx, lowered
    finally:
        nvrtc.destroyProgram(prog)


@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
def test_example_kernels_compile_with_nvrtc(arch, kernel_names):
    ptx, lowered = compile_nvrtc((HERE / "kernels.cu").read_text(), kernel_names, arch)
    for name in ["warp_ops", "votes", "atomics", "dyn_reverse", "index3d", "intrinsics", "vec_copy",
                 "read_uninit_shared", "fmul_kernel", "scalars", "half_warps", "warp_reduce_match"]:
        assert f".entry {name}(" in ptx, name
    for name, low in lowered.items():
        assert f".entry {low}(" in ptx, name
    assert "shfl.sync.down" in ptx and "shfl.sync.bfly" in ptx and "vote.sync.ballot" in ptx
    assert "bar.red.popc" in ptx          # __syncthreads_count
    assert "ld.global.nc.v4.u32" in ptx   # __ldg of a uint4: a 128-bit load
    assert ".extern .shared .align 16 .b8 buf[]" in ptx   # dynamic shared memory


def test_bug_kernels_compile_with_nvrtc():
    ptx, _ = compile_nvrtc((HERE / "bug_kernels.cu").read_text())
    assert ".entry missing_sync(" in ptx and ".entry early_return(" in ptx


def test_emulator_rejects_what_nvrtc_rejects_for_fp16_header():
    # the emulator refuses <cuda_fp16.h> with a clear message; document that the backend avoids it
    import cuda_emu
    with pytest.raises(cuda_emu.CompileError, match="raw unsigned short"):
        cuda_emu.Module('#include <cuda_fp16.h>\nextern "C" __global__ void k() {}')

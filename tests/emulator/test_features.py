"""Each emulator feature, exercised by a small correct kernel and checked against NumPy exactly."""

import numpy as np
import pytest

import cuda_emu

SCHEDS = [("forward", 0), ("reverse", 0), ("random", 1), ("random", 7)]


@pytest.mark.parametrize("sched,seed", SCHEDS)
def test_block_reduction_exact(kernels, sched, seed):
    rng = np.random.default_rng(0)
    x = rng.integers(-1000, 1000, size=1000).astype(np.int32)
    out = np.zeros(8, np.int32)
    with cuda_emu.using_schedule(sched, seed):
        kernels.get_function("block_sum<int, 128>")(8, 128, (x, out, np.int32(x.size)))
    ref = np.add.reduceat(np.concatenate([x, np.zeros(24, np.int32)]), np.arange(0, 1024, 128))
    np.testing.assert_array_equal(out, ref)


def test_block_reduction_double_template(kernels):
    x = np.arange(200, dtype=np.float64) * 0.5
    out = np.zeros(4, np.float64)
    kernels.get_function("block_sum<double, 64>")(4, 64, (x, out, np.int32(200)))
    ref = [x[i:i + 64].sum() for i in range(0, 256, 64)]
    np.testing.assert_array_equal(out, ref)  # small integers/halves: exact in any order


def test_block_max_grid_stride(kernels):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(5000).astype(np.float32)
    out = np.zeros(3, np.float32)
    kernels.get_function("block_max<256>")(3, 256, (x, out, np.int32(x.size)))
    assert out.max() == x.max()
    for b in range(3):
        idx = np.concatenate([np.arange(s, min(s + 256, 5000)) for s in range(b * 256, 5000, 768)])
        assert out[b] == x[idx].max()


@pytest.mark.parametrize("sched,seed", SCHEDS)
def test_warp_shuffles_exact(kernels, sched, seed):
    rng = np.random.default_rng(2)
    n = 128
    x = rng.integers(-50, 50, size=n).astype(np.int32)
    sd, sx, sc, b8 = (np.zeros(n // 32, np.int32), np.zeros(n, np.int32), np.zeros(n, np.int32),
                      np.zeros(n, np.int32))
    ds = np.zeros(n, np.float64)
    with cuda_emu.using_schedule(sched, seed):
        kernels.get_function("warp_ops")(2, 64, (x, sd, sx, sc, b8, ds))
    w = x.reshape(-1, 32)
    np.testing.assert_array_equal(sd, w.sum(1))
    np.testing.assert_array_equal(sx, np.repeat(w.sum(1), 32))
    np.testing.assert_array_equal(sc, np.cumsum(w, axis=1).ravel())
    np.testing.assert_array_equal(b8, x.reshape(-1, 8)[:, 3].repeat(8))
    np.testing.assert_array_equal(ds, np.repeat(w.sum(1) * 0.5, 32))


def test_votes_and_syncthreads_predicates(kernels):
    rng = np.random.default_rng(3)
    p = (rng.random(128) < 0.5).astype(np.int32)
    p[64:96] = 1   # an all-true warp
    p[96:128] = 0  # an all-false warp
    ballot = np.zeros(4, np.uint32)
    anyall = np.zeros(8, np.int32)
    counts = np.zeros(6, np.int32)
    kernels.get_function("votes")(2, 64, (p, ballot, anyall, counts))
    w = p.reshape(4, 32)
    ref_ballot = (w.astype(np.uint64) << np.arange(32, dtype=np.uint64)).sum(1).astype(np.uint32)
    np.testing.assert_array_equal(ballot, ref_ballot)
    np.testing.assert_array_equal(anyall[0::2], w.any(1))
    np.testing.assert_array_equal(anyall[1::2], w.all(1))
    b = p.reshape(2, 64)
    np.testing.assert_array_equal(counts[0::3], b.sum(1))
    np.testing.assert_array_equal(counts[1::3], b.all(1))
    np.testing.assert_array_equal(counts[2::3], b.any(1))


def test_half_warp_masks_and_syncwarp(kernels):
    out = np.zeros(64, np.int32)
    kernels.get_function("half_warps")(1, 64, (out,))
    lane = np.arange(64) % 32
    np.testing.assert_array_equal(out, np.where(lane < 16, 0, 160) + 8)


@pytest.mark.parametrize("sched", ["forward", "random"])
def test_atomics_across_blocks_exact(kernels, sched):
    blocks, threads = 13, 96
    n = blocks * threads
    ci = np.zeros(2, np.int32)
    cu = np.zeros(1, np.uint32)
    cull = np.zeros(1, np.uint64)
    cf = np.zeros(1, np.float32)
    cd = np.zeros(1, np.float64)
    mn = np.array([0], np.int32)
    mx = np.array([-1], np.int32)
    bits = np.array([0, 0xFFFFFFFF, 0], np.uint32)
    cas = np.zeros(1, np.int32)
    cas16 = np.array([65000], np.uint16)
    with cuda_emu.using_schedule(sched, 3):
        kernels.get_function("atomics")(blocks, threads, (ci, cu, cull, cf, cd, mn, mx, bits, cas, cas16))
    assert ci.tolist() == [n, -2 * n]
    assert cu[0] == 3 * n
    assert cull[0] == n << 33
    assert cf[0] == 0.5 * n and cd[0] == 0.25 * n
    assert mn[0] == -(n - 1) and mx[0] == n - 1
    assert bits.tolist() == [0xFFFFFFFF, 0, n & 1]
    assert cas[0] == n
    assert cas16[0] == (65000 + n) % 65536


@pytest.mark.parametrize("sched", ["forward", "reverse"])
def test_dynamic_shared_memory(kernels, sched):
    x = np.arange(3 * 48, dtype=np.float32)
    y = np.zeros_like(x)
    with cuda_emu.using_schedule(sched):
        kernels.get_function("dyn_reverse")(3, 48, (x, y), shared_mem=48 * 4)
    np.testing.assert_array_equal(y, x.reshape(3, 48)[:, ::-1].ravel())


def test_multidimensional_grid_and_block(kernels):
    nx, ny, nz = 21, 10, 5
    out = np.full(4 * nx * ny * nz, -1, np.int32)
    grid, block = (3, 4, 2), (8, 3, 3)
    kernels.get_function("index3d")(grid, block, (out, np.int32(nx), np.int32(ny), np.int32(nz)))
    o = out.reshape(nz, ny, nx, 4)
    z, y, x = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    np.testing.assert_array_equal(o[..., 0], x + 1000 * y + 1000000 * z)
    lin = (x % 8) + 8 * ((y % 3) + 3 * (z % 3))
    np.testing.assert_array_equal(o[..., 1], lin % 32)
    assert (o[..., 2] == 24).all() and (o[..., 3] == 32).all()


def _brev32(v):
    return int(f"{int(v):032b}"[::-1], 2)


def test_intrinsics(kernels):
    rng = np.random.default_rng(4)
    a = rng.integers(0, 2**32, size=40, dtype=np.uint64).astype(np.uint32)
    a[:3] = [0, 1, 0x80000000]
    b = rng.integers(0, 2**63, size=40, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b[0] = 0
    o32 = np.zeros(8 * 40, np.uint32)
    o64 = np.zeros(4 * 40, np.uint64)
    kernels.get_function("intrinsics")(2, 32, (a, b, o32, o64, np.int32(40)))
    o32 = o32.reshape(40, 8)
    o64 = o64.reshape(40, 4)
    for i in range(40):
        x, y = int(a[i]), int(b[i])
        assert o32[i, 0] == bin(x).count("1")
        assert o32[i, 1] == (32 - x.bit_length())
        assert o32[i, 2] == ((x & -x).bit_length() if x else 0)
        assert o32[i, 3] == _brev32(x)
        assert o32[i, 4] == (x * 0x9E3779B9) >> 32
        sx = x - (1 << 32) if x >= 1 << 31 else x
        assert o32[i, 5] == (min(x, 12345) + (max(sx, -7) & 0xFFFFFFFF) + 3) & 0xFFFFFFFF
        assert o32[i, 6] == x & 0x7F7FFFFF
        assert o32[i, 7] == (x & 0xFFFF) * 3
        assert o64[i, 0] == bin(y).count("1")
        assert o64[i, 1] == 64 - y.bit_length()
        assert o64[i, 2] == int(f"{y:064b}"[::-1], 2)
        assert o64[i, 3] == ((y & -y).bit_length() if y else 0)


def test_vector_loads(kernels):
    src = np.arange(4 * 50, dtype=np.uint32)
    dst = np.zeros_like(src)
    kernels.get_function("vec_copy")(2, 32, (src, dst, np.int32(50)))
    np.testing.assert_array_equal(dst.reshape(50, 4), src.reshape(50, 4)[:, ::-1])


def test_shared_memory_poisoned_each_block(kernels):
    out = np.zeros(3 * 64, np.uint32)
    fn = kernels.get_function("read_uninit_shared")
    for blk in range(3):  # every block starts from fresh poison, even after earlier blocks wrote
        view = out[blk * 64:(blk + 1) * 64]
        fn(1, 64, (view,))
    o = out.reshape(3, 64)
    np.testing.assert_array_equal(o[:, :32], np.tile(np.arange(32, dtype=np.uint32), (3, 1)))
    assert (o[:, 32:] == 0xFFFFFFFF).all()


def test_shared_memory_poisoned_between_blocks_of_one_launch():
    code = r'''
    extern "C" __global__ void k(unsigned* out) {
        __shared__ unsigned s[32];
        out[blockIdx.x * 32 + threadIdx.x] = s[threadIdx.x];   // read before any write
        __syncthreads();
        s[threadIdx.x] = 7;
    }'''
    out = np.zeros(4 * 32, np.uint32)
    cuda_emu.Module(code).get_function("k")(4, 32, (out,))
    assert (out == 0xFFFFFFFF).all()


def test_ftz_mirrors_option(kernels):
    a = np.array([1e-20, 3e-39, 1.0], np.float32)
    b = np.array([1e-20, 1.0, 3e-39], np.float32)  # products: denormal, denormal input, denormal input
    c = np.zeros(3, np.float32)
    kernels.get_function("fmul_kernel")(1, 32, (a, b, c, np.int32(3)))
    np.testing.assert_array_equal(c, a * b)
    assert c[0] != 0 and c[1] != 0
    ftz = cuda_emu.Module((pytest.importorskip("pathlib").Path(__file__).parent / "kernels.cu").read_text(),
                          options=("-ftz=true",))
    c2 = np.zeros(3, np.float32)
    ftz.get_function("fmul_kernel")(1, 32, (a, b, c2, np.int32(3)))
    np.testing.assert_array_equal(c2, [0.0, 0.0, 0.0])
    c3 = np.zeros(3, np.float32)
    kernels.get_function("fmul_kernel")(1, 32, (a, b, c3, np.int32(3)))  # MXCSR restored after the launch
    np.testing.assert_array_equal(c3, a * b)
    assert np.float32(1e-20) * np.float32(1e-20) != 0   # and in this (Python) thread too


def test_scalar_parameters_pass_by_value(kernels):
    out = np.zeros(9, np.float64)
    kernels.get_function("scalars")(1, 1, (out, np.int32(-5), np.uint32(4000000000), np.int64(-2**40),
                                           np.uint64(2**63 + 2048), np.float32(1.5), np.float64(-2.25),
                                           np.uint16(65535), np.int8(-3), np.bool_(True)))
    np.testing.assert_array_equal(out, [-5, 4000000000, -2**40, float(2**63 + 2048), 1.5, -2.25, 65535, -3, 1])


def test_run_all_schedules_helper(kernels):
    x = np.arange(256, dtype=np.int32)

    def op():
        out = np.zeros(2, np.int32)
        kernels.get_function("block_sum<int, 128>")(2, 128, (x, out, np.int32(256)))
        return out

    results = cuda_emu.run_all_schedules(op, seeds=(0, 1))
    assert [(s, k) for s, k, _ in results] == [("forward", 0), ("reverse", 0), ("random", 0), ("random", 1)]
    for _s, _k, r in results:
        np.testing.assert_array_equal(r, [x[:128].sum(), x[128:].sum()])


def test_schedule_from_environment(bugs, monkeypatch):
    x = np.arange(64, dtype=np.int32)
    y = np.zeros(64, np.int32)
    monkeypatch.setenv("CUDA_EMU_SCHEDULE", "reverse")
    bugs.get_function("missing_sync")(1, 64, (x, y))
    # reverse order: thread t+1 wrote before thread t reads, except the wrap-around of thread 63
    np.testing.assert_array_equal(y[:63], x[1:])
    monkeypatch.setenv("CUDA_EMU_SCHEDULE", "forward")
    bugs.get_function("missing_sync")(1, 64, (x, y))
    assert (y[:63] == -1).all()  # forward: the neighbour has not written yet -> poison


def test_cache_reuses_library(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_EMU_CACHE", str(tmp_path))
    code = 'extern "C" __global__ void k(int* o) { o[threadIdx.x] = threadIdx.x * 2; }'
    cuda_emu.Module(code)
    libs = sorted(p.name for p in tmp_path.glob("*.so"))
    assert len(libs) == 1
    cuda_emu.Module(code)
    assert sorted(p.name for p in tmp_path.glob("*.so")) == libs
    cuda_emu.Module(code, options=("-DX=1",))
    assert len(list(tmp_path.glob("*.so"))) == 2


def test_defines_and_include_dirs(tmp_path):
    (tmp_path / "inc.cuh").write_text("#define SCALE 3\n")
    code = '#include "inc.cuh"\nextern "C" __global__ void k(int* o) { o[threadIdx.x] = SCALE * OFFSET + (int)threadIdx.x; }'
    o = np.zeros(4, np.int32)
    cuda_emu.Module(code, options=("-I", str(tmp_path), "-DOFFSET=10", "--use_fast_math")).get_function("k")(1, 4, (o,))
    np.testing.assert_array_equal(o, [30, 31, 32, 33])


def test_name_expression_function_not_extern_c():
    code = r'''
    namespace pp { template <typename T> __global__ void fill(T* o, T v) { o[threadIdx.x] = v; } }
    __global__ void plain(int* o) { o[threadIdx.x] = 9; }'''
    mod = cuda_emu.Module(code, name_expressions=["pp::fill<float>", "plain"])
    o = np.zeros(4, np.float32)
    mod.get_function("pp::fill<float>")(1, 4, (o, np.float32(2.5)))
    np.testing.assert_array_equal(o, 2.5)
    oi = np.zeros(4, np.int32)
    mod.get_function("plain")(1, 4, (oi,))
    np.testing.assert_array_equal(oi, 9)
    with pytest.raises(KeyError):
        mod.get_function("does_not_exist")


def test_cost_per_thread_is_small(kernels):
    import time
    x = np.arange(128 * 256, dtype=np.int32) % 7
    out = np.zeros(256, np.int32)
    fn = kernels.get_function("block_sum<int, 128>")
    fn(256, 128, (x, out, np.int32(x.size)))
    t = time.perf_counter()
    fn(256, 128, (x, out, np.int32(x.size)))
    dt = time.perf_counter() - t
    assert dt / x.size < 20e-6, f"{dt / x.size * 1e6:.1f} us per thread"


def test_same_template_in_two_modules_keeps_separate_poisoned_shared():
    # regression: template statics must not be merged across libraries (STB_GNU_UNIQUE), or the
    # second library's poisoning would miss the storage its kernel really uses
    base = ('template <int N> __global__ void t(unsigned* o) { __shared__ unsigned s[32];\n'
            '  o[blockIdx.x * 32 + threadIdx.x] = s[threadIdx.x]; __syncthreads(); s[threadIdx.x] = N; }\n')
    m1 = cuda_emu.Module(base + "// one\n", name_expressions=["t<1>"])
    m2 = cuda_emu.Module(base + "// two\n", name_expressions=["t<1>"])
    for m in (m1, m2, m1, m2):
        o = np.zeros(64, np.uint32)
        m.get_function("t<1>")(2, 32, (o,))
        assert (o == 0xFFFFFFFF).all()


def test_warp_reduce_and_match(kernels):
    rng = np.random.default_rng(5)
    x = rng.integers(0, 100, size=32).astype(np.uint32)
    out = np.zeros(5 * 32, np.uint32)
    kernels.get_function("warp_reduce_match")(1, 32, (x, out))
    o = out.reshape(32, 5)
    assert (o[:, 0] == x.sum()).all() and (o[:, 1] == x.min()).all()
    assert (o[:, 2].view(np.int32) == (x.astype(np.int64) - 50).max()).all()
    orv = np.bitwise_or.reduce(x)
    xorv = np.bitwise_xor.reduce(x)
    assert (o[:, 3] == orv ^ xorv).all()
    for lane in range(32):
        same = [q for q in range(32) if x[q] % 4 == x[lane] % 4 and q != lane]
        assert o[lane, 4] == sum(1 << q for q in same)


def test_trap_and_stack_overflow_raise():
    code = r'''
    extern "C" __global__ void trap(int* o) { if (threadIdx.x == 2) __trap(); o[threadIdx.x] = 1; }
    __device__ int deep(volatile char* p, int n) { volatile char buf[2048]; buf[0] = (char)n; return n ? deep(buf, n - 1) + buf[0] : p[0]; }
    extern "C" __global__ void overflow(int* o, int n) { volatile char b = 0; o[0] = deep(&b, n); }'''
    mod = cuda_emu.Module(code)
    with pytest.raises(cuda_emu.KernelError, match=r"thread \(2,0,0\).*__trap"):
        mod.get_function("trap")(1, 4, (np.zeros(4, np.int32),))
    o = np.zeros(1, np.int32)
    mod.get_function("overflow")(1, 1, (o, np.int32(3)))
    with pytest.raises(cuda_emu.KernelError, match="stack overflow"):
        mod.get_function("overflow")(1, 1, (o, np.int32(1000)))

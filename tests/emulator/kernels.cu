// Correct example kernels, one per emulator feature.  This file must compile unchanged with
// NVRTC (test_nvrtc.py) and with the CPU emulator (test_features.py).  No #includes.

typedef unsigned int u32;
typedef unsigned long long u64;

// ---- block reduction through static shared memory (template, name expression)
template <typename T, int BS>
__global__ void block_sum(const T* __restrict__ x, T* __restrict__ out, int n) {
    __shared__ T s[BS];
    int t = threadIdx.x;
    int i = blockIdx.x * BS + t;
    s[t] = i < n ? x[i] : T(0);
    __syncthreads();
    for (int k = BS / 2; k > 0; k >>= 1) {
        if (t < k) s[t] += s[t + k];
        __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = s[0];
}

// ---- warp shuffles: down-reduction, xor butterfly, up-scan, width-limited broadcast
extern "C" __global__ void warp_ops(const int* __restrict__ x, int* sum_down, int* sum_xor, int* scan,
                                    int* bcast8, double* dsum) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int lane = threadIdx.x & 31;
    int v = x[i];
    int a = v;
    for (int o = 16; o > 0; o >>= 1) a += __shfl_down_sync(0xffffffffu, a, o);
    if (lane == 0) sum_down[i / 32] = a;
    int b = v;
    for (int o = 1; o < 32; o <<= 1) b += __shfl_xor_sync(0xffffffffu, b, o);
    sum_xor[i] = b;
    int c = v;
    for (int o = 1; o < 32; o <<= 1) {
        int y = __shfl_up_sync(0xffffffffu, c, o);
        if (lane >= o) c += y;
    }
    scan[i] = c;
    bcast8[i] = __shfl_sync(0xffffffffu, v, 3, 8);  // lane 3 of each group of 8
    double d = (double)v * 0.5;
    for (int o = 16; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
    dsum[i] = d;
}

// ---- votes and block-wide predicates
extern "C" __global__ void votes(const int* __restrict__ p, u32* ballot, int* any_all, int* counts) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int pred = p[i];
    u32 bal = __ballot_sync(0xffffffffu, pred);
    int an = __any_sync(0xffffffffu, pred);
    int al = __all_sync(0xffffffffu, pred);
    int cnt = __syncthreads_count(pred);
    int band = __syncthreads_and(pred);
    int bor = __syncthreads_or(pred);
    if ((threadIdx.x & 31) == 0) {
        ballot[i / 32] = bal;
        any_all[2 * (i / 32)] = an;
        any_all[2 * (i / 32) + 1] = al;
    }
    if (threadIdx.x == 0) {
        counts[3 * blockIdx.x] = cnt;
        counts[3 * blockIdx.x + 1] = band;
        counts[3 * blockIdx.x + 2] = bor;
    }
}

// ---- half-warp collectives with partial masks and __syncwarp
extern "C" __global__ void half_warps(int* out) {
    int lane = threadIdx.x & 31;
    u32 mask = lane < 16 ? 0x0000ffffu : 0xffff0000u;
    int v = lane * 10;
    __syncwarp(mask);
    int first = __shfl_sync(mask, v, lane < 16 ? 0 : 16);
    out[threadIdx.x] = first + (int)__popc(__ballot_sync(mask, lane & 1));
}

// ---- atomics across blocks
extern "C" __global__ void atomics(int* ci, u32* cu, u64* cull, float* cf, double* cd, int* mn, int* mx,
                                   u32* bits, int* cas_count, unsigned short* cas16) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    atomicAdd(ci, 1);
    atomicSub(ci + 1, 2);
    atomicAdd(cu, 3u);
    atomicAdd(cull, 1ull << 33);
    atomicAdd(cf, 0.5f);
    atomicAdd(cd, 0.25);
    atomicMin(mn, -i);
    atomicMax(mx, i);
    atomicOr(bits, 1u << (i & 31));
    atomicAnd(bits + 1, ~(1u << (i & 31)));
    atomicXor(bits + 2, 1u);
    // CAS-based increment
    int old = *cas_count, assumed;
    do {
        assumed = old;
        old = atomicCAS(cas_count, assumed, assumed + 1);
    } while (old != assumed);
    unsigned short o16 = *cas16, a16;
    do {
        a16 = o16;
        o16 = atomicCAS(cas16, a16, (unsigned short)(a16 + 1));
    } while (o16 != a16);
}

// ---- dynamic shared memory (plain CUDA spelling)
extern "C" __global__ void dyn_reverse(const float* __restrict__ x, float* __restrict__ y) {
    extern __shared__ float buf[];
    int t = threadIdx.x;
    buf[t] = x[blockIdx.x * blockDim.x + t];
    __syncthreads();
    y[blockIdx.x * blockDim.x + t] = buf[blockDim.x - 1 - t];
}

// ---- multi-dimensional grid and block
extern "C" __global__ void index3d(int* out, int nx, int ny, int nz) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    int z = blockIdx.z * blockDim.z + threadIdx.z;
    if (x < nx && y < ny && z < nz) {
        int lin = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
        out[4 * ((z * ny + y) * nx + x)] = x + 1000 * y + 1000000 * z;
        out[4 * ((z * ny + y) * nx + x) + 1] = lin & 31;  // lane
        out[4 * ((z * ny + y) * nx + x) + 2] = (int)(gridDim.x * gridDim.y * gridDim.z);
        out[4 * ((z * ny + y) * nx + x) + 3] = warpSize;
    }
}

// ---- integer / float intrinsics
extern "C" __global__ void intrinsics(const u32* __restrict__ a, const u64* __restrict__ b, u32* out32,
                                      u64* out64, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    u32 x = a[i];
    u64 y = b[i];
    out32[8 * i + 0] = __popc(x);
    out32[8 * i + 1] = __clz((int)x);
    out32[8 * i + 2] = __ffs((int)x);
    out32[8 * i + 3] = __brev(x);
    out32[8 * i + 4] = __umulhi(x, 0x9e3779b9u);
    out32[8 * i + 5] = umin(x, 12345u) + (u32)max((int)x, -7) + (u32)min(3, 4);
    out32[8 * i + 6] = __float_as_uint(__uint_as_float(x & 0x7f7fffffu));
    out32[8 * i + 7] = __mul24((int)(x & 0xffff), 3);
    out64[4 * i + 0] = (u64)__popcll(y);
    out64[4 * i + 1] = (u64)__clzll((long long)y);
    out64[4 * i + 2] = __brevll(y);
    out64[4 * i + 3] = (u64)__ffsll((long long)y);
}

// ---- 16-byte vector loads (uint4) and __ldg
extern "C" __global__ void vec_copy(const uint4* __restrict__ src, uint4* __restrict__ dst, int n4) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n4) {
        uint4 v = __ldg(src + i);
        dst[i] = make_uint4(v.w, v.z, v.y, v.x);
    }
}

// ---- reading never-written static shared memory shows the poison (0xFF bytes)
extern "C" __global__ void read_uninit_shared(u32* out) {
    __shared__ u32 s[64];
    if (threadIdx.x < 32) s[threadIdx.x] = threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = s[threadIdx.x];  // threads 32..63 read uninitialised memory
}

// ---- float multiply whose result is a float32 denormal (flushed under -ftz=true)
extern "C" __global__ void fmul_kernel(const float* __restrict__ a, const float* __restrict__ b, float* c, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) c[i] = a[i] * b[i];
}

// ---- scalar parameter kinds
extern "C" __global__ void scalars(double* out, int a, unsigned int b, long long c, unsigned long long d,
                                   float e, double f, unsigned short g, signed char h, bool k) {
    out[0] = a; out[1] = b; out[2] = (double)c; out[3] = (double)d; out[4] = e; out[5] = f;
    out[6] = g; out[7] = h; out[8] = k ? 1.0 : 0.0;
}

// ---- grid-stride loop with a partial last block (bounds check before barriers is allowed
//      when every thread still reaches every barrier)
template <int BS>
__global__ void block_max(const float* __restrict__ x, float* __restrict__ out, int n) {
    __shared__ float s[BS];
    float m = -3.0e38f;
    for (int i = blockIdx.x * BS + threadIdx.x; i < n; i += gridDim.x * BS) m = fmaxf(m, x[i]);
    s[threadIdx.x] = m;
    __syncthreads();
    for (int k = BS / 2; k > 0; k >>= 1) {
        if ((int)threadIdx.x < k) s[threadIdx.x] = fmaxf(s[threadIdx.x], s[threadIdx.x + k]);
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = s[0];
}

// ---- sm_80 warp reductions and __match_any_sync
extern "C" __global__ void warp_reduce_match(const u32* __restrict__ x, u32* out) {
    int lane = threadIdx.x & 31;
    u32 v = x[threadIdx.x];
    out[5 * threadIdx.x + 0] = __reduce_add_sync(0xffffffffu, v);
    out[5 * threadIdx.x + 1] = __reduce_min_sync(0xffffffffu, v);
    out[5 * threadIdx.x + 2] = (u32)__reduce_max_sync(0xffffffffu, (int)v - 50);
    out[5 * threadIdx.x + 3] = __reduce_or_sync(0xffffffffu, v) ^ __reduce_xor_sync(0xffffffffu, v);
    out[5 * threadIdx.x + 4] = __match_any_sync(0xffffffffu, v % 4) & ~(1u << lane);
}

// Deliberately buggy kernels: each one exhibits a bug class the emulator claims to catch.
// This file also compiles with NVRTC (test_nvrtc.py): the bugs are semantic, not syntactic.

typedef unsigned int u32;

// missing __syncthreads between the shared write and the neighbour's read
extern "C" __global__ void missing_sync(const int* __restrict__ x, int* __restrict__ y) {
    __shared__ int s[128];
    int t = threadIdx.x;
    s[t] = x[blockIdx.x * blockDim.x + t];
    // __syncthreads();   <- the bug
    y[blockIdx.x * blockDim.x + t] = s[(t + 1) % blockDim.x];
}

// same kernel, fixed
extern "C" __global__ void with_sync(const int* __restrict__ x, int* __restrict__ y) {
    __shared__ int s[128];
    int t = threadIdx.x;
    s[t] = x[blockIdx.x * blockDim.x + t];
    __syncthreads();
    y[blockIdx.x * blockDim.x + t] = s[(t + 1) % blockDim.x];
}

// missing second barrier in a loop: a write-after-read hazard on the shared buffer
extern "C" __global__ void missing_sync_loop(const int* __restrict__ x, int* __restrict__ y, int iters) {
    __shared__ int s[64];
    int t = threadIdx.x;
    int v = x[t];
    for (int it = 0; it < iters; ++it) {
        s[t] = v;
        __syncthreads();
        v = s[(t + 1) & 63] + 1;
        // __syncthreads();   <- the bug: the next iteration's write races with this read
    }
    y[t] = v;
}

// early return before a barrier (out-of-range threads leave)
extern "C" __global__ void early_return(const float* __restrict__ x, float* __restrict__ y, int n) {
    __shared__ float s[256];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    s[threadIdx.x] = x[i];
    __syncthreads();
    y[i] = s[threadIdx.x] * 2.0f;
}

// threads of one block wait at two different barriers
extern "C" __global__ void split_barrier(int* y) {
    if (threadIdx.x < 16) {
        y[threadIdx.x] = 1;
        __syncthreads();
    } else {
        y[threadIdx.x] = 2;
        __syncthreads();
    }
}

// a full-mask shuffle after lane 7 exited
extern "C" __global__ void shfl_exited(const int* __restrict__ x, int* __restrict__ y) {
    int lane = threadIdx.x & 31;
    if (lane == 7) return;
    y[threadIdx.x] = __shfl_sync(0xffffffffu, x[threadIdx.x], 0);
}

// a shuffle reading a lane that is not in the mask
extern "C" __global__ void shfl_outside_mask(int* y) {
    int lane = threadIdx.x & 31;
    if (lane < 16) y[lane] = __shfl_sync(0x0000ffffu, lane, lane + 8);  // lanes 16..23 are not in the mask
}

// a ballot whose mask leaves out the calling lane
extern "C" __global__ void ballot_bad_mask(u32* y) {
    y[threadIdx.x] = __ballot_sync(0xfffffffeu, 1);
}

// deadlock: lane 0 waits at a shuffle that names lanes waiting at __syncthreads
extern "C" __global__ void shfl_vs_barrier(int* y) {
    int lane = threadIdx.x & 31;
    if (lane == 0) {
        y[0] = __shfl_sync(0xffffffffu, 1, 1);
    } else {
        __syncthreads();
    }
}

// writes one element past the end of y
extern "C" __global__ void oob_write(float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) y[i] = 1.0f;  // bug: <= instead of <
}

// reads through a uint4 pointer that is not 16-byte aligned
extern "C" __global__ void misaligned_vec(const u32* __restrict__ x, u32* __restrict__ y) {
    const uint4* p = reinterpret_cast<const uint4*>(x + 1);  // bug: 4-byte offset
    uint4 v = p[threadIdx.x];
    y[threadIdx.x] = v.x + v.y + v.z + v.w;
}

// same, through __ldg (caught without the sanitizer)
extern "C" __global__ void misaligned_ldg(const u32* __restrict__ x, u32* __restrict__ y) {
    uint4 v = __ldg(reinterpret_cast<const uint4*>(x + 1) + threadIdx.x);
    y[threadIdx.x] = v.x + v.y + v.z + v.w;
}

// writes more dynamic shared memory than the launch requested
extern "C" __global__ void dyn_overflow(int* y) {
    extern __shared__ int dbuf[];
    dbuf[threadIdx.x] = threadIdx.x;  // launched with shared_mem = 4 * (blockDim.x - 1)
    __syncthreads();
    y[threadIdx.x] = dbuf[0];
}

// null-pointer dereference
extern "C" __global__ void null_deref(int* y) {
    int* p = 0;
    y[threadIdx.x] = p[threadIdx.x];
}

// 64 KiB of static shared memory (over the 48 KiB limit)
extern "C" __global__ void too_much_shared(int* y) {
    __shared__ int big[16384];
    big[threadIdx.x] = 1;
    __syncthreads();
    y[threadIdx.x] = big[threadIdx.x ^ 1];
}

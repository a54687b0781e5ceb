// pruneplug CUDA backend: the key histogram of the exact selection over many arrays
// (pruneplug/selection.py; the hook pruneplug_key_histogram in pruneplug/hookspecs.py).
//   key_histogram<DT, TR, KEYS>: hist[(1 << bits) + 2] += the histogram of the digit
//       (key >> shift) & (2^bits - 1) of the keys whose key >> (shift + bits) equals `prefix`;
//       keys below / above the prefix counted in hist[0] / hist[last]; non-finite weights counted
//       into the workspace (WS_BAD_COUNT, WS_BAD_FIRST) like check_nonfinite.
// Keys (KEYS): 0 = mag16 (the 15 magnitude bits; bfloat16 squares through `lut`, the smallest
// magnitude with the same float32 square, made on the host), 1 = f32 (the float32 score bits),
// 2 = f64 (the score as float64 bits). Integer code only (see common.cuh: no float32 arithmetic).
// Digit counts are global atomics; below/above/bad are per-thread counts reduced through shared
// memory, one atomic per block. Counts are integers: the result does not depend on the schedule.
#include "common.cuh"

#define KEYS_MAG16 0
#define KEYS_F32 1
#define KEYS_F64 2

template <int DT, int TR, int KEYS>
__device__ __forceinline__ u64 selection_key(typename RawOf<DT>::T r, const u16* __restrict__ lut) {
    if constexpr (KEYS == KEYS_MAG16) {
        if constexpr (DT == DT_BF16 && TR == TR_SQUARE) {
            return (u64)lut[r & 0x7fffu];
        } else {
            return (u64)(r & 0x7fffu);
        }
    } else if constexpr (KEYS == KEYS_F32) {
        return (u64)score_bits<DT, TR>(r);
    } else {
        return (u64)__double_as_longlong(score_to_double<DT>(score_bits<DT, TR>(r)));
    }
}

template <int DT, int TR, int KEYS>
__global__ void __launch_bounds__(PP_BLOCK) key_histogram(const typename RawOf<DT>::T* __restrict__ x, i64 n,
                                                          int shift, int bits, u64 prefix,
                                                          const u16* __restrict__ lut,
                                                          u64* __restrict__ hist, u64* __restrict__ ws) {
    __shared__ u64 counts[3];  // below, above, non-finite
    if (threadIdx.x == 0) counts[0] = counts[1] = counts[2] = 0ull;
    __syncthreads();
    const int top = shift + bits;
    const u64 dmask = (1ull << bits) - 1ull;
    const u64 last = (1ull << bits) + 1ull;
    u64 below = 0ull, above = 0ull, bad = 0ull, first = ~0ull;
    const i64 stride = (i64)gridDim.x * (i64)blockDim.x;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        typename RawOf<DT>::T r = x[i];
        if (is_bad<DT, TR>(r)) {
            ++bad;
            first = first < (u64)i ? first : (u64)i;
            continue;
        }
        u64 key = selection_key<DT, TR, KEYS>(r, lut);
        u64 hi = top >= 64 ? 0ull : key >> top;
        if (hi == prefix) {
            atomicAdd(&hist[1 + ((key >> shift) & dmask)], 1ull);
        } else if (hi < prefix) {
            ++below;
        } else {
            ++above;
        }
    }
    if (below) atomicAdd(&counts[0], below);
    if (above) atomicAdd(&counts[1], above);
    if (bad) atomicMax(&ws[WS_BAD_FIRST], ~first);
    if (bad) atomicAdd(&counts[2], bad);
    __syncthreads();
    if (threadIdx.x == 0) {
        if (counts[0]) atomicAdd(&hist[0], counts[0]);
        if (counts[1]) atomicAdd(&hist[last], counts[1]);
        if (counts[2]) atomicAdd(&ws[WS_BAD_COUNT], counts[2]);
    }
}

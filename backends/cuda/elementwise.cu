// pruneplug CUDA backend: streaming element-wise kernels.
//   check_nonfinite<DT, TR>: count non-finite values and find the first (the check that must come
//                            before an in-place write or a write into a caller's `out`);
//   apply_mask<DT>:          weights[~mask] = +0.0 in place; kept entries keep their bits; vectors
//                            with nothing to prune are not written.
//   fill_mask:               out[:] = value (k == 0 / k == n).
#include "common.cuh"

template <int DT, int TR>
__global__ void __launch_bounds__(PP_BLOCK) check_nonfinite(const typename RawOf<DT>::T* __restrict__ x, i64 n,
                                                            int vec, u64* __restrict__ ws) {
    typedef typename RawOf<DT>::T R;
    constexpr int V = 16 / sizeof(R);
    u64 bad = 0ull, first = ~0ull;
    for_each_lane_vector<R>(x, n, vec, [&](i64 e, const R* v) {
#pragma unroll
        for (int j = 0; j < V; ++j) {
            if (e + j < n && is_bad<DT, TR>(v[j])) {
                ++bad;
                first = first < (u64)(e + j) ? first : (u64)(e + j);
            }
        }
    });
    report_bad(ws, bad, first);
}

template <int DT>
__global__ void __launch_bounds__(PP_BLOCK) apply_mask(typename RawOf<DT>::T* __restrict__ x,
                                                       const u8* __restrict__ mask, i64 n, int vec,
                                                       int vec_mask) {
    typedef typename RawOf<DT>::T R;
    constexpr int V = 16 / sizeof(R);
    for_each_vector_index<V>(n, [&](i64 e) {
        bool prune[V];
        if (vec_mask && e + V <= n) {
            u64 w;
            if constexpr (V == 8) w = *reinterpret_cast<const u64*>(mask + e);
            else if constexpr (V == 4) w = *reinterpret_cast<const u32*>(mask + e);
            else w = *reinterpret_cast<const u16*>(mask + e);
#pragma unroll
            for (int j = 0; j < V; ++j) prune[j] = ((w >> (8 * j)) & 0xffull) == 0ull;
        } else {
#pragma unroll
            for (int j = 0; j < V; ++j) prune[j] = e + j < n && mask[e + j] == 0;
        }
        bool any = false;
#pragma unroll
        for (int j = 0; j < V; ++j) any = any || prune[j];
        if (!any) return;  // nothing to write: the weights are not even read
        R v[V];
        load_lanes<R>(x, e, n, vec, v);
        zero_lanes<R>(x, e, n, vec, v, prune);
    });
}

__global__ void __launch_bounds__(PP_BLOCK) fill_mask(u8* __restrict__ out, i64 n, int value) {
    for (i64 e = (i64)blockIdx.x * PP_BLOCK + threadIdx.x; e < n; e += (i64)gridDim.x * PP_BLOCK)
        out[e] = (u8)value;
}

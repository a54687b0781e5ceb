// pruneplug CUDA backend: block / row / column masks.
//
// block_sums<DT, TR>: one thread per block sums its scores in float64, from 0.0, in row-major
// order inside the block (the contract's order: bit-identical to the reference), checks for
// non-finite values, and writes the sum's ordered 64-bit key (NaN sums above everything). The
// exact-k selection of select.cu then runs on those keys (DT_KEY64), producing one keep byte per
// block, and block_expand writes the element mask.
#include "common.cuh"

template <int DT, int TR>
__global__ void __launch_bounds__(PP_BLOCK) block_sums(const typename RawOf<DT>::T* __restrict__ x, i64 cols,
                                                       i64 bh, i64 bw, i64 nblocks, i64 bcols,
                                                       u64* __restrict__ keys, u64* __restrict__ ws) {
    i64 b = (i64)blockIdx.x * PP_BLOCK + threadIdx.x;
    if (b >= nblocks) return;
    i64 r0 = (b / bcols) * bh;
    i64 c0 = (b % bcols) * bw;
    double s = 0.0;
    u64 bad = 0ull, first = ~0ull;
    for (i64 r = r0; r < r0 + bh; ++r) {
        for (i64 c = c0; c < c0 + bw; ++c) {
            i64 at = r * cols + c;
            typename RawOf<DT>::T v = x[at];
            if (is_bad<DT, TR>(v)) {
                ++bad;
                first = first < (u64)at ? first : (u64)at;
            }
            s = s + score_to_double<DT>(score_bits<DT, TR>(v));
        }
    }
    report_bad(ws, bad, first);
    keys[b] = double_sum_key(s);
}

// out[r, c] = bkeep[(r / bh) * bcols + c / bw]; thread per element.
__global__ void __launch_bounds__(PP_BLOCK) block_expand(const u8* __restrict__ bkeep, i64 n, i64 cols, i64 bh,
                                                         i64 bw, i64 bcols, u8* __restrict__ out) {
    i64 e = (i64)blockIdx.x * PP_BLOCK + threadIdx.x;
    if (e >= n) return;
    i64 r = e / cols;
    i64 c = e - r * cols;
    out[e] = bkeep[(r / bh) * bcols + c / bw];
}

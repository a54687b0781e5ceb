// pruneplug CUDA backend: per-row exact selection (the `row_mask` operation).
//
// One block per row. The threshold (the k-th smallest selection key of the row) is found bit by
// bit from the top: each pass counts, over the row, the keys that share the resolved prefix and
// have a 0 in the current bit (a block-wide sum in thread order); every thread takes the same
// decision from the same total, so no shared state but the scan buffer is needed. Keys below the
// threshold are pruned; of the keys equal to it, the first `krem` in column order, found with an
// exclusive scan of per-thread equal counts over contiguous per-thread shares. Integer code only
// (see common.cuh): bit-identical to the NumPy reference whatever -ftz says.
//
// The caller has run check_nonfinite and handles k == 0 and k == cols (fill_mask): here 0 < k < cols.
#include "common.cuh"

template <int DT, int TR>
__global__ void __launch_bounds__(PP_BLOCK) row_select(const typename RawOf<DT>::T* __restrict__ x, i64 cols, i64 k, u8* __restrict__ out) {
    typedef typename KeyOf<DT, TR>::T K;
    constexpr int BITS = 8 * (int)sizeof(K);
    __shared__ u32 scan[2 * PP_BLOCK];
    const typename RawOf<DT>::T* row = x + (i64)blockIdx.x * cols;
    u8* orow = out + (i64)blockIdx.x * cols;
    i64 b0, b1;
    thread_share<i64>(cols, &b0, &b1);

    u64 prefix = 0;  // resolved high bits of the threshold key
    i64 krem = k;    // 1-based rank of the threshold among the keys sharing the prefix
    for (int bit = BITS - 1; bit >= 0; --bit) {
        const u64 high = bit == 63 ? 0ull : ~0ull << (bit + 1);
        u32 zeros = 0;
        for (i64 i = b0; i < b1; ++i) {
            const u64 key = (u64)key_of<DT, TR>(row[i]);
            zeros += ((key & high) == prefix) & !((key >> bit) & 1ull);
        }
        u32 total;
        block_exclusive_scan(zeros, scan, &total);
        if ((i64)total < krem) {  // the threshold has a 1 here
            krem -= (i64)total;
            prefix |= 1ull << bit;
        }
    }
    // prune keys below the threshold, and the first krem keys equal to it in column order
    u32 equal = 0;
    for (i64 i = b0; i < b1; ++i) equal += (u64)key_of<DT, TR>(row[i]) == prefix;
    u32 total;
    u32 rank = block_exclusive_scan(equal, scan, &total);
    for (i64 i = b0; i < b1; ++i) {
        const u64 key = (u64)key_of<DT, TR>(row[i]);
        bool keep = key > prefix;
        if (key == prefix) {
            keep = (i64)rank >= krem;
            ++rank;
        }
        orow[i] = (u8)keep;
    }
}

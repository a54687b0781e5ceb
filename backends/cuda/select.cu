// pruneplug CUDA backend: exact-k unstructured selection (prune exactly k; among equal scores the
// lower flat index is pruned first), as a multi-block radix select on the score keys.
//
// Passes over the input (at most three, mask pass included):
//   1. radix_hist0:   histogram of the top PP_DIGIT key bits (shared-memory histogram per block,
//                     integer atomics into a global one) + the non-finite check.
//      radix_select:  one block finds the digit holding rank k-1 (the threshold's top bits).
//   2. radix_compact: keys whose top digit matches are appended, with their flat index, to a
//                     candidate buffer (warp-aggregated integer atomics).
//   then on the candidates only: cand_hist + radix_select per remaining digit (a fixed number of
//   rounds per key width), eq_count (per-tile count of keys equal to the threshold, integer
//   atomics), scan_tiles (exclusive scan of those counts, one block, fixed order),
//   3. radix_mask:    each tile prunes keys below the threshold and the equal ones whose global
//                     rank (tile offset + in-tile scan, in flat index order) is below `need`;
//                     writes the mask, or zeroes the pruned weights in place.
// Every count is an integer, so the result does not depend on the order of atomics.
#include "common.cuh"

// ---------------------------------------------------------------------------------------------
// pass 1: top-digit histogram + non-finite check
// ---------------------------------------------------------------------------------------------
template <int DT, int TR>
__global__ void __launch_bounds__(PP_BLOCK) radix_hist0(const typename RawOf<DT>::T* __restrict__ x, i64 n,
                                                        int vec, int shift, u64* __restrict__ ghist,
                                                        u64* __restrict__ ws) {
    typedef typename RawOf<DT>::T R;
    constexpr int V = 16 / sizeof(R);
    __shared__ u32 hist[PP_BINS];
    for (int i = threadIdx.x; i < PP_BINS; i += PP_BLOCK) hist[i] = 0u;
    __syncthreads();
    u64 bad = 0ull, first = ~0ull;
    for_each_lane_vector<R>(x, n, vec, [&](i64 e, const R* v) {
#pragma unroll
        for (int j = 0; j < V; ++j) {
            if (e + j < n) {
                if (is_bad<DT, TR>(v[j])) {
                    ++bad;
                    first = first < (u64)(e + j) ? first : (u64)(e + j);
                }
                u32 d = (u32)((u64)key_of<DT, TR>(v[j]) >> shift) & (PP_BINS - 1);
                atomicAdd(&hist[d], 1u);
            }
        }
    });
    report_bad(ws, bad, first);
    __syncthreads();
    for (int i = threadIdx.x; i < PP_BINS; i += PP_BLOCK) {
        u32 c = hist[i];
        if (c) atomicAdd(&ghist[i], (u64)c);
    }
}

// Exclusive scan of one u64 per thread, in thread order, done serially by thread 0 (a fixed order).
// sh: PP_BLOCK + 1 entries; afterwards sh[t] = thread t's exclusive prefix and sh[PP_BLOCK] = the
// total. Returns sh[threadIdx.x]. Barriers inside: called by every thread.
__device__ __forceinline__ u64 serial_exclusive_scan(u64 s, u64* sh) {
    sh[threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        u64 run = 0ull;
        for (int i = 0; i < PP_BLOCK; ++i) {
            u64 c = sh[i];
            sh[i] = run;
            run += c;
        }
        sh[PP_BLOCK] = run;
    }
    __syncthreads();
    return sh[threadIdx.x];
}

// Thread t's share [*b0, *b1) of a[0..count) (thread_share), its sum (*sum), and the sum of the
// shares of threads 0..t-1 (returned; serial_exclusive_scan, so sh[PP_BLOCK] = the total).
// Barriers inside: called by every thread.
template <typename I>
__device__ __forceinline__ u64 share_exclusive_prefix(const u64* a, I count, I* b0, I* b1, u64* sum, u64* sh) {
    thread_share<I>(count, b0, b1);
    u64 s = 0ull;
    for (I b = *b0; b < *b1; ++b) s += a[b];
    *sum = s;
    return serial_exclusive_scan(s, sh);
}

// ---------------------------------------------------------------------------------------------
// one block: find the digit holding rank krem; extend the prefix; clear the histogram
// ---------------------------------------------------------------------------------------------
// first != 0: krem = k_minus_1 (round 0); otherwise krem = ws[WS_KREM].
// Every thread reads WS_KREM/WS_PREFIX *before* the barriers inside share_exclusive_prefix and
// one thread writes them after: without that barrier between every read and the write, a late
// thread could read the new krem, match a bin of its own share and OR a wrong digit into the
// prefix (a data race; it pruned k + 1 entries under the emulator's reverse schedule).
__global__ void __launch_bounds__(PP_BLOCK) radix_select(u64* __restrict__ ghist, u64* __restrict__ ws,
                                                         int shift, int nbins, i64 k_minus_1, int first) {
    __shared__ u64 tsum[PP_BLOCK + 1];
    const u64 krem = first ? (u64)k_minus_1 : ws[WS_KREM];
    const u64 prefix = first ? 0ull : ws[WS_PREFIX];
    int b0, b1;
    u64 s;
    u64 below = share_exclusive_prefix<int>(ghist, nbins, &b0, &b1, &s, tsum);  // barriers: reads above done
    if (krem >= below && krem < below + s) {
        for (int b = b0; b < b1; ++b) {
            u64 c = ghist[b];
            if (krem < below + c) {
                ws[WS_PREFIX] = prefix | ((u64)b << shift);
                ws[WS_KREM] = krem - below;
                ws[WS_BINCOUNT] = c;
                break;
            }
            below += c;
        }
    }
    __syncthreads();
    for (int b = b0; b < b1; ++b) ghist[b] = 0ull;
}

// ---------------------------------------------------------------------------------------------
// pass 2: append the keys whose top digit matches the prefix (with their flat indices)
// ---------------------------------------------------------------------------------------------
template <int DT, int TR>
__global__ void __launch_bounds__(PP_BLOCK) radix_compact(const typename RawOf<DT>::T* __restrict__ x, i64 n,
                                                          int vec, int shift, u64* __restrict__ ws,
                                                          typename KeyOf<DT, TR>::T* __restrict__ ckey,
                                                          i64* __restrict__ cidx, i64 capacity) {
    typedef typename RawOf<DT>::T R;
    typedef typename KeyOf<DT, TR>::T K;
    constexpr int V = 16 / sizeof(R);
    const u64 want = ws[WS_PREFIX] >> shift;
    const u32 lane = threadIdx.x & 31u;
    // Every lane of a warp runs the same iterations (the loop bounds are block-uniform, and rows
    // past n are visited too), so the warp-wide ballot and shuffle below always see all 32 lanes.
    for_each_tile(n, [&](i64 tile) {
        for_each_row<V>(tile, [&](i64 e) {
            R v[V];
            load_lanes<R>(x, e, n, vec, v);
#pragma unroll
            for (int j = 0; j < V; ++j) {
                K key = key_of<DT, TR>(v[j]);
                bool hit = (e + j < n) && ((u64)key >> shift) == want;
                u32 ballot = __ballot_sync(0xffffffffu, hit);
                if (ballot) {
                    u64 base = 0ull;
                    int leader = __ffs((int)ballot) - 1;
                    if ((int)lane == leader) base = atomicAdd(&ws[WS_CAND], (u64)__popc((int)ballot));
                    base = __shfl_sync(0xffffffffu, base, leader);
                    u64 pos = base + (u64)__popc((int)(ballot & ((1u << lane) - 1u)));
                    if (hit && pos < (u64)capacity) {  // capacity == pass-1 count: never exceeded
                        ckey[pos] = key;
                        cidx[pos] = e + j;
                    }
                }
            }
        });
    });
}

// ---------------------------------------------------------------------------------------------
// candidate rounds
// ---------------------------------------------------------------------------------------------
// Histogram of bits [shift, shift + width) of the candidates that match the prefix above them.
template <typename K>
__global__ void __launch_bounds__(PP_BLOCK) cand_hist(const K* __restrict__ ckey, i64 ncand, int shift,
                                                      int width, u64* __restrict__ ghist,
                                                      const u64* __restrict__ ws) {
    __shared__ u32 hist[PP_BINS];
    for (int i = threadIdx.x; i < PP_BINS; i += PP_BLOCK) hist[i] = 0u;
    __syncthreads();
    const int hi = shift + width;
    const u64 want = ws[WS_PREFIX] >> hi;
    const u64 mask = (1ull << width) - 1ull;
    for (i64 i = (i64)blockIdx.x * PP_BLOCK + threadIdx.x; i < ncand; i += (i64)gridDim.x * PP_BLOCK) {
        u64 key = (u64)ckey[i];
        if ((key >> hi) == want) atomicAdd(&hist[(u32)((key >> shift) & mask)], 1u);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < PP_BINS; i += PP_BLOCK) {
        u32 c = hist[i];
        if (c) atomicAdd(&ghist[i], (u64)c);
    }
}

// Per-tile count of candidates equal to the threshold (tile = PP_TILE consecutive flat indices).
template <typename K>
__global__ void __launch_bounds__(PP_BLOCK) eq_count(const K* __restrict__ ckey, const i64* __restrict__ cidx,
                                                     i64 ncand, const u64* __restrict__ ws,
                                                     u64* __restrict__ tile_count) {
    const u64 thr = ws[WS_PREFIX];
    for (i64 i = (i64)blockIdx.x * PP_BLOCK + threadIdx.x; i < ncand; i += (i64)gridDim.x * PP_BLOCK) {
        if ((u64)ckey[i] == thr) atomicAdd(&tile_count[cidx[i] >> PP_TILE_SHIFT], 1ull);
    }
}

// One block: exclusive scan of tile_count[0..ntiles) in place; tile_count[ntiles] = total.
__global__ void __launch_bounds__(PP_BLOCK) scan_tiles(u64* __restrict__ tile_count, i64 ntiles) {
    __shared__ u64 tsum[PP_BLOCK + 1];
    i64 b0, b1;
    u64 s;
    u64 run = share_exclusive_prefix<i64>(tile_count, ntiles, &b0, &b1, &s, tsum);
    if (threadIdx.x == 0) tile_count[ntiles] = tsum[PP_BLOCK];
    for (i64 b = b0; b < b1; ++b) {
        u64 c = tile_count[b];
        tile_count[b] = run;
        run += c;
    }
}

// ---------------------------------------------------------------------------------------------
// pass 3: the mask (mode 0: write keep bytes to out; mode 1: zero pruned weights in place)
// ---------------------------------------------------------------------------------------------
template <int DT, int TR>
__global__ void __launch_bounds__(PP_BLOCK) radix_mask(typename RawOf<DT>::T* __restrict__ x, i64 n, int vec,
                                                       u8* __restrict__ out, int vec_out, int mode,
                                                       const u64* __restrict__ ws,
                                                       const u64* __restrict__ tile_off) {
    typedef typename RawOf<DT>::T R;
    typedef typename KeyOf<DT, TR>::T K;
    constexpr int V = 16 / sizeof(R);
    constexpr int ROWS = TileRows<V>::value;
    __shared__ u32 scan[2 * PP_BLOCK];
    const K thr = (K)ws[WS_PREFIX];
    const u64 need = ws[WS_KREM] + 1ull;  // how many keys equal to thr are pruned
    i64 ntiles = tile_count(n);
    for (i64 tile = blockIdx.x; tile < ntiles; tile += gridDim.x) {
        u64 off = tile_off[tile];
        u64 cnt = tile_off[tile + 1] - off;
        // block-uniform: 0 = no equal key of this tile is pruned, 1 = all are, 2 = rank them
        int eqmode = (cnt == 0ull || off >= need) ? 0 : (off + cnt <= need ? 1 : 2);
        u64 running = off;
        for (int row = 0; row < ROWS; ++row) {
            i64 e = row_vector_index<V>(tile, row);
            R v[V];
            load_lanes<R>(x, e, n, vec, v);
            bool prune[V];
            u32 neq = 0u;
#pragma unroll
            for (int j = 0; j < V; ++j) {
                K key = key_of<DT, TR>(v[j]);
                bool in = e + j < n;
                prune[j] = in && (key < thr || (key == thr && eqmode == 1));
                neq += (in && key == thr) ? 1u : 0u;
            }
            if (eqmode == 2) {
                u32 total;
                u32 before = block_exclusive_scan(neq, scan, &total);
                u64 rank = running + before;
#pragma unroll
                for (int j = 0; j < V; ++j) {
                    K key = key_of<DT, TR>(v[j]);
                    if (e + j < n && key == thr) {
                        prune[j] = rank < need;
                        ++rank;
                    }
                }
                running += total;
            }
            if (e < n) write_pruned<R>(x, out, e, n, vec, vec_out, mode, v, prune);
        }
    }
}

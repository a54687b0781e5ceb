// pruneplug CUDA backend: magnitude importance scores and their statistics in one pass.
//
// importance<DT, TR>: reads each weight once (16-byte loads), writes its score once, and keeps
// per-thread (count, mean, M2) in float64 (Chan et al.'s pairwise update, one 16-byte chunk at a
// time) plus the min/max score bits; blocks combine in a fixed tree order and write one partial
// each. importance_finalize (one block) combines the partials in a fixed order: the result is
// deterministic (no floating-point atomics) and depends on n only, not on the device.
#include "common.cuh"

struct Moments {
    double n, mean, m2;
};

__device__ __forceinline__ Moments merge_moments(Moments a, Moments b) {
    if (b.n == 0.0) return a;
    if (a.n == 0.0) return b;
    double n = a.n + b.n;
    double d = b.mean - a.mean;
    double f = b.n / n;
    Moments r;
    r.n = n;
    r.mean = a.mean + d * f;
    r.m2 = a.m2 + b.m2 + d * d * a.n * f;
    return r;
}

// Shared memory of block_reduce_stats: one (n, mean, M2, min, max) slot per thread. Declared
// `__shared__` at kernel scope by its callers.
struct StatsShared {
    double n[PP_BLOCK];
    double mean[PP_BLOCK];
    double m2[PP_BLOCK];
    u64 lo[PP_BLOCK];
    u64 hi[PP_BLOCK];
};

// Shared-memory tree over the block, fixed order. Barriers inside: called by every thread.
__device__ __forceinline__ void block_reduce_stats(Moments& m, u64& lo, u64& hi, StatsShared& sh) {
    int t = threadIdx.x;
    sh.n[t] = m.n; sh.mean[t] = m.mean; sh.m2[t] = m.m2; sh.lo[t] = lo; sh.hi[t] = hi;
    __syncthreads();
    for (int s = PP_BLOCK / 2; s > 0; s >>= 1) {
        if (t < s) {
            Moments a = {sh.n[t], sh.mean[t], sh.m2[t]};
            Moments b = {sh.n[t + s], sh.mean[t + s], sh.m2[t + s]};
            Moments r = merge_moments(a, b);
            sh.n[t] = r.n; sh.mean[t] = r.mean; sh.m2[t] = r.m2;
            sh.lo[t] = sh.lo[t] < sh.lo[t + s] ? sh.lo[t] : sh.lo[t + s];
            sh.hi[t] = sh.hi[t] > sh.hi[t + s] ? sh.hi[t] : sh.hi[t + s];
        }
        __syncthreads();
    }
    m.n = sh.n[0]; m.mean = sh.mean[0]; m.m2 = sh.m2[0]; lo = sh.lo[0]; hi = sh.hi[0];
}

// TR: TR_ABS (l1) or TR_SQUARE (l2). part: per block [n, mean, M2] doubles; partu: [min, max].
template <int DT, int TR>
__global__ void __launch_bounds__(PP_BLOCK) importance(const typename RawOf<DT>::T* __restrict__ x,
                                                       typename ScoreOf<DT>::T* __restrict__ scores, i64 n,
                                                       int vec, double* __restrict__ part,
                                                       u64* __restrict__ partu, u64* __restrict__ ws) {
    typedef typename RawOf<DT>::T R;
    typedef typename ScoreOf<DT>::T S;
    constexpr int V = 16 / sizeof(R);
    constexpr int ROWS = TileRows<V>::value;
    __shared__ StatsShared red;

    Moments acc = {0.0, 0.0, 0.0};
    u64 lo = ~0ull, hi = 0ull, bad = 0ull, first = ~0ull;
    i64 ntiles = tile_count(n);
    for (i64 tile = blockIdx.x; tile < ntiles; tile += gridDim.x) {
        for (int row = 0; row < ROWS; ++row) {
            i64 e = row_vector_index<V>(tile, row);
            if (e >= n) continue;
            R v[V];
            load_lanes<R>(x, e, n, vec, v);
            S s[V];
            double sum = 0.0;
            int c = 0;
#pragma unroll
            for (int j = 0; j < V; ++j) {
                s[j] = score_bits<DT, TR>(v[j]);
                if (e + j < n) {
                    if (is_bad<DT, TR>(v[j])) {
                        ++bad;
                        first = first < (u64)(e + j) ? first : (u64)(e + j);
                    }
                    lo = lo < (u64)s[j] ? lo : (u64)s[j];
                    hi = hi > (u64)s[j] ? hi : (u64)s[j];
                    sum += score_to_double<DT>(s[j]);
                    ++c;
                }
            }
            // chunk moments (two passes over registers), then one merge into the thread's state
            Moments chunk;
            chunk.n = (double)c;
            chunk.mean = c == V ? sum * (1.0 / V) : sum / (double)c;
            double m2 = 0.0;
#pragma unroll
            for (int j = 0; j < V; ++j) {
                if (e + j < n) {
                    double d = score_to_double<DT>(s[j]) - chunk.mean;
                    m2 += d * d;
                }
            }
            chunk.m2 = m2;
            acc = merge_moments(acc, chunk);
            // scores: one 16-byte store per 16 bytes of scores when aligned and in bounds
            if (vec && e + V <= n) {
#pragma unroll
                for (int q = 0; q < V * (int)sizeof(S) / 16; ++q) store16<S>(scores + e + q * (16 / sizeof(S)), s + q * (16 / sizeof(S)));
            } else {
#pragma unroll
                for (int j = 0; j < V; ++j)
                    if (e + j < n) scores[e + j] = s[j];
            }
        }
    }
    report_bad(ws, bad, first);
    block_reduce_stats(acc, lo, hi, red);
    if (threadIdx.x == 0) {
        part[3 * blockIdx.x + 0] = acc.n;
        part[3 * blockIdx.x + 1] = acc.mean;
        part[3 * blockIdx.x + 2] = acc.m2;
        partu[2 * blockIdx.x + 0] = lo;
        partu[2 * blockIdx.x + 1] = hi;
    }
}

// One block: combine nparts partials in a fixed order; write mean, M2, min, max into ws.
__global__ void __launch_bounds__(PP_BLOCK) importance_finalize(const double* __restrict__ part,
                                                                const u64* __restrict__ partu, int nparts,
                                                                u64* __restrict__ ws) {
    __shared__ StatsShared red;
    Moments acc = {0.0, 0.0, 0.0};
    u64 lo = ~0ull, hi = 0ull;
    int begin, end;
    thread_share<int>(nparts, &begin, &end);
    for (int i = begin; i < end; ++i) {
        Moments p = {part[3 * i], part[3 * i + 1], part[3 * i + 2]};
        acc = merge_moments(acc, p);
        lo = lo < partu[2 * i] ? lo : partu[2 * i];
        hi = hi > partu[2 * i + 1] ? hi : partu[2 * i + 1];
    }
    block_reduce_stats(acc, lo, hi, red);
    if (threadIdx.x == 0) {
        ws[WS_STATS + 0] = (u64)__double_as_longlong(acc.mean);
        ws[WS_STATS + 1] = (u64)__double_as_longlong(acc.m2);
        ws[WS_STATS + 2] = lo;
        ws[WS_STATS + 3] = hi;
    }
}

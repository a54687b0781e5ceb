// pruneplug CUDA backend: N:M masks along any axis, in one pass.
//
// The array is viewed as (outer, L, inner) with L = shape[axis]; a group is M elements
// (o, g*M + j, i), j = 0..M-1, `inner` apart in memory: no transposed copy. In a group element j
// is kept when fewer than n elements outrank it (higher score, or equal score and lower index).
//   nm_contig<DT, TR, M>:  inner == 1, M in {2, 4, 8, 16}: each thread takes a 16-byte-aligned run
//                          of whole groups (max(M, 16/sizeof) elements) with 16-byte loads;
//   nm_strided<DT, TR, M>: inner > 1, M in {2, 4, 8, 16}: thread per group, neighbouring threads
//                          take neighbouring i, so each of the M loads is coalesced across a warp;
//   nm_generic<DT, TR>:    any m (slow path): thread per group, O(m^2) cached loads.
// mode 0 writes keep bytes to out; mode 1 zeroes the pruned weights in place (fast paths only: the
// decisions of a group are all taken before anything is written). Non-finite values are counted
// in the same pass (ws); the host raises before anything the caller can see is kept.
#include "common.cuh"

// keep[j] for the M keys of a group held in registers
template <typename K, int M>
__device__ __forceinline__ void nm_rank(const K* k, int nkeep, bool* keep) {
#pragma unroll
    for (int j = 0; j < M; ++j) {
        int above = 0;
#pragma unroll
        for (int i = 0; i < M; ++i) {
            if (i < j) above += k[i] >= k[j] ? 1 : 0;
            else if (i > j) above += k[i] > k[j] ? 1 : 0;
        }
        keep[j] = above < nkeep;
    }
}

template <int DT, int TR, int M>
__global__ void __launch_bounds__(PP_BLOCK) nm_contig(typename RawOf<DT>::T* __restrict__ x, i64 n, int vec,
                                                      int nkeep, u8* __restrict__ out, int vec_out, int mode,
                                                      u64* __restrict__ ws) {
    typedef typename RawOf<DT>::T R;
    typedef typename KeyOf<DT, TR>::T K;
    constexpr int V = 16 / sizeof(R);
    constexpr int C = M > V ? M : V;  // elements per thread: whole groups and whole vectors
    constexpr int G = C / M;          // groups per thread
    i64 e = ((i64)blockIdx.x * PP_BLOCK + threadIdx.x) * C;
    if (e >= n) return;
    R v[C];
#pragma unroll
    for (int q = 0; q < C / V; ++q) {
        R t[V];
        load_lanes<R>(x, e + q * V, n, vec, t);
#pragma unroll
        for (int j = 0; j < V; ++j) v[q * V + j] = t[j];
    }
    u64 bad = 0ull, first = ~0ull;
    bool prune[C];
#pragma unroll
    for (int g = 0; g < G; ++g) {
        K k[M];
        bool keep[M];
#pragma unroll
        for (int j = 0; j < M; ++j) {
            int c = g * M + j;
            k[j] = key_of<DT, TR>(v[c]);
            if (e + c < n && is_bad<DT, TR>(v[c])) {
                ++bad;
                first = first < (u64)(e + c) ? first : (u64)(e + c);
            }
        }
        nm_rank<K, M>(k, nkeep, keep);
#pragma unroll
        for (int j = 0; j < M; ++j) prune[g * M + j] = !keep[j];
    }
    report_bad(ws, bad, first);
#pragma unroll
    for (int q = 0; q < C / V; ++q) {
        i64 eq = e + q * V;
        if (eq >= n) break;
        bool p[V];
#pragma unroll
        for (int j = 0; j < V; ++j) p[j] = prune[q * V + j];
        R t[V];
#pragma unroll
        for (int j = 0; j < V; ++j) t[j] = v[q * V + j];
        write_pruned<R>(x, out, eq, n, vec, vec_out, mode, t, p);
    }
}

template <int DT, int TR, int M>
__global__ void __launch_bounds__(PP_BLOCK) nm_strided(typename RawOf<DT>::T* __restrict__ x, i64 groups,
                                                       i64 lgroups, i64 inner, int nkeep, u8* __restrict__ out,
                                                       int mode, u64* __restrict__ ws) {
    typedef typename RawOf<DT>::T R;
    typedef typename KeyOf<DT, TR>::T K;
    i64 gid = (i64)blockIdx.x * PP_BLOCK + threadIdx.x;
    if (gid >= groups) return;
    i64 i = gid % inner;
    i64 q = gid / inner;  // = o * lgroups + g
    i64 base = q * M * inner + i;  // (o * L + g * M) * inner + i, with L = lgroups * M
    R v[M];
    K k[M];
    bool keep[M];
    u64 bad = 0ull, first = ~0ull;
#pragma unroll
    for (int j = 0; j < M; ++j) {
        v[j] = x[base + j * inner];
        k[j] = key_of<DT, TR>(v[j]);
        if (is_bad<DT, TR>(v[j])) {
            ++bad;
            u64 at = (u64)(base + j * inner);
            first = first < at ? first : at;
        }
    }
    report_bad(ws, bad, first);
    nm_rank<K, M>(k, nkeep, keep);
#pragma unroll
    for (int j = 0; j < M; ++j) {
        if (mode == 0) {
            out[base + j * inner] = keep[j] ? (u8)1 : (u8)0;
        } else if (!keep[j]) {
            x[base + j * inner] = (R)0;
        }
    }
}

// Any m (and inner), mask only. Thread per group.
template <int DT, int TR>
__global__ void __launch_bounds__(PP_BLOCK) nm_generic(const typename RawOf<DT>::T* __restrict__ x, i64 groups,
                                                       i64 inner, int m, int nkeep, u8* __restrict__ out,
                                                       u64* __restrict__ ws) {
    typedef typename KeyOf<DT, TR>::T K;
    i64 gid = (i64)blockIdx.x * PP_BLOCK + threadIdx.x;
    if (gid >= groups) return;
    i64 i = gid % inner;
    i64 q = gid / inner;
    i64 base = q * (i64)m * inner + i;
    u64 bad = 0ull, first = ~0ull;
    for (int j = 0; j < m; ++j) {
        typename RawOf<DT>::T r = x[base + j * inner];
        if (is_bad<DT, TR>(r)) {
            ++bad;
            u64 at = (u64)(base + j * inner);
            first = first < at ? first : at;
        }
        K kj = key_of<DT, TR>(r);
        int above = 0;
        for (int t = 0; t < m && above < nkeep; ++t) {
            K kt = key_of<DT, TR>(x[base + t * inner]);
            above += (t < j ? kt >= kj : (t > j && kt > kj)) ? 1 : 0;
        }
        out[base + j * inner] = above < nkeep ? (u8)1 : (u8)0;
    }
    report_bad(ws, bad, first);
}

// pruneplug CUDA backend: shared device helpers (included by every .cu file of the backend).
//
// Everything here works on the raw bits of the weights (float16/bfloat16 as unsigned short,
// float32 as unsigned int, float64 as unsigned long long) with integer instructions, so that
// results are bit-identical to the NumPy reference whatever the compiler's flush-to-zero mode is:
// CuPy appends -ftz=true *after* the options a RawModule is given, and NVRTC's last -ftz wins, so
// the -ftz=false the backend passes cannot be relied on (tests/test_cuda_compile.py checks that the
// PTX contains no .ftz instruction under CuPy's final option list). The only floating-point
// arithmetic is in double precision (never flushed), with contraction disabled (--fmad=false).
//
// No system headers are included (cuda_fp16.h is deliberately avoided): the source compiles with
// NVRTC and with the project's CPU emulator alike.
#pragma once

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

// Threads per block of every kernel, and the elements one block covers per tile in the streaming
// kernels (a tile is BLOCK threads x one 16-byte vector x ROWS).
#define PP_BLOCK 256
#define PP_TILE 4096
#define PP_TILE_SHIFT 12
// Radix digit width of the selection (4096 bins: 16 KiB of shared memory per block).
#define PP_DIGIT 12
#define PP_BINS 4096

// DT_* dtype and TR_* transform codes
#include "codes.cuh"

// workspace slots (one unsigned long long array per call, zero-initialised)
#define WS_BAD_COUNT 0    // non-finite values seen (atomicAdd)
#define WS_BAD_FIRST 1    // ~(first non-finite flat index) (atomicMax of the complement == atomicMin of the index)
#define WS_PREFIX 2       // selection: key bits resolved so far (the threshold once complete)
#define WS_KREM 3         // selection: rank of the threshold among keys sharing the prefix (0-based)
#define WS_BINCOUNT 4     // selection: number of keys sharing the prefix
#define WS_CAND 5         // selection: candidates appended so far
#define WS_STATS 8        // importance: mean bits, M2 bits, min bits, max bits (slots 8..11)
#define WS_SIZE 16

template <int DT> struct RawOf;
template <> struct RawOf<DT_F16> { typedef u16 T; };
template <> struct RawOf<DT_BF16> { typedef u16 T; };
template <> struct RawOf<DT_F32> { typedef u32 T; };
template <> struct RawOf<DT_F64> { typedef u64 T; };
template <> struct RawOf<DT_KEY64> { typedef u64 T; };

// Score storage: float32 bits for 16-bit inputs and float32, float64 bits for float64.
template <int DT> struct ScoreOf { typedef u32 T; };
template <> struct ScoreOf<DT_F64> { typedef u64 T; };

// Selection key: unsigned integer whose order is the score order (equal scores, equal keys).
// 16-bit keys where the score order is the weight-magnitude order (float16: |w| and w*w are exact
// in float32; bfloat16 |w|), 32-bit where squares round (bfloat16 and float32 squares).
template <int DT, int TR> struct KeyOf { typedef typename RawOf<DT>::T T; };
template <> struct KeyOf<DT_BF16, TR_SQUARE> { typedef u32 T; };

// -------------------------------------------------------------------------------------------
// bit-level float helpers
// -------------------------------------------------------------------------------------------
__device__ __forceinline__ int pp_clz64(u64 x) {  // x != 0
    return __clzll((long long)x);
}

// float16 bits -> float32 bits (exact, denormals included)
__device__ __forceinline__ u32 f16_to_f32_bits(u32 h) {
    u32 s = (h & 0x8000u) << 16;
    u32 e = (h >> 10) & 0x1fu;
    u32 m = h & 0x3ffu;
    if (e == 0x1fu) return s | 0x7f800000u | (m << 13);
    if (e == 0u) {
        if (m == 0u) return s;
        int sh = __clz((int)m) - 21;  // bring the leading one to bit 10
        m = (m << sh) & 0x3ffu;
        return s | ((u32)(113 - sh) << 23) | (m << 13);
    }
    return s | ((e + 112u) << 23) | (m << 13);
}

// float32 bits -> float64 value (exact; no cvt.f64.f32, which -ftz=true would flush)
__device__ __forceinline__ double f32_bits_to_double(u32 b) {
    u64 s = (u64)(b >> 31) << 63;
    u32 e = (b >> 23) & 0xffu;
    u32 m = b & 0x7fffffu;
    u64 out;
    if (e == 0u) {
        if (m == 0u) {
            out = 0;
        } else {
            int sh = __clz((int)m) - 8;  // bring the leading one to bit 23
            m = (m << sh) & 0x7fffffu;
            out = ((u64)(897 - sh) << 52) | ((u64)m << 29);
        }
    } else if (e == 0xffu) {
        out = 0x7ff0000000000000ull | ((u64)m << 29);
    } else {
        out = ((u64)(e + 896u) << 52) | ((u64)m << 29);
    }
    return __longlong_as_double((long long)(out | s));
}

// The IEEE float32 product a*a (round to nearest even, denormal results included) of a
// non-negative finite float32 given by its bits, computed with integers.
__device__ __forceinline__ u32 f32_square_bits(u32 a) {
    u32 e = a >> 23;
    u64 m = a & 0x7fffffu;
    if (e == 0u) {
        if (m == 0u) return 0u;
        e = 1u;
    } else {
        m |= 0x800000u;
    }
    u64 p = m * m;                        // < 2^48, exact
    int len = 64 - pp_clz64(p);           // bit length of p
    int be = len + 2 * (int)e - 174;      // biased exponent of the result if normal
    int shift = be >= 1 ? len - 24 : 151 - 2 * (int)e;
    u64 r;
    if (shift <= 0) {
        r = p << (-shift);
    } else if (shift >= 63) {
        r = 0;
    } else {
        u64 q = p >> shift;
        u64 rem = p & ((1ull << shift) - 1ull);
        u64 half = 1ull << (shift - 1);
        if (rem > half || (rem == half && (q & 1ull))) q += 1ull;
        r = q;
    }
    u64 bits = be >= 1 ? ((u64)(be - 1) << 23) + r : r;
    return bits >= 0x7f800000ull ? 0x7f800000u : (u32)bits;
}

// Order-preserving map of a signed float's bits to an unsigned key; -0.0 maps like +0.0.
template <typename U>
__device__ __forceinline__ U ordered_bits(U x) {
    const U sign = (U)((U)1 << (8 * sizeof(U) - 1));
    if (x == sign) x = 0;
    return (x & sign) ? (U)(~x) : (U)(x | sign);
}

// Key of a float64 block sum: ordered, NaN above everything (as NumPy sorts it).
__device__ __forceinline__ u64 double_sum_key(double s) {
    u64 b = (u64)__double_as_longlong(s);
    if ((b & 0x7fffffffffffffffull) > 0x7ff0000000000000ull) return ~0ull;
    return ordered_bits<u64>(b);
}

// -------------------------------------------------------------------------------------------
// per-dtype traits: non-finite test, scores, keys
// -------------------------------------------------------------------------------------------
// True for values the transform rejects: NaN/Inf weights (abs, square), NaN scores (identity).
template <int DT, int TR>
__device__ __forceinline__ bool is_bad(typename RawOf<DT>::T r) {
    if constexpr (DT == DT_KEY64 || TR == TR_KEY) {
        return false;
    } else if constexpr (DT == DT_F16) {
        return TR == TR_IDENTITY ? (r & 0x7fffu) > 0x7c00u : (r & 0x7c00u) == 0x7c00u;
    } else if constexpr (DT == DT_BF16) {
        return TR == TR_IDENTITY ? (r & 0x7fffu) > 0x7f80u : (r & 0x7f80u) == 0x7f80u;
    } else if constexpr (DT == DT_F32) {
        return TR == TR_IDENTITY ? (r & 0x7fffffffu) > 0x7f800000u : (r & 0x7f800000u) == 0x7f800000u;
    } else {
        return TR == TR_IDENTITY ? (r & 0x7fffffffffffffffull) > 0x7ff0000000000000ull
                                 : (r & 0x7ff0000000000000ull) == 0x7ff0000000000000ull;
    }
}

// Score bits (float32 bits for 16-bit and float32 inputs, float64 bits for float64).
template <int DT, int TR>
__device__ __forceinline__ typename ScoreOf<DT>::T score_bits(typename RawOf<DT>::T r) {
    if constexpr (DT == DT_F16) {
        u32 f = f16_to_f32_bits(TR == TR_IDENTITY ? (u32)r : (u32)(r & 0x7fffu));
        return TR == TR_SQUARE ? f32_square_bits(f) : f;
    } else if constexpr (DT == DT_BF16) {
        u32 f = (TR == TR_IDENTITY ? (u32)r : (u32)(r & 0x7fffu)) << 16;
        return TR == TR_SQUARE ? f32_square_bits(f) : f;
    } else if constexpr (DT == DT_F32) {
        u32 f = TR == TR_IDENTITY ? r : (r & 0x7fffffffu);
        return TR == TR_SQUARE ? f32_square_bits(f) : f;
    } else {
        u64 f = TR == TR_IDENTITY ? r : (r & 0x7fffffffffffffffull);
        if constexpr (TR == TR_SQUARE) {
            double d = __longlong_as_double((long long)f);
            return (u64)__double_as_longlong(d * d);  // float64: not affected by -ftz; no contraction
        }
        return f;
    }
}

// Score bits as a double (exact).
template <int DT>
__device__ __forceinline__ double score_to_double(typename ScoreOf<DT>::T s) {
    if constexpr (DT == DT_F64) {
        return __longlong_as_double((long long)s);
    } else {
        return f32_bits_to_double((u32)s);
    }
}

// Selection key of a raw value.
template <int DT, int TR>
__device__ __forceinline__ typename KeyOf<DT, TR>::T key_of(typename RawOf<DT>::T r) {
    typedef typename KeyOf<DT, TR>::T K;
    if constexpr (DT == DT_KEY64 || TR == TR_KEY) {
        return (K)r;
    } else if constexpr (TR == TR_IDENTITY) {
        return ordered_bits<K>((K)r);  // float16/bfloat16 order = their float32 order
    } else if constexpr (DT == DT_BF16 && TR == TR_SQUARE) {
        return f32_square_bits((u32)(r & 0x7fffu) << 16);
    } else if constexpr (DT == DT_F32 && TR == TR_SQUARE) {
        return f32_square_bits(r & 0x7fffffffu);
    } else if constexpr (DT == DT_F64 && TR == TR_SQUARE) {
        return (K)score_bits<DT_F64, TR_SQUARE>(r);
    } else {
        // |w|, and float16 w*w (exact in float32, so ordered like |w|): the magnitude bits.
        return (K)(r & (K)(~((K)1 << (8 * sizeof(K) - 1))));
    }
}

// -------------------------------------------------------------------------------------------
// 16-byte vector access
// -------------------------------------------------------------------------------------------
// Helpers take register arrays as plain pointers (always inlined, so they stay in registers; the
// compile gate checks there is no stack frame), not as references to arrays: g++ 12's
// -fsanitize=undefined miscompiles `const T (&a)[N]` parameters at -O1 (wrong bounds-check
// index, wrong values), which broke the emulator's sanitizer build.
struct alignas(16) pp_v16 {
    u32 a, b, c, d;
};

// Load V = 16 / sizeof(R) consecutive raw values starting at p (16-byte aligned).
template <typename R>
__device__ __forceinline__ void load16(const R* p, R* v) {
    pp_v16 t = *reinterpret_cast<const pp_v16*>(p);
    if constexpr (sizeof(R) == 2) {
        v[0] = (R)(t.a & 0xffffu); v[1] = (R)(t.a >> 16);
        v[2] = (R)(t.b & 0xffffu); v[3] = (R)(t.b >> 16);
        v[4] = (R)(t.c & 0xffffu); v[5] = (R)(t.c >> 16);
        v[6] = (R)(t.d & 0xffffu); v[7] = (R)(t.d >> 16);
    } else if constexpr (sizeof(R) == 4) {
        v[0] = (R)t.a; v[1] = (R)t.b; v[2] = (R)t.c; v[3] = (R)t.d;
    } else {
        v[0] = (R)((u64)t.a | ((u64)t.b << 32));
        v[1] = (R)((u64)t.c | ((u64)t.d << 32));
    }
}

// Store 16 bytes of values (16 / sizeof(S) of them) at p (16-byte aligned).
template <typename S>
__device__ __forceinline__ void store16(S* p, const S* v) {
    pp_v16 t;
    if constexpr (sizeof(S) == 4) {
        t.a = (u32)v[0]; t.b = (u32)v[1]; t.c = (u32)v[2]; t.d = (u32)v[3];
    } else if constexpr (sizeof(S) == 8) {
        t.a = (u32)v[0]; t.b = (u32)((u64)v[0] >> 32); t.c = (u32)v[1]; t.d = (u32)((u64)v[1] >> 32);
    } else {
        t.a = (u32)v[0] | ((u32)v[1] << 16); t.b = (u32)v[2] | ((u32)v[3] << 16);
        t.c = (u32)v[4] | ((u32)v[5] << 16); t.d = (u32)v[6] | ((u32)v[7] << 16);
    }
    *reinterpret_cast<pp_v16*>(p) = t;
}

// Load the V values at flat index e (a multiple of V): one 16-byte load when vec and the whole
// vector is in bounds, else scalar loads of the in-bounds lanes (others read as 0).
template <typename R>
__device__ __forceinline__ void load_lanes(const R* x, i64 e, i64 n, int vec, R* v) {
    constexpr int V = 16 / sizeof(R);
    if (vec && e + V <= n) {
        load16<R>(x + e, v);
    } else {
#pragma unroll
        for (int j = 0; j < V; ++j) v[j] = (e + j < n) ? x[e + j] : (R)0;
    }
}

// Store V mask bytes at out + e: one V-byte store when vec and in bounds, else bytewise.
template <int V>
__device__ __forceinline__ void store_mask_lanes(u8* out, i64 e, i64 n, int vec, const bool* keep) {
    if (vec && e + V <= n) {
        if constexpr (V == 8) {
            u64 w = 0;
#pragma unroll
            for (int j = 0; j < 8; ++j) w |= (u64)(keep[j] ? 1u : 0u) << (8 * j);
            *reinterpret_cast<u64*>(out + e) = w;
        } else if constexpr (V == 4) {
            u32 w = 0;
#pragma unroll
            for (int j = 0; j < 4; ++j) w |= (u32)(keep[j] ? 1u : 0u) << (8 * j);
            *reinterpret_cast<u32*>(out + e) = w;
        } else {
            u32 w = (keep[0] ? 1u : 0u) | ((keep[1] ? 1u : 0u) << 8);
            *reinterpret_cast<u16*>(out + e) = (u16)w;
        }
    } else {
#pragma unroll
        for (int j = 0; j < V; ++j)
            if (e + j < n) out[e + j] = keep[j] ? (u8)1 : (u8)0;
    }
}

// Zero (+0.0) the lanes with prune[j] set: rewrite the whole vector when vec and in bounds.
template <typename R>
__device__ __forceinline__ void zero_lanes(R* x, i64 e, i64 n, int vec, R* v, const bool* prune) {
    constexpr int V = 16 / sizeof(R);
    bool any = false;
#pragma unroll
    for (int j = 0; j < V; ++j) any = any || prune[j];
    if (!any) return;
    if (vec && e + V <= n) {
#pragma unroll
        for (int j = 0; j < V; ++j) v[j] = prune[j] ? (R)0 : v[j];
        store16<R>(x + e, v);
    } else {
#pragma unroll
        for (int j = 0; j < V; ++j)
            if (prune[j] && e + j < n) x[e + j] = (R)0;
    }
}

// Write one vector's pruning decision: mode 0 stores the keep bytes (!prune[j]) at out + e
// (store_mask_lanes, vec_out), mode 1 zeroes the pruned weights of x in place (zero_lanes, vec;
// v: the vector's V values as loaded, overwritten).
template <typename R>
__device__ __forceinline__ void write_pruned(R* x, u8* out, i64 e, i64 n, int vec, int vec_out, int mode, R* v,
                                             const bool* prune) {
    constexpr int V = 16 / sizeof(R);
    if (mode == 0) {
        bool keep[V];
#pragma unroll
        for (int j = 0; j < V; ++j) keep[j] = !prune[j];
        store_mask_lanes<V>(out, e, n, vec_out, keep);
    } else {
        zero_lanes<R>(x, e, n, vec, v, prune);
    }
}

// -------------------------------------------------------------------------------------------
// tile traversal of the streaming kernels
// -------------------------------------------------------------------------------------------
// The input is cut into tiles of PP_TILE elements, handed to the blocks grid-stride; a tile is
// ROWS rows of PP_BLOCK threads x V = 16 / sizeof(R) lanes, and thread t's vector of row r starts
// at flat index tile * PP_TILE + (r * PP_BLOCK + t) * V. The loop bounds are block-uniform, so a
// per-tile or per-row callback may contain barriers and warp collectives.
// (Callbacks are lambdas; defined inside device code, they are device functions under NVRTC.)

// Tiles covering n elements, rows per tile, and the flat index of this thread's first lane in a
// row (may be >= n). Kernels whose per-row work is register-heavy (importance, radix_mask) write
// the two loops out with these: there, the callback form below costs registers (up to +15) or a
// spill under NVRTC 12.9.
__device__ __forceinline__ i64 tile_count(i64 n) { return (n + PP_TILE - 1) >> PP_TILE_SHIFT; }
template <int V> struct TileRows { static constexpr int value = PP_TILE / (PP_BLOCK * V); };
template <int V>
__device__ __forceinline__ i64 row_vector_index(i64 tile, int row) {
    return (tile << PP_TILE_SHIFT) + (i64)(row * PP_BLOCK + threadIdx.x) * V;
}

// f(tile) for each tile of this block.
template <class F>
__device__ __forceinline__ void for_each_tile(i64 n, F&& f) {
    i64 ntiles = tile_count(n);
    for (i64 tile = blockIdx.x; tile < ntiles; tile += gridDim.x) f(tile);
}

// f(e) for each row of the tile: e = row_vector_index (may be >= n).
template <int V, class F>
__device__ __forceinline__ void for_each_row(i64 tile, F&& f) {
    for (int row = 0; row < TileRows<V>::value; ++row) f(row_vector_index<V>(tile, row));
}

// f(e) for each of this thread's vectors that starts in bounds (e < n). Not block-uniform: no
// barriers or collectives in f.
template <int V, class F>
__device__ __forceinline__ void for_each_vector_index(i64 n, F&& f) {
    for_each_tile(n, [&](i64 tile) {
        for_each_row<V>(tile, [&](i64 e) {
            if (e < n) f(e);
        });
    });
}

// f(e, v) for each of this thread's vectors that starts in bounds, v = its V values (load_lanes:
// one 16-byte load when vec and the vector is in bounds; lanes past n read as 0).
template <typename R, class F>
__device__ __forceinline__ void for_each_lane_vector(const R* x, i64 n, int vec, F&& f) {
    constexpr int V = 16 / sizeof(R);
    for_each_vector_index<V>(n, [&](i64 e) {
        R v[V];
        load_lanes<R>(x, e, n, vec, v);
        f(e, v);
    });
}

// -------------------------------------------------------------------------------------------
// block-level helpers (PP_BLOCK threads)
// -------------------------------------------------------------------------------------------
// Thread t's share [*b0, *b1) of count items: PP_BLOCK contiguous shares of ceil(count / PP_BLOCK)
// items, in thread order (I: int or i64).
template <typename I>
__device__ __forceinline__ void thread_share(I count, I* b0, I* b1) {
    I per = (count + PP_BLOCK - 1) / PP_BLOCK;
    *b0 = (I)threadIdx.x * per;
    *b1 = *b0 + per < count ? *b0 + per : count;
}

// Exclusive prefix sum over the block (thread order); *total gets the block's sum. sh must hold
// 2 * PP_BLOCK entries. Contains barriers: every thread of the block must call it.
__device__ __forceinline__ u32 block_exclusive_scan(u32 v, u32* sh, u32* total) {
    int t = threadIdx.x;
    sh[t] = v;
    __syncthreads();
    int src = 0;
    for (int off = 1; off < PP_BLOCK; off <<= 1) {
        u32 x = sh[src * PP_BLOCK + t];
        if (t >= off) x += sh[src * PP_BLOCK + t - off];
        sh[(1 - src) * PP_BLOCK + t] = x;
        __syncthreads();
        src = 1 - src;
    }
    u32 incl = sh[src * PP_BLOCK + t];
    *total = sh[src * PP_BLOCK + PP_BLOCK - 1];
    __syncthreads();
    return incl - v;
}

// Record this thread's non-finite findings (count, first flat index) in the workspace.
__device__ __forceinline__ void report_bad(u64* ws, u64 count, u64 first) {
    if (count) {
        atomicAdd(&ws[WS_BAD_COUNT], count);
        atomicMax(&ws[WS_BAD_FIRST], ~first);
    }
}

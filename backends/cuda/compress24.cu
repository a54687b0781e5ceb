// pruneplug CUDA backend: 2:4 compression for sparse tensor cores (values + metadata), in one pass.
//
// The format is specified by pruneplug/sparse24.py and its NumPy reference
// (backends/numpy/compress24.py); these kernels are bit-identical to it. A C-contiguous (rows, cols)
// weight, 2:4 along its rows (1:2 for float32), becomes values (rows, cols/2) and metadata words
// (rows, ncols): one nibble idx0 | idx1 << 2 per group, LSB first; LAYOUT 0 = ptx (logical,
// row-major), 1 = cutlass (reorder_meta into ColumnMajorInterleaved<2>).
//
// One thread per metadata word: it reads the word's 32 bytes of weights once (two 16-byte loads:
// 16 float16/bfloat16, 8 float32 or 32 int8 elements), writes their 16 bytes of values (one
// 16-byte store) and the word (2 or 4 bytes) at its layout position. Consecutive threads take
// consecutive words of a row, so loads and value stores are fully coalesced; CUTLASS metadata
// stores land 2*rows words apart for even/odd word pairs (1/16 of the output bytes).
//
// Entry points (instantiate through name_expressions; DT: DT_F16, DT_BF16, DT_F32 or DT_I8 and
// LAYOUT: LAYOUT24_PTX or LAYOUT24_CUTLASS, the codes of codes.cuh):
//   compress24<DT, LAYOUT>(w, rows, ncols, values, meta, err)
//   decompress24<DT, LAYOUT>(values, meta, rows, ncols, dense, err)
//   prune_compress24<DT, LAYOUT>(w, rows, ncols, values, meta, err, nonfinite)
// Launch: block (256, 1, 1), grid (ceil(rows * ncols / 256), 1, 1). All pointers 16-byte aligned
// except meta (2- or 4-byte). rows and ncols are long long; ncols = cols / COLS (COLS = 16, 8, 32).
// err (one unsigned long long, set to ~0 by the host before the launch) receives atomicMin of
//   compress:   (flat group index << 3) | nonzero count, for groups with too many nonzeros;
//   decompress: (flat group index << 4) | nibble, for invalid nibbles;
// flat group index = row * (ncols * GROUPS) + group along the row; ~0 means none.
// prune_compress24 keeps the two largest |w| of every group (ties: lower index; float32: 1 of 2),
// zeroes the rest (+0) and compresses; int8 magnitudes are |w| (|-128| = 128). Its order equals
// the "abs" and, for float16, the "square" transform (float16 squares are exact in float32); the
// host prunes bf16/f32 "square" with the N:M kernels first. Non-finite float weights:
// nonfinite[0] += count (atomicAdd), nonfinite[1] = atomicMin(first flat element index); the
// host sets them to 0 and ~0.
//
// Element bits are raw unsigned integers (no cuda_fp16.h); no float arithmetic at all.
//
// Helpers take register arrays as plain pointers (always inlined, so they stay in registers; the
// compile gate checks there is no stack frame), not as references to arrays: g++ 12's
// -fsanitize=undefined miscompiles `const T (&a)[N]` parameters at -O1, which the emulator's
// sanitizer build (CUDA_EMU_SANITIZE=1) uses.

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

#define PP24_BLOCK 256

// nibble by nonzero pattern p (bit i = element i nonzero), 4 bits per entry: PyTorch's padding
// for fewer than 2 nonzeros, 0x4 (truncation) for 3 or 4
#define PP24_NIB_TABLE 0x444E4DCE498E498EULL
// patterns with 3 or 4 nonzeros
#define PP24_BAD_PATTERNS 0xE880u
// valid nibbles: 2:4 {4, 8, 9, C, D, E}; 1:2 {4, E}
#define PP24_VALID24 0x7310u
#define PP24_VALID12 0x4010u

// DT_* dtype codes (int8 is DT_I8) and LAYOUT24_* layouts
#include "codes.cuh"

template <int DT> struct Fmt24;
template <> struct Fmt24<DT_F16> { typedef u16 Meta; static constexpr int COLS = 16, GROUPS = 4; };
template <> struct Fmt24<DT_BF16> { typedef u16 Meta; static constexpr int COLS = 16, GROUPS = 4; };
template <> struct Fmt24<DT_F32> { typedef u16 Meta; static constexpr int COLS = 8, GROUPS = 4; };
template <> struct Fmt24<DT_I8> { typedef u32 Meta; static constexpr int COLS = 32, GROUPS = 8; };

// flat index of logical metadata word (r, c) in the layout
template <int LAYOUT, int DT>
__device__ __forceinline__ i64 meta_index(i64 r, i64 c, i64 rows, i64 ncols) {
    if (LAYOUT == LAYOUT24_PTX) return r * ncols + c;
    const i64 group = DT == DT_I8 ? 16 : 32, interweave = DT == DT_I8 ? 2 : 4;
    i64 dr = r / group * group + (r % 8) * interweave + (r % group) / 8;
    return (c >> 1) * 2 * rows + 2 * (dr & ~1LL) + (c & 1) * 2 + (dr & 1);
}

__device__ __forceinline__ u32 nib_of(u32 p) { return (u32)(PP24_NIB_TABLE >> (4 * p)) & 0xFu; }
__device__ __forceinline__ u32 popc4(u32 p) { return (p & 1u) + (p >> 1 & 1u) + (p >> 2 & 1u) + (p >> 3 & 1u); }

// nonzero pattern of four 16-bit lanes (-0.0 is zero, NaN nonzero)
__device__ __forceinline__ u32 pattern16(u64 g) {
    u64 m = ((g & 0x7FFF7FFF7FFF7FFFULL) + 0x7FFF7FFF7FFF7FFFULL) & 0x8000800080008000ULL;
    return (u32)((m * 0x0000200040008001ULL) >> 60);
}
// nonzero pattern of four int8 lanes
__device__ __forceinline__ u32 pattern8(u32 g) {
    u32 m = (((g & 0x7F7F7F7Fu) + 0x7F7F7F7Fu) | g) & 0x80808080u;
    return (m * 0x00204081u) >> 28;
}

__device__ __forceinline__ void load32(const u8* base, i64 word, u32* in) {
    const uint4* src = reinterpret_cast<const uint4*>(base) + word * 2;
    uint4 a = src[0], b = src[1];
    in[0] = a.x; in[1] = a.y; in[2] = a.z; in[3] = a.w;
    in[4] = b.x; in[5] = b.y; in[6] = b.z; in[7] = b.w;
}

__device__ __forceinline__ void store16(u8* base, i64 word, const u32* out) {
    uint4 o;
    o.x = out[0]; o.y = out[1]; o.z = out[2]; o.w = out[3];
    reinterpret_cast<uint4*>(base)[word] = o;
}

// Compress the 32 bytes of one metadata word held in `in`: fills `out` (16 bytes of values),
// returns the word; *bad_group / *bad_count name the first group with too many nonzeros (-1: none).
template <int DT>
__device__ __forceinline__ u32 compress_word(const u32* in, u32* out, int* bad_group, u32* bad_count) {
    u32 word = 0u;
    *bad_group = -1;
    *bad_count = 0u;
    if (DT == DT_F32) {
#pragma unroll
        for (int g = 0; g < 4; ++g) {
            u32 lo = in[2 * g], hi = in[2 * g + 1];
            bool nz0 = (lo & 0x7FFFFFFFu) != 0u, nz1 = (hi & 0x7FFFFFFFu) != 0u;
            if (nz0 && nz1 && *bad_group < 0) { *bad_group = g; *bad_count = 2u; }
            out[g] = nz0 ? lo : hi;
            word |= (nz0 ? 0x4u : 0xEu) << (4 * g);
        }
    } else if (DT == DT_I8) {
#pragma unroll
        for (int h = 0; h < 4; ++h) out[h] = 0u;
#pragma unroll
        for (int g = 0; g < 8; ++g) {
            u32 p = pattern8(in[g]);
            u32 nib = nib_of(p);
            if ((PP24_BAD_PATTERNS >> p & 1u) && *bad_group < 0) { *bad_group = g; *bad_count = popc4(p); }
            u32 pair = ((in[g] >> (8 * (nib & 3u))) & 0xFFu) | (((in[g] >> (8 * (nib >> 2))) & 0xFFu) << 8);
            out[g >> 1] |= pair << (16 * (g & 1));
            word |= nib << (4 * g);
        }
    } else {
#pragma unroll
        for (int g = 0; g < 4; ++g) {
            u64 v = (u64)in[2 * g] | ((u64)in[2 * g + 1] << 32);
            u32 p = pattern16(v);
            u32 nib = nib_of(p);
            if ((PP24_BAD_PATTERNS >> p & 1u) && *bad_group < 0) { *bad_group = g; *bad_count = popc4(p); }
            out[g] = (u32)((v >> (16 * (nib & 3u))) & 0xFFFFu) | ((u32)((v >> (16 * (nib >> 2))) & 0xFFFFu) << 16);
            word |= nib << (4 * g);
        }
    }
    return word;
}

template <int DT, int LAYOUT>
__global__ void __launch_bounds__(PP24_BLOCK) compress24(const u8* __restrict__ w, i64 rows, i64 ncols,
                                                          u8* __restrict__ values,
                                                          typename Fmt24<DT>::Meta* __restrict__ meta,
                                                          u64* __restrict__ err) {
    i64 t = (i64)blockIdx.x * PP24_BLOCK + threadIdx.x;
    if (t >= rows * ncols) return;
    i64 r = t / ncols, c = t - r * ncols;
    u32 in[8], out[4];
    load32(w, t, in);
    int bad_group;
    u32 bad_count;
    u32 word = compress_word<DT>(in, out, &bad_group, &bad_count);
    store16(values, t, out);
    meta[meta_index<LAYOUT, DT>(r, c, rows, ncols)] = (typename Fmt24<DT>::Meta)word;
    if (bad_group >= 0) {
        u64 flat = (u64)(r * ncols * Fmt24<DT>::GROUPS + c * Fmt24<DT>::GROUPS + bad_group);
        atomicMin(err, (flat << 3) | bad_count);
    }
}

template <int DT, int LAYOUT>
__global__ void __launch_bounds__(PP24_BLOCK) decompress24(const u8* __restrict__ values,
                                                            const typename Fmt24<DT>::Meta* __restrict__ meta,
                                                            i64 rows, i64 ncols, u8* __restrict__ dense,
                                                            u64* __restrict__ err) {
    i64 t = (i64)blockIdx.x * PP24_BLOCK + threadIdx.x;
    if (t >= rows * ncols) return;
    i64 r = t / ncols, c = t - r * ncols;
    u32 word = (u32)meta[meta_index<LAYOUT, DT>(r, c, rows, ncols)];
    const uint4 v4 = reinterpret_cast<const uint4*>(values)[t];
    u32 v[4];
    v[0] = v4.x; v[1] = v4.y; v[2] = v4.z; v[3] = v4.w;
    u32 o[8];
    int bad = -1;
    u32 bad_nib = 0u;
    const u32 valid = DT == DT_F32 ? PP24_VALID12 : PP24_VALID24;
#pragma unroll
    for (int g = 0; g < Fmt24<DT>::GROUPS; ++g) {
        u32 nib = (word >> (4 * g)) & 0xFu;
        if (!(valid >> nib & 1u) && bad < 0) { bad = g; bad_nib = nib; }
        u32 i0 = nib & 3u, i1 = nib >> 2;
        if (DT == DT_F32) {
            o[2 * g] = nib == 0xEu ? 0u : v[g];
            o[2 * g + 1] = nib == 0xEu ? v[g] : 0u;
        } else if (DT == DT_I8) {
            u32 pair = (v[g >> 1] >> (16 * (g & 1))) & 0xFFFFu;
            o[g] = ((pair & 0xFFu) << (8 * i0)) | ((pair >> 8) << (8 * i1));
        } else {
            u64 d = ((u64)(v[g] & 0xFFFFu) << (16 * i0)) | ((u64)(v[g] >> 16) << (16 * i1));
            o[2 * g] = (u32)d;
            o[2 * g + 1] = (u32)(d >> 32);
        }
    }
    uint4* dst = reinterpret_cast<uint4*>(dense) + t * 2;
    uint4 a, b;
    a.x = o[0]; a.y = o[1]; a.z = o[2]; a.w = o[3];
    b.x = o[4]; b.y = o[5]; b.z = o[6]; b.w = o[7];
    dst[0] = a;
    dst[1] = b;
    if (bad >= 0) {
        u64 flat = (u64)(r * ncols * Fmt24<DT>::GROUPS + c * Fmt24<DT>::GROUPS + bad);
        atomicMin(err, (flat << 4) | bad_nib);
    }
}

// keep-bits of the 2 largest of 4 keys, ties keep the lower index
__device__ __forceinline__ u32 top2(u32 k0, u32 k1, u32 k2, u32 k3) {
    u32 r0 = (k1 > k0) + (k2 > k0) + (k3 > k0);
    u32 r1 = (k0 >= k1) + (k2 > k1) + (k3 > k1);
    u32 r2 = (k0 >= k2) + (k1 >= k2) + (k3 > k2);
    u32 r3 = (k0 >= k3) + (k1 >= k3) + (k2 >= k3);
    return (u32)(r0 < 2u) | (u32)(r1 < 2u) << 1 | (u32)(r2 < 2u) << 2 | (u32)(r3 < 2u) << 3;
}

__device__ __forceinline__ u32 abs8(u32 b) {
    int x = (int)(signed char)(b & 0xFFu);
    return (u32)(x < 0 ? -x : x);
}

template <int DT, int LAYOUT>
__global__ void __launch_bounds__(PP24_BLOCK) prune_compress24(const u8* __restrict__ w, i64 rows, i64 ncols,
                                                                u8* __restrict__ values,
                                                                typename Fmt24<DT>::Meta* __restrict__ meta,
                                                                u64* __restrict__ err, u64* __restrict__ nonfinite) {
    i64 t = (i64)blockIdx.x * PP24_BLOCK + threadIdx.x;
    if (t >= rows * ncols) return;
    i64 r = t / ncols, c = t - r * ncols;
    u32 in[8], out[4];
    load32(w, t, in);
    // count non-finite float weights (first flat element index: this word's elements start at t * COLS)
    u32 count = 0u;
    int first = -1;
    if (DT == DT_F32) {
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            bool nf = (in[i] & 0x7F800000u) == 0x7F800000u;
            count += nf ? 1u : 0u;
            if (nf && first < 0) first = i;
        }
#pragma unroll
        for (int g = 0; g < 4; ++g) {
            bool keep0 = (in[2 * g] & 0x7FFFFFFFu) >= (in[2 * g + 1] & 0x7FFFFFFFu);
            if (keep0) in[2 * g + 1] = 0u; else in[2 * g] = 0u;
        }
    } else if (DT == DT_I8) {
#pragma unroll
        for (int g = 0; g < 8; ++g) {
            u32 x = in[g];
            u32 keep = top2(abs8(x), abs8(x >> 8), abs8(x >> 16), abs8(x >> 24));
            u32 lanes = ((keep & 1u) ? 0xFFu : 0u) | ((keep & 2u) ? 0xFF00u : 0u) |
                        ((keep & 4u) ? 0xFF0000u : 0u) | ((keep & 8u) ? 0xFF000000u : 0u);
            in[g] = x & lanes;
        }
    } else {
        const u32 expo = DT == DT_F16 ? 0x7C00u : 0x7F80u;
#pragma unroll
        for (int h = 0; h < 8; ++h) {
#pragma unroll
            for (int s = 0; s < 2; ++s) {
                bool nf = ((in[h] >> (16 * s)) & expo) == expo;
                count += nf ? 1u : 0u;
                if (nf && first < 0) first = 2 * h + s;
            }
        }
#pragma unroll
        for (int g = 0; g < 4; ++g) {
            u32 a = in[2 * g], b = in[2 * g + 1];
            u32 keep = top2(a & 0x7FFFu, (a >> 16) & 0x7FFFu, b & 0x7FFFu, (b >> 16) & 0x7FFFu);
            in[2 * g] = a & (((keep & 1u) ? 0xFFFFu : 0u) | ((keep & 2u) ? 0xFFFF0000u : 0u));
            in[2 * g + 1] = b & (((keep & 4u) ? 0xFFFFu : 0u) | ((keep & 8u) ? 0xFFFF0000u : 0u));
        }
    }
    int bad_group;
    u32 bad_count;
    u32 word = compress_word<DT>(in, out, &bad_group, &bad_count);  // never bad after pruning
    store16(values, t, out);
    meta[meta_index<LAYOUT, DT>(r, c, rows, ncols)] = (typename Fmt24<DT>::Meta)word;
    if (count) {
        atomicAdd(nonfinite, (u64)count);
        atomicMin(nonfinite + 1, (u64)(t * Fmt24<DT>::COLS + first));
    }
    (void)err;
}

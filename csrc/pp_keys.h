/* The score rules of the C backend, written once: every C file that turns raw weight bits into an
 * order key, tests them for non-finite values, computes a score or ranks a group of four includes
 * this header (pp_kernels.inc and its templates, pp_keyhist.c, rowselect.c, compress24.c,
 * pruneplug.c). Small static inline functions: they inline into the callers' loops, which stay
 * branch-free and vectorise.
 *
 * Weights arrive as raw bits (pruneplug.h): float16 and bfloat16 as uint16_t, float32 as uint32_t,
 * float64 as uint64_t. Scores are |w| (abs), w*w (square) or w (identity); 16-bit weights score in
 * float32, the others in their own precision (pruneplug.h, pp_importance).
 *
 * A *key* is an unsigned integer whose unsigned order is the order of the scores, equal scores
 * having equal keys. The selection, N:M and 2:4 compare keys, never floats.
 *
 * C11 (_Generic here, _Static_assert in the kernel templates): the default of GCC >= 5 and Clang.
 * Only the cffi contract headers (pruneplug.h, ...) are held to plain C99.
 */
#ifndef PP_KEYS_H
#define PP_KEYS_H

#include <stdint.h>

#include "pp_internal.h"

/* ------------------------------------------------------------------ building blocks */

/* The order-preserving sign flip of a float's bits (identity keys): -0.0 first becomes +0.0 (the
 * two compare equal), then negative values are inverted and positive ones get the top bit, so
 * that unsigned order is float order. */
static inline uint16_t pp_flip16(uint16_t x)
{
    x = x == 0x8000u ? 0 : x;
    return (x & 0x8000u) ? (uint16_t)~x : (uint16_t)(x | 0x8000u);
}
static inline uint32_t pp_flip32(uint32_t x)
{
    x = x == 0x80000000u ? 0 : x;
    return (x & 0x80000000u) ? ~x : (x | 0x80000000u);
}
static inline uint64_t pp_flip64(uint64_t x)
{
    x = x == 0x8000000000000000ULL ? 0 : x;
    return (x & 0x8000000000000000ULL) ? ~x : (x | 0x8000000000000000ULL);
}

/* The magnitude bits (sign cleared): for IEEE formats their unsigned order is the order of |w|. */
static inline uint16_t pp_mag16(uint16_t x) { return (uint16_t)(x & 0x7fffu); }
static inline uint32_t pp_mag32(uint32_t x) { return x & 0x7fffffffu; }
static inline uint64_t pp_mag64(uint64_t x) { return x & 0x7fffffffffffffffULL; }

/* Non-finite tests. abs and square reject NaN and +-Inf (`_nonfinite`: exponent all ones);
 * identity rejects NaN only (`_nan`): +-Inf is a valid identity score with a valid key. */
static inline int pp_f16_nonfinite(uint16_t x) { return pp_mag16(x) >= 0x7c00u; }
static inline int pp_f16_nan(uint16_t x) { return pp_mag16(x) > 0x7c00u; }
static inline int pp_bf16_nonfinite(uint16_t x) { return pp_mag16(x) >= 0x7f80u; }
static inline int pp_bf16_nan(uint16_t x) { return pp_mag16(x) > 0x7f80u; }
static inline int pp_f32_nonfinite(uint32_t x) { return pp_mag32(x) >= 0x7f800000u; }
static inline int pp_f32_nan(uint32_t x) { return pp_mag32(x) > 0x7f800000u; }
static inline int pp_f64_nonfinite(uint64_t x) { return pp_mag64(x) >= 0x7ff0000000000000ULL; }
static inline int pp_f64_nan(uint64_t x) { return pp_mag64(x) > 0x7ff0000000000000ULL; }

/* ------------------------------------------------------------------ per (dtype, transform)
 * pp_<variant>_key: the order key; pp_<variant>_bad: 1 for an input the transform rejects;
 * pp_<variant>_score: the score in its own precision (block sums, importance, and the float32 /
 * float64 score keys below). The variants are the rows of pp_variants.h. */

/* float16: |w| and w*w both order by the magnitude bits (the square of a float16 is exact in
 * float32 and strictly increasing in |w|, so equal squares <=> equal magnitudes). */
static inline uint16_t pp_f16abs_key(uint16_t x) { return pp_mag16(x); }
static inline int pp_f16abs_bad(uint16_t x) { return pp_f16_nonfinite(x); }
static inline float pp_f16abs_score(uint16_t x) { return pp_h2f(pp_mag16(x)); }
static inline uint16_t pp_f16sq_key(uint16_t x) { return pp_mag16(x); }
static inline int pp_f16sq_bad(uint16_t x) { return pp_f16_nonfinite(x); }
static inline float pp_f16sq_score(uint16_t x) { float f = pp_h2f(x); return f * f; }
static inline uint16_t pp_f16id_key(uint16_t x) { return pp_flip16(x); }
static inline int pp_f16id_bad(uint16_t x) { return pp_f16_nan(x); }
static inline float pp_f16id_score(uint16_t x) { return pp_h2f(x); }

/* bfloat16: the square is one rounded float32 multiply (distinct magnitudes can share a square),
 * so its key is the product's bits (a uint32), not the magnitude. */
static inline uint16_t pp_bf16abs_key(uint16_t x) { return pp_mag16(x); }
static inline int pp_bf16abs_bad(uint16_t x) { return pp_bf16_nonfinite(x); }
static inline float pp_bf16abs_score(uint16_t x) { return pp_bf2f(pp_mag16(x)); }
static inline uint32_t pp_bf16sq_key(uint16_t x) { float f = pp_bf2f(x); return pp_f2u(f * f); }
static inline int pp_bf16sq_bad(uint16_t x) { return pp_bf16_nonfinite(x); }
static inline float pp_bf16sq_score(uint16_t x) { float f = pp_bf2f(x); return f * f; }
static inline uint16_t pp_bf16id_key(uint16_t x) { return pp_flip16(x); }
static inline int pp_bf16id_bad(uint16_t x) { return pp_bf16_nan(x); }
static inline float pp_bf16id_score(uint16_t x) { return pp_bf2f(x); }

/* float32 and float64: |w| by the magnitude bits; w*w (rounded) by the product's bits. */
static inline uint32_t pp_f32abs_key(uint32_t x) { return pp_mag32(x); }
static inline int pp_f32abs_bad(uint32_t x) { return pp_f32_nonfinite(x); }
static inline float pp_f32abs_score(uint32_t x) { return pp_u2f(pp_mag32(x)); }
static inline uint32_t pp_f32sq_key(uint32_t x) { float f = pp_u2f(x); return pp_f2u(f * f); }
static inline int pp_f32sq_bad(uint32_t x) { return pp_f32_nonfinite(x); }
static inline float pp_f32sq_score(uint32_t x) { float f = pp_u2f(x); return f * f; }
static inline uint32_t pp_f32id_key(uint32_t x) { return pp_flip32(x); }
static inline int pp_f32id_bad(uint32_t x) { return pp_f32_nan(x); }
static inline float pp_f32id_score(uint32_t x) { return pp_u2f(x); }

static inline uint64_t pp_f64abs_key(uint64_t x) { return pp_mag64(x); }
static inline int pp_f64abs_bad(uint64_t x) { return pp_f64_nonfinite(x); }
static inline double pp_f64abs_score(uint64_t x) { return pp_u2d(pp_mag64(x)); }
static inline uint64_t pp_f64sq_key(uint64_t x) { double f = pp_u2d(x); return pp_d2u(f * f); }
static inline int pp_f64sq_bad(uint64_t x) { return pp_f64_nonfinite(x); }
static inline double pp_f64sq_score(uint64_t x) { double f = pp_u2d(x); return f * f; }
static inline uint64_t pp_f64id_key(uint64_t x) { return pp_flip64(x); }
static inline int pp_f64id_bad(uint64_t x) { return pp_f64_nan(x); }
static inline double pp_f64id_score(uint64_t x) { return pp_u2d(x); }

/* int8 (2:4 compression only): |w| as an integer, |-128| = 128. */
static inline uint32_t pp_i8abs_key(uint8_t x)
{
    int8_t v = (int8_t)x;
    return (uint32_t)(v < 0 ? -(int)v : (int)v);
}

/* ------------------------------------------------------------------ score keys
 * Keys made of a score's own bits, for selections that compare scores of different arrays in one
 * precision (pp_keyhist.c: PP_KEYS_F32, PP_KEYS_F64). Scores are >= +0.0 (never -0.0), so the bits
 * of a non-negative float order like its value. */
static inline uint32_t pp_score32_key(float s) { return pp_f2u(s); }
static inline uint64_t pp_score64_key(double s) { return pp_d2u(s); }

/* A float64 (block sum) as a key: NaN ranks highest (as NumPy sorts it), -0.0 == +0.0. */
static inline uint64_t pp_sum64_key(double s) { return s != s ? UINT64_MAX : pp_flip64(pp_d2u(s)); }

/* ------------------------------------------------------------------ rank of four
 * The rank of each key of a group of four: how many of the other three beat it, where a larger
 * key beats a smaller one and, of two equal keys, the earlier beats the later. Keeping the keys of
 * rank < n keeps the n largest, ties to the lower index: N:M with M = 4 (pp_nm.inc) and 2:4
 * (compress24.c). Twelve branch-free comparisons, so the loops that call it vectorise.
 * pp_rank4(k0, k1, k2, k3) takes uint16_t, uint32_t or uint64_t keys (all four of one type). */
typedef struct {
    unsigned r0, r1, r2, r3;
} pp_rank4_t;

#define PP_DEFINE_RANK4(T, SUFFIX)                                                                \
    static inline pp_rank4_t pp_rank4_##SUFFIX(T k0, T k1, T k2, T k3)                            \
    {                                                                                             \
        pp_rank4_t r;                                                                             \
        r.r0 = (unsigned)(k1 > k0) + (unsigned)(k2 > k0) + (unsigned)(k3 > k0);                   \
        r.r1 = (unsigned)(k0 >= k1) + (unsigned)(k2 > k1) + (unsigned)(k3 > k1);                  \
        r.r2 = (unsigned)(k0 >= k2) + (unsigned)(k1 >= k2) + (unsigned)(k3 > k2);                 \
        r.r3 = (unsigned)(k0 >= k3) + (unsigned)(k1 >= k3) + (unsigned)(k2 >= k3);                \
        return r;                                                                                 \
    }
PP_DEFINE_RANK4(uint16_t, u16)
PP_DEFINE_RANK4(uint32_t, u32)
PP_DEFINE_RANK4(uint64_t, u64)
#undef PP_DEFINE_RANK4

#define pp_rank4(k0, k1, k2, k3)                                                                  \
    _Generic((k0), uint16_t: pp_rank4_u16, uint32_t: pp_rank4_u32, uint64_t: pp_rank4_u64)(      \
        k0, k1, k2, k3)

/* The same rule for a pair (N:M with M = 2, 1:2 for float32): the rank of the first and of the
 * second key. */
#define pp_rank2_first(k0, k1) ((unsigned)((k1) > (k0)))
#define pp_rank2_second(k0, k1) ((unsigned)((k0) >= (k1)))

#endif

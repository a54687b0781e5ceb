/* pruneplug C backend: selection, N:M, block, apply and importance kernels.
 *
 * Every (dtype, transform) pair is one "variant" generated from pp_variant.inc: an element type
 * (the raw bits), a key type whose unsigned order is the score order, the key function and the
 * non-finite test. See pruneplug.h for the contract.
 */
#include "pruneplug.h"
#include "pp_internal.h"

/* ------------------------------------------------------------------ keys */

/* -0.0 -> +0.0, then the order-preserving sign flip. */
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

/* float16: |w| and w*w (exact in float32, monotone in |w|) both order by the magnitude bits. */
static inline uint16_t f16abs_key(uint16_t x) { return (uint16_t)(x & 0x7fffu); }
static inline int f16abs_bad(uint16_t x) { return (x & 0x7fffu) >= 0x7c00u; }
static inline float f16abs_score(uint16_t x) { return pp_h2f((uint16_t)(x & 0x7fffu)); }
static inline uint16_t f16sq_key(uint16_t x) { return (uint16_t)(x & 0x7fffu); }
static inline int f16sq_bad(uint16_t x) { return (x & 0x7fffu) >= 0x7c00u; }
static inline float f16sq_score(uint16_t x) { float f = pp_h2f(x); return f * f; }
static inline uint16_t f16id_key(uint16_t x) { return pp_flip16(x); }
static inline int f16id_bad(uint16_t x) { return (x & 0x7fffu) > 0x7c00u; }
static inline float f16id_score(uint16_t x) { return pp_h2f(x); }

/* bfloat16: the square is one float32 multiply (rounded): its key is the product's bits. */
static inline uint16_t bf16abs_key(uint16_t x) { return (uint16_t)(x & 0x7fffu); }
static inline int bf16abs_bad(uint16_t x) { return (x & 0x7fffu) >= 0x7f80u; }
static inline float bf16abs_score(uint16_t x) { return pp_bf2f((uint16_t)(x & 0x7fffu)); }
static inline uint32_t bf16sq_key(uint16_t x) { float f = pp_bf2f(x); return pp_f2u(f * f); }
static inline int bf16sq_bad(uint16_t x) { return (x & 0x7fffu) >= 0x7f80u; }
static inline float bf16sq_score(uint16_t x) { float f = pp_bf2f(x); return f * f; }
static inline uint16_t bf16id_key(uint16_t x) { return pp_flip16(x); }
static inline int bf16id_bad(uint16_t x) { return (x & 0x7fffu) > 0x7f80u; }
static inline float bf16id_score(uint16_t x) { return pp_bf2f(x); }

static inline uint32_t f32abs_key(uint32_t x) { return x & 0x7fffffffu; }
static inline int f32abs_bad(uint32_t x) { return (x & 0x7fffffffu) >= 0x7f800000u; }
static inline float f32abs_score(uint32_t x) { return pp_u2f(x & 0x7fffffffu); }
static inline uint32_t f32sq_key(uint32_t x) { float f = pp_u2f(x); return pp_f2u(f * f); }
static inline int f32sq_bad(uint32_t x) { return (x & 0x7fffffffu) >= 0x7f800000u; }
static inline float f32sq_score(uint32_t x) { float f = pp_u2f(x); return f * f; }
static inline uint32_t f32id_key(uint32_t x) { return pp_flip32(x); }
static inline int f32id_bad(uint32_t x) { return (x & 0x7fffffffu) > 0x7f800000u; }
static inline float f32id_score(uint32_t x) { return pp_u2f(x); }

static inline uint64_t f64abs_key(uint64_t x) { return x & 0x7fffffffffffffffULL; }
static inline int f64abs_bad(uint64_t x) { return (x & 0x7fffffffffffffffULL) >= 0x7ff0000000000000ULL; }
static inline double f64abs_score(uint64_t x) { return pp_u2d(x & 0x7fffffffffffffffULL); }
static inline uint64_t f64sq_key(uint64_t x) { double f = pp_u2d(x); return pp_d2u(f * f); }
static inline int f64sq_bad(uint64_t x) { return (x & 0x7fffffffffffffffULL) >= 0x7ff0000000000000ULL; }
static inline double f64sq_score(uint64_t x) { double f = pp_u2d(x); return f * f; }
static inline uint64_t f64id_key(uint64_t x) { return pp_flip64(x); }
static inline int f64id_bad(uint64_t x) { return (x & 0x7fffffffffffffffULL) > 0x7ff0000000000000ULL; }
static inline double f64id_score(uint64_t x) { return pp_u2d(x); }

/* Ready-made 64-bit keys (block ranking). */
static inline uint64_t u64key_key(uint64_t x) { return x; }
static inline int u64key_bad(uint64_t x) { (void)x; return 0; }

/* ------------------------------------------------------------------ variants */

#define HAS_SCORE
#define HAS_IMPORTANCE
#define SCORE_T float

#define NAME f16abs
#define IN_T uint16_t
#define KEY_T uint16_t
#define KEY_MAX UINT16_MAX
#include "pp_variant.inc"
#undef NAME
#define NAME f16sq
#include "pp_variant.inc"
#undef NAME
#define NAME bf16abs
#include "pp_variant.inc"
#undef NAME
#undef KEY_T
#undef KEY_MAX
#define NAME bf16sq
#define KEY_T uint32_t
#define KEY_MAX UINT32_MAX
#include "pp_variant.inc"
#undef NAME
#undef IN_T
#define NAME f32abs
#define IN_T uint32_t
#include "pp_variant.inc"
#undef NAME
#define NAME f32sq
#include "pp_variant.inc"
#undef NAME
#undef IN_T
#undef KEY_T
#undef KEY_MAX
#undef SCORE_T
#define SCORE_T double
#define NAME f64abs
#define IN_T uint64_t
#define KEY_T uint64_t
#define KEY_MAX UINT64_MAX
#include "pp_variant.inc"
#undef NAME
#define NAME f64sq
#include "pp_variant.inc"
#undef NAME
#undef IN_T
#undef KEY_T
#undef KEY_MAX
#undef SCORE_T
#undef HAS_IMPORTANCE

/* identity variants: scores only (no importance) */
#define SCORE_T float
#define NAME f16id
#define IN_T uint16_t
#define KEY_T uint16_t
#define KEY_MAX UINT16_MAX
#include "pp_variant.inc"
#undef NAME
#define NAME bf16id
#include "pp_variant.inc"
#undef NAME
#undef IN_T
#undef KEY_T
#undef KEY_MAX
#define NAME f32id
#define IN_T uint32_t
#define KEY_T uint32_t
#define KEY_MAX UINT32_MAX
#include "pp_variant.inc"
#undef NAME
#undef IN_T
#undef KEY_T
#undef KEY_MAX
#undef SCORE_T
#define SCORE_T double
#define NAME f64id
#define IN_T uint64_t
#define KEY_T uint64_t
#define KEY_MAX UINT64_MAX
#include "pp_variant.inc"
#undef NAME
#undef HAS_SCORE
#undef SCORE_T
#define NAME u64key
#include "pp_variant.inc"
#undef NAME
#undef IN_T
#undef KEY_T
#undef KEY_MAX

/* ------------------------------------------------------------------ dispatch */

#define PP_VARIANT_ID(dtype, transform) ((dtype) * 3 + (transform))

static int pp_valid(int dtype, int transform)
{
    return dtype >= 0 && dtype <= 3 && transform >= 0 && transform <= 2;
}

static int pp_unstructured_any(void *values, int dtype, int transform, int64_t n, int64_t k,
                               uint8_t *out, int nthreads, int options, int *path,
                               int64_t *bad_count, int64_t *bad_first)
{
    int dummy = 0;
    if (!path) path = &dummy;
    *path = 0;
    if (!pp_valid(dtype, transform) || n < 0 || k < 0 || k > n) return PP_ERR_ARG;
    size_t N = (size_t)n, K = (size_t)k;
    int nt = pp_threads(nthreads, N);
    switch (PP_VARIANT_ID(dtype, transform)) {
    case PP_VARIANT_ID(PP_F16, PP_ABS): return f16abs_unstructured(values, N, K, out, nt, options, path, bad_count, bad_first);
    case PP_VARIANT_ID(PP_F16, PP_SQUARE): return f16sq_unstructured(values, N, K, out, nt, options, path, bad_count, bad_first);
    case PP_VARIANT_ID(PP_F16, PP_IDENTITY): return f16id_unstructured(values, N, K, out, nt, options, path, bad_count, bad_first);
    case PP_VARIANT_ID(PP_BF16, PP_ABS): return bf16abs_unstructured(values, N, K, out, nt, options, path, bad_count, bad_first);
    case PP_VARIANT_ID(PP_BF16, PP_SQUARE): return bf16sq_unstructured(values, N, K, out, nt, options, path, bad_count, bad_first);
    case PP_VARIANT_ID(PP_BF16, PP_IDENTITY): return bf16id_unstructured(values, N, K, out, nt, options, path, bad_count, bad_first);
    case PP_VARIANT_ID(PP_F32, PP_ABS): return f32abs_unstructured(values, N, K, out, nt, options, path, bad_count, bad_first);
    case PP_VARIANT_ID(PP_F32, PP_SQUARE): return f32sq_unstructured(values, N, K, out, nt, options, path, bad_count, bad_first);
    case PP_VARIANT_ID(PP_F32, PP_IDENTITY): return f32id_unstructured(values, N, K, out, nt, options, path, bad_count, bad_first);
    case PP_VARIANT_ID(PP_F64, PP_ABS): return f64abs_unstructured(values, N, K, out, nt, options, path, bad_count, bad_first);
    case PP_VARIANT_ID(PP_F64, PP_SQUARE): return f64sq_unstructured(values, N, K, out, nt, options, path, bad_count, bad_first);
    case PP_VARIANT_ID(PP_F64, PP_IDENTITY): return f64id_unstructured(values, N, K, out, nt, options, path, bad_count, bad_first);
    }
    return PP_ERR_ARG;
}

int pp_unstructured_mask(const void *values, int dtype, int transform, int64_t n, int64_t k,
                         uint8_t *out, int nthreads, int options, int *path,
                         int64_t *bad_count, int64_t *bad_first)
{
    if (!out && n > 0) return PP_ERR_ARG;
    /* the mask variant never writes `values` */
    return pp_unstructured_any((void *)values, dtype, transform, n, k, out, nthreads, options,
                               path, bad_count, bad_first);
}

int pp_prune_unstructured(void *weights, int dtype, int transform, int64_t n, int64_t k,
                          int nthreads, int options, int *path,
                          int64_t *bad_count, int64_t *bad_first)
{
    return pp_unstructured_any(weights, dtype, transform, n, k, NULL, nthreads, options, path,
                               bad_count, bad_first);
}

static int pp_nm_any(void *values, int dtype, int transform, int64_t outer, int64_t length,
                     int64_t inner, int64_t n, int64_t m, uint8_t *out, int fresh, int nthreads,
                     int64_t *bad_count, int64_t *bad_first)
{
    if (!pp_valid(dtype, transform) || outer < 0 || length < 0 || inner < 0 || m < 1 || n < 0 ||
        n > m || length % m)
        return PP_ERR_ARG;
    size_t O = (size_t)outer, L = (size_t)length, I = (size_t)inner, NK = (size_t)n, M = (size_t)m;
    switch (PP_VARIANT_ID(dtype, transform)) {
    case PP_VARIANT_ID(PP_F16, PP_ABS): return f16abs_nm(values, O, L, I, NK, M, out, fresh, nthreads, bad_count, bad_first);
    case PP_VARIANT_ID(PP_F16, PP_SQUARE): return f16sq_nm(values, O, L, I, NK, M, out, fresh, nthreads, bad_count, bad_first);
    case PP_VARIANT_ID(PP_F16, PP_IDENTITY): return f16id_nm(values, O, L, I, NK, M, out, fresh, nthreads, bad_count, bad_first);
    case PP_VARIANT_ID(PP_BF16, PP_ABS): return bf16abs_nm(values, O, L, I, NK, M, out, fresh, nthreads, bad_count, bad_first);
    case PP_VARIANT_ID(PP_BF16, PP_SQUARE): return bf16sq_nm(values, O, L, I, NK, M, out, fresh, nthreads, bad_count, bad_first);
    case PP_VARIANT_ID(PP_BF16, PP_IDENTITY): return bf16id_nm(values, O, L, I, NK, M, out, fresh, nthreads, bad_count, bad_first);
    case PP_VARIANT_ID(PP_F32, PP_ABS): return f32abs_nm(values, O, L, I, NK, M, out, fresh, nthreads, bad_count, bad_first);
    case PP_VARIANT_ID(PP_F32, PP_SQUARE): return f32sq_nm(values, O, L, I, NK, M, out, fresh, nthreads, bad_count, bad_first);
    case PP_VARIANT_ID(PP_F32, PP_IDENTITY): return f32id_nm(values, O, L, I, NK, M, out, fresh, nthreads, bad_count, bad_first);
    case PP_VARIANT_ID(PP_F64, PP_ABS): return f64abs_nm(values, O, L, I, NK, M, out, fresh, nthreads, bad_count, bad_first);
    case PP_VARIANT_ID(PP_F64, PP_SQUARE): return f64sq_nm(values, O, L, I, NK, M, out, fresh, nthreads, bad_count, bad_first);
    case PP_VARIANT_ID(PP_F64, PP_IDENTITY): return f64id_nm(values, O, L, I, NK, M, out, fresh, nthreads, bad_count, bad_first);
    }
    return PP_ERR_ARG;
}

int pp_nm_mask(const void *values, int dtype, int transform, int64_t outer, int64_t length,
               int64_t inner, int64_t n, int64_t m, uint8_t *out, int out_is_fresh, int nthreads,
               int64_t *bad_count, int64_t *bad_first)
{
    if (!out) return PP_ERR_ARG;
    return pp_nm_any((void *)values, dtype, transform, outer, length, inner, n, m, out,
                     out_is_fresh, nthreads, bad_count, bad_first);
}

int pp_prune_nm(void *weights, int dtype, int transform, int64_t outer, int64_t length,
                int64_t inner, int64_t n, int64_t m, int nthreads,
                int64_t *bad_count, int64_t *bad_first)
{
    return pp_nm_any(weights, dtype, transform, outer, length, inner, n, m, NULL, 0, nthreads,
                     bad_count, bad_first);
}

int pp_block_sums(const void *values, int dtype, int transform, int64_t rows, int64_t cols,
                  int64_t bh, int64_t bw, double *sums, int nthreads,
                  int64_t *bad_count, int64_t *bad_first)
{
    if (!pp_valid(dtype, transform) || rows < 0 || cols < 0 || bh < 1 || bw < 1 || rows % bh ||
        cols % bw)
        return PP_ERR_ARG;
    size_t R = (size_t)rows, C = (size_t)cols, BH = (size_t)bh, BW = (size_t)bw;
    const void *v = values;
    switch (PP_VARIANT_ID(dtype, transform)) {
    case PP_VARIANT_ID(PP_F16, PP_ABS): return f16abs_block_sums(v, R, C, BH, BW, sums, nthreads, bad_count, bad_first);
    case PP_VARIANT_ID(PP_F16, PP_SQUARE): return f16sq_block_sums(v, R, C, BH, BW, sums, nthreads, bad_count, bad_first);
    case PP_VARIANT_ID(PP_F16, PP_IDENTITY): return f16id_block_sums(v, R, C, BH, BW, sums, nthreads, bad_count, bad_first);
    case PP_VARIANT_ID(PP_BF16, PP_ABS): return bf16abs_block_sums(v, R, C, BH, BW, sums, nthreads, bad_count, bad_first);
    case PP_VARIANT_ID(PP_BF16, PP_SQUARE): return bf16sq_block_sums(v, R, C, BH, BW, sums, nthreads, bad_count, bad_first);
    case PP_VARIANT_ID(PP_BF16, PP_IDENTITY): return bf16id_block_sums(v, R, C, BH, BW, sums, nthreads, bad_count, bad_first);
    case PP_VARIANT_ID(PP_F32, PP_ABS): return f32abs_block_sums(v, R, C, BH, BW, sums, nthreads, bad_count, bad_first);
    case PP_VARIANT_ID(PP_F32, PP_SQUARE): return f32sq_block_sums(v, R, C, BH, BW, sums, nthreads, bad_count, bad_first);
    case PP_VARIANT_ID(PP_F32, PP_IDENTITY): return f32id_block_sums(v, R, C, BH, BW, sums, nthreads, bad_count, bad_first);
    case PP_VARIANT_ID(PP_F64, PP_ABS): return f64abs_block_sums(v, R, C, BH, BW, sums, nthreads, bad_count, bad_first);
    case PP_VARIANT_ID(PP_F64, PP_SQUARE): return f64sq_block_sums(v, R, C, BH, BW, sums, nthreads, bad_count, bad_first);
    case PP_VARIANT_ID(PP_F64, PP_IDENTITY): return f64id_block_sums(v, R, C, BH, BW, sums, nthreads, bad_count, bad_first);
    }
    return PP_ERR_ARG;
}

int pp_block_mask(const void *values, int dtype, int transform, int64_t rows, int64_t cols,
                  int64_t bh, int64_t bw, int64_t k, uint8_t *out, int nthreads,
                  int64_t *bad_count, int64_t *bad_first)
{
    if (!pp_valid(dtype, transform) || rows < 0 || cols < 0 || bh < 1 || bw < 1 || rows % bh ||
        cols % bw || k < 0)
        return PP_ERR_ARG;
    size_t R = (size_t)rows, C = (size_t)cols, BH = (size_t)bh, BW = (size_t)bw;
    size_t nbr = R / BH, nbc = C / BW, nb = nbr * nbc;
    if ((size_t)k > nb) return PP_ERR_ARG;
    double *sums = (double *)malloc((nb ? nb : 1) * sizeof(double));
    uint8_t *keep = (uint8_t *)malloc(nb ? nb : 1);
    if (!sums || !keep) {
        free(sums); free(keep);
        return PP_ERR_NOMEM;
    }
    int st = pp_block_sums(values, dtype, transform, rows, cols, bh, bw, sums, nthreads, bad_count,
                           bad_first);
    if (st) {
        free(sums); free(keep);
        return st;
    }
    if (R * C == 0) {
        free(sums); free(keep);
        return PP_OK;
    }
    /* sums -> order keys in place: NaN highest, -0.0 == +0.0, sign flip */
    uint64_t *keys = (uint64_t *)sums;
    for (size_t i = 0; i < nb; i++) {
        double s = sums[i];
        keys[i] = s != s ? UINT64_MAX : pp_flip64(pp_d2u(s));
    }
    int path = 0;
    int nt = pp_threads(nthreads, nb);
    st = u64key_unstructured(keys, nb, (size_t)k, keep, nt, 0, &path, bad_count, bad_first);
    if (st) {
        free(sums); free(keep);
        return st;
    }
    int ntr = pp_threads(nthreads, R * C);
#pragma omp parallel for num_threads(ntr) if (ntr > 1) schedule(static)
    for (size_t r = 0; r < R; r++) {
        const uint8_t *kb = keep + (r / BH) * nbc;
        uint8_t *o = out + r * C;
        if (BW == 1) {
            memcpy(o, kb, C);
        } else {
            for (size_t j = 0; j < nbc; j++) memset(o + j * BW, kb[j], BW);
        }
    }
    free(sums);
    free(keep);
    return PP_OK;
}

/* ------------------------------------------------------------------ apply mask */

#define PP_APPLY(T)                                                                               \
    do {                                                                                          \
        T *w = (T *)weights;                                                                      \
        _Pragma("omp parallel for num_threads(nt) if (nt > 1) schedule(static)")                 \
        for (int t = 0; t < nt; t++) {                                                            \
            size_t b, e;                                                                          \
            pp_part(N, (size_t)nt, (size_t)t, &b, &e);                                            \
            for (size_t i = b; i < e; i++) w[i] &= (T)((T)0 - (T)(mask[i] != 0));                 \
        }                                                                                         \
    } while (0)

int pp_apply_mask(void *weights, int dtype, const uint8_t *mask, int64_t n, int nthreads)
{
    if (dtype < 0 || dtype > 3 || n < 0) return PP_ERR_ARG;
    size_t N = (size_t)n;
    int nt = pp_threads(nthreads, N);
    switch (dtype) {
    case PP_F16:
    case PP_BF16: PP_APPLY(uint16_t); break;
    case PP_F32: PP_APPLY(uint32_t); break;
    case PP_F64: PP_APPLY(uint64_t); break;
    }
    return PP_OK;
}

/* ------------------------------------------------------------------ importance */

int pp_importance(const void *weights, int dtype, int method, int64_t n, void *scores,
                  double *stats, int nthreads, int64_t *bad_count, int64_t *bad_first)
{
    if (dtype < 0 || dtype > 3 || (method != PP_ABS && method != PP_SQUARE) || n < 0)
        return PP_ERR_ARG;
    size_t N = (size_t)n;
    switch (PP_VARIANT_ID(dtype, method)) {
    case PP_VARIANT_ID(PP_F16, PP_ABS): return f16abs_importance(weights, N, scores, stats, nthreads, bad_count, bad_first);
    case PP_VARIANT_ID(PP_F16, PP_SQUARE): return f16sq_importance(weights, N, scores, stats, nthreads, bad_count, bad_first);
    case PP_VARIANT_ID(PP_BF16, PP_ABS): return bf16abs_importance(weights, N, scores, stats, nthreads, bad_count, bad_first);
    case PP_VARIANT_ID(PP_BF16, PP_SQUARE): return bf16sq_importance(weights, N, scores, stats, nthreads, bad_count, bad_first);
    case PP_VARIANT_ID(PP_F32, PP_ABS): return f32abs_importance(weights, N, scores, stats, nthreads, bad_count, bad_first);
    case PP_VARIANT_ID(PP_F32, PP_SQUARE): return f32sq_importance(weights, N, scores, stats, nthreads, bad_count, bad_first);
    case PP_VARIANT_ID(PP_F64, PP_ABS): return f64abs_importance(weights, N, scores, stats, nthreads, bad_count, bad_first);
    case PP_VARIANT_ID(PP_F64, PP_SQUARE): return f64sq_importance(weights, N, scores, stats, nthreads, bad_count, bad_first);
    }
    return PP_ERR_ARG;
}

/* ------------------------------------------------------------------ test hook */

int pp_debug_index_math(int64_t n, int parts, int part, int64_t sample_count, int64_t sample_i,
                        int64_t *begin, int64_t *end, int64_t *sample_pos)
{
    if (n < 0 || parts < 1 || part < 0 || part >= parts) return PP_ERR_ARG;
    size_t b, e;
    pp_part((size_t)n, (size_t)parts, (size_t)part, &b, &e);
    *begin = (int64_t)b;
    *end = (int64_t)e;
    if (sample_count >= 1 && sample_count <= n && sample_i >= 0 && sample_i < sample_count)
        *sample_pos = (int64_t)pp_sample_pos((size_t)n, (size_t)sample_count, (size_t)sample_i);
    else
        *sample_pos = -1;
    return PP_OK;
}

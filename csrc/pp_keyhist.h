/* pruneplug C backend: exact selection over many arrays (pruneplug/selection.py drives it).
 *
 * Selection keys (`keys`): PP_KEYS_MAG16 (float16/bfloat16 values: the 15 magnitude bits; for
 * bfloat16 with PP_SQUARE the smallest magnitude whose float32 square is the same),
 * PP_KEYS_F32 (the bits of the float32 score), PP_KEYS_F64 (the bits of the score as float64).
 * Scores: |w| (PP_ABS) or w*w (PP_SQUARE), float32 for 16-bit weights, else the weights' dtype.
 * Only PP_ABS and PP_SQUARE are accepted. NaN or +-Inf weights: PP_ERR_NONFINITE with the count
 * and the first flat index.
 *
 * This file is fed to cffi's cdef like pruneplug.h (no preprocessor lines but the guard).
 */
#ifndef PP_KEYHIST_H
#define PP_KEYHIST_H

#include <stdint.h>

enum pp_keys { PP_KEYS_MAG16 = 0, PP_KEYS_F32 = 1, PP_KEYS_F64 = 2 };

/* pp_count_zeros without a transform: count the zeros of a tensor that is not pruned. */
enum pp_zeros_option { PP_NO_TRANSFORM = -1 };

/* hist[(1 << bits) + 2] receives: [0] keys with key >> (shift + bits) below `prefix`, [1 + d] keys
 * with that prefix and digit (key >> shift) & ((1 << bits) - 1) == d, [last] keys above the prefix
 * (key >> 64 is 0). 0 <= bits <= 16, shift + bits <= 64. `zeros` (NULL: not counted) receives what
 * pp_count_zeros counts, in the same pass. One pass, threads. */
int pp_key_histogram(const void *values, int dtype, int transform, int keys, int64_t n,
                     int shift, int bits, uint64_t prefix, int64_t *hist, int64_t *zeros, int nthreads,
                     int64_t *bad_count, int64_t *bad_first);

/* counts[2] = exact zeros (-0.0 included) and weights whose score is zero (key 0 under every key
 * kind: the zeros, and for PP_SQUARE the weights whose square underflows to 0). `transform` is
 * PP_ABS or PP_SQUARE (NaN/Inf are an error), or PP_NO_TRANSFORM: zeros only (counts[1] =
 * counts[0]), no value rejected. One vectorised read pass, threads. */
int pp_count_zeros(const void *values, int dtype, int transform, int64_t n, int64_t *counts, int nthreads,
                   int64_t *bad_count, int64_t *bad_first);

/* Prune every weight whose key is < threshold and the first `ties` (flat order) whose key equals
 * it: `out` (NULL: count only; not `values`) receives the pruned weights (+0.0 where pruned),
 * `mask` (NULL: none) the keep-mask. counts[4] = keys below, keys equal, exact zeros (-0.0
 * included) in `values`, exact zeros in the result. One read pass (plus a partial rescan of the
 * ranges whose ties are pruned). `values` is never written. */
int pp_prune_below_key(const void *values, int dtype, int transform, int keys, int64_t n,
                       uint64_t threshold, int64_t ties, void *out, uint8_t *mask, int64_t *counts,
                       int nthreads, int64_t *bad_count, int64_t *bad_first);

#endif

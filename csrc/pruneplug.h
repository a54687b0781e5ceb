/* pruneplug C backend: the contract.
 *
 * Plain C99, no global state. Every function returns an int status (PP_OK == 0, negative on
 * error). Arrays are C-contiguous; element counts and indices are int64_t (arrays beyond 2^31
 * elements work). Weights/values are passed as raw bits: float16 and bfloat16 as uint16_t,
 * float32 as uint32_t, float64 as uint64_t, selected by `dtype` (enum pp_dtype). Masks are bytes
 * (0 = prune, 1 = keep), i.e. NumPy bool arrays.
 *
 * `nthreads`: 0 = OpenMP default (honours OMP_NUM_THREADS); >= 1 = exactly that many at most.
 * In a process forked after this library was loaded every call runs on the calling thread
 * (OpenMP's thread pool does not survive fork).
 * Results never depend on the thread count.
 *
 * Non-finite input (PP_ERR_NONFINITE): for transforms abs/square any NaN or +-Inf weight, for
 * identity any NaN; `*bad_count` receives how many and `*bad_first` the first flat index. It is
 * detected before anything is written to the weights (and, for mask functions, to `out`).
 *
 * This file is fed to cffi's cdef: keep it free of preprocessor directives other than the include
 * guard (build_cffi.py strips lines starting with '#') and of anything cdef cannot parse.
 */
#ifndef PRUNEPLUG_H
#define PRUNEPLUG_H

#include <stdint.h>

enum pp_status {
    PP_OK = 0,
    PP_ERR_NONFINITE = -1,
    PP_ERR_NOMEM = -2,
    PP_ERR_ARG = -3
};

/* Element types, the one list of codes: the cffi layer reads them as lib.PP_F16, ... (int8: 2:4
 * compression only, csrc/compress24.h). */
enum pp_dtype { PP_F16 = 0, PP_BF16 = 1, PP_F32 = 2, PP_F64 = 3, PP_I8 = 4 };

enum pp_transform { PP_ABS = 0, PP_SQUARE = 1, PP_IDENTITY = 2 };

/* Debug/test options for the unstructured selection (`options` argument; 0 in production). */
enum pp_select_option {
    PP_OPT_FORCE_SMALL = 1,   /* copy every key and select on the copy (the small-array path) */
    PP_OPT_FORCE_MISS = 2,    /* pretend the sampled bracket missed rank k: radix fallback */
    PP_OPT_TINY_BUFFER = 4,   /* give the bracket buffer a tiny capacity: overflow fallback */
    PP_OPT_FORCE_INCACHE = 8  /* the in-cache histogram path at any size (below 2^31 elements) */
};

/* Bits reported through `*path` by the unstructured functions (NULL allowed). */
enum pp_select_path {
    PP_PATH_SMALL = 1,        /* small-array path (all keys copied) */
    PP_PATH_BRACKET_HIT = 2,  /* sampled bracket contained rank k, selected in its buffer */
    PP_PATH_MISS = 4,         /* bracket missed rank k (below or above) */
    PP_PATH_OVERFLOW = 8,     /* bracket buffer overflowed */
    PP_PATH_HISTOGRAM = 16,   /* a 16-bit radix histogram pass was needed */
    PP_PATH_TIES = 32,        /* ties at the threshold needed the index-order boundary pass */
    PP_PATH_SINGLE_KEY = 64,  /* threshold found as a one-key range without a buffer */
    PP_PATH_INCACHE = 128     /* in-cache path: min/max pass, one histogram pass, bucket compacted */
};

/* Keep-mask pruning exactly k of n (0 <= k <= n): the first k of a stable ascending sort of the
 * scores. `out` receives n bytes. */
int pp_unstructured_mask(const void *values, int dtype, int transform, int64_t n, int64_t k,
                         uint8_t *out, int nthreads, int options, int *path,
                         int64_t *bad_count, int64_t *bad_first);

/* Same selection; zeroes (+0.0) the pruned weights in place. */
int pp_prune_unstructured(void *weights, int dtype, int transform, int64_t n, int64_t k,
                          int nthreads, int options, int *path,
                          int64_t *bad_count, int64_t *bad_first);

/* N:M along the middle axis of an (outer, length, inner) C-contiguous view: in every group of m
 * consecutive elements along `length` (elements `inner` apart) keep the `keep` largest scores;
 * ties keep the lower index. `length` is a multiple of m, 0 <= keep <= m. */
int pp_nm_mask(const void *values, int dtype, int transform, int64_t outer, int64_t length,
               int64_t inner, int64_t keep, int64_t m, uint8_t *out, int nthreads,
               int64_t *bad_count, int64_t *bad_first);

/* Same, zeroing the pruned weights in place. */
int pp_prune_nm(void *weights, int dtype, int transform, int64_t outer, int64_t length,
                int64_t inner, int64_t keep, int64_t m, int nthreads,
                int64_t *bad_count, int64_t *bad_first);

/* Block mask of a (rows, cols) array in (bh, bw) blocks; prunes exactly k blocks ranked by a
 * stable ascending sort of their float64 sums (row-major accumulation inside each block; NaN sums
 * rank highest). `out` receives rows*cols bytes. */
int pp_block_mask(const void *values, int dtype, int transform, int64_t rows, int64_t cols,
                  int64_t bh, int64_t bw, int64_t k, uint8_t *out, int nthreads,
                  int64_t *bad_count, int64_t *bad_first);

/* weights[i] = mask[i] ? weights[i] : +0.0, bits of kept entries untouched. */
int pp_apply_mask(void *weights, int dtype, const uint8_t *mask, int64_t n, int nthreads);

/* Importance scores (method: PP_ABS = l1, PP_SQUARE = l2) written to `scores` (float32 bits for
 * float16/bfloat16 weights, else the weights' dtype), and stats[4] = min, max, mean, std
 * (population; mean/std accumulated in float64 by chunks combined pairwise; NaN when n == 0). */
int pp_importance(const void *weights, int dtype, int method, int64_t n, void *scores,
                  double *stats, int nthreads, int64_t *bad_count, int64_t *bad_first);

/* The kernel build in use on this CPU ("default", "avx2" or "avx512"), copied into name[size].
 * PRUNEPLUG_CPU_ISA=default|avx2 in the environment caps it (tests compare the builds). */
int pp_active_isa(char *name, int size);

/* Test hook: the [begin, end) element range of part `part` of `parts` for an n-element array,
 * and the i-th sample position of the bracket sampler (exercises the 64-bit index arithmetic
 * with sizes beyond 2^31 without allocating them). */
int pp_debug_index_math(int64_t n, int parts, int part, int64_t sample_count, int64_t sample_i,
                        int64_t *begin, int64_t *end, int64_t *sample_pos);

#endif

/* pruneplug C backend: the public functions of pruneplug.h.
 *
 * They check their arguments, pick the kernel build for this CPU (portable, AVX2 or AVX-512; the
 * environment variable PRUNEPLUG_CPU_ISA=default|avx2|avx512 forces a lower one, for tests) and
 * call it. Results are identical whichever build runs: the kernels are integer key comparisons
 * and IEEE operations without contraction or reassociation.
 */
#include "pruneplug.h"
#include "pp_internal.h"
#include "pp_keys.h"
#include "pp_dispatch.h"

#include <pthread.h>

volatile int pp_forked_child = 0;

static void pp_after_fork_in_child(void) { pp_forked_child = 1; }

/* Registered when the library is loaded, so that every fork (os.fork, multiprocessing's fork
 * start method, a fork from other native code) marks the child; see pp_threads. */
__attribute__((constructor)) static void pp_register_fork_handler(void)
{
    pthread_atfork(NULL, NULL, pp_after_fork_in_child);
}

typedef struct {
    const char *name;
    int (*unstructured)(void *, int, int, size_t, size_t, uint8_t *, int, int, int *, int64_t *,
                        int64_t *);
    int (*nm)(void *, int, int, size_t, size_t, size_t, size_t, size_t, uint8_t *, int,
              int64_t *, int64_t *);
    int (*block_sums)(const void *, int, int, size_t, size_t, size_t, size_t, double *, int,
                      int64_t *, int64_t *);
    int (*select_u64)(uint64_t *, size_t, size_t, uint8_t *, int, int64_t *, int64_t *);
    int (*apply)(void *, int, const uint8_t *, size_t, int);
    int (*importance)(const void *, int, int, size_t, void *, double *, int, int64_t *, int64_t *);
} pp_kernels;

#define PP_KERNELS(S)                                                                             \
    {                                                                                             \
        #S, pp_k_unstructured_##S, pp_k_nm_##S, pp_k_block_sums_##S, pp_k_select_u64_##S,         \
            pp_k_apply_##S, pp_k_importance_##S                                                   \
    }

static const pp_kernels PP_DEFAULT = PP_KERNELS(default);
#ifdef PP_HAVE_X86_ISAS
static const pp_kernels PP_AVX2 = PP_KERNELS(avx2);
static const pp_kernels PP_AVX512 = PP_KERNELS(avx512);
#endif

static const pp_kernels *pp_pick(void)
{
#ifdef PP_HAVE_X86_ISAS
    const char *force = getenv("PRUNEPLUG_CPU_ISA");
    int cap = 2; /* the highest level allowed */
    if (force && force[0]) {
        if (!strcmp(force, "default")) cap = 0;
        else if (!strcmp(force, "avx2")) cap = 1;
    }
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("bmi") &&
               __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("popcnt");
    int avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                 __builtin_cpu_supports("avx512cd");
    if (cap >= 2 && avx512) return &PP_AVX512;
    if (cap >= 1 && avx2) return &PP_AVX2;
#endif
    return &PP_DEFAULT;
}

int pp_active_isa(char *name, int size)
{
    const char *s = pp_pick()->name;
    if (!name || size < 1) return PP_ERR_ARG;
    size_t len = strlen(s);
    if (len >= (size_t)size) len = (size_t)size - 1;
    memcpy(name, s, len);
    name[len] = 0;
    return PP_OK;
}

static int pp_valid(int dtype, int transform)
{
    return pp_valid_dtype(dtype) && pp_valid_transform(transform);
}

static void pp_clear_bad(int64_t *bad_count, int64_t *bad_first)
{
    if (bad_count) *bad_count = 0;
    if (bad_first) *bad_first = -1;
}

static int pp_unstructured_any(void *values, int dtype, int transform, int64_t n, int64_t k,
                               uint8_t *out, int nthreads, int options, int *path,
                               int64_t *bad_count, int64_t *bad_first)
{
    int dummy = 0;
    int64_t bc, bf;
    if (!path) path = &dummy;
    if (!bad_count) bad_count = &bc;
    if (!bad_first) bad_first = &bf;
    *path = 0;
    pp_clear_bad(bad_count, bad_first);
    if (!pp_valid(dtype, transform) || n < 0 || k < 0 || k > n) return PP_ERR_ARG;
    int nt = pp_threads(nthreads, (size_t)n);
    return pp_pick()->unstructured(values, dtype, transform, (size_t)n, (size_t)k, out, nt, options,
                                   path, bad_count, bad_first);
}

int pp_unstructured_mask(const void *values, int dtype, int transform, int64_t n, int64_t k,
                         uint8_t *out, int nthreads, int options, int *path,
                         int64_t *bad_count, int64_t *bad_first)
{
    if (!out && n > 0) return PP_ERR_ARG;
    /* with out != NULL the kernel only reads `values` */
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
                     int64_t inner, int64_t keep, int64_t m, uint8_t *out, int nthreads,
                     int64_t *bad_count, int64_t *bad_first)
{
    int64_t bc, bf;
    if (!bad_count) bad_count = &bc;
    if (!bad_first) bad_first = &bf;
    pp_clear_bad(bad_count, bad_first);
    if (!pp_valid(dtype, transform) || outer < 0 || length < 0 || inner < 0 || m < 1 || keep < 0 ||
        keep > m || length % m)
        return PP_ERR_ARG;
    return pp_pick()->nm(values, dtype, transform, (size_t)outer, (size_t)length, (size_t)inner,
                         (size_t)keep, (size_t)m, out, nthreads, bad_count, bad_first);
}

int pp_nm_mask(const void *values, int dtype, int transform, int64_t outer, int64_t length,
               int64_t inner, int64_t keep, int64_t m, uint8_t *out, int nthreads,
               int64_t *bad_count, int64_t *bad_first)
{
    if (!out) return PP_ERR_ARG;
    return pp_nm_any((void *)values, dtype, transform, outer, length, inner, keep, m, out,
                     nthreads, bad_count, bad_first);
}

int pp_prune_nm(void *weights, int dtype, int transform, int64_t outer, int64_t length,
                int64_t inner, int64_t keep, int64_t m, int nthreads,
                int64_t *bad_count, int64_t *bad_first)
{
    return pp_nm_any(weights, dtype, transform, outer, length, inner, keep, m, NULL, nthreads,
                     bad_count, bad_first);
}

static int pp_block_args(int dtype, int transform, int64_t rows, int64_t cols, int64_t bh, int64_t bw)
{
    return pp_valid(dtype, transform) && rows >= 0 && cols >= 0 && bh >= 1 && bw >= 1 &&
           rows % bh == 0 && cols % bw == 0;
}

int pp_block_mask(const void *values, int dtype, int transform, int64_t rows, int64_t cols,
                  int64_t bh, int64_t bw, int64_t k, uint8_t *out, int nthreads,
                  int64_t *bad_count, int64_t *bad_first)
{
    int64_t bc, bf;
    if (!bad_count) bad_count = &bc;
    if (!bad_first) bad_first = &bf;
    pp_clear_bad(bad_count, bad_first);
    if (!pp_block_args(dtype, transform, rows, cols, bh, bw) || k < 0) return PP_ERR_ARG;
    size_t R = (size_t)rows, C = (size_t)cols, BH = (size_t)bh, BW = (size_t)bw;
    size_t nbc = C / BW, nb = (R / BH) * nbc;
    if ((size_t)k > nb) return PP_ERR_ARG;
    const pp_kernels *K = pp_pick();
    double *sums = (double *)malloc((nb ? nb : 1) * sizeof(double));
    uint8_t *keep = (uint8_t *)malloc(nb ? nb : 1);
    int st = PP_ERR_NOMEM;
    if (!sums || !keep) goto done;
    st = K->block_sums(values, dtype, transform, R, C, BH, BW, sums, nthreads, bad_count, bad_first);
    if (st || R * C == 0) goto done;
    /* sums -> order keys in place (pp_sum64_key: NaN highest as NumPy sorts it, -0.0 == +0.0) */
    uint64_t *keys = (uint64_t *)sums;
    for (size_t i = 0; i < nb; i++) keys[i] = pp_sum64_key(sums[i]);
    st = K->select_u64(keys, nb, (size_t)k, keep, pp_threads(nthreads, nb), bad_count, bad_first);
    if (st) goto done;
    {
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
    }
done:
    free(sums);
    free(keep);
    return st;
}

int pp_apply_mask(void *weights, int dtype, const uint8_t *mask, int64_t n, int nthreads)
{
    if (!pp_valid_dtype(dtype) || n < 0) return PP_ERR_ARG;
    return pp_pick()->apply(weights, dtype, mask, (size_t)n, pp_threads(nthreads, (size_t)n));
}

int pp_importance(const void *weights, int dtype, int method, int64_t n, void *scores,
                  double *stats, int nthreads, int64_t *bad_count, int64_t *bad_first)
{
    int64_t bc, bf;
    if (!bad_count) bad_count = &bc;
    if (!bad_first) bad_first = &bf;
    pp_clear_bad(bad_count, bad_first);
    if (!pp_valid_dtype(dtype) || (method != PP_ABS && method != PP_SQUARE) || n < 0)
        return PP_ERR_ARG;
    return pp_pick()->importance(weights, dtype, method, (size_t)n, scores, stats, nthreads,
                                 bad_count, bad_first);
}

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

/* Internal: the per-ISA kernel entry points (defined by pp_kernels.inc in pp_isa_*.c).
 * `nt`: a thread count already resolved by pp_threads (pruneplug.c); `nthreads`: the caller's
 * request (pruneplug.h), resolved by the kernel. `n`: an element count; `nk`: how many to keep
 * per group of m. */
#ifndef PP_DISPATCH_H
#define PP_DISPATCH_H
#include <stddef.h>
#include <stdint.h>

#define PP_DECLARE_ISA(S)                                                                         \
    int pp_k_unstructured_##S(void *values, int dtype, int transform, size_t n, size_t k,         \
                              uint8_t *out, int nt, int options, int *path, int64_t *bad_count,   \
                              int64_t *bad_first);                                                \
    int pp_k_nm_##S(void *values, int dtype, int transform, size_t outer, size_t length,          \
                    size_t inner, size_t nk, size_t m, uint8_t *out, int nthreads,                \
                    int64_t *bad_count, int64_t *bad_first);                                      \
    int pp_k_block_sums_##S(const void *values, int dtype, int transform, size_t rows,            \
                            size_t cols, size_t bh, size_t bw, double *sums, int nthreads,        \
                            int64_t *bad_count, int64_t *bad_first);                              \
    int pp_k_select_u64_##S(uint64_t *keys, size_t n, size_t k, uint8_t *keep, int nt,            \
                            int64_t *bad_count, int64_t *bad_first);                              \
    int pp_k_apply_##S(void *weights, int dtype, const uint8_t *mask, size_t n, int nt);          \
    int pp_k_importance_##S(const void *weights, int dtype, int transform, size_t n,              \
                            void *scores, double *stats, int nthreads, int64_t *bad_count,        \
                            int64_t *bad_first);

PP_DECLARE_ISA(default)
#if defined(__x86_64__) && defined(__GNUC__)
#define PP_HAVE_X86_ISAS 1
PP_DECLARE_ISA(avx2)
PP_DECLARE_ISA(avx512)
#endif

#endif

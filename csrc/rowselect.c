/* Per-row exact selection: every row is an independent exact-k selection (pp_unstructured_mask
 * with one thread), rows spread over OpenMP threads. Each row's result is a pure function of the
 * row, so any thread count gives the same mask. */
#include <string.h>

#include "pruneplug.h"
#include "rowselect.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* True for a value the transform rejects: NaN/Inf weights (abs, square), NaN scores (identity). */
static int pp_row_bad(const void *values, int dtype, int transform, int64_t i)
{
    int identity = transform == PP_IDENTITY;
    switch (dtype) {
    case PP_F16: {
        uint16_t r = ((const uint16_t *)values)[i] & 0x7fffu;
        return identity ? r > 0x7c00u : (r & 0x7c00u) == 0x7c00u;
    }
    case PP_BF16: {
        uint16_t r = ((const uint16_t *)values)[i] & 0x7fffu;
        return identity ? r > 0x7f80u : (r & 0x7f80u) == 0x7f80u;
    }
    case PP_F32: {
        uint32_t r = ((const uint32_t *)values)[i] & 0x7fffffffu;
        return identity ? r > 0x7f800000u : (r & 0x7f800000u) == 0x7f800000u;
    }
    default: {
        uint64_t r = ((const uint64_t *)values)[i] & 0x7fffffffffffffffull;
        return identity ? r > 0x7ff0000000000000ull : (r & 0x7ff0000000000000ull) == 0x7ff0000000000000ull;
    }
    }
}

static int pp_row_threads(int requested, int64_t rows, int64_t n)
{
    int nt = requested;
#ifdef _OPENMP
    if (nt <= 0) nt = n < (1 << 15) ? 1 : omp_get_max_threads();
#else
    nt = 1;
#endif
    if (nt < 1) nt = 1;
    if (nt > 64) nt = 64;
    if ((int64_t)nt > rows) nt = rows > 0 ? (int)rows : 1;
    return nt;
}

int pp_row_mask(const void *values, int dtype, int transform, int64_t rows, int64_t cols, int64_t k,
                uint8_t *out, int nthreads, int64_t *bad_count, int64_t *bad_first)
{
    int64_t bc = 0, bf = -1;
    if (bad_count) *bad_count = 0;
    if (bad_first) *bad_first = -1;
    if (dtype < 0 || dtype > 3 || transform < 0 || transform > 2 || rows < 0 || cols < 0 || k < 0 || k > cols)
        return PP_ERR_ARG;
    int64_t n = rows * cols;
    if (n == 0) return PP_OK;
    if (!out) return PP_ERR_ARG;
    int nt = pp_row_threads(nthreads, rows, n);
    /* 1. the non-finite check over the whole array, before any write: the count is a sum and the
     *    first index a minimum, both independent of how the rows are shared out */
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static) reduction(+ : bc)
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c)
            bc += pp_row_bad(values, dtype, transform, r * cols + c);
    if (bc) {
        for (int64_t i = 0; i < n; ++i)
            if (pp_row_bad(values, dtype, transform, i)) { bf = i; break; }
        if (bad_count) *bad_count = bc;
        if (bad_first) *bad_first = bf;
        return PP_ERR_NONFINITE;
    }
    /* 2. trivial counts need no selection */
    if (k == 0 || k == cols) {
        memset(out, k == 0 ? 1 : 0, (size_t)n);
        return PP_OK;
    }
    /* 3. one sequential exact selection per row */
    size_t item = dtype == PP_F64 ? 8 : dtype == PP_F32 ? 4 : 2;
    int status = PP_OK;
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        const char *row = (const char *)values + (size_t)r * (size_t)cols * item;
        int st = pp_unstructured_mask(row, dtype, transform, cols, k, out + r * cols, 1, 0, NULL, NULL, NULL);
        if (st != PP_OK) {
#pragma omp critical(pp_row_status)
            if (status == PP_OK || st < status) status = st; /* the same status whatever the order */
        }
    }
    return status;
}

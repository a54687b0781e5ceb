/* Per-row exact selection: every row is an independent exact-k selection (pp_unstructured_mask
 * with one thread), rows spread over OpenMP threads. Each row's result is a pure function of the
 * row, so any thread count gives the same mask. */
#include <string.h>

#include "pruneplug.h"
#include "rowselect.h"
#include "pp_keys.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* True for a value the transform rejects (pp_keys.h): NaN/Inf weights (abs, square), NaN scores
 * (identity). */
static int pp_row_bad(const void *values, int dtype, int transform, int64_t i)
{
    int identity = transform == PP_IDENTITY;
    switch (dtype) {
    case PP_F16: {
        uint16_t x = ((const uint16_t *)values)[i];
        return identity ? pp_f16_nan(x) : pp_f16_nonfinite(x);
    }
    case PP_BF16: {
        uint16_t x = ((const uint16_t *)values)[i];
        return identity ? pp_bf16_nan(x) : pp_bf16_nonfinite(x);
    }
    case PP_F32: {
        uint32_t x = ((const uint32_t *)values)[i];
        return identity ? pp_f32_nan(x) : pp_f32_nonfinite(x);
    }
    default: {
        uint64_t x = ((const uint64_t *)values)[i];
        return identity ? pp_f64_nan(x) : pp_f64_nonfinite(x);
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
    if (!pp_valid_dtype(dtype) || !pp_valid_transform(transform) || rows < 0 || cols < 0 || k < 0 || k > cols)
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

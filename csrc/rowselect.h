/* pruneplug C backend: per-row exact selection (the `row_mask` operation).
 *
 * Same conventions as pruneplug.h (raw bits by `dtype`, `transform`, status codes, `nthreads`).
 * Fed to cffi's cdef like pruneplug.h: no preprocessor lines other than the include guard.
 */
#ifndef PRUNEPLUG_ROWSELECT_H
#define PRUNEPLUG_ROWSELECT_H

#include <stdint.h>

/* Keep-mask of a (rows, cols) C-contiguous array pruning exactly k (0 <= k <= cols) entries in
 * every row: the first k of a stable ascending sort of the row's scores (ties: lower column
 * first). Non-finite input is detected over the whole array (count, first flat index) before
 * anything is written to `out`. Rows run in parallel (OpenMP); each row's selection is
 * sequential, so the result does not depend on the thread count. */
int pp_row_mask(const void *values, int dtype, int transform, int64_t rows, int64_t cols, int64_t k,
                uint8_t *out, int nthreads, int64_t *bad_count, int64_t *bad_first);

#endif

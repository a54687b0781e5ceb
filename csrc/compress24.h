/* pruneplug C backend: 2:4 compression (values + metadata for NVIDIA sparse tensor cores).
 *
 * The format is specified by pruneplug/sparse24.py and its NumPy reference
 * (backends/numpy/compress24.py); every function here is bit-identical to it.
 *
 * A C-contiguous (rows, cols) weight, 2:4 sparse along its rows (1:2 for float32), becomes
 *   values   (rows, cols/2), the weight's element type (raw bits),
 *   metadata (rows, cols/16) int16 words (float16/bfloat16), (rows, cols/8) int16 (float32),
 *            (rows, cols/32) int32 (int8): per group one nibble idx0 | idx1 << 2, LSB first;
 *            layout PP24_PTX = logical row-major, PP24_CUTLASS = CUTLASS reorder_meta into
 *            ColumnMajorInterleaved<2>.
 * The caller has checked the shape rules (cols a multiple of the columns per metadata word; for
 * CUTLASS rows a multiple of 32 (16 for int8) and an even metadata column count).
 *
 * Status codes: PP24_OK, or
 *   PP24_ERR_NOT_SPARSE: a group has too many nonzeros; *bad_row, *bad_group (first in C order)
 *                        and *bad_value (its nonzero count) are set; outputs are garbage.
 *   PP24_ERR_BAD_NIBBLE: decompression met an invalid nibble; *bad_row, *bad_group (logical, first
 *                        in C order) and *bad_value (the nibble); output is garbage.
 *   PP24_ERR_NONFINITE:  prune-compress met NaN/Inf float weights; *bad_count = how many,
 *                        *bad_first = the first flat index (as in pruneplug.h).
 *   PP24_ERR_ARG:        bad dtype, layout, transform or shape.
 * `nthreads`: 0 = OpenMP default, >= 1 at most that many. Results never depend on it.
 *
 * Fed to cffi's cdef (preprocessor lines are dropped): keep it plain.
 */
#ifndef PRUNEPLUG_COMPRESS24_H
#define PRUNEPLUG_COMPRESS24_H

#include <stdint.h>

#include "pruneplug.h"

enum pp24_status {
    PP24_OK = 0,
    PP24_ERR_NOT_SPARSE = -20,
    PP24_ERR_BAD_NIBBLE = -21,
    PP24_ERR_NONFINITE = -22,
    PP24_ERR_ARG = -23
};

/* `dtype` is one of enum pp_dtype (pruneplug.h): PP_F16, PP_BF16, PP_F32 or PP_I8; the
 * `transform` of pp24_prune_compress is PP_ABS or PP_SQUARE (enum pp_transform; int8 always
 * uses |w|). */

enum pp24_layout { PP24_PTX = 0, PP24_CUTLASS = 1 };

int pp24_compress(const void *weights, int dtype, int64_t rows, int64_t cols, int layout,
                  void *values, void *metadata, int nthreads,
                  int64_t *bad_row, int64_t *bad_group, int64_t *bad_value);

int pp24_decompress(const void *values, const void *metadata, int dtype, int64_t rows,
                    int64_t cols, int layout, void *dense, int nthreads,
                    int64_t *bad_row, int64_t *bad_group, int64_t *bad_value);

/* Prune by magnitude (keep the 2 largest of 4, 1 of 2 for float32; ties keep the lower index;
 * pruned positions become +0) and compress the result, without touching `weights`. A pruned
 * group is always sparse enough, so the only data error is PP24_ERR_NONFINITE. */
int pp24_prune_compress(const void *weights, int dtype, int transform, int64_t rows, int64_t cols,
                        int layout, void *values, void *metadata, int nthreads,
                        int64_t *bad_count, int64_t *bad_first);

/* Flat offset of logical metadata word (r, c) of a (rows, ncols) matrix in the CUTLASS layout
 * (word_bytes 2 or 4). Exposed for tests. */
int64_t pp24_cutlass_offset(int64_t r, int64_t c, int64_t rows, int word_bytes);

#endif

/* 2:4 compression for NVIDIA sparse tensor cores: see compress24.h for the contract and
 * pruneplug/sparse24.py for the format. Bit-identical to backends/numpy/compress24.py.
 *
 * One pass: each group of 4 elements is read once as one machine word (uint64 for 16-bit types,
 * uint32 for int8, a pair of uint32 for float32), its nonzero pattern computed branch-free with
 * bit tricks, and a 16-entry table gives the kept pair and the nibble. Rows are split between
 * OpenMP threads; the first offending group (in C order) is located afterwards, off the fast path.
 */
#include "compress24.h"
#include "pp_internal.h"
#include "pp_keys.h"

/* Kept pair (K0 < K1) and nibble by nonzero pattern p (bit i = element i nonzero). Groups with
 * fewer than two nonzeros are padded as PyTorch pads them; 3 or 4 nonzeros are flagged in BAD. */
static const uint8_t K0[16] = {2, 0, 1, 0, 2, 0, 1, 0, 2, 0, 1, 0, 2, 0, 0, 0};
static const uint8_t K1[16] = {3, 2, 2, 1, 3, 2, 2, 1, 3, 3, 3, 1, 3, 1, 1, 1};
static const uint8_t NIB[16] = {0xE, 0x8, 0x9, 0x4, 0xE, 0x8, 0x9, 0x4,
                                0xE, 0xC, 0xD, 0x4, 0xE, 0x4, 0x4, 0x4};
static const uint8_t BAD[16] = {0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 1, 1, 1};
/* Invalid nibbles: 2:4 groups (0x0, 0x1, 0x2, 0x3, 0x5, 0x6, 0x7, 0xA, 0xB, 0xF are not ordered
 * pairs idx0 < idx1) and 1:2 pairs (only 0x4 and 0xE). */
static const uint8_t INVALID24[16] = {1, 1, 1, 1, 0, 1, 1, 1, 0, 0, 1, 1, 0, 0, 0, 1};
static const uint8_t INVALID12[16] = {1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1};

int64_t pp24_cutlass_offset(int64_t r, int64_t c, int64_t rows, int word_bytes)
{
    int64_t group = word_bytes == 2 ? 32 : 16, interweave = word_bytes == 2 ? 4 : 2;
    int64_t dr0 = r / group * group + (r % 8) * interweave + (r % group) / 8;
    /* 2x2 swizzle folded in: see pruneplug/sparse24.py */
    return (c >> 1) * 2 * rows + 2 * (dr0 & ~(int64_t)1) + (c & 1) * 2 + (dr0 & 1);
}

/* Where logical word (r, c) goes: per row, the CUTLASS offset is base + (c>>1)*2*rows + (c&1)*2. */
typedef struct {
    int layout;
    int64_t rows, ncols;
    int word_bytes;
} meta_map;

static inline int64_t row_base(const meta_map *mm, int64_t r)
{
    if (mm->layout == PP24_PTX) return r * mm->ncols;
    return pp24_cutlass_offset(r, 0, mm->rows, mm->word_bytes);
}

static inline int64_t word_index(const meta_map *mm, int64_t base, int64_t c)
{
    if (mm->layout == PP24_PTX) return base + c;
    return base + (c >> 1) * 2 * mm->rows + (c & 1) * 2;
}

/* ---------------------------------------------------------------------------------------------
 * per-group kernels
 * ------------------------------------------------------------------------------------------- */
static inline unsigned pattern16(uint64_t g)
{
    /* bit 15 of each lane set iff its low 15 bits are nonzero (-0.0 is zero, NaN nonzero) */
    uint64_t m = ((g & 0x7FFF7FFF7FFF7FFFULL) + 0x7FFF7FFF7FFF7FFFULL) & 0x8000800080008000ULL;
    return (unsigned)((m * 0x0000200040008001ULL) >> 60); /* bits 15,31,47,63 -> 60..63 */
}

static inline unsigned pattern8(uint32_t g)
{
    uint32_t m = (((g & 0x7F7F7F7Fu) + 0x7F7F7F7Fu) | g) & 0x80808080u;
    return (unsigned)((m * 0x00204081u) >> 28); /* bits 7,15,23,31 -> 28..31 */
}

static inline unsigned put16(uint64_t g, uint16_t *v, unsigned *bad)
{
    unsigned p = pattern16(g);
    *bad |= BAD[p];
    uint32_t pair = (uint32_t)((g >> (K0[p] * 16)) & 0xFFFFu) | ((uint32_t)((g >> (K1[p] * 16)) & 0xFFFFu) << 16);
    memcpy(v, &pair, 4);
    return NIB[p];
}

static inline unsigned put8(uint32_t g, uint8_t *v, unsigned *bad)
{
    unsigned p = pattern8(g);
    *bad |= BAD[p];
    uint16_t pair = (uint16_t)(((g >> (K0[p] * 8)) & 0xFFu) | (((g >> (K1[p] * 8)) & 0xFFu) << 8));
    memcpy(v, &pair, 2);
    return NIB[p];
}

static inline unsigned put32(uint32_t lo, uint32_t hi, uint32_t *v, unsigned *bad)
{
    unsigned nz0 = (lo & 0x7FFFFFFFu) != 0, nz1 = (hi & 0x7FFFFFFFu) != 0;
    *bad |= nz0 & nz1;
    *v = nz0 ? lo : hi;
    return nz0 ? 0x4u : 0xEu;
}

/* ---------------------------------------------------------------------------------------------
 * row loops (return the first row with a bad group, or -1)
 * ------------------------------------------------------------------------------------------- */
static int64_t compress_rows16(const uint16_t *w, int64_t r0, int64_t r1, int64_t cols,
                               const meta_map *mm, uint16_t *vals, uint16_t *meta)
{
    int64_t ncols = cols / 16;
    for (int64_t r = r0; r < r1; r++) {
        const uint16_t *wr = w + r * cols;
        uint16_t *vr = vals + r * (cols / 2);
        int64_t base = row_base(mm, r);
        unsigned bad = 0;
        for (int64_t c = 0; c < ncols; c++) {
            uint64_t g0, g1, g2, g3;
            memcpy(&g0, wr + c * 16, 8);
            memcpy(&g1, wr + c * 16 + 4, 8);
            memcpy(&g2, wr + c * 16 + 8, 8);
            memcpy(&g3, wr + c * 16 + 12, 8);
            unsigned word = put16(g0, vr + c * 8, &bad) | put16(g1, vr + c * 8 + 2, &bad) << 4
                          | put16(g2, vr + c * 8 + 4, &bad) << 8 | put16(g3, vr + c * 8 + 6, &bad) << 12;
            meta[word_index(mm, base, c)] = (uint16_t)word;
        }
        if (bad) return r;
    }
    return -1;
}

static int64_t compress_rows32(const uint32_t *w, int64_t r0, int64_t r1, int64_t cols,
                               const meta_map *mm, uint32_t *vals, uint16_t *meta)
{
    int64_t ncols = cols / 8;
    for (int64_t r = r0; r < r1; r++) {
        const uint32_t *wr = w + r * cols;
        uint32_t *vr = vals + r * (cols / 2);
        int64_t base = row_base(mm, r);
        unsigned bad = 0;
        for (int64_t c = 0; c < ncols; c++) {
            const uint32_t *g = wr + c * 8;
            unsigned word = put32(g[0], g[1], vr + c * 4, &bad) | put32(g[2], g[3], vr + c * 4 + 1, &bad) << 4
                          | put32(g[4], g[5], vr + c * 4 + 2, &bad) << 8 | put32(g[6], g[7], vr + c * 4 + 3, &bad) << 12;
            meta[word_index(mm, base, c)] = (uint16_t)word;
        }
        if (bad) return r;
    }
    return -1;
}

static int64_t compress_rows8(const uint8_t *w, int64_t r0, int64_t r1, int64_t cols,
                              const meta_map *mm, uint8_t *vals, uint32_t *meta)
{
    int64_t ncols = cols / 32;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *wr = w + r * cols;
        uint8_t *vr = vals + r * (cols / 2);
        int64_t base = row_base(mm, r);
        unsigned bad = 0;
        for (int64_t c = 0; c < ncols; c++) {
            uint32_t word = 0;
            for (int j = 0; j < 8; j++) {
                uint32_t g;
                memcpy(&g, wr + c * 32 + j * 4, 4);
                word |= (uint32_t)put8(g, vr + c * 16 + j * 2, &bad) << (4 * j);
            }
            meta[word_index(mm, base, c)] = word;
        }
        if (bad) return r;
    }
    return -1;
}

/* The first group of row r with more than m/2 nonzeros (and its count), scanning scalar. */
static void first_bad_group(const void *w, int dtype, int64_t r, int64_t cols, int64_t *group, int64_t *count)
{
    int m = dtype == PP_F32 ? 2 : 4;
    for (int64_t g = 0; g < cols / m; g++) {
        int n = 0;
        for (int i = 0; i < m; i++) {
            int64_t k = r * cols + g * m + i;
            if (dtype == PP_F32) n += (((const uint32_t *)w)[k] & 0x7FFFFFFFu) != 0;
            else if (dtype == PP_I8) n += ((const uint8_t *)w)[k] != 0;
            else n += (((const uint16_t *)w)[k] & 0x7FFFu) != 0;
        }
        if (n > m / 2) {
            *group = g;
            *count = n;
            return;
        }
    }
    *group = -1;
    *count = 0;
}

static int check_args(int dtype, int64_t rows, int64_t cols, int layout)
{
    if (dtype != PP_F16 && dtype != PP_BF16 && dtype != PP_F32 && dtype != PP_I8) return 0;
    if (layout != PP24_PTX && layout != PP24_CUTLASS) return 0;
    if (rows < 0 || cols < 0) return 0;
    int64_t per_word = dtype == PP_F32 ? 8 : (dtype == PP_I8 ? 32 : 16);
    if (cols % per_word) return 0;
    if (layout == PP24_CUTLASS) {
        if (rows % (dtype == PP_I8 ? 16 : 32)) return 0;
        if ((cols / per_word) % 2) return 0;
    }
    return 1;
}

static meta_map make_map(int dtype, int64_t rows, int64_t cols, int layout)
{
    meta_map mm;
    mm.layout = layout;
    mm.rows = rows;
    mm.ncols = cols / (dtype == PP_F32 ? 8 : (dtype == PP_I8 ? 32 : 16));
    mm.word_bytes = dtype == PP_I8 ? 4 : 2;
    return mm;
}

/* Compress rows [r0, r1) with metadata written through map mm. */
static int64_t compress_range(const void *weights, int dtype, int64_t r0, int64_t r1, int64_t cols,
                              const meta_map *mm, void *values, void *metadata)
{
    if (dtype == PP_F32)
        return compress_rows32((const uint32_t *)weights, r0, r1, cols, mm, (uint32_t *)values, (uint16_t *)metadata);
    if (dtype == PP_I8)
        return compress_rows8((const uint8_t *)weights, r0, r1, cols, mm, (uint8_t *)values, (uint32_t *)metadata);
    return compress_rows16((const uint16_t *)weights, r0, r1, cols, mm, (uint16_t *)values, (uint16_t *)metadata);
}

/* CUTLASS layout, one band of `group` rows (32, or 16 for int8) at a time: the band's metadata is
 * built row-major in a small buffer (L1/L2-resident), then copied out in destination order, where
 * each column pair of the band is one contiguous run of 2*group words. Scattered 2-byte stores
 * into fresh (page-faulting) memory cost up to 8x a copy; this keeps every store sequential. */
static int64_t compress_bands(const void *weights, int dtype, int64_t b0, int64_t b1, int64_t cols,
                              const meta_map *mm, void *values, void *metadata, void *band)
{
    int64_t group = mm->word_bytes == 2 ? 32 : 16, ncols = mm->ncols;
    size_t esize = dtype == PP_F32 ? 4 : (dtype == PP_I8 ? 1 : 2);
    meta_map local = {PP24_PTX, group, ncols, mm->word_bytes};
    for (int64_t b = b0; b < b1; b++) {
        int64_t r0 = b * group;
        int64_t bad = compress_range((const char *)weights + (size_t)(r0 * cols) * esize, dtype, 0, group, cols,
                                     &local, (char *)values + (size_t)(r0 * (cols / 2)) * esize, band);
        int64_t base[32];
        for (int64_t rl = 0; rl < group; rl++) base[rl] = row_base(mm, r0 + rl);
        /* column pair q of the band: 2*group words inside one 128-byte window of the output */
        for (int64_t c = 0; c < ncols; c += 2) {
            for (int64_t rl = 0; rl < group; rl++) {
                for (int64_t cc = c; cc < c + 2; cc++) {
                    int64_t idx = word_index(mm, base[rl], cc);
                    if (mm->word_bytes == 2) ((uint16_t *)metadata)[idx] = ((const uint16_t *)band)[rl * ncols + cc];
                    else ((uint32_t *)metadata)[idx] = ((const uint32_t *)band)[rl * ncols + cc];
                }
            }
        }
        if (bad >= 0) return r0 + bad;
    }
    return -1;
}

int pp24_compress(const void *weights, int dtype, int64_t rows, int64_t cols, int layout,
                  void *values, void *metadata, int nthreads,
                  int64_t *bad_row, int64_t *bad_group, int64_t *bad_value)
{
    if (!check_args(dtype, rows, cols, layout)) return PP24_ERR_ARG;
    meta_map mm = make_map(dtype, rows, cols, layout);
    int64_t group = mm.word_bytes == 2 ? 32 : 16;
    int banded = layout == PP24_CUTLASS;
    int64_t units = banded ? rows / group : rows;
    int nt = pp_threads(nthreads, (size_t)(rows * cols));
    if ((int64_t)nt > units) nt = units > 0 ? (int)units : 1;
    int64_t first[256];
#pragma omp parallel for num_threads(nt) schedule(static, 1)
    for (int t = 0; t < nt; t++) {
        size_t b, e;
        pp_part((size_t)units, (size_t)nt, (size_t)t, &b, &e);
        void *band = banded ? malloc((size_t)(group * mm.ncols) * (size_t)mm.word_bytes + 1) : NULL;
        if (band)
            first[t] = compress_bands(weights, dtype, (int64_t)b, (int64_t)e, cols, &mm, values, metadata, band);
        else if (banded)  /* no memory for the band buffer: scatter directly */
            first[t] = compress_range(weights, dtype, (int64_t)b * group, (int64_t)e * group, cols, &mm, values, metadata);
        else
            first[t] = compress_range(weights, dtype, (int64_t)b, (int64_t)e, cols, &mm, values, metadata);
        free(band);
    }
    for (int t = 0; t < nt; t++) {
        if (first[t] >= 0) {
            *bad_row = first[t];
            first_bad_group(weights, dtype, first[t], cols, bad_group, bad_value);
            return PP24_ERR_NOT_SPARSE;
        }
    }
    return PP24_OK;
}

/* ---------------------------------------------------------------------------------------------
 * decompression
 * ------------------------------------------------------------------------------------------- */
static int64_t decompress_rows(const void *values, const void *metadata, int dtype, int64_t r0, int64_t r1,
                               int64_t cols, const meta_map *mm, void *dense)
{
    const uint8_t *invalid = dtype == PP_F32 ? INVALID12 : INVALID24;
    int per_word = mm->word_bytes * 2;
    for (int64_t r = r0; r < r1; r++) {
        int64_t base = row_base(mm, r);
        unsigned bad = 0;
        for (int64_t c = 0; c < mm->ncols; c++) {
            int64_t idx = word_index(mm, base, c);
            uint32_t word = mm->word_bytes == 2 ? ((const uint16_t *)metadata)[idx] : ((const uint32_t *)metadata)[idx];
            for (int j = 0; j < per_word; j++) {
                unsigned nib = (word >> (4 * j)) & 0xFu;
                bad |= invalid[nib];
                unsigned i0 = nib & 3u, i1 = nib >> 2;
                int64_t grp = c * per_word + j;
                if (dtype == PP_F32) {
                    uint32_t v = ((const uint32_t *)values)[r * (cols / 2) + grp];
                    uint32_t *d = (uint32_t *)dense + r * cols + grp * 2;
                    d[0] = nib == 0xEu ? 0u : v;
                    d[1] = nib == 0xEu ? v : 0u;
                } else if (dtype == PP_I8) {
                    uint16_t pair;
                    memcpy(&pair, (const uint8_t *)values + r * (cols / 2) + grp * 2, 2);
                    uint32_t g = ((uint32_t)(pair & 0xFFu) << (8 * i0)) | ((uint32_t)(pair >> 8) << (8 * i1));
                    memcpy((uint8_t *)dense + r * cols + grp * 4, &g, 4);
                } else {
                    uint32_t pair;
                    memcpy(&pair, (const uint16_t *)values + r * (cols / 2) + grp * 2, 4);
                    uint64_t g = ((uint64_t)(pair & 0xFFFFu) << (16 * i0)) | ((uint64_t)(pair >> 16) << (16 * i1));
                    memcpy((uint16_t *)dense + r * cols + grp * 4, &g, 8);
                }
            }
        }
        if (bad) return r;
    }
    return -1;
}

int pp24_decompress(const void *values, const void *metadata, int dtype, int64_t rows,
                    int64_t cols, int layout, void *dense, int nthreads,
                    int64_t *bad_row, int64_t *bad_group, int64_t *bad_value)
{
    if (!check_args(dtype, rows, cols, layout)) return PP24_ERR_ARG;
    meta_map mm = make_map(dtype, rows, cols, layout);
    int nt = pp_threads(nthreads, (size_t)(rows * cols));
    if ((int64_t)nt > rows) nt = rows > 0 ? (int)rows : 1;
    int64_t first[256];
#pragma omp parallel for num_threads(nt) schedule(static, 1)
    for (int t = 0; t < nt; t++) {
        size_t b, e;
        pp_part((size_t)rows, (size_t)nt, (size_t)t, &b, &e);
        first[t] = decompress_rows(values, metadata, dtype, (int64_t)b, (int64_t)e, cols, &mm, dense);
    }
    for (int t = 0; t < nt; t++) {
        if (first[t] < 0) continue;
        int64_t r = first[t], base = row_base(&mm, r);
        int per_word = mm.word_bytes * 2;
        const uint8_t *invalid = dtype == PP_F32 ? INVALID12 : INVALID24;
        for (int64_t c = 0; c < mm.ncols; c++) {
            int64_t idx = word_index(&mm, base, c);
            uint32_t word = mm.word_bytes == 2 ? ((const uint16_t *)metadata)[idx] : ((const uint32_t *)metadata)[idx];
            for (int j = 0; j < per_word; j++) {
                unsigned nib = (word >> (4 * j)) & 0xFu;
                if (invalid[nib]) {
                    *bad_row = r;
                    *bad_group = c * per_word + j;
                    *bad_value = nib;
                    return PP24_ERR_BAD_NIBBLE;
                }
            }
        }
    }
    return PP24_OK;
}

/* ---------------------------------------------------------------------------------------------
 * prune by magnitude, then compress
 * ------------------------------------------------------------------------------------------- */
/* Keep-bits (bit i: keep element i) of the 2 largest of 4 keys, ties to the lower index: the rank
 * rule of N:M (pp_rank4, pp_keys.h). */
static inline unsigned top2(uint32_t k0, uint32_t k1, uint32_t k2, uint32_t k3)
{
    pp_rank4_t r = pp_rank4(k0, k1, k2, k3);
    return (r.r0 < 2) | (r.r1 < 2) << 1 | (r.r2 < 2) << 2 | (r.r3 < 2) << 3;
}

/* Key of one element (pp_keys.h, the kernels' keys; int8 always by |w|), widened to uint32. */
static inline uint32_t key_of(uint32_t bits, int dtype, int transform)
{
    int sq = transform == PP_SQUARE;
    switch (dtype) {
    case PP_I8: return pp_i8abs_key((uint8_t)bits);
    case PP_F16: return sq ? pp_f16sq_key((uint16_t)bits) : pp_f16abs_key((uint16_t)bits);
    case PP_BF16: return sq ? pp_bf16sq_key((uint16_t)bits) : pp_bf16abs_key((uint16_t)bits);
    default: return sq ? pp_f32sq_key(bits) : pp_f32abs_key(bits);
    }
}

/* The non-finite test of abs and square (int8 has none). */
static inline int nonfinite(uint32_t bits, int dtype)
{
    switch (dtype) {
    case PP_F16: return pp_f16_nonfinite((uint16_t)bits);
    case PP_BF16: return pp_bf16_nonfinite((uint16_t)bits);
    case PP_F32: return pp_f32_nonfinite(bits);
    default: return 0;
    }
}

typedef struct {
    int64_t count, first;
} nf_info;

static void prune_compress_rows(const void *w, int dtype, int transform, int64_t r0, int64_t r1, int64_t cols,
                                const meta_map *mm, void *vals, void *meta, nf_info *nf)
{
    int per_word = mm->word_bytes * 2;
    nf->count = 0;
    nf->first = -1;
    for (int64_t r = r0; r < r1; r++) {
        int64_t base = row_base(mm, r);
        unsigned bad = 0;
        for (int64_t c = 0; c < mm->ncols; c++) {
            uint32_t word = 0;
            for (int j = 0; j < per_word; j++) {
                int64_t grp = c * per_word + j;
                unsigned nib;
                if (dtype == PP_F32) {
                    const uint32_t *g = (const uint32_t *)w + r * cols + grp * 2;
                    for (int i = 0; i < 2; i++)
                        if (nonfinite(g[i], dtype)) {
                            if (nf->first < 0) nf->first = r * cols + grp * 2 + i;
                            nf->count++;
                        }
                    int keep0 = pp_rank2_first(key_of(g[0], dtype, transform), key_of(g[1], dtype, transform)) < 1;
                    nib = put32(keep0 ? g[0] : 0u, keep0 ? 0u : g[1], (uint32_t *)vals + r * (cols / 2) + grp, &bad);
                } else {
                    uint32_t e[4];
                    int64_t k = r * cols + grp * 4;
                    for (int i = 0; i < 4; i++) {
                        e[i] = dtype == PP_I8 ? ((const uint8_t *)w)[k + i] : ((const uint16_t *)w)[k + i];
                        if (nonfinite(e[i], dtype)) {
                            if (nf->first < 0) nf->first = k + i;
                            nf->count++;
                        }
                    }
                    unsigned keep = top2(key_of(e[0], dtype, transform), key_of(e[1], dtype, transform),
                                         key_of(e[2], dtype, transform), key_of(e[3], dtype, transform));
                    for (int i = 0; i < 4; i++)
                        if (!(keep >> i & 1)) e[i] = 0;
                    if (dtype == PP_I8) {
                        uint32_t g = e[0] | e[1] << 8 | e[2] << 16 | e[3] << 24;
                        nib = put8(g, (uint8_t *)vals + r * (cols / 2) + grp * 2, &bad);
                    } else {
                        uint64_t g = (uint64_t)e[0] | (uint64_t)e[1] << 16 | (uint64_t)e[2] << 32 | (uint64_t)e[3] << 48;
                        nib = put16(g, (uint16_t *)vals + r * (cols / 2) + grp * 2, &bad);
                    }
                }
                word |= (uint32_t)nib << (4 * j);
            }
            int64_t idx = word_index(mm, base, c);
            if (mm->word_bytes == 2) ((uint16_t *)meta)[idx] = (uint16_t)word;
            else ((uint32_t *)meta)[idx] = word;
        }
        (void)bad; /* a pruned group never has more than 2 nonzeros */
    }
}

int pp24_prune_compress(const void *weights, int dtype, int transform, int64_t rows, int64_t cols,
                        int layout, void *values, void *metadata, int nthreads,
                        int64_t *bad_count, int64_t *bad_first)
{
    if (!check_args(dtype, rows, cols, layout)) return PP24_ERR_ARG;
    if (transform != PP_ABS && transform != PP_SQUARE) return PP24_ERR_ARG;
    meta_map mm = make_map(dtype, rows, cols, layout);
    int nt = pp_threads(nthreads, (size_t)(rows * cols));
    if ((int64_t)nt > rows) nt = rows > 0 ? (int)rows : 1;
    nf_info nf[256];
#pragma omp parallel for num_threads(nt) schedule(static, 1)
    for (int t = 0; t < nt; t++) {
        size_t b, e;
        pp_part((size_t)rows, (size_t)nt, (size_t)t, &b, &e);
        prune_compress_rows(weights, dtype, transform, (int64_t)b, (int64_t)e, cols, &mm, values, metadata, &nf[t]);
    }
    int64_t count = 0, first = -1;
    for (int t = 0; t < nt; t++) {
        count += nf[t].count;
        if (first < 0 && nf[t].first >= 0) first = nf[t].first;
    }
    if (count) {
        *bad_count = count;
        *bad_first = first;
        return PP24_ERR_NONFINITE;
    }
    return PP24_OK;
}

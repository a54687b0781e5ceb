/* The variant table: the one list of the (dtype, transform) pairs the kernels are built for.
 *
 * A variant is the selection, N:M, block-sum and (for abs and square) importance kernels
 * specialised for one element type and one transform; its key, non-finite test and score are the
 * pp_<name>_key / _bad / _score functions of pp_keys.h. pp_kernels.inc instantiates every row
 * (`#define PP_VARIANT <name>` + `#include "pp_variant.inc"`) and generates its dispatch switches
 * from PP_VARIANTS; compile-time checks there make the instantiated set equal to this table.
 *
 * Columns of a row PP_ROW_<name>:
 *   dtype, transform  enum pp_dtype, enum pp_transform (pruneplug.h);
 *   element           unsigned type holding one element's bits;
 *   key               unsigned key type, the type pp_<name>_key returns (its largest value is
 *                     (key)~0);
 *   score, score bits the score's floating type and the unsigned type of its bits;
 *   importance        1: pp_importance accepts this transform (abs = l1, square = l2), 0: not.
 */
#ifndef PP_VARIANTS_H
#define PP_VARIANTS_H

/*                    dtype    transform    element   key       score   score bits  importance */
#define PP_ROW_f16abs  PP_F16,  PP_ABS,      uint16_t, uint16_t, float,  uint32_t,   1
#define PP_ROW_f16sq   PP_F16,  PP_SQUARE,   uint16_t, uint16_t, float,  uint32_t,   1
#define PP_ROW_f16id   PP_F16,  PP_IDENTITY, uint16_t, uint16_t, float,  uint32_t,   0
#define PP_ROW_bf16abs PP_BF16, PP_ABS,      uint16_t, uint16_t, float,  uint32_t,   1
#define PP_ROW_bf16sq  PP_BF16, PP_SQUARE,   uint16_t, uint32_t, float,  uint32_t,   1
#define PP_ROW_bf16id  PP_BF16, PP_IDENTITY, uint16_t, uint16_t, float,  uint32_t,   0
#define PP_ROW_f32abs  PP_F32,  PP_ABS,      uint32_t, uint32_t, float,  uint32_t,   1
#define PP_ROW_f32sq   PP_F32,  PP_SQUARE,   uint32_t, uint32_t, float,  uint32_t,   1
#define PP_ROW_f32id   PP_F32,  PP_IDENTITY, uint32_t, uint32_t, float,  uint32_t,   0
#define PP_ROW_f64abs  PP_F64,  PP_ABS,      uint64_t, uint64_t, double, uint64_t,   1
#define PP_ROW_f64sq   PP_F64,  PP_SQUARE,   uint64_t, uint64_t, double, uint64_t,   1
#define PP_ROW_f64id   PP_F64,  PP_IDENTITY, uint64_t, uint64_t, double, uint64_t,   0

/* Every row, in order: X(name, extra...) for each. Add a variant by adding its row above, its
 * name here and its key/bad/score functions to pp_keys.h; the build fails until pp_kernels.inc
 * instantiates it. */
#define PP_VARIANTS(X, ...)                                                                       \
    X(f16abs, __VA_ARGS__) X(f16sq, __VA_ARGS__) X(f16id, __VA_ARGS__)                            \
    X(bf16abs, __VA_ARGS__) X(bf16sq, __VA_ARGS__) X(bf16id, __VA_ARGS__)                         \
    X(f32abs, __VA_ARGS__) X(f32sq, __VA_ARGS__) X(f32id, __VA_ARGS__)                            \
    X(f64abs, __VA_ARGS__) X(f64sq, __VA_ARGS__) X(f64id, __VA_ARGS__)

/* One column of row `name` (name may itself be a macro, e.g. PP_VARIANT). */
#define PP_ROW_COLUMN(COLUMN, name) PP_ROW_COLUMN_(COLUMN, name)
#define PP_ROW_COLUMN_(COLUMN, name) PP_ROW_APPLY_(COLUMN, PP_ROW_##name)
#define PP_ROW_APPLY_(COLUMN, ...) COLUMN(__VA_ARGS__)
#define PP_COL_DTYPE(dtype, transform, element, key, score, score_bits, importance) dtype
#define PP_COL_TRANSFORM(dtype, transform, element, key, score, score_bits, importance) transform
#define PP_COL_ELEMENT(dtype, transform, element, key, score, score_bits, importance) element
#define PP_COL_KEY(dtype, transform, element, key, score, score_bits, importance) key
#define PP_COL_SCORE(dtype, transform, element, key, score, score_bits, importance) score
#define PP_COL_SCORE_BITS(dtype, transform, element, key, score, score_bits, importance) score_bits
#define PP_COL_IMPORTANCE(dtype, transform, element, key, score, score_bits, importance) importance

#endif

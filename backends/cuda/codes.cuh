// pruneplug CUDA backend: the codes the host passes as template parameters, in one place. Every
// .cu file includes this header (through common.cuh, or directly as compress24.cu does), and the
// host reads the values from here (backends/cuda/_kernels.py: defines("codes.cuh")), so no code
// is written a second time.
#pragma once

// dtype codes (template parameter DT)
#define DT_F16 0
#define DT_BF16 1
#define DT_F32 2
#define DT_F64 3
#define DT_KEY64 4  // already-ordered 64-bit keys (block sums)
#define DT_I8 5     // int8: 2:4 compression only

// transform codes (template parameter TR)
#define TR_ABS 0
#define TR_SQUARE 1
#define TR_IDENTITY 2
#define TR_KEY 3

// 2:4 metadata layouts (template parameter LAYOUT of compress24.cu)
#define LAYOUT24_PTX 0
#define LAYOUT24_CUTLASS 1

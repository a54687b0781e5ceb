/* The portable build of the kernels (baseline ISA of the compiler's target). */
#define PP_ISA default
#include "pp_kernels.inc"

/* The AVX2 build of the kernels (x86-64 only; chosen at run time when the CPU has it). */
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,bmi,bmi2,popcnt,lzcnt")
#define PP_ISA avx2
#include "pp_kernels.inc"
#else
typedef int pp_isa_avx2_not_built;
#endif

/* The AVX-512 (x86-64-v4 subset) build of the kernels; chosen at run time when the CPU has it. */
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512cd,avx2,bmi,bmi2,popcnt,lzcnt")
#define PP_ISA avx512
#include "pp_kernels.inc"
#else
typedef int pp_isa_avx512_not_built;
#endif

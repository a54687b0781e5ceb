/* Internal helpers shared by the pruneplug C sources (not part of the cffi contract). */
#ifndef PP_INTERNAL_H
#define PP_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define PP_CAT2(a, b) a##_##b
#define PP_CAT(a, b) PP_CAT2(a, b)

/* Below this many elements a pass runs on one thread (the fork/join costs more than it saves). */
#define PP_PAR_MIN ((size_t)1 << 17)
/* Below this many elements the selection copies every key and selects on the copy. */
#define PP_SMALL_N ((size_t)1 << 14)
/* Elements per chunk of the count-and-compact pass (flags fit in L1). */
#define PP_CHUNK 2048
/* Elements per chunk of the tie-boundary counting pass. */
#define PP_TIE_CHUNK ((size_t)1 << 16)

static inline int pp_threads(int requested, size_t n)
{
    int nt = requested;
#ifdef _OPENMP
    if (nt <= 0) nt = omp_get_max_threads();
#else
    nt = 1;
#endif
    if (nt < 1) nt = 1;
    if (nt > 256) nt = 256;
    if (n < PP_PAR_MIN) nt = 1;
    return nt;
}

/* [begin, end) of part t of `parts` over n elements; no overflow for any n < 2^63. */
static inline void pp_part(size_t n, size_t parts, size_t t, size_t *b, size_t *e)
{
    size_t q = n / parts, r = n % parts;
    *b = q * t + (t < r ? t : r);
    *e = *b + q + (t < r ? 1 : 0);
}

static inline uint64_t pp_mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* i-th of s sample positions over n elements (s <= n): one per stride, jittered within it. */
static inline size_t pp_sample_pos(size_t n, size_t s, size_t i)
{
    size_t stride = n / s;
    return i * stride + (size_t)(pp_mix64((uint64_t)i) % (uint64_t)stride);
}

static inline uint32_t pp_f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float pp_u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint64_t pp_d2u(double f) { uint64_t u; memcpy(&u, &f, 8); return u; }
static inline double pp_u2d(uint64_t u) { double f; memcpy(&f, &u, 8); return f; }

/* float16 bits -> float32, exact, branch-free, independent of FTZ/DAZ. */
static inline float pp_h2f(uint16_t h)
{
    uint32_t s = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = ((uint32_t)h >> 10) & 0x1fu;
    uint32_t m = (uint32_t)h & 0x3ffu;
    uint32_t normal = s | ((e + 112u) << 23) | (m << 13);
    uint32_t infnan = s | 0x7f800000u | (m << 13);
    uint32_t den = pp_f2u((float)m * 0x1p-24f) | s;
    uint32_t r = e == 0 ? den : (e == 31 ? infnan : normal);
    return pp_u2f(r);
}

static inline float pp_bf2f(uint16_t b) { return pp_u2f((uint32_t)b << 16); }

static inline int pp_bitlen64(uint64_t x) { return x ? 64 - __builtin_clzll(x) : 0; }

#endif

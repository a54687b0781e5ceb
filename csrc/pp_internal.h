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

#include "pruneplug.h"

#define PP_CAT2(a, b) a##_##b
#define PP_CAT(a, b) PP_CAT2(a, b)

/* The float dtypes and the transforms the kernels take (enum pp_dtype, enum pp_transform). */
static inline int pp_valid_dtype(int dtype) { return dtype >= PP_F16 && dtype <= PP_F64; }
static inline int pp_valid_transform(int transform) { return transform >= PP_ABS && transform <= PP_IDENTITY; }

/* Below this many elements a pass runs on one thread (the fork/join costs more than it saves). */
#define PP_PAR_MIN ((size_t)1 << 20)
/* Below this many elements the selection copies every key and selects on the copy. */
#ifndef PP_SMALL_N
#define PP_SMALL_N ((size_t)1 << 12)
#endif
/* Up to this many elements (and unless a test option forces another path) the selection takes
 * the in-cache path: a min/max pass, one histogram pass, the bucket of rank k compacted. Half of
 * it for sign-flipped keys (identity: a dearer key per element in the scalar histogram pass).
 * Measured crossover with the sampled bracket: ~2^17 (abs/square), ~2^15-2^16 (identity). */
#ifndef PP_INCACHE_N
#define PP_INCACHE_N ((size_t)1 << 16)
#endif
/* Candidate keys of the in-cache path held on the stack (more: malloc). */
#define PP_INCACHE_STACK 1024
/* Bracket sample: PP_SAMPLE_MUL * sqrt(n) keys (clamped to [1024, 2^18]); the bracket spans
 * PP_SAMPLE_SIGMAS standard deviations of the sample rank on each side of rank k. */
#ifndef PP_SAMPLE_MUL
#define PP_SAMPLE_MUL 16.0
#endif
#ifndef PP_SAMPLE_SIGMAS
#define PP_SAMPLE_SIGMAS 6.0
#endif
/* Elements per chunk of the count-and-compact pass (flags fit in L1). */
#define PP_CHUNK 2048
/* Elements per chunk of the tie-boundary counting pass. */
#define PP_TIE_CHUNK ((size_t)1 << 16)

/* Nonzero in a process forked from one that loaded this library (set by a pthread_atfork child
 * handler in pruneplug.c). libgomp's thread pool does not survive fork: the child's pool records
 * threads that do not exist there, and the next parallel region with more than one thread waits
 * for them for ever. A forked child therefore runs every pass on the calling thread (a team of
 * one never touches the pool). Results never depend on the thread count. */
extern volatile int pp_forked_child;

static inline int pp_threads(int requested, size_t n)
{
    int nt = requested;
    if (pp_forked_child) return 1;
#ifdef _OPENMP
    if (nt <= 0) nt = omp_get_max_threads();
#else
    nt = 1;
#endif
    if (nt < 1) nt = 1;
    if (nt > 64) nt = 64;
    if (requested <= 0 && n < PP_PAR_MIN) nt = 1; /* an explicit request is honoured (tests) */
    return nt;
}

/* Work is split into more parts than threads (taken dynamically), so that one thread descheduled
 * by a busy machine does not hold half of the work: parts = 4 x threads. Results never depend on
 * how parts map to threads. */
#define PP_PARTS_PER_THREAD 4
static inline int pp_parts(int nt)
{
    return nt <= 1 ? 1 : nt * PP_PARTS_PER_THREAD;
}
#define PP_THR(parts) ((parts) > 1 ? ((parts) + PP_PARTS_PER_THREAD - 1) / PP_PARTS_PER_THREAD : 1)

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

/* The top bits of 64 flag bytes (each 0x00 or 0xFF) as a 64-bit mask, bit j = byte j. */
#if defined(__AVX2__)
#include <immintrin.h>
static inline uint64_t pp_movemask64(const uint8_t *f)
{
    uint32_t a = (uint32_t)_mm256_movemask_epi8(_mm256_load_si256((const __m256i *)f));
    uint32_t b = (uint32_t)_mm256_movemask_epi8(_mm256_load_si256((const __m256i *)(f + 32)));
    return (uint64_t)a | ((uint64_t)b << 32);
}
#elif defined(__SSE2__)
#include <emmintrin.h>
static inline uint64_t pp_movemask64(const uint8_t *f)
{
    uint64_t r = 0;
    for (int q = 0; q < 4; q++)
        r |= (uint64_t)(uint32_t)_mm_movemask_epi8(_mm_load_si128((const __m128i *)(f + 16 * q))) << (16 * q);
    return r;
}
#else
static inline uint64_t pp_movemask64(const uint8_t *f)
{
    uint64_t r = 0;
    for (int q = 0; q < 8; q++) {
        uint64_t w;
        memcpy(&w, f + 8 * q, 8);
        w &= 0x8080808080808080ULL;
        r |= ((w * 0x0002040810204081ULL) >> 56) << (8 * q);
    }
    return r;
}
#endif

#ifdef PP_TRACE
#include <stdio.h>
#include <time.h>
static inline double pp_now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec * 1e-6;
}
#define PP_T0 double pp_t_last = pp_now_ms()
#define PP_TP(name)                                                                               \
    do {                                                                                          \
        double pp_t_now = pp_now_ms();                                                            \
        fprintf(stderr, "  %-12s %8.2f ms\n", name, pp_t_now - pp_t_last);                        \
        pp_t_last = pp_t_now;                                                                     \
    } while (0)
#else
#define PP_T0 (void)0
#define PP_TP(name) (void)0
#endif

#endif

// cuda_emu.h -- CPU emulation of the CUDA execution model for kernel verification.
//
// This header is force-included (g++ -include) in front of unchanged CUDA C++ kernel
// source.  Every CUDA thread of a block runs as a fiber on one OS thread; a fiber runs
// until it reaches __syncthreads / a warp collective, and the scheduler releases it when
// all participants have arrived.  Blocks run one after another.  See README.md.
#ifndef CUDA_EMU_H
#define CUDA_EMU_H

#define __CUDA_EMU__ 1
#ifndef __CUDACC__
#define __CUDACC__ 1
#endif
#ifndef __CUDA_ARCH__
#define __CUDA_ARCH__ 800
#endif

#include <cstdint>
#include <cstdarg>
#include <limits>
#include <cstddef>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <climits>
#include <cfloat>
#include <cmath>
#include <math.h>
#include <stdlib.h>
#include <type_traits>
#include <tuple>
#include <utility>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xmmintrin.h>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define CUDA_EMU_ASAN 1
#endif

#if !defined(__x86_64__)
#error "cuda_emu: only x86-64 is supported (hand-written fiber context switch)"
#endif

// ---------------------------------------------------------------- qualifiers
#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#define __grid_constant__
// Static shared memory: a function-local static.  The Python loader finds every
// function-local static in .bss from the symbol table and poisons it (0xFF bytes)
// before every block, so each block sees fresh storage and all threads of a block share it.
#define __shared__ static __attribute__((used))
// `extern __shared__ T name[];` is rewritten by the loader to `extern __emu_dyn_shared__ T name[];`
// (the symbol is bound to the per-launch dynamic shared-memory arena at link time).
#define __emu_dyn_shared__ __attribute__((aligned(16)))

// ---------------------------------------------------------------- vector types
struct uint3 { unsigned int x, y, z; };
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};

#define CUDA_EMU_VEC1(T, N, A) struct __attribute__((aligned(A))) N##1 { T x; }; \
    static inline __host__ __device__ N##1 make_##N##1(T x) { N##1 r; r.x = x; return r; }
#define CUDA_EMU_VEC2(T, N, A) struct __attribute__((aligned(A))) N##2 { T x, y; }; \
    static inline __host__ __device__ N##2 make_##N##2(T x, T y) { N##2 r; r.x = x; r.y = y; return r; }
#define CUDA_EMU_VEC3(T, N) struct N##3 { T x, y, z; }; \
    static inline __host__ __device__ N##3 make_##N##3(T x, T y, T z) { N##3 r; r.x = x; r.y = y; r.z = z; return r; }
#define CUDA_EMU_VEC3A(T, N) \
    static inline __host__ __device__ N##3 make_##N##3(T x, T y, T z) { N##3 r; r.x = x; r.y = y; r.z = z; return r; }
#define CUDA_EMU_VEC4(T, N, A) struct __attribute__((aligned(A))) N##4 { T x, y, z, w; }; \
    static inline __host__ __device__ N##4 make_##N##4(T x, T y, T z, T w) { N##4 r; r.x = x; r.y = y; r.z = z; r.w = w; return r; }

CUDA_EMU_VEC1(signed char, char, 1)  CUDA_EMU_VEC2(signed char, char, 2)  CUDA_EMU_VEC3(signed char, char)  CUDA_EMU_VEC4(signed char, char, 4)
CUDA_EMU_VEC1(unsigned char, uchar, 1) CUDA_EMU_VEC2(unsigned char, uchar, 2) CUDA_EMU_VEC3(unsigned char, uchar) CUDA_EMU_VEC4(unsigned char, uchar, 4)
CUDA_EMU_VEC1(short, short, 2) CUDA_EMU_VEC2(short, short, 4) CUDA_EMU_VEC3(short, short) CUDA_EMU_VEC4(short, short, 8)
CUDA_EMU_VEC1(unsigned short, ushort, 2) CUDA_EMU_VEC2(unsigned short, ushort, 4) CUDA_EMU_VEC3(unsigned short, ushort) CUDA_EMU_VEC4(unsigned short, ushort, 8)
CUDA_EMU_VEC1(int, int, 4) CUDA_EMU_VEC2(int, int, 8) CUDA_EMU_VEC3(int, int) CUDA_EMU_VEC4(int, int, 16)
CUDA_EMU_VEC1(unsigned int, uint, 4) CUDA_EMU_VEC2(unsigned int, uint, 8) CUDA_EMU_VEC3A(unsigned int, uint) CUDA_EMU_VEC4(unsigned int, uint, 16)
CUDA_EMU_VEC1(long long, longlong, 8) CUDA_EMU_VEC2(long long, longlong, 16)
CUDA_EMU_VEC1(unsigned long long, ulonglong, 8) CUDA_EMU_VEC2(unsigned long long, ulonglong, 16)
CUDA_EMU_VEC1(float, float, 4) CUDA_EMU_VEC2(float, float, 8) CUDA_EMU_VEC3(float, float) CUDA_EMU_VEC4(float, float, 16)
CUDA_EMU_VEC1(double, double, 8) CUDA_EMU_VEC2(double, double, 16)

// ---------------------------------------------------------------- runtime state
namespace cuda_emu {

enum { ST_RUNNABLE = 0, ST_BAR = 1, ST_COLL = 2, ST_DONE = 3 };
enum { BAR_PLAIN = 0, BAR_COUNT = 1, BAR_AND = 2, BAR_OR = 3 };
enum {
    C_SYNCWARP = 1, C_SHFL_IDX, C_SHFL_UP, C_SHFL_DOWN, C_SHFL_XOR, C_BALLOT, C_ANY, C_ALL,
    C_RED_ADD, C_RED_MIN_U, C_RED_MAX_U, C_RED_MIN_I, C_RED_MAX_I, C_RED_AND, C_RED_OR, C_RED_XOR,
    C_MATCH_ANY, C_MATCH_ALL
};
static const char* const coll_names[] = {
    "?", "__syncwarp", "__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync",
    "__ballot_sync", "__any_sync", "__all_sync", "__reduce_add_sync", "__reduce_min_sync",
    "__reduce_max_sync", "__reduce_min_sync", "__reduce_max_sync", "__reduce_and_sync",
    "__reduce_or_sync", "__reduce_xor_sync", "__match_any_sync", "__match_all_sync"};

struct Fiber {
    void* sp;
    char* stack_lo;
    size_t stack_size;
    void* fake_stack;
    uint3 tid;
    int linear, lane, warp, state;
    // block barrier
    const char* bar_file; int bar_line; int bar_kind; int bar_pred; int bar_result;
    // warp collective
    int coll_kind; unsigned coll_mask; unsigned coll_b; unsigned coll_c; uint64_t coll_val;
    uint64_t coll_res; int coll_pred_out; int coll_size; const char* coll_file; int coll_line;
};

struct LaunchCfg {
    uint32_t grid[3];
    uint32_t block[3];
    uint64_t shmem;       // dynamic shared memory bytes requested
    int32_t schedule;     // 0 forward, 1 reverse, 2 random
    int32_t ftz;
    uint64_t seed;
};

struct ParamInfo {
    int64_t size, align, is_pointer, is_floating, is_integral, is_signed, is_enum, is_class, is_bool;
    int64_t pointee_kind;   // 0 void, 1 integral, 2 floating, 3 class/other, 4 bool, 5 pointer
    int64_t pointee_size, pointee_align, pointee_signed;
    const char* type_name;
};

namespace rt {
inline uint3 tidx, bidx;
inline dim3 bdim, gdim;
inline Fiber* cur = nullptr;
inline Fiber* fibers = nullptr;
inline int nthreads = 0;
inline void* sched_sp = nullptr;
inline void* sched_fake = nullptr;
inline const void* main_stack_bottom = nullptr;
inline size_t main_stack_size = 0;
inline int failed = 0;
inline char errbuf[8192];
inline void (*thread_fn)(void*) = nullptr;
inline void* thread_ctx = nullptr;
inline int in_fiber = 0;
inline char* stacks = nullptr;
inline size_t stacks_n = 0;
inline size_t stacks_bytes = 0;
inline uint64_t* shared_regions = nullptr;   // pairs (addr, size)
inline int n_shared_regions = 0;
inline uint64_t clock_counter = 0;
// racecheck (cuda_emu_race.h): barrier and warp-collective generations, block serial number
inline uint64_t bar_gen = 0;
inline uint64_t warp_gen[32];
inline uint64_t block_serial = 0;
inline int race_on = 0;
}  // namespace rt

#if defined(CUDA_EMU_ASAN)
static const size_t kStackSize = 512 * 1024;
#else
static const size_t kStackSize = 64 * 1024;
#endif
static const size_t kDynArena = 232448;  // 227 KiB: the largest opt-in dynamic shared memory (sm_90)
static const size_t kDynGuard = 4096;

}  // namespace cuda_emu

extern "C" {
// dynamic shared memory arena; `extern __shared__ T name[]` symbols are aliased to it
__attribute__((aligned(256), visibility("default"))) unsigned char __emu_dyn_smem[cuda_emu::kDynArena + cuda_emu::kDynGuard];
void __emu_ctx_switch(void** save_sp, void* new_sp);
}

// Context switch (SysV x86-64): save callee-saved registers on the current stack, store
// the stack pointer, load the other one, restore its registers, return into it.
__asm__(
    ".text\n"
    ".p2align 4\n"
    ".globl __emu_ctx_switch\n"
    ".hidden __emu_ctx_switch\n"
    ".type __emu_ctx_switch,@function\n"
    "__emu_ctx_switch:\n"
    "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
    "  ret\n"
    ".size __emu_ctx_switch, .-__emu_ctx_switch\n");

#define threadIdx (static_cast<const uint3&>(::cuda_emu::rt::tidx))
#define blockIdx (static_cast<const uint3&>(::cuda_emu::rt::bidx))
#define blockDim (static_cast<const dim3&>(::cuda_emu::rt::bdim))
#define gridDim (static_cast<const dim3&>(::cuda_emu::rt::gdim))
static constexpr int warpSize = 32;

namespace cuda_emu {

#define CUDA_EMU_BARRIER() __asm__ __volatile__("" ::: "memory")

// -------------------------------------------------------------- fiber switching
static inline void switch_to_sched(Fiber* f) {
#if defined(CUDA_EMU_ASAN)
    __sanitizer_start_switch_fiber(f->state == ST_DONE ? nullptr : &f->fake_stack,
                                   rt::main_stack_bottom, rt::main_stack_size);
#endif
    rt::in_fiber = 0;
    __emu_ctx_switch(&f->sp, rt::sched_sp);
#if defined(CUDA_EMU_ASAN)
    __sanitizer_finish_switch_fiber(f->fake_stack, &rt::main_stack_bottom, &rt::main_stack_size);
#endif
}

static inline void resume(Fiber* f) {
    rt::cur = f;
    rt::tidx = f->tid;
    rt::in_fiber = 1;
#if defined(CUDA_EMU_ASAN)
    __sanitizer_start_switch_fiber(&rt::sched_fake, f->stack_lo, f->stack_size);
#endif
    __emu_ctx_switch(&rt::sched_sp, f->sp);
#if defined(CUDA_EMU_ASAN)
    __sanitizer_finish_switch_fiber(rt::sched_fake, nullptr, nullptr);
#endif
    rt::in_fiber = 0;
}

static inline void where(char* buf, size_t n) {
    Fiber* f = rt::cur;
    snprintf(buf, n, "block (%u,%u,%u) thread (%u,%u,%u)", rt::bidx.x, rt::bidx.y, rt::bidx.z,
             f ? f->tid.x : 0, f ? f->tid.y : 0, f ? f->tid.z : 0);
}

// Record an error and, when called from a fiber, abandon it (never returns to it).
__attribute__((format(printf, 1, 2))) static void fail(const char* fmt, ...) {
    if (!rt::failed) {
        char w[128];
        where(w, sizeof w);
        va_list ap;
        va_start(ap, fmt);
        char msg[6000];
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        snprintf(rt::errbuf, sizeof rt::errbuf, "%s: %s", w, msg);
        rt::failed = 1;
    }
    if (rt::in_fiber) {
        Fiber* f = rt::cur;
        f->state = ST_DONE;
        switch_to_sched(f);
        __builtin_trap();  // never resumed
    }
}

static void fail_sched(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail_sched(const char* fmt, ...) {
    if (rt::failed) return;
    char msg[7000];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(rt::errbuf, sizeof rt::errbuf, "block (%u,%u,%u): %s", rt::bidx.x, rt::bidx.y, rt::bidx.z, msg);
    rt::failed = 1;
}

__attribute__((noreturn, noinline)) static void fiber_entry() {
#if defined(CUDA_EMU_ASAN)
    __sanitizer_finish_switch_fiber(nullptr, &rt::main_stack_bottom, &rt::main_stack_size);
#endif
    rt::thread_fn(rt::thread_ctx);
    Fiber* f = rt::cur;
    f->state = ST_DONE;
    switch_to_sched(f);
    __builtin_trap();
}

// ------------------------------------------------------------ block barrier / collectives
static inline int block_barrier(const char* file, int line, int kind, int pred) {
    CUDA_EMU_BARRIER();
    Fiber* f = rt::cur;
    if (!f || !rt::in_fiber) { fail("__syncthreads called outside a kernel"); return 0; }
    f->state = ST_BAR;
    f->bar_file = file;
    f->bar_line = line;
    f->bar_kind = kind;
    f->bar_pred = pred != 0;
    switch_to_sched(f);
    CUDA_EMU_BARRIER();
    return f->bar_result;
}

static inline uint64_t warp_coll(const char* file, int line, int kind, unsigned mask, uint64_t val, int size,
                                 unsigned b = 0, unsigned c = 0, int* pred_out = nullptr) {
    CUDA_EMU_BARRIER();
    Fiber* f = rt::cur;
    if (!f || !rt::in_fiber) { fail("warp collective called outside a kernel"); return 0; }
    if (!((mask >> f->lane) & 1u))
        fail("%s at line %d: mask 0x%08x does not include the calling lane %d", coll_names[kind], line, mask, f->lane);
    f->state = ST_COLL;
    f->coll_kind = kind;
    f->coll_mask = mask;
    f->coll_val = val;
    f->coll_size = size;
    f->coll_b = b;
    f->coll_c = c;
    f->coll_file = file;
    f->coll_line = line;
    switch_to_sched(f);
    CUDA_EMU_BARRIER();
    if (pred_out) *pred_out = f->coll_pred_out;
    return f->coll_res;
}

// number of threads in warp w of the current block
static inline int warp_lanes(int w) {
    int n = rt::nthreads - w * 32;
    return n > 32 ? 32 : n;
}

static inline bool same_site(const char* f1, int l1, const char* f2, int l2) {
    return l1 == l2 && (f1 == f2 || strcmp(f1, f2) == 0);
}

// Resolve one pending collective group whose first member is f. Returns 1 if released,
// 0 if still waiting, -1 on error.
static int try_collective(Fiber* f) {
    Fiber* base = rt::fibers + f->warp * 32;
    int nl = warp_lanes(f->warp);
    unsigned m = f->coll_mask;
    for (int l = 0; l < 32; ++l) {
        if (!((m >> l) & 1u)) continue;
        if (l >= nl) {
            fail_sched("%s at line %d (thread (%u,%u,%u)): mask 0x%08x names lane %d of warp %d, which does not exist "
                       "(block has %d threads)", coll_names[f->coll_kind], f->coll_line, f->tid.x, f->tid.y, f->tid.z,
                       m, l, f->warp, rt::nthreads);
            return -1;
        }
        Fiber* g = base + l;
        if (g->state == ST_DONE) {
            fail_sched("%s at line %d (thread (%u,%u,%u)): mask 0x%08x names lane %d (thread (%u,%u,%u)), which has "
                       "already exited", coll_names[f->coll_kind], f->coll_line, f->tid.x, f->tid.y, f->tid.z, m, l,
                       g->tid.x, g->tid.y, g->tid.z);
            return -1;
        }
        if (g->state != ST_COLL || g->coll_mask != m || g->coll_kind != f->coll_kind) return 0;
    }
    // complete: compute results
    uint64_t res_all = 0;
    int k = f->coll_kind;
    if (k == C_BALLOT || k == C_ANY || k == C_ALL) {
        unsigned bits = 0;
        for (int l = 0; l < 32; ++l)
            if (((m >> l) & 1u) && base[l].coll_val) bits |= 1u << l;
        if (k == C_BALLOT) res_all = bits;
        else if (k == C_ANY) res_all = bits != 0;
        else res_all = bits == m;
    } else if (k >= C_RED_ADD && k <= C_RED_XOR) {
        bool first = true;
        uint64_t acc = 0;
        for (int l = 0; l < 32; ++l) {
            if (!((m >> l) & 1u)) continue;
            uint32_t v = (uint32_t)base[l].coll_val;
            if (first) { acc = v; first = false; continue; }
            switch (k) {
                case C_RED_ADD: acc = (uint32_t)(acc + v); break;
                case C_RED_MIN_U: acc = v < (uint32_t)acc ? v : acc; break;
                case C_RED_MAX_U: acc = v > (uint32_t)acc ? v : acc; break;
                case C_RED_MIN_I: acc = (int32_t)v < (int32_t)(uint32_t)acc ? v : acc; break;
                case C_RED_MAX_I: acc = (int32_t)v > (int32_t)(uint32_t)acc ? v : acc; break;
                case C_RED_AND: acc &= v; break;
                case C_RED_OR: acc |= v; break;
                case C_RED_XOR: acc ^= v; break;
            }
        }
        res_all = acc;
    }
    for (int l = 0; l < 32; ++l) {
        if (!((m >> l) & 1u)) continue;
        Fiber* g = base + l;
        g->coll_pred_out = 0;
        if (k >= C_SHFL_IDX && k <= C_SHFL_XOR) {
            // PTX shfl.sync semantics: c = ((32-width)<<8) | clamp
            unsigned segmask = (g->coll_c >> 8) & 31u, cval = g->coll_c & 31u, bval = g->coll_b & 31u;
            int lane = l;
            int maxLane = (lane & segmask) | (cval & ~segmask);
            int minLane = lane & segmask;
            int j = lane;
            bool pval = false;
            switch (k) {
                case C_SHFL_UP: j = lane - (int)bval; pval = j >= maxLane; break;
                case C_SHFL_DOWN: j = lane + (int)bval; pval = j <= maxLane; break;
                case C_SHFL_XOR: j = lane ^ (int)bval; pval = j <= maxLane; break;
                case C_SHFL_IDX: j = minLane | (int)(bval & ~segmask); pval = j <= maxLane; break;
            }
            if (!pval) j = lane;
            if (!((m >> j) & 1u)) {
                fail_sched("%s at line %d (thread (%u,%u,%u)): reads lane %d, which is not in the mask 0x%08x "
                           "(value would be undefined)", coll_names[k], g->coll_line, g->tid.x, g->tid.y, g->tid.z,
                           j, m);
                return -1;
            }
            g->coll_res = base[j].coll_val;
            g->coll_pred_out = 1;
        } else if (k == C_MATCH_ANY || k == C_MATCH_ALL) {
            unsigned bits = 0;
            for (int q = 0; q < 32; ++q)
                if (((m >> q) & 1u) && base[q].coll_val == g->coll_val) bits |= 1u << q;
            if (k == C_MATCH_ANY) g->coll_res = bits;
            else { g->coll_pred_out = bits == m; g->coll_res = bits == m ? m : 0; }
        } else {
            g->coll_res = res_all;
        }
    }
    for (int l = 0; l < 32; ++l)
        if ((m >> l) & 1u) base[l].state = ST_RUNNABLE;
    ++rt::warp_gen[f->warp];  // racecheck: the warp's lanes are ordered across this collective
    return 1;
}

// Returns true if something was released, false if done or failed.
static bool resolve_block() {
    int n = rt::nthreads;
    Fiber* F = rt::fibers;
    bool released = false;
    for (int i = 0; i < n; ++i) {
        if (F[i].state != ST_COLL) continue;
        int r = try_collective(&F[i]);
        if (r < 0) return false;
        if (r > 0) released = true;
    }
    if (released) return true;
    int n_done = 0, n_bar = 0, n_coll = 0, first_bar = -1, first_done = -1;
    for (int i = 0; i < n; ++i) {
        if (F[i].state == ST_DONE) { ++n_done; if (first_done < 0) first_done = i; }
        else if (F[i].state == ST_BAR) { ++n_bar; if (first_bar < 0) first_bar = i; }
        else if (F[i].state == ST_COLL) ++n_coll;
    }
    if (n_done == n) return false;
    if (n_bar > 0 && n_bar + n_done == n) {
        Fiber* a = &F[first_bar];
        if (n_done > 0) {
            Fiber* d = &F[first_done];
            fail_sched("barrier divergence: %d thread(s) wait at __syncthreads (line %d, e.g. thread (%u,%u,%u)) "
                       "but %d thread(s) of the block have exited (e.g. thread (%u,%u,%u)) and will never arrive",
                       n_bar, a->bar_line, a->tid.x, a->tid.y, a->tid.z, n_done, d->tid.x, d->tid.y, d->tid.z);
            return false;
        }
        for (int i = 0; i < n; ++i) {
            Fiber* b = &F[i];
            if (!same_site(a->bar_file, a->bar_line, b->bar_file, b->bar_line) || a->bar_kind != b->bar_kind) {
                fail_sched("barrier divergence: threads wait at different barriers: thread (%u,%u,%u) at line %d, "
                           "thread (%u,%u,%u) at line %d", a->tid.x, a->tid.y, a->tid.z, a->bar_line, b->tid.x,
                           b->tid.y, b->tid.z, b->bar_line);
                return false;
            }
        }
        int cnt = 0;
        for (int i = 0; i < n; ++i) cnt += F[i].bar_pred;
        int res = 0;
        switch (a->bar_kind) {
            case BAR_COUNT: res = cnt; break;
            case BAR_AND: res = cnt == n; break;
            case BAR_OR: res = cnt != 0; break;
        }
        for (int i = 0; i < n; ++i) { F[i].bar_result = res; F[i].state = ST_RUNNABLE; }
        ++rt::bar_gen;  // racecheck: a new barrier interval
        return true;
    }
    // deadlock: describe it
    for (int i = 0; i < n; ++i) {
        Fiber* f = &F[i];
        if (f->state != ST_COLL) continue;
        Fiber* base = F + f->warp * 32;
        for (int l = 0; l < 32; ++l) {
            if (!((f->coll_mask >> l) & 1u)) continue;
            Fiber* g = base + l;
            if (g->state == ST_BAR) {
                fail_sched("deadlock: thread (%u,%u,%u) waits at %s (line %d, mask 0x%08x) for lane %d, which waits at "
                           "__syncthreads (line %d)", f->tid.x, f->tid.y, f->tid.z, coll_names[f->coll_kind],
                           f->coll_line, f->coll_mask, l, g->bar_line);
                return false;
            }
            if (g->state == ST_COLL && (g->coll_mask != f->coll_mask || g->coll_kind != f->coll_kind)) {
                fail_sched("deadlock: mismatched warp collectives: thread (%u,%u,%u) waits at %s (line %d, mask 0x%08x) "
                           "but lane %d waits at %s (line %d, mask 0x%08x)", f->tid.x, f->tid.y, f->tid.z,
                           coll_names[f->coll_kind], f->coll_line, f->coll_mask, l, coll_names[g->coll_kind],
                           g->coll_line, g->coll_mask);
                return false;
            }
        }
    }
    fail_sched("deadlock: %d thread(s) at __syncthreads, %d at warp collectives, %d exited; nothing can proceed",
               n_bar, n_coll, n_done);
    return false;
}

// ------------------------------------------------------------------ scheduling
struct Rng {
    uint64_t s;
    uint64_t next() {
        uint64_t z = (s += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    uint64_t below(uint64_t n) { return next() % n; }
};

static void shuffle(int* v, int n, Rng& r) {
    for (int i = n - 1; i > 0; --i) {
        int j = (int)r.below((uint64_t)i + 1);
        int t = v[i]; v[i] = v[j]; v[j] = t;
    }
}

static bool ensure_stacks(size_t n) {
    if (rt::stacks_n >= n) return true;
    if (rt::stacks) munmap(rt::stacks, rt::stacks_bytes);
    size_t bytes = n * kStackSize;
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) { rt::stacks = nullptr; rt::stacks_n = 0; return false; }
    rt::stacks = (char*)p;
    rt::stacks_n = n;
    rt::stacks_bytes = bytes;
    long pg = sysconf(_SC_PAGESIZE);
    for (size_t i = 0; i < n; ++i) mprotect(rt::stacks + i * kStackSize, (size_t)pg, PROT_NONE);  // guard page
    return true;
}

static void init_fiber(Fiber* f, int i) {
    long pg = sysconf(_SC_PAGESIZE);
    f->stack_lo = rt::stacks + (size_t)i * kStackSize + pg;
    f->stack_size = kStackSize - pg;
#if defined(CUDA_EMU_ASAN)
    ASAN_UNPOISON_MEMORY_REGION(f->stack_lo, f->stack_size);
#endif
    uintptr_t top = ((uintptr_t)(f->stack_lo + f->stack_size)) & ~(uintptr_t)15;
    void** sp = (void**)top;
    *--sp = nullptr;                      // fake return address of fiber_entry
    *--sp = (void*)&fiber_entry;          // `ret` target
    for (int r = 0; r < 6; ++r) *--sp = nullptr;  // rbp rbx r12 r13 r14 r15
    f->sp = sp;
    f->fake_stack = nullptr;
    f->state = ST_RUNNABLE;
}

// signal handling: a crash inside a fiber becomes a KernelError
namespace sig {
inline struct sigaction old_segv, old_bus, old_fpe, old_ill;
inline stack_t old_alt;
inline char* alt_stack = nullptr;
}

static void on_signal(int signo, siginfo_t* info, void*) {
    if (!rt::in_fiber) {  // not ours: restore the previous handler and re-raise
        struct sigaction* o = signo == SIGSEGV ? &sig::old_segv : signo == SIGBUS ? &sig::old_bus
                              : signo == SIGFPE ? &sig::old_fpe : &sig::old_ill;
        sigaction(signo, o, nullptr);
        return;
    }
    const char* what = signo == SIGSEGV ? "segmentation fault (invalid memory access)"
                       : signo == SIGBUS ? "bus error (misaligned or invalid memory access)"
                       : signo == SIGFPE ? "arithmetic exception (integer division by zero?)"
                       : "illegal instruction (__trap()?)";
    Fiber* f = rt::cur;
    uintptr_t addr = (uintptr_t)info->si_addr;
    if (signo == SIGSEGV && f && addr >= (uintptr_t)(f->stack_lo - 4096) && addr < (uintptr_t)f->stack_lo)
        fail("fiber stack overflow (each CUDA thread has %zu KiB of stack in the emulator)", kStackSize / 1024);
    else
        fail("%s at address %p", what, info->si_addr);
}

static void install_signals() {
    if (!sig::alt_stack) sig::alt_stack = (char*)malloc(1 << 16);
    stack_t ss;
    ss.ss_sp = sig::alt_stack;
    ss.ss_size = 1 << 16;
    ss.ss_flags = 0;
    sigaltstack(&ss, &sig::old_alt);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &sig::old_segv);
    sigaction(SIGBUS, &sa, &sig::old_bus);
    sigaction(SIGFPE, &sa, &sig::old_fpe);
    sigaction(SIGILL, &sa, &sig::old_ill);
}

static void restore_signals() {
    sigaction(SIGSEGV, &sig::old_segv, nullptr);
    sigaction(SIGBUS, &sig::old_bus, nullptr);
    sigaction(SIGFPE, &sig::old_fpe, nullptr);
    sigaction(SIGILL, &sig::old_ill, nullptr);
    sigaltstack(&sig::old_alt, nullptr);
}

static void poison_shared(uint64_t dyn) {
    for (int i = 0; i < rt::n_shared_regions; ++i)
        memset((void*)rt::shared_regions[2 * i], 0xFF, (size_t)rt::shared_regions[2 * i + 1]);
#if defined(CUDA_EMU_ASAN)
    ASAN_UNPOISON_MEMORY_REGION(__emu_dyn_smem, sizeof(__emu_dyn_smem));
#endif
    memset(__emu_dyn_smem, 0xFF, dyn);
    memset(__emu_dyn_smem + dyn, 0xA5, kDynGuard);
#if defined(CUDA_EMU_ASAN)
    ASAN_POISON_MEMORY_REGION(__emu_dyn_smem + dyn, sizeof(__emu_dyn_smem) - dyn);
#endif
}

static bool check_dyn_guard(uint64_t dyn) {
#if defined(CUDA_EMU_ASAN)
    ASAN_UNPOISON_MEMORY_REGION(__emu_dyn_smem, sizeof(__emu_dyn_smem));
#endif
    for (size_t i = 0; i < kDynGuard; ++i)
        if (__emu_dyn_smem[dyn + i] != 0xA5) {
            fail_sched("dynamic shared memory written beyond the %llu bytes requested at launch (byte offset %llu)",
                       (unsigned long long)dyn, (unsigned long long)(dyn + i));
            return false;
        }
    return true;
}

static int run_launch(const LaunchCfg* cfg, void (*fn)(void*), void* ctx) {
    rt::failed = 0;
    rt::errbuf[0] = 0;
    const unsigned bx = cfg->block[0], by = cfg->block[1], bz = cfg->block[2];
    const unsigned gx = cfg->grid[0], gy = cfg->grid[1], gz = cfg->grid[2];
    const int n = (int)(bx * by * bz);
    const uint64_t nblocks = (uint64_t)gx * gy * gz;
    if (n <= 0 || n > 1024 || nblocks == 0) { fail_sched("invalid launch configuration"); return 1; }
    if (nblocks > (1ull << 26)) { fail_sched("grid too large for the emulator (%llu blocks)", (unsigned long long)nblocks); return 1; }
    if (cfg->shmem > kDynArena) { fail_sched("dynamic shared memory %llu exceeds the emulator arena", (unsigned long long)cfg->shmem); return 1; }
    if (!ensure_stacks((size_t)n)) { fail_sched("cannot allocate fiber stacks"); return 1; }
    Fiber* F = (Fiber*)calloc((size_t)n, sizeof(Fiber));
    int* order = (int*)malloc(sizeof(int) * (size_t)n);
    uint32_t* border = nullptr;
    Rng rng{cfg->seed * 0x2545F4914F6CDD1Dull + 0x1234567ull};
    if (cfg->schedule == 2) {
        border = (uint32_t*)malloc(sizeof(uint32_t) * nblocks);
        for (uint64_t i = 0; i < nblocks; ++i) border[i] = (uint32_t)i;
        for (uint64_t i = nblocks - 1; i > 0; --i) {
            uint64_t j = rng.below(i + 1);
            uint32_t t = border[i]; border[i] = border[j]; border[j] = t;
        }
    }
    rt::fibers = F;
    rt::nthreads = n;
    rt::thread_fn = fn;
    rt::thread_ctx = ctx;
    rt::bdim = dim3(bx, by, bz);
    rt::gdim = dim3(gx, gy, gz);
    unsigned csr = _mm_getcsr();
    unsigned newcsr = cfg->ftz ? (csr | 0x8040u) : (csr & ~0x8040u);  // FTZ (bit 15) | DAZ (bit 6)
#if !defined(CUDA_EMU_ASAN)
    install_signals();
#endif
    _mm_setcsr(newcsr);
    for (uint64_t bi = 0; bi < nblocks && !rt::failed; ++bi) {
        uint64_t b = cfg->schedule == 0 ? bi : cfg->schedule == 1 ? nblocks - 1 - bi : border[bi];
        rt::bidx = uint3{(unsigned)(b % gx), (unsigned)((b / gx) % gy), (unsigned)(b / ((uint64_t)gx * gy))};
        poison_shared(cfg->shmem);
        ++rt::block_serial;  // racecheck: accesses of different blocks are never compared
        for (int i = 0; i < n; ++i) {
            Fiber* f = &F[i];
            memset(f, 0, sizeof(Fiber));
            f->linear = i;
            f->tid = uint3{(unsigned)(i % bx), (unsigned)((i / bx) % by), (unsigned)(i / (bx * by))};
            f->lane = i % 32;
            f->warp = i / 32;
            init_fiber(f, i);
        }
        for (;;) {
            int nr = 0;
            for (int i = 0; i < n; ++i)
                if (F[i].state == ST_RUNNABLE) order[nr++] = i;
            if (nr == 0) {
                if (!resolve_block()) break;
                continue;
            }
            if (cfg->schedule == 1) {
                for (int i = 0; i < nr / 2; ++i) { int t = order[i]; order[i] = order[nr - 1 - i]; order[nr - 1 - i] = t; }
            } else if (cfg->schedule == 2) {
                shuffle(order, nr, rng);
            }
            for (int i = 0; i < nr && !rt::failed; ++i) resume(&F[order[i]]);
            if (rt::failed) break;
        }
        if (!rt::failed) check_dyn_guard(cfg->shmem);
    }
    _mm_setcsr(csr);
#if !defined(CUDA_EMU_ASAN)
    restore_signals();
#else
    ASAN_UNPOISON_MEMORY_REGION(__emu_dyn_smem, sizeof(__emu_dyn_smem));
#endif
    fflush(stdout);
    rt::cur = nullptr;
    rt::fibers = nullptr;
    free(F);
    free(order);
    free(border);
    return rt::failed ? 1 : 0;
}

// ------------------------------------------------------------ kernel launch glue
template <class T>
const char* type_name() { return __PRETTY_FUNCTION__; }

template <class T>
static T load_arg(void* p) {
    alignas(T) unsigned char buf[sizeof(T)];
    memcpy(buf, p, sizeof(T));
    return *reinterpret_cast<T*>(buf);
}

template <class... P>
struct Call {
    void (*k)(P...);
    std::tuple<std::decay_t<P>...> args;
    static void run(void* self) {
        Call* c = static_cast<Call*>(self);
        std::apply(c->k, c->args);
    }
};

template <class... P, size_t... I>
static int launch_impl(void (*k)(P...), const LaunchCfg* cfg, void** a, std::index_sequence<I...>) {
    Call<P...> c{k, std::tuple<std::decay_t<P>...>{load_arg<std::decay_t<P>>(a[I])...}};
    return run_launch(cfg, &Call<P...>::run, &c);
}

template <class... P>
static int launch(void (*k)(P...), const LaunchCfg* cfg, void** a) {
    return launch_impl(k, cfg, a, std::index_sequence_for<P...>{});
}

template <class T>
static void fill_info(ParamInfo* p) {
    static_assert(!std::is_reference<T>::value, "kernel parameters cannot be references");
    p->size = sizeof(T);
    p->align = alignof(T);
    p->is_pointer = std::is_pointer<T>::value;
    p->is_floating = std::is_floating_point<T>::value;
    p->is_integral = std::is_integral<T>::value || std::is_enum<T>::value;
    p->is_bool = std::is_same<T, bool>::value;
    p->is_enum = std::is_enum<T>::value;
    p->is_class = std::is_class<T>::value || std::is_union<T>::value;
    if constexpr (std::is_enum<T>::value) p->is_signed = std::is_signed<std::underlying_type_t<T>>::value;
    else p->is_signed = std::is_signed<T>::value;
    p->type_name = type_name<T>();
    if constexpr (std::is_pointer<T>::value) {
        using E = std::remove_cv_t<std::remove_pointer_t<T>>;
        if constexpr (std::is_void<E>::value) {
            p->pointee_kind = 0; p->pointee_size = 1; p->pointee_align = 1; p->pointee_signed = 0;
        } else {
            p->pointee_size = sizeof(E);
            p->pointee_align = alignof(E);
            p->pointee_signed = std::is_signed<E>::value;
            p->pointee_kind = std::is_same<E, bool>::value ? 4
                              : (std::is_integral<E>::value || std::is_enum<E>::value) ? 1
                              : std::is_floating_point<E>::value ? 2
                              : std::is_pointer<E>::value ? 5 : 3;
        }
    }
}

template <class... P>
static int param_info(void (*)(P...), ParamInfo* out, int cap) {
    int n = (int)sizeof...(P);
    if (cap >= n) {
        int i = 0;
        ((fill_info<std::decay_t<P>>(&out[i++])), ...);
    }
    return n;
}

}  // namespace cuda_emu

extern "C" {
__attribute__((used, visibility("default"))) inline const char* __emu_last_error() { return cuda_emu::rt::errbuf; }
// sanitize mode: exact-size copies of array arguments so that ASan sees overruns; the `pre`
// bytes in front keep the original address modulo 256 and are poisoned (underruns)
__attribute__((used, visibility("default"))) inline void* __emu_san_alloc(uint64_t nbytes, uint64_t pre) {
    void* p = nullptr;
    if (posix_memalign(&p, 256, (size_t)(pre + nbytes + (nbytes == 0 ? 1 : 0))) != 0) return nullptr;
#if defined(CUDA_EMU_ASAN)
    ASAN_POISON_MEMORY_REGION(p, (size_t)pre + (nbytes == 0 ? 1 : 0));
#endif
    return (char*)p + pre;
}
__attribute__((used, visibility("default"))) inline void __emu_san_free(void* q, uint64_t pre) {
    char* p = (char*)q - pre;
#if defined(CUDA_EMU_ASAN)
    ASAN_UNPOISON_MEMORY_REGION(p, (size_t)pre + 1);
#endif
    free(p);
}
__attribute__((used, visibility("default"))) inline void __emu_set_shared_regions(const uint64_t* pairs, int n) {
    free(cuda_emu::rt::shared_regions);
    cuda_emu::rt::shared_regions = (uint64_t*)malloc(sizeof(uint64_t) * 2 * (size_t)(n > 0 ? n : 1));
    memcpy(cuda_emu::rt::shared_regions, pairs, sizeof(uint64_t) * 2 * (size_t)n);
    cuda_emu::rt::n_shared_regions = n;
}
}

// ================================================================ device API
#define __syncthreads() ::cuda_emu::block_barrier(__FILE__, __LINE__, ::cuda_emu::BAR_PLAIN, 0)
#define __syncthreads_count(p) ::cuda_emu::block_barrier(__FILE__, __LINE__, ::cuda_emu::BAR_COUNT, (p) ? 1 : 0)
#define __syncthreads_and(p) ::cuda_emu::block_barrier(__FILE__, __LINE__, ::cuda_emu::BAR_AND, (p) ? 1 : 0)
#define __syncthreads_or(p) ::cuda_emu::block_barrier(__FILE__, __LINE__, ::cuda_emu::BAR_OR, (p) ? 1 : 0)

namespace cuda_emu {
template <class T>
static inline uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8, "shuffle of a type larger than 8 bytes");
    uint64_t b = 0;
    memcpy(&b, &v, sizeof(T));
    return b;
}
template <class T>
static inline T from_bits(uint64_t b) {
    T v;
    memcpy(&v, &b, sizeof(T));
    return v;
}
static inline void check_width(int width, const char* what) {
    if (width < 1 || width > 32 || (width & (width - 1)))
        fail("%s: width %d is not a power of two in [1, 32]", what, width);
}
template <class T>
static inline T shfl(const char* f, int line, int kind, unsigned mask, T v, int b, int width) {
    check_width(width, coll_names[kind]);
    unsigned c = ((unsigned)(32 - width) << 8) | (kind == C_SHFL_UP ? 0u : 31u);
    return from_bits<T>(warp_coll(f, line, kind, mask, to_bits(v), sizeof(T), (unsigned)b, c));
}
}  // namespace cuda_emu

#define CUDA_EMU_SHFL_OVERLOADS(T)                                                                              \
    static inline T __emu_shfl_idx(const char* f, int l, unsigned m, T v, int s, int w = 32) {                     \
        return ::cuda_emu::shfl<T>(f, l, ::cuda_emu::C_SHFL_IDX, m, v, s, w); }                                     \
    static inline T __emu_shfl_up(const char* f, int l, unsigned m, T v, unsigned d, int w = 32) {                 \
        return ::cuda_emu::shfl<T>(f, l, ::cuda_emu::C_SHFL_UP, m, v, (int)d, w); }                                 \
    static inline T __emu_shfl_down(const char* f, int l, unsigned m, T v, unsigned d, int w = 32) {               \
        return ::cuda_emu::shfl<T>(f, l, ::cuda_emu::C_SHFL_DOWN, m, v, (int)d, w); }                               \
    static inline T __emu_shfl_xor(const char* f, int l, unsigned m, T v, int x, int w = 32) {                     \
        return ::cuda_emu::shfl<T>(f, l, ::cuda_emu::C_SHFL_XOR, m, v, x, w); }                                     \
    static inline unsigned __emu_match_any(const char* f, int l, unsigned m, T v) {                                \
        return (unsigned)::cuda_emu::warp_coll(f, l, ::cuda_emu::C_MATCH_ANY, m, ::cuda_emu::to_bits(v), sizeof(T)); } \
    static inline unsigned __emu_match_all(const char* f, int l, unsigned m, T v, int* pred) {                     \
        return (unsigned)::cuda_emu::warp_coll(f, l, ::cuda_emu::C_MATCH_ALL, m, ::cuda_emu::to_bits(v), sizeof(T), 0, 0, pred); }
CUDA_EMU_SHFL_OVERLOADS(int)
CUDA_EMU_SHFL_OVERLOADS(unsigned int)
CUDA_EMU_SHFL_OVERLOADS(long)
CUDA_EMU_SHFL_OVERLOADS(unsigned long)
CUDA_EMU_SHFL_OVERLOADS(long long)
CUDA_EMU_SHFL_OVERLOADS(unsigned long long)
CUDA_EMU_SHFL_OVERLOADS(float)
CUDA_EMU_SHFL_OVERLOADS(double)

#define __shfl_sync(...) __emu_shfl_idx(__FILE__, __LINE__, __VA_ARGS__)
#define __shfl_up_sync(...) __emu_shfl_up(__FILE__, __LINE__, __VA_ARGS__)
#define __shfl_down_sync(...) __emu_shfl_down(__FILE__, __LINE__, __VA_ARGS__)
#define __shfl_xor_sync(...) __emu_shfl_xor(__FILE__, __LINE__, __VA_ARGS__)
#define __match_any_sync(...) __emu_match_any(__FILE__, __LINE__, __VA_ARGS__)
#define __match_all_sync(...) __emu_match_all(__FILE__, __LINE__, __VA_ARGS__)
#define __syncwarp(...) __emu_syncwarp(__FILE__, __LINE__, ##__VA_ARGS__)
#define __ballot_sync(m, p) ((unsigned)::cuda_emu::warp_coll(__FILE__, __LINE__, ::cuda_emu::C_BALLOT, (m), (p) ? 1 : 0, 4))
#define __any_sync(m, p) ((int)::cuda_emu::warp_coll(__FILE__, __LINE__, ::cuda_emu::C_ANY, (m), (p) ? 1 : 0, 4))
#define __all_sync(m, p) ((int)::cuda_emu::warp_coll(__FILE__, __LINE__, ::cuda_emu::C_ALL, (m), (p) ? 1 : 0, 4))
#define __reduce_add_sync(m, v) ((unsigned)::cuda_emu::warp_coll(__FILE__, __LINE__, ::cuda_emu::C_RED_ADD, (m), (uint32_t)(unsigned)(v), 4))
#define __reduce_and_sync(m, v) ((unsigned)::cuda_emu::warp_coll(__FILE__, __LINE__, ::cuda_emu::C_RED_AND, (m), (uint32_t)(unsigned)(v), 4))
#define __reduce_or_sync(m, v) ((unsigned)::cuda_emu::warp_coll(__FILE__, __LINE__, ::cuda_emu::C_RED_OR, (m), (uint32_t)(unsigned)(v), 4))
#define __reduce_xor_sync(m, v) ((unsigned)::cuda_emu::warp_coll(__FILE__, __LINE__, ::cuda_emu::C_RED_XOR, (m), (uint32_t)(unsigned)(v), 4))
#define __reduce_min_sync(m, v) __emu_reduce_minmax(__FILE__, __LINE__, true, (m), (v))
#define __reduce_max_sync(m, v) __emu_reduce_minmax(__FILE__, __LINE__, false, (m), (v))
static inline void __emu_syncwarp(const char* f, int l, unsigned m = 0xffffffffu) {
    ::cuda_emu::warp_coll(f, l, ::cuda_emu::C_SYNCWARP, m, 0, 0);
}
static inline unsigned __emu_reduce_minmax(const char* f, int l, bool mn, unsigned m, unsigned v) {
    return (unsigned)::cuda_emu::warp_coll(f, l, mn ? ::cuda_emu::C_RED_MIN_U : ::cuda_emu::C_RED_MAX_U, m, v, 4);
}
static inline int __emu_reduce_minmax(const char* f, int l, bool mn, unsigned m, int v) {
    return (int)(uint32_t)::cuda_emu::warp_coll(f, l, mn ? ::cuda_emu::C_RED_MIN_I : ::cuda_emu::C_RED_MAX_I, m,
                                                (uint32_t)v, 4);
}
// Lanes of the caller's warp that have not exited (the emulator has no notion of
// divergent-branch convergence; see README).
static inline unsigned __activemask() {
    ::cuda_emu::Fiber* f = ::cuda_emu::rt::cur;
    if (!f) return 0;
    ::cuda_emu::Fiber* base = ::cuda_emu::rt::fibers + f->warp * 32;
    int nl = ::cuda_emu::warp_lanes(f->warp);
    unsigned m = 0;
    for (int l = 0; l < nl; ++l)
        if (base[l].state != ::cuda_emu::ST_DONE) m |= 1u << l;
    return m;
}
static inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void __nanosleep(unsigned) {}
static inline long long clock64() { return (long long)(++::cuda_emu::rt::clock_counter); }
static inline void __trap() { ::cuda_emu::fail("__trap() called"); }
static inline void __brkpt() { ::cuda_emu::fail("__brkpt() called"); }

// device-side assert -> KernelError (overrides glibc's __assert_fail inside this library)
extern "C" __attribute__((visibility("hidden"), noreturn)) void __assert_fail(const char* expr, const char* file,
                                                                      unsigned int line, const char* func) noexcept {
    ::cuda_emu::fail("device assertion `%s` failed at %s:%u in %s", expr, file, line, func);
    abort();
}

// ---------------------------------------------------------------- atomics
#define CUDA_EMU_ATOMIC_INT(T)                                                                            \
    static inline T atomicAdd(T* a, T v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }           \
    static inline T atomicExch(T* a, T v) { return __atomic_exchange_n(a, v, __ATOMIC_RELAXED); }         \
    static inline T atomicAnd(T* a, T v) { return __atomic_fetch_and(a, v, __ATOMIC_RELAXED); }           \
    static inline T atomicOr(T* a, T v) { return __atomic_fetch_or(a, v, __ATOMIC_RELAXED); }             \
    static inline T atomicXor(T* a, T v) { return __atomic_fetch_xor(a, v, __ATOMIC_RELAXED); }           \
    static inline T atomicCAS(T* a, T cmp, T v) {                                                         \
        __atomic_compare_exchange_n(a, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED); return cmp; }
#define CUDA_EMU_ATOMIC_MINMAX(T)                                                                         \
    static inline T atomicMin(T* a, T v) {                                                                \
        T old = __atomic_load_n(a, __ATOMIC_RELAXED);                                                     \
        while (v < old && !__atomic_compare_exchange_n(a, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {} \
        return old; }                                                                                     \
    static inline T atomicMax(T* a, T v) {                                                                \
        T old = __atomic_load_n(a, __ATOMIC_RELAXED);                                                     \
        while (v > old && !__atomic_compare_exchange_n(a, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {} \
        return old; }
CUDA_EMU_ATOMIC_INT(int)
CUDA_EMU_ATOMIC_INT(unsigned int)
CUDA_EMU_ATOMIC_INT(unsigned long long)
CUDA_EMU_ATOMIC_MINMAX(int)
CUDA_EMU_ATOMIC_MINMAX(unsigned int)
CUDA_EMU_ATOMIC_MINMAX(long long)
CUDA_EMU_ATOMIC_MINMAX(unsigned long long)
static inline int atomicSub(int* a, int v) { return __atomic_fetch_sub(a, v, __ATOMIC_RELAXED); }
static inline unsigned atomicSub(unsigned* a, unsigned v) { return __atomic_fetch_sub(a, v, __ATOMIC_RELAXED); }
static inline unsigned short atomicCAS(unsigned short* a, unsigned short cmp, unsigned short v) {
    __atomic_compare_exchange_n(a, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return cmp;
}
static inline unsigned atomicInc(unsigned* a, unsigned lim) {
    unsigned old = __atomic_load_n(a, __ATOMIC_RELAXED), nv;
    do { nv = old >= lim ? 0u : old + 1u; } while (!__atomic_compare_exchange_n(a, &old, nv, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return old;
}
static inline unsigned atomicDec(unsigned* a, unsigned lim) {
    unsigned old = __atomic_load_n(a, __ATOMIC_RELAXED), nv;
    do { nv = (old == 0u || old > lim) ? lim : old - 1u; } while (!__atomic_compare_exchange_n(a, &old, nv, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return old;
}
template <class F, class U>
static inline F __emu_atomic_float_add(F* a, F v) {
    U old = __atomic_load_n(reinterpret_cast<U*>(a), __ATOMIC_RELAXED), nv;
    do {
        F o; memcpy(&o, &old, sizeof o);
        F n = o + v; memcpy(&nv, &n, sizeof nv);
    } while (!__atomic_compare_exchange_n(reinterpret_cast<U*>(a), &old, nv, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    F r; memcpy(&r, &old, sizeof r);
    return r;
}
static inline float atomicAdd(float* a, float v) { return __emu_atomic_float_add<float, uint32_t>(a, v); }
static inline double atomicAdd(double* a, double v) { return __emu_atomic_float_add<double, uint64_t>(a, v); }
static inline float atomicExch(float* a, float v) {
    uint32_t nv; memcpy(&nv, &v, 4);
    uint32_t o = __atomic_exchange_n(reinterpret_cast<uint32_t*>(a), nv, __ATOMIC_RELAXED);
    float r; memcpy(&r, &o, 4); return r;
}
#define atomicAdd_block atomicAdd
#define atomicAdd_system atomicAdd
#define atomicSub_block atomicSub
#define atomicExch_block atomicExch
#define atomicMin_block atomicMin
#define atomicMax_block atomicMax
#define atomicCAS_block atomicCAS
#define atomicAnd_block atomicAnd
#define atomicOr_block atomicOr
#define atomicXor_block atomicXor

// ---------------------------------------------------------------- integer intrinsics
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
static inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline int __ffsll(long long x) { return __builtin_ffsll(x); }
static inline unsigned __brev(unsigned x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0F0F0F0Fu) | ((x & 0x0F0F0F0Fu) << 4);
    return __builtin_bswap32(x);
}
static inline unsigned long long __brevll(unsigned long long x) {
    return ((unsigned long long)__brev((unsigned)x) << 32) | __brev((unsigned)(x >> 32));
}
static inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    uint64_t v = ((uint64_t)y << 32) | x;
    unsigned r = 0;
    for (int i = 0; i < 4; ++i) r |= (unsigned)((v >> (8 * ((s >> (4 * i)) & 7u))) & 0xFFu) << (8 * i);
    return r;
}
static inline unsigned __funnelshift_l(unsigned lo, unsigned hi, unsigned s) {
    uint64_t v = ((uint64_t)hi << 32) | lo; return (unsigned)((v << (s & 31u)) >> 32);
}
static inline unsigned __funnelshift_lc(unsigned lo, unsigned hi, unsigned s) {
    uint64_t v = ((uint64_t)hi << 32) | lo; return (unsigned)((v << (s > 32u ? 32u : s)) >> 32);
}
static inline unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned s) {
    uint64_t v = ((uint64_t)hi << 32) | lo; return (unsigned)(v >> (s & 31u));
}
static inline unsigned __funnelshift_rc(unsigned lo, unsigned hi, unsigned s) {
    uint64_t v = ((uint64_t)hi << 32) | lo; return (unsigned)(v >> (s > 32u ? 32u : s));
}
static inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((uint64_t)a * b) >> 32); }
static inline int __mulhi(int a, int b) { return (int)(((int64_t)a * b) >> 32); }
static inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
static inline long long __mul64hi(long long a, long long b) { return (long long)(((__int128)a * b) >> 64); }
static inline int __mul24(int a, int b) { return (int)((((int32_t)((uint32_t)a << 8)) >> 8) * (((int32_t)((uint32_t)b << 8)) >> 8)); }
static inline unsigned __umul24(unsigned a, unsigned b) { return (a & 0xFFFFFFu) * (b & 0xFFFFFFu); }
static inline int __hadd(int a, int b) { return (int)(((int64_t)a + b) >> 1); }
static inline int __rhadd(int a, int b) { return (int)(((int64_t)a + b + 1) >> 1); }
static inline unsigned __uhadd(unsigned a, unsigned b) { return (unsigned)(((uint64_t)a + b) >> 1); }
static inline unsigned __urhadd(unsigned a, unsigned b) { return (unsigned)(((uint64_t)a + b + 1) >> 1); }
static inline unsigned __sad(int a, int b, unsigned c) { return c + (unsigned)(a > b ? (int64_t)a - b : (int64_t)b - a); }
static inline unsigned __usad(unsigned a, unsigned b, unsigned c) { return c + (a > b ? a - b : b - a); }

// ---------------------------------------------------------------- min / max
#define CUDA_EMU_MINMAX(R, A, B) \
    static inline R min(A a, B b) { return (R)a < (R)b ? (R)a : (R)b; } \
    static inline R max(A a, B b) { return (R)a > (R)b ? (R)a : (R)b; }
CUDA_EMU_MINMAX(int, int, int)
CUDA_EMU_MINMAX(unsigned int, unsigned int, unsigned int)
CUDA_EMU_MINMAX(unsigned int, int, unsigned int)
CUDA_EMU_MINMAX(unsigned int, unsigned int, int)
CUDA_EMU_MINMAX(long, long, long)
CUDA_EMU_MINMAX(unsigned long, unsigned long, unsigned long)
CUDA_EMU_MINMAX(unsigned long, long, unsigned long)
CUDA_EMU_MINMAX(unsigned long, unsigned long, long)
CUDA_EMU_MINMAX(long long, long long, long long)
CUDA_EMU_MINMAX(unsigned long long, unsigned long long, unsigned long long)
CUDA_EMU_MINMAX(unsigned long long, long long, unsigned long long)
CUDA_EMU_MINMAX(unsigned long long, unsigned long long, long long)
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }
static inline double min(float a, double b) { return fmin((double)a, b); }
static inline double max(float a, double b) { return fmax((double)a, b); }
static inline double min(double a, float b) { return fmin(a, (double)b); }
static inline double max(double a, float b) { return fmax(a, (double)b); }
static inline unsigned umin(unsigned a, unsigned b) { return a < b ? a : b; }
static inline unsigned umax(unsigned a, unsigned b) { return a > b ? a : b; }
static inline long long llmin(long long a, long long b) { return a < b ? a : b; }
static inline long long llmax(long long a, long long b) { return a > b ? a : b; }
static inline unsigned long long ullmin(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
static inline unsigned long long ullmax(unsigned long long a, unsigned long long b) { return a > b ? a : b; }

// ---------------------------------------------------------------- float intrinsics
static inline unsigned __float_as_uint(float x) { unsigned r; memcpy(&r, &x, 4); return r; }
static inline float __uint_as_float(unsigned x) { float r; memcpy(&r, &x, 4); return r; }
static inline int __float_as_int(float x) { int r; memcpy(&r, &x, 4); return r; }
static inline float __int_as_float(int x) { float r; memcpy(&r, &x, 4); return r; }
static inline long long __double_as_longlong(double x) { long long r; memcpy(&r, &x, 8); return r; }
static inline double __longlong_as_double(long long x) { double r; memcpy(&r, &x, 8); return r; }
static inline int __double2hiint(double x) { return (int)((unsigned long long)__double_as_longlong(x) >> 32); }
static inline int __double2loint(double x) { return (int)(unsigned)(unsigned long long)__double_as_longlong(x); }
static inline double __hiloint2double(int hi, int lo) {
    return __longlong_as_double((long long)(((unsigned long long)(unsigned)hi << 32) | (unsigned)lo));
}
static inline float __fadd_rn(float a, float b) { volatile float r = a + b; return r; }
static inline float __fsub_rn(float a, float b) { volatile float r = a - b; return r; }
static inline float __fmul_rn(float a, float b) { volatile float r = a * b; return r; }
static inline float __fdiv_rn(float a, float b) { volatile float r = a / b; return r; }
static inline float __frcp_rn(float a) { volatile float r = 1.0f / a; return r; }
static inline float __fsqrt_rn(float a) { return sqrtf(a); }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline double __dadd_rn(double a, double b) { volatile double r = a + b; return r; }
static inline double __dsub_rn(double a, double b) { volatile double r = a - b; return r; }
static inline double __dmul_rn(double a, double b) { volatile double r = a * b; return r; }
static inline double __ddiv_rn(double a, double b) { volatile double r = a / b; return r; }
static inline double __dsqrt_rn(double a) { return sqrt(a); }
static inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
static inline float __fdividef(float a, float b) { return a / b; }
// fast-math intrinsics (glibc already declares most of these names, so they are macros here)
#define __expf(a) expf(a)
#define __exp10f(a) powf(10.0f, (a))
#define __logf(a) logf(a)
#define __log2f(a) log2f(a)
#define __log10f(a) log10f(a)
#define __sinf(a) sinf(a)
#define __cosf(a) cosf(a)
#define __tanf(a) tanf(a)
#define __powf(a, b) powf((a), (b))
static inline float __saturatef(float a) { return a != a ? 0.0f : a < 0.0f ? 0.0f : a > 1.0f ? 1.0f : a; }
static inline float rsqrtf(float a) { return 1.0f / sqrtf(a); }
static inline double rsqrt(double a) { return 1.0 / sqrt(a); }
static inline float rcbrtf(float a) { return 1.0f / cbrtf(a); }
namespace cuda_emu {
template <class I, class F>
static inline I f2i_sat(F v) {
    if (v != v) return 0;
    if (v <= (F)std::numeric_limits<I>::min()) return std::numeric_limits<I>::min();
    if (v >= (F)std::numeric_limits<I>::max()) return std::numeric_limits<I>::max();
    return (I)v;
}
}  // namespace cuda_emu
static inline int __float2int_rn(float x) { return ::cuda_emu::f2i_sat<int>(nearbyintf(x)); }
static inline int __float2int_rz(float x) { return ::cuda_emu::f2i_sat<int>(truncf(x)); }
static inline int __float2int_rd(float x) { return ::cuda_emu::f2i_sat<int>(floorf(x)); }
static inline int __float2int_ru(float x) { return ::cuda_emu::f2i_sat<int>(ceilf(x)); }
static inline unsigned __float2uint_rn(float x) { return ::cuda_emu::f2i_sat<unsigned>(nearbyintf(x)); }
static inline unsigned __float2uint_rz(float x) { return ::cuda_emu::f2i_sat<unsigned>(truncf(x)); }
static inline long long __float2ll_rn(float x) { return ::cuda_emu::f2i_sat<long long>(nearbyintf(x)); }
static inline long long __float2ll_rz(float x) { return ::cuda_emu::f2i_sat<long long>(truncf(x)); }
static inline int __double2int_rn(double x) { return ::cuda_emu::f2i_sat<int>(nearbyint(x)); }
static inline int __double2int_rz(double x) { return ::cuda_emu::f2i_sat<int>(trunc(x)); }
static inline long long __double2ll_rn(double x) { return ::cuda_emu::f2i_sat<long long>(nearbyint(x)); }
static inline float __double2float_rn(double x) { return (float)x; }
static inline float __int2float_rn(int x) { return (float)x; }
static inline float __uint2float_rn(unsigned x) { return (float)x; }
static inline float __ll2float_rn(long long x) { return (float)x; }
static inline double __int2double_rn(int x) { return (double)x; }
static inline double __ll2double_rn(long long x) { return (double)x; }

// ---------------------------------------------------------------- loads / stores
namespace cuda_emu {
template <class T>
static inline const T* check_align(const T* p, const char* what) {
    if ((uintptr_t)p % alignof(T))
        fail("%s: misaligned address %p for a %zu-byte-aligned type of size %zu", what, (const void*)p, alignof(T),
             sizeof(T));
    return p;
}
}  // namespace cuda_emu
template <class T> static inline T __ldg(const T* p) { return *::cuda_emu::check_align(p, "__ldg"); }
template <class T> static inline T __ldcg(const T* p) { return *::cuda_emu::check_align(p, "__ldcg"); }
template <class T> static inline T __ldca(const T* p) { return *::cuda_emu::check_align(p, "__ldca"); }
template <class T> static inline T __ldcs(const T* p) { return *::cuda_emu::check_align(p, "__ldcs"); }
template <class T> static inline T __ldlu(const T* p) { return *::cuda_emu::check_align(p, "__ldlu"); }
template <class T> static inline T __ldcv(const T* p) { return *::cuda_emu::check_align(p, "__ldcv"); }
template <class T> static inline void __stcg(T* p, T v) { *const_cast<T*>(::cuda_emu::check_align<T>(p, "__stcg")) = v; }
template <class T> static inline void __stcs(T* p, T v) { *const_cast<T*>(::cuda_emu::check_align<T>(p, "__stcs")) = v; }
template <class T> static inline void __stwb(T* p, T v) { *const_cast<T*>(::cuda_emu::check_align<T>(p, "__stwb")) = v; }
template <class T> static inline void __stwt(T* p, T v) { *const_cast<T*>(::cuda_emu::check_align<T>(p, "__stwt")) = v; }

#endif  // CUDA_EMU_H

#if defined(CUDA_EMU_RACECHECK)
#include "cuda_emu_race.h"
#endif

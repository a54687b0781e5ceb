// cuda_emu racecheck (CUDA_EMU_RACECHECK): a data-race detector for the threads of one block.
//
// The kernel source is compiled with g++ -fsanitize=thread, which makes every load and store call
// __tsan_readN / __tsan_writeN (and every __atomic builtin __tsan_atomicN_*). No ThreadSanitizer
// runtime is linked: this file defines those entry points. They record, per byte of device memory
// (the launch's array arguments) and of shared memory (static and dynamic), the last write and the
// last two distinct readers with the *barrier interval* of the access: the number of block-wide
// barriers (__syncthreads*) released so far in the block, and for threads of one warp also the
// number of warp collectives. Two accesses to the same byte by different threads of a block in the
// same interval, at least one a write and not both atomic, are a race: nothing orders them on a GPU
// whatever the schedule. The first one found fails the launch (KernelError naming both threads,
// the memory, and the source lines through addr2line).
//
// Limits: blocks are checked one at a time (accesses from different blocks are never compared);
// a warp collective with a partial mask counts as ordering the whole warp; memory reached only
// through pointers the kernel computes outside its arguments and shared memory is not watched.
#pragma once
#include <dlfcn.h>

namespace cuda_emu {
namespace race {
#define CUDA_EMU_NOTSAN __attribute__((no_sanitize_thread, noinline))

struct Access {
    uint64_t gen;      // barrier generation of the block at the access
    uint32_t wgen;     // warp-collective generation of the accessing warp
    int32_t tid;       // linear thread index, -1: none
    uint64_t pc;       // code address (offset into the library)
    int32_t atomic;
};
struct Cell {
    uint64_t addr;     // byte address; 0: empty
    uint64_t serial;   // block serial of the entries (stale cells are empty)
    Access w, r1, r2;  // last write, last two distinct readers
};

inline Cell* table = nullptr;
inline uint64_t cap = 0, used = 0, table_serial = ~0ull;
inline uint64_t* ranges = nullptr;  // (lo, hi) pairs of the launch's array arguments
inline int n_ranges = 0;
inline int busy = 0;
inline uint64_t lib_base = 0;

CUDA_EMU_NOTSAN static bool watched(uint64_t a) {
    for (int i = 0; i < n_ranges; ++i)
        if (a >= ranges[2 * i] && a < ranges[2 * i + 1]) return true;
    uint64_t d = (uint64_t)(uintptr_t)__emu_dyn_smem;
    if (a >= d && a < d + kDynArena) return true;
    for (int i = 0; i < rt::n_shared_regions; ++i)
        if (a >= rt::shared_regions[2 * i] && a < rt::shared_regions[2 * i] + rt::shared_regions[2 * i + 1]) return true;
    return false;
}

CUDA_EMU_NOTSAN static void grow() {
    uint64_t ncap = cap ? cap * 2 : (1ull << 16);
    Cell* nt = (Cell*)calloc(ncap, sizeof(Cell));
    for (uint64_t i = 0; i < cap; ++i) {
        Cell* c = &table[i];
        if (!c->addr || c->serial != table_serial) continue;
        uint64_t h = (c->addr * 0x9E3779B97F4A7C15ull) & (ncap - 1);
        while (nt[h].addr) h = (h + 1) & (ncap - 1);
        nt[h] = *c;
    }
    free(table);
    table = nt;
    cap = ncap;
}

CUDA_EMU_NOTSAN static Cell* cell(uint64_t a) {
    if (table_serial != rt::block_serial) {  // a new block: forget the previous one
        if (table) memset(table, 0, cap * sizeof(Cell));
        used = 0;
        table_serial = rt::block_serial;
    }
    if (!table || 2 * (used + 1) > cap) grow();
    uint64_t h = (a * 0x9E3779B97F4A7C15ull) & (cap - 1);
    while (table[h].addr && table[h].addr != a) h = (h + 1) & (cap - 1);
    Cell* c = &table[h];
    if (!c->addr) {
        c->addr = a;
        c->serial = table_serial;
        c->w.tid = c->r1.tid = c->r2.tid = -1;
        ++used;
    }
    return c;
}

// Did `prev` happen in the same barrier interval as the current access of thread `tid`?
CUDA_EMU_NOTSAN static bool concurrent(const Access& prev, int tid, int atomic) {
    if (prev.tid < 0 || prev.tid == tid || prev.gen != rt::bar_gen) return false;
    if (prev.atomic && atomic) return false;
    if (prev.tid / 32 == tid / 32 && prev.wgen != rt::warp_gen[tid / 32]) return false;
    return true;
}

CUDA_EMU_NOTSAN static const char* region(uint64_t a, char* buf, size_t n) {
    for (int i = 0; i < n_ranges; ++i)
        if (a >= ranges[2 * i] && a < ranges[2 * i + 1]) {
            snprintf(buf, n, "byte %llu of array argument %d", (unsigned long long)(a - ranges[2 * i]), i);
            return buf;
        }
    uint64_t d = (uint64_t)(uintptr_t)__emu_dyn_smem;
    if (a >= d && a < d + kDynArena) snprintf(buf, n, "byte %llu of dynamic shared memory", (unsigned long long)(a - d));
    else snprintf(buf, n, "static shared memory at %#llx", (unsigned long long)a);
    return buf;
}

CUDA_EMU_NOTSAN static void report(const char* what, uint64_t a, int is_write, uint64_t pc, const Access& prev,
                                   const char* prev_kind) {
    Fiber* f = rt::cur;
    Fiber* g = &rt::fibers[prev.tid];
    char where_buf[96];
    busy = 0;
    fail("racecheck: %s: thread (%u,%u,%u) %s %s [pc +%#llx] and thread (%u,%u,%u) %s it [pc +%#llx] with no "
         "barrier between (same __syncthreads interval)", what, f->tid.x, f->tid.y, f->tid.z,
         is_write ? "writes" : "reads", region(a, where_buf, sizeof where_buf), (unsigned long long)pc, g->tid.x,
         g->tid.y, g->tid.z, prev_kind, (unsigned long long)prev.pc);
}

CUDA_EMU_NOTSAN static void access(const void* p, uint64_t size, int is_write, int atomic, void* ret) {
    if (!rt::race_on || !rt::in_fiber || busy || rt::failed) return;
    uint64_t a0 = (uint64_t)(uintptr_t)p;
    if (!watched(a0) && !watched(a0 + size - 1)) return;
    busy = 1;
    int tid = rt::cur->linear;
    uint64_t pc = (uint64_t)(uintptr_t)ret - lib_base;
    Access now{rt::bar_gen, (uint32_t)rt::warp_gen[tid / 32], tid, pc, atomic};
    for (uint64_t a = a0; a < a0 + size; ++a) {
        if (!watched(a)) continue;
        Cell* c = cell(a);
        if (concurrent(c->w, tid, atomic)) {
            report(is_write ? "write-write race" : "read-write race", a, is_write, pc, c->w, "writes");
            return;
        }
        if (is_write) {
            const Access* rs[2] = {&c->r1, &c->r2};
            for (const Access* r : rs)
                if (concurrent(*r, tid, atomic)) {
                    report("write-read race", a, is_write, pc, *r, "reads");
                    return;
                }
            c->w = now;
        } else if (c->r1.tid != tid && c->r2.tid != tid) {
            if (c->r1.tid < 0 || c->r1.gen != rt::bar_gen) c->r1 = now;
            else c->r2 = now;
        } else {
            (c->r1.tid == tid ? c->r1 : c->r2) = now;
        }
    }
    busy = 0;
}
}  // namespace race
}  // namespace cuda_emu

#define CUDA_EMU_RET __builtin_return_address(0)
extern "C" {
CUDA_EMU_NOTSAN void __tsan_init() {}
CUDA_EMU_NOTSAN void __tsan_func_entry(void*) {}
CUDA_EMU_NOTSAN void __tsan_func_exit() {}
CUDA_EMU_NOTSAN void __tsan_vptr_update(void**, void*) {}
CUDA_EMU_NOTSAN void __tsan_vptr_read(void**) {}
CUDA_EMU_NOTSAN void __tsan_read_range(void* p, unsigned long n) { cuda_emu::race::access(p, n, 0, 0, CUDA_EMU_RET); }
CUDA_EMU_NOTSAN void __tsan_write_range(void* p, unsigned long n) { cuda_emu::race::access(p, n, 1, 0, CUDA_EMU_RET); }
#define CUDA_EMU_TSAN_RW(N)                                                                                         \
    CUDA_EMU_NOTSAN void __tsan_read##N(void* p) { cuda_emu::race::access(p, N, 0, 0, CUDA_EMU_RET); }             \
    CUDA_EMU_NOTSAN void __tsan_write##N(void* p) { cuda_emu::race::access(p, N, 1, 0, CUDA_EMU_RET); }            \
    CUDA_EMU_NOTSAN void __tsan_unaligned_read##N(void* p) { cuda_emu::race::access(p, N, 0, 0, CUDA_EMU_RET); }   \
    CUDA_EMU_NOTSAN void __tsan_unaligned_write##N(void* p) { cuda_emu::race::access(p, N, 1, 0, CUDA_EMU_RET); }  \
    CUDA_EMU_NOTSAN void __tsan_volatile_read##N(void* p) { cuda_emu::race::access(p, N, 0, 0, CUDA_EMU_RET); }    \
    CUDA_EMU_NOTSAN void __tsan_volatile_write##N(void* p) { cuda_emu::race::access(p, N, 1, 0, CUDA_EMU_RET); }
CUDA_EMU_TSAN_RW(1)
CUDA_EMU_TSAN_RW(2)
CUDA_EMU_TSAN_RW(4)
CUDA_EMU_TSAN_RW(8)
CUDA_EMU_TSAN_RW(16)
CUDA_EMU_NOTSAN void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
CUDA_EMU_NOTSAN void __tsan_atomic_signal_fence(int) {}
// Atomics: record an atomic access (atomics never race with atomics), then do the operation.
#define CUDA_EMU_TSAN_ATOMIC(N, T)                                                                                  \
    CUDA_EMU_NOTSAN T __tsan_atomic##N##_load(const volatile T* a, int) {                                           \
        cuda_emu::race::access((const void*)a, sizeof(T), 0, 1, CUDA_EMU_RET);                                      \
        return __atomic_load_n(a, __ATOMIC_SEQ_CST);                                                                \
    }                                                                                                               \
    CUDA_EMU_NOTSAN void __tsan_atomic##N##_store(volatile T* a, T v, int) {                                        \
        cuda_emu::race::access((const void*)a, sizeof(T), 1, 1, CUDA_EMU_RET);                                      \
        __atomic_store_n(a, v, __ATOMIC_SEQ_CST);                                                                   \
    }                                                                                                               \
    CUDA_EMU_NOTSAN T __tsan_atomic##N##_exchange(volatile T* a, T v, int) {                                        \
        cuda_emu::race::access((const void*)a, sizeof(T), 1, 1, CUDA_EMU_RET);                                      \
        return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                                         \
    }                                                                                                               \
    CUDA_EMU_NOTSAN T __tsan_atomic##N##_fetch_add(volatile T* a, T v, int) {                                       \
        cuda_emu::race::access((const void*)a, sizeof(T), 1, 1, CUDA_EMU_RET);                                      \
        return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);                                                          \
    }                                                                                                               \
    CUDA_EMU_NOTSAN T __tsan_atomic##N##_fetch_sub(volatile T* a, T v, int) {                                       \
        cuda_emu::race::access((const void*)a, sizeof(T), 1, 1, CUDA_EMU_RET);                                      \
        return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST);                                                          \
    }                                                                                                               \
    CUDA_EMU_NOTSAN T __tsan_atomic##N##_fetch_and(volatile T* a, T v, int) {                                       \
        cuda_emu::race::access((const void*)a, sizeof(T), 1, 1, CUDA_EMU_RET);                                      \
        return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST);                                                          \
    }                                                                                                               \
    CUDA_EMU_NOTSAN T __tsan_atomic##N##_fetch_or(volatile T* a, T v, int) {                                        \
        cuda_emu::race::access((const void*)a, sizeof(T), 1, 1, CUDA_EMU_RET);                                      \
        return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST);                                                           \
    }                                                                                                               \
    CUDA_EMU_NOTSAN T __tsan_atomic##N##_fetch_xor(volatile T* a, T v, int) {                                       \
        cuda_emu::race::access((const void*)a, sizeof(T), 1, 1, CUDA_EMU_RET);                                      \
        return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST);                                                          \
    }                                                                                                               \
    CUDA_EMU_NOTSAN T __tsan_atomic##N##_fetch_nand(volatile T* a, T v, int) {                                      \
        cuda_emu::race::access((const void*)a, sizeof(T), 1, 1, CUDA_EMU_RET);                                      \
        return __atomic_fetch_nand(a, v, __ATOMIC_SEQ_CST);                                                         \
    }                                                                                                               \
    CUDA_EMU_NOTSAN int __tsan_atomic##N##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) {            \
        cuda_emu::race::access((const void*)a, sizeof(T), 1, 1, CUDA_EMU_RET);                                      \
        return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                     \
    }                                                                                                               \
    CUDA_EMU_NOTSAN int __tsan_atomic##N##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) {              \
        cuda_emu::race::access((const void*)a, sizeof(T), 1, 1, CUDA_EMU_RET);                                      \
        return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                     \
    }                                                                                                               \
    CUDA_EMU_NOTSAN T __tsan_atomic##N##_compare_exchange_val(volatile T* a, T c, T v, int, int) {                  \
        cuda_emu::race::access((const void*)a, sizeof(T), 1, 1, CUDA_EMU_RET);                                      \
        __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                           \
        return c;                                                                                                   \
    }
CUDA_EMU_TSAN_ATOMIC(8, uint8_t)
CUDA_EMU_TSAN_ATOMIC(16, uint16_t)
CUDA_EMU_TSAN_ATOMIC(32, uint32_t)
CUDA_EMU_TSAN_ATOMIC(64, uint64_t)

// The launch's array arguments (lo, hi) pairs, set before each launch; also records the library's
// load address so that reported code addresses are offsets that addr2line understands.
__attribute__((used, visibility("default"))) CUDA_EMU_NOTSAN void __emu_race_set(const uint64_t* pairs, int n, int on) {
    free(cuda_emu::race::ranges);
    cuda_emu::race::ranges = (uint64_t*)malloc(sizeof(uint64_t) * 2 * (size_t)(n > 0 ? n : 1));
    memcpy(cuda_emu::race::ranges, pairs, sizeof(uint64_t) * 2 * (size_t)n);
    cuda_emu::race::n_ranges = n;
    cuda_emu::rt::race_on = on;
    Dl_info info;
    if (dladdr((void*)&__emu_race_set, &info)) cuda_emu::race::lib_base = (uint64_t)(uintptr_t)info.dli_fbase;
}
}

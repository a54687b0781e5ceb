"""The emulator's racecheck (CUDA_EMU_RACECHECK / Module(racecheck=True)): a read or write of a
device or shared word that another thread of the block writes in the same barrier interval is a
KernelError, whatever the schedule. Issue 8 item 2 was such a race (radix_select read ws[KREM]
in every thread while one thread wrote it); schedules only showed it on spread-out data."""

import numpy as np
import pytest

import cuda_emu

CODE = r'''
// The shape of issue 8 item 2: every thread reads the workspace, one writes it, no barrier between.
extern "C" __global__ void read_then_write(unsigned long long* ws, int* out) {
    unsigned long long k = ws[0];
    if (threadIdx.x == 37) ws[0] = k + 1;
    out[threadIdx.x] = (int)k;
}
// The fix: the reads happen before a barrier, the write after.
extern "C" __global__ void read_barrier_write(unsigned long long* ws, int* out) {
    unsigned long long k = ws[0];
    __syncthreads();
    if (threadIdx.x == 37) ws[0] = k + 1;
    out[threadIdx.x] = (int)k;
}
extern "C" __global__ void shared_neighbour(int* out, int sync) {
    __shared__ int s[128];
    s[threadIdx.x] = threadIdx.x;
    if (sync) __syncthreads();
    out[threadIdx.x] = s[(threadIdx.x + 64) % blockDim.x];
}
extern "C" __global__ void two_writers(int* out) {
    if (threadIdx.x == 3 || threadIdx.x == 90) out[0] = threadIdx.x;
}
extern "C" __global__ void atomics_only(unsigned int* c, unsigned long long* d) {
    atomicAdd(&c[0], 1u);
    atomicMax(&d[0], (unsigned long long)threadIdx.x);
}
extern "C" __global__ void atomic_then_plain_read(unsigned int* c, unsigned int* out) {
    atomicAdd(&c[0], 1u);
    out[threadIdx.x] = c[0];
}
// Lanes of one warp exchange through shared memory, ordered by __syncwarp.
extern "C" __global__ void warp_exchange(int* out, int sync) {
    __shared__ int s[32];
    s[threadIdx.x] = threadIdx.x * 3;
    if (sync) __syncwarp(0xffffffffu);
    out[threadIdx.x] = s[threadIdx.x ^ 1];
}
// Every block writes its own slot: blocks are not compared with each other.
extern "C" __global__ void per_block(int* out) {
    if (threadIdx.x == 0) out[blockIdx.x] = blockIdx.x;
}
'''


@pytest.fixture(scope="module")
def racy():
    return cuda_emu.Module(CODE, racecheck=True)


@pytest.mark.parametrize("schedule", cuda_emu.SCHEDULES)
def test_read_then_write_without_barrier_is_a_race(racy, schedule):
    with cuda_emu.using_schedule(schedule, seed=3), pytest.raises(cuda_emu.KernelError) as exc:
        racy.get_function("read_then_write")(1, 128, (np.zeros(1, np.uint64), np.zeros(128, np.int32)))
    msg = str(exc.value)
    assert "racecheck" in msg and "thread (37,0,0) writes byte 0 of array argument 0" in msg, msg
    assert "kernel.cu:5" in msg and "kernel.cu:4" in msg, msg  # the write, and the read it races with


def test_barrier_orders_the_read_and_the_write(racy):
    ws, out = np.zeros(1, np.uint64), np.zeros(128, np.int32)
    for schedule in cuda_emu.SCHEDULES:
        ws[0] = 7
        with cuda_emu.using_schedule(schedule, seed=1):
            racy.get_function("read_barrier_write")(1, 128, (ws, out))
        assert ws[0] == 8 and (out == 7).all()


def test_shared_memory_race_and_its_barrier(racy):
    out = np.zeros(128, np.int32)
    with pytest.raises(cuda_emu.KernelError, match="racecheck: .*static shared memory"):
        racy.get_function("shared_neighbour")(1, 128, (out, np.int32(0)))
    racy.get_function("shared_neighbour")(1, 128, (out, np.int32(1)))
    assert (out == (np.arange(128) + 64) % 128).all()


def test_two_writers_race(racy):
    with pytest.raises(cuda_emu.KernelError, match="write-write race"):
        racy.get_function("two_writers")(1, 128, (np.zeros(1, np.int32),))


def test_atomics_do_not_race_with_atomics_but_with_plain_reads(racy):
    c, d = np.zeros(1, np.uint32), np.zeros(1, np.uint64)
    racy.get_function("atomics_only")(2, 256, (c, d))
    assert c[0] == 512 and d[0] == 255
    with pytest.raises(cuda_emu.KernelError, match="racecheck"):
        racy.get_function("atomic_then_plain_read")(1, 64, (np.zeros(1, np.uint32), np.zeros(64, np.uint32)))


def test_warp_collectives_order_the_lanes_of_a_warp(racy):
    out = np.zeros(32, np.int32)
    with pytest.raises(cuda_emu.KernelError, match="racecheck"):
        racy.get_function("warp_exchange")(1, 32, (out, np.int32(0)))
    racy.get_function("warp_exchange")(1, 32, (out, np.int32(1)))
    assert (out == (np.arange(32) ^ 1) * 3).all()


def test_blocks_are_not_compared(racy):
    out = np.full(8, -1, np.int32)
    racy.get_function("per_block")(8, 64, (out,))
    assert (out == np.arange(8)).all()


def test_racecheck_and_sanitize_exclude_each_other():
    with pytest.raises(ValueError, match="cannot be combined"):
        cuda_emu.Module(CODE, racecheck=True, sanitize=True)

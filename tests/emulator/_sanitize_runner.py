"""Run one kernel of bug_kernels.cu / kernels.cu under the sanitizer build (used by test_sanitizer.py
in a subprocess started with cuda_emu.sanitizer_env())."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent / "tools"))

import numpy as np  # noqa: E402

import cuda_emu  # noqa: E402


def main(case: str) -> None:
    bugs = cuda_emu.Module((HERE / "bug_kernels.cu").read_text())
    assert bugs.sanitize, "CUDA_EMU_SANITIZE=1 expected"
    if case == "oob_write":
        y = np.zeros(64, np.float32)
        bugs.get_function("oob_write")(1, 128, (y, np.int32(64)))
    elif case == "oob_write_view":      # the array is a slice of a larger one: still caught
        big = np.zeros(256, np.float32)
        bugs.get_function("oob_write")(1, 128, (big[64:128], np.int32(64)))
    elif case == "misaligned_vec":
        x = np.arange(64, dtype=np.uint32)
        bugs.get_function("misaligned_vec")(1, 4, (x, np.zeros(4, np.uint32)))
    elif case == "dyn_overflow_read":
        bugs.get_function("dyn_overflow")(1, 32, (np.zeros(32, np.int32),), shared_mem=4 * 31)
    elif case == "ok":
        k = cuda_emu.Module((HERE / "kernels.cu").read_text(), name_expressions=["block_sum<int, 128>"])
        x = np.arange(1000, dtype=np.int32)
        out = np.zeros(8, np.int32)
        k.get_function("block_sum<int, 128>")(8, 128, (x, out, np.int32(1000)))
        assert out.sum() == x.sum(), out
        y = np.zeros(64, np.int32)
        bugs.get_function("with_sync")(1, 64, (np.arange(64, dtype=np.int32), y))
        assert (y == np.roll(np.arange(64), -1)).all(), y
        v = np.zeros(8 * 4, np.uint32)
        k.get_function("vec_copy")(1, 8, (np.arange(32, dtype=np.uint32), v, np.int32(8)))
        assert (v.reshape(8, 4) == np.arange(32).reshape(8, 4)[:, ::-1]).all()
        y = np.zeros(64, np.float32)
        bugs.get_function("oob_write")(1, 64, (y, np.int32(64)))   # in bounds with 64 threads
        assert (y == 1).all()
        try:
            bugs.get_function("early_return")(1, 128, (np.ones(100, np.float32), np.zeros(100, np.float32),
                                                        np.int32(100)))
        except cuda_emu.KernelError:
            pass
        else:
            raise AssertionError("barrier divergence not reported under the sanitizer build")
    else:
        raise SystemExit(f"unknown case {case}")
    print("CASE-COMPLETED", case, flush=True)


if __name__ == "__main__":
    main(sys.argv[1])

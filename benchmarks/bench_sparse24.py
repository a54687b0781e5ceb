"""Benchmark: 2:4 compression in C (cpu backend) vs one np.copyto of the weight, and vs PyTorch's
reference conversion (torch.sparse._semi_structured_conversions.sparse_semi_structured_from_dense_cutlass).

    python benchmarks/bench_sparse24.py [--big-rows 10240 --big-cols 9792] [--repeats 7] [--json out.json]

Measured in one process, medians of interleaved repeats (the machine is shared and noisy). Two
C timings: "fresh" allocates the outputs on every call (what compress_24 does: page faults
included) and "reused" writes into preallocated outputs (the same conditions as np.copyto into an
existing array).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import pruneplug

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
            "pruneplug": pruneplug.__version__, "platform": platform.platform(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


def weight(rows: int, cols: int, dtype: str) -> np.ndarray:
    from sparse24_data import sparse_weight

    block = sparse_weight((min(rows, 512), cols), dtype, seed=0, nan=False)
    reps = -(-rows // block.shape[0])
    return np.ascontiguousarray(np.tile(block, (reps, 1))[:rows])


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def interleaved(fns: dict, repeats: int) -> dict:
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(timed(fn))
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def c_funcs(w: np.ndarray, layout: str):
    from pruneplug_backends.cpu import compress24 as c24
    from pruneplug_backends.cpu.native import DTYPE_CODE, LAYOUT_CODE, ffi, lib

    values, meta = c24._outputs(w)
    bad = ffi.new("int64_t[3]")
    rows, cols = w.shape

    def reused():
        st = lib.pp24_compress(c24._ptr(w), DTYPE_CODE[w.dtype.name], rows, cols, LAYOUT_CODE[layout],
                               c24._ptr(values), c24._ptr(meta), 0, bad, bad + 1, bad + 2)
        assert st == 0

    def fresh():
        c24.pruneplug_compress_24(weights=w, layout=layout)

    return fresh, reused


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--big-rows", type=int, default=10240)
    ap.add_argument("--big-cols", type=int, default=9792)  # 10240 x 9792 = 1.003e8 elements
    ap.add_argument("--torch-size", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", type=str, default=None)
    args = ap.parse_args()

    import pruneplug.sparse24  # noqa: F401  (registers nothing; checks the install)

    info = machine()
    print("machine:", json.dumps(info))
    results = {"machine": info, "big": [], "torch": []}

    for dtype in ("float16", "float32"):
        for layout in ("cutlass", "ptx"):
            w = weight(args.big_rows, args.big_cols, dtype)
            dst = np.empty_like(w)
            fresh, reused = c_funcs(w, layout)
            fresh()
            reused()
            np.copyto(dst, w)
            r = interleaved({"copy": lambda: np.copyto(dst, w), "c_reused": reused, "c_fresh": fresh}, args.repeats)
            row = {"dtype": dtype, "layout": layout, "shape": list(w.shape), "elements": int(w.size),
                   "copy_ms": r["copy"], "c_reused_ms": r["c_reused"], "c_fresh_ms": r["c_fresh"],
                   "c_reused_x_copy": r["c_reused"] / r["copy"], "c_fresh_x_copy": r["c_fresh"] / r["copy"]}
            results["big"].append(row)
            print(f"{dtype:8s} {layout:7s} {w.shape} copy {r['copy']:7.1f} ms | C reused {r['c_reused']:7.1f} ms "
                  f"({row['c_reused_x_copy']:.2f}x copy) | C fresh outputs {r['c_fresh']:7.1f} ms ({row['c_fresh_x_copy']:.2f}x)")
            del w, dst

    try:
        import torch
        from torch.sparse._semi_structured_conversions import sparse_semi_structured_from_dense_cutlass as ref
    except ImportError:
        print("PyTorch not installed: skipping the comparison with its reference conversion")
    else:
        n = args.torch_size
        for dtype in ("float16", "bfloat16", "float32", "int8"):
            w = weight(n, n, dtype)
            t = torch.from_numpy(w.view(np.int16)).view(torch.bfloat16) if dtype == "bfloat16" else torch.from_numpy(w)
            fresh, _ = c_funcs(w, "cutlass")
            r = interleaved({"torch": lambda: ref(t), "c_fresh": fresh}, max(3, args.repeats // 2))
            row = {"dtype": dtype, "shape": [n, n], "torch_ms": r["torch"], "c_fresh_ms": r["c_fresh"],
                   "speedup": r["torch"] / r["c_fresh"], "torch_threads": torch.get_num_threads()}
            results["torch"].append(row)
            print(f"{dtype:8s} cutlass ({n}, {n}) PyTorch reference {r['torch']:8.1f} ms | C {r['c_fresh']:6.2f} ms "
                  f"| {row['speedup']:.0f}x faster")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
        print("wrote", args.json)


if __name__ == "__main__":
    main()

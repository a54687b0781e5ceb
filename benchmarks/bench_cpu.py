"""Benchmark of the ``cpu`` backend against what a user would do instead, in one run, same arrays.

Every (case, size) runs in its own Python process with fresh buffers (page faults and allocator
state of one case never help or hurt another); each process builds the same float32 N(0, 1) array
(seed 0, generated directly in float32), runs the case ``--repeats`` times (fewer for multi-second cases) and reports the median,
plus the peak-RSS growth over the setup (extra memory). Sparsity 0.5 (k = round(n/2)), 2:4 along
the last axis. The NumPy baselines are also re-run with NumPy's AVX2 path
(``NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL AVX512_SPR"``) when this CPU has AVX-512: NumPy's
AVX-512 sort/partition is much slower on some CPUs, and a fair comparison uses NumPy's best.

    python benchmarks/bench_cpu.py                       # 1e3 .. 1e8
    python benchmarks/bench_cpu.py --max-size 1e7 --json results.json
    python benchmarks/bench_cpu.py --sizes 1e6 1e8 --cases copy cpu_prune numpy_partition_threshold
    python benchmarks/bench_cpu.py --dtype bfloat16 --cases cpu_prune cpu_nm24_mask   # other weight dtypes

Columns: median ms, "x copy" (over one ``np.copyto`` of the same array, same size, same run), and
for the cpu rows the speedup over each NumPy route of the same family (and of torch's).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

NPY_AVX2_ENV = {"NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR"}

# case name -> (family, description)
CASES = {
    "copy": ("floor", "np.copyto of the input (read + write)"),
    "cpu_prune": ("unstructured", "pp.prune(w, 0.5, inplace=True, backend='cpu'): fused, exact, ties by index"),
    "cpu_mask_scores": ("unstructured", "pp.generate_unstructured_mask(|w| scores, 0.5, out=, backend='cpu')"),
    "cpu_mask_weights": ("unstructured", "cpu unstructured_mask hook on weights (transform abs), out="),
    "numpy_argpartition": ("unstructured", "NumPy abs + argpartition + mask (exact k, ties arbitrary)"),
    "numpy_partition_threshold": ("unstructured", "NumPy abs + partition, then abs > t (not exact with ties)"),
    "torch_topk": ("unstructured", "torch abs + topk + bool mask (exact k)"),
    "torch_l1_unstructured": ("unstructured", "torch.nn.utils.prune.l1_unstructured, whole call"),
    "cpu_nm24_mask": ("2:4", "cpu nm_mask hook on weights (transform abs), 2:4 along the last axis, out="),
    "cpu_prune_nm24": ("2:4", "pp.prune(w, pattern='2:4', inplace=True, backend='cpu'): fused"),
    "numpy_nm24_compare": ("2:4", "NumPy |w| then 12 pairwise comparisons per group of 4"),
    "numpy_nm24_argsort": ("2:4", "NumPy argsort(-|w|) along groups + put_along_axis"),
    "cpu_apply": ("apply", "cpu apply_mask (branch-free select)"),
    "numpy_apply_multiply": ("apply", "np.multiply(w, mask, out=w)"),
    "cpu_importance": ("importance", "cpu importance l1: scores + min/max/mean/std in one pass"),
    "cpu_key_histogram": ("selection", "cpu key_histogram hook (abs, float32 keys, float64 for float64 weights), "
                                       "first pass: 16-bit digit, no prefix"),
    "cpu_prune_below_key": ("selection", "cpu prune_below_key hook (abs, same keys), threshold |w| = 0.6745, out="),
    "numpy_importance": ("importance", "np.abs + min + max + mean + std (float64)"),
}
NUMPY_CASES = [c for c in CASES if c.startswith("numpy_")] + ["copy"]
DEFAULT_SIZES = [1e3, 1e4, 1e5, 1e6, 1e7, 1e8]


# ---------------------------------------------------------------------------------------------
# worker: one case, one size, in this process
# ---------------------------------------------------------------------------------------------
def _rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _current_rss_kb() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except OSError:
        return _rss_kb()


def _make_case(case: str, x, k: int):
    """Return (prepare, run): prepare() untimed before each repeat, run() timed."""
    import numpy as np

    n = x.size
    if case == "copy":
        dst = np.empty_like(x)
        dst[...] = 0
        return None, lambda: np.copyto(dst, x)
    if case in ("cpu_prune", "cpu_prune_nm24", "cpu_apply", "numpy_apply_multiply"):
        w = np.empty_like(x)
        w[...] = x
        if case == "cpu_prune":
            import pruneplug as pp

            return (lambda: np.copyto(w, x)), (lambda: pp.prune(w, 0.5, inplace=True, backend="cpu"))
        if case == "cpu_prune_nm24":
            import pruneplug as pp

            w4 = w.reshape(-1, 4)
            return (lambda: np.copyto(w, x)), (lambda: pp.prune(w4, pattern="2:4", inplace=True, backend="cpu"))
        mask = np.random.default_rng(1).random(n) < 0.5
        if case == "cpu_apply":
            from pruneplug_backends import cpu

            return (lambda: np.copyto(w, x)), (lambda: cpu.pruneplug_apply_mask(weights=w, mask=mask))
        return (lambda: np.copyto(w, x)), (lambda: np.multiply(w, mask, out=w))
    if case == "cpu_mask_scores":
        import pruneplug as pp

        scores = np.abs(x)
        out = np.ones(n, dtype=bool)
        return None, lambda: pp.generate_unstructured_mask(scores, 0.5, out=out, backend="cpu")
    if case == "cpu_mask_weights":
        from pruneplug_backends import cpu

        out = np.ones(n, dtype=bool)
        return None, lambda: cpu.pruneplug_unstructured_mask(values=x, k=k, transform="abs", out=out)
    if case == "numpy_argpartition":
        def run():
            a = np.abs(x)
            idx = np.argpartition(a, k - 1)[:k]
            m = np.ones(n, dtype=bool)
            m[idx] = False
            return m
        return None, run
    if case == "numpy_partition_threshold":
        def run():
            a = np.abs(x)
            t = np.partition(a, k - 1)[k - 1]
            return a > t
        return None, run
    if case == "torch_topk":
        import torch

        t = torch.from_numpy(x)

        def run():
            a = t.abs()
            idx = torch.topk(a, n - k, largest=True, sorted=False).indices
            m = torch.zeros(n, dtype=torch.bool)
            m[idx] = True
            return m
        return None, run
    if case == "torch_l1_unstructured":
        import torch
        from torch.nn.utils import prune

        holder = {}

        def prepare():
            holder.clear()
            mod = torch.nn.Module()
            mod.weight = torch.nn.Parameter(torch.from_numpy(x.copy()))
            holder["m"] = mod

        return prepare, lambda: prune.l1_unstructured(holder["m"], "weight", amount=k)
    if case in ("cpu_nm24_mask", "numpy_nm24_compare", "numpy_nm24_argsort"):
        x4 = x[: n // 4 * 4].reshape(-1, 4)
        if case == "cpu_nm24_mask":
            from pruneplug_backends import cpu

            out = np.ones(x4.shape, dtype=bool)
            return None, lambda: cpu.pruneplug_nm_mask(values=x4, n=2, m=4, axis=1, transform="abs", out=out)
        if case == "numpy_nm24_compare":
            def run():
                a = np.abs(x4)
                c = [a[:, j] for j in range(4)]
                keep = np.empty(a.shape, dtype=bool)
                for j in range(4):
                    rank = np.zeros(a.shape[0], dtype=np.uint8)
                    for i in range(4):
                        if i < j:
                            rank += c[i] >= c[j]
                        elif i > j:
                            rank += c[i] > c[j]
                    keep[:, j] = rank < 2
                return keep
            return None, run

        def run_sort():
            a = np.abs(x4)
            order = np.argsort(-a, axis=1, kind="stable")
            keep = np.zeros(a.shape, dtype=bool)
            np.put_along_axis(keep, order[:, :2], True, axis=1)
            return keep
        return None, run_sort
    if case in ("cpu_key_histogram", "cpu_prune_below_key"):
        from pruneplug_backends import cpu

        keys = "f64" if x.dtype == np.float64 else "f32"
        if case == "cpu_key_histogram":
            top = 63 if keys == "f64" else 31  # every key is below 2^top
            return None, lambda: cpu.pruneplug_key_histogram(values=x, transform="abs", keys=keys, shift=top - 16,
                                                             bits=16, prefix=0)
        threshold = int(np.float64(0.6745).view(np.uint64)) if keys == "f64" else int(np.float32(0.6745).view(np.uint32))
        out = np.empty_like(x)
        return None, lambda: cpu.pruneplug_prune_below_key(values=x, transform="abs", keys=keys, threshold=threshold,
                                                           ties=0, out=out)
    if case == "cpu_importance":
        from pruneplug_backends import cpu

        return None, lambda: cpu.pruneplug_importance(weights=x, transform="abs")
    if case == "numpy_importance":
        def run():
            s = np.abs(x)
            return s, (float(s.min()), float(s.max()), float(s.mean(dtype=np.float64)), float(s.std(dtype=np.float64)))
        return None, run
    raise ValueError(case)


def _weights(size: int, dtype: str):
    """The benchmark's input: N(0, 1) values, seed 0, drawn in float32 and cast to ``dtype``."""
    import numpy as np

    x = np.random.default_rng(0).standard_normal(size, dtype=np.float32)  # no float64 temporary: clean RSS
    if dtype == "float32":
        return x
    if dtype == "bfloat16":
        import ml_dtypes

        return x.astype(ml_dtypes.bfloat16)
    return x.astype(dtype)


def worker(case: str, size: int, repeats: int, budget_s: float, dtype: str = "float32") -> dict:
    x = _weights(size, dtype)
    k = int(round(0.5 * size))
    prepare, run = _make_case(case, x, k)
    if prepare:
        prepare()
    base_peak = _rss_kb()
    base_now = _current_rss_kb()
    times = []
    start = time.perf_counter()
    for i in range(repeats):
        if prepare and i:
            prepare()
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
        if i >= 2 and time.perf_counter() - start > budget_s:
            break
        if times[0] > 5.0 and i >= 0:  # multi-second baselines: one run is enough
            break
    extra_kb = max(0, _rss_kb() - max(base_peak, base_now))
    return {"case": case, "size": size, "ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3,
            "repeats": len(times), "extra_mb": extra_kb / 1024.0}


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------
def machine_info() -> dict:
    import io
    import contextlib

    import numpy as np

    info = {"python": sys.version.split()[0], "platform": platform.platform(), "numpy": np.__version__,
            "loadavg_start": os.getloadavg(),
            "cores": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        info["cpu"] = platform.processor()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            np.show_runtime()
        except Exception as exc:  # noqa: BLE001
            print(exc)
    info["numpy_runtime"] = buf.getvalue()
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as feats

        info["numpy_avx512"] = bool(feats.get("AVX512_SKX"))
    except Exception:  # noqa: BLE001
        info["numpy_avx512"] = None
    try:
        import threadpoolctl

        info["threadpoolctl"] = threadpoolctl.threadpool_info()
    except ImportError:
        info["threadpoolctl"] = None
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["torch"] = None
    try:
        from pruneplug_backends.cpu import ffi, lib

        name = ffi.new("char[32]")
        lib.pp_active_isa(name, 32)
        info["cpu_backend_isa"] = ffi.string(name).decode()
    except Exception as exc:  # noqa: BLE001
        info["cpu_backend_isa"] = f"unavailable: {exc}"
    return info


def run_one(case: str, size: int, repeats: int, budget_s: float, env_extra: dict | None, timeout: float,
            dtype: str = "float32") -> dict | None:
    env = dict(os.environ, **(env_extra or {}))
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", case, str(size), str(repeats), str(budget_s), dtype]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"case": case, "size": size, "error": f"timeout after {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"case": case, "size": size, "error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="*", type=float, default=None)
    ap.add_argument("--max-size", type=float, default=1e8)
    ap.add_argument("--cases", nargs="*", default=None, help=f"subset of {list(CASES)}")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--budget", type=float, default=3.0, help="seconds per (case, size) before fewer repeats")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--no-numpy-avx2", action="store_true", help="skip the NumPy-AVX2 re-run")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--dtype", default="float32", choices=["float16", "bfloat16", "float32", "float64"],
                    help="weight dtype (the NumPy and torch baselines are meant for float32)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        case, size, repeats, budget, dtype = args.worker
        print(json.dumps(worker(case, int(float(size)), int(repeats), float(budget), dtype)))
        return

    sizes = [int(s) for s in (args.sizes or DEFAULT_SIZES) if s <= args.max_size]
    cases = args.cases or list(CASES)
    try:
        import torch  # noqa: F401
        have_torch = not args.no_torch
    except ImportError:
        have_torch = False
    if not have_torch:
        cases = [c for c in cases if not c.startswith("torch_")]
    info = machine_info()
    print(f"# cpu: {info.get('cpu')} | cores: {info['cores']} | python {info['python']} | numpy {info['numpy']}"
          f" | torch {info.get('torch')} | cpu backend build: {info['cpu_backend_isa']}"
          f" | OMP_NUM_THREADS={info['omp_num_threads']} | dtype {args.dtype}")
    print("# numpy runtime:", " ".join(info["numpy_runtime"].split())[:600])
    numpy_avx2 = not args.no_numpy_avx2 and bool(info.get("numpy_avx512"))

    results = []
    for size in sizes:
        for case in cases:
            r = run_one(case, size, args.repeats, args.budget, None, args.timeout, args.dtype)
            r["numpy_path"] = "default"
            results.append(r)
            print(f"  {size:>11,} {case:<28} {r.get('ms', float('nan')):>10.3f} ms  extra {r.get('extra_mb', float('nan')):8.1f} MB"
                  + (f"  ERROR {r['error']}" if "error" in r else ""), flush=True)
            if numpy_avx2 and case in NUMPY_CASES:
                r2 = run_one(case, size, args.repeats, args.budget, NPY_AVX2_ENV, args.timeout, args.dtype)
                r2["numpy_path"] = "avx2"
                r2["case"] = case
                results.append(r2)
                print(f"  {size:>11,} {case + ' [npy avx2]':<28} {r2.get('ms', float('nan')):>10.3f} ms"
                      f"  extra {r2.get('extra_mb', float('nan')):8.1f} MB", flush=True)

    info["loadavg_end"] = os.getloadavg()
    print(f"# load average at start {info['loadavg_start']}, at end {info['loadavg_end']} "
          "(other processes on the machine distort the timings, the 2-thread cpu rows most)")
    print()
    print(table(results, sizes, cases))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "dtype": args.dtype, "results": results, "cases": CASES}, f, indent=1)
        print(f"wrote {args.json}")


def table(results: list, sizes: list, cases: list) -> str:
    by = {(r["case"], r["size"], r["numpy_path"]): r for r in results if "ms" in r}
    baselines = {
        "unstructured": ["numpy_argpartition", "numpy_partition_threshold", "torch_topk", "torch_l1_unstructured"],
        "2:4": ["numpy_nm24_compare", "numpy_nm24_argsort"],
        "apply": ["numpy_apply_multiply"],
        "importance": ["numpy_importance"],
    }
    lines = ["| n | case | ms (median) | x copy | extra MB | speedup vs baselines (NumPy default / NumPy AVX2) |",
             "|---|---|---|---|---|---|"]
    for size in sizes:
        copy = by.get(("copy", size, "default"))
        for case in cases:
            for path in ("default", "avx2"):
                r = by.get((case, size, path))
                if r is None:
                    continue
                xc = r["ms"] / copy["ms"] if copy else float("nan")
                label = case + (" [npy avx2]" if path == "avx2" else "")
                speed = ""
                if case.startswith("cpu_"):
                    parts = []
                    for b in baselines.get(CASES[case][0], []):
                        d = by.get((b, size, "default"))
                        a = by.get((b, size, "avx2"))
                        if d:
                            s = f"{b}: {d['ms'] / r['ms']:.1f}x"
                            if a:
                                s += f" / {a['ms'] / r['ms']:.1f}x"
                            parts.append(s)
                    speed = "; ".join(parts)
                lines.append(f"| {size:.0e} | {label} | {r['ms']:.3f} | {xc:.2f} | {r['extra_mb']:.1f} | {speed} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""GPU benchmark of the cuda backend against what a user would otherwise run.

    python benchmarks/bench_gpu.py [--n 100000000] [--dtype float32] [--repeats 10]

Exact-k unstructured pruning (k = n/2, float32 N(0,1)) and 2:4 masks, against: one device copy of
the input (the floor: read once + write once), ``torch.topk`` + mask, ``torch.kthvalue`` then a
threshold (not exact with ties), ``cupy.partition`` then a threshold (not exact with ties). Times
are medians of CUDA-event timings after a warm-up; ratios are over the copy measured in the same
run. Where there is no GPU it says so and exits with status 2. (Never run on a GPU by its author.)
"""

from __future__ import annotations

import argparse
import statistics
import sys


def _no_gpu() -> str | None:
    try:
        import cupy
    except ImportError:
        return "cupy is not installed"
    try:
        if not cupy.is_available():
            return "cupy.is_available() is False"
        cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return None


def timed(fn, repeats: int) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` runs (CUDA events, after one warm-up)."""
    import cupy

    fn()
    cupy.cuda.Device().synchronize()
    times = []
    for _ in range(repeats):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop))
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000_000)
    parser.add_argument("--dtype", default="float32", choices=["float16", "bfloat16", "float32", "float64"])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    reason = _no_gpu()
    if reason is not None:
        print(f"bench_gpu: no CUDA GPU here ({reason}); nothing measured.", file=sys.stderr)
        return 2

    import cupy

    from pruneplug_backends.cuda import backend

    be = backend()
    n, k = args.n, args.n // 2
    rng = cupy.random.default_rng(0)
    x = rng.standard_normal(n, dtype=cupy.float32).astype(args.dtype if args.dtype != "bfloat16" else "float32")
    if args.dtype == "bfloat16":
        import ml_dtypes

        x = x.view(cupy.uint32)
        x = ((x >> 16).astype(cupy.uint16)).view(ml_dtypes.bfloat16)
    out = cupy.empty(n, cupy.bool_)
    scratch = cupy.empty_like(x)
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    rows: list[tuple[str, float, str]] = []

    copy_ms = timed(lambda: cupy.copyto(scratch, x), args.repeats)
    rows.append(("one copy of the input (floor: read + write)", copy_ms, "-"))
    rows.append(("pruneplug cuda: exact-k mask (abs)", timed(lambda: be.unstructured_mask(x, k, "abs", out), args.repeats), "exact, stable ties"))

    def prune_fresh():
        cupy.copyto(scratch, x)
        be.prune_unstructured(scratch, k, "abs")

    rows.append(("pruneplug cuda: copy + fused prune (abs)", timed(prune_fresh, args.repeats), "exact, stable ties"))
    if n % 4 == 0:
        rows.append(("pruneplug cuda: 2:4 mask", timed(lambda: be.nm_mask(x.reshape(-1, 4), 2, 4, 1, "abs", out.reshape(-1, 4)), args.repeats), "exact"))
    rows.append(("pruneplug cuda: importance l1 + stats", timed(lambda: be.importance(x, "l1"), args.repeats), "-"))
    if args.dtype != "bfloat16":
        def partition():
            a = cupy.abs(x)
            return a > cupy.partition(a, k - 1)[k - 1]

        rows.append(("cupy.abs + cupy.partition + threshold", timed(partition, args.repeats), "not exact with ties"))
    try:
        import torch

        if torch.cuda.is_available():
            t = torch.as_tensor(x, device="cuda") if args.dtype != "bfloat16" else None
            if t is not None:
                def topk():
                    idx = torch.topk(t.abs(), k, largest=False).indices
                    m = torch.ones(n, dtype=torch.bool, device="cuda")
                    m[idx] = False
                    return m

                rows.append(("torch.topk + scatter mask", timed(topk, args.repeats), "exact, ties arbitrary"))
                rows.append(("torch.kthvalue + threshold", timed(lambda: t.abs() > torch.kthvalue(t.abs(), k).values,
                                                                   args.repeats), "not exact with ties"))
        else:
            print("torch has no CUDA here: torch baselines skipped", file=sys.stderr)
    except ImportError:
        print("torch not installed: torch baselines skipped", file=sys.stderr)

    print(f"device: {name}; n = {n:,} {args.dtype}; k = {k:,}; medians of {args.repeats} runs")
    print("| what | ms | x copy | result |\n|---|---|---|---|")
    for what, ms, note in rows:
        print(f"| {what} | {ms:.3f} | {ms / copy_ms:.2f} | {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: SparseGPT on one square float32 layer (default 4096 x 4096), CPU threads or a CUDA
device, float32 vs float64 compute, unstructured 50% and 2:4, against magnitude in the same run.

    python benchmarks/bench_sparsegpt.py [--size 4096] [--threads 2] [--repeats 3] [--device cpu|cuda] [--json out.json]

The Hessian is ``A A^T + 0.01 * mean * I`` with ``A`` a random ``size x size/4`` matrix with
feature scales spread over a decade (inputs of lower rank than the layer, as a network's
activations): a timing input that also makes quality differences visible. Quality is the
relative output error ``||(W - W') X^T|| / ||W X^T||``, computed from ``H`` without ``X``:
``sqrt(sum((D H) * D) / sum((W H) * W))`` with ``D = W - W'``. Times are medians of
``--repeats`` runs; the load average is printed next to them (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json")
    args = parser.parse_args()

    import torch

    from pruneplug.reconstruction import sparsegpt_prune

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    n = args.size
    a = torch.randn(n, n // 4, generator=g) * (10.0 ** (torch.rand(n, 1, generator=g) - 0.5))
    a = a.to(dev)
    h = (a @ a.T).double()
    h += 0.01 * h.diagonal().mean() * torch.eye(n, dtype=torch.float64, device=dev)
    w = torch.randn(n, n, generator=g).to(dev)
    h32 = h.float()
    base = float(((w @ h32) * w).sum())

    def rel_error(pruned: "torch.Tensor") -> float:
        d = w - pruned
        return (float(((d @ h32) * d).sum()) / base) ** 0.5

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    rows = []
    for label, kwargs in (("50%", dict(sparsity=0.5)), ("2:4", dict(pattern="2:4"))):
        # magnitude in the same run: what a user would do without calibration
        t0 = time.perf_counter()
        if "pattern" in kwargs:
            groups = w.abs().reshape(n, -1, 4)
            keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, groups.topk(2, dim=2).indices, True)
            mag = torch.where(keep.reshape(n, n), w, torch.zeros((), device=dev))
        else:
            k = n * n // 2
            order = torch.sort(w.abs().reshape(-1), stable=True).indices[:k]
            mag = w.clone().reshape(-1)
            mag[order] = 0
            mag = mag.reshape(n, n)
        sync()
        rows.append(dict(pattern=label, method="magnitude", dtype="-", seconds=time.perf_counter() - t0,
                         rel_error=rel_error(mag)))
        for dtype in ("float32", "float64"):
            times = []
            for _ in range(args.repeats):
                sync()
                t0 = time.perf_counter()
                result = sparsegpt_prune(w, h, dtype=dtype, **kwargs)
                sync()
                times.append(time.perf_counter() - t0)
            rows.append(dict(pattern=label, method="sparsegpt", dtype=dtype, seconds=statistics.median(times),
                             all_seconds=times, rel_error=rel_error(result.weight), retries=result.retries))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    load = os.getloadavg()
    print(f"SparseGPT on one {n}x{n} float32 layer, device {dev}, torch threads {torch.get_num_threads()}, "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, peak RSS {peak:.0f} MiB")
    print(f"{'pattern':8} {'method':10} {'compute':8} {'median s':>9} {'rel. output error':>18}")
    for r in rows:
        print(f"{r['pattern']:8} {r['method']:10} {r['dtype']:8} {r['seconds']:9.2f} {r['rel_error']:18.4f}")
    if dev.type == "cuda":
        print(f"peak CUDA memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(size=n, device=str(dev), threads=torch.get_num_threads(), load=load, peak_rss_mib=peak,
                           rows=rows), f, indent=1)


if __name__ == "__main__":
    main()

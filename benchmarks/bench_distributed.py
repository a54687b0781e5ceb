"""Pruning beyond one process: a sharded checkpoint on a local Dask cluster, and a Dask array.

Two measurements, each against what a user would run instead, in the same run:

1. **Checkpoint** (``--ckpt-gb``, default 2): a sharded float32 safetensors directory (8 shards,
   4096 x 4096 weights); ``pruneplug prune --sparsity 0.5 --scope global`` single process (a fresh
   subprocess, its own peak RSS) against ``prune_checkpoint_dask`` on a ``LocalCluster`` of 2 worker
   processes (cluster start-up timed apart), for global and layer scope (their difference is the
   cost of the selection passes). Reported: wall time, bytes that left the worker
   processes (``Worker.transfer_outgoing_bytes_total``: to other workers and to the client),
   peak RSS per worker, and whether the two output directories are byte-identical.
2. **Array** (``--array-elements``, default 2.5e8 float32 = 1 GB; 1e9 does not fit next to the other
   jobs of a shared 24 GB machine): ``pp.prune(numpy_array, 0.5)`` in one piece against
   ``pp.prune(dask_array, 0.5)`` on the threaded scheduler and on the 2-worker cluster (blocks
   persisted on the workers first, the result persisted there): the selection (all histogram passes,
   per-pass cost) and the final pruning pass apart, bytes out of the workers, peak RSS per worker,
   bit-identity with the NumPy result; then the bytes of one selection and of the last pass apart,
   with Dask's work stealing on and off.

The page cache is warm (the input is read once before timing). Medians of ``--repeat`` runs.

Run::

    python benchmarks/bench_distributed.py                       # 2 GB checkpoint, 2.5e8 elements
    python benchmarks/bench_distributed.py --ckpt-gb 0.5 --array-elements 5e7 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROWS = COLS = 4096
SHARDS = 8


def build_checkpoint(directory: Path, size_gb: float, seed: int = 0) -> int:
    """A sharded float32 directory of about ``size_gb`` GB, written one shard at a time."""
    from safetensors.numpy import save_file

    directory.mkdir()
    per_tensor = ROWS * COLS * 4
    tensors = max(SHARDS, round(size_gb * 1e9 / per_tensor))
    rng = np.random.default_rng(seed)
    weight_map = {}
    for shard in range(SHARDS):
        names = [f"model.layers.{i}.mlp.proj.weight" for i in range(shard, tensors, SHARDS)]
        fname = f"model-{shard + 1:05d}-of-{SHARDS:05d}.safetensors"
        save_file({n: rng.standard_normal((ROWS, COLS), dtype=np.float32) for n in names}, str(directory / fname),
                  metadata={"format": "pt"})
        weight_map.update({n: fname for n in names})
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": tensors * per_tensor}, "weight_map": weight_map}))
    (directory / "config.json").write_text("{}")
    return tensors * per_tensor


def _warm(directory: Path) -> None:
    for p in directory.iterdir():
        with open(p, "rb") as f:
            while f.read(64 << 20):
                pass


def _identical(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    if names != sorted(p.name for p in b.iterdir()):
        return False
    return all(subprocess.run(["cmp", "-s", str(a / n), str(b / n)]).returncode == 0 for n in names)


SINGLE = """
import json, resource, sys, time
from pruneplug.cli import main
t = time.perf_counter()
code = main(sys.argv[1:])
print(json.dumps({"seconds": time.perf_counter() - t, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "code": code}))
"""


def _cluster(workers: int):
    from distributed import Client, LocalCluster

    t = time.perf_counter()
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                           silence_logs=logging.ERROR)
    client = Client(cluster)
    return cluster, client, time.perf_counter() - t


def _worker_stats(client) -> tuple[int, list[float]]:
    def stats(dask_worker):
        return dask_worker.transfer_outgoing_bytes_total, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    got = client.run(stats)
    return sum(v[0] for v in got.values()), [round(v[1]) for v in got.values()]


def bench_checkpoint(tmp: Path, size_gb: float, repeat: int, scopes: list[str]) -> dict:
    from pruneplug.dask_checkpoint import prune_checkpoint_dask

    src = tmp / "ckpt"
    nbytes = build_checkpoint(src, size_gb)
    _warm(src)
    results: dict = {"checkpoint_bytes": nbytes}
    for scope in scopes:
        single, many = [], []
        for r in range(repeat):
            out = tmp / f"one-{scope}-{r}"
            res = subprocess.run([sys.executable, "-c", SINGLE, "prune", str(src), "-o", str(out), "--sparsity", "0.5",
                                  "--scope", scope, "--quiet"], capture_output=True, text=True, check=True)
            single.append(json.loads(res.stdout.strip().splitlines()[-1]))
        for r in range(repeat):
            cluster, client, startup = _cluster(2)
            try:
                t = time.perf_counter()
                report = prune_checkpoint_dask(src, tmp / f"many-{scope}-{r}", sparsity=0.5, scope=scope, client=client)
                seconds = time.perf_counter() - t
                moved, rss = _worker_stats(client)
            finally:
                client.close()
                cluster.close()
            many.append({"seconds": seconds, "startup": startup, "bytes_out_of_workers": moved, "worker_maxrss_mb": rss,
                         "passes": report.passes})
        results[scope] = {
            "single_seconds": statistics.median(s["seconds"] for s in single),
            "single_maxrss_mb": round(max(s["maxrss_mb"] for s in single)),
            "cluster2_seconds": statistics.median(m["seconds"] for m in many),
            "cluster2_startup_seconds": statistics.median(m["startup"] for m in many),
            "cluster2_bytes_out_of_workers": max(m["bytes_out_of_workers"] for m in many),
            "cluster2_worker_maxrss_mb": many[0]["worker_maxrss_mb"],
            "select_passes": many[0]["passes"],
            "byte_identical": _identical(tmp / f"one-{scope}-0", tmp / f"many-{scope}-0"),
        }
        for r in range(repeat):  # keep the disk use to one scope's outputs
            shutil.rmtree(tmp / f"one-{scope}-{r}")
            shutil.rmtree(tmp / f"many-{scope}-{r}")
    return results


def bench_array(elements: int, repeat: int, chunk: int) -> dict:
    import dask
    import dask.array as da
    from dask.distributed import wait

    import pruneplug as pp

    cluster, client, startup = _cluster(2)
    try:
        # the blocks are made on the workers, as they would be after loading there
        on_workers = da.random.default_rng(1).standard_normal(elements, chunks=chunk, dtype=np.float32).persist()
        wait(on_workers)
        w = on_workers.compute()  # the same values in one piece, for NumPy (outside the timings)
        base_moved, _ = _worker_stats(client)
        runs = []
        for _ in range(repeat):
            t = time.perf_counter()
            lazy = pp.prune(on_workers, 0.5)
            select = time.perf_counter() - t
            result = lazy.persist()
            wait(result)
            runs.append((select, time.perf_counter() - t))
        moved, rss = _worker_stats(client)
        got = result.compute()
    finally:
        client.close()
        cluster.close()
    numpy_times = []
    for _ in range(repeat):
        t = time.perf_counter()
        want = pp.prune(w, 0.5)
        numpy_times.append(time.perf_counter() - t)
    identical_cluster = bool(np.array_equal(got.view(np.uint32), want.view(np.uint32)))
    del got
    x = da.from_array(w, chunks=chunk)
    threads = []
    with dask.config.set(scheduler="threads"):
        for _ in range(repeat):
            t = time.perf_counter()
            lazy = pp.prune(x, 0.5)
            select = time.perf_counter() - t
            got = lazy.compute()
            threads.append((select, time.perf_counter() - t))
    identical_threads = bool(np.array_equal(got.view(np.uint32), want.view(np.uint32)))
    # the passes this data needed: 2 key passes for float32, plus one gathering split ties if any
    # (a benchmark may look inside: pruneplug.dask._score_cut is the selection pp.prune runs)
    from pruneplug.dask import _score_cut

    with dask.config.set(scheduler="threads"):
        passes = _score_cut(x, pp.count_to_prune(0.5, elements), "abs").passes
    return {
        "elements": elements, "chunk": chunk, "blocks": -(-elements // chunk),
        "numpy_one_piece_seconds": statistics.median(numpy_times),
        "dask_threads_select_seconds": statistics.median(s for s, _ in threads),
        "dask_threads_total_seconds": statistics.median(t for _, t in threads),
        "cluster2_select_seconds": statistics.median(s for s, _ in runs),
        "cluster2_total_seconds": statistics.median(t for _, t in runs),
        "cluster2_per_pass_seconds": statistics.median(s for s, _ in runs) / passes,
        "select_passes": passes,
        "cluster2_startup_seconds": startup,
        "cluster2_bytes_out_of_workers_per_run": (moved - base_moved) // repeat,
        "cluster2_worker_maxrss_mb": rss,
        "identical_threads": identical_threads,
        "identical_cluster": identical_cluster,
    }


def bench_array_bytes(elements: int, chunk: int, stealing: bool) -> dict:
    """Bytes out of the workers for one selection and for the last pass apart, with Dask's work
    stealing on or off (stealing may move whole blocks to a less loaded worker)."""
    import dask
    import dask.array as da
    from dask.distributed import wait

    import pruneplug as pp
    from pruneplug.dask import _score_cut  # the selection pp.prune runs, timed apart

    with dask.config.set({"distributed.scheduler.work-stealing": stealing}):
        cluster, client, _ = _cluster(2)
        try:
            x = da.random.default_rng(1).standard_normal(elements, chunks=chunk, dtype=np.float32).persist()
            wait(x)
            m0, _ = _worker_stats(client)
            cut = _score_cut(x, pp.count_to_prune(0.5, elements), "abs")
            m1, _ = _worker_stats(client)
            result = pp.prune(x, 0.5).persist()  # the selection again, then the last pass
            wait(result)
            m2, _ = _worker_stats(client)
        finally:
            client.close()
            cluster.close()
    return {"stealing": stealing, "passes": cut.passes, "bytes_one_selection": m1 - m0,
            "bytes_last_pass": (m2 - m1) - (m1 - m0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt-gb", type=float, default=2.0)
    parser.add_argument("--array-elements", type=float, default=2.5e8)
    parser.add_argument("--chunk", type=float, default=2.5e7, help="Dask block size in elements (default 2.5e7: 100 MB)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip", choices=("checkpoint", "array", "bytes"), action="append", default=[])
    parser.add_argument("--scopes", default="global,layer", help="checkpoint scopes to run (default: global,layer)")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    results = {"loadavg_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        if "checkpoint" not in args.skip:
            results["checkpoint"] = bench_checkpoint(Path(tmp), args.ckpt_gb, args.repeat, args.scopes.split(","))
            print(json.dumps(results["checkpoint"], indent=2), flush=True)
    if "array" not in args.skip:
        results["array"] = bench_array(int(args.array_elements), args.repeat, int(args.chunk))
        print(json.dumps(results["array"], indent=2), flush=True)
    if "bytes" not in args.skip:
        results["array_bytes"] = [bench_array_bytes(int(args.array_elements), int(args.chunk), stealing)
                                  for stealing in (True, False)]
        print(json.dumps(results["array_bytes"], indent=2), flush=True)
    results["loadavg_after"] = os.getloadavg()
    print(f"load average before {results['loadavg_before']}, after {results['loadavg_after']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Checkpoint pruning against the I/O floor, and global pruning against torch.

Default mode (``--io``, what issue 11 asks for): builds LLaMA-shaped safetensors checkpoints
(TinyLlama's shapes, embedding and head untouched) of 1 GB bfloat16 and 2 GB float32 and measures,
in one run on the same file, medians of ``--repeat`` runs:

* ``cat FILE > /dev/null`` (the read floor) and ``dd if=FILE of=COPY bs=16M conv=fsync`` (a
  durable copy);
* ``pruneplug prune FILE --sparsity 0.5`` with ``--scope layer|global``, ``--dry-run`` and written
  (``-o OUT``), each in a fresh process whose start-up (the interpreter, ``import pruneplug``) is
  measured separately and subtracted; peak RSS is the process's own ``VmHWM`` (memory-mapped pages
  touched included), beside the interpreter's;

and prints the ratios (dry runs against the read, written runs against the durable copy) and the
load average. ``--micro`` times the exact-selection hooks on one array against ``np.copyto``.
``--torch`` runs the older comparison with ``torch.nn.utils.prune.global_unstructured``.

Run::

    python benchmarks/bench_checkpoint.py                       # 1 GB bf16 and 2 GB f32, I/O table
    python benchmarks/bench_checkpoint.py --sizes 1:bfloat16 --repeat 5 --json
    python benchmarks/bench_checkpoint.py --issue22 [--cold]   # issue 22's table (0.78 GB bf16), warm or cold
    python benchmarks/bench_checkpoint.py --sizes 1:bfloat16 --scopes global --format sparse-bitmask \
        --compare-pythonpath /tmp/old_site   # a compressed output, against an older pruneplug
    python benchmarks/bench_checkpoint.py --micro               # hook micro-benchmark
    python benchmarks/bench_checkpoint.py --torch --size-gb 1   # against torch
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HIDDEN, FFN, VOCAB = 2048, 5632, 32000  # TinyLlama-1.1B's shapes


def layout(size_gb: float, itemsize: int) -> list[tuple[str, tuple]]:
    per_layer = 4 * HIDDEN * HIDDEN + 3 * HIDDEN * FFN + 2 * HIDDEN
    fixed = 2 * VOCAB * HIDDEN + HIDDEN
    layers = max(1, round((size_gb * 1e9 / itemsize - fixed) / per_layer))
    names = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(layers):
        p = f"model.layers.{i}."
        names += [(p + f"self_attn.{x}_proj.weight", (HIDDEN, HIDDEN)) for x in "qkvo"]
        names += [(p + "mlp.gate_proj.weight", (FFN, HIDDEN)), (p + "mlp.up_proj.weight", (FFN, HIDDEN)),
                  (p + "mlp.down_proj.weight", (HIDDEN, FFN)),
                  (p + "input_layernorm.weight", (HIDDEN,)), (p + "post_attention_layernorm.weight", (HIDDEN,))]
    names += [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]
    return names


def build(path: Path, size_gb: float, dtype_name: str, seed: int = 0) -> dict:
    """Write the checkpoint one tensor at a time (bounded memory); return facts about it."""
    from pruneplug import checkpoint as ck

    dtype = np.dtype(dtype_name) if dtype_name != "bfloat16" else np.dtype(__import__("ml_dtypes").bfloat16)
    st_dtype = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}[dtype_name]
    entries = [(n, st_dtype, s, int(np.prod(s)) * dtype.itemsize) for n, s in layout(size_gb, dtype.itemsize)]
    rng = np.random.default_rng(seed)
    writer = ck.SafetensorsWriter(path, {"format": "pt", "bench": "synthetic"}, entries)
    for name, _, shape, _ in entries:
        scale = 0.02 if len(shape) == 2 else 1.0
        writer.write(name, (rng.standard_normal(shape, dtype=np.float32) * scale).astype(dtype))
    writer.close()
    selected = [e for e in entries if len(e[2]) == 2 and "embed" not in e[0] and "lm_head" not in e[0]]
    return {"bytes": path.stat().st_size, "tensors": len(entries), "largest_tensor_bytes": max(e[3] for e in entries),
            "largest_selected_bytes": max(e[3] for e in selected), "selected_params": sum(e[3] // dtype.itemsize for e in selected)}


# ---------------------------------------------------------------------------------------------
# the measured runs (child processes)
# ---------------------------------------------------------------------------------------------
def _rss_mb() -> float:
    """Peak RSS of this process so far, MiB. VmHWM, not ru_maxrss: Linux carries ru_maxrss across
    exec, so a child would report its parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child_pruneplug(src: str, dst: str, sparsity: float, backend: str | None) -> dict:
    import pruneplug as pp

    base = _rss_mb()
    t0 = time.perf_counter()
    report = pp.prune_checkpoint(src, dst, sparsity=sparsity, scope="global", backend=backend)
    seconds = time.perf_counter() - t0
    tot = report.totals()
    return {"seconds": seconds, "peak_rss_mb": _rss_mb(), "baseline_rss_mb": base, "pruned": tot["parameters_pruned"],
            "selected": tot["parameters_selected"], "passes": report.passes, "threshold": report.threshold,
            "backend": backend or "auto"}


def child_torch(src: str, dst: str, sparsity: float) -> dict:
    import torch
    import torch.nn.utils.prune as prune
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(os.cpu_count() or 1)
    base = _rss_mb()
    t0 = time.perf_counter()
    state = load_file(src)
    holders, params = [], []
    for name, tensor in state.items():
        if tensor.ndim == 2 and "embed" not in name and "lm_head" not in name:
            holder = torch.nn.Module()
            holder.weight = torch.nn.Parameter(tensor, requires_grad=False)
            holders.append((name, holder))
            params.append((holder, "weight"))
    t1 = time.perf_counter()
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=sparsity)
    t2 = time.perf_counter()
    pruned = 0
    for name, holder in holders:
        pruned += int((holder.weight_mask == 0).sum())
        prune.remove(holder, "weight")
        state[name] = holder.weight.data
    save_file(state, dst, metadata={"format": "pt"})
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "prune_seconds": t2 - t1, "peak_rss_mb": _rss_mb(), "baseline_rss_mb": base,
            "pruned": pruned, "torch": torch.__version__}


def spawn(kind: str, *args: str) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1],
                "exit": proc.returncode}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(source: str, ours: str, theirs: str, threshold: float | None) -> dict:
    """Where the two pruned checkpoints disagree on which weights are zero, and how many of those
    are not ties at the threshold (torch's topk breaks ties arbitrarily; anything else is a bug)."""
    from pruneplug import checkpoint as ck

    s, a, b = ck.open_checkpoint(source), ck.open_checkpoint(ours), ck.open_checkpoint(theirs)
    differ = off = 0
    for name, ref in a.tensors.items():
        if ref.prunable and len(ref.shape) == 2:
            for w, x, y in zip(s.tensors[name].chunks(), ref.chunks(), b.tensors[name].chunks()):
                bad = (x == 0) != (y == 0)
                differ += int(np.count_nonzero(bad))
                if threshold is not None:
                    off += int(np.count_nonzero(bad & (np.abs(w.astype(np.float64)) != threshold)))
    return {"zero_pattern_mismatches": differ, "mismatches_not_at_threshold": off}


def main() -> None:
    if sys.argv[1:3] == ["--child", "cli"]:  # the CLI's own options follow: not ours to parse
        print(json.dumps(child_cli(sys.argv[3:])))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1:bfloat16,2:float32", help="I/O mode: GB:dtype,... (default 1:bfloat16,2:float32)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement, the median is reported")
    ap.add_argument("--micro", action="store_true", help="micro-benchmark of the selection hooks")
    ap.add_argument("--micro-n", type=int, default=100_000_000)
    ap.add_argument("--torch", action="store_true", help="the comparison with torch's global_unstructured")
    ap.add_argument("--size-gb", type=float, default=2.0, help="--torch: checkpoint size for pruneplug (default 2)")
    ap.add_argument("--torch-size-gb", type=float, default=None,
                    help="--torch: checkpoint size for the torch comparison (default: the same; 0 skips torch)")
    ap.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--backend", default=None, help="pruneplug backend (default: auto)")
    ap.add_argument("--format", default=None, help="I/O mode: --format of the pruned output (default: dense); "
                    "sparse-bitmask writes in file order, with each tensor's share of the global ties counted first")
    ap.add_argument("--scopes", default="layer,global", help="I/O mode: the scopes to run (default: layer,global)")
    ap.add_argument("--dir", default=None, help="where to write the checkpoints (default: a temporary directory)")
    ap.add_argument("--cold", action="store_true",
                    help="I/O mode: evict the input checkpoint from the page cache before every timed run "
                    "(posix_fadvise DONTNEED on that file only: other users' caches are left alone)")
    ap.add_argument("--issue22", action="store_true",
                    help="I/O mode, the table of issue 22: --sizes 0.78:bfloat16 (TinyLlama-1.1B's shapes, 5 layers), "
                    "both scopes, dry and written, against cat and dd conv=fsync in the same run")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--compare-pythonpath", default=None,
                    help="I/O mode: also run the CLI of another pruneplug found on this PYTHONPATH (an older commit)")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "pruneplug":
            result = child_pruneplug(rest[0], rest[1], float(rest[2]), rest[3] if len(rest) > 3 and rest[3] != "auto" else None)
        else:
            result = child_torch(rest[0], rest[1], float(rest[2]))
        print(json.dumps(result))
        return
    if args.micro:
        results = micro(args.micro_n, args.repeat)
        print(json.dumps(results, indent=2)) if args.json else _print_micro(results)
        return
    if args.torch:
        results = torch_comparison(args)
        print(json.dumps(results, indent=2)) if args.json else _print(results)
        return
    if args.issue22:
        args.sizes, args.scopes = "0.78:bfloat16", "layer,global"
    results = io_comparison(args)
    print(json.dumps(results, indent=2)) if args.json else _print_io(results)


# ---------------------------------------------------------------------------------------------
# I/O mode: the CLI against cat and dd
# ---------------------------------------------------------------------------------------------
def child_cli(argv: list[str]) -> dict:
    """Run ``pruneplug ARGV`` in this process (``startup``: only import it); report the exit code
    and this process's peak RSS (VmHWM: this exec's own, not the parent's)."""
    from pruneplug import cli

    code = 0 if argv == ["startup"] else cli.main(argv)
    return {"exit": code, "peak_rss_mb": _rss_mb()}


def _timed(cmd: list[str] | str, shell: bool = False, env: dict | None = None) -> tuple[float, dict | None]:
    t0 = time.perf_counter()
    cwd = tempfile.gettempdir() if env is not None else None  # not this checkout: it would shadow PYTHONPATH
    proc = subprocess.run(cmd, shell=shell, capture_output=True, text=True, env=env, cwd=cwd)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    out = proc.stdout.strip().splitlines()
    info = json.loads(out[-1]) if out and out[-1].startswith("{") else None
    return seconds, info


def _median(values: list[float]) -> float:
    return float(np.median(values))


def _evict(path: Path) -> None:
    """Drop one file's pages from the page cache (written back first): a cold read of it, without
    touching the rest of the cache (``drop_caches`` would slow every other user of the machine)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())


def io_comparison(args: argparse.Namespace) -> dict:
    results: dict = {"cpus": os.cpu_count(), "sparsity": args.sparsity, "repeat": args.repeat, "format": args.format or "dense",
                     "loadavg_before": os.getloadavg(), "uptime_before": _uptime(), "cold": args.cold, "sizes": []}
    cli = [sys.executable, __file__, "--child", "cli"]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        for spec in args.sizes.split(","):
            gb, dtype = spec.split(":")
            src, out, copy = tmp / f"model_{dtype}.safetensors", tmp / "out.safetensors", tmp / "copy.safetensors"
            facts = build(src, float(gb), dtype)
            row: dict = {"dtype": dtype, "checkpoint": facts, "runs": {}}
            _timed(f"cat {src} > /dev/null", shell=True)  # warm the page cache once
            cases = {
                "cat": lambda: _timed(f"cat {src} > /dev/null", shell=True),
                "dd_fsync": lambda: _timed(f"dd if={src} of={copy} bs=16M conv=fsync status=none", shell=True),
                "startup": lambda: _timed(cli + ["startup"]),
            }
            for scope in args.scopes.split(","):
                base = ["prune", str(src), "--sparsity", str(args.sparsity), "--scope", scope, "--progress", "never",
                        "--quiet"] + (["--backend", args.backend] if args.backend else []) \
                    + (["--format", args.format] if args.format else [])
                cases[f"{scope}_dry"] = lambda base=base: _timed(cli + base + ["--dry-run"])
                cases[f"{scope}_written"] = lambda base=base: _timed(cli + base + ["-o", str(out)])
                if args.compare_pythonpath:  # the same command run by the other pruneplug, from another directory
                    env = dict(os.environ, PYTHONPATH=args.compare_pythonpath)
                    other = [sys.executable, "-c", "import sys, runpy; sys.argv = sys.argv[1:]; "
                             f"runpy.run_path({__file__!r}, run_name='__main__')", "bench", "--child", "cli"]
                    cases[f"other_{scope}_dry"] = lambda base=base, env=env, other=other: _timed(
                        other + base + ["--dry-run"], env=env)
                    cases[f"other_{scope}_written"] = lambda base=base, env=env, other=other: _timed(
                        other + base + ["-o", str(out)], env=env)
            times: dict = {name: [] for name in cases}
            rss: dict = {name: [] for name in cases}
            for _ in range(args.repeat):  # round by round, so that a change of load hits every case alike
                for name, run in cases.items():
                    if args.cold:
                        _evict(src)
                    seconds, info = run()
                    times[name].append(seconds)
                    if info:
                        rss[name].append(info["peak_rss_mb"])
                    for p in (out, copy):
                        p.unlink(missing_ok=True)
            for name in cases:
                row["runs"][name] = {"seconds": _median(times[name]), "all": [round(t, 3) for t in times[name]],
                                     "peak_rss_mb": max(rss[name]) if rss[name] else None}
            r, start = row["runs"], row["runs"]["startup"]["seconds"]
            for name in [n for n in r if n.endswith(("_dry", "_written"))]:
                r[name]["net_seconds"] = r[name]["seconds"] - start
                floor = r["cat"]["seconds"] if name.endswith("dry") else r["dd_fsync"]["seconds"]
                r[name]["ratio"] = r[name]["net_seconds"] / floor
            results["sizes"].append(row)
            src.unlink()
    results["loadavg_after"] = os.getloadavg()
    results["uptime_after"] = _uptime()
    return results


TARGETS = {"layer_dry": 3.0, "global_dry": 4.0, "layer_written": 1.5, "global_written": 2.0}


def _print_io(r: dict) -> None:
    print(f"{r['cpus']} CPUs, sparsity {r['sparsity']}, format {r.get('format', 'dense')}, median of {r['repeat']}; load average before "
          f"{'/'.join(f'{x:.1f}' for x in r['loadavg_before'])}, after {'/'.join(f'{x:.1f}' for x in r['loadavg_after'])}"
          f"{'; COLD: the input evicted from the page cache before every run' if r.get('cold') else '; warm page cache'}")
    if "uptime_before" in r:
        print(f"uptime before: {r['uptime_before']}\nuptime after:  {r['uptime_after']}")
    for row in r["sizes"]:
        c, runs = row["checkpoint"], row["runs"]
        print(f"\n{c['bytes'] / 1e9:.2f} GB {row['dtype']}, {c['tensors']} tensors, largest {c['largest_tensor_bytes'] / 2**20:.0f} MiB "
              f"(selected: {c['largest_selected_bytes'] / 2**20:.0f} MiB)")
        print(f"{'what':<34} {'seconds':>8} {'net':>7} {'ratio':>7} {'target':>7} {'peak RSS':>9}")
        start = runs["startup"]
        print(f"{'cat FILE > /dev/null':<34} {runs['cat']['seconds']:8.3f} {'':>7} {'1':>7}   runs {runs['cat']['all']}")
        print(f"{'dd bs=16M conv=fsync':<34} {runs['dd_fsync']['seconds']:8.3f} {'':>7} {'1':>7}   runs {runs['dd_fsync']['all']}")
        print(f"{'interpreter start-up':<34} {start['seconds']:8.3f} {'':>7} {'':>7} {'':>7} {start['peak_rss_mb']:7.0f} MB")
        for prefix, who in (("", ""), ("other_", "other: ")):
            for name, label in (("layer_dry", "prune --dry-run (layer)"), ("global_dry", "prune --dry-run --scope global"),
                                ("layer_written", "prune -o OUT (layer)"), ("global_written", "prune -o OUT --scope global")):
                x = runs.get(prefix + name)
                if x is None:
                    continue
                print(f"{who + label:<34} {x['seconds']:8.3f} {x['net_seconds']:7.3f} {x['ratio']:6.2f}x "
                      f"{TARGETS[name]:6.1f}x {x['peak_rss_mb']:7.0f} MB   runs {x['all']}")


# ---------------------------------------------------------------------------------------------
# micro-benchmark: the selection hooks against the copy floor
# ---------------------------------------------------------------------------------------------
def micro(n: int, repeat: int) -> dict:
    import ml_dtypes

    from pruneplug.selection import ExactSelection, chunk_histogram, prune_part

    rng = np.random.default_rng(0)
    results = {"n": n, "loadavg": os.getloadavg(), "cases": {}}
    def best(fn) -> float:
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return _median(times)

    for dtype in (np.dtype(ml_dtypes.bfloat16), np.dtype(np.float32)):
        x = (rng.standard_normal(n, dtype=np.float32) * 0.02).astype(dtype)
        buf = np.empty_like(x)

        copy = best(lambda: np.copyto(buf, x))
        sel = ExactSelection(n // 2, n, [dtype.name], "abs")
        rows = {"np.copyto": copy}
        while (req := sel.next_request()) is not None:
            rows[f"key_histogram pass {sel.passes + 1} ({req.bits} bits)"] = best(
                lambda req=req: chunk_histogram(x, "abs", req, backend="cpu"))
            sel.update(chunk_histogram(x, "abs", req, backend="cpu"))
        quota = sel.k - sel.below
        rows["prune_below_key, count only"] = best(lambda: prune_part(x, "abs", sel, quota, backend="cpu"))
        rows["prune_below_key into a buffer"] = best(lambda: prune_part(x, "abs", sel, quota, out=buf, backend="cpu"))
        import pruneplug as pp

        rows["pp.prune (copy + in place, for reference)"] = best(lambda: pp.prune(x, sparsity=0.5))
        results["cases"][dtype.name] = {k: {"seconds": v, "x_copy": v / copy} for k, v in rows.items()}
    # float16 weights under float32 keys (a global select over float16 and float32 tensors)
    x = (rng.standard_normal(n, dtype=np.float32) * 0.02).astype(np.float16)
    buf = np.empty_like(x)
    copy = best(lambda: np.copyto(buf, x))
    sel = ExactSelection(n // 2, n, ["float16", "float32"], "abs")
    while (req := sel.next_request()) is not None:
        sel.update(chunk_histogram(x, "abs", req, backend="cpu"))
    quota = sel.k - sel.below
    rows = {"np.copyto": copy,
            "prune_below_key into a buffer, float32 keys": best(lambda: prune_part(x, "abs", sel, quota, out=buf, backend="cpu"))}
    results["cases"]["float16 (float32 keys)"] = {k: {"seconds": v, "x_copy": v / copy} for k, v in rows.items()}
    return results


def _print_micro(r: dict) -> None:
    print(f"n = {r['n']:,}, median of runs, load average {'/'.join(f'{x:.1f}' for x in r['loadavg'])}")
    for dtype, rows in r["cases"].items():
        print(f"\n{dtype}")
        for name, v in rows.items():
            print(f"  {name:<44} {1000 * v['seconds']:9.1f} ms  {v['x_copy']:5.2f}x copy")


# ---------------------------------------------------------------------------------------------
# torch mode
# ---------------------------------------------------------------------------------------------
def torch_comparison(args: argparse.Namespace) -> dict:
    torch_gb = args.size_gb if args.torch_size_gb is None else args.torch_size_gb
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        results: dict = {"dtype": args.dtype, "sparsity": args.sparsity, "cpus": os.cpu_count()}
        src = tmp / "model.safetensors"
        t0 = time.perf_counter()
        results["checkpoint"] = build(src, args.size_gb, args.dtype)
        results["checkpoint"]["build_seconds"] = round(time.perf_counter() - t0, 1)
        results["pruneplug"] = spawn("pruneplug", str(src), str(tmp / "pp.safetensors"), str(args.sparsity), args.backend or "auto")
        if torch_gb > 0:
            try:
                import torch  # noqa: F401
            except ImportError:
                results["torch"] = {"error": "torch is not installed"}
            else:
                if torch_gb != args.size_gb:
                    tsrc = tmp / "model_torch.safetensors"
                    results["torch_checkpoint"] = build(tsrc, torch_gb, args.dtype)
                    results["pruneplug_at_torch_size"] = spawn("pruneplug", str(tsrc), str(tmp / "pp_t.safetensors"),
                                                               str(args.sparsity), args.backend or "auto")
                    ours, run = tmp / "pp_t.safetensors", results["pruneplug_at_torch_size"]
                else:
                    tsrc, ours, run = src, tmp / "pp.safetensors", results["pruneplug"]
                results["torch"] = spawn("torch", str(tsrc), str(tmp / "torch.safetensors"), str(args.sparsity))
                if "error" not in results["torch"] and "error" not in run:
                    results["torch"].update(compare(str(tsrc), str(ours), str(tmp / "torch.safetensors"),
                                                    run["threshold"]))
    return results


def _print(r: dict) -> None:
    c = r["checkpoint"]
    mb = lambda b: b / 2**20  # noqa: E731
    print(f"checkpoint: {c['bytes'] / 1e9:.2f} GB {r['dtype']}, {c['tensors']} tensors, {c['selected_params']:,} selected "
          f"parameters; largest tensor {mb(c['largest_tensor_bytes']):.0f} MiB, largest selected {mb(c['largest_selected_bytes']):.0f} MiB; "
          f"{r['cpus']} CPUs")

    def line(label: str, run: dict, ckpt: dict) -> None:
        if "error" in run:
            print(f"{label:<26} failed: {run['error']}")
            return
        extra = run["peak_rss_mb"] - run["baseline_rss_mb"]
        print(f"{label:<26} {run['seconds']:7.1f} s   peak RSS {run['peak_rss_mb']:8.0f} MiB (+{extra:.0f} over the "
              f"{run['baseline_rss_mb']:.0f} MiB interpreter) = {extra / mb(ckpt['largest_tensor_bytes']):.2f}x largest tensor, "
              f"{extra / mb(ckpt['bytes']):.2f}x checkpoint; pruned {run['pruned']:,}")

    line(f"pruneplug ({r['pruneplug'].get('backend', '?')}, global)", r["pruneplug"], c)
    if "pruneplug_at_torch_size" in r:
        print(f"at the torch size: {r['torch_checkpoint']['bytes'] / 1e9:.2f} GB")
        line("pruneplug (same size)", r["pruneplug_at_torch_size"], r["torch_checkpoint"])
    if "torch" in r:
        line("torch global_unstructured", r["torch"], r.get("torch_checkpoint", c))
        if "zero_pattern_mismatches" in r["torch"]:
            print(f"torch prune step alone {r['torch']['prune_seconds']:.1f} s; zero patterns differ at "
                  f"{r['torch']['zero_pattern_mismatches']:,} positions, "
                  f"{r['torch']['mismatches_not_at_threshold']:,} of them not ties at the threshold")


if __name__ == "__main__":
    main()

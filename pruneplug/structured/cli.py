"""``pruneplug shrink``: parses the options, runs :func:`~pruneplug.structured.shrink_model_dir`,
prints the summary (added to the CLI beside ``prune`` by :mod:`pruneplug.checkpoint.cli`)."""

from __future__ import annotations

import argparse

SHRINK_EPILOG = """\
units: --mlp removes that fraction of every block's MLP neurons; --heads that fraction of the query
heads of every KV group (GQA; of all heads for multi-head attention); --kv-heads that fraction of
the KV groups of every block (GQA only: each group with its k/v rows and all its query heads; a
group's score is the sum of its query heads'; with --heads too, --heads applies to the groups that
stay); --drop-blocks N whole blocks (never the first or last); --experts that fraction of every MoE
block's routed experts (Mixtral, Qwen2-MoE, Qwen3-MoE: router rows and expert weights, the rest
renumbered; shared experts stay). Every block keeps the same widths, so config.json describes the
result.
criteria (--method for neurons/heads, --block-method for blocks, --expert-method for experts):
magnitude (weights only), activation (Minitron), flap (FLAP fluctuation); block_influence
(ShortGPT), angular (Gromov et al.); reap (REAP: router weight x expert output norm), frequency.
compensation (--compensate): bias (FLAP: the removed channels' mean into a bias), refit (least
squares of the next projection; for dropped blocks a linear map folded into the block before).
examples:
  pruneplug shrink SmolLM2-135M -o smol-small --mlp 0.25 --calibration texts.txt
  pruneplug shrink SmolLM2-135M -o smol-22 --drop-blocks 8 --calibration texts.txt --report r.json
  pruneplug shrink SmolLM2-135M -o smol-h --heads 0.3333 --method magnitude
  pruneplug shrink Qwen1.5-MoE-A2.7B -o qwen-moe-45 --experts 0.25 --calibration texts.txt
  pruneplug shrink Llama-3.2-1B -o llama-kv --kv-heads 0.25 --calibration texts.txt
  pruneplug shrink SmolLM2-135M -o smol-r --mlp 0.25 --calibration texts.txt --reconstruct 20 --reconstruct-lr 5e-4
"""


def add_command(subparsers) -> None:
    p = subparsers.add_parser(
        "shrink", help="structured pruning: remove MLP neurons, attention heads, MoE experts and blocks, write a "
        "smaller model",
        description="Write a smaller Hugging Face model directory: MLP neurons, attention heads, routed MoE experts "
        "and whole blocks removed, config.json updated, block by block (the model is never loaded whole), atomically.",
        epilog=SHRINK_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", metavar="MODEL_DIR", help="a Hugging Face model directory (config.json, safetensors)")
    p.add_argument("-o", "--output", metavar="OUT_DIR", help="the new, smaller model directory (must not exist)")
    p.add_argument("--mlp", type=float, default=0.0, metavar="FRACTION", help="fraction of MLP neurons to remove")
    p.add_argument("--heads", type=float, default=0.0, metavar="FRACTION",
                   help="fraction of query heads to remove from every KV group")
    p.add_argument("--kv-heads", type=float, default=0.0, metavar="FRACTION",
                   help="fraction of KV groups (k/v heads with all their query heads) to remove from every block")
    p.add_argument("--drop-blocks", type=int, default=0, metavar="N", help="whole blocks to remove")
    p.add_argument("--experts", type=float, default=None, metavar="FRACTION",
                   help="fraction of the routed experts to remove from every MoE block (at least "
                   "num_experts_per_tok must stay)")
    p.add_argument("--method", default="activation", help="criterion of neurons and heads (default: activation)")
    p.add_argument("--block-method", default="block_influence", help="criterion of blocks (default: block_influence)")
    p.add_argument("--expert-method", default="reap", help="criterion of MoE experts (default: reap)")
    p.add_argument("--calibration", metavar="TEXTS", help="calibration texts (one per line, or .jsonl); not a "
                   "statistics file: shrink measures its own statistics in one pass over the texts")
    p.add_argument("--compensate", choices=("none", "bias", "refit"), default="none",
                   help="fold the removed units' mean into a bias (FLAP) or refit the next layer (least squares)")
    p.add_argument("--damping", type=float, default=0.01, help="refit: damping, relative to the mean diagonal")
    p.add_argument("--device", default="cpu", help="where blocks are computed (default: cpu)")
    p.add_argument("--report", metavar="REPORT.json", help="write the report as JSON")
    p.add_argument("--dry-run", action="store_true", help="decide and report, write nothing")
    p.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                   help="progress bar on stderr: auto (only on a terminal, default), always, never")
    from pruneplug import calibration_cli

    calibration_cli.add_calibration_options(p)  # --samples, --seq-len, --batch-size
    calibration_cli.add_reconstruct_options(p, steps_help=(  # --reconstruct STEPS, --reconstruct-lr, ... as prune's
        "after cutting each block, re-fit its remaining Linear weights to the dense block's outputs with STEPS Adam "
        "steps, before the next block is measured (default 0: off; needs --calibration)"))
    p.set_defaults(handler=run_shrink)


def run_shrink(args: argparse.Namespace) -> int:
    from pruneplug.calibration_cli import reconstruct_settings
    from pruneplug.console import EXIT_USAGE, error, progress_for
    from pruneplug.structured.directory import shrink_model_dir
    from pruneplug.structured.plan import ShrinkRequest

    if args.output is None:
        error("shrink", "give -o OUT_DIR")
        return EXIT_USAGE
    request = ShrinkRequest(mlp=args.mlp, heads=args.heads, kv_heads=args.kv_heads, drop_blocks=args.drop_blocks,
                            experts=args.experts, method=args.method, block_method=args.block_method,
                            expert_method=args.expert_method, compensate=args.compensate, damping=args.damping)
    report = shrink_model_dir(args.input, args.output, request, args.calibration, samples=args.samples,
                              seq_len=args.seq_len, batch_size=args.batch_size, device=args.device,
                              report=args.report, dry_run=args.dry_run, progress=progress_for(args),
                              reconstruct=reconstruct_settings(args))
    print(report.summary())
    if report.block_scores is not None:
        print(f"{report.block_method} per block: " + ", ".join(f"{v:.3f}" for v in report.block_scores))
    if report.reconstruction_losses:
        print("re-fit per block (loss before -> after): " + ", ".join(
            f"{i}: {v['before']:.4g} -> {v['after']:.4g}" for i, v in report.reconstruction_losses.items()))
    where = "dry run: nothing written" if args.dry_run else f"wrote {args.output}"
    print(f"{where}{' (report ' + args.report + ')' if args.report else ''} in {report.seconds:.1f} s")
    return 0

"""``pruneplug prune`` and ``pruneplug inspect``: the checkpoint commands, added to the CLI by
:func:`add_commands`. The work is :func:`pruneplug.checkpoint.prune_checkpoint` and
:func:`~pruneplug.checkpoint.inspect_checkpoint`; this module parses options, draws the progress
bar and prints the summary.
"""

from __future__ import annotations

import argparse
import json
import os
import textwrap

from pruneplug.checkpoint import (
    FORMATS,
    SELECTION_RULE,
    check_plot_path,
    inspect_checkpoint,
    plot_inspection,
    prune_checkpoint,
)
from pruneplug.console import EXIT_USAGE, error, progress_for, warn


# ---------------------------------------------------------------------------------------------
# prune
# ---------------------------------------------------------------------------------------------
PRUNE_EPILOG = f"""\
{textwrap.fill("which tensors: " + SELECTION_RULE, 96, break_on_hyphens=False)}

scope: 'layer' prunes each selected tensor to the sparsity; 'global' prunes exactly
round(sparsity * total) weights over all selected tensors by one magnitude order (ties: tensors
in sorted-name order, then flat index), in memory bounded by the largest tensor.

examples:
  pruneplug prune model.safetensors -o pruned.safetensors --sparsity 0.5 --scope global
  pruneplug prune llama-dir/ -o llama-24/ --pattern 2:4 --format sparse-24-bitmask --report r.json
  pruneplug prune model.safetensors --in-place --sparsity 0.3 --exclude 'layers\\.0\\.'
"""


def _add_prune(subparsers) -> None:
    p = subparsers.add_parser(
        "prune", help="prune a checkpoint (safetensors file, sharded or model directory, or .npz)",
        description="Prune a checkpoint and write it in the same form, atomically: by weight magnitude, or by a "
        "calibrated criterion with a statistics file (streamed tensor by tensor), or, for a Hugging Face model "
        "directory with calibration texts, block by block from the checkpoint to OUT_DIR in the memory of one "
        "block (resumable with --resume; docs/calibration.md).",
        epilog=PRUNE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", metavar="IN", help="a .safetensors file, a directory with model.safetensors.index.json, a model directory "
                   "(model.safetensors, config.json, tokenizer files), or an .npz")
    p.add_argument("-o", "--output", metavar="OUT", help="output path, same form as IN (a directory for a directory IN)")
    p.add_argument("--sparsity", type=float, help="fraction of weights to prune, in [0, 1] (not with N:M)")
    p.add_argument("--scope", choices=("layer", "global"), default="layer", help="per tensor or across all selected tensors (default: layer)")
    p.add_argument("--method", default="l1", help="importance criterion: l1 (|w|, default), l2 (w*w), wanda "
                   "(|w| * input norm, needs --calibration), sparsegpt (SparseGPT with its weight update, needs --calibration "
                   "with Hessians: `pruneplug calibrate --hessian` or texts) or a criterion plugin's name")
    p.add_argument("--calibration", metavar="STATS|TEXTS", help="for calibrated methods (wanda, sparsegpt, OWL): a "
                   "statistics file from `pruneplug calibrate` (IN any checkpoint, streamed), or calibration texts "
                   "(IN a Hugging Face model directory, OUT a new directory: the one-step form, block by block); told "
                   "apart by content, not by name")
    p.add_argument("--groups", choices=("layer", "row"), help="unstructured comparison group: the whole tensor or "
                   "each output row (default: the method's own: row for wanda, layer otherwise)")
    p.add_argument("--layer-ratios", choices=("uniform", "owl"), default="uniform", help="per-layer sparsities: "
                   "uniform (default) or owl (outlier-weighted: lower sparsity where activation outliers are, the total "
                   "exact; needs --calibration; docs/sparsegpt.md)")
    p.add_argument("--owl-m", type=float, default=5.0, help="OWL: an outlier is a score above M x its block's mean "
                   "(default: 5)")
    p.add_argument("--owl-lambda", type=float, default=0.08, help="OWL: per-layer sparsities span 2 x lambda around "
                   "the target (default: 0.08)")
    p.add_argument("--max-layer-sparsity", type=float, help="no tensor loses more than this fraction, a number in "
                   "[0, 1] (default: 0.99 with --scope global, so that no layer is removed whole; 1.0 otherwise). "
                   "It applies to --scope global and --layer-ratios owl; below 1 with uniform layer scope it is refused")
    p.add_argument("--pattern", default="unstructured",
                   help="'unstructured' (default), 'N:M' such as 2:4, 'row', 'column' or 'block(H,W)'")
    p.add_argument("--axis", type=int, default=-1, help="N:M group axis (default: -1, the input dimension of [out, in])")
    p.add_argument("--format", choices=FORMATS, default="dense",
                   help="how pruned weights are stored: dense (default) or a compressed-tensors format")
    p.add_argument("--include", action="append", metavar="REGEX", help="prune tensors whose name matches (repeatable; replaces the default rule)")
    p.add_argument("--exclude", action="append", metavar="REGEX", help="never prune tensors whose name matches (repeatable)")
    p.add_argument("--backend", default="auto", help="auto (default), cpu, cuda, numpy or a plugin's backend name")
    p.add_argument("--masks-out", metavar="MASKS.safetensors", help="also write the keep-masks (bool) of the pruned tensors")
    p.add_argument("--report", metavar="REPORT.json", help="write the summary as JSON")
    p.add_argument("--warn-sparsity", type=float, default=0.95, metavar="FRACTION",
                   help="warn (even with --quiet) and flag in the report each pruned tensor at least this "
                   "sparse after pruning: the layer is (nearly) removed (default: 0.95)")
    p.add_argument("--dry-run", action="store_true", help="compute and report everything, write no checkpoint")
    p.add_argument("--strict", action="store_true", help="a selected tensor the pattern does not fit is an error, not a skip")
    p.add_argument("--in-place", action="store_true", help="allow OUT to be IN (or omit -o): replace the input atomically")
    p.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                   help="progress bar on stderr: auto (only on a terminal, default), always, never")
    p.add_argument("--quiet", action="store_true", help="print only the totals, not the per-tensor table (and no "
                   "progress bar unless --progress always)")
    p.add_argument("--all", action="store_true", help="list untouched tensors in the table too")
    from pruneplug import calibration_cli

    calibration_cli.add_calibration_options(p)  # --samples, --seq-len, --batch-size (with --calibration TEXTS)
    calibration_cli.add_stream_options(p)  # --device, --dtype, --calibration-mode, --resume, ... (one-step form)
    p.add_argument("--dask", metavar="ADDRESS", help="prune a sharded directory on the Dask cluster at ADDRESS "
                   "(tcp://host:8786); workers read and write whole shards on a shared file system")
    p.add_argument("--workers", type=int, metavar="N", help="prune a sharded directory on a local Dask cluster of N "
                   "processes (N >= 1)")
    p.set_defaults(handler=run_prune)


def run_prune(args: argparse.Namespace) -> int:
    if args.output is None and not args.in_place and not args.dry_run:
        error("prune", "give -o OUT, or --in-place to overwrite IN, or --dry-run")
        return EXIT_USAGE
    pattern = args.pattern
    sparsity = args.sparsity
    if sparsity is None and ":" not in pattern:
        error("prune", f"--pattern {pattern} needs --sparsity")
        return EXIT_USAGE
    from pruneplug import calibration_cli

    if args.dask is not None or args.workers is not None:  # --workers 0 is refused there, not "no cluster"
        from pruneplug.dask_checkpoint import prune_from_args

        report = prune_from_args(args)
    elif calibration_cli.is_texts(args.calibration):
        report = calibration_cli.prune_model_dir(args, progress_for(args))
    elif calibration_cli.stream_only_options(args):
        error("prune", f"{calibration_cli.stream_only_options(args)} applies to the one-step form (--calibration "
              "TEXTS with a model directory)")
        return EXIT_USAGE
    else:
        report = prune_checkpoint(
            args.input, args.output, sparsity=sparsity, pattern=pattern, scope=args.scope, method=args.method,
            axis=args.axis, format=args.format, include=args.include, exclude=args.exclude,
            backend=None if args.backend == "auto" else args.backend, masks_out=args.masks_out,
            report=args.report, dry_run=args.dry_run, strict=args.strict, in_place=args.in_place,
            progress=progress_for(args), warn_sparsity=args.warn_sparsity, calibration=args.calibration,
            groups=args.groups, layer_ratios=args.layer_ratios, owl_m=args.owl_m, owl_lambda=args.owl_lambda,
            max_layer_sparsity=args.max_layer_sparsity,
        )
    print(report.format_totals() if args.quiet else report.format_table(show_kept=args.all))
    if args.format != "dense" and report.output is not None and os.path.isfile(report.output):
        warn("prune", f"{report.output} is a bare .safetensors file in --format {args.format}: no config.json tells "
             f"loaders to decompress it, so it is marked format={args.format} and transformers refuses it rather "
             "than load it as dense; prune the model directory instead to get a loadable model")
    if report.warning():
        warn("prune", report.warning() + " (--warn-sparsity)")
    where = "dry run: nothing written" if report.dry_run else f"wrote {report.output}"
    extras = [x for x in (report.masks_out and f"masks {report.masks_out}", args.report and f"report {args.report}") if x]
    print(f"{where}{' (' + ', '.join(extras) + ')' if extras else ''} in {report.seconds:.1f} s")
    return 0


# ---------------------------------------------------------------------------------------------
# inspect
# ---------------------------------------------------------------------------------------------
def _add_inspect(subparsers) -> None:
    p = subparsers.add_parser(
        "inspect", help="per-tensor shape, dtype, sparsity, N:M structure and magnitude quantiles",
        description="Inspect a checkpoint: per tensor shape, dtype, sparsity (exact zeros), whether it is "
        "2:4 along the last axis and the tightest N:M for M = 4, 8, 16, and |w| quantiles "
        "(min, 1%, 50%, 99%, max in the table; 0, 1, 25, 50, 75, 99, 100% in --json). Weights stored in "
        "a compressed-tensors format (sparse-bitmask, sparse-24-bitmask) are decompressed and shown as "
        "the weights they are.",
        epilog=f"which tensors the histogram and threshold use: {SELECTION_RULE}")
    p.add_argument("input", metavar="IN", help="a .safetensors file, a sharded or model directory, or an .npz")
    p.add_argument("--plot", metavar="FILE.png", help="draw per-tensor sparsity and a |w| histogram with the "
                   "pruning threshold (needs matplotlib: pip install 'pruneplug[plot]')")
    p.add_argument("--threshold-sparsity", type=float, default=0.5,
                   help="the plot's threshold: that of a global L1 prune to this sparsity (default: 0.5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--include", action="append", metavar="REGEX", help="as for prune (for the histogram and threshold)")
    p.add_argument("--exclude", action="append", metavar="REGEX", help="as for prune")
    p.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                   help="progress bar on stderr: auto (only on a terminal, default), always, never")
    p.set_defaults(handler=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            error("inspect", "--plot needs matplotlib: pip install 'pruneplug[plot]'")
            return 1
        check_plot_path(args.input, args.plot)  # before the work
    report = inspect_checkpoint(args.input, include=args.include, exclude=args.exclude,
                                threshold_sparsity=args.threshold_sparsity, histogram=bool(args.plot),
                                progress=progress_for(args))
    if args.plot:
        plot_inspection(report, args.plot)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.format_table())
        if args.plot:
            print(f"wrote {args.plot}")
    return 0


def add_commands(subparsers) -> None:
    """Add ``prune``, ``inspect`` and ``shrink`` to the ``pruneplug`` command line."""
    from pruneplug import calibration_cli
    from pruneplug.structured import cli as shrink_cli

    _add_prune(subparsers)
    _add_inspect(subparsers)
    calibration_cli.add_commands(subparsers)
    shrink_cli.add_command(subparsers)

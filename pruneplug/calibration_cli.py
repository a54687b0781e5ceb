"""``pruneplug calibrate`` and the calibrated forms of ``pruneplug prune`` (extra ``hf``), on the
block stream (:mod:`pruneplug.stream`).

* ``pruneplug calibrate MODEL_DIR TEXTS -o stats.safetensors``: dense-model statistics of a local
  Hugging Face model directory, block by block (``docs/calibration.md``);
* ``pruneplug prune IN -o OUT --method wanda --calibration stats.safetensors``: streams the
  checkpoint like magnitude pruning (handled by :func:`pruneplug.prune_checkpoint`);
* ``pruneplug prune MODEL_DIR -o OUT_DIR --method wanda --calibration TEXTS``: one step, block by
  block from the checkpoint to the output in the memory of one block, resumable (``--resume``).

Whether ``--calibration`` names a statistics file or texts is decided by the file's content (a
safetensors file or not), never by its name.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pruneplug.console import one_line, progress_for
from pruneplug.errors import CheckpointError, InvalidArgumentError
from pruneplug.reconstruction.block import LOSSES, SCHEDULES, TARGETS, TRAINS, ReconstructSettings

#: Options that only the one-step form reads (their defaults mean "not given").
STREAM_ONLY = {"calibration_mode": None, "device": None, "dtype": None, "stats_dtype": None,
               "offload_activations": None, "resume": False, "reconstruct": None, "reconstruct_lr": None,
               "reconstruct_batches": None, "reconstruct_loss": None, "reconstruct_holdout": None,
               "reconstruct_seed": None, "reconstruct_train": None, "reconstruct_rank": None,
               "reconstruct_target": None, "reconstruct_schedule": None}


def add_commands(subparsers: Any) -> None:
    """Add ``calibrate`` to the ``pruneplug`` command line."""
    p = subparsers.add_parser(
        "calibrate",
        help="collect calibration statistics (for --method wanda or sparsegpt) of a Hugging Face model directory",
        description="Run calibration texts through a local Hugging Face model directory (transformers, extra 'hf') "
        "block by block, one block's weights in memory at a time, and write the input statistics of every selected "
        "linear layer (sum of squares per input feature, token count, padding excluded; with --hessian X^T X) to "
        "one safetensors file, one entry per distinct input (format v2: docs/calibration.md). Then: pruneplug "
        "prune IN -o OUT --method wanda --calibration STATS.",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a local Hugging Face model directory (config.json, weights, "
                   "tokenizer)")
    p.add_argument("texts", metavar="TEXTS", help="calibration texts: a text file with one sample per line (UTF-8, or "
                   "UTF-16 with its byte-order mark), or .jsonl with a \"text\" field")
    p.add_argument("-o", "--output", metavar="STATS.safetensors", required=True, help="the statistics file to write")
    add_calibration_options(p)
    add_stream_options(p, prune=False)
    p.add_argument("--hessian", action="store_true", help="also collect each distinct input's X^T X (in_features^2 "
                   "per entry, one block's held at a time) for --method sparsegpt")
    p.add_argument("--include", action="append", metavar="REGEX", help="as for prune")
    p.add_argument("--exclude", action="append", metavar="REGEX", help="as for prune")
    p.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                   help="progress bar on stderr: auto (only on a terminal, default), always, never")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no memory estimate")
    p.set_defaults(handler=run_calibrate)


def add_calibration_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", type=int, default=128, help="calibration texts to use (default: 128, the first ones)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per text at most (default: 128)")
    p.add_argument("--batch-size", type=int, default=16, help="texts per forward pass (default: 16)")


def add_stream_options(p: argparse.ArgumentParser, prune: bool = True) -> None:
    """Options of the block stream (the one-step prune and calibrate)."""
    p.add_argument("--device", default=None, help="where blocks are computed: cpu (default), cuda or cuda:N")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16", "float64"), default=None,
                   help="compute dtype of the loaded blocks (default: float32 on cpu, the checkpoint's dtype on cuda)")
    p.add_argument("--stats-dtype", choices=("float32", "float64"), default=None,
                   help="accumulation dtype of the statistics (default: float32, as the references)")
    if not prune:
        return
    p.add_argument("--calibration-mode", choices=("sequential", "one-pass"), default=None,
                   help="one-step form: each block calibrated on the outputs of the pruned blocks before it "
                   "(sequential, as the papers) or of the dense ones (one-pass); default: sequential for sparsegpt "
                   "(its update corrects earlier blocks' errors), one-pass otherwise (measured: docs/calibration.md)")
    p.add_argument("--offload-activations", metavar="DIR", default=None,
                   help="one-step form: keep the calibration hidden states in DIR instead of memory")
    p.add_argument("--resume", action="store_true", help="one-step form: continue an interrupted run with the same "
                   "arguments from its last finished block (its staging area .OUT_DIR.pruneplug-stream)")
    add_reconstruct_options(p)


RECONSTRUCT_HELP = ("one-step form: after pruning each block, re-fit its remaining weights (masks fixed) to the dense "
                    "block's outputs with STEPS Adam steps (default 0: off)")


def add_reconstruct_options(p: argparse.ArgumentParser, steps_help: str = RECONSTRUCT_HELP) -> None:
    """``--reconstruct STEPS`` and its settings (pruneplug.ReconstructSettings; docs/reconstruction.md),
    for ``prune`` and ``shrink`` (``steps_help``: what STEPS does in that command)."""
    d = ReconstructSettings()
    p.add_argument("--reconstruct", type=int, metavar="STEPS", default=None, help=steps_help)
    p.add_argument("--reconstruct-lr", type=float, default=None, help=f"Adam's learning rate (default {d.lr})")
    p.add_argument("--reconstruct-batches", type=int, default=None,
                   help=f"calibration batches (of --batch-size texts) per Adam step (default {d.batches})")
    p.add_argument("--reconstruct-loss", choices=LOSSES, default=None,
                   help=f"mse, or nmse (normalised by the dense output's square) (default {d.loss})")
    p.add_argument("--reconstruct-holdout", type=float, default=None,
                   help=f"fraction of the calibration batches held out for early stopping (default {d.holdout})")
    p.add_argument("--reconstruct-seed", type=int, default=None,
                   help=f"seed of the batch order and of the low-rank adapters (default {d.seed})")
    p.add_argument("--reconstruct-train", choices=TRAINS, default=None,
                   help="what is re-fitted: weights (the pruned weights), norms (only the norms and the linear "
                   "layers' biases), lowrank (a low-rank adapter per pruned layer, masked, merged back) or all "
                   "(weights and norms) "
                   f"(default {d.train})")
    p.add_argument("--reconstruct-rank", type=int, metavar="R", default=None,
                   help=f"rank of the adapters of --reconstruct-train lowrank (default {d.rank})")
    p.add_argument("--reconstruct-target", choices=TARGETS, default=None,
                   help="the teacher: local (the dense block on the pruned model's inputs) or dense (the dense "
                   "block on the dense model's hidden states, carried through the blocks: a block also learns "
                   f"to undo earlier blocks' error; needs --calibration-mode sequential) (default {d.target})")
    p.add_argument("--reconstruct-schedule", choices=SCHEDULES, default=None,
                   help=f"Adam's learning rate over the steps: constant, or cosine (decays from --reconstruct-lr to 0) "
                   f"(default {d.schedule})")


def reconstruct_settings(args: argparse.Namespace) -> ReconstructSettings:
    """The :class:`ReconstructSettings` of the command line (defaults for options not given)."""
    fields = ("lr", "batches", "loss", "holdout", "seed", "train", "rank", "target", "schedule")
    given = {field: getattr(args, f"reconstruct_{field}", None) for field in fields}
    given["steps"] = getattr(args, "reconstruct", None)
    return ReconstructSettings(**{k: v for k, v in given.items() if v is not None})


def stream_only_options(args: argparse.Namespace) -> str | None:
    """The first one-step-only option given (``--resume``, ``--device``, ...), or None."""
    for name, default in STREAM_ONLY.items():
        if getattr(args, name, default) != default:
            return "--" + name.replace("_", "-")
    return None


def _options(args: argparse.Namespace) -> Any:
    from pruneplug.stream import StreamOptions

    return StreamOptions(device=args.device or "cpu", dtype=args.dtype, stats_dtype=args.stats_dtype or "float32",
                         calibration_mode=getattr(args, "calibration_mode", None),
                         samples=args.samples, seq_len=args.seq_len, batch_size=args.batch_size,
                         include=args.include, exclude=args.exclude,
                         offload_activations=Path(args.offload_activations) if getattr(
                             args, "offload_activations", None) else None,
                         resume=bool(getattr(args, "resume", False)), reconstruct=reconstruct_settings(args))


def _print_estimate(command: str, quiet: bool) -> Any:
    def show(estimate: Any) -> None:
        if not quiet:
            print(f"pruneplug {command}: estimated peak memory {estimate.describe()}", file=sys.stderr)
    return show


def run_calibrate(args: argparse.Namespace) -> int:
    from pruneplug.stream import calibrate_model_dir

    summary = calibrate_model_dir(args.model_dir, args.texts, args.output, hessian=args.hessian,
                                  options=_options(args), progress=progress_for(args),
                                  on_estimate=_print_estimate("calibrate", args.quiet))
    print(f"wrote {one_line(str(args.output))}: {summary['layers']} layers ({summary['entries']} distinct inputs), "
          f"{summary['tokens']} tokens from {summary['texts']} texts in {summary['seconds']:.1f} s")
    return 0


# ---------------------------------------------------------------------------------------------
# prune --calibration TEXTS: the one-step form
# ---------------------------------------------------------------------------------------------
def is_texts(calibration: str | None) -> bool:
    """Whether ``--calibration`` names calibration texts: any existing file that is not a
    safetensors file (judged by content). A missing path is given to the checkpoint path, whose
    error names it."""
    from pruneplug.calibration import is_safetensors_file

    if calibration is None:
        return False
    path = Path(calibration)
    return path.is_file() and not is_safetensors_file(path)


def prune_model_dir(args: argparse.Namespace, progress: Any = None) -> Any:
    """The one-step form on the stream; returns the report (its ``seconds`` the real wall time)."""
    from pruneplug.plan import PruneSettings
    from pruneplug.stream import prune_model_dir as stream_prune

    src = Path(args.input)
    if not src.is_dir() or not (src / "config.json").is_file():
        raise CheckpointError(f"{src}: --calibration TEXTS needs a Hugging Face model directory (config.json and "
                              "weights); for a checkpoint file, pass a statistics file from `pruneplug calibrate`")
    if args.output is None:
        raise InvalidArgumentError("--calibration TEXTS needs -o OUT_DIR")
    if args.scope != "layer":
        raise InvalidArgumentError("--scope global applies to magnitude pruning; the one-step calibrated form prunes "
                                   "each layer (use --layer-ratios owl for per-layer sparsities)")
    for flag, bad in (("--format", args.format != "dense"), ("--masks-out", args.masks_out), ("--dry-run", args.dry_run),
                      ("--in-place", args.in_place)):
        if bad:
            raise InvalidArgumentError(f"{flag} is not supported by the one-step form (--calibration TEXTS); prune in "
                                       "two steps (`pruneplug calibrate`, then prune with the statistics file)")
    settings = PruneSettings(args.method, sparsity=args.sparsity, pattern=args.pattern, groups=args.groups,
                             layer_ratios=args.layer_ratios, owl_m=args.owl_m, owl_lambda=args.owl_lambda,
                             max_layer_sparsity=args.max_layer_sparsity)
    result = stream_prune(src, args.output, settings, args.calibration, options=_options(args), progress=progress,
                          report=args.report, on_estimate=_print_estimate("prune", args.quiet))
    return result.report

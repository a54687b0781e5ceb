"""``pruneplug calibrate`` and the calibrated forms of ``pruneplug prune`` (extra ``hf``).

* ``pruneplug calibrate MODEL_DIR TEXTS -o stats.safetensors``: one-pass statistics of a local
  Hugging Face model directory on calibration texts (``docs/calibration.md``);
* ``pruneplug prune IN -o OUT --method wanda --calibration stats.safetensors``: streams the
  checkpoint like magnitude pruning (handled by :func:`pruneplug.prune_checkpoint`);
* ``pruneplug prune MODEL_DIR -o OUT_DIR --method wanda --calibration TEXTS``: one step, sequential
  calibration through the model (each block on the outputs of the pruned earlier ones), then the
  checkpoint is pruned with those statistics and written like the streaming form, config and
  tokenizer files copied. Nothing is written when anything fails.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pruneplug.errors import CalibrationError, CheckpointError, InvalidArgumentError

STATS_SUFFIX = ".safetensors"


def add_commands(subparsers: Any) -> None:
    """Add ``calibrate`` to the ``pruneplug`` command line."""
    p = subparsers.add_parser(
        "calibrate",
        help="collect calibration statistics (for --method wanda) of a Hugging Face model directory",
        description="Run calibration texts through a local Hugging Face model directory (transformers, extra 'hf') "
        "and write the input statistics of every selected linear layer (sum of squares per input feature, float64; "
        "token count; padding excluded) to one safetensors file (format: docs/calibration.md). Then: pruneplug prune "
        "IN -o OUT --method wanda --calibration STATS.",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a local Hugging Face model directory (config.json, weights, "
                   "tokenizer)")
    p.add_argument("texts", metavar="TEXTS", help="calibration texts: a text file with one sample per line, or .jsonl "
                   "with a \"text\" field")
    p.add_argument("-o", "--output", metavar="STATS.safetensors", required=True, help="the statistics file to write")
    add_calibration_options(p)
    p.add_argument("--hessian", action="store_true", help="also collect each layer's X^T X (float64, in_features^2 "
                   "per layer, every layer held until the file is written) for --method sparsegpt")
    p.add_argument("--include", action="append", metavar="REGEX", help="as for prune")
    p.add_argument("--exclude", action="append", metavar="REGEX", help="as for prune")
    p.set_defaults(handler=run_calibrate)


def add_calibration_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", type=int, default=128, help="calibration texts to use (default: 128, the first ones)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per text at most (default: 128)")
    p.add_argument("--batch-size", type=int, default=16, help="texts per forward pass (default: 16)")


def _batches(model_dir: str, texts_path: str, args: argparse.Namespace) -> tuple[Any, list[dict]]:
    from pruneplug.torch.hf import load_model, load_texts, text_batches

    for name in ("samples", "seq_len", "batch_size"):
        if getattr(args, name) < 1:
            raise InvalidArgumentError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be >= 1")
    texts = load_texts(texts_path, args.samples)
    model, tokenizer = load_model(model_dir)
    return model, text_batches(tokenizer, texts, args.seq_len, args.batch_size, where=str(texts_path))


def run_calibrate(args: argparse.Namespace) -> int:
    import pruneplug as pp

    out = Path(args.output)
    if not out.parent.is_dir():
        raise CheckpointError(f"-o {out}: the directory {str(out.parent)!r} does not exist")
    model, batches = _batches(args.model_dir, args.texts, args)
    ctx = pp.torch.calibrate(model, batches, include=args.include, exclude=args.exclude, hessian=args.hessian)
    tokens = max(s.count for s in ctx.values())
    ctx.save(out, {"model": str(args.model_dir), "texts": str(args.texts), "samples": str(args.samples),
                   "seq_len": str(args.seq_len), "tokens": str(tokens), "mode": "one-pass"})
    print(f"wrote {out}: {len(ctx)} layers, {tokens} tokens from {sum(len(b['input_ids']) for b in batches)} texts "
          f"in {float(ctx.metadata['seconds']):.1f} s")
    return 0


# ---------------------------------------------------------------------------------------------
# prune --calibration TEXTS: the one-step form
# ---------------------------------------------------------------------------------------------
def is_texts(calibration: str | None) -> bool:
    """Whether ``--calibration`` names calibration texts (anything but a statistics file)."""
    return calibration is not None and not str(calibration).endswith(STATS_SUFFIX)


def prune_model_dir(args: argparse.Namespace, progress: Any = None) -> Any:
    """The one-step form: sequential calibration and pruning of the model in memory give the
    statistics; the model directory is then pruned with them by :func:`pruneplug.prune_checkpoint`
    (streamed: same names, dtypes and layout, untouched tensors byte-identical, every other file of
    MODEL_DIR copied, committed atomically to OUT_DIR)."""
    import pruneplug as pp

    src = Path(args.input)
    if not src.is_dir() or not (src / "config.json").is_file():
        raise CheckpointError(f"{src}: --calibration TEXTS needs a Hugging Face model directory (config.json and "
                              "weights); for a checkpoint file, pass a statistics file from `pruneplug calibrate`")
    if args.output is None:
        raise InvalidArgumentError("--calibration TEXTS needs -o OUT_DIR")
    out = Path(args.output)
    if out.exists():
        raise CheckpointError(f"-o {out}: already exists (the one-step form writes a new model directory)")
    if not out.parent.is_dir():
        raise CheckpointError(f"-o {out}: the directory {str(out.parent)!r} does not exist")
    weights = _weights_in(src)
    model, batches = _batches(str(src), args.calibration, args)
    sparsity = args.sparsity
    used = pp.CalibrationContext()
    pp.torch.prune_model(model, sparsity, pattern=args.pattern, method=args.method, calibration=batches,
                         calibration_mode="sequential", include=args.include, exclude=args.exclude,
                         groups=getattr(args, "groups", None), statistics=used,
                         layer_ratios=getattr(args, "layer_ratios", None), owl_m=getattr(args, "owl_m", 5.0),
                         owl_lambda=getattr(args, "owl_lambda", 0.08))
    ctx = _renamed(used, weights)
    del model
    # the model-directory form of prune_checkpoint: other files copied, atomic commit, path rules
    result = pp.prune_checkpoint(src, out, sparsity=sparsity, pattern=args.pattern, method=args.method,
                                 calibration=ctx, include=args.include, exclude=args.exclude,
                                 groups=getattr(args, "groups", None), format=args.format, report=args.report,
                                 warn_sparsity=args.warn_sparsity,
                                 backend=None if args.backend == "auto" else args.backend, progress=progress,
                                 layer_ratios=getattr(args, "layer_ratios", None),
                                 owl_m=getattr(args, "owl_m", 5.0), owl_lambda=getattr(args, "owl_lambda", 0.08),
                                 max_layer_sparsity=getattr(args, "max_layer_sparsity", None))
    result.output = str(out)
    return result


def _weights_in(src: Path) -> Path:
    """The checkpoint inside a model directory: the directory itself when sharded, else its one
    ``*.safetensors`` file."""
    if (src / "model.safetensors.index.json").is_file():
        return src
    files = sorted(src.glob("*.safetensors"))
    if len(files) != 1:
        raise CheckpointError(f"{src}: expected one .safetensors file or model.safetensors.index.json, found "
                              f"{[f.name for f in files]}")
    return files[0]


def _renamed(ctx: Any, weights: Path) -> Any:
    """Statistics keyed by checkpoint tensor names: the model's parameter names, or the same with the
    base model's prefix (``bert.``, ``model.``) that the checkpoint may carry."""
    from pruneplug.calibration import CalibrationContext
    from pruneplug.checkpoint.formats import open_checkpoint

    names = set(open_checkpoint(weights).tensors)
    renamed = CalibrationContext(source=ctx.source, metadata=ctx.metadata)
    for name, stats in ctx.items():
        match = name if name in names else next((n for n in names if n.endswith("." + name)), None)
        if match is None:
            raise CalibrationError(f"{weights}: the model's weight {name!r} has no tensor in the checkpoint")
        renamed.add(match, stats)
    return renamed

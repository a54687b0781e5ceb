"""The ``pruneplug`` command line: ``example``, ``backends``, and the checkpoint commands
(``prune``, ``inspect``) that :mod:`pruneplug.checkpoint.cli` adds.

Errors a user can cause end with a one-line message and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

from pruneplug.console import EXIT_ERROR, error
from pruneplug.errors import PrunePlugError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pruneplug",
        description="Pruning of neural-network weights (exact unstructured, per-row, N:M, block, row, column) by "
        "any importance criterion; `pruneplug calibrate` collects the statistics the calibrated ones need, and "
        "`pruneplug prune MODEL_DIR --calibration TEXTS` prunes a model directory block by block.",
        epilog=_methods_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_example(subparsers)
    _add_backends(subparsers)
    try:
        from pruneplug.checkpoint import cli as checkpoint_cli
    except ImportError:  # the checkpoint commands need safetensors only when used; see pruneplug.checkpoint.cli
        pass
    else:
        checkpoint_cli.add_commands(subparsers)
    return parser


def _methods_epilog() -> str:
    """The registered criteria (``--method`` values), read from their entry points."""
    from pruneplug.criteria import ALIASES, criteria

    rows = []
    for info in criteria():
        alias = next((a for a, n in ALIASES.items() if n == info.name), None)
        needs = "broken: " + info.error if info.error else (
            "needs --calibration" if info.requires_calibration else "weights only")
        rows.append(f"  {info.name}{' (' + alias + ')' if alias else ''}: {needs}")
    return "methods (--method):\n" + "\n".join(rows)


def _add_example(subparsers) -> None:
    parser = subparsers.add_parser(
        "example",
        help="prune a 16->8 linear layer step by step (the Aprender walkthrough)",
        description="Prune a 16->8 linear layer with Kaiming-uniform weights: L1/L2 importance with "
        "statistics, a 50% unstructured mask, a 2:4 mask, apply, and a summary.",
    )
    parser.add_argument("--seed", type=int, default=42, help="random seed for the weights (default: 42)")
    parser.add_argument("--backend", default=None, help="backend to use (default: auto)")
    parser.set_defaults(handler=_run_example)


def _run_example(args: argparse.Namespace) -> int:
    from pruneplug.example import run_example

    run_example(seed=args.seed, backend=args.backend, stream=sys.stdout)
    return 0


def _add_backends(subparsers) -> None:
    parser = subparsers.add_parser("backends", help="list the registered backends and whether they can run here")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(handler=_run_backends)


def _run_backends(args: argparse.Namespace) -> int:
    import json

    import pruneplug as pp

    rows = pp.backends()
    if args.json:
        print(json.dumps([
            {"name": r.name, "available": r.available, "reason": r.reason, "priority": r.priority,
             "array_types": sorted(r.array_types), "dtypes": sorted(r.dtypes),
             "operations": sorted(r.operations), "plugin": r.plugin, "error": r.error}
            for r in rows
        ], indent=2))
        return 0
    print(f"{'backend':<12} {'available':<10} {'priority':>8}  {'arrays':<12} details")
    for r in rows:
        details = r.reason if not r.available else ", ".join(sorted(r.operations))
        if r.available and r.reason:  # what an available backend lacks, e.g. a dtype
            details += f"; {r.reason}"
        print(f"{r.name:<12} {'yes' if r.available else 'no':<10} {r.priority:>8}  "
              f"{','.join(sorted(r.array_types)) or '-':<12} {details}")
    return 0


def _silence_stdout() -> None:
    """After a broken pipe (``pruneplug inspect --json X | head``): point stdout at /dev/null so
    that the interpreter's last flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a descriptor (tests capture it)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        status = handler(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler of errors
        return status
    except PrunePlugError as exc:
        error(args.command, str(exc))
        return EXIT_ERROR
    except BrokenPipeError:  # the reader went away: nothing more to say, and no one to say it to
        _silence_stdout()
        return EXIT_ERROR
    except (OSError, MemoryError) as exc:  # failures of the machine, not of pruneplug: one line too
        error(args.command, f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}"
              + (f": {exc.filename}" if getattr(exc, "filename", None) else ""))
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("pruneplug: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

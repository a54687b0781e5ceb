"""The settings of block reconstruction: after a block is pruned, its surviving weights are
re-fitted with Adam so the pruned block reproduces the dense block's outputs on the calibration
tokens (docs/reconstruction.md). The work itself is :mod:`pruneplug.torch.reconstruct`; this
module imports no torch, so the CLI and the stream's options can hold the settings.

Example::

    >>> import pruneplug as pp
    >>> s = pp.ReconstructSettings(steps=20, lr=1e-4)
    >>> s.enabled, s.describe()["loss"], s.split(8)
    (True, 'mse', ([0, 1, 2, 3, 4, 5, 6], [7]))
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from pruneplug.errors import InvalidArgumentError

LOSSES = ("mse", "nmse")
#: What the re-fit trains: the pruned weights, the norms and biases, low-rank adapters merged back,
#: or the pruned weights and the norms and biases together.
TRAINS = ("weights", "norms", "lowrank", "all")
#: The teacher: the dense block on the student's own inputs, or on the dense model's hidden states.
TARGETS = ("local", "dense")
#: Adam's learning rate over the steps: constant, or a cosine decay from ``lr`` to 0.
SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class ReconstructSettings:
    """How each pruned block is re-fitted (``steps=0``: not at all, the default).

    * ``steps``: Adam steps per block (0 = off).
    * ``lr``: Adam's learning rate.
    * ``batches``: calibration batches per Adam step (a calibration batch holds ``batch_size``
      texts of the stream or of the batches given to ``prune_model``); the training batches are
      visited in a seeded random order.
    * ``loss``: ``"mse"`` (mean squared error per hidden feature over the real tokens) or
      ``"nmse"`` (the squared error divided by the squared dense output: scale-free across blocks).
    * ``holdout``: fraction of the calibration batches kept out of training (the last ones, at least
      one when > 0); the held-out loss is measured every ``max(1, steps // 10)`` steps and the
      weights with the lowest held-out loss are kept (those right after pruning when no step
      helped): early stopping. 0: no held-out split, the weights after the last step are kept.
    * ``seed``: block ``i`` shuffles its batches with seed ``seed + i``: a rerun, or a resumed
      stream, computes the same bits on the same device and thread count.
    * ``train``: what the optimiser moves. ``"weights"``: the block's pruned Linear/Conv1D weights
      (their pruned entries held at +0.0). ``"norms"``: only the block's normalisation weights
      (RMSNorm/LayerNorm, their biases too) and the biases of its linear layers; every linear
      weight keeps its pruned value. ``"lowrank"``: a rank-``rank`` adapter per pruned layer,
      ``W + (B @ A) * mask`` (``B`` starts at zero, ``A`` seeded), merged into ``W`` at the end.
      ``"all"``: ``"weights"`` and ``"norms"`` together (the pruned weights under their mask, and
      the norms and biases).
    * ``rank``: the adapters' rank (``train="lowrank"`` only).
    * ``target``: the teacher. ``"local"``: the dense block on the student's own inputs.
      ``"dense"``: the dense block on the dense model's hidden states, carried as a second stream
      through the blocks in sequential mode, so a block also learns to undo the error of the
      blocks before it. One-pass mode refuses it (:meth:`check_mode`): there every block's inputs
      are already the dense model's, so it would silently equal ``"local"``.
    * ``schedule``: Adam's learning rate over the steps: ``"constant"`` (``lr`` throughout) or
      ``"cosine"`` (``lr * (1 + cos(pi * (n - 1) / steps)) / 2`` at step ``n``: large steps first,
      small ones to settle).

    >>> ReconstructSettings(steps=-1).check()
    Traceback (most recent call last):
    ...
    pruneplug.errors.InvalidArgumentError: reconstruct steps=-1: must be an integer >= 0
    """

    steps: int = 0
    lr: float = 1e-4
    batches: int = 1
    loss: str = "mse"
    holdout: float = 0.125
    seed: int = 0
    train: str = "weights"
    rank: int = 8
    target: str = "local"
    schedule: str = "constant"

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """A typed error naming the first bad field and its value."""
        for name, low in (("steps", 0), ("batches", 1), ("seed", 0), ("rank", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidArgumentError(f"reconstruct {name}={value!r}: must be an integer >= {low}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not (
                math.isfinite(self.lr) and self.lr > 0):
            raise InvalidArgumentError(f"reconstruct lr={self.lr!r}: must be a finite number > 0")
        if self.loss not in LOSSES:
            raise InvalidArgumentError(f"reconstruct loss={self.loss!r}: expected one of {', '.join(LOSSES)}")
        if isinstance(self.holdout, bool) or not isinstance(self.holdout, (int, float)) or not (
                0 <= self.holdout < 1):
            raise InvalidArgumentError(f"reconstruct holdout={self.holdout!r}: must be a number in [0, 1)")
        if self.train not in TRAINS:
            raise InvalidArgumentError(f"reconstruct train={self.train!r}: expected one of {', '.join(TRAINS)}")
        if self.target not in TARGETS:
            raise InvalidArgumentError(f"reconstruct target={self.target!r}: expected one of {', '.join(TARGETS)}")
        if self.schedule not in SCHEDULES:
            raise InvalidArgumentError(f"reconstruct schedule={self.schedule!r}: expected one of "
                                       f"{', '.join(SCHEDULES)}")

    def check_mode(self, mode: str) -> None:
        """A typed error when ``target="dense"`` meets the one-pass calibration ``mode``, where it
        would do nothing: every block's inputs are the dense model's hidden states already.

        >>> ReconstructSettings(steps=5, target="dense").check_mode("one-pass")
        Traceback (most recent call last):
        ...
        pruneplug.errors.InvalidArgumentError: reconstruct target='dense' needs calibration mode 'sequential': in mode 'one-pass' every block's inputs are the dense model's hidden states already, so it would equal target='local' (give --calibration-mode sequential, or target 'local')
        """
        if self.enabled and self.target == "dense" and mode != "sequential":
            raise InvalidArgumentError(
                f"reconstruct target='dense' needs calibration mode 'sequential': in mode {mode!r} every block's "
                "inputs are the dense model's hidden states already, so it would equal target='local' (give "
                "--calibration-mode sequential, or target 'local')")

    def learning_rate(self, step: int) -> float:
        """Adam's learning rate at ``step`` (1 to ``steps``) under ``schedule``.

        >>> s = ReconstructSettings(steps=4, lr=1.0, schedule="cosine")
        >>> [round(s.learning_rate(n), 3) for n in range(1, 5)]
        [1.0, 0.854, 0.5, 0.146]
        """
        if self.schedule == "cosine":
            return self.lr * (1 + math.cos(math.pi * (step - 1) / self.steps)) / 2
        return self.lr

    @property
    def enabled(self) -> bool:
        return self.steps > 0

    @property
    def trains_weights(self) -> bool:
        """Whether the pruned layers' weights change (directly, or by merged adapters)."""
        return self.train in ("weights", "lowrank", "all")

    @property
    def trains_norms(self) -> bool:
        """Whether the block's norms and biases change."""
        return self.train in ("norms", "all")

    def describe(self) -> dict:
        """The settings as the report and the stream's journal record them. ``train``, ``target`` and
        ``schedule`` appear only when they are not the defaults, ``rank`` only with ``train="lowrank"``: a run
        with the defaults records (and writes into the output's metadata) what it did before these
        options existed, byte for byte."""
        described = asdict(self)
        for name, default in (("train", "weights"), ("target", "local"), ("schedule", "constant")):
            if described[name] == default:
                del described[name]
        if self.train != "lowrank":
            del described["rank"]
        return described

    def dense_stream(self, sequential: bool) -> bool:
        """Whether a second stream of dense hidden states must be carried through the blocks:
        only for the dense target in sequential mode (in one-pass mode the inputs are dense)."""
        return self.enabled and self.target == "dense" and sequential

    def split(self, batches: int) -> tuple[list[int], list[int]]:
        """(training, held-out) batch indices: the last ``ceil(holdout * batches)`` are held out;
        one batch alone is never split (it trains and nothing is held out)."""
        held = math.ceil(self.holdout * batches) if self.holdout > 0 and batches > 1 else 0
        held = min(held, batches - 1)
        return list(range(batches - held)), list(range(batches - held, batches))

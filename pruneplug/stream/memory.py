"""What a stream run holds in memory at its peak, predicted before it starts.

The stream holds, at one time, one block (or the layers before the first block, whichever is
larger), never the model:

    peak = max(outside, block) + statistics + activations + workspace + overhead

* ``outside``: the parameters outside the repeated blocks that the first block's inputs need
  (embeddings), in the compute dtype, held while the inputs are captured and then freed;
* ``block``: the largest block's parameters in the compute dtype;
* ``statistics``: Hessian criteria in sequential mode hold one distinct input's ``X^T X`` at a
  time (``in^2`` in the statistics dtype, the largest: the MLP's down projection); in one-pass mode,
  and for input norms, every distinct input of the block;
* ``activations``: the hidden states entering and leaving the block, ``2 x samples x tokens x
  hidden`` in the compute dtype (one batch each with ``--offload-activations``), plus the other
  arguments the model passes a block, kept for every batch (:func:`call_bytes_per_token`: the
  ``[batch, 1, tokens, tokens]`` attention mask of a padded batch, one byte an entry under SDPA,
  and the rotary tables);
* ``workspace``: SparseGPT's factor and working copies of the largest layer (``in^2 + 3 x out x in``
  floats);
* ``overhead``: the Python interpreter, torch and transformers, measured.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Resident memory of a Python process that has imported torch, transformers and pruneplug and
#: built a skeleton (measured: 16 runs on this project's 2-core reference machine, torch 2.13 CPU).
OVERHEAD_BYTES = 600 << 20


@dataclass(frozen=True)
class MemoryEstimate:
    """The parts of the predicted peak, in bytes (see the module docstring)."""

    weights: int
    statistics: int
    activations: int
    workspace: int
    overhead: int = OVERHEAD_BYTES

    @property
    def total(self) -> int:
        return self.weights + self.statistics + self.activations + self.workspace + self.overhead

    def describe(self) -> str:
        def gib(n: int) -> str:
            return f"{n / (1 << 30):.2f} GiB"
        return (f"{gib(self.total)} (weights {gib(self.weights)}, statistics {gib(self.statistics)}, activations "
                f"{gib(self.activations)}, workspace {gib(self.workspace)}, fixed {gib(self.overhead)})")


def estimate(*, outside: int, block: int, largest_in: int, largest_out: int, distinct_inputs: list[int],
             hidden: int, tokens: int, compute_bytes: int, stats_bytes: int, hessian: bool, sequential: bool,
             offload: bool, batch_tokens: int, extra_per_token: int = 0, reconstruct: bool = False,
             block_out: int = 0, reconstruct_train: str = "weights", adapter: int = 0,
             dense_stream: bool = False) -> MemoryEstimate:
    """The estimate from the model's shapes: ``outside``/``block`` parameter counts, the largest
    layer's ``largest_in``/``largest_out``, one entry per distinct input of the largest block
    (``distinct_inputs``: its feature counts), ``hidden`` size, calibration ``tokens`` (samples x
    sequence length), bytes per element of the compute and statistics dtypes. ``reconstruct``: the
    re-fit's extra (docs/reconstruction.md): the dense outputs (one more set of hidden states),
    the gradients, Adam's two moments and the kept copy of the block's weights (4 copies in
    float32), and the autograd intermediates of one batch (``block_out``: the summed output
    features of the block's layers, per token, float32). ``reconstruct_train``: ``"weights"``
    and ``"all"`` hold those 4 copies; ``"norms"`` none (its parameters are vectors); ``"lowrank"`` 2 (the masked
    update ``(B @ A) * mask`` of every layer, kept for the backward pass, and its gradient) plus
    Adam's state, the gradient and the kept copy of the ``adapter`` parameters (4 float32 copies
    of ``rank x (in + out)`` per layer). ``dense_stream``: ``target="dense"`` in sequential mode
    carries the dense model's hidden states too, one more set."""
    weights = max(outside, block) * compute_bytes
    norms = sum(distinct_inputs) * stats_bytes
    if hessian:
        squares = [n * n * stats_bytes for n in distinct_inputs]
        statistics = norms + (max(squares) if sequential else sum(squares))
    else:
        statistics = norms
    held_tokens = batch_tokens if offload else tokens
    activations = 2 * held_tokens * hidden * compute_bytes + tokens * extra_per_token
    workspace = (largest_in * largest_in + 3 * largest_in * largest_out) * 4 if hessian else \
        2 * largest_in * largest_out * 4
    if reconstruct:
        activations += held_tokens * hidden * compute_bytes * (2 if dense_stream else 1)
        copies = {"weights": 4, "norms": 0, "lowrank": 2, "all": 4}[reconstruct_train]
        adapter_bytes = 4 * adapter * 4 if reconstruct_train == "lowrank" else 0
        workspace += copies * block * 4 + adapter_bytes + batch_tokens * (block_out + 4 * hidden) * 4
    return MemoryEstimate(weights, statistics, activations, workspace)


def call_bytes_per_token(seq_len: int, head_dim: int) -> int:
    """Bytes per calibration token of what a block is passed besides its hidden states: the boolean
    attention mask SDPA gets for a padded batch (``seq_len`` per token; eager attention's float mask
    is 4 times that) and the rotary cos/sin tables (``2 x head_dim`` float32)."""
    return seq_len + 2 * head_dim * 4


def llama_estimate(*, hidden: int, intermediate: int, heads: int, kv_heads: int, vocab: int, samples: int = 128,
                   seq_len: int = 2048, compute_bytes: int = 4, stats_bytes: int = 4, hessian: bool = True,
                   offload: bool = False) -> MemoryEstimate:
    """The estimate for a Llama-architecture model of these shapes (docs/calibration.md's table).

    Example::

        >>> e = llama_estimate(hidden=4096, intermediate=14336, heads=32, kv_heads=8, vocab=128256)
        >>> round(e.total / 2**30, 1)
        13.5
    """
    head_dim = hidden // heads
    attn = hidden * hidden * 2 + 2 * hidden * kv_heads * head_dim
    mlp = 3 * hidden * intermediate
    block = attn + mlp + 2 * hidden
    tokens = samples * seq_len
    return estimate(outside=vocab * hidden, block=block, largest_in=intermediate, largest_out=hidden,
                    distinct_inputs=[hidden, hidden, hidden, intermediate], hidden=hidden, tokens=tokens,
                    compute_bytes=compute_bytes, stats_bytes=stats_bytes, hessian=hessian, sequential=True,
                    offload=offload, batch_tokens=16 * seq_len,
                    extra_per_token=call_bytes_per_token(seq_len, head_dim))

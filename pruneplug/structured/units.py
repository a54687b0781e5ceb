"""Where a block's structured units live, and the cut of every tensor that removing them makes.

One table per unit kind, keyed by the module names transformers gives them (relative to a block):

* MLP neurons: rows of gate/up (or fc), columns of down; Phi-3's fused ``gate_up_proj`` holds the
  gate rows then the up rows; GPT-2's ``Conv1D`` stores weights ``[in, out]`` (the axes swap).
* attention heads: rows of q (and, for multi-head attention, of k and v: a head is its own KV
  group there), columns of o; Phi-3's fused ``qkv_proj`` holds q, k, v rows in that order. Biases
  follow their rows. Qwen3's ``q_norm``/``k_norm`` act per ``head_dim`` and stay as they are.
* whole KV groups (GQA): the group's k and v rows, the q rows of all its query heads and their
  o columns. Query head ``j`` reads KV head ``j // group``; keeping whole groups in order keeps
  that mapping for the smaller counts.

A cut is ``{parameter name relative to the block: (axis, kept indices)}``; the same cuts serve a
module in memory (:mod:`pruneplug.torch.shrink`) and a checkpoint's tensors (the directory
writer), so the two cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pruneplug.errors import InvalidArgumentError

# (rows: modules whose outputs are the neurons, down: the module reading them, conv1d)
_MLP_LAYOUTS = (
    (("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj", False, False),  # Llama, Qwen2/3, Mistral, Gemma
    (("mlp.gate_up_proj",), "mlp.down_proj", False, True),  # Phi-3: gate rows, then up rows
    (("mlp.c_fc",), "mlp.c_proj", True, False),  # GPT-2 (Conv1D)
    (("intermediate.dense",), "output.dense", False, False),  # BERT
)
_ATTENTION_LAYOUTS = (
    (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn.o_proj"),
    (("self_attn.qkv_proj",), "self_attn.o_proj"),  # Phi-3
)
# Architectures whose attention derives head_dim from hidden_size / num_heads in code: a config
# with fewer heads cannot describe the kept ones (GPT-2, BERT).
_HEADS_NOT_EXPRESSIBLE = {"mlp.c_fc": "GPT-2's attention", "intermediate.dense": "BERT's self-attention"}


@dataclass(frozen=True)
class MlpLayout:
    """The MLP of one block: ``rows`` (modules whose output features are the neurons), ``down``
    (the module whose input features they are), ``fused`` (one module holding gate and up rows),
    ``conv1d`` (weights stored ``[in, out]``) and ``width`` (neurons)."""

    rows: tuple[str, ...]
    down: str
    conv1d: bool
    fused: bool
    width: int


@dataclass(frozen=True)
class AttentionLayout:
    """The attention of one block: ``rows`` (q, k, v or the fused qkv), ``out`` (o_proj), head
    counts and ``head_dim``."""

    rows: tuple[str, ...]
    out: str
    heads: int
    kv_heads: int
    head_dim: int

    @property
    def group(self) -> int:
        """Query heads per KV head."""
        return self.heads // self.kv_heads


def _has(modules: dict[str, Any], names: tuple[str, ...]) -> bool:
    return all(n in modules for n in names)


def mlp_layout(block: Any, where: str = "block") -> MlpLayout:
    """The MLP of ``block`` (an nn.Module, parameters may be on meta), or an error naming the block."""
    modules = dict(block.named_modules())
    for rows, down, conv1d, fused in _MLP_LAYOUTS:
        if _has(modules, rows + (down,)):
            weight = modules[down].weight
            width = int(weight.shape[0] if conv1d else weight.shape[1])
            return MlpLayout(rows, down, conv1d, fused, width)
    raise InvalidArgumentError(f"{where} ({type(block).__name__}) has no dense MLP this version can shrink "
                               "(gate/up/down, gate_up/down, c_fc/c_proj or intermediate/output); an MoE block's "
                               "experts are not MLP neurons (remove experts with experts= / --experts)")


def attention_layout(block: Any, config: Any, where: str = "block", argument: str = "heads") -> AttentionLayout:
    """The attention of ``block``, with head counts from ``config`` (``argument``: the request's
    argument that asked for it, named in the errors)."""
    modules = dict(block.named_modules())
    for mlp_name, what in _HEADS_NOT_EXPRESSIBLE.items():
        if mlp_name in modules:
            raise InvalidArgumentError(f"{argument}: {what} computes head_dim as hidden_size / num_heads, so no "
                                       "config can describe fewer heads of the same size; heads cannot be removed "
                                       f"from {type(block).__name__}")
    for rows, out in _ATTENTION_LAYOUTS:
        if _has(modules, rows + (out,)):
            heads = int(config.num_attention_heads)
            kv = int(getattr(config, "num_key_value_heads", None) or heads)
            head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
            return AttentionLayout(rows, out, heads, kv, head_dim)
    raise InvalidArgumentError(f"{where} ({type(block).__name__}) has no attention this version can shrink "
                               "(q/k/v/o_proj or qkv_proj/o_proj)")


def _expand(units: np.ndarray, size: int, offset: int = 0) -> np.ndarray:
    """Feature indices of ``units`` of ``size`` features each: [u0*size .. u0*size+size-1, ...]."""
    return (offset + units[:, None] * size + np.arange(size)[None, :]).reshape(-1)


def mlp_cuts(layout: MlpLayout, keep: np.ndarray) -> dict[str, tuple[int, np.ndarray]]:
    """Every cut that keeping neurons ``keep`` (sorted) makes in the block."""
    cuts: dict[str, tuple[int, np.ndarray]] = {}
    rows_index = np.concatenate([keep, keep + layout.width]) if layout.fused else keep
    for name in layout.rows:
        cuts[f"{name}.weight"] = (1 if layout.conv1d else 0, rows_index)
        cuts[f"{name}.bias"] = (0, rows_index)
    cuts[f"{layout.down}.weight"] = (0 if layout.conv1d else 1, keep)
    return cuts


def head_cuts(layout: AttentionLayout, keep: np.ndarray,
              keep_groups: np.ndarray | None = None) -> dict[str, tuple[int, np.ndarray]]:
    """Every cut that keeping query heads ``keep`` (sorted) makes. With multi-head attention
    (one query head per KV head) a head takes its k and v rows along; with ``keep_groups`` (the
    kept KV groups, sorted, when whole groups go) k and v keep only those groups' rows."""
    d = layout.head_dim
    q = _expand(keep, d)
    if layout.kv_heads == layout.heads:
        kv = q
    elif keep_groups is not None:
        kv = _expand(np.asarray(keep_groups), d)
    else:
        kv = None  # GQA, query heads only: k and v unchanged
    cuts: dict[str, tuple[int, np.ndarray]] = {}
    if len(layout.rows) == 1:  # fused q, k, v rows
        q_size, kv_size = layout.heads * d, layout.kv_heads * d
        kv_rows = np.arange(kv_size) if kv is None else kv
        index = np.concatenate([q, q_size + kv_rows, q_size + kv_size + kv_rows])
        cuts[f"{layout.rows[0]}.weight"] = (0, index)
        cuts[f"{layout.rows[0]}.bias"] = (0, index)
    else:
        cuts[f"{layout.rows[0]}.weight"] = (0, q)
        cuts[f"{layout.rows[0]}.bias"] = (0, q)
        for name in (layout.rows[1:] if kv is not None else ()):
            cuts[f"{name}.weight"] = (0, kv)
            cuts[f"{name}.bias"] = (0, kv)
    cuts[f"{layout.out}.weight"] = (1, q)
    return cuts


def neuron_weights(block: Any, layout: MlpLayout) -> dict[str, np.ndarray]:
    """The weights a neuron criterion reads (``rows`` [neurons, ...], ``down`` [hidden, neurons]),
    float32 NumPy copies."""
    modules = dict(block.named_modules())

    def arr(name: str) -> np.ndarray:
        return modules[name].weight.detach().float().cpu().numpy()

    parts = []
    for name in layout.rows:
        w = arr(name)
        w = w.T if layout.conv1d else w
        parts += [w[:layout.width], w[layout.width:]] if layout.fused else [w]
    down = arr(layout.down)
    return {"rows": np.concatenate(parts, axis=1), "down": down.T if layout.conv1d else down}


def head_weights(block: Any, layout: AttentionLayout) -> dict[str, np.ndarray]:
    """The weights a head criterion reads: ``rows`` [heads, head_dim * in] (q rows) and ``out``."""
    modules = dict(block.named_modules())
    q = modules[layout.rows[0]].weight.detach().float().cpu().numpy()[:layout.heads * layout.head_dim]
    out = modules[layout.out].weight.detach().float().cpu().numpy()
    return {"rows": q.reshape(layout.heads, -1), "out": out}


def removal_count(fraction: float, units: int, what: str, argument: str) -> int:
    """How many of ``units`` a ``fraction`` removes (``round``), refusing one that leaves none."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise InvalidArgumentError(f"{argument}={fraction!r}: expected a fraction in [0, 1)")
    count = round(fraction * units)
    if count >= units:
        raise InvalidArgumentError(f"{argument}={fraction!r} removes {count} of the {units} {what}: none would be left")
    return count


def heads_per_group(fraction: float, layout: AttentionLayout) -> int:
    """Query heads removed from every KV group (GQA), or whole heads for multi-head attention
    (returned as a count of heads); refuses a fraction that does not divide the groups evenly."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise InvalidArgumentError(f"heads={fraction!r}: expected a fraction in [0, 1)")
    if layout.kv_heads == layout.heads:
        return removal_count(fraction, layout.heads, "attention heads", "heads")
    per_group = fraction * layout.group
    if abs(per_group - round(per_group)) > 1e-6:
        raise InvalidArgumentError(
            f"heads={fraction!r} would remove {per_group:g} of the {layout.group} query heads of each of the "
            f"{layout.kv_heads} KV groups; GQA needs the same whole number removed in every group: use a multiple "
            f"of 1/{layout.group}")
    return removal_count(fraction, layout.group, "query heads of each KV group", "heads")


def keep_lowest_removed(scores: np.ndarray, count: int) -> np.ndarray:
    """Sorted indices kept when the ``count`` lowest scores go (ties: the lower index goes first)."""
    order = np.lexsort((np.arange(len(scores)), scores))
    return np.sort(order[count:])


def kv_groups_removed(fraction: float, layout: AttentionLayout) -> int:
    """KV groups removed from every block by ``kv_heads=fraction`` (``round``, as for neurons);
    refuses multi-head attention, where a KV group is one head (``heads`` removes those)."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise InvalidArgumentError(f"kv_heads={fraction!r}: expected a fraction in [0, 1)")
    if layout.kv_heads == layout.heads:
        raise InvalidArgumentError(
            f"kv_heads={fraction!r}: the model has multi-head attention ({layout.heads} query heads over "
            f"{layout.kv_heads} KV heads), so a KV group is a single head; use heads={fraction!r} to remove heads")
    return removal_count(fraction, layout.kv_heads, "KV groups of each block", "kv_heads")


def group_scores(head_scores: np.ndarray, layout: AttentionLayout) -> np.ndarray:
    """A KV group's score: the sum of its query heads' scores (all of them, before any query head
    is removed from the groups that stay)."""
    return np.asarray(head_scores, dtype=np.float64).reshape(layout.kv_heads, layout.group).sum(axis=1)


def keep_kv_groups(head_scores: np.ndarray, layout: AttentionLayout, count: int) -> np.ndarray:
    """Kept KV groups (sorted) when the ``count`` of lowest :func:`group_scores` go.

    Example::

        >>> layout = AttentionLayout(("q", "k", "v"), "o", heads=4, kv_heads=2, head_dim=8)
        >>> keep_kv_groups(np.array([5.0, 1.0, 2.0, 2.0]), layout, 1).tolist()   # group sums 6 and 4
        [0]
    """
    return keep_lowest_removed(group_scores(head_scores, layout), count)


def keep_heads(scores: np.ndarray, layout: AttentionLayout, count: int,
               groups: np.ndarray | None = None) -> np.ndarray:
    """Kept query heads: ``count`` removed per KV group (GQA) or overall (multi-head); with
    ``groups`` (kept KV groups, GQA) the heads of the other groups all go."""
    if layout.kv_heads == layout.heads:
        return keep_lowest_removed(scores, count)
    g = layout.group
    kept = [group * g + keep_lowest_removed(scores[group * g:(group + 1) * g], count)
            for group in (range(layout.kv_heads) if groups is None else groups)]
    return np.concatenate(kept)

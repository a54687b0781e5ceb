"""Which tensors are pruned, for every front end (checkpoints, torch models, the block stream): the
default rule and ``--include`` / ``--exclude``. A tensor is anything with ``name``, ``shape``,
``dtype`` (safetensors' names) and ``prunable``."""

from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

from pruneplug.errors import CheckpointError, InvalidArgumentError


EMBEDDING_RE = r"embed|(^|\.)(wte|wpe|shared)(\.|$)"
NORM_RE = r"norm|(^|\.)ln(_\w+|\d*)(\.|$)"
HEAD_RE = r"(^|\.)lm_head(\.|$)|^(output|head|classifier|score|embed_out)\."
#: MoE routers (``block_sparse_moe.gate``, ``mlp.gate``, ``router``) and Qwen-MoE's shared-expert
#: gate: a few rows that pick experts; pruning them changes the routing, not a layer's width.
ROUTER_RE = r"(^|\.)(gate|router|shared_expert_gate)\.weight$"

SELECTION_RULE = (
    "every floating tensor (F16, BF16, F32, F64) with two or more dimensions, except embeddings "
    f"(name matches /{EMBEDDING_RE}/), norms (/{NORM_RE}/), MoE routers (/{ROUTER_RE}/) and the output head "
    f"(/{HEAD_RE}/); "
    "--include REGEX replaces the dimension and name rules by 'name matches one of the --include "
    "regexes' (re.search); --exclude REGEX always removes matching names. Everything else is copied "
    "unchanged."
)


def as_patterns(value: str | Sequence[str] | None, argname: str) -> list[str]:
    """``include`` / ``exclude`` as a list of regexes: a single string is one regex (not its
    characters), ``None`` none.

    Example::

        >>> as_patterns("mlp", "include"), as_patterns(["a", "b"], "exclude")
        (['mlp'], ['a', 'b'])
    """
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    try:
        patterns = list(value)
    except TypeError:
        raise InvalidArgumentError(f"{argname}={value!r}: expected a regex string or a list of them") from None
    bad = next((p for p in patterns if not isinstance(p, str)), None)
    if bad is not None:
        raise InvalidArgumentError(f"{argname} holds {bad!r}: expected regex strings")
    return patterns


def _compile(patterns: Sequence[str] | None, option: str) -> list[tuple[str, re.Pattern]]:
    out = []
    for p in as_patterns(patterns, option.lstrip("-")):
        try:
            out.append((p, re.compile(p)))
        except re.error as exc:
            raise InvalidArgumentError(f"{option} {p!r} is not a valid regular expression: {exc}") from None
    return out


def select_tensors(refs: Iterable[Any], include: Sequence[str] | None = None,
                   exclude: Sequence[str] | None = None) -> dict[str, str | None]:
    """Apply the selection rule (:data:`SELECTION_RULE`): name -> ``None`` when selected, else the
    reason it is left alone. An ``--include`` or ``--exclude`` regex that matches no tensor name at
    all is an error (a typo would otherwise silently change what is pruned)."""
    refs = list(refs)
    inc, exc = _compile(include, "--include"), _compile(exclude, "--exclude")
    for option, compiled in (("--include", inc), ("--exclude", exc)):
        for text, rx in compiled:
            if not any(rx.search(r.name) for r in refs):
                sample = ", ".join(r.name for r in refs[:3])
                raise CheckpointError(f"{option} {text!r} matches no tensor name (names look like: {sample}, ...)")
    result: dict[str, str | None] = {}
    for ref in refs:
        reason: str | None = None
        hit = next((t for t, rx in exc if rx.search(ref.name)), None)
        if hit is not None:
            reason = f"excluded by --exclude {hit!r}"
        elif inc:
            if not any(rx.search(ref.name) for _, rx in inc):
                reason = "not matched by --include"
        elif len(ref.shape) < 2:
            reason = f"{len(ref.shape)}-D (bias, norm or scalar)"
        elif re.search(EMBEDDING_RE, ref.name):
            reason = "embedding"
        elif re.search(NORM_RE, ref.name):
            reason = "norm"
        elif re.search(HEAD_RE, ref.name):
            reason = "output head"
        elif re.search(ROUTER_RE, ref.name):
            reason = "MoE router"
        if reason is None and not ref.prunable:
            reason = f"dtype {ref.dtype} is not prunable"
        result[ref.name] = reason
    return result

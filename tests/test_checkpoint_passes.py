"""How many passes global checkpoint pruning makes over the tensors, counted with a spy on the
registry's hook calls: the counting pass that tests the default layer cap is run once and its exact
counts and tie shares are used (no second counting pass, no repeat of the first selection), and the
exact-count path gives the same bytes as the one-pass path."""

from __future__ import annotations

import collections

import numpy as np
import pytest

import pruneplug as pp
from pruneplug.checkpoint import prune as prune_module
from pruneplug.registry import get_registry
from test_checkpoint_support import BF16, read_safetensors, tied_values, write_single

ONE_PASS_BACKENDS = [b.name for b in pp.backends()
                     if b.name in ("numpy", "cpu") and b.available and "prune_below_key" in b.operations]


def _tensors(seed: int = 5, tiny: bool = False) -> dict[str, np.ndarray]:
    """Four selected float32 2-D tensors with ties within and across them; with ``tiny``, a fifth
    of tiny weights that a global prune would empty (a cap binds on it, even the default 0.99)."""
    rng = np.random.default_rng(seed)
    tensors = {
        "layers.0.a.weight": tied_values(rng, (16, 16), np.float32),
        "layers.0.b.weight": tied_values(rng, (16, 24), np.float32),
        "layers.1.a.weight": rng.standard_normal((24, 16)).astype(np.float32),
        "layers.1.b.weight": tied_values(rng, (16, 16), np.float32),
    }
    if tiny:
        tensors["layers.2.tiny.weight"] = (rng.standard_normal((16, 16)) * 1e-3).astype(np.float32)
    return tensors


def _bf16_tensors(seed: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"layers.{i}.w.weight": tied_values(rng, (16, 32), BF16, levels=5) for i in range(4)}


class _Spy:
    """Counts the registry's hook calls: counting passes (``count``: a key histogram of the count
    request, or a prune-below-key pass that writes nothing, which is how the counting pass runs
    where the backend has one), radix digits (``digit``), prune passes that write
    (``prune_below_key``), zero counts; per chunk (how a tensor is split into chunks is the
    reader's business: the tests compare counts of calls, not tensors)."""

    def __init__(self, monkeypatch) -> None:
        self.calls: collections.Counter = collections.Counter()
        registry = get_registry()
        real = registry.call

        def call(backend, operation, **kwargs):
            if operation == "key_histogram":
                self.calls["count" if kwargs["bits"] == 0 else "digit"] += 1
            elif operation == "prune_below_key" and kwargs.get("out") is None and kwargs.get("mask") is None:
                self.calls["count"] += 1
            else:
                self.calls[operation] += 1
            return real(backend, operation, **kwargs)

        monkeypatch.setattr(registry, "call", call)

    def chunks_per_pass(self, tensors: dict, tmp_path) -> int:
        """The key-histogram calls of one pass over ``tensors`` (a layer-scope float32 prune,
        counted apart: two digit passes)."""
        before = self.calls["digit"]
        src = write_single(tmp_path / "chunks.safetensors", tensors)
        pp.prune_checkpoint(src, tmp_path / "chunks_out.safetensors", sparsity=0.5)
        digit = self.calls["digit"] - before
        self.calls.clear()
        return digit // 2


@pytest.fixture(params=ONE_PASS_BACKENDS)
def backend(request, monkeypatch):
    monkeypatch.setenv("PRUNEPLUG_BACKEND", request.param)
    return request.param


@pytest.mark.parametrize("format", ["dense", "sparse-bitmask"])
def test_default_cap_counts_each_tensor_once(tmp_path, monkeypatch, backend, format):
    """Global scope with the default cap (0.99, not binding here): the key passes, one counting
    pass whose tie shares the compressed output uses too (before: a second counting pass), and one
    pruning pass per tensor."""
    tensors = _tensors()
    src = write_single(tmp_path / "in.safetensors", tensors)
    spy = _Spy(monkeypatch)
    one_pass = spy.chunks_per_pass(tensors, tmp_path)
    # 0.6: the threshold falls on a tied value, and the ties are split (106 of 119 pruned)
    report = pp.prune_checkpoint(src, tmp_path / "out.safetensors", sparsity=0.6, scope="global", format=format)
    assert spy.calls["count"] == one_pass, spy.calls
    assert spy.calls["digit"] == 2 * one_pass, spy.calls  # float32 keys: two digits, no per-tensor selection
    assert spy.calls["prune_below_key"] == len(tensors), spy.calls
    assert report.passes == 3  # the key passes and the one counting pass
    assert sum(r.pruned for r in report.tensors) == round(0.6 * sum(t.size for t in tensors.values()))


def test_exact_count_path_counts_once_and_matches_the_one_pass_path(tmp_path, monkeypatch, backend):
    """Where tensors are pruned by an exact count (a backend without ``prune_below_key``, forced
    here), the plan's counts are used: one counting pass (before: two), the same bytes."""
    tensors = _tensors()
    src = write_single(tmp_path / "in.safetensors", tensors)
    pp.prune_checkpoint(src, tmp_path / "fast.safetensors", sparsity=0.6, scope="global",
                        masks_out=tmp_path / "fast.masks.safetensors")
    spy = _Spy(monkeypatch)
    one_pass = spy.chunks_per_pass(tensors, tmp_path)
    monkeypatch.setattr(prune_module.TensorPruner, "_fast_path_applies", lambda self: False)
    pp.prune_checkpoint(src, tmp_path / "exact.safetensors", sparsity=0.6, scope="global",
                        masks_out=tmp_path / "exact.masks.safetensors")
    assert spy.calls["count"] == one_pass, spy.calls
    assert spy.calls["prune_below_key"] == 0, spy.calls
    for name in ("", ".masks"):
        assert (tmp_path / f"exact{name}.safetensors").read_bytes() == (tmp_path / f"fast{name}.safetensors").read_bytes()


@pytest.mark.parametrize("settings", [
    dict(sparsity=0.6, scope="global", max_layer_sparsity=1.0, format="sparse-bitmask"),  # no cap: tie pass
    dict(sparsity=0.6, scope="global", max_layer_sparsity=1.0),
    dict(sparsity=0.3, scope="global", max_layer_sparsity=0.5),  # binds on the tiny tensor
    dict(sparsity=0.6, scope="global"),
    dict(sparsity=0.6, scope="global", format="sparse-bitmask"),
], ids=["nocap-bitmask", "nocap-dense", "binding", "default", "default-bitmask"])
def test_exact_count_path_gives_the_same_bytes(tmp_path, monkeypatch, backend, settings):
    """Every way a global plan reaches the tensors (tie shares planned, counted before the files,
    handed out in tensor order; counts after a binding cap) gives the same bytes whether tensors
    are pruned in one pass or by their exact counts."""
    tensors = _tensors(tiny=True)
    src = write_single(tmp_path / "in.safetensors", tensors)
    pp.prune_checkpoint(src, tmp_path / "fast.safetensors", **settings)
    monkeypatch.setattr(prune_module.TensorPruner, "_fast_path_applies", lambda self: False)
    pp.prune_checkpoint(src, tmp_path / "exact.safetensors", **settings)
    assert (tmp_path / "exact.safetensors").read_bytes() == (tmp_path / "fast.safetensors").read_bytes()


def test_binding_cap_runs_the_full_selection_once(tmp_path, monkeypatch, backend):
    """A cap that binds: the first round's selection over every tensor is kept for the
    water-filling (before: it ran a second time), then the tensors below their caps are selected
    again, and they are pruned under that last selection in one pass each; only the tensor held at
    its cap selects its own count. Counts exact and capped."""
    tensors = _tensors(tiny=True)
    src = write_single(tmp_path / "in.safetensors", tensors)
    spy = _Spy(monkeypatch)
    tiny_pass = spy.chunks_per_pass({"layers.2.tiny.weight": tensors["layers.2.tiny.weight"]}, tmp_path)
    seen = []
    real = prune_module.decide_global

    def decide(sources, *args, **kwargs):
        seen.append(len(sources))
        return real(sources, *args, **kwargs)

    monkeypatch.setattr(prune_module, "decide_global", decide)
    report = pp.prune_checkpoint(src, tmp_path / "out.safetensors", sparsity=0.3, scope="global",
                                 max_layer_sparsity=0.5)
    assert seen == [len(tensors), len(tensors) - 1], seen  # all, then all but the full tiny tensor
    assert spy.calls["prune_below_key"] == len(tensors), spy.calls
    assert spy.calls["digit"] == 2 * spy.calls["count"] + 2 * tiny_pass, spy.calls  # tiny's own selection
    rows = {r.name: r for r in report.tensors}
    assert rows["layers.2.tiny.weight"].pruned == 128  # its cap: floor(0.5 * 256)
    assert all(r.pruned <= r.numel // 2 for r in rows.values())
    assert sum(r.pruned for r in rows.values()) == round(0.3 * sum(t.size for t in tensors.values()))
    assert report.passes == 2 * (2 + 1)  # two rounds of two key passes and a count


def test_one_pass_bf16_ties_follow_tensor_order_with_planned_shares(tmp_path, backend):
    """bfloat16 (one key pass) with heavy ties: the planned tie shares give the same masks as the
    brute-force order (score, then sorted tensor name, then flat index)."""
    tensors = _bf16_tensors()
    src = write_single(tmp_path / "in.safetensors", tensors)
    pp.prune_checkpoint(src, tmp_path / "o.safetensors", sparsity=0.45, scope="global",
                        masks_out=tmp_path / "m.safetensors")
    masks, _, _ = read_safetensors(tmp_path / "m.safetensors")
    names = sorted(tensors)
    scores = np.concatenate([np.abs(tensors[n].astype(np.float64)).ravel() for n in names])
    order = np.argsort(scores, kind="stable")  # ties: earlier tensor, then lower flat index
    k = round(0.45 * scores.size)
    keep = np.ones(scores.size, bool)
    keep[order[:k]] = False
    got = np.concatenate([masks[n].ravel() for n in names])
    np.testing.assert_array_equal(got, keep)


@pytest.mark.parametrize("cap", [1.5, -0.1, "0.9"])
def test_a_bad_cap_is_refused_before_any_pass(tmp_path, monkeypatch, cap):
    src = write_single(tmp_path / "in.safetensors", _tensors())
    spy = _Spy(monkeypatch)
    with pytest.raises(pp.errors.InvalidArgumentError, match="max_layer_sparsity"):
        pp.prune_checkpoint(src, tmp_path / "out.safetensors", sparsity=0.5, scope="global", max_layer_sparsity=cap)
    assert not spy.calls, spy.calls
    assert not (tmp_path / "out.safetensors").exists()

"""prune_checkpoint / global_unstructured_masks / inspect_checkpoint against the NumPy reference."""

from __future__ import annotations

import json
import os
import sys
import tracemalloc
import weakref
from pathlib import Path

import numpy as np
import pytest

import pruneplug as pp
from pruneplug import checkpoint as ck
from pruneplug.checkpoint.formats import NP_TO_ST, ST_DTYPES
from pruneplug.checkpoint.global_select import Source
from pruneplug.errors import CheckpointError, InvalidArgumentError, NonFiniteError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_checkpoint_support import (  # noqa: E402
    BF16,
    DEFAULT_SELECTED,
    model_tensors,
    read_safetensors,
    read_sharded,
    reference_global_masks,
    tied_values,
    write_sharded,
    write_single,
)


@pytest.fixture
def tensors():
    return model_tensors()


@pytest.fixture
def single(tmp_path, tensors):
    return write_single(tmp_path / "model.safetensors", tensors)


def _masks_from(out: dict, names) -> dict:
    return {n: out[n] != 0 for n in names}


# ---------------------------------------------------------------------------------------------
# global scope: exact counts and order against brute force
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["l1", "l2"])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.37, 0.5, 0.9, 1.0])
def test_global_matches_bruteforce(tmp_path, single, tensors, method, sparsity):
    out_path = tmp_path / "out.safetensors"
    report = pp.prune_checkpoint(single, out_path, sparsity=sparsity, scope="global", method=method,
                                 masks_out=tmp_path / "masks.safetensors")
    out, _, _ = read_safetensors(out_path)
    masks, _, _ = read_safetensors(tmp_path / "masks.safetensors")
    expected = reference_global_masks(tensors, DEFAULT_SELECTED, sparsity, method)
    total = sum(tensors[n].size for n in DEFAULT_SELECTED)
    assert sum(int((~m).sum()) for m in masks.values()) == round(sparsity * total)
    for name in DEFAULT_SELECTED:
        np.testing.assert_array_equal(masks[name], expected[name], err_msg=name)
        want = tensors[name].copy()
        want[~expected[name]] = 0
        assert out[name].dtype == tensors[name].dtype
        assert out[name].tobytes() == want.tobytes(), name
    assert sum(r.pruned for r in report.tensors) == round(sparsity * total)


def test_global_ties_across_tensors_follow_sorted_names(tmp_path):
    ones = {"b.weight": np.ones((4, 4), np.float32), "a.weight": np.ones((4, 4), np.float16),
            "c.weight": np.ones((4, 4), BF16)}
    src = write_single(tmp_path / "t.safetensors", ones)
    pp.prune_checkpoint(src, tmp_path / "o.safetensors", sparsity=0.5, scope="global",
                        masks_out=tmp_path / "m.safetensors", max_layer_sparsity=1.0)
    masks, _, _ = read_safetensors(tmp_path / "m.safetensors")
    # 24 of 48 equal scores pruned: all of a (16), then the first 8 of b; c untouched (no cap)
    assert (~masks["a.weight"]).sum() == 16
    assert (~masks["b.weight"]).ravel().tolist() == [True] * 8 + [False] * 8
    assert masks["c.weight"].all()


def test_global_mixed_dtype_ties_compare_exactly(tmp_path):
    # 0.1 differs in f16, bf16, f32 and f64: the order must be by the exact values, not by dtype
    vals = {"a.w": np.full((2, 2), 0.1, np.float64), "b.w": np.full((2, 2), 0.1, np.float32),
            "c.w": np.full((2, 2), 0.1, np.float16), "d.w": np.full((2, 2), 0.1, BF16)}
    masks = pp.global_unstructured_masks(vals, 0.5)
    exact = {n: float(v.astype(np.float64).ravel()[0]) for n, v in vals.items()}
    lowest_two = sorted(exact, key=exact.get)[:2]
    for n in vals:
        assert (not masks[n].data.any()) == (n in lowest_two), (n, exact)


@pytest.mark.parametrize("limit", [1, 7, 1 << 30])
def test_plan_global_every_pass_path(limit):
    """Force the radix select through 1..4 digit passes (tiny gather limit) and the full-key count."""
    rng = np.random.default_rng(3)
    arrays = {f"t{i}": rng.standard_normal(97 + 13 * i).astype(np.float32) for i in range(5)}
    arrays["dup"] = np.full(50, arrays["t0"][0], np.float32)  # a heavy tie at some value
    arrays["zero"] = np.zeros(20, np.float64)
    order = list(arrays)
    for sparsity in (0.05, 0.3, 0.5, 0.77):
        sources = [Source(n, a.size, (lambda a=a: iter([a])), 4) for n, a in arrays.items()]
        plan = ck.plan_global(sources, sparsity, "l1", gather_limit=limit)
        expected = reference_global_masks(arrays, order, sparsity, "l1")
        assert plan.counts == [int((~expected[n]).sum()) for n in order]


def test_global_unstructured_masks_dict_order_and_types(tensors):
    chosen = {n: tensors[n] for n in reversed(DEFAULT_SELECTED)}  # dict order is the tie order
    masks = pp.global_unstructured_masks(chosen, 0.6, method="l2")
    expected = reference_global_masks(chosen, list(chosen), 0.6, "l2")
    for n in chosen:
        assert isinstance(masks[n], pp.Mask)
        np.testing.assert_array_equal(masks[n].data, expected[n])


def test_global_unstructured_masks_torch_tensors():
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    ts = {"x": torch.randn(8, 8, generator=g), "y": torch.randn(4, 8, generator=g).to(torch.bfloat16)}
    masks = pp.global_unstructured_masks(ts, 0.5)
    assert isinstance(masks["x"].data, torch.Tensor)
    arrays = {"x": ts["x"].numpy(), "y": ts["y"].view(torch.int16).numpy().view(BF16)}
    expected = reference_global_masks(arrays, ["x", "y"], 0.5, "l1")
    for n in ts:
        np.testing.assert_array_equal(masks[n].data.numpy(), expected[n])


def test_global_unstructured_masks_rejects_bad_input():
    with pytest.raises(InvalidArgumentError):
        pp.global_unstructured_masks({"a": np.ones(3)}, 1.5)
    with pytest.raises(pp.errors.UnsupportedDtypeError if hasattr(pp, "errors") else TypeError):
        pp.global_unstructured_masks({"a": np.ones(3, np.int32)}, 0.5)
    with pytest.raises(NonFiniteError, match="'a'"):
        pp.global_unstructured_masks({"a": np.array([1.0, np.nan, 2.0])}, 0.5)
    assert pp.global_unstructured_masks({}, 0.5) == {}


# ---------------------------------------------------------------------------------------------
# layer scope, N:M, structured
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["l1", "l2"])
def test_layer_scope_equals_per_tensor_prune(tmp_path, single, tensors, method):
    pp.prune_checkpoint(single, tmp_path / "o.safetensors", sparsity=0.3, method=method)
    out, _, _ = read_safetensors(tmp_path / "o.safetensors")
    for n in DEFAULT_SELECTED:
        want = pp.prune(tensors[n], sparsity=0.3, method=method, backend="numpy")
        assert out[n].tobytes() == want.tobytes(), n


def test_nm_pattern_and_skip_report(tmp_path, single, tensors):
    report = pp.prune_checkpoint(single, tmp_path / "o.safetensors", pattern="2:4", report=tmp_path / "r.json")
    out, _, _ = read_safetensors(tmp_path / "o.safetensors")
    rows = {r.name: r for r in report.tensors}
    for n in DEFAULT_SELECTED:
        if n.endswith("odd.weight"):
            assert rows[n].status == "skipped" and "not divisible by M=4" in rows[n].reason
            assert out[n].tobytes() == tensors[n].tobytes()
        else:
            assert rows[n].status == "pruned"
            assert out[n].tobytes() == pp.prune(tensors[n], pattern="2:4", backend="numpy").tobytes()
            assert pp.is_nm_sparse(out[n], 2, 4)
    data = json.loads((tmp_path / "r.json").read_text())
    skipped = [t for t in data["tensors"] if t["status"] == "skipped"]
    assert [t["name"] for t in skipped] == ["model.layers.0.mlp.odd.weight"]
    assert data["totals"]["tensors_skipped"] == 1


def test_nm_strict_is_an_error(tmp_path, single):
    with pytest.raises(CheckpointError, match="odd.weight.*not divisible"):
        pp.prune_checkpoint(single, tmp_path / "o.safetensors", pattern="2:4", strict=True)
    assert not (tmp_path / "o.safetensors").exists()


def test_nm_axis_for_conv(tmp_path):
    rng = np.random.default_rng(1)
    conv = rng.standard_normal((8, 16, 3, 3)).astype(np.float32)
    src = write_single(tmp_path / "c.safetensors", {"conv.weight": conv})
    pp.prune_checkpoint(src, tmp_path / "o.safetensors", pattern="2:4", axis=1)
    out, _, _ = read_safetensors(tmp_path / "o.safetensors")
    assert pp.is_nm_sparse(out["conv.weight"], 2, 4, axis=1)
    assert out["conv.weight"].tobytes() == pp.prune(conv, pattern="2:4", axis=1, backend="numpy").tobytes()


@pytest.mark.parametrize("pattern", ["row", "column", "block(4,4)"])
def test_structured_patterns(tmp_path, single, tensors, pattern):
    report = pp.prune_checkpoint(single, tmp_path / "o.safetensors", sparsity=0.5, pattern=pattern)
    out, _, _ = read_safetensors(tmp_path / "o.safetensors")
    rows = {r.name: r for r in report.tensors}
    for n in DEFAULT_SELECTED:
        if rows[n].status == "pruned":
            want = pp.prune(tensors[n], sparsity=0.5, pattern=pattern, backend="numpy")
            assert out[n].tobytes() == want.tobytes()
            assert rows[n].pruned == int((pp.prune(np.ones_like(tensors[n], dtype=np.float32) + 1, sparsity=0.5,
                                                   pattern=pattern) == 0).sum())
        else:
            assert pattern.startswith("block") and "does not divide" in rows[n].reason


def test_argument_errors(tmp_path, single):
    with pytest.raises(InvalidArgumentError, match="N:M fixes it"):
        pp.prune_checkpoint(single, tmp_path / "o.safetensors", pattern="2:4", sparsity=0.5)
    with pytest.raises(InvalidArgumentError, match="global"):
        pp.prune_checkpoint(single, tmp_path / "o.safetensors", pattern="2:4", scope="global")
    with pytest.raises(InvalidArgumentError, match="needs a sparsity"):
        pp.prune_checkpoint(single, tmp_path / "o.safetensors")
    with pytest.raises(InvalidArgumentError, match="sparse-24-bitmask"):
        pp.prune_checkpoint(single, tmp_path / "o.safetensors", sparsity=0.5, format="sparse-24-bitmask")
    with pytest.raises(InvalidArgumentError, match="method"):
        pp.prune_checkpoint(single, tmp_path / "o.safetensors", sparsity=0.5, method="l3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


# ---------------------------------------------------------------------------------------------
# what is copied, what is recorded
# ---------------------------------------------------------------------------------------------
def test_untouched_tensors_byte_identical_and_metadata_kept(tmp_path, single, tensors):
    pp.prune_checkpoint(single, tmp_path / "o.safetensors", sparsity=0.5, scope="global", exclude=["v_proj"])
    _, raw_in, meta_in = read_safetensors(single)
    out, raw_out, meta_out = read_safetensors(tmp_path / "o.safetensors")
    untouched = set(tensors) - set(DEFAULT_SELECTED) | {"model.layers.0.self_attn.v_proj.weight"}
    for n in untouched:
        assert raw_out[n] == raw_in[n], n
        assert out[n].dtype == tensors[n].dtype and out[n].shape == tensors[n].shape
    assert set(raw_out) == set(raw_in)
    assert meta_out["format"] == "pt" and meta_out["note"] == "kept"
    assert meta_out["pruneplug.scope"] == "global" and meta_out["pruneplug.sparsity"] == "0.5"
    assert json.loads(meta_out["pruneplug.exclude"]) == ["v_proj"]
    assert float(meta_out["pruneplug.threshold"]) > 0


def test_include_replaces_default_rule(tmp_path, single, tensors):
    report = pp.prune_checkpoint(single, tmp_path / "o.safetensors", sparsity=0.5, include=[r"lm_head", r"\.bias$"])
    pruned = sorted(r.name for r in report.tensors if r.status == "pruned")
    assert pruned == ["lm_head.weight", "model.layers.0.self_attn.o_proj.bias"]


def test_selection_rule_defaults(tensors):
    refs = [ck.TensorRef(n, NP_TO_ST[np.dtype(a.dtype).name], a.shape, a.nbytes) for n, a in tensors.items()]
    reasons = ck.select_tensors(refs)
    assert sorted(n for n, r in reasons.items() if r is None) == DEFAULT_SELECTED
    assert reasons["model.embed_tokens.weight"] == "embedding"
    assert reasons["lm_head.weight"] == "output head"
    assert "1-D" in reasons["model.norm.weight"]
    more = [ck.TensorRef(n, "F32", (4, 4), 64) for n in
            ("transformer.wte.weight", "output.weight", "encoder.layer.0.output.dense.weight",
             "model.layers.1.post_attention_layernorm.weight", "h.0.ln_1.weight", "classifier.weight")]
    reasons = ck.select_tensors(more)
    assert reasons == {"transformer.wte.weight": "embedding", "output.weight": "output head",
                       "encoder.layer.0.output.dense.weight": None,
                       "model.layers.1.post_attention_layernorm.weight": "norm", "h.0.ln_1.weight": "norm",
                       "classifier.weight": "output head"}


def test_regex_matching_nothing_or_invalid(tmp_path, single):
    with pytest.raises(CheckpointError, match="--include 'nothing_here' matches no tensor"):
        pp.prune_checkpoint(single, tmp_path / "o.safetensors", sparsity=0.5, include=["nothing_here"])
    with pytest.raises(CheckpointError, match="--exclude 'typo' matches no tensor"):
        pp.prune_checkpoint(single, tmp_path / "o.safetensors", sparsity=0.5, exclude=["typo"])
    with pytest.raises(InvalidArgumentError, match="not a valid regular expression"):
        pp.prune_checkpoint(single, tmp_path / "o.safetensors", sparsity=0.5, include=["("])
    with pytest.raises(CheckpointError, match="no tensor selected"):
        pp.prune_checkpoint(single, tmp_path / "o.safetensors", sparsity=0.5, include=["step"])


def test_nonfinite_weight_names_the_tensor(tmp_path, tensors):
    tensors["model.layers.0.self_attn.o_proj.weight"][3, 4] = np.inf
    src = write_single(tmp_path / "m.safetensors", tensors)
    for scope in ("layer", "global"):
        with pytest.raises(NonFiniteError, match="o_proj.weight"):
            pp.prune_checkpoint(src, tmp_path / "o.safetensors", sparsity=0.5, scope=scope)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_dry_run_writes_only_the_report(tmp_path, single):
    report = pp.prune_checkpoint(single, tmp_path / "o.safetensors", sparsity=0.5, scope="global", dry_run=True,
                                 masks_out=tmp_path / "m.safetensors", report=tmp_path / "r.json")
    assert report.dry_run and report.output is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "r.json"]
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["dry_run"] and data["totals"]["parameters_pruned"] == report.totals()["parameters_pruned"] > 0


def test_report_json_matches_output(tmp_path, single, tensors):
    report = pp.prune_checkpoint(single, tmp_path / "o.safetensors", sparsity=0.5, scope="global",
                                 report=tmp_path / "r.json")
    out, _, _ = read_safetensors(tmp_path / "o.safetensors")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["settings"]["scope"] == "global" and "embedding" in data["selection_rule"]
    for row in data["tensors"]:
        if row["zeros_after"] is not None:
            assert row["zeros_after"] == int((out[row["name"]] == 0).sum()), row["name"]
            assert row["zeros_before"] == int((tensors[row["name"]] == 0).sum())
    assert data["totals"]["parameters_pruned"] == round(0.5 * sum(tensors[n].size for n in DEFAULT_SELECTED))
    assert report.to_dict()["totals"] == data["totals"]


# ---------------------------------------------------------------------------------------------
# sharded and npz
# ---------------------------------------------------------------------------------------------
def test_sharded_global_equals_single_file(tmp_path, tensors):
    src = write_sharded(tmp_path / "in", tensors)
    single = write_single(tmp_path / "single.safetensors", tensors)
    pp.prune_checkpoint(src, tmp_path / "out", sparsity=0.45, scope="global", method="l2")
    pp.prune_checkpoint(single, tmp_path / "single_out.safetensors", sparsity=0.45, scope="global", method="l2")
    sharded, raw_sharded, metas = read_sharded(tmp_path / "out")
    flat, raw_flat, _ = read_safetensors(tmp_path / "single_out.safetensors")
    assert raw_sharded == raw_flat
    index_in = json.loads((src / "model.safetensors.index.json").read_text())
    index_out = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert index_out["weight_map"] == index_in["weight_map"]
    assert index_out["metadata"]["total_size"] == index_in["metadata"]["total_size"]
    assert index_out["metadata"]["pruneplug.scope"] == "global"
    assert all(m["format"] == "pt" and m["pruneplug.method"] == "l2" for m in metas.values())
    assert (tmp_path / "out" / "config.json").read_text() == (src / "config.json").read_text()
    assert (tmp_path / "out" / "tokenizer.json").exists()
    expected = reference_global_masks(tensors, DEFAULT_SELECTED, 0.45, "l2")
    for n in DEFAULT_SELECTED:
        np.testing.assert_array_equal(sharded[n] != 0, expected[n] & (tensors[n] != 0))


def test_sharded_output_dir_must_not_exist_with_content(tmp_path, tensors):
    src = write_sharded(tmp_path / "in", tensors)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("x")
    with pytest.raises(CheckpointError, match="exists and is not empty"):
        pp.prune_checkpoint(src, tmp_path / "out", sparsity=0.5)
    assert (tmp_path / "out" / "precious.txt").read_text() == "x"


def test_sharded_missing_shard(tmp_path, tensors):
    src = write_sharded(tmp_path / "in", tensors)
    next(src.glob("model-00002*")).unlink()
    with pytest.raises(CheckpointError, match="shard 'model-00002-of-00003.safetensors' is missing"):
        pp.prune_checkpoint(src, tmp_path / "out", sparsity=0.5)


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_global(tmp_path, compressed):
    rng = np.random.default_rng(5)
    arrays = {"layer1.weight": tied_values(rng, (12, 8), np.float32), "layer2.weight": tied_values(rng, (8, 8), np.float16),
              "layer2.bias": rng.standard_normal(8).astype(np.float64), "layer3.weight": tied_values(rng, (4, 8), np.float64)}
    src = tmp_path / "m.npz"
    (np.savez_compressed if compressed else np.savez)(src, **arrays)
    report = pp.prune_checkpoint(src, tmp_path / "o.npz", sparsity=0.6, scope="global")
    with np.load(tmp_path / "o.npz") as out:
        got = {n: out[n] for n in out.files}
    order = ["layer1.weight", "layer2.weight", "layer3.weight"]
    expected = reference_global_masks(arrays, order, 0.6, "l1")
    for n in order:
        want = arrays[n].copy()
        want[~expected[n]] = 0
        assert got[n].dtype == arrays[n].dtype and got[n].tobytes() == want.tobytes()
    assert got["layer2.bias"].tobytes() == arrays["layer2.bias"].tobytes()
    assert report.totals()["parameters_pruned"] == round(0.6 * 192)
    import zipfile

    with zipfile.ZipFile(tmp_path / "o.npz") as zf:
        assert json.loads(zf.comment)["pruneplug.scope"] == "global"
        assert (zf.infolist()[0].compress_type != zipfile.ZIP_STORED) == compressed


def test_npz_bf16_round_trip(tmp_path):
    w = tied_values(np.random.default_rng(0), (8, 8), BF16)
    src = write_single(tmp_path / "m.safetensors", {"a.weight": w})
    # npz cannot name bfloat16: it is stored as 2-byte values and the dtype recorded in the comment
    npz_path = tmp_path / "m.npz"
    writer = ck.writers.NpzWriter(npz_path, {}, compressed=False)
    writer.write("a.weight", w)
    writer.close()
    pp.prune_checkpoint(npz_path, tmp_path / "o.npz", sparsity=0.5)
    ckpt = ck.open_checkpoint(tmp_path / "o.npz")
    got = ckpt.tensors["a.weight"].array()
    assert got.dtype == BF16
    assert got.tobytes() == pp.prune(w, sparsity=0.5, backend="numpy").tobytes()
    assert src.exists()


# ---------------------------------------------------------------------------------------------
# safety: atomic writes, in place, bad input, unwritable output
# ---------------------------------------------------------------------------------------------
class Boom(RuntimeError):
    pass


def _fail_after_first_tensor(monkeypatch):
    original = ck.SafetensorsWriter.write
    calls = {"n": 0}

    def write(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Boom("injected failure after the first tensor")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ck.SafetensorsWriter, "write", write)
    return calls


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_failure_mid_write_leaves_nothing(tmp_path, single, monkeypatch, scope):
    calls = _fail_after_first_tensor(monkeypatch)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(Boom):
        pp.prune_checkpoint(single, tmp_path / "o.safetensors", sparsity=0.5, scope=scope,
                            masks_out=tmp_path / "m.safetensors", report=tmp_path / "r.json")
    assert calls["n"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no temporary file


def test_failure_mid_write_sharded_and_compressed(tmp_path, tensors, monkeypatch):
    src = write_sharded(tmp_path / "in", tensors)
    _fail_after_first_tensor(monkeypatch)
    with pytest.raises(Boom):
        pp.prune_checkpoint(src, tmp_path / "out", pattern="2:4", format="sparse-bitmask")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_failure_before_rename_leaves_existing_output_untouched(tmp_path, single):
    target = tmp_path / "o.safetensors"
    target.write_bytes(b"previous")

    def fail():
        raise Boom("disk gone")

    with pytest.raises(Boom):
        pp.prune_checkpoint(single, target, sparsity=0.5, _before_commit=fail)
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "o.safetensors"]


def test_out_equal_in_needs_in_place(tmp_path, single, tensors):
    original = single.read_bytes()
    with pytest.raises(CheckpointError, match="is the input; pass --in-place"):
        pp.prune_checkpoint(single, single, sparsity=0.5)
    with pytest.raises(CheckpointError, match="is the input"):
        pp.prune_checkpoint(single, tmp_path / "." / "model.safetensors", sparsity=0.5)
    assert single.read_bytes() == original
    pp.prune_checkpoint(single, single, sparsity=0.5, in_place=True)
    out, _, meta = read_safetensors(single)
    assert meta["pruneplug.sparsity"] == "0.5"
    n = DEFAULT_SELECTED[0]
    assert out[n].tobytes() == pp.prune(tensors[n], sparsity=0.5, backend="numpy").tobytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_sharded_in_place(tmp_path, tensors):
    src = write_sharded(tmp_path / "in", tensors)
    pp.prune_checkpoint(src, None, sparsity=0.5, scope="global", in_place=True)
    out, _, metas = read_sharded(src)
    assert all(m["pruneplug.scope"] == "global" for m in metas.values())
    assert (src / "config.json").exists() and (src / "tokenizer.json").exists()
    assert sum(int((out[n] == 0).sum()) for n in DEFAULT_SELECTED) >= round(0.5 * sum(tensors[n].size for n in DEFAULT_SELECTED))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_truncated_and_corrupt_inputs(tmp_path, single):
    data = single.read_bytes()
    cases = {
        "truncated.safetensors": (data[:-10], "truncated safetensors file"),
        "short.safetensors": (data[:5], "not a safetensors file"),
        "badlen.safetensors": ((10**12).to_bytes(8, "little") + data[8:], "corrupt or truncated"),
        "badjson.safetensors": (data[:8] + b"[" + data[9:], "corrupt safetensors header"),
        "badmagic.safetensors": (data[:8] + b"\xff" + data[9:], "corrupt safetensors header"),
        "bad.npz": (b"PK\x03\x04 not really a zip", "corrupt or truncated npz"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=message):
            pp.prune_checkpoint(tmp_path / name, tmp_path / ("o" + Path(name).suffix), sparsity=0.5)
    with pytest.raises(CheckpointError, match="no such file"):
        pp.prune_checkpoint(tmp_path / "missing.safetensors", tmp_path / "o.safetensors", sparsity=0.5)
    assert not (tmp_path / "o.safetensors").exists() and not (tmp_path / "o.npz").exists()


def test_unwritable_directory(tmp_path, single):
    with pytest.raises(CheckpointError, match="does not exist"):
        pp.prune_checkpoint(single, tmp_path / "nope" / "o.safetensors", sparsity=0.5)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            with pytest.raises(CheckpointError, match="cannot write to directory"):
                pp.prune_checkpoint(single, locked / "o.safetensors", sparsity=0.5)
        finally:
            locked.chmod(0o700)
    if Path("/proc/self").is_dir():  # not writable even for root
        with pytest.raises(CheckpointError, match="cannot write|not enough disk space in /proc"):
            pp.prune_checkpoint(single, Path("/proc/o.safetensors"), sparsity=0.5)


# ---------------------------------------------------------------------------------------------
# masks and compressed formats
# ---------------------------------------------------------------------------------------------
def test_masks_out_layer(tmp_path, single, tensors):
    pp.prune_checkpoint(single, tmp_path / "o.safetensors", sparsity=0.4, masks_out=tmp_path / "m.safetensors")
    masks, _, meta = read_safetensors(tmp_path / "m.safetensors")
    assert sorted(masks) == DEFAULT_SELECTED and "keep" in meta["pruneplug.kind"]
    for n in DEFAULT_SELECTED:
        _, want = pp.prune(tensors[n], sparsity=0.4, backend="numpy", return_mask=True)
        assert masks[n].dtype == np.bool_
        np.testing.assert_array_equal(masks[n], want.data)


def test_sparse_24_bitmask_format(tmp_path, tensors):
    ct = pytest.importorskip("pruneplug.compressed_tensors")
    src = write_sharded(tmp_path / "in", tensors)
    report = pp.prune_checkpoint(src, tmp_path / "out", pattern="2:4", format="sparse-24-bitmask")
    out, raw, _ = read_sharded(tmp_path / "out")
    rows = {r.name: r for r in report.tensors}
    for n in DEFAULT_SELECTED:
        if rows[n].status != "pruned":
            assert raw[n] == tensors[n].tobytes()
            continue
        prefix = n[: -len(".weight")]
        assert n not in out and {f"{prefix}.compressed", f"{prefix}.bitmask", f"{prefix}.shape"} <= set(out)
        dense = ct.decode(n, out, "sparse-24-bitmask")
        assert dense.tobytes() == pp.prune(tensors[n], pattern="2:4", backend="numpy").tobytes()
        assert rows[n].stored_as == "sparse-24-bitmask"
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    sc = config["quantization_config"]["sparsity_config"]
    assert sc["format"] == "sparse-24-bitmask" and sc["sparsity_structure"] == "2:4"
    assert config["model_type"] == "toy"
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(out)


def test_sparse_bitmask_format_single_file(tmp_path, single, tensors):
    ct = pytest.importorskip("pruneplug.compressed_tensors")
    pp.prune_checkpoint(single, tmp_path / "o.safetensors", sparsity=0.7, scope="global", format="sparse-bitmask")
    out, _, meta = read_safetensors(tmp_path / "o.safetensors")
    expected = reference_global_masks(tensors, DEFAULT_SELECTED, 0.7, "l1")
    for n in DEFAULT_SELECTED:
        want = tensors[n].copy()
        want[~expected[n]] = 0
        assert ct.decode(n, out, "sparse-bitmask").tobytes() == want.tobytes()
    assert meta["pruneplug.format"] == "sparse-bitmask"
    # widest dtypes first: every tensor of the file is aligned to its itemsize when memory-mapped
    refs = ck.read_safetensors_header(tmp_path / "o.safetensors").tensors
    assert all(r.offset % ST_DTYPES[r.dtype][1] == 0 for r in refs)
    assert {r.dtype for r in refs} >= {"I64", "U8", "F16", "BF16"}


# ---------------------------------------------------------------------------------------------
# bounded memory
# ---------------------------------------------------------------------------------------------
def _many(tmp_path, count, rng):
    tensors = {f"model.layers.{i:03d}.mlp.weight": rng.standard_normal((512, 512)).astype(np.float32)
               for i in range(count)}
    return write_single(tmp_path / f"many{count}.safetensors", tensors)


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_global_memory_does_not_grow_with_tensor_count(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    small, large = _many(tmp_path, 4, rng), _many(tmp_path, 32, rng)  # 1 MiB tensors: 4 MiB vs 32 MiB
    monkeypatch.setattr(ck.formats, "CHUNK", 1 << 14)
    # count the tensors alive at once: every array the reader hands out, until it is freed
    alive, most = set(), [0]
    original = ck.TensorRef.array

    def array(self):
        a = original(self)
        key = object()
        alive.add(key)
        most[0] = max(most[0], len(alive))
        weakref.finalize(a, alive.discard, key)
        return a

    monkeypatch.setattr(ck.TensorRef, "array", array)
    peaks = {}
    for name, src in (("small", small), ("large", large)):
        peaks[name] = _peak(lambda: pp.prune_checkpoint(src, tmp_path / f"o{name}.safetensors", sparsity=0.5,
                                                        scope="global", masks_out=tmp_path / f"m{name}.safetensors"))
    assert most[0] <= 2, f"{most[0]} input tensors alive at once"
    tensor_bytes = 512 * 512 * 4
    # ours: the pruned copy and the mask; the reference backend's own working memory for one
    # float32 tensor is about 6x the tensor (float64 finiteness copy, scores, int64 argsort)
    assert peaks["large"] < 10 * tensor_bytes, peaks
    assert peaks["large"] < 1.1 * peaks["small"], peaks  # 8x the tensors, no more memory


def test_global_masks_memory_does_not_grow(monkeypatch):
    rng = np.random.default_rng(0)
    monkeypatch.setattr(ck.formats, "CHUNK", 1 << 14)
    few = {f"w{i}": rng.standard_normal((256, 256)).astype(np.float32) for i in range(4)}
    many = {f"w{i}": rng.standard_normal((256, 256)).astype(np.float32) for i in range(40)}
    peak_few = _peak(lambda: pp.global_unstructured_masks(few, 0.5))
    peak_many = _peak(lambda: pp.global_unstructured_masks(many, 0.5))
    mask_bytes = 40 * 256 * 256  # the returned masks themselves grow with the count, of course
    assert peak_many < peak_few + mask_bytes + 256 * 256 * 4, (peak_few, peak_many)


# ---------------------------------------------------------------------------------------------
# inspect
# ---------------------------------------------------------------------------------------------
def test_inspect_after_24_prune(tmp_path, single, tensors):
    pp.prune_checkpoint(single, tmp_path / "o.safetensors", pattern="2:4")
    report = pp.inspect_checkpoint(tmp_path / "o.safetensors")
    rows = {r.name: r for r in report.tensors}
    q = rows["model.layers.0.self_attn.o_proj.weight"]
    assert q.is_24 is True and q.nm["4"] == "2:4" and q.nm["8"] in ("3:8", "4:8") and q.sparsity == 0.5
    assert rows["lm_head.weight"].is_24 is False and rows["lm_head.weight"].sparsity == 0.0
    assert rows["model.layers.0.mlp.odd.weight"].is_24 is None
    assert rows["model.step"].zeros is None
    mags = np.abs(tensors["lm_head.weight"].astype(np.float64))
    np.testing.assert_allclose(rows["lm_head.weight"].quantiles, np.quantile(mags, ck.inspect.QUANTILES), rtol=1e-6)
    assert report.metadata["pruneplug.pattern"] == "2:4"
    assert "pruned by pruneplug" in report.format_table()
    json.dumps(report.to_dict())


def test_inspect_threshold_matches_global_prune(tmp_path, single, tensors):
    report = pp.inspect_checkpoint(single, histogram=True, threshold_sparsity=0.5)
    pruned = pp.prune_checkpoint(single, tmp_path / "o.safetensors", sparsity=0.5, scope="global")
    assert report.threshold == pruned.threshold
    assert sum(report.histogram["counts"]) + report.histogram["zeros"] == sum(tensors[n].size for n in DEFAULT_SELECTED)

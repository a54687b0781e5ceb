"""Checkpoint builders and an independent reader for the checkpoint tests.

The reader uses ``safetensors.deserialize`` (the library's own parser, no framework) so the tests do
not read outputs with the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np

import pytest

safetensors = pytest.importorskip("safetensors")
from safetensors import deserialize  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

BF16 = np.dtype(ml_dtypes.bfloat16)
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": BF16, "I64": np.int64,
           "I32": np.int32, "U8": np.uint8, "BOOL": np.bool_}


def read_safetensors(path) -> tuple[dict[str, np.ndarray], dict[str, bytes], dict]:
    """(arrays, raw bytes, metadata) of a safetensors file, through safetensors' own parser."""
    data = Path(path).read_bytes()
    n = int.from_bytes(data[:8], "little")
    metadata = json.loads(data[8:8 + n]).get("__metadata__", {})
    arrays, raw = {}, {}
    for name, info in deserialize(data):
        buf = bytes(info["data"])
        raw[name] = buf
        arrays[name] = np.frombuffer(buf, dtype=_DTYPES[info["dtype"]]).reshape(info["shape"])
    return arrays, raw, metadata


def tied_values(rng, shape, dtype, levels=7):
    """Weights drawn from a few magnitudes (both signs, some zeros): many ties within and across tensors."""
    values = rng.integers(-levels, levels + 1, size=shape).astype(np.float64) / 4
    return values.astype(dtype)


def model_tensors(seed=0) -> dict[str, np.ndarray]:
    """A small transformer-shaped checkpoint: fp16, bf16, fp32, fp64 weights with ties across
    tensors, plus an embedding, a norm, a bias, a head, an int tensor and a non-dividing weight."""
    rng = np.random.default_rng(seed)
    return {
        "model.embed_tokens.weight": rng.standard_normal((50, 16)).astype(np.float32),
        "model.layers.0.self_attn.q_proj.weight": tied_values(rng, (16, 16), np.float16),
        "model.layers.0.self_attn.k_proj.weight": tied_values(rng, (16, 16), BF16),
        "model.layers.0.self_attn.v_proj.weight": tied_values(rng, (16, 16), np.float32),
        "model.layers.0.self_attn.o_proj.weight": rng.standard_normal((16, 16)).astype(np.float32),
        "model.layers.0.self_attn.o_proj.bias": rng.standard_normal(16).astype(np.float32),
        "model.layers.0.mlp.up_proj.weight": tied_values(rng, (24, 16), np.float64),
        "model.layers.0.mlp.down_proj.weight": rng.standard_normal((16, 24)).astype(BF16),
        "model.layers.0.mlp.odd.weight": rng.standard_normal((8, 6)).astype(np.float16),  # 6 % 4 != 0
        "model.layers.0.input_layernorm.weight": np.ones(16, np.float32),
        "model.norm.weight": np.ones(16, np.float32),
        "lm_head.weight": rng.standard_normal((50, 16)).astype(np.float32),
        "model.step": np.array([7], dtype=np.int64),
    }


DEFAULT_SELECTED = [
    "model.layers.0.mlp.down_proj.weight",
    "model.layers.0.mlp.odd.weight",
    "model.layers.0.mlp.up_proj.weight",
    "model.layers.0.self_attn.k_proj.weight",
    "model.layers.0.self_attn.o_proj.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.v_proj.weight",
]


def write_single(path, tensors, metadata=None) -> Path:
    save_file(tensors, str(path), metadata=metadata if metadata is not None else {"format": "pt", "note": "kept"})
    return Path(path)


def write_sharded(directory, tensors, shards=3) -> Path:
    directory = Path(directory)
    directory.mkdir()
    names = sorted(tensors)
    weight_map = {}
    for i in range(shards):
        part = names[i::shards]
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in part}, str(directory / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    total = sum(t.nbytes for t in tensors.values())
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (directory / "config.json").write_text(json.dumps({"model_type": "toy", "hidden_size": 16}))
    (directory / "tokenizer.json").write_text("{}")
    return directory


def read_sharded(directory) -> tuple[dict[str, np.ndarray], dict[str, bytes], dict]:
    directory = Path(directory)
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    arrays, raw, metas = {}, {}, {}
    for shard in sorted(set(index["weight_map"].values())):
        a, r, m = read_safetensors(directory / shard)
        arrays.update(a)
        raw.update(r)
        metas[shard] = m
    return arrays, raw, metas


def scores64(w: np.ndarray, method: str) -> np.ndarray:
    """The core's scores (float32 for 16-bit weights, else the weights' dtype) as float64."""
    x = w.astype(np.float32) if w.dtype.itemsize == 2 else w
    s = np.abs(x) if method == "l1" else x * x
    return s.astype(np.float64).ravel()


def reference_global_masks(tensors: dict, order: list, sparsity: float, method: str) -> dict:
    """Brute force: concatenate every score (tests only), one stable sort, prune the first k."""
    scores = np.concatenate([scores64(tensors[n], method) for n in order])
    k = int(round(sparsity * scores.size))
    keep = np.ones(scores.size, dtype=bool)
    keep[np.argsort(scores, kind="stable")[:k]] = False
    masks, start = {}, 0
    for n in order:
        size = tensors[n].size
        masks[n] = keep[start:start + size].reshape(tensors[n].shape)
        start += size
    return masks


# -- the helpers themselves: a wrong reference would make every other test meaningless ------------
def test_reference_global_masks_by_hand():
    tensors = {"a": np.array([1.0, 3.0], np.float32), "b": np.array([1.0, 0.5], np.float16)}
    masks = reference_global_masks(tensors, ["a", "b"], 0.5, "l1")
    # scores 1, 3 | 1, 0.5: prune 0.5 (b[1]) then the first 1.0 in tensor order (a[0])
    assert masks["a"].tolist() == [False, True]
    assert masks["b"].tolist() == [True, False]


def test_reader_round_trips_bf16(tmp_path):
    w = np.array([[1.5, -2.0]], dtype=BF16)
    arrays, raw, meta = read_safetensors(write_single(tmp_path / "x.safetensors", {"w": w}))
    assert arrays["w"].dtype == BF16 and arrays["w"].tolist() == w.tolist()
    assert raw["w"] == w.tobytes() and meta["note"] == "kept"


def run_cli(capsys, *argv):
    """``pruneplug`` with ``argv`` in this process: (exit code, stdout, stderr); never a traceback."""
    from pruneplug.cli import main

    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err

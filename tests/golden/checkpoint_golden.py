"""Golden outputs of ``prune_checkpoint``: SHA-256 of every file it writes for a fixed set of
seeded inputs and settings.

``checkpoint_golden.json`` was made by the code before the exact-selection rewrite (commit
237a53c, NumPy reference backend), with::

    git archive 237a53c | tar -x -C /tmp/pp_old && mkdir -p /tmp/pp_old_site && \\
    ln -s /tmp/pp_old/pruneplug /tmp/pp_old_site/pruneplug && \\
    ln -s /tmp/pp_old/backends /tmp/pp_old_site/pruneplug_backends && \\
    PYTHONPATH=/tmp/pp_old_site PRUNEPLUG_BACKEND=numpy .venv/bin/python tests/golden/checkpoint_golden.py \\
        > tests/golden/checkpoint_golden.json

``tests/test_checkpoint_golden.py`` recomputes the digests with today's code (default backend) and
compares: outputs must stay byte-identical (masks, thresholds, tie order, metadata, layout).
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from test_checkpoint_support import BF16, model_tensors, tied_values, write_sharded, write_single  # noqa: E402

import pruneplug as pp  # noqa: E402


def bf16_model(seed: int = 1) -> dict[str, np.ndarray]:
    """All-bfloat16 weights with heavy ties, and magnitudes whose float32 squares underflow or overflow."""
    rng = np.random.default_rng(seed)
    tensors = {"model.embed_tokens.weight": rng.standard_normal((40, 32)).astype(BF16)}
    for i in range(3):
        w = tied_values(rng, (48, 32), np.float64, levels=9)
        w[rng.random(w.shape) < 0.2] *= 1e-25  # squares underflow to 0 / subnormals in float32
        w[rng.random(w.shape) < 0.05] *= 1e20  # squares overflow to inf
        tensors[f"model.layers.{i}.mlp.up_proj.weight"] = w.astype(BF16)
        tensors[f"model.layers.{i}.self_attn.q_proj.weight"] = rng.standard_normal((32, 32)).astype(BF16)
    tensors["lm_head.weight"] = rng.standard_normal((40, 32)).astype(BF16)
    return tensors


def f32_model(seed: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tensors = {f"layers.{i}.fc.weight": tied_values(rng, (20, 24), np.float32, levels=40) for i in range(3)}
    tensors["layers.3.fc.weight"] = rng.standard_normal((24, 20)).astype(np.float32)
    tensors["layers.4.fc.weight"] = np.zeros((8, 8), np.float32)
    return tensors


CASES = [  # (input, output name, settings)
    ("mixed", "layer_l1.safetensors", dict(sparsity=0.5)),
    ("mixed", "layer_l2.safetensors", dict(sparsity=0.37, method="l2")),
    ("mixed", "global_l1.safetensors", dict(sparsity=0.5, scope="global", masks_out="global_l1.masks.safetensors")),
    ("mixed", "global_l2.safetensors", dict(sparsity=0.6, scope="global", method="l2")),
    ("mixed", "nm24.safetensors", dict(pattern="2:4")),
    ("mixed", "nm24_bitmask.safetensors", dict(pattern="2:4", format="sparse-24-bitmask")),
    ("mixed", "bitmask_global.safetensors", dict(sparsity=0.5, scope="global", format="sparse-bitmask")),
    ("mixed", "rows.safetensors", dict(sparsity=0.5, pattern="row")),
    ("bf16", "bf16_layer_l2.safetensors", dict(sparsity=0.5, method="l2", masks_out="bf16_layer_l2.masks.safetensors")),
    ("bf16", "bf16_global_l1.safetensors", dict(sparsity=0.5, scope="global")),
    ("bf16", "bf16_global_l2.safetensors", dict(sparsity=0.45, scope="global", method="l2")),
    ("bf16_sharded", "bf16_sharded_global", dict(sparsity=0.5, scope="global", masks_out="sharded.masks.safetensors")),
    ("f32", "f32_layer_l1.safetensors", dict(sparsity=0.3)),
    ("f32", "f32_global_l2.safetensors", dict(sparsity=0.7, scope="global", method="l2")),
    ("f32", "f32_global_all.safetensors", dict(sparsity=1.0, scope="global")),
    ("f32_npz", "f32_global.npz", dict(sparsity=0.5, scope="global")),
]


def make_inputs(root: Path) -> dict[str, Path]:
    """The inputs, written byte-identically in every run (one metadata key: safetensors orders
    several in a per-process random order)."""
    f32 = f32_model()
    np.savez(root / "f32.npz", **f32)
    meta = {"format": "pt"}
    return {
        "mixed": write_single(root / "mixed.safetensors", model_tensors(0), meta),
        "bf16": write_single(root / "bf16.safetensors", bf16_model(), meta),
        "bf16_sharded": write_sharded(root / "bf16_sharded", bf16_model(), shards=2),
        "f32": write_single(root / "f32.safetensors", f32, meta),
        "f32_npz": root / "f32.npz",
    }


def digests() -> dict[str, str]:
    """name of every output file -> its SHA-256 (hex)."""
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        inputs = make_inputs(root)
        out = root / "out"
        out.mkdir()
        for source, name, settings in CASES:
            settings = dict(settings)
            if "masks_out" in settings:
                settings["masks_out"] = out / settings["masks_out"]
            pp.prune_checkpoint(inputs[source], out / name, **settings)
        for path in sorted(p for p in out.rglob("*") if p.is_file()):
            result[str(path.relative_to(out))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return result


if __name__ == "__main__":
    print(json.dumps(digests(), indent=1, sort_keys=True))

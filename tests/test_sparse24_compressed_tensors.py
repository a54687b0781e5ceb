"""compressed-tensors formats (sparse-24-bitmask, sparse-bitmask) against the compressed-tensors
package's own compressors (releases <= 0.14 ship them; later ones keep only the loaders)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sparse24_data import sparse_weight  # noqa: E402

from pruneplug import compressed_tensors as ct  # noqa: E402
from pruneplug.errors import InvalidArgumentError, NotNMSparseError, ShapeError  # noqa: E402
from pruneplug.sparse24 import compress_24  # noqa: E402


def _package():
    pytest.importorskip("torch", reason="compressed-tensors needs PyTorch")
    pytest.importorskip("compressed_tensors", reason="pip install 'compressed-tensors>=0.9,<0.15' (test extra) to compare with the package")
    try:
        from compressed_tensors.compressors.sparse_compressors import sparse_24_bitmask, sparse_bitmask
    except ImportError as exc:
        pytest.skip(f"this compressed-tensors release has no sparse compressors (removed after 0.14): {exc}")
    return sparse_24_bitmask, sparse_bitmask


def _torch(a: np.ndarray):
    import torch

    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _np(t) -> np.ndarray:
    import torch

    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _exactly_two(shape, dtype, seed):
    """2:4 weights with exactly two nonzeros of distinct magnitudes per group: the package's topk mask
    is then unambiguous."""
    rng = np.random.default_rng(seed)
    from pruneplug.testing import np_dtype

    rows, cols = shape
    mags = np.stack([rng.permutation(np.arange(1, 5)) for _ in range(rows * cols // 4)]).reshape(rows, cols // 4, 4)
    keep = mags >= 3
    vals = (mags * 0.25 * rng.choice([-1, 1], mags.shape)) * keep
    return np.ascontiguousarray(vals.reshape(shape).astype(np_dtype(dtype)))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_sparse_24_bitmask_equals_package(dtype):
    s24, _ = _package()
    w = _exactly_two((64, 96), dtype, seed=1)
    ours = ct.encode("model.layers.0.mlp.down_proj.weight", w, "sparse-24-bitmask")
    theirs = s24.Sparse24BitMaskTensor.from_dense(_torch(w)).dict("model.layers.0.mlp.down_proj.weight")
    assert sorted(ours) == sorted(theirs) == [f"model.layers.0.mlp.down_proj.{k}" for k in ("bitmask", "compressed", "shape")]
    for key, t in theirs.items():
        a, b = ours[key], _np(t)
        assert a.dtype == b.dtype and a.shape == b.shape, key
        assert a.tobytes() == np.ascontiguousarray(b).tobytes(), key
    # their reader decodes ours and ours decodes theirs
    dec = s24.Sparse24BitMaskTensor.from_compressed_data(
        shape=_torch(ours[f"model.layers.0.mlp.down_proj.shape"]), compressed=_torch(ours["model.layers.0.mlp.down_proj.compressed"]),
        bitmask=_torch(ours["model.layers.0.mlp.down_proj.bitmask"])).decompress()
    assert np.array_equal(_np(dec), w)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_sparse_24_bitmask_fewer_than_two_nonzeros(dtype):
    """Groups with 0 or 1 nonzeros: the padding differs from torch.topk's arbitrary choice, but each
    side's reader decodes the other's tensors to the same weight, and our values are the CUTLASS values."""
    s24, _ = _package()
    w = sparse_weight((32, 64), dtype if dtype != "float32" else "float16", seed=2, nan=False).astype(dtype)
    w = np.where(w == 0, np.zeros((), w.dtype), w)
    ours = ct.encode("fc.weight", w, "sparse-24-bitmask")
    theirs = s24.Sparse24BitMaskTensor.from_dense(_torch(w)).dict("fc.weight")
    assert np.array_equal(ct.decode("fc.weight", {k: _np(v) for k, v in theirs.items()}, "sparse-24-bitmask"), w)
    dec = s24.sparse24_bitmask_decompress(_torch(ours["fc.compressed"]), _torch(ours["fc.bitmask"]), [32, 64])
    assert np.array_equal(_np(dec), w)
    if dtype == "float16":
        assert ours["fc.compressed"].tobytes() == compress_24(w, "ptx", backend="numpy").values.tobytes()


@pytest.mark.parametrize("shape", [(64, 100), (7, 13), (33,)])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "int8"])
def test_sparse_bitmask_equals_package(shape, dtype):
    _, sb = _package()
    from pruneplug.testing import np_dtype

    rng = np.random.default_rng(3)
    w = (rng.standard_normal(shape) * 4).astype(np_dtype(dtype))
    w[rng.random(shape) < 0.6] = 0
    ours = ct.encode("model.embed.weight", w, "sparse-bitmask")
    theirs = sb.BitmaskTensor.from_dense(_torch(w)).dict("model.embed")
    assert sorted(ours) == sorted(theirs)
    for key, t in theirs.items():
        a, b = ours[key], _np(t)
        assert a.dtype == b.dtype and a.shape == b.shape, (key, a.dtype, b.dtype, a.shape, b.shape)
        assert a.tobytes() == np.ascontiguousarray(b).tobytes(), key
    assert np.array_equal(ct.decode("model.embed.weight", ours, "sparse-bitmask"), w)


def test_bit_order_is_little():
    w = np.zeros((1, 16), np.float32)
    w[0, [0, 9]] = 1
    t = ct.encode("x", w, "sparse-bitmask")
    assert t["x.bitmask"].tolist() == [[0b00000001, 0b00000010]]


def test_sparsity_config_matches_package():
    pytest.importorskip("compressed_tensors", reason="pip install compressed-tensors to compare configs")
    from compressed_tensors.config import SparsityCompressionConfig

    for fmt in ct.FORMATS:
        ours = ct.sparsity_config(fmt, global_sparsity=0.5, targets=["Linear"], ignore=["lm_head"])
        theirs = SparsityCompressionConfig.load_from_registry(fmt, global_sparsity=0.5, targets=["Linear"],
                                                              ignore=["lm_head"]).model_dump()
        assert json.dumps(ours, sort_keys=True) == json.dumps(theirs, sort_keys=True)
    block = ct.quantization_config(ct.sparsity_config("sparse-24-bitmask"))
    assert block["quant_method"] == "compressed-tensors" and block["sparsity_config"]["sparsity_structure"] == "2:4"


def test_errors():
    with pytest.raises(InvalidArgumentError, match="fmt='marlin-24' is not supported"):
        ct.encode("w", np.zeros((4, 4)), "marlin-24")
    with pytest.raises(ShapeError, match="2-D weights only"):
        ct.encode("w", np.zeros(8), "sparse-24-bitmask")
    with pytest.raises(NotNMSparseError, match="row 0, group 1"):
        ct.encode("w", np.array([[1, 0, 0, 1, 1, 1, 1, 0]], np.float32), "sparse-24-bitmask")
    t = ct.encode("w", np.eye(8, dtype=np.float32), "sparse-bitmask")
    t["w.compressed"] = t["w.compressed"][:-1]
    with pytest.raises(ShapeError, match="sets 8 positions but w.compressed holds 7"):
        ct.decode("w", t, "sparse-bitmask")
    with pytest.raises(InvalidArgumentError, match="lack"):
        ct.decode("w", {}, "sparse-bitmask")

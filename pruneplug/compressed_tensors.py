"""compressed-tensors sparse formats (legacy: vLLM read them up to 0.19.0, compressed-tensors up to 0.14).

Two formats, written and read with the key names, dtypes and bit order of the ``compressed-tensors``
package's sparse compressors (``compressed_tensors/compressors/sparse_compressors/`` in releases up
to 0.14; later releases keep the format names and the loaders but dropped the compressors):

``"sparse-bitmask"`` (any sparsity), for a weight named ``<p>.weight`` (or ``<p>``):

* ``<p>.shape``: int64, 1-D, the dense shape;
* ``<p>.compressed``: 1-D, the weight's dtype, the nonzero values in C order;
* ``<p>.bitmask``: uint8, ``numpy.packbits(w != 0, axis=-1, bitorder="little")``, so
  ``(R, ceil(C/8))`` for a 2-D weight: bit ``c % 8`` of byte ``c // 8`` is column ``c``;
* ``<p>.row_offsets``: int64, where each row's values start in ``compressed``
  (``cumsum(row_counts, axis=0) - row_counts``).

``"sparse-24-bitmask"`` (2-D weights that are 2:4 sparse along the last axis):

* ``<p>.shape``: int64, shape ``(2, 1)``;
* ``<p>.compressed``: ``(R, C/2)``, the weight's dtype: the two kept values of every group of 4, in
  column order;
* ``<p>.bitmask``: uint8 ``(R, ceil(C/8))``, the kept positions, packed as above.

Exactly two positions of every group are kept. Groups with fewer than two nonzeros are padded the
way PyTorch/CUTLASS pads them (see ``docs/sparse24.md``), so ``<p>.compressed`` is byte-identical to
the values of :func:`pruneplug.compress_24`. (compressed-tensors picks the padding with
``torch.topk``, whose choice among equal magnitudes is unspecified; readers only need the bitmask
and the values to agree.) A group with three or four nonzeros is a ``NotNMSparseError``: prune
first (``pruneplug.prune(w, pattern="2:4")``).

Example::

    >>> import numpy as np
    >>> from pruneplug import compressed_tensors as ct
    >>> w = np.array([[0.0, 1.5, 0.0, -2.0, 3.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    >>> t = ct.encode("model.fc.weight", w, "sparse-24-bitmask")
    >>> sorted(t)
    ['model.fc.bitmask', 'model.fc.compressed', 'model.fc.shape']
    >>> t["model.fc.compressed"], t["model.fc.bitmask"]
    (array([[ 1.5, -2. ,  3. ,  0. ]], dtype=float32), array([[90]], dtype=uint8))
    >>> np.array_equal(ct.decode("model.fc.weight", t, "sparse-24-bitmask"), w)
    True
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

from pruneplug.arrays import adapt, dtype_name, to_numpy
from pruneplug.errors import InvalidArgumentError, ShapeError, UnsupportedArrayError
from pruneplug.sparse24 import kept_pair_arrays, not_nm_sparse_error

SPARSE_BITMASK = "sparse-bitmask"
SPARSE_24_BITMASK = "sparse-24-bitmask"
FORMATS = (SPARSE_24_BITMASK, SPARSE_BITMASK)

#: The tensors each format writes per weight, in the package's order.
PARAM_NAMES = {
    SPARSE_BITMASK: ("shape", "compressed", "bitmask", "row_offsets"),
    SPARSE_24_BITMASK: ("shape", "compressed", "bitmask"),
}

def _check_fmt(fmt: Any) -> str:
    if fmt not in FORMATS:
        raise InvalidArgumentError(f"fmt={fmt!r} is not supported; expected one of {list(FORMATS)}")
    return fmt


def prefix_of(name: str) -> str:
    """The key prefix of weight ``name``: the name without a trailing ``.weight``."""
    if not isinstance(name, str) or not name:
        raise InvalidArgumentError(f"name={name!r} must be a non-empty string such as 'model.fc.weight'")
    return name[: -len(".weight")] if name.endswith(".weight") else name


def _as_numpy(array: Any, argname: str) -> np.ndarray:
    adapted = adapt(array, argname)
    if adapted.array_type != "numpy":
        return np.ascontiguousarray(to_numpy(adapted.array))
    return np.ascontiguousarray(adapted.array)


def _nonzero(array: np.ndarray) -> np.ndarray:
    """``array != 0`` (``-0.0`` is zero, NaN is nonzero) for every dtype, bfloat16 included."""
    return array != np.zeros((), dtype=array.dtype)


def keep_mask_24(array: np.ndarray) -> np.ndarray:
    """The ``sparse-24-bitmask`` keep-mask of a 2-D array: exactly 2 of every 4 along the last axis.

    Raises ``NotNMSparseError`` naming the first group with 3 or 4 nonzeros.
    """
    rows, cols = array.shape
    nz = _nonzero(array).reshape(rows, cols // 4, 4)
    pattern = (nz * np.array([1, 2, 4, 8], dtype=np.uint8)).sum(axis=2, dtype=np.uint8)
    counts = nz.sum(axis=2)
    bad = np.argwhere(counts > 2)
    if bad.size:
        r, g = (int(x) for x in bad[0])
        raise not_nm_sparse_error(2, 4, r, g, int(counts[r, g]), int(bad.shape[0]))
    idx0, idx1 = (table.astype(np.intp)[pattern] for table in kept_pair_arrays())
    keep = np.zeros((rows, cols // 4, 4), dtype=bool)
    np.put_along_axis(keep, idx0[..., None], True, axis=2)
    np.put_along_axis(keep, idx1[..., None], True, axis=2)
    return keep.reshape(rows, cols)


def encode(name: str, array: Any, fmt: str) -> dict[str, np.ndarray]:
    """The safetensors tensors of weight ``name`` in compressed-tensors format ``fmt``.

    ``array`` is a NumPy array or a CPU/CUDA tensor or CuPy array (copied to the host); the result
    maps ``<prefix>.<param>`` to C-contiguous NumPy arrays (bfloat16 as ``ml_dtypes.bfloat16``).
    ``sparse-24-bitmask`` needs a 2-D weight, 2:4 sparse along the last axis, with a column count
    that is a multiple of 4.
    """
    fmt = _check_fmt(fmt)
    prefix = prefix_of(name)
    w = _as_numpy(array, "array")
    if w.dtype.kind not in "fiub" and dtype_name(w) != "bfloat16":
        raise UnsupportedArrayError(f"array: dtype {dtype_name(w)} cannot be stored in {fmt}")
    if fmt == SPARSE_24_BITMASK:
        if w.ndim != 2:
            raise ShapeError(f"{fmt} stores 2-D weights only; {name!r} has shape {tuple(w.shape)}")
        if w.shape[1] % 4:
            raise ShapeError(
                f"{fmt}: {name!r} has {w.shape[1]} columns, not a multiple of 4 (groups of 4 along the last axis)"
            )
        keep = keep_mask_24(w)
        return {
            f"{prefix}.shape": np.array(w.shape, dtype=np.int64).reshape(-1, 1),
            f"{prefix}.compressed": np.ascontiguousarray(w[keep].reshape(w.shape[0], w.shape[1] // 2)),
            f"{prefix}.bitmask": np.packbits(keep, axis=-1, bitorder="little"),
        }
    if w.ndim == 0:
        raise ShapeError(f"{fmt} needs an array with at least one dimension; {name!r} is 0-d")
    keep = _nonzero(w)
    row_counts = keep.sum(axis=-1, dtype=np.int64)
    row_offsets = (np.cumsum(row_counts, axis=0) - row_counts) if row_counts.ndim else np.zeros((), np.int64)
    return {
        f"{prefix}.shape": np.array(w.shape, dtype=np.int64),
        f"{prefix}.compressed": np.ascontiguousarray(w[keep]),
        f"{prefix}.bitmask": np.packbits(keep, axis=-1, bitorder="little"),
        f"{prefix}.row_offsets": np.array(row_offsets, dtype=np.int64, order="C"),  # 0-d for 1-D weights
    }


def decode(name: str, tensors: Mapping[str, Any], fmt: str) -> np.ndarray:
    """The dense weight ``name`` from its compressed-tensors tensors (a mapping that holds at least
    ``<prefix>.shape``, ``<prefix>.compressed`` and ``<prefix>.bitmask``; other keys are ignored).
    Tensors may be NumPy arrays or PyTorch tensors. Positions the bitmask clears are ``+0.0``."""
    fmt = _check_fmt(fmt)
    prefix = prefix_of(name)
    needed = ("shape", "compressed", "bitmask")
    missing = [f"{prefix}.{p}" for p in needed if f"{prefix}.{p}" not in tensors]
    if missing:
        raise InvalidArgumentError(f"{fmt}: tensors for {name!r} lack {missing}")
    shape = tuple(int(x) for x in _as_numpy(tensors[f"{prefix}.shape"], f"{prefix}.shape").ravel())
    values = _as_numpy(tensors[f"{prefix}.compressed"], f"{prefix}.compressed").ravel()
    bitmask = _as_numpy(tensors[f"{prefix}.bitmask"], f"{prefix}.bitmask")
    if bitmask.dtype != np.uint8:
        raise InvalidArgumentError(f"{prefix}.bitmask: dtype {dtype_name(bitmask)}, expected uint8")
    if not shape or any(s < 0 for s in shape):
        raise ShapeError(f"{prefix}.shape holds {shape}, not a dense shape")
    if fmt == SPARSE_24_BITMASK and len(shape) != 2:
        raise ShapeError(f"{fmt}: {prefix}.shape holds {shape}; the format stores 2-D weights only")
    expected_mask = shape[:-1] + ((shape[-1] + 7) // 8,)
    if tuple(bitmask.shape) != expected_mask:
        raise ShapeError(f"{prefix}.bitmask has shape {tuple(bitmask.shape)}; a dense shape {shape} needs {expected_mask}")
    keep = np.unpackbits(bitmask, axis=-1, count=shape[-1], bitorder="little").astype(bool)
    kept = int(keep.sum())
    if kept != values.size:
        raise ShapeError(f"{prefix}.bitmask sets {kept} positions but {prefix}.compressed holds {values.size} values")
    dense = np.zeros(shape, dtype=values.dtype)
    dense[keep] = values
    return dense


def sparsity_config(
    fmt: str,
    *,
    global_sparsity: float = 0.0,
    sparsity_structure: str | None = None,
    targets: Iterable[str] | None = None,
    ignore: Iterable[str] | None = None,
) -> dict[str, Any]:
    """The ``quantization_config.sparsity_config`` block of ``config.json`` (the fields of the
    package's ``SparsityCompressionConfig``). ``sparsity_structure`` defaults to ``"2:4"`` for
    ``sparse-24-bitmask`` and ``"unstructured"`` otherwise."""
    fmt = _check_fmt(fmt)
    if sparsity_structure is None:
        sparsity_structure = "2:4" if fmt == SPARSE_24_BITMASK else "unstructured"
    if fmt == SPARSE_24_BITMASK and sparsity_structure != "2:4":
        raise InvalidArgumentError(f"{fmt} needs sparsity_structure='2:4', got {sparsity_structure!r}")
    return {
        "format": fmt,
        "global_sparsity": float(global_sparsity),
        "ignore": list(ignore) if ignore is not None else None,
        # the package's pydantic model dumps this internal field too; real checkpoints carry it
        "registry_requires_subclass": False,
        "sparsity_structure": sparsity_structure,
        "targets": list(targets) if targets is not None else None,
    }


def quantization_config(sparsity: Mapping[str, Any], *, version: str = "0.14.0") -> dict[str, Any]:
    """The whole ``quantization_config`` block for a sparse-only model:
    ``{"quant_method": "compressed-tensors", "version": ..., "sparsity_config": sparsity,
    "transform_config": {}}``; put it at ``config["quantization_config"]``."""
    return {
        "quant_method": "compressed-tensors",
        "sparsity_config": dict(sparsity),
        "transform_config": {},
        "version": version,
    }


__all__ = [
    "FORMATS",
    "PARAM_NAMES",
    "SPARSE_24_BITMASK",
    "SPARSE_BITMASK",
    "decode",
    "encode",
    "keep_mask_24",
    "prefix_of",
    "quantization_config",
    "sparsity_config",
]

"""2:4 compressed weights: the kept values plus the metadata NVIDIA's sparse tensor cores read.

A 2-D weight ``w`` of shape ``(m, k)`` that is 2:4 sparse along its last axis (at most 2 nonzeros in
every group of 4 consecutive columns; 1:2 for float32, which the hardware runs as tf32) is stored as

* ``values``: ``(m, k/2)``, ``w``'s dtype: the two kept elements of every group, in column order;
* ``metadata``: where they came from, one 4-bit nibble ``idx0 | idx1 << 2`` (``idx0 < idx1``, the
  ``::ordered_metadata`` form) per group of 4, packed LSB first (group ``j`` of a word in bits
  ``4j..4j+3``) into ``int16`` words (float16/bfloat16: 16 columns a word; float32: 8 columns a
  word, a pair encoded as nibble 0x4 = keep element 0, 0xE = keep element 1) or ``int32`` words
  (int8: 32 columns a word).

Groups with fewer than two nonzeros are padded as PyTorch pads them; the padded slot holds the
element found there (a zero of either sign):

====================================  ======  ==============
nonzeros in the group (e0 e1 e2 e3)   nibble  kept positions
====================================  ======  ==============
0000, 0001, 0010                      0xE     2, 3
0100                                  0x9     1, 2
1000                                  0x8     0, 2
====================================  ======  ==============

``-0.0`` counts as zero and NaN as nonzero. A group with three or four nonzeros is a
:class:`~pruneplug.errors.NotNMSparseError` naming the first such row and group (PyTorch silently
drops the extra values; pruneplug does not): prune first, or call :func:`prune_24`.

Layouts
-------
``"ptx"``: the logical metadata, row-major, shape ``(m, k/16)`` (``(m, k/8)`` for float32,
``(m, k/32)`` int32 for int8); ``k`` must be a multiple of 16 (8 for float32, 32 for int8).

``"cutlass"``: the same words reordered as CUTLASS's ``reorder_meta`` into
``ColumnMajorInterleaved<2>``, which is what ``torch.sparse.SparseSemiStructuredTensorCUTLASS``
holds: values and metadata are byte-identical to PyTorch's reference
``torch.sparse._semi_structured_conversions.sparse_semi_structured_from_dense_cutlass``. For logical
word ``(r, c)`` of an ``(m, ncols)`` metadata matrix, with ``(group, interweave) = (32, 4)`` for int16
words and ``(16, 2)`` for int32 words::

    dr = r // group * group + (r % 8) * interweave + (r % group) // 8
    dc = c
    if dr % 2 == 0 and dc % 2 == 1: dr, dc = dr + 1, dc - 1
    elif dr % 2 == 1 and dc % 2 == 0: dr, dc = dr - 1, dc + 1
    flat offset = (dc // 2) * (2 * m) + dr * 2 + dc % 2

Its shape rules: ``m`` a multiple of 32 (16 for int8) and an even number of metadata columns, so
``k`` a multiple of 32 for float16/bfloat16, of 16 for float32 and of 64 for int8.

Example::

    >>> import numpy as np
    >>> from pruneplug.sparse24 import compress_24, decompress_24
    >>> w = np.tile(np.array([0, 0, 1, 1], dtype=np.float16), (128, 32))
    >>> sw = compress_24(w)
    >>> sw
    SparseWeight24(shape=(128, 128), dtype='float16', pattern='2:4', layout='cutlass', values=(128, 64) float16, metadata=(128, 8) int16, backend='...')
    >>> hex(int(sw.metadata.view(np.uint16)[0, 0])), bool((sw.metadata == -4370).all())
    ('0xeeee', True)
    >>> np.array_equal(decompress_24(sw), w)
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pruneplug.api import prune
from pruneplug.arrays import adapt, contiguous, dtype_name
from pruneplug.errors import (
    BackendUnavailableError,
    InvalidArgumentError,
    NotNMSparseError,
    ShapeError,
    UnsupportedDtypeError,
)
from pruneplug.registry import get_registry
from pruneplug.validation import check_method

LAYOUTS = ("cutlass", "ptx")
DTYPES = ("float16", "bfloat16", "float32", "int8")
#: Nibbles a 2:4 group may carry (ordered metadata), and the two a 1:2 (float32) pair may carry.
VALID_NIBBLES_24 = frozenset({0x4, 0x8, 0x9, 0xC, 0xD, 0xE})
VALID_NIBBLES_12 = frozenset({0x4, 0xE})


@dataclass(frozen=True)
class Format24:
    """How a dtype is packed: ``m`` elements a group (4, or 2 for float32 1:2), ``columns_per_word``
    dense columns a metadata word, the metadata dtype, and CUTLASS's (group, interweave)."""

    dtype: str
    m: int
    columns_per_word: int
    meta_dtype: str
    row_group: int
    interweave: int

    @property
    def pattern(self) -> str:
        return "1:2" if self.m == 2 else "2:4"

    @property
    def groups_per_word(self) -> int:
        return self.columns_per_word // self.m

    @property
    def valid_nibbles(self) -> frozenset:
        return VALID_NIBBLES_12 if self.m == 2 else VALID_NIBBLES_24


_FORMATS = {
    "float16": Format24("float16", 4, 16, "int16", 32, 4),
    "bfloat16": Format24("bfloat16", 4, 16, "int16", 32, 4),
    "float32": Format24("float32", 2, 8, "int16", 32, 4),
    "int8": Format24("int8", 4, 32, "int32", 16, 2),
}


def format_of(dtype: str) -> Format24:
    """The :class:`Format24` of a dtype name; ``UnsupportedDtypeError`` for other dtypes."""
    if dtype not in _FORMATS:
        raise UnsupportedDtypeError(
            f"weights: dtype {dtype} is not supported for 2:4 compression; expected one of {list(DTYPES)}"
        )
    return _FORMATS[dtype]


def metadata_shape(shape: tuple[int, int], dtype: str) -> tuple[int, int]:
    """Shape of the metadata of an ``(m, k)`` weight (the same in both layouts)."""
    fmt = format_of(dtype)
    return int(shape[0]), int(shape[1]) // fmt.columns_per_word


def check_layout(layout: Any) -> str:
    if layout not in LAYOUTS:
        raise InvalidArgumentError(f"layout={layout!r} is not supported; expected 'cutlass' or 'ptx'")
    return layout


def check_shape(shape: tuple, dtype: str, layout: str, what: str = "weights") -> None:
    """Raise ``ShapeError`` naming the rule when an ``(m, k)`` shape cannot be stored in ``layout``."""
    fmt = format_of(dtype)
    if len(shape) != 2:
        raise ShapeError(f"{what}: 2:4 compression needs a 2-D weight (out, in), got shape {tuple(shape)}")
    rows, cols = (int(s) for s in shape)
    if cols % fmt.columns_per_word:
        raise ShapeError(
            f"{what}: shape {(rows, cols)}: the column count {cols} must be a multiple of "
            f"{fmt.columns_per_word} for {dtype} (one {fmt.meta_dtype} metadata word covers "
            f"{fmt.columns_per_word} columns)"
        )
    if layout == "cutlass":
        if rows % fmt.row_group:
            raise ShapeError(
                f"{what}: shape {(rows, cols)}: layout='cutlass' needs the row count to be a multiple of "
                f"{fmt.row_group} for {dtype}, got {rows}"
            )
        ncols = cols // fmt.columns_per_word
        if ncols % 2:
            raise ShapeError(
                f"{what}: shape {(rows, cols)}: layout='cutlass' needs an even metadata column count, got "
                f"{cols}/{fmt.columns_per_word} = {ncols}; the column count must be a multiple of "
                f"{2 * fmt.columns_per_word} for {dtype}"
            )


def cutlass_offsets(rows: int, ncols: int, meta_dtype: str) -> np.ndarray:
    """Flat offsets (int64, ``(rows, ncols)``) where logical metadata word ``(r, c)`` lands in the
    CUTLASS-reordered buffer (the formula in this module's docstring)."""
    group, interweave = (32, 4) if np.dtype(meta_dtype).itemsize == 2 else (16, 2)
    r = np.arange(rows, dtype=np.int64)[:, None]
    c = np.arange(ncols, dtype=np.int64)[None, :]
    dr = r // group * group + (r % 8) * interweave + (r % group) // 8
    dr, dc = np.broadcast_arrays(dr, c)
    topright = ((dr % 2 == 0) & (dc % 2 == 1)).astype(np.int64)
    bottomleft = ((dr % 2 == 1) & (dc % 2 == 0)).astype(np.int64)
    dr = dr + topright - bottomleft
    dc = dc - topright + bottomleft
    return (dc // 2) * (2 * rows) + dr * 2 + dc % 2


def _kept_pair(pattern: int) -> tuple[int, int] | None:
    nonzero = [i for i in range(4) if pattern >> i & 1]
    if len(nonzero) == 2:
        return nonzero[0], nonzero[1]
    if len(nonzero) > 2:
        return None
    # PyTorch's padding: 0000/0001/0010 -> (2,3), 0100 -> (1,2), 1000 -> (0,2) (e0 first)
    return {0: (2, 3), 1: (0, 2), 2: (1, 2), 4: (2, 3), 8: (2, 3)}[pattern]


#: The two kept positions ``(idx0, idx1)`` of a group of 4 by its nonzero pattern (bit ``i`` set:
#: element ``i`` is nonzero), with PyTorch's padding for fewer than two nonzeros (the table in the
#: module docstring); ``None`` for 3 or 4 nonzeros. The one home of this table: the reference
#: backend and the compressed-tensors ``sparse-24-bitmask`` format read it.
KEPT_PAIRS: tuple[tuple[int, int] | None, ...] = tuple(_kept_pair(p) for p in range(16))


def kept_pair_arrays() -> tuple[np.ndarray, np.ndarray]:
    """:data:`KEPT_PAIRS` as two uint8 lookup arrays ``(idx0, idx1)`` indexed by pattern; patterns
    with 3 or 4 nonzeros map to ``(0, 1)``, as PyTorch truncates them (callers reject them first)."""
    pairs = [pair or (0, 1) for pair in KEPT_PAIRS]
    return np.array([p[0] for p in pairs], np.uint8), np.array([p[1] for p in pairs], np.uint8)


def not_nm_sparse_error(n: int, m: int, row: int, group: int, count: int,
                        bad_groups: int | None = None) -> NotNMSparseError:
    """The error for a group of ``m`` along the last axis with more than ``n`` nonzeros (one message
    for every backend and format)."""
    first = group * m
    more = f"; {bad_groups} group(s) in all" if bad_groups is not None else ""
    return NotNMSparseError(
        f"weights are not {n}:{m} sparse along the last axis: row {row}, group {group} "
        f"(columns {first}..{first + m - 1}) has {count} nonzeros, at most {n} allowed{more}; "
        f"prune first (pruneplug.prune_24 or pruneplug.prune(w, pattern='{n}:{m}'))"
    )


def not_sparse_error(dtype: str, row: int, group: int, count: int, bad_groups: int | None = None) -> NotNMSparseError:
    """The error every backend raises for a group with too many nonzeros for ``dtype``'s format."""
    fmt = format_of(dtype)
    return not_nm_sparse_error(fmt.m // 2, fmt.m, row, group, count, bad_groups)


def invalid_nibble_error(dtype: str, layout: str, row: int, group: int, nibble: int) -> InvalidArgumentError:
    """The error every backend raises for an invalid metadata nibble (row and group are logical:
    the dense row, and the group index along it)."""
    fmt = format_of(dtype)
    valid = ", ".join(f"0x{v:X}" for v in sorted(fmt.valid_nibbles))
    return InvalidArgumentError(
        f"metadata ({layout} layout): invalid nibble 0x{nibble:X} for row {row}, group {group} "
        f"(dense columns {group * fmt.m}..{group * fmt.m + fmt.m - 1}); valid {dtype} nibbles are {valid}"
    )


# ---------------------------------------------------------------------------------------------
# the result type
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class SparseWeight24:
    """A compressed 2:4 (1:2 for float32) weight: ``values`` ``(m, k/2)``, ``metadata`` (int16 or
    int32 words in ``layout``), the dense ``shape`` ``(m, k)`` and ``dtype`` name.

    ``values`` and ``metadata`` have the input's array type (NumPy, CuPy, or PyTorch tensors when a
    tensor was compressed). ``backend`` says which backend produced them.
    """

    values: Any
    metadata: Any
    shape: tuple
    dtype: str
    layout: str
    backend: str | None = None

    @property
    def pattern(self) -> str:
        return format_of(self.dtype).pattern

    @property
    def nbytes(self) -> int:
        """Bytes of values plus metadata."""
        v, m = adapt(self.values, "values").array, adapt(self.metadata, "metadata").array
        return int(v.nbytes) + int(m.nbytes)

    def decompress(self, *, backend: str | None = None) -> Any:
        """The dense weight (see :func:`decompress_24`)."""
        return decompress_24(self, backend=backend)

    def __repr__(self) -> str:
        def describe(a: Any) -> str:
            arr = adapt(a, "array").array
            return f"{tuple(int(s) for s in arr.shape)} {dtype_name(arr)}"

        return (
            f"SparseWeight24(shape={tuple(self.shape)}, dtype={self.dtype!r}, pattern={self.pattern!r}, "
            f"layout={self.layout!r}, values={describe(self.values)}, metadata={describe(self.metadata)}, "
            f"backend={self.backend!r})"
        )


# ---------------------------------------------------------------------------------------------
# public functions
# ---------------------------------------------------------------------------------------------
def _weights(w: Any, layout: str):
    adapted = adapt(w, "weights")
    array = adapted.array
    dtype = dtype_name(array)
    format_of(dtype)
    check_shape(tuple(array.shape), dtype, layout)
    return adapted, contiguous(array), dtype


def compress_24(w: Any, layout: str = "cutlass", *, backend: str | None = None) -> SparseWeight24:
    """Compress a 2-D weight that is already 2:4 sparse along its last axis (1:2 for float32).

    ``w``: NumPy array, PyTorch CPU tensor (CuPy arrays and CUDA tensors go to a backend that takes
    CuPy arrays) of dtype float16, bfloat16, float32 or int8. Raises ``ShapeError`` for shapes the
    layout cannot hold, ``UnsupportedDtypeError`` for other dtypes and ``NotNMSparseError`` naming
    the first group with too many nonzeros.

    Example::

        >>> import numpy as np
        >>> from pruneplug.sparse24 import compress_24
        >>> w = np.zeros((32, 32), dtype=np.float16); w[:, 1] = 3; w[:, 6] = -1
        >>> sw = compress_24(w, layout="ptx")
        >>> sw.values[0, :4], hex(int(sw.metadata.view(np.uint16)[0, 0]))
        (array([ 3.,  0., -1.,  0.], dtype=float16), '0xeee9')
    """
    layout = check_layout(layout)
    adapted, array, dtype = _weights(w, layout)
    registry = get_registry().snapshot()  # select and call on the same backends
    name = registry.select(backend, array_type=adapted.array_type, dtype=dtype, operation="compress_24")
    values, metadata = registry.call(name, "compress_24", weights=array, layout=layout)
    return SparseWeight24(adapted.wrap(values), adapted.wrap(metadata), tuple(int(s) for s in array.shape),
                          dtype, layout, name)


def prune_24(w: Any, layout: str = "cutlass", method: str = "l1", *, backend: str | None = None) -> SparseWeight24:
    """Prune ``w`` by magnitude to 2:4 along its last axis (1:2 for float32) and compress it.

    The pruning is exactly ``pruneplug.prune(w, pattern="2:4", method=method)`` (``"1:2"`` for
    float32): in every group keep the largest magnitudes, ties keep the lower index; NaN or Inf
    weights are a ``NonFiniteError``. int8 weights are pruned by the integer's absolute value
    (``|-128| = 128``). ``w`` itself is not modified.

    Example::

        >>> import numpy as np
        >>> from pruneplug.sparse24 import decompress_24, prune_24
        >>> w = np.tile(np.array([0.5, -2.0, 0.1, 3.0], dtype=np.float16), (32, 8))
        >>> sw = prune_24(w)
        >>> sw.values[0, :2], decompress_24(sw)[0, :4]
        (array([-2.,  3.], dtype=float16), array([ 0., -2.,  0.,  3.], dtype=float16))
    """
    layout = check_layout(layout)
    transform = check_method(method)
    adapted, array, dtype = _weights(w, layout)
    registry = get_registry().snapshot()  # select and call on the same backends
    name = registry.select(backend, array_type=adapted.array_type, dtype=dtype, operation="compress_24")
    if registry.supports(name, "prune_compress_24"):
        values, metadata = registry.call(name, "prune_compress_24", weights=array, layout=layout, transform=transform)
    else:
        if dtype == "int8":
            raise BackendUnavailableError(
                f"backend={name!r} does not implement prune_compress_24, which pruning int8 weights needs"
            )
        pruned = array.copy(order="C")
        prune(pruned, pattern=format_of(dtype).pattern, method=method, backend=name, inplace=True)
        values, metadata = registry.call(name, "compress_24", weights=pruned, layout=layout)
    return SparseWeight24(adapted.wrap(values), adapted.wrap(metadata), tuple(int(s) for s in array.shape),
                          dtype, layout, name)


def _parts(sw: Any, values: Any, metadata: Any, shape: Any, dtype: Any, layout: Any):
    if sw is not None:
        values, metadata, shape, layout = sw.values, sw.metadata, sw.shape, sw.layout
        dtype = sw.dtype
    return values, metadata, shape, dtype, layout


def decompress_24(sw: SparseWeight24 | None = None, *, values: Any = None, metadata: Any = None,
                  shape: Any = None, layout: str | None = None, backend: str | None = None) -> Any:
    """The dense weight of a :class:`SparseWeight24` (or of explicit ``values``, ``metadata``,
    ``shape`` and ``layout``, e.g. tensors read from a checkpoint).

    Positions not kept are ``+0.0``; kept positions get their value's exact bits, so
    ``decompress_24(compress_24(w))`` equals ``w`` bit for bit except that a ``-0.0`` at a dropped
    position comes back as ``+0.0``. Raises ``UnsupportedDtypeError`` / ``ShapeError`` for values or
    metadata of the wrong dtype or shape and ``InvalidArgumentError`` naming the row and group of
    the first invalid nibble (0x0, 0x5, 0xA, 0xF; for float32 anything but 0x4 and 0xE).
    """
    if sw is not None and not isinstance(sw, SparseWeight24):
        raise InvalidArgumentError(f"sw: expected a SparseWeight24, got {type(sw).__name__}")
    if sw is None and any(x is None for x in (values, metadata, shape, layout)):
        raise InvalidArgumentError("decompress_24 needs a SparseWeight24, or values=, metadata=, shape= and layout=")
    vals, meta, shape, _, layout = _parts(sw, values, metadata, shape, None, layout)
    layout = check_layout(layout)
    v = adapt(vals, "values")
    md = adapt(meta, "metadata")
    dtype = dtype_name(v.array)
    if sw is not None and dtype != sw.dtype:
        raise UnsupportedDtypeError(f"values: dtype {dtype} does not match the SparseWeight24's dtype {sw.dtype}")
    fmt = format_of(dtype)
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise InvalidArgumentError(f"shape={shape!r} must be a pair of integers (rows, columns)") from None
    check_shape(shape, dtype, layout, what="shape")
    rows, cols = shape
    if tuple(v.array.shape) != (rows, cols // 2):
        raise ShapeError(f"values: shape {tuple(v.array.shape)} does not fit a {shape} weight; expected {(rows, cols // 2)}")
    if dtype_name(md.array) != fmt.meta_dtype:
        raise UnsupportedDtypeError(
            f"metadata: dtype {dtype_name(md.array)} is not valid for {dtype} values; expected {fmt.meta_dtype}"
        )
    expected = metadata_shape(shape, dtype)
    if tuple(md.array.shape) != expected:
        raise ShapeError(f"metadata: shape {tuple(md.array.shape)} does not fit a {shape} {dtype} weight; expected {expected}")
    if v.array_type != md.array_type:
        raise InvalidArgumentError(f"values are a {v.array_type} array but metadata a {md.array_type} array")
    registry = get_registry().snapshot()  # select and call on the same backends
    name = registry.select(backend, array_type=v.array_type, dtype=dtype, operation="decompress_24")
    dense = registry.call(name, "decompress_24", values=contiguous(v.array), metadata=contiguous(md.array),
                          shape=shape, layout=layout)
    return v.wrap(dense)


def is_24_compressible(w: Any, layout: str = "cutlass") -> bool:
    """True when :func:`compress_24` would accept ``w`` (dtype, shape and sparsity)."""
    try:
        adapted, array, dtype = _weights(w, check_layout(layout))
    except (ShapeError, UnsupportedDtypeError):
        return False
    fmt = format_of(dtype)
    nz = array != np.zeros((), dtype=array.dtype) if adapted.array_type == "numpy" else array != 0
    return bool(int(nz.reshape(array.shape[0], -1, fmt.m).sum(axis=2).max(initial=0)) <= fmt.m // 2)


__all__ = [
    "DTYPES",
    "LAYOUTS",
    "Format24",
    "SparseWeight24",
    "check_shape",
    "compress_24",
    "cutlass_offsets",
    "decompress_24",
    "format_of",
    "is_24_compressible",
    "metadata_shape",
    "prune_24",
]

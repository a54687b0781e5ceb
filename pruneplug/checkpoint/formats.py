"""Reading checkpoints: safetensors headers, sharded directories and ``.npz`` archives, opened as
:class:`Checkpoint` objects whose tensors (:class:`TensorRef`) are loaded only when asked.

Also the safetensors <-> NumPy dtype maps, and the chunked streaming every pass over a tensor uses.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from pruneplug.arrays import BITS_DTYPES
from pruneplug.selection import SAMPLE_RUN, sample_bits, sample_starts
from pruneplug.errors import CheckpointError, PrunePlugError


INDEX_NAME = "model.safetensors.index.json"
MODEL_FILE = "model.safetensors"  # the one weights file of a Hugging Face model directory
#: Checkpoint kinds that are directories: written as a directory, every other file copied.
DIRECTORY_KINDS = ("sharded", "directory")
CHUNK = 1 << 20  # elements per streaming chunk (about 8 MiB of keys)
_MAX_HEADER = 100 * 1024 * 1024

# safetensors dtype -> (NumPy dtype or None when NumPy cannot hold it, itemsize)
ST_DTYPES: dict[str, tuple[Any, int]] = {
    "F64": (np.float64, 8), "F32": (np.float32, 4), "F16": (np.float16, 2), "BF16": (None, 2),
    "I64": (np.int64, 8), "I32": (np.int32, 4), "I16": (np.int16, 2), "I8": (np.int8, 1),
    "U64": (np.uint64, 8), "U32": (np.uint32, 4), "U16": (np.uint16, 2), "U8": (np.uint8, 1),
    "BOOL": (np.bool_, 1), "C64": (np.complex64, 8),
    "F8_E4M3": (None, 1), "F8_E5M2": (None, 1), "F8_E8M0": (None, 1), "F4": (None, 1),
    "F6_E2M3": (None, 1), "F6_E3M2": (None, 1), "F8_E4M3FNUZ": (None, 1), "F8_E5M2FNUZ": (None, 1),
}
PRUNABLE = {"F16", "BF16", "F32", "F64"}
#: safetensors float dtype -> its NumPy name
FLOAT_NAMES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}
_ML_DTYPES = {"BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
NP_TO_ST = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
             "int32": "I32", "int16": "I16", "int8": "I8", "uint64": "U64", "uint32": "U32",
             "uint16": "U16", "uint8": "U8", "bool": "BOOL", "complex64": "C64",
             "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2"}


def numpy_dtype(st_dtype: str) -> np.dtype | None:
    entry = ST_DTYPES.get(st_dtype)
    if entry is None:
        return None
    if entry[0] is not None:
        return np.dtype(entry[0])
    if st_dtype in _ML_DTYPES:
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, _ML_DTYPES[st_dtype]))
    return None


def st_dtype_of(array: np.ndarray) -> str:
    name = np.dtype(array.dtype).name
    if name not in NP_TO_ST:
        raise CheckpointError(f"dtype {name} cannot be stored in safetensors")
    return NP_TO_ST[name]


@dataclass
class TensorRef:
    """One tensor of a checkpoint, not loaded: name, safetensors dtype, shape, where its bytes are.

    ``array()`` memory-maps it (safetensors) or loads it (npz, in memory); ``chunks()`` streams it
    flat in pieces of ``CHUNK`` elements.
    """

    name: str
    dtype: str
    shape: tuple
    nbytes: int
    file: Path | None = None
    offset: int = 0  # absolute byte offset of the data in ``file``
    loader: Callable[[], np.ndarray] | None = field(default=None, repr=False)
    stored_as: str = "dense"  # or a compressed-tensors format, decoded by ``loader`` when read

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def prunable(self) -> bool:
        return self.dtype in PRUNABLE

    def array(self) -> np.ndarray:
        """The tensor as a (read-only for safetensors) NumPy array."""
        if self.loader is not None:
            return self.loader()
        dtype = numpy_dtype(self.dtype)
        if dtype is None:
            raise CheckpointError(f"tensor {self.name!r}: dtype {self.dtype} cannot be read as a NumPy array")
        if self.numel == 0:
            return np.empty(self.shape, dtype=dtype)
        try:
            mm = np.memmap(self.file, dtype=dtype, mode="r", offset=self.offset, shape=(self.numel,))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{self.file}: cannot map tensor {self.name!r}: {exc}") from exc
        return mm.view(np.ndarray).reshape(self.shape)

    @property
    def float_dtype(self) -> str | None:
        """The NumPy name of a prunable tensor's float dtype (``"bfloat16"``, ...), else None."""
        return FLOAT_NAMES.get(self.dtype)

    def bits(self) -> np.ndarray:
        """A prunable tensor's raw bits: its float bits as unsigned integers of the same width,
        memory-mapped (safetensors), shaped like the tensor. What the C kernels read, and no
        ``ml_dtypes`` import for bfloat16 (it costs more than reading a small model)."""
        if self.dtype not in PRUNABLE:
            raise CheckpointError(f"tensor {self.name!r}: dtype {self.dtype} is not a float dtype")
        bits_dtype = BITS_DTYPES[ST_DTYPES[self.dtype][1]]
        if self.loader is not None:
            return np.ascontiguousarray(self.loader()).view(bits_dtype)
        if self.numel == 0:
            return np.empty(self.shape, dtype=bits_dtype)
        try:
            mm = np.memmap(self.file, dtype=bits_dtype, mode="r", offset=self.offset, shape=(self.numel,))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{self.file}: cannot map tensor {self.name!r}: {exc}") from exc
        return mm.view(np.ndarray).reshape(self.shape)

    def sample_bits(self, runs: int) -> np.ndarray:
        """About ``runs * SAMPLE_RUN`` of :meth:`bits`, spread evenly over the tensor
        (:func:`pruneplug.selection.sample_starts`), read with ``pread``: no mapping is touched
        (a mapped tensor is faulted in page by page when it is streamed)."""
        if self.loader is not None or self.numel == 0:
            return sample_bits(self.bits().reshape(-1), runs)
        bits_dtype = BITS_DTYPES[ST_DTYPES[self.dtype][1]]
        width = SAMPLE_RUN * bits_dtype.itemsize
        fd = os.open(self.file, os.O_RDONLY)
        try:
            pieces = [os.pread(fd, width, self.offset + int(start) * bits_dtype.itemsize)
                      for start in sample_starts(self.numel, runs)]
        finally:
            os.close(fd)
        return np.frombuffer(b"".join(pieces), dtype=bits_dtype)

    def chunks(self, size: int | None = None) -> Iterator[np.ndarray]:
        return flat_chunks(self.array(), size)

    def bit_chunks(self, size: int | None = None) -> Iterator[np.ndarray]:
        """:meth:`bits` in flat chunks (see :func:`flat_chunks`)."""
        return flat_chunks(self.bits(), size)

    def raw_chunks(self, size: int = 64 << 20) -> Iterator[bytes]:
        """The tensor's bytes as stored (safetensors only), for byte-identical copies."""
        with open(self.file, "rb") as f:
            f.seek(self.offset)
            left = self.nbytes
            while left:
                data = f.read(min(size, left))
                if not data:
                    raise CheckpointError(f"{self.file}: truncated while reading tensor {self.name!r}")
                left -= len(data)
                yield data


@dataclass
class SafetensorsFile:
    """The parsed header of one safetensors file: tensors in data order and the metadata."""

    path: Path
    tensors: list[TensorRef]
    metadata: dict[str, str]
    header_size: int


def read_safetensors_header(path: str | os.PathLike) -> SafetensorsFile:
    """Parse and validate a safetensors file's header (no tensor data is read).

    Checks what makes a file unusable: the header length, the JSON, every dtype, shape and offset,
    that the offsets tile the data section, and that the file is as long as the header says (a
    truncated download is the common failure). ``safetensors.safe_open`` then validates it again.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: not a safetensors file ({size} bytes, shorter than its 8-byte header length)")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or n > size - 8:
                raise CheckpointError(
                    f"{path}: corrupt or truncated safetensors file: header length {n} but the file has {size} bytes"
                )
            raw = f.read(n)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from exc
    header = _parse_json(raw, f"{path}: corrupt safetensors header")
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: corrupt safetensors header (__metadata__ must map strings to strings)")
    refs = []
    for name, entry in header.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            if (not isinstance(dtype, str) or not all(_is_count(s) for s in shape)
                    or not (_is_count(begin) and _is_count(end) and begin <= end)):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: corrupt safetensors header entry for {name!r}: {_brief(entry)}") from None
        if dtype not in ST_DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
        itemsize = ST_DTYPES[dtype][1]
        expected = math.prod(shape) * itemsize
        if dtype not in ("F4", "F6_E2M3", "F6_E3M2") and end - begin != expected:
            raise CheckpointError(
                f"{path}: tensor {name!r} ({dtype}, shape {list(shape)}) needs {expected} bytes, header gives {end - begin}"
            )
        refs.append(TensorRef(name, dtype, shape, end - begin, path, 8 + n + begin))
    refs.sort(key=lambda r: (r.offset, r.nbytes))
    position = 8 + n
    for ref in refs:
        if ref.offset != position:
            raise CheckpointError(f"{path}: corrupt safetensors header: tensor {ref.name!r} does not start where the previous one ends")
        position += ref.nbytes
    if position != size:
        what = "truncated" if position > size else "corrupt"
        raise CheckpointError(f"{path}: {what} safetensors file: the header describes {position} bytes, the file has {size}")
    _validate_with_safetensors(path, {r.name for r in refs})
    return SafetensorsFile(path, refs, dict(metadata), n)


class _Duplicate(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_conflicting_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    """JSON objects whose keys repeat with different values are refused (a header that declares a
    tensor twice is ambiguous: Python's ``json`` keeps the last, other readers the first)."""
    out: dict = {}
    for key, value in pairs:
        if key in out and out[key] != value:
            raise _Duplicate(key)
        out[key] = value
    return out


def _parse_json(raw: bytes, what: str) -> Any:
    """JSON from a file's bytes; any way it can be malformed (bad UTF-8, bad syntax, nesting too
    deep, an integer of thousands of digits, a key declared twice differently) is a CheckpointError."""
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_no_conflicting_duplicates)
    except _Duplicate as exc:
        raise CheckpointError(f"{what}: {exc.key!r} is declared twice, differently") from None
    except RecursionError:
        raise CheckpointError(f"{what}: JSON nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, int literals over the digit limit
        raise CheckpointError(f"{what} (not valid JSON: {_brief(exc)})") from None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _brief(value: Any, limit: int = 200) -> str:
    """``repr(value)`` cut to ``limit`` characters (a corrupt entry can be megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


_COMPRESSED_PARTS = ("shape", "compressed", "bitmask")


def _logical(st: SafetensorsFile) -> SafetensorsFile:
    """The file's weights as they are meant, not as stored: each compressed-tensors group
    (``<p>.shape`` I64, ``<p>.compressed``, ``<p>.bitmask`` U8, and ``<p>.row_offsets`` for
    ``sparse-bitmask``; no ``<p>.weight`` beside them) becomes one tensor ``<p>.weight`` with the
    dense shape, decoded when read. Other tensors are unchanged."""
    by_name = {r.name: r for r in st.tensors}
    groups: dict[str, dict[str, TensorRef]] = {}
    for ref in st.tensors:
        if ref.name.endswith(".compressed"):
            prefix = ref.name[: -len(".compressed")]
            parts = {p: by_name.get(f"{prefix}.{p}") for p in _COMPRESSED_PARTS + ("row_offsets",)}
            if (parts["shape"] is not None and parts["bitmask"] is not None and f"{prefix}.weight" not in by_name
                    and parts["shape"].dtype == "I64" and parts["bitmask"].dtype == "U8"):
                groups[prefix] = {p: r for p, r in parts.items() if r is not None}
    if not groups:
        return st
    replaced = {r.name for parts in groups.values() for r in parts.values()}
    first = {prefix: min(parts.values(), key=lambda r: r.offset) for prefix, parts in groups.items()}
    refs = []
    for ref in st.tensors:
        prefix = next((p for p, r in first.items() if r is ref), None)
        if prefix is not None:
            refs.append(_compressed_ref(st.path, prefix, groups[prefix]))
        elif ref.name not in replaced:
            refs.append(ref)
    return SafetensorsFile(st.path, refs, st.metadata, st.header_size)


def _compressed_ref(path: Path, prefix: str, parts: dict[str, TensorRef]) -> TensorRef:
    from pruneplug import compressed_tensors as ct

    fmt = ct.SPARSE_BITMASK if "row_offsets" in parts else ct.SPARSE_24_BITMASK
    name = f"{prefix}.weight"
    shape_ref, values = parts["shape"], parts["compressed"]
    if shape_ref.numel > 8:
        raise CheckpointError(f"{path}: {shape_ref.name!r} has {shape_ref.numel} entries; a dense shape was expected")
    shape = tuple(int(x) for x in shape_ref.array().reshape(-1))
    if not shape or any(x < 0 for x in shape):
        raise CheckpointError(f"{path}: {shape_ref.name!r} holds {list(shape)}, not a dense shape")
    itemsize = ST_DTYPES[values.dtype][1]

    def load() -> np.ndarray:
        try:
            return ct.decode(name, {r.name: r.array() for r in parts.values()}, fmt)
        except PrunePlugError as exc:
            raise CheckpointError(f"{path}: cannot decompress {name!r} ({fmt}): {exc}") from None

    return TensorRef(name, values.dtype, shape, math.prod(shape) * itemsize, path, values.offset,
                     loader=load, stored_as=fmt)


def _validate_with_safetensors(path: Path, names: set[str]) -> None:
    try:
        from safetensors import safe_open
    except ImportError:
        raise CheckpointError(
            "reading safetensors checkpoints needs the safetensors package: pip install 'pruneplug[checkpoint]'"
        ) from None
    try:
        with safe_open(str(path), framework="np") as f:
            keys = set(f.keys())
    except Exception as exc:  # SafetensorError and friends: the library's own verdict
        raise CheckpointError(f"{path}: safetensors cannot open it: {exc}") from exc
    if keys != names:
        raise CheckpointError(f"{path}: safetensors reads other tensor names than the header holds")


@dataclass
class Checkpoint:
    """An opened checkpoint: its form, tensors by name, metadata, and for a sharded one its shards."""

    path: Path
    kind: str  # "safetensors", "sharded" or "npz"
    tensors: dict[str, TensorRef]
    metadata: dict[str, str]
    files: list[SafetensorsFile] = field(default_factory=list)
    index: dict | None = None
    npz_compressed: bool = False
    other_members: list[str] = field(default_factory=list)  # npz members that are not .npy arrays

    @property
    def total_bytes(self) -> int:
        return sum(r.nbytes for r in self.tensors.values())


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open IN: a ``.safetensors`` file, a directory with ``model.safetensors.index.json`` (or a
    single ``model.safetensors``), or an ``.npz``. Raises :class:`CheckpointError` with the reason."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_dir():
        if (path / INDEX_NAME).is_file():
            return _open_sharded(path)
        if (path / MODEL_FILE).is_file():  # a Hugging Face model directory with one weights file
            st = _logical(read_safetensors_header(path / MODEL_FILE))
            return Checkpoint(path, "directory", {r.name: r for r in st.tensors}, st.metadata, [st])
        raise CheckpointError(f"{path}: a directory without {INDEX_NAME} or {MODEL_FILE}; expected a sharded "
                              "safetensors checkpoint or a model directory")
    if path.suffix == ".npz":
        return _open_npz(path)
    st = _logical(read_safetensors_header(path))
    return Checkpoint(path, "safetensors", {r.name: r for r in st.tensors}, st.metadata, [st])


def _open_sharded(path: Path) -> Checkpoint:
    index_path = path / INDEX_NAME
    try:
        raw = index_path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read {index_path}: {exc.strerror or exc}") from exc
    index = _parse_json(raw, f"{index_path}: corrupt index")
    expected = "expected a JSON object with a 'weight_map' object of tensor name -> shard file name"
    if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
        raise CheckpointError(f"{index_path}: corrupt index ({expected})")
    weight_map = index["weight_map"]
    bad = next(((k, v) for k, v in weight_map.items() if not isinstance(v, str)), None)
    if bad is not None:
        raise CheckpointError(f"{index_path}: corrupt index: weight_map[{bad[0]!r}] is {_brief(bad[1])}, not a file name")
    if not isinstance(index.get("metadata", {}), (dict, type(None))):
        raise CheckpointError(f"{index_path}: corrupt index: 'metadata' is {_brief(index['metadata'])}, not an object")
    files, tensors, stored = [], {}, set()
    for shard in sorted(set(weight_map.values())):
        shard_path = path / shard
        if shard in ("", ".", "..") or Path(shard).name != shard or "\\" in shard:
            raise CheckpointError(f"{index_path}: shard {shard!r} is outside the checkpoint directory {path}: refused "
                                  "(shards must be plain file names inside it)")
        if not shard_path.is_file():
            raise CheckpointError(f"{index_path}: shard {shard!r} is missing")
        st = read_safetensors_header(shard_path)
        for ref in st.tensors:
            if weight_map.get(ref.name) != shard:
                raise CheckpointError(f"{shard_path}: tensor {ref.name!r} is not mapped to this shard in {INDEX_NAME}")
            stored.add(ref.name)
        st = _logical(st)
        files.append(st)
        tensors.update((ref.name, ref) for ref in st.tensors)
    missing = sorted(set(weight_map) - stored)
    if missing:
        raise CheckpointError(f"{path / INDEX_NAME}: tensors missing from their shards: {missing[:5]}")
    metadata = index.get("metadata") or {}
    return Checkpoint(path, "sharded", tensors, {str(k): str(v) for k, v in metadata.items()}, files, index)


def _open_npz(path: Path) -> Checkpoint:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            comment = zf.comment.decode("utf-8", "replace")
            bad = zf.testzip()
            if bad is not None:
                raise CheckpointError(f"{path}: corrupt npz: member {bad!r} fails its CRC check")
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated npz: {exc}") from exc
    metadata = _npz_comment_metadata(path, comment)
    dtypes = _declared_dtypes(path, metadata)
    tensors = {}
    fmt = np.lib.format
    with zipfile.ZipFile(path) as zf:
        headers = {}
        for info in infos:
            if not info.filename.endswith(".npy"):
                continue
            try:
                with zf.open(info) as f:
                    version = fmt.read_magic(f)
                    read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                    headers[info.filename[:-4]] = read(f)
            except Exception as exc:
                raise CheckpointError(f"{path}: corrupt npz member {info.filename!r}: {exc}") from exc
    for name, (shape, _fortran, dtype) in headers.items():
        _check_declared_dtype(path, name, dtypes.get(name), np.dtype(dtype))
        st = NP_TO_ST.get(dtypes.get(name) or np.dtype(dtype).name)
        if st is None:
            st = "U8"  # stored as raw bytes, copied unchanged
        tensors[name] = TensorRef(name, st, tuple(shape), math.prod(shape) * np.dtype(dtype).itemsize,
                                  path, loader=_npz_loader(path, name, dtypes.get(name)))
    return Checkpoint(path, "npz", tensors, metadata,
                      npz_compressed=any(i.compress_type != zipfile.ZIP_STORED for i in infos),
                      other_members=[i.filename for i in infos if not i.filename.endswith(".npy")])


def _npz_comment_metadata(path: Path, comment: str) -> dict[str, str]:
    """The metadata of an npz's zip comment. A comment that starts with ``{`` is JSON metadata (what
    :class:`~pruneplug.checkpoint.writers.NpzWriter` writes, ``pruneplug.dtypes`` included): it must
    parse as a JSON object, or the file is refused as corrupt; ignoring it could silently read
    bfloat16 members as integers. Too deeply nested to parse counts as unreadable, the same as
    any other invalid JSON. Any other comment (plain text, a JSON array, however nested) is an
    ordinary zip comment, never interpreted: it is kept as ``{"comment": text}``."""
    if not comment:
        return {}
    if not comment.lstrip().startswith("{"):
        return {"comment": comment}
    try:
        parsed = json.loads(comment)
        if isinstance(parsed, dict):
            return {str(k): str(v) for k, v in parsed.items()}
        why = f"a JSON {type(parsed).__name__}, not an object"
    except RecursionError:
        why = "nested too deeply to read"
    except ValueError as exc:
        why = f"not valid JSON ({_brief(exc)})"
    raise CheckpointError(f"{path}: corrupt npz comment: it starts like JSON metadata but is {why}; refused rather "
                          "than ignoring the metadata it holds (rewrite the comment, or remove it)")


def _declared_dtypes(path: Path, metadata: dict[str, str]) -> dict[str, str]:
    """``pruneplug.dtypes`` of an npz comment: member name -> the dtype its raw values hold."""
    text = metadata.get("pruneplug.dtypes")
    if text is None:
        return {}
    try:
        dtypes = json.loads(text)
    except (RecursionError, ValueError):
        dtypes = None
    if not isinstance(dtypes, dict) or not all(isinstance(v, str) for v in dtypes.values()):
        raise CheckpointError(f"{path}: corrupt npz comment: 'pruneplug.dtypes' must be a JSON object of "
                              f"member name -> dtype name, got {_brief(text)}")
    return dtypes


def _check_declared_dtype(path: Path, name: str, declared: str | None, stored: np.dtype) -> None:
    """A declared dtype reinterprets a member's bytes: only one NumPy cannot name (bfloat16, float8),
    over raw integers of the same width (what :class:`~pruneplug.checkpoint.writers.NpzWriter` writes)."""
    if declared is None or declared == stored.name:
        return
    st = NP_TO_ST.get(declared)
    if st not in _ML_DTYPES or stored.kind not in "uiV" or stored.itemsize != ST_DTYPES[st][1]:
        raise CheckpointError(
            f"{path}: member {name!r} is stored as {stored.name} but the comment declares it {declared!r}; "
            f"a declared dtype must be bfloat16 or float8 over raw integers of its width: refused")


def _npz_loader(path: Path, name: str, dtype_name: str | None) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        try:
            with np.load(path, allow_pickle=False) as data:
                array = data[name]
        except Exception as exc:
            raise CheckpointError(f"{path}: cannot read {name!r}: {exc}") from exc
        if dtype_name is not None and NP_TO_ST.get(dtype_name) in _ML_DTYPES:
            import ml_dtypes

            array = array.view(getattr(ml_dtypes, dtype_name))
        return np.ascontiguousarray(array)

    return load


def flat_chunks(array: np.ndarray, size: int | None = None) -> Iterator[np.ndarray]:
    size = CHUNK if size is None else size  # read at call time, so tests can shrink it
    flat = array.reshape(-1)
    for start in range(0, flat.size, size):
        yield flat[start:start + size]


def count_zeros(chunks: Iterable[np.ndarray]) -> int:
    """Exact zeros in ``chunks`` (``-0.0`` included). IEEE floats and bfloat16 are counted on their
    bits (every bit but the sign zero): a bfloat16 ``== 0`` would run element by element in
    NumPy's dtype machinery. Other dtypes compare with 0."""
    total = 0
    for c in chunks:
        if c.dtype.kind == "f" or c.dtype.name == "bfloat16":
            bits = np.ascontiguousarray(c).reshape(-1).view(BITS_DTYPES[c.dtype.itemsize])
            total += bits.size - int(np.count_nonzero(bits << np.uint8(1)))
        else:
            total += int(np.count_nonzero(c == 0))
    return total


def array_zeros(array: np.ndarray) -> int:
    """:func:`count_zeros` of a whole array, in chunks of 2^22 elements (bounded temporaries)."""
    return count_zeros(flat_chunks(array, 1 << 22))

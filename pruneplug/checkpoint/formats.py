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

from pruneplug.errors import CheckpointError


INDEX_NAME = "model.safetensors.index.json"
CHUNK = 1 << 20  # elements per streaming chunk (about 8 MiB of keys)
_MAX_HEADER = 100 * 1024 * 1024

# safetensors dtype -> (NumPy dtype or None when NumPy cannot hold it, itemsize)
_ST_DTYPES: dict[str, tuple[Any, int]] = {
    "F64": (np.float64, 8), "F32": (np.float32, 4), "F16": (np.float16, 2), "BF16": (None, 2),
    "I64": (np.int64, 8), "I32": (np.int32, 4), "I16": (np.int16, 2), "I8": (np.int8, 1),
    "U64": (np.uint64, 8), "U32": (np.uint32, 4), "U16": (np.uint16, 2), "U8": (np.uint8, 1),
    "BOOL": (np.bool_, 1), "C64": (np.complex64, 8),
    "F8_E4M3": (None, 1), "F8_E5M2": (None, 1), "F8_E8M0": (None, 1), "F4": (None, 1),
    "F6_E2M3": (None, 1), "F6_E3M2": (None, 1), "F8_E4M3FNUZ": (None, 1), "F8_E5M2FNUZ": (None, 1),
}
PRUNABLE = {"F16", "BF16", "F32", "F64"}
_ML_DTYPES = {"BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
_NP_TO_ST = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
             "int32": "I32", "int16": "I16", "int8": "I8", "uint64": "U64", "uint32": "U32",
             "uint16": "U16", "uint8": "U8", "bool": "BOOL", "complex64": "C64",
             "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2"}


def _numpy_dtype(st_dtype: str) -> np.dtype | None:
    entry = _ST_DTYPES.get(st_dtype)
    if entry is None:
        return None
    if entry[0] is not None:
        return np.dtype(entry[0])
    if st_dtype in _ML_DTYPES:
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, _ML_DTYPES[st_dtype]))
    return None


def _st_dtype(array: np.ndarray) -> str:
    name = np.dtype(array.dtype).name
    if name not in _NP_TO_ST:
        raise CheckpointError(f"dtype {name} cannot be stored in safetensors")
    return _NP_TO_ST[name]


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
        dtype = _numpy_dtype(self.dtype)
        if dtype is None:
            raise CheckpointError(f"tensor {self.name!r}: dtype {self.dtype} cannot be read as a NumPy array")
        if self.numel == 0:
            return np.empty(self.shape, dtype=dtype)
        try:
            mm = np.memmap(self.file, dtype=dtype, mode="r", offset=self.offset, shape=(self.numel,))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{self.file}: cannot map tensor {self.name!r}: {exc}") from exc
        return mm.view(np.ndarray).reshape(self.shape)

    def chunks(self, size: int | None = None) -> Iterator[np.ndarray]:
        return _flat_chunks(self.array(), size)

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
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt safetensors header (not valid JSON: {exc})") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: corrupt safetensors header (__metadata__ must map strings to strings)")
    refs = []
    for name, entry in header.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            if not all(isinstance(s, int) and s >= 0 for s in shape) or not (0 <= begin <= end):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: corrupt safetensors header entry for {name!r}: {entry!r}") from None
        if dtype not in _ST_DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
        itemsize = _ST_DTYPES[dtype][1]
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
        raise CheckpointError(f"{path}: a directory without {INDEX_NAME}; expected a sharded safetensors checkpoint")
    if path.suffix == ".npz":
        return _open_npz(path)
    st = read_safetensors_header(path)
    return Checkpoint(path, "safetensors", {r.name: r for r in st.tensors}, st.metadata, [st])


def _open_sharded(path: Path) -> Checkpoint:
    try:
        index = json.loads((path / INDEX_NAME).read_text())
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError
    except OSError as exc:
        raise CheckpointError(f"cannot read {path / INDEX_NAME}: {exc.strerror or exc}") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path / INDEX_NAME}: corrupt index (expected JSON with a 'weight_map' object)") from exc
    files, tensors = [], {}
    for shard in sorted(set(weight_map.values())):
        shard_path = path / shard
        if Path(shard).name != shard or not shard_path.is_file():
            raise CheckpointError(f"{path / INDEX_NAME}: shard {shard!r} is missing")
        st = read_safetensors_header(shard_path)
        files.append(st)
        for ref in st.tensors:
            if weight_map.get(ref.name) != shard:
                raise CheckpointError(f"{shard_path}: tensor {ref.name!r} is not mapped to this shard in {INDEX_NAME}")
            tensors[ref.name] = ref
    missing = sorted(set(weight_map) - set(tensors))
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
    metadata: dict[str, str] = {}
    if comment:
        try:
            parsed = json.loads(comment)
            metadata = {str(k): str(v) for k, v in parsed.items()} if isinstance(parsed, dict) else {"comment": comment}
        except json.JSONDecodeError:
            metadata = {"comment": comment}
    dtypes = json.loads(metadata.get("pruneplug.dtypes", "{}"))
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
        st = _NP_TO_ST.get(dtypes.get(name) or np.dtype(dtype).name)
        if st is None:
            st = "U8"  # stored as raw bytes, copied unchanged
        tensors[name] = TensorRef(name, st, tuple(shape), math.prod(shape) * np.dtype(dtype).itemsize,
                                  path, loader=_npz_loader(path, name, dtypes.get(name)))
    return Checkpoint(path, "npz", tensors, metadata,
                      npz_compressed=any(i.compress_type != zipfile.ZIP_STORED for i in infos))


def _npz_loader(path: Path, name: str, dtype_name: str | None) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        try:
            with np.load(path, allow_pickle=False) as data:
                array = data[name]
        except Exception as exc:
            raise CheckpointError(f"{path}: cannot read {name!r}: {exc}") from exc
        if dtype_name == "bfloat16":
            import ml_dtypes

            array = array.view(ml_dtypes.bfloat16)
        return np.ascontiguousarray(array)

    return load


def _flat_chunks(array: np.ndarray, size: int | None = None) -> Iterator[np.ndarray]:
    size = CHUNK if size is None else size  # read at call time, so tests can shrink it
    flat = array.reshape(-1)
    for start in range(0, flat.size, size):
        yield flat[start:start + size]


def _count_zeros(chunks: Iterable[np.ndarray]) -> int:
    return sum(int(np.count_nonzero(c == 0)) for c in chunks)

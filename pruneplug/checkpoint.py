"""Prune whole checkpoints: safetensors files, sharded safetensors directories, ``.npz`` archives.

Three entry points, used by the ``pruneplug prune`` / ``pruneplug inspect`` commands:

* :func:`prune_checkpoint` reads a checkpoint one tensor at a time (safetensors memory-mapped),
  prunes the selected tensors layer by layer, globally or N:M, and writes the same form atomically;
* :func:`inspect_checkpoint` reports per-tensor shape, dtype, sparsity, N:M structure and magnitude
  quantiles;
* :func:`global_unstructured_masks` is exact global magnitude pruning of arrays already in memory.

Global pruning in bounded memory
--------------------------------
Global scope prunes exactly ``k = round(sparsity * total)`` weights over all selected tensors, the
``k`` lowest scores in one order: by score, ties by *tensor order*, then by flat C-order index.
Tensor order is the sorted order of the tensor names for checkpoints, and the dict's iteration order
for :func:`global_unstructured_masks`. Scores are the core's (``|w|`` or ``w*w``, float32 for
float16/bfloat16 weights, the weights' dtype otherwise), compared as float64 values, which is exact
across dtypes.

Nothing is concatenated. Scores become 64-bit keys (the float64 bits of a non-negative score order
like the score), and a radix select over 16-bit digits finds the threshold key ``T`` in a few
streaming passes over the tensors, chunk by chunk, holding one 65,536-bin histogram; once the
threshold's bin holds few keys they are gathered and the exact ``T`` is picked. Then per tensor
``k_t = count(score < T)`` plus the ties at ``T`` handed out in tensor order, and each tensor is pruned
by the ordinary exact-``k`` operation (:func:`pruneplug.prune`, on the fastest backend): its stable
order prunes exactly the scores below ``T`` and its first ties. Peak memory is one tensor's
memory-mapped input, its pruned copy and its mask (plus the backend's own working memory for one
tensor), whatever the number of tensors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import struct
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from pruneplug import api
from pruneplug.arrays import adapt, check_float_dtype
from pruneplug.errors import CheckpointError, InvalidArgumentError, NonFiniteError, PrunePlugError
from pruneplug.types import Mask

INDEX_NAME = "model.safetensors.index.json"
CHUNK = 1 << 20  # elements per streaming chunk (about 8 MiB of keys)
_MAX_HEADER = 100 * 1024 * 1024

# ---------------------------------------------------------------------------------------------
# which tensors are pruned by default
# ---------------------------------------------------------------------------------------------
EMBEDDING_RE = r"embed|(^|\.)(wte|wpe|shared)(\.|$)"
NORM_RE = r"norm|(^|\.)ln(_\w+|\d*)(\.|$)"
HEAD_RE = r"(^|\.)lm_head(\.|$)|^(output|head|classifier|score|embed_out)\."

SELECTION_RULE = (
    "every floating tensor (F16, BF16, F32, F64) with two or more dimensions, except embeddings "
    f"(name matches /{EMBEDDING_RE}/), norms (/{NORM_RE}/) and the output head (/{HEAD_RE}/); "
    "--include REGEX replaces the dimension and name rules by 'name matches one of the --include "
    "regexes' (re.search); --exclude REGEX always removes matching names. Everything else is copied "
    "unchanged."
)

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


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
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

    def chunks(self, size: int = CHUNK) -> Iterator[np.ndarray]:
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


# ---------------------------------------------------------------------------------------------
# selection
# ---------------------------------------------------------------------------------------------
def _compile(patterns: Sequence[str] | None, option: str) -> list[tuple[str, re.Pattern]]:
    out = []
    for p in patterns or ():
        try:
            out.append((p, re.compile(p)))
        except re.error as exc:
            raise InvalidArgumentError(f"{option} {p!r} is not a valid regular expression: {exc}") from None
    return out


def select_tensors(refs: Iterable[TensorRef], include: Sequence[str] | None = None,
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
        if reason is None and not ref.prunable:
            reason = f"dtype {ref.dtype} is not prunable"
        result[ref.name] = reason
    return result


# ---------------------------------------------------------------------------------------------
# global threshold: radix select over score keys
# ---------------------------------------------------------------------------------------------
_INF = float("inf")


def _score_keys(x: np.ndarray, method: str) -> np.ndarray:
    """The scores of a chunk of weights as uint64 keys (the float64 bits of the non-negative score),
    raising ValueError when a weight is NaN or infinite. Scores are the core's: float32 for 16-bit
    weights, otherwise the weights' dtype (so float32 ``w*w`` is rounded in float32)."""
    if x.dtype.itemsize == 2:
        x = x.astype(np.float32)
    a = np.abs(x)
    if a.size and not (a.max() <= np.finfo(a.dtype).max):
        raise ValueError("non-finite")
    if method == "l2":
        np.multiply(a, a, out=a)
    if a.dtype != np.float64:
        a = a.astype(np.float64)
    return a.view(np.uint64)


def _nonfinite_error(name: str, chunks: Callable[[], Iterator[np.ndarray]], method: str) -> NonFiniteError:
    count, first, seen = 0, -1, 0
    for chunk in chunks():
        bad = ~np.isfinite(chunk.astype(np.float64))
        if bad.any():
            if first < 0:
                first = seen + int(np.flatnonzero(bad)[0])
            count += int(bad.sum())
        seen += chunk.size
    base = NonFiniteError.for_values("abs" if method == "l1" else "square", count, max(first, 0))
    return NonFiniteError(f"tensor {name!r}: {base}", count=count, first_index=max(first, 0))


@dataclass
class _Source:
    """A tensor the global select streams: its name, size and a chunk iterator factory."""

    name: str
    numel: int
    chunks: Callable[[], Iterator[np.ndarray]]
    itemsize: int = 4


@dataclass
class GlobalPlan:
    """The outcome of the global select: how many weights to prune in each tensor, the threshold
    score (float64; ``None`` when nothing or everything is pruned) and the number of passes."""

    counts: list[int]
    threshold: float | None
    passes: int


def _keys_of(source: _Source, method: str, progress: ProgressLike) -> Iterator[np.ndarray]:
    try:
        for chunk in source.chunks():
            progress.update(0, chunk.size * source.itemsize)
            yield _score_keys(chunk, method)
    except ValueError:
        raise _nonfinite_error(source.name, source.chunks, method) from None


def plan_global(sources: Sequence[_Source], sparsity: float, method: str,
                progress: "ProgressLike | None" = None, gather_limit: int | None = None) -> GlobalPlan:
    """Exact per-tensor prune counts for global magnitude pruning (see the module docstring)."""
    progress = progress or _NullProgress()
    total = sum(s.numel for s in sources)
    nbytes = sum(s.numel * s.itemsize for s in sources)
    k = api.count_to_prune(sparsity, total)
    if k == 0 or k == total:
        return GlobalPlan([0 if k == 0 else s.numel for s in sources], None, 0)
    if gather_limit is None:
        # candidates gathered at the end: at most 1 byte per element of the largest tensor (8-byte keys)
        gather_limit = max(1 << 16, max(s.numel for s in sources) // 8)
    rank = k - 1  # 0-based rank of the threshold key among the keys still in play
    prefix, bits, passes = 0, 0, 0
    zeros = [0] * len(sources)
    while True:
        passes += 1
        shift = 48 - bits
        hist = np.zeros(1 << 16, dtype=np.int64)
        progress.start(f"global select, pass {passes}", len(sources), nbytes)
        for t, source in enumerate(sources):
            for keys in _keys_of(source, method, progress):
                if bits == 0:
                    zeros[t] += int(np.count_nonzero(keys == 0))
                else:
                    keys = keys[(keys >> np.uint64(64 - bits)) == np.uint64(prefix)]
                hist += np.bincount(((keys >> np.uint64(shift)) & np.uint64(0xFFFF)).astype(np.intp), minlength=1 << 16)
            progress.update(1, 0)
        progress.close()
        if bits == 0 and rank < sum(zeros):
            # The threshold is a zero score: every tensor's zeros are its ties, nothing is below.
            return _assign(k, [0] * len(sources), zeros, 0.0, passes)
        cum = np.cumsum(hist)
        digit = int(np.searchsorted(cum, rank, side="right"))
        rank -= int(cum[digit - 1]) if digit else 0
        prefix, bits = (prefix << 16) | digit, bits + 16
        if bits == 64 or int(hist[digit]) <= gather_limit:
            break
    rest = 64 - bits
    passes += 1
    below = [0] * len(sources)
    cands: list[np.ndarray] = []
    progress.start("global select, final pass", len(sources), nbytes)
    for t, source in enumerate(sources):
        parts = []
        for keys in _keys_of(source, method, progress):
            top = keys >> np.uint64(rest) if rest else keys
            below[t] += int(np.count_nonzero(top < np.uint64(prefix)))
            parts.append(keys[top == np.uint64(prefix)])
        cands.append(np.concatenate(parts) if parts else np.empty(0, np.uint64))
        progress.update(1, 0)
    progress.close()
    pooled = np.concatenate(cands)
    threshold = np.partition(pooled, rank)[rank]
    del pooled
    less = [b + int(np.count_nonzero(c < threshold)) for b, c in zip(below, cands)]
    ties = [int(np.count_nonzero(c == threshold)) for c in cands]
    return _assign(k, less, ties, float(np.array(threshold, np.uint64).view(np.float64)), passes)


def _assign(k: int, less: list[int], ties: list[int], threshold: float, passes: int) -> GlobalPlan:
    need = k - sum(less)
    counts = []
    for lt, eq in zip(less, ties):
        take = min(eq, need)
        need -= take
        counts.append(lt + take)
    assert need == 0 and sum(counts) == k, "global select lost count"  # an internal invariant
    return GlobalPlan(counts, threshold, passes)


def _source(ref: TensorRef) -> _Source:
    return _Source(ref.name, ref.numel, ref.chunks, _ST_DTYPES[ref.dtype][1])


def _flat_chunks(array: np.ndarray, size: int = CHUNK) -> Iterator[np.ndarray]:
    flat = array.reshape(-1)
    for start in range(0, flat.size, size):
        yield flat[start:start + size]


def _sparsity_for(k: int, n: int) -> float:
    """A sparsity that makes the core prune exactly ``k`` of ``n`` (``round(s*n) == k``)."""
    s = k / n if n else 0.0
    assert api.count_to_prune(s, n) == k
    return s


def global_unstructured_masks(tensors: Mapping[str, Any], sparsity: float, *, method: str = "l1",
                              backend: str | None = None) -> dict[str, Mask]:
    """Exact global magnitude pruning of arrays in memory: masks that prune exactly
    ``round(sparsity * total)`` weights over all ``tensors`` (NumPy arrays or PyTorch CPU tensors),
    the lowest scores first, ties by the dict's iteration order, then by flat index.

    Nothing is concatenated: peak extra memory is one tensor's scores and its mask (plus the
    backend's working memory), whatever the number of tensors. Returns name -> :class:`Mask`
    (``True`` = keep), in the user's array type.

    Example::

        >>> import numpy as np, pruneplug as pp
        >>> masks = pp.global_unstructured_masks({"a": np.array([1.0, 5.0]), "b": np.array([2.0, 1.0])}, 0.5)
        >>> masks["a"].data, masks["b"].data
        (array([False,  True]), array([ True, False]))
    """
    api._check_method(method)
    api._check_sparsity(sparsity)
    if not isinstance(tensors, Mapping):
        raise InvalidArgumentError(f"tensors must be a mapping of name -> array, got {type(tensors).__name__}")
    arrays = {}
    for name, value in tensors.items():
        adapted = adapt(value, f"tensors[{name!r}]")
        check_float_dtype(adapted.array, f"tensors[{name!r}]")
        if adapted.array_type != "numpy":
            raise InvalidArgumentError(f"tensors[{name!r}]: only NumPy arrays and CPU tensors are supported here")
        arrays[name] = adapted.array

    def chunker(array: np.ndarray) -> Callable[[], Iterator[np.ndarray]]:
        def chunks() -> Iterator[np.ndarray]:
            return _flat_chunks(array)  # reshape: a view for C-contiguous arrays, a copy otherwise
        return chunks

    sources = [_Source(name, int(a.size), chunker(a), a.dtype.itemsize) for name, a in arrays.items()]
    if not sources:
        return {}
    plan = plan_global(sources, sparsity, method)
    masks = {}
    for (name, value), k_t in zip(tensors.items(), plan.counts):
        n = int(arrays[name].size)
        scores = api.importance(value, method, backend=backend).values
        masks[name] = api.generate_unstructured_mask(scores, _sparsity_for(k_t, n), backend=backend)
        del scores
    return masks


# ---------------------------------------------------------------------------------------------
# progress (the CLI draws a bar; the library stays quiet)
# ---------------------------------------------------------------------------------------------
class ProgressLike:
    """What :func:`prune_checkpoint` reports progress to: one ``start`` per phase, ``update`` per
    tensor (items) and bytes, ``close`` at the end of the phase."""

    def start(self, label: str, items: int, amount: int) -> None: ...
    def update(self, items: int = 0, amount: int = 0) -> None: ...
    def close(self) -> None: ...


class _NullProgress(ProgressLike):
    pass


# ---------------------------------------------------------------------------------------------
# reports
# ---------------------------------------------------------------------------------------------
@dataclass
class TensorReport:
    """One tensor's row: status is ``"pruned"``, ``"skipped"`` (selected but the pattern does not
    fit) or ``"kept"`` (not selected); ``pruned`` is how many weights the mask removed (zeros
    included), ``zeros_*`` count exact zeros before and after (``None`` for non-float tensors)."""

    name: str
    shape: list
    dtype: str
    numel: int
    status: str
    reason: str | None = None
    zeros_before: int | None = None
    zeros_after: int | None = None
    pruned: int = 0
    stored_as: str = "dense"

    @property
    def sparsity_before(self) -> float | None:
        return None if self.zeros_before is None else (self.zeros_before / self.numel if self.numel else 0.0)

    @property
    def sparsity_after(self) -> float | None:
        return None if self.zeros_after is None else (self.zeros_after / self.numel if self.numel else 0.0)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["sparsity_before"], d["sparsity_after"] = self.sparsity_before, self.sparsity_after
        return d


@dataclass
class PruneReport:
    """What :func:`prune_checkpoint` did: settings, per-tensor rows, totals; ``to_dict()`` is the
    ``--report`` JSON and ``format_table()`` the CLI's summary."""

    input: str
    output: str | None
    settings: dict
    selection_rule: str
    tensors: list[TensorReport]
    threshold: float | None = None
    passes: int = 0
    dry_run: bool = False
    seconds: float = 0.0
    masks_out: str | None = None

    def totals(self) -> dict:
        pruned_rows = [t for t in self.tensors if t.status == "pruned"]
        counted = [t for t in self.tensors if t.zeros_before is not None]
        selected = sum(t.numel for t in pruned_rows)
        zb = sum(t.zeros_before for t in pruned_rows)
        za = sum(t.zeros_after for t in pruned_rows)
        return {
            "tensors": len(self.tensors),
            "tensors_pruned": len(pruned_rows),
            "tensors_skipped": sum(t.status == "skipped" for t in self.tensors),
            "parameters": sum(t.numel for t in self.tensors),
            "parameters_selected": selected,
            "parameters_pruned": sum(t.pruned for t in pruned_rows),
            "selected_sparsity_before": zb / selected if selected else 0.0,
            "selected_sparsity_after": za / selected if selected else 0.0,
            "float_sparsity_after": (sum(t.zeros_after for t in counted) / sum(t.numel for t in counted)
                                     if counted and sum(t.numel for t in counted) else 0.0),
        }

    def to_dict(self) -> dict:
        return {
            "input": self.input, "output": self.output, "dry_run": self.dry_run,
            "settings": self.settings, "selection_rule": self.selection_rule,
            "threshold": self.threshold, "passes": self.passes, "seconds": round(self.seconds, 3),
            "masks_out": self.masks_out, "totals": self.totals(),
            "tensors": [t.to_dict() for t in self.tensors],
        }

    def format_table(self, show_kept: bool = True) -> str:
        rows = [t for t in self.tensors if show_kept or t.status != "kept"]
        width = max([len("tensor")] + [len(t.name) for t in rows])
        pct = lambda v: "-" if v is None else f"{100 * v:6.2f}%"  # noqa: E731
        lines = [f"{'tensor':<{width}}  {'shape':<18} {'dtype':<5} {'before':>7} {'after':>7} {'pruned':>12}  note"]
        for t in rows:
            note = t.reason or ("" if t.stored_as == "dense" else f"stored as {t.stored_as}")
            lines.append(f"{t.name:<{width}}  {str(tuple(t.shape)):<18} {t.dtype:<5} {pct(t.sparsity_before):>7} "
                         f"{pct(t.sparsity_after):>7} {t.pruned:>12,}  {t.status}{': ' + note if note else ''}")
        return "\n".join(lines + [self.format_totals()])

    def format_totals(self) -> str:
        lines = []
        tot = self.totals()
        lines.append(
            f"total: {tot['tensors_pruned']} of {tot['tensors']} tensors pruned ({tot['tensors_skipped']} skipped); "
            f"{tot['parameters_pruned']:,} of {tot['parameters_selected']:,} selected parameters pruned; "
            f"selected sparsity {100 * tot['selected_sparsity_before']:.2f}% -> {100 * tot['selected_sparsity_after']:.2f}%; "
            f"all floating parameters {100 * tot['float_sparsity_after']:.2f}% zero"
        )
        if self.threshold is not None:
            lines.append(f"global threshold: score {self.threshold!r} ({self.settings.get('method')}), {self.passes} passes")
        return "\n".join(lines)


def _count_zeros(chunks: Iterable[np.ndarray]) -> int:
    return sum(int(np.count_nonzero(c == 0)) for c in chunks)


# ---------------------------------------------------------------------------------------------
# writing: temporary files in the target directory, renamed at the end
# ---------------------------------------------------------------------------------------------
class _Transaction:
    """Stage files and directories next to their targets; ``commit`` renames them into place,
    ``abort`` removes every temporary. Used as a context manager: an exception aborts."""

    def __init__(self) -> None:
        self.staged: list[tuple[Path, Path, bool]] = []  # (temporary, final, is_dir)

    def stage_file(self, final: Path) -> Path:
        fd, tmp = self._make(final, lambda d: tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=d))
        os.close(fd)
        self.staged.append((Path(tmp), final, False))
        return Path(tmp)

    def stage_dir(self, final: Path) -> Path:
        tmp = Path(self._make(final, lambda d: tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=d)))
        self.staged.append((tmp, final, True))
        return tmp

    @staticmethod
    def _make(final: Path, make: Callable[[str], Any]) -> Any:
        directory = final.parent
        if not directory.is_dir():
            raise CheckpointError(f"cannot write {final}: directory {directory} does not exist")
        try:
            return make(str(directory))
        except OSError as exc:
            raise CheckpointError(f"cannot write to directory {directory}: {exc.strerror or exc}") from exc

    def commit(self) -> None:
        try:
            for tmp, final, is_dir in self.staged:
                if is_dir and final.exists():
                    # replace a directory (in place): move the old one aside, the new one in, then drop the old
                    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=final.parent))
                    old.rmdir()
                    os.replace(final, old)
                    try:
                        os.replace(tmp, final)
                    except OSError:
                        os.replace(old, final)
                        raise
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    os.chmod(tmp, (0o777 if is_dir else 0o666) & ~_umask())
                    os.replace(tmp, final)
        except OSError as exc:
            raise CheckpointError(f"cannot move the output into place: {exc.strerror or exc}") from exc
        self.staged = []

    def abort(self) -> None:
        for tmp, _, is_dir in self.staged:
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp) if is_dir else tmp.unlink()
        self.staged = []

    def __enter__(self) -> "_Transaction":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_guard(what: Path):
    """Turn OSErrors while writing into CheckpointError (disk full, permissions)."""
    @contextlib.contextmanager
    def guard():
        try:
            yield
        except OSError as exc:
            raise CheckpointError(f"cannot write {what}: {exc.strerror or exc}") from exc
    return guard()


class SafetensorsWriter:
    """Write a safetensors file one tensor at a time.

    With ``entries`` (name, dtype, shape, nbytes) known up front, the header goes first and every
    tensor is streamed straight after it. Without (compressed formats, whose sizes are known only
    once pruned) the data is spooled to a second temporary file and the header written at close.
    """

    def __init__(self, path: Path, metadata: Mapping[str, str], entries: Sequence[tuple] | None = None) -> None:
        self.path, self.metadata = path, dict(metadata)
        self.entries: list[tuple] = []
        self.expected = list(entries) if entries is not None else None
        self.f = open(path, "wb")
        self.spool = None
        if self.expected is not None:
            self._write_header(self.f, self.expected)
        else:
            self.spool_path = path.with_name(path.name + ".body")
            self.spool = open(self.spool_path, "wb")

    def _write_header(self, f, entries: Sequence[tuple]) -> None:
        header: dict[str, Any] = {}
        if self.metadata:
            header["__metadata__"] = self.metadata
        offset = 0
        for name, dtype, shape, nbytes in entries:
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)  # pad to 8 bytes, as safetensors does
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)

    def write(self, name: str, data: np.ndarray | Iterable[bytes], dtype: str | None = None,
              shape: Sequence[int] | None = None) -> None:
        """Append a tensor: an array, or the raw bytes of one (with its dtype and shape)."""
        target = self.spool or self.f
        if isinstance(data, np.ndarray):
            dtype, shape = _st_dtype(data), data.shape
            array = np.ascontiguousarray(data)
            target.write(array.reshape(-1).view(np.uint8).data if array.size else b"")
            nbytes = array.nbytes
        else:
            nbytes = 0
            for piece in data:
                target.write(piece)
                nbytes += len(piece)
        entry = (name, dtype, tuple(shape), nbytes)
        if self.expected is not None:
            want = self.expected[len(self.entries)]
            if want != entry:
                raise CheckpointError(f"internal error: writing {entry} where the header says {want}")
        self.entries.append(entry)

    def close(self) -> None:
        if self.expected is not None and len(self.entries) != len(self.expected):
            raise CheckpointError(f"internal error: {len(self.entries)} of {len(self.expected)} tensors written")
        if self.spool is not None:
            self.spool.close()
            # lay the data out by alignment, widest dtype first (as safetensors' own serializer
            # does), so every tensor of a memory-mapped file is aligned to its itemsize
            starts, position = [], 0
            for entry in self.entries:
                starts.append(position)
                position += entry[3]
            order = sorted(range(len(self.entries)), key=lambda i: -_ST_DTYPES[self.entries[i][1]][1])
            self._write_header(self.f, [self.entries[i] for i in order])
            with open(self.spool_path, "rb") as body:
                for i in order:
                    body.seek(starts[i])
                    left = self.entries[i][3]
                    while left:
                        piece = body.read(min(left, 64 << 20))
                        if not piece:
                            raise CheckpointError(f"{self.spool_path}: spooled data is short")
                        self.f.write(piece)
                        left -= len(piece)
            os.unlink(self.spool_path)
            self.spool = None
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()

    def discard(self) -> None:
        for f in (self.f, self.spool):
            if f is not None:
                f.close()
        if self.spool is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.spool_path)


class NpzWriter:
    """Write an ``.npz`` one array at a time (what ``numpy.savez`` does, streamed); metadata goes
    into the zip comment as JSON, bfloat16 arrays are stored as raw 2-byte values and their dtype
    recorded under ``pruneplug.dtypes``."""

    def __init__(self, path: Path, metadata: Mapping[str, str], compressed: bool) -> None:
        self.zf = zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED, allowZip64=True)
        self.metadata = dict(metadata)
        self.dtypes = json.loads(self.metadata.get("pruneplug.dtypes", "{}"))

    def write(self, name: str, array: np.ndarray) -> None:
        if np.dtype(array.dtype).name == "bfloat16":
            self.dtypes[name] = "bfloat16"
            array = array.view(np.uint16)
        with self.zf.open(name + ".npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)

    def close(self) -> None:
        if self.dtypes:
            self.metadata["pruneplug.dtypes"] = json.dumps(self.dtypes, sort_keys=True)
        comment = json.dumps(self.metadata, sort_keys=True).encode("utf-8")
        if len(comment) > 65535:
            raise CheckpointError("the npz metadata does not fit in a zip comment (64 KiB)")
        self.zf.comment = comment
        self.zf.close()

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self.zf.close()


# ---------------------------------------------------------------------------------------------
# prune_checkpoint
# ---------------------------------------------------------------------------------------------
_NM_RE = re.compile(r"^(\d+):(\d+)$")
_BLOCK_RE = re.compile(r"^block\((\d+),\s*(\d+)\)$")
FORMATS = ("dense", "sparse-24-bitmask", "sparse-bitmask")


@dataclass
class _Task:
    ref: TensorRef
    status: str
    reason: str | None = None
    k: int | None = None  # global scope: exact count to prune


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _fits(ref: TensorRef, pattern: str, axis: int) -> str | None:
    """Why ``pattern`` cannot be applied to ``ref`` (None when it can)."""
    shape = ref.shape
    nm = _NM_RE.match(pattern)
    if nm:
        m = int(nm.group(2))
        if not shape:
            return "0-d tensor cannot be grouped"
        if not -len(shape) <= axis < len(shape):
            return f"axis {axis} out of range for shape {list(shape)}"
        if shape[axis] % m:
            return f"axis {axis % len(shape)} has {shape[axis]} elements, not divisible by M={m}"
        return None
    if pattern in ("row", "column") or _BLOCK_RE.match(pattern):
        if len(shape) != 2:
            return f"{pattern} pruning needs a 2-D tensor, shape is {list(shape)}"
        block = _BLOCK_RE.match(pattern)
        if block and (shape[0] % int(block.group(1)) or shape[1] % int(block.group(2))):
            return f"{pattern} does not divide shape {list(shape)}"
    return None


def _pruned_count(pattern: str, sparsity: float | None, shape: tuple, k: int | None) -> int:
    n = math.prod(shape)
    if k is not None:
        return k
    nm = _NM_RE.match(pattern)
    if nm:
        keep, m = int(nm.group(1)), int(nm.group(2))
        return n // m * (m - keep)
    if pattern == "unstructured":
        return api.count_to_prune(sparsity, n)
    if pattern == "row":
        return api.count_to_prune(sparsity, shape[0]) * shape[1]
    if pattern == "column":
        return api.count_to_prune(sparsity, shape[1]) * shape[0]
    block = _BLOCK_RE.match(pattern)
    bh, bw = int(block.group(1)), int(block.group(2))
    return api.count_to_prune(sparsity, (shape[0] // bh) * (shape[1] // bw)) * bh * bw


def prune_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike | None = None,
    *,
    sparsity: float | None = None,
    pattern: str = "unstructured",
    scope: str = "layer",
    method: str = "l1",
    axis: int = -1,
    format: str = "dense",
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    backend: str | None = None,
    masks_out: str | os.PathLike | None = None,
    report: str | os.PathLike | None = None,
    dry_run: bool = False,
    strict: bool = False,
    in_place: bool = False,
    progress: ProgressLike | None = None,
    _before_commit: Callable[[], None] | None = None,
) -> PruneReport:
    """Prune a checkpoint and write it in the same form; return a :class:`PruneReport`.

    ``src`` is a ``.safetensors`` file, a sharded directory (``model.safetensors.index.json``) or an
    ``.npz``; ``dst`` the output (a file, or a directory for a sharded input; an existing directory
    given for a single file receives a file of the input's name). ``dst`` equal to ``src`` needs
    ``in_place=True``; ``dry_run=True`` computes everything and writes nothing but the report.

    ``pattern="unstructured"`` with ``sparsity`` and ``scope="layer"`` (each tensor) or ``"global"``
    (exactly ``round(sparsity*total)`` over all selected tensors, see the module docstring);
    ``"N:M"`` along ``axis``; ``"row"``, ``"column"``, ``"block(H,W)"`` per tensor. Tensors the pattern
    does not fit are skipped and reported, or an error with ``strict=True``. ``format`` stores pruned
    weights dense or in a compressed-tensors format. Which tensors: :data:`SELECTION_RULE`.

    Every output (checkpoint, masks, report) is written to a temporary file next to it and renamed
    at the end; any error leaves no partial output.

    Example::

        report = pp.prune_checkpoint("model.safetensors", "pruned.safetensors", sparsity=0.5, scope="global")
        print(report.format_table())
    """
    started = time.perf_counter()
    progress = progress or _NullProgress()
    src_path = Path(src)
    # -- arguments --------------------------------------------------------------------------
    if scope not in ("layer", "global"):
        raise InvalidArgumentError(f"scope={scope!r}: expected 'layer' or 'global'")
    if format not in FORMATS:
        raise InvalidArgumentError(f"format={format!r}: expected one of {list(FORMATS)}")
    api._check_method(method)
    nm = _NM_RE.match(pattern) if isinstance(pattern, str) else None
    if nm:
        api._check_nm(int(nm.group(1)), int(nm.group(2)))
        if sparsity is not None:
            raise InvalidArgumentError(f"sparsity={sparsity!r} cannot be combined with pattern={pattern!r}: N:M fixes it")
        if scope == "global":
            raise InvalidArgumentError(f"scope='global' applies to unstructured pruning, not pattern={pattern!r}")
    else:
        if pattern not in ("unstructured", "row", "column") and not (isinstance(pattern, str) and _BLOCK_RE.match(pattern)):
            raise InvalidArgumentError(
                f"pattern={pattern!r}: expected 'unstructured', 'N:M' (e.g. '2:4'), 'row', 'column' or 'block(H,W)'")
        if sparsity is None:
            raise InvalidArgumentError(f"pattern={pattern!r} needs a sparsity (a number in [0, 1])")
        api._check_sparsity(sparsity)
        if scope == "global" and pattern != "unstructured":
            raise InvalidArgumentError(f"scope='global' applies to unstructured pruning, not pattern={pattern!r}")
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise InvalidArgumentError(f"axis={axis!r} must be an integer")
    if format == "sparse-24-bitmask" and (pattern != "2:4" or axis not in (-1,)):
        raise InvalidArgumentError("format='sparse-24-bitmask' stores 2:4 sparsity along the last axis: use pattern='2:4' with axis=-1")

    ckpt = open_checkpoint(src_path)
    if format != "dense" and ckpt.kind == "npz":
        raise InvalidArgumentError(f"format={format!r} is a safetensors format; an npz checkpoint can only be written dense")
    out_path = _resolve_output(ckpt, dst, in_place, dry_run)
    masks_path = Path(masks_out) if masks_out is not None else None
    if masks_path is not None and _same_path(masks_path, src_path):
        raise CheckpointError(f"--masks-out {masks_path} is the input checkpoint")
    for extra in (masks_path if not dry_run else None, Path(report) if report is not None else None):
        if extra is not None:  # fail before the work, not after it
            _check_target_dir(extra)

    # -- selection and prechecks ------------------------------------------------------------
    names = sorted(ckpt.tensors)  # tensor order: sorted by name, whatever the file layout
    reasons = select_tensors((ckpt.tensors[n] for n in names), include, exclude)
    tasks: dict[str, _Task] = {}
    for name in names:
        ref = ckpt.tensors[name]
        if reasons[name] is not None:
            tasks[name] = _Task(ref, "kept", reasons[name])
            continue
        why = _fits(ref, pattern, axis)
        if why is not None:
            if strict:
                raise CheckpointError(f"tensor {name!r} cannot be pruned with pattern {pattern!r}: {why} (drop --strict to skip it)")
            tasks[name] = _Task(ref, "skipped", why)
        else:
            tasks[name] = _Task(ref, "pruned")
    selected = [n for n in names if tasks[n].status == "pruned"]
    if not selected:
        raise CheckpointError(
            f"{src_path}: no tensor selected for pruning ({len(names)} tensors; rule: {SELECTION_RULE})")
    if out_path is not None:
        _check_space(out_path, ckpt.total_bytes + (sum(ckpt.tensors[n].numel for n in selected) if masks_path else 0))

    # -- global plan --------------------------------------------------------------------------
    plan = None
    if scope == "global":
        sources = [_source(ckpt.tensors[n]) for n in selected]
        plan = plan_global(sources, sparsity, method, progress)
        for n, k_t in zip(selected, plan.counts):
            tasks[n].k = k_t

    settings = {
        "sparsity": sparsity, "pattern": pattern, "scope": scope if not nm else "layer", "method": method,
        "axis": axis, "format": format, "include": list(include or []), "exclude": list(exclude or []),
        "backend": backend or "auto", "strict": strict,
    }
    rows: dict[str, TensorReport] = {}
    xp = _device_module(backend)
    metadata_extra = _settings_metadata(settings, selected, plan)

    with _Transaction() as txn:
        writers: list[Any] = []
        try:
            outputs = _plan_outputs(ckpt, out_path, txn, dry_run, format)
            order = [name for _, in_names, _, _ in outputs for name in in_names]  # the inputs' data order
            mask_writer = None
            if masks_path is not None and not dry_run:
                mtmp = txn.stage_file(masks_path)
                with _write_guard(masks_path):
                    mask_writer = SafetensorsWriter(
                        mtmp, {"pruneplug.kind": "keep-masks (True = keep)", **metadata_extra},
                        [(n, "BOOL", ckpt.tensors[n].shape, ckpt.tensors[n].numel)
                         for n in order if tasks[n].status == "pruned"])
                writers.append(mask_writer)
            progress.start("pruning" if not dry_run else "pruning (dry run)", len(names), ckpt.total_bytes)
            for out_file, in_names, metadata, make_writer in outputs:
                writer = make_writer({**metadata, **metadata_extra}) if make_writer else None
                if writer is not None:
                    writers.append(writer)
                for name in in_names:
                    task = tasks[name]
                    rows[name] = _process(task, writer, mask_writer, pattern=pattern, sparsity=sparsity, method=method, axis=axis,
                                          format=format, backend=backend, kind=ckpt.kind, xp=xp)
                    progress.update(1, task.ref.nbytes)
                if writer is not None:
                    writer.close()
                    writers.remove(writer)
            if mask_writer is not None:
                mask_writer.close()
                writers.remove(mask_writer)
            progress.close()
            if out_path is not None and not dry_run:
                _finish_directory(ckpt, outputs, rows, format, settings, plan)
            report_obj = PruneReport(
                input=str(src_path), output=None if dry_run or out_path is None else str(out_path),
                settings=settings, selection_rule=SELECTION_RULE if not include else "--include/--exclude regexes",
                tensors=[rows[n] for n in names], threshold=plan.threshold if plan else None,
                passes=plan.passes if plan else 0, dry_run=dry_run, seconds=time.perf_counter() - started,
                masks_out=str(masks_path) if masks_path is not None and not dry_run else None,
            )
            if report is not None:
                rtmp = txn.stage_file(Path(report))
                with _write_guard(Path(report)):
                    rtmp.write_text(json.dumps(report_obj.to_dict(), indent=2) + "\n")
            if _before_commit is not None:
                _before_commit()
            txn.commit()
        except OSError as exc:
            raise CheckpointError(f"cannot write the output: {exc.strerror or exc}") from exc
        finally:
            for w in writers:
                w.discard()
            progress.close()
    return report_obj


def _settings_metadata(settings: dict, selected: list[str], plan: GlobalPlan | None) -> dict[str, str]:
    from pruneplug import __version__

    meta = {f"pruneplug.{k}": json.dumps(v) if isinstance(v, (list, bool)) or v is None else str(v)
            for k, v in settings.items()}
    meta["pruneplug.version"] = __version__
    meta["pruneplug.pruned_tensors"] = str(len(selected))
    if plan is not None and plan.threshold is not None:
        meta["pruneplug.threshold"] = repr(plan.threshold)
    return meta


def _resolve_output(ckpt: Checkpoint, dst: Any, in_place: bool, dry_run: bool) -> Path | None:
    if dst is None:
        if in_place:
            return ckpt.path
        if dry_run:
            return None
        raise InvalidArgumentError("an output path is needed (-o OUT), or in_place=True / --in-place")
    out = Path(dst)
    if ckpt.kind != "sharded" and out.is_dir():
        out = out / ckpt.path.name
    if out.resolve() == ckpt.path.resolve() or _same_path(out, ckpt.path):
        if not in_place:
            raise CheckpointError(f"the output {out} is the input; pass --in-place (in_place=True) to overwrite it")
        return ckpt.path
    if in_place:
        raise InvalidArgumentError(f"--in-place with an output {out} that is not the input {ckpt.path}")
    if ckpt.kind == "sharded":
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise CheckpointError(f"the output directory {out} exists and is not empty; remove it or choose another")
    else:
        wanted = ".npz" if ckpt.kind == "npz" else ".safetensors"
        if out.suffix != wanted:
            raise CheckpointError(f"the output {out} should end in {wanted}, the input's form")
    if not out.parent.is_dir():
        raise CheckpointError(f"cannot write {out}: directory {out.parent} does not exist")
    if not dry_run and not os.access(out.parent, os.W_OK | os.X_OK):
        raise CheckpointError(f"cannot write to directory {out.parent}: permission denied")
    return out


def _check_target_dir(path: Path) -> None:
    if path.is_dir():
        raise CheckpointError(f"cannot write {path}: it is a directory")
    if not path.parent.is_dir():
        raise CheckpointError(f"cannot write {path}: directory {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise CheckpointError(f"cannot write to directory {path.parent}: permission denied")


def _check_space(out: Path, needed: int) -> None:
    with contextlib.suppress(OSError):
        free = shutil.disk_usage(out.parent if not out.is_dir() else out).free
        if needed > free:
            raise CheckpointError(f"not enough disk space in {out.parent}: about {needed / 1e9:.2f} GB needed, {free / 1e9:.2f} GB free")


def _plan_outputs(ckpt: Checkpoint, out: Path | None, txn: _Transaction, dry_run: bool, format: str):
    """(output file, tensor names in write order, its metadata, writer factory or None) per file."""
    if out is None or dry_run:
        if ckpt.kind == "npz":
            return [(None, list(ckpt.tensors), ckpt.metadata, None)]
        return [(None, [r.name for r in f.tensors], f.metadata, None) for f in ckpt.files]
    if ckpt.kind == "npz":
        tmp = txn.stage_file(out)
        return [(out, list(ckpt.tensors), ckpt.metadata,
                 lambda meta: NpzWriter(tmp, meta, ckpt.npz_compressed))]
    if ckpt.kind == "safetensors":
        tmp = txn.stage_file(out)
        files = [(tmp, ckpt.files[0])]
    else:
        tmpdir = txn.stage_dir(out)
        files = [(tmpdir / f.path.name, f) for f in ckpt.files]
    result = []
    for target, f in files:
        # dense output has the input's layout: the header goes first and tensors stream after it
        entries = [(r.name, r.dtype, r.shape, r.nbytes) for r in f.tensors] if format == "dense" else None

        def factory(meta, target=target, entries=entries):
            with _write_guard(target):
                return SafetensorsWriter(target, meta, entries)
        result.append((target, [r.name for r in f.tensors], f.metadata, factory))
    return result


def _device_module(backend: str | None) -> Any:
    """CuPy when ``backend`` names an available backend that takes CuPy arrays and not NumPy ones
    (``--backend cuda``): tensors are then copied to the GPU, pruned there and copied back.
    Otherwise None (NumPy arrays; the core reports a backend that cannot run)."""
    if backend in (None, "auto"):
        return None
    status = next((b for b in api.backends() if b.name == backend), None)
    if status is None or not status.available or "numpy" in status.array_types or "cupy" not in status.array_types:
        return None
    import cupy

    return cupy


def _process(task: _Task, writer: Any, mask_writer: Any, *, pattern: str, sparsity: float | None,
             method: str, axis: int, format: str, backend: str | None, kind: str, xp: Any = None) -> TensorReport:
    ref = task.ref
    row = TensorReport(ref.name, list(ref.shape), ref.dtype, ref.numel, task.status, task.reason)
    counted = ref.prunable
    if task.status != "pruned":
        if counted:
            row.zeros_before = row.zeros_after = _count_zeros(ref.chunks())
        if writer is not None:
            if kind == "npz":
                writer.write(ref.name, ref.array())
            else:
                writer.write(ref.name, ref.raw_chunks(), ref.dtype, ref.shape)
        return row
    view = ref.array()
    row.zeros_before = _count_zeros(_flat_chunks(view))
    want_mask = mask_writer is not None
    if xp is not None:
        view = xp.asarray(np.ascontiguousarray(view))
    try:
        if task.k is not None:
            result = api.prune(view, sparsity=_sparsity_for(task.k, ref.numel), method=method,
                               backend=backend, return_mask=want_mask)
        elif _NM_RE.match(pattern):
            result = api.prune(view, pattern=pattern, method=method, axis=axis, backend=backend, return_mask=want_mask)
        else:
            result = api.prune(view, sparsity=sparsity, pattern=pattern, method=method, backend=backend,
                               return_mask=want_mask)
    except PrunePlugError as exc:
        if exc.args:
            exc.args = (f"tensor {ref.name!r}: {exc.args[0]}",) + exc.args[1:]
        raise
    del view
    pruned, mask = result if want_mask else (result, None)
    if xp is not None:
        pruned = xp.asnumpy(pruned)
    if mask is not None:
        mask_writer.write(ref.name, xp.asnumpy(mask.data) if xp is not None else np.asarray(mask.data))
        del mask
    row.pruned = _pruned_count(pattern, sparsity, ref.shape, task.k)
    row.zeros_after = int(np.count_nonzero(pruned == 0))
    if writer is not None:
        if format != "dense" and (format == "sparse-bitmask" or len(ref.shape) == 2):
            from pruneplug import compressed_tensors

            for key, value in compressed_tensors.encode(ref.name, pruned, format).items():
                writer.write(key, value)
            row.stored_as = format
        else:
            if format != "dense":
                row.reason = f"kept dense: {format} stores 2-D weights only"
            writer.write(ref.name, pruned)
    return row


def _finish_directory(ckpt: Checkpoint, outputs, rows: dict, format: str, settings: dict,
                      plan: GlobalPlan | None) -> None:
    """For a sharded output: the index (new weight map and total size) and the other files of the
    input directory (config, tokenizer, ...) copied; with a compressed format, config.json gains
    the compressed-tensors ``quantization_config``."""
    if ckpt.kind != "sharded":
        return
    tmpdir = outputs[0][0].parent
    weight_map, total = {}, 0
    for target, *_ in outputs:
        st = read_safetensors_header(target)
        for ref in st.tensors:
            weight_map[ref.name] = target.name
            total += ref.nbytes
    index = dict(ckpt.index or {})
    meta = dict(index.get("metadata") or {})
    meta["total_size"] = total
    meta.update({k: v for k, v in _settings_metadata(settings, [n for n, r in rows.items() if r.status == "pruned"], plan).items()})
    index["metadata"] = meta
    index["weight_map"] = dict(sorted(weight_map.items()))
    with _write_guard(tmpdir / INDEX_NAME):
        (tmpdir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        shards = {f.path.name for f in ckpt.files} | {INDEX_NAME}
        for item in sorted(ckpt.path.iterdir()):
            if item.name in shards or item.name.startswith("."):
                continue
            if item.is_dir():
                shutil.copytree(item, tmpdir / item.name, symlinks=True)
            else:
                shutil.copy2(item, tmpdir / item.name)
        config = tmpdir / "config.json"
        if format != "dense" and config.is_file():
            from pruneplug import compressed_tensors as ct

            compressed = [r for r in rows.values() if r.stored_as == format]
            numel = sum(r.numel for r in compressed)
            zeros = sum(r.zeros_after for r in compressed)
            cfg = json.loads(config.read_text())
            sparsity_cfg = ct.sparsity_config(
                format, global_sparsity=zeros / numel if numel else 0.0,
                targets=sorted(ct.prefix_of(r.name) for r in compressed),
                ignore=sorted(ct.prefix_of(r.name) for r in rows.values() if r.stored_as != format and r.numel),
            )
            qc = cfg.get("quantization_config")
            if isinstance(qc, dict) and qc.get("quant_method") == "compressed-tensors":
                qc["sparsity_config"] = sparsity_cfg
            else:
                cfg["quantization_config"] = ct.quantization_config(sparsity_cfg)
            config.write_text(json.dumps(cfg, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# inspect
# ---------------------------------------------------------------------------------------------
QUANTILES = (0.0, 0.01, 0.25, 0.5, 0.75, 0.99, 1.0)
NM_MS = (4, 8, 16)


@dataclass
class InspectRow:
    """One tensor of :func:`inspect_checkpoint`: ``is_24`` (2:4 along the last axis; ``None`` when the
    last axis does not divide by 4), ``nm`` the tightest ``"N:M"`` per common ``M`` (the most nonzeros
    in any group of ``M`` along the last axis), ``quantiles`` of ``|w|`` at :data:`QUANTILES`."""

    name: str
    shape: list
    dtype: str
    numel: int
    zeros: int | None = None
    is_24: bool | None = None
    nm: dict = field(default_factory=dict)
    quantiles: list | None = None
    selected: bool = False

    @property
    def sparsity(self) -> float | None:
        return None if self.zeros is None else (self.zeros / self.numel if self.numel else 0.0)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["sparsity"] = self.sparsity
        return d


@dataclass
class InspectReport:
    path: str
    kind: str
    metadata: dict
    tensors: list[InspectRow]
    histogram: dict | None = None  # log10 |w| histogram of the selected tensors: edges, counts, zeros
    threshold: float | None = None  # |w| (l1) threshold of a global prune at threshold_sparsity
    threshold_sparsity: float | None = None

    def to_dict(self) -> dict:
        return {"path": self.path, "kind": self.kind, "metadata": self.metadata,
                "threshold": self.threshold, "threshold_sparsity": self.threshold_sparsity,
                "tensors": [t.to_dict() for t in self.tensors]}

    def format_table(self) -> str:
        width = max([len("tensor")] + [len(t.name) for t in self.tensors])
        lines = [f"{'tensor':<{width}}  {'shape':<18} {'dtype':<5} {'sparsity':>8} {'2:4':>4} {'N:M (M=4,8,16)':<16} "
                 f"{'|w| min':>9} {'p1':>9} {'p50':>9} {'p99':>9} {'max':>9}"]
        fmt = lambda v: f"{v:9.3g}"  # noqa: E731
        for t in self.tensors:
            sp = "-" if t.sparsity is None else f"{100 * t.sparsity:7.2f}%"
            is24 = "-" if t.is_24 is None else ("yes" if t.is_24 else "no")
            nm = ",".join(t.nm.values()) or "-"
            q = t.quantiles
            qs = " ".join(fmt(q[i]) for i in (0, 1, 3, 5, 6)) if q else ""
            lines.append(f"{t.name:<{width}}  {str(tuple(t.shape)):<18} {t.dtype:<5} {sp:>8} {is24:>4} {nm:<16} {qs}")
        counted = [t for t in self.tensors if t.zeros is not None]
        numel = sum(t.numel for t in counted)
        lines.append(f"total: {len(self.tensors)} tensors, {sum(t.numel for t in self.tensors):,} parameters, "
                     f"floating sparsity {100 * (sum(t.zeros for t in counted) / numel if numel else 0):.2f}%")
        pp_meta = {k: v for k, v in self.metadata.items() if k.startswith("pruneplug.")}
        if pp_meta:
            lines.append("pruned by pruneplug: " + ", ".join(f"{k[10:]}={v}" for k, v in sorted(pp_meta.items())))
        return "\n".join(lines)


_HIST_EDGES = np.linspace(-12.0, 4.0, 321)  # log10 |w|, 0.05 decades a bin


def _max_group_nnz(array: np.ndarray, m: int) -> int:
    rows = array.reshape(-1, array.shape[-1] // m, m)
    step = max(1, CHUNK // array.shape[-1])
    most = 0
    for start in range(0, rows.shape[0], step):
        part = rows[start:start + step]
        if part.size:
            most = max(most, int((part != 0).sum(axis=2).max()))
    return most


def inspect_checkpoint(src: str | os.PathLike, *, include: Sequence[str] | None = None,
                       exclude: Sequence[str] | None = None, threshold_sparsity: float | None = 0.5,
                       histogram: bool = False, progress: ProgressLike | None = None) -> InspectReport:
    """Per tensor: shape, dtype, sparsity (exact zeros), whether it is 2:4 along the last axis, the
    tightest N:M for M in 4, 8, 16, and ``|w|`` quantiles. With ``histogram=True`` also the
    ``log10 |w|`` histogram of the tensors the selection rule picks, and the ``|w|`` threshold a global
    L1 prune to ``threshold_sparsity`` would use (what ``--plot`` draws). One tensor in memory at a time.
    """
    progress = progress or _NullProgress()
    ckpt = open_checkpoint(src)
    names = sorted(ckpt.tensors)
    reasons = select_tensors((ckpt.tensors[n] for n in names), include, exclude)
    rows = []
    counts = np.zeros(len(_HIST_EDGES) - 1, dtype=np.int64)
    zero_total = 0
    progress.start("inspecting", len(names), ckpt.total_bytes)
    for name in names:
        ref = ckpt.tensors[name]
        row = InspectRow(name, list(ref.shape), ref.dtype, ref.numel, selected=reasons[name] is None)
        if ref.prunable:
            array = ref.array()
            row.zeros = _count_zeros(_flat_chunks(array))
            if array.ndim and array.shape[-1] % 4 == 0 and array.size:
                row.is_24 = api.is_nm_sparse(array, 2, 4)
            if array.ndim and array.size:
                for m in NM_MS:
                    if array.shape[-1] % m == 0:
                        row.nm[str(m)] = f"{_max_group_nnz(array, m)}:{m}"
            if array.size:
                mags = np.abs(array.reshape(-1).astype(np.float64 if array.dtype == np.float64 else np.float32))
                if not np.isfinite(mags).all():
                    row.quantiles = None
                else:
                    row.quantiles = [float(v) for v in np.quantile(mags, QUANTILES)]
                if histogram and row.selected:
                    nz = mags[mags > 0]
                    zero_total += mags.size - nz.size
                    logs = np.clip(np.log10(nz), _HIST_EDGES[0], _HIST_EDGES[-1])
                    counts += np.histogram(logs, bins=_HIST_EDGES)[0]
                del mags
            del array
        rows.append(row)
        progress.update(1, ref.nbytes)
    progress.close()
    result = InspectReport(str(src), ckpt.kind, ckpt.metadata, rows)
    if histogram:
        result.histogram = {"log10_edges": _HIST_EDGES.tolist(), "counts": counts.tolist(), "zeros": zero_total}
        chosen = [n for n in names if reasons[n] is None]
        if threshold_sparsity is not None and chosen:
            sources = [_source(ckpt.tensors[n]) for n in chosen]
            plan = plan_global(sources, threshold_sparsity, "l1", progress)
            result.threshold, result.threshold_sparsity = plan.threshold, threshold_sparsity
    return result


def plot_inspection(report: InspectReport, path: str | os.PathLike) -> None:
    """Draw per-tensor sparsity and the ``|w|`` histogram with the pruning threshold into a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CheckpointError("--plot needs matplotlib: pip install 'pruneplug[plot]'") from None
    rows = [t for t in report.tensors if t.sparsity is not None]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 4 + 0.12 * len(rows)), gridspec_kw={"height_ratios": [max(len(rows), 4), 8]})
    ax1.barh(range(len(rows)), [100 * t.sparsity for t in rows], color=["C0" if t.selected else "C7" for t in rows])
    ax1.set_yticks(range(len(rows)))
    ax1.set_yticklabels([t.name for t in rows], fontsize=6)
    ax1.invert_yaxis()
    ax1.set_xlim(0, 100)
    ax1.set_xlabel("sparsity (% exact zeros); grey: not selected for pruning")
    ax1.set_title(f"{report.path}")
    hist = report.histogram
    if hist:
        edges = np.array(hist["log10_edges"])
        ax2.stairs(hist["counts"], edges, fill=True, alpha=0.7, label=f"|w| of selected tensors ({hist['zeros']:,} zeros not shown)")
        used = report.metadata.get("pruneplug.threshold")
        if used is not None:  # the score threshold this checkpoint was pruned with
            method = report.metadata.get("pruneplug.method", "l1")
            value = float(used) ** (0.5 if method == "l2" else 1.0)
            if value > 0:
                ax2.axvline(math.log10(value), color="C2", linestyle="--",
                            label=f"threshold this checkpoint was pruned at (|w| = {value:.3g})")
        if report.threshold is not None and report.threshold > 0:
            ax2.axvline(math.log10(report.threshold), color="C3",
                        label=f"global L1 threshold at {100 * report.threshold_sparsity:g}%: |w| = {report.threshold:.3g}")
        elif report.threshold is not None:
            ax2.plot([], [], " ", label=f"global L1 threshold at {100 * report.threshold_sparsity:g}% is 0 (that many zeros already)")
        ax2.set_xlabel("log10 |w|")
        ax2.set_ylabel("weights")
        nz = np.flatnonzero(hist["counts"])
        if nz.size:
            ax2.set_xlim(edges[max(nz[0] - 2, 0)], edges[min(nz[-1] + 3, len(edges) - 1)])
        ax2.legend(fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as exc:
        raise CheckpointError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        plt.close(fig)


__all__ = [
    "SELECTION_RULE", "Checkpoint", "GlobalPlan", "InspectReport", "InspectRow", "PruneReport", "TensorRef",
    "TensorReport", "global_unstructured_masks", "inspect_checkpoint", "open_checkpoint", "plan_global",
    "plot_inspection", "prune_checkpoint", "read_safetensors_header", "select_tensors",
]

"""Calibration statistics: what activation-aware criteria (Wanda, ...) know about a layer's inputs.

Aprender's names: a :class:`CalibrationContext` maps each weight's tensor name (the name in the
checkpoint or ``model.named_parameters()``, e.g. ``"encoder.layer.0.attention.self.query.weight"``)
to the :class:`ActivationStats` of that layer's input features. The statistics are sums, so they
can be produced by any runtime, merged across batches or workers, and stored in one safetensors
file whose format is documented in ``docs/calibration.md`` (:meth:`CalibrationContext.save`,
:meth:`CalibrationContext.load`).

Example::

    >>> import numpy as np, pruneplug as pp
    >>> x = np.array([[1.0, 0.0], [3.0, 2.0]])            # 2 tokens, 2 input features
    >>> s = pp.ActivationStats.from_inputs(x)
    >>> s.input_norms, s.count, s.squared_mean
    (array([10.,  4.]), 2, array([5., 2.]))
    >>> ctx = pp.CalibrationContext({"fc.weight": s})
    >>> ctx.require_stats("fc.weight").in_features
    2
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from pruneplug.errors import CalibrationError

#: Value of the ``format`` metadata key of a statistics file.
FILE_FORMAT = "pruneplug.calibration"
#: Version of the file format this module writes; the versions it reads.
FILE_VERSION = "2"
READ_VERSIONS = ("1", "2")
#: Separator between the weight's tensor name and the field in the file's tensor names.
SEPARATOR = "::"
#: Fields an entry may have in the file: name -> (safetensors dtypes accepted, required).
#: ``hessian`` (``X^T X`` summed over tokens, ``[in_features, in_features]``) is read and written
#: for the SparseGPT criterion; version 2 stores it in the dtype it was accumulated in.
FIELDS = {"input_norms": (("F64", "F32"), True), "count": (("I64",), True), "hessian": (("F64", "F32"), False)}


@dataclass
class ActivationStats:
    """Input statistics of one linear layer, accumulated over calibration tokens.

    * ``input_norms``: float64 ``[in_features]``, the sum over tokens of ``x_j ** 2`` (so
      ``sqrt(input_norms[j])`` is the L2 norm ``||X_j||_2`` of input feature ``j`` over all tokens,
      the quantity Wanda multiplies ``|W_ij|`` with);
    * ``count``: how many tokens were summed (padding excluded);
    * ``squared_mean`` (derived): ``input_norms / count``, the mean of ``x_j ** 2``;
    * ``input_axis``: the weight's input-feature axis: 1 for ``nn.Linear`` (``[out, in]``), 0 for
      Hugging Face ``Conv1D`` (``[in, out]``);
    * ``hessian``: optional ``[in, in]`` sum of ``x x^T`` (SparseGPT), a NumPy array or a torch
      tensor (the stream keeps it on the device it was accumulated on, in float32 by default);
      None otherwise.

    Layers that read the same input (q/k/v, gate/up) may share one object.
    """

    input_norms: np.ndarray
    count: int
    input_axis: int = 1
    hessian: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.input_norms = np.asarray(self.input_norms, dtype=np.float64)
        self.count = int(self.count)
        if self.input_norms.ndim != 1:
            raise CalibrationError(f"input_norms must be 1-D, got shape {self.input_norms.shape}")
        if self.input_axis not in (0, 1):
            raise CalibrationError(f"input_axis={self.input_axis!r}: expected 1 ([out, in]) or 0 ([in, out])")

    @classmethod
    def zeros(cls, in_features: int, input_axis: int = 1) -> "ActivationStats":
        """Empty statistics for a layer with ``in_features`` inputs."""
        return cls(np.zeros(int(in_features), dtype=np.float64), 0, input_axis)

    @classmethod
    def from_inputs(cls, x: Any, input_axis: int = 1) -> "ActivationStats":
        """Statistics of the inputs ``x`` (``[..., in_features]``, every leading index a token)."""
        stats = cls.zeros(np.shape(x)[-1], input_axis)
        stats.add(x)
        return stats

    @property
    def in_features(self) -> int:
        return int(self.input_norms.shape[0])

    @property
    def squared_mean(self) -> np.ndarray:
        """Mean of ``x_j ** 2`` over the tokens (``input_norms / count``; NaN when count is 0)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.input_norms / self.count

    def add(self, x: Any) -> None:
        """Add tokens ``x`` (NumPy, ``[..., in_features]``) to the sums (float64)."""
        flat = np.asarray(x, dtype=np.float64).reshape(-1, self.in_features)
        self.input_norms += np.einsum("ij,ij->j", flat, flat)
        self.count += flat.shape[0]

    def merge(self, other: "ActivationStats") -> "ActivationStats":
        """The statistics of both token sets (sums add)."""
        if other.in_features != self.in_features:
            raise CalibrationError(f"cannot merge statistics of {self.in_features} and {other.in_features} features")
        hessian = None
        if self.hessian is not None and other.hessian is not None:
            hessian = self.hessian + other.hessian
        return ActivationStats(self.input_norms + other.input_norms, self.count + other.count, self.input_axis,
                               hessian)


class CalibrationContext(Mapping[str, ActivationStats]):
    """Per-layer :class:`ActivationStats`, keyed by the weight's tensor name (a read-only mapping
    plus :meth:`add`). ``source`` describes where the statistics came from; ``metadata`` holds the
    file's free-form metadata (model, samples, mode, ...).

    Example::

        ctx = pp.torch.calibrate(model, batches)        # or CalibrationContext.load("stats.safetensors")
        ctx.save("stats.safetensors")
        pp.WandaImportance("fc1.weight").compute(model.fc1.weight, ctx)
    """

    def __init__(self, stats: Mapping[str, ActivationStats] | None = None, *, source: str = "",
                 metadata: Mapping[str, str] | None = None) -> None:
        self._stats: dict[str, ActivationStats] = dict(stats or {})
        self.source = source
        self.metadata: dict[str, str] = dict(metadata or {})

    def __getitem__(self, name: str) -> ActivationStats:
        return self._stats[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._stats)

    def __len__(self) -> int:
        return len(self._stats)

    def __repr__(self) -> str:
        return f"CalibrationContext({len(self)} layers{', from ' + self.source if self.source else ''})"

    def add(self, name: str, stats: ActivationStats) -> None:
        """Add (or merge into) the statistics of layer ``name``."""
        self._stats[name] = self._stats[name].merge(stats) if name in self._stats else stats

    def get_stats(self, name: str) -> ActivationStats | None:
        return self._stats.get(name)

    def require_stats(self, name: str) -> ActivationStats:
        """The statistics of ``name``; a :class:`CalibrationError` naming it when there are none."""
        if name not in self._stats:
            where = f" in {self.source}" if self.source else ""
            sample = ", ".join(sorted(self._stats)[:3]) or "none"
            raise CalibrationError(f"no calibration statistics for tensor {name!r}{where} (layers look like: {sample})")
        return self._stats[name]

    # -- checks ------------------------------------------------------------------------------
    def check_layer(self, name: str, shape: tuple) -> ActivationStats:
        """The statistics of ``name`` after checking they fit a weight of ``shape``."""
        stats = self.require_stats(name)
        shape = tuple(int(s) for s in shape)
        if len(shape) != 2 or shape[stats.input_axis] != stats.in_features:
            where = f"{self.source}: " if self.source else ""
            raise CalibrationError(
                f"{where}tensor {name!r} has shape {list(shape)} but its statistics have {stats.in_features} input "
                f"features (input axis {stats.input_axis}): the statistics were collected on another model")
        return stats

    def check_names(self, names: Any) -> None:
        """Every layer of the statistics must be a tensor of the checkpoint (``names``)."""
        known = set(names)
        foreign = sorted(n for n in self._stats if n not in known)
        if foreign:
            where = f"{self.source}: " if self.source else ""
            raise CalibrationError(f"{where}statistics for tensor {foreign[0]!r} (and {len(foreign) - 1} more) that "
                                   "the checkpoint does not have: the statistics were collected on another model")

    # -- the file ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> Path:
        """Write the statistics to one safetensors file (format version 2, ``docs/calibration.md``):
        layers that share one :class:`ActivationStats` object are stored once. Written to an
        unnamed temporary and renamed into place (the umask's mode, like every output): a failure
        leaves nothing behind."""
        path = Path(path)
        with StatisticsWriter(path, {**self.metadata, **(metadata or {})}) as writer:
            groups: dict[int, list[str]] = {}
            for name in sorted(self._stats):
                groups.setdefault(id(self._stats[name]), []).append(name)
            for names in groups.values():
                stats = self._stats[names[0]]
                writer.add(names, stats, [stats.input_axis] * len(names))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CalibrationContext":
        """Open and check a statistics file (version 1 or 2), reading it tensor by tensor: the input
        norms and counts (one vector per layer) at once, each Hessian only when its layer is asked
        for (and then checked). A :class:`CalibrationError` names the file and the tensor for
        anything wrong: not a statistics file, unknown field, wrong dtype or shape, NaN/Inf or
        negative sums, a layer without tokens, bad ``input_axes`` or ``shared_inputs`` metadata."""
        from pruneplug.checkpoint.formats import read_safetensors_header
        from pruneplug.errors import CheckpointError

        path = Path(path)
        if not path.is_file():
            raise CalibrationError(f"calibration statistics file {str(path)!r} does not exist")
        try:
            header = read_safetensors_header(path)
        except CheckpointError as exc:
            raise CalibrationError(f"{path}: not a readable safetensors file ({exc})") from None
        where = str(path)
        meta = dict(header.metadata or {})
        _check_header_meta(meta, where)
        axes = _json_map(meta, "input_axes", where, lambda v: v in (0, 1) and not isinstance(v, bool), "0 or 1")
        shared = _json_map(meta, "shared_inputs", where, lambda v: isinstance(v, str), "a weight name")
        refs: dict[str, dict[str, Any]] = {}
        for ref in header.tensors:
            layer, sep, field_name = ref.name.rpartition(SEPARATOR)
            if not sep or field_name not in FIELDS:
                raise CalibrationError(f"{where}: tensor {ref.name!r} is not '<weight name>{SEPARATOR}<field>' with a "
                                       f"field in {sorted(FIELDS)}")
            if ref.dtype not in FIELDS[field_name][0]:
                raise CalibrationError(f"{where}: tensor {ref.name!r} has dtype {ref.dtype}, expected one of "
                                       f"{list(FIELDS[field_name][0])}")
            refs.setdefault(layer, {})[field_name] = ref
        ctx = cls(source=where, metadata=meta)
        entries: dict[str, ActivationStats] = {}
        for layer in sorted(refs):
            entries[layer] = _entry_from_refs(layer, refs[layer], int(axes.get(layer, 1)), where)
            ctx._stats[layer] = entries[layer]
        for name, owner in shared.items():
            if owner not in entries:
                raise CalibrationError(f"{where}: metadata shared_inputs maps {name!r} to {owner!r}, which has no "
                                       "statistics in the file")
            ctx._stats[name] = _with_axis(entries[owner], int(axes.get(name, entries[owner].input_axis)))
        for name in axes:
            if name not in ctx._stats:
                raise CalibrationError(f"{where}: metadata input_axes names {name!r}, which has no statistics in "
                                       "the file")
        return ctx


class _LazyHessian:
    """A Hessian in a statistics file, read (and checked) when asked for: ``np.asarray`` and
    ``torch.as_tensor`` of it read the tensor; its shape is known without reading."""

    def __init__(self, ref: Any, where: str) -> None:
        self.ref, self.where = ref, where
        self.shape = tuple(ref.shape)

    def read(self) -> np.ndarray:
        values = np.array(self.ref.array())  # a copy: the map is closed with the array
        _check_finite(values, self.ref.name, self.where)
        return values

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        values = self.read()
        return values if dtype is None else values.astype(dtype)


def _with_axis(stats: ActivationStats, axis: int) -> ActivationStats:
    if stats.input_axis == axis:
        return stats
    return ActivationStats(stats.input_norms, stats.count, axis, stats.hessian)


def _check_header_meta(meta: dict, where: str) -> None:
    if meta.get("format") != FILE_FORMAT:
        raise CalibrationError(f"{where}: not a pruneplug calibration file (metadata format={meta.get('format')!r}, "
                               f"expected {FILE_FORMAT!r})")
    if meta.get("version") not in READ_VERSIONS:
        raise CalibrationError(f"{where}: calibration file version {meta.get('version')!r} is not supported (this "
                               f"pruneplug reads versions {', '.join(READ_VERSIONS)})")


def _json_map(meta: dict, key: str, where: str, valid: Any, expected: str) -> dict:
    """Metadata ``key`` as a JSON object of weight name -> value, every value checked."""
    try:
        value = json.loads(meta.get(key, "{}"))
    except json.JSONDecodeError as exc:
        raise CalibrationError(f"{where}: metadata {key} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CalibrationError(f"{where}: metadata {key} must be a JSON object of weight name -> {expected}, got "
                               f"{type(value).__name__}")
    for name, v in value.items():
        if not valid(v):
            raise CalibrationError(f"{where}: metadata {key}[{name!r}] is {v!r}; expected {expected}")
    return value


def _entry_from_refs(layer: str, refs: dict[str, Any], axis: int, where: str) -> ActivationStats:
    for name, (_, required) in FIELDS.items():
        if required and name not in refs:
            raise CalibrationError(f"{where}: tensor {layer + SEPARATOR + name!r} is missing (every layer needs "
                                   f"{[n for n, (_, r) in FIELDS.items() if r]})")
    norms_ref, count_ref = refs["input_norms"], refs["count"]
    if len(norms_ref.shape) != 1:
        raise CalibrationError(f"{where}: tensor {layer + SEPARATOR}input_norms has shape {list(norms_ref.shape)}, "
                               "expected [in_features]")
    if tuple(count_ref.shape) != (1,):
        raise CalibrationError(f"{where}: tensor {layer + SEPARATOR}count must be one positive token count, got shape "
                               f"{list(count_ref.shape)}")
    norms = np.array(norms_ref.array(), dtype=np.float64)
    count = int(count_ref.array()[0])
    if count <= 0:
        raise CalibrationError(f"{where}: tensor {layer + SEPARATOR}count must be one positive token count, got "
                               f"{count}")
    _check_finite(norms, layer + SEPARATOR + "input_norms", where)
    if (norms < 0).any():
        raise CalibrationError(f"{where}: tensor {layer + SEPARATOR}input_norms has negative sums of squares")
    hessian = None
    if "hessian" in refs:
        if tuple(refs["hessian"].shape) != (norms.shape[0],) * 2:
            raise CalibrationError(f"{where}: tensor {layer + SEPARATOR}hessian has shape "
                                   f"{list(refs['hessian'].shape)}, expected {[norms.shape[0]] * 2}")
        hessian = _LazyHessian(refs["hessian"], where)
    return ActivationStats(norms, count, axis, hessian)


class StatisticsWriter:
    """Write a statistics file (version 2) one entry at a time, through the checkpoint writers'
    transaction (an unnamed temporary renamed into place on success, nothing left on failure).

    Example::

        with StatisticsWriter(path, {"model": "m"}) as w:
            w.add(["q.weight", "k.weight"], stats, [1, 1])   # two layers, one input
    """

    def __init__(self, path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> None:
        self.path = Path(path)
        self.metadata: dict[str, str] = {k: str(v) for k, v in (metadata or {}).items()}
        self.axes: dict[str, int] = {}
        self.shared: dict[str, str] = {}
        self.layers = 0

    def __enter__(self) -> "StatisticsWriter":
        from pruneplug.checkpoint.writers import SafetensorsWriter, Transaction

        if self.path.is_dir():
            raise CalibrationError(f"-o {self.path}: is a directory; expected the statistics file to write")
        self.txn = Transaction()
        self.writer = SafetensorsWriter(self.txn.stage_file(self.path), {})
        return self

    def add(self, names: list[str], stats: ActivationStats, axes: list[int]) -> None:
        """One entry: the statistics of the input that the layers ``names`` read."""
        import torch

        owner = names[0]
        _check_finite(stats.input_norms, f"{owner}{SEPARATOR}input_norms", str(self.path))
        self.writer.write(f"{owner}{SEPARATOR}input_norms", np.ascontiguousarray(stats.input_norms, dtype=np.float64))
        self.writer.write(f"{owner}{SEPARATOR}count", np.array([stats.count], dtype=np.int64))
        if stats.hessian is not None:
            h = stats.hessian
            h = h.detach().cpu().numpy() if isinstance(h, torch.Tensor) else np.asarray(h)
            _check_finite(h, f"{owner}{SEPARATOR}hessian", str(self.path))
            self.writer.write(f"{owner}{SEPARATOR}hessian", np.ascontiguousarray(h))
        for name, axis in zip(names, axes):
            if axis != 1:
                self.axes[name] = axis
            if name != owner:
                self.shared[name] = owner
        self.layers += len(names)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.writer.discard()
            self.txn.abort()
            return
        try:
            self.writer.metadata = {**self.metadata, "format": FILE_FORMAT, "version": FILE_VERSION,
                                    "layers": str(self.layers), "input_axes": json.dumps(self.axes, sort_keys=True),
                                    "shared_inputs": json.dumps(self.shared, sort_keys=True)}
            self.writer.close()
            self.txn.commit()
        except BaseException:
            self.writer.discard()
            self.txn.abort()
            raise


def is_safetensors_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a safetensors file, judged by its content (an 8-byte little-endian
    header length that fits the file, then a JSON object), not by its name."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return False
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= size - 8 and head[8:9] == b"{"


def _check_finite(values: np.ndarray, tensor: str, where: str) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise CalibrationError(f"{where}: tensor {tensor!r} has {int(bad.sum())} NaN/Inf value(s), first at index "
                               f"{first}; statistics must be finite")

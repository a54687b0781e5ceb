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
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from pruneplug.errors import CalibrationError

#: Value of the ``format`` metadata key of a statistics file.
FILE_FORMAT = "pruneplug.calibration"
#: Version of the file format this module writes (and the newest it reads).
FILE_VERSION = "1"
#: Separator between the weight's tensor name and the field in the file's tensor names.
SEPARATOR = "::"
#: Fields a layer may have in the file: name -> (safetensors dtype, required).
#: ``hessian`` (``X^T X`` summed over tokens, ``[in_features, in_features]``) is read and written
#: for the SparseGPT criterion.
FIELDS = {"input_norms": ("F64", True), "count": ("I64", True), "hessian": ("F64", False)}


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
    * ``hessian``: optional float64 ``[in, in]`` sum of ``x x^T`` (SparseGPT); None otherwise.
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
        """Write the statistics to one safetensors file (format: ``docs/calibration.md``), through a
        temporary file renamed into place: a failure leaves nothing behind."""
        from safetensors.numpy import save_file

        path = Path(path)
        tensors: dict[str, np.ndarray] = {}
        axes: dict[str, int] = {}
        for name in sorted(self._stats):
            s = self._stats[name]
            _check_finite(s.input_norms, f"{name}{SEPARATOR}input_norms", str(path))
            tensors[f"{name}{SEPARATOR}input_norms"] = np.ascontiguousarray(s.input_norms, dtype=np.float64)
            tensors[f"{name}{SEPARATOR}count"] = np.array([s.count], dtype=np.int64)
            if s.hessian is not None:
                tensors[f"{name}{SEPARATOR}hessian"] = np.ascontiguousarray(s.hessian, dtype=np.float64)
            if s.input_axis != 1:
                axes[name] = s.input_axis
        meta = {**self.metadata, **(metadata or {}), "format": FILE_FORMAT, "version": FILE_VERSION,
                "layers": str(len(self._stats)), "input_axes": json.dumps(axes, sort_keys=True)}
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={k: str(v) for k, v in meta.items()})
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CalibrationContext":
        """Read and check a statistics file; a :class:`CalibrationError` naming the file and the
        tensor for anything wrong (not a statistics file, unknown field, wrong dtype or shape,
        NaN/Inf or negative sums, a layer without tokens)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise CalibrationError(f"calibration statistics file {str(path)!r} does not exist")
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = dict(f.metadata() or {})
                arrays = {k: f.get_tensor(k) for k in f.keys()}
        except CalibrationError:
            raise
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a bad file
            raise CalibrationError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None
        return cls._from_arrays(arrays, meta, str(path))

    @classmethod
    def _from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict[str, str], where: str) -> "CalibrationContext":
        if meta.get("format") != FILE_FORMAT:
            raise CalibrationError(f"{where}: not a pruneplug calibration file (metadata format="
                                   f"{meta.get('format')!r}, expected {FILE_FORMAT!r})")
        if meta.get("version") != FILE_VERSION:
            raise CalibrationError(f"{where}: calibration file version {meta.get('version')!r} is not supported "
                                   f"(this pruneplug reads version {FILE_VERSION})")
        try:
            axes = json.loads(meta.get("input_axes", "{}"))
        except json.JSONDecodeError as exc:
            raise CalibrationError(f"{where}: metadata input_axes is not JSON: {exc}") from None
        fields: dict[str, dict[str, np.ndarray]] = {}
        for key, value in arrays.items():
            layer, sep, field_name = key.rpartition(SEPARATOR)
            if not sep or field_name not in FIELDS:
                raise CalibrationError(f"{where}: tensor {key!r} is not '<weight name>{SEPARATOR}<field>' with a field "
                                       f"in {sorted(FIELDS)}")
            fields.setdefault(layer, {})[field_name] = value
        stats: dict[str, ActivationStats] = {}
        for layer in sorted(fields):
            stats[layer] = _layer_from_fields(layer, fields[layer], int(axes.get(layer, 1)), where)
        return cls(stats, source=where, metadata=meta)


def _check_finite(values: np.ndarray, tensor: str, where: str) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise CalibrationError(f"{where}: tensor {tensor!r} has {int(bad.sum())} NaN/Inf value(s), first at index "
                               f"{first}; statistics must be finite")


def _layer_from_fields(layer: str, f: dict[str, np.ndarray], axis: int, where: str) -> ActivationStats:
    for name, (dtype, required) in FIELDS.items():
        key = f"{layer}{SEPARATOR}{name}"
        if name not in f:
            if required:
                raise CalibrationError(f"{where}: tensor {key!r} is missing (every layer needs "
                                       f"{[n for n, (_, r) in FIELDS.items() if r]})")
            continue
        want = np.float64 if dtype == "F64" else np.int64
        if f[name].dtype != want:
            raise CalibrationError(f"{where}: tensor {key!r} has dtype {f[name].dtype}, expected {np.dtype(want)}")
    norms, count = f["input_norms"], f["count"]
    if norms.ndim != 1:
        raise CalibrationError(f"{where}: tensor {layer + SEPARATOR}input_norms has shape {list(norms.shape)}, "
                               "expected [in_features]")
    if count.shape != (1,) or int(count[0]) <= 0:
        raise CalibrationError(f"{where}: tensor {layer + SEPARATOR}count must be one positive token count, got "
                               f"{count.tolist()}")
    _check_finite(norms, layer + SEPARATOR + "input_norms", where)
    if (norms < 0).any():
        raise CalibrationError(f"{where}: tensor {layer + SEPARATOR}input_norms has negative sums of squares")
    hessian = f.get("hessian")
    if hessian is not None:
        if hessian.shape != (norms.shape[0],) * 2:
            raise CalibrationError(f"{where}: tensor {layer + SEPARATOR}hessian has shape {list(hessian.shape)}, "
                                   f"expected {[norms.shape[0]] * 2}")
        _check_finite(hessian, layer + SEPARATOR + "hessian", where)
    return ActivationStats(norms.copy(), int(count[0]), axis, None if hessian is None else hessian.copy())


"""The conformance kit's harness: how a check reaches a backend's array type (:class:`Harness`),
the data it builds (:func:`tricky_array`), the comparisons it makes against the reference
(:func:`assert_same_bits`, :func:`assert_same_outcome`) and :class:`Check` itself.

The kit's check modules (:mod:`pruneplug.testing`, :mod:`pruneplug.testing_sparse24`,
:mod:`pruneplug.testing_rows`) all build on this module; :mod:`pruneplug.testing` re-exports its
names, the import path users know.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

import pruneplug as pp
from pruneplug.errors import PrunePlugError
from pruneplug.registry import get_registry

REFERENCE = "numpy"
DTYPES = ("float16", "bfloat16", "float32", "float64")
LAYOUTS = ("C", "F", "transposed", "strided")


# ---------------------------------------------------------------------------------------------
# harness: how the kit reaches a backend's array type
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Harness:
    """The backend under test and how to move NumPy data to its array type and back.

    ``large_size`` bounds the biggest input the kit builds (large enough to need several blocks and
    passes in a real backend; an emulated GPU backend may lower it).
    """

    backend: str
    to_backend: Callable[[np.ndarray], Any]
    to_numpy: Callable[[Any], np.ndarray]
    large_size: int = 300_007
    dtypes: frozenset = frozenset(DTYPES)
    array_type: str = "numpy"

    def each(self, dtypes: Iterable[str] = DTYPES) -> list[str]:
        """The dtypes among ``dtypes`` that the backend declares (checks cover only those)."""
        return [d for d in dtypes if d in self.dtypes]

    def require(self, dtype: str) -> None:
        """Skip the running check (with the reason) when the backend does not declare ``dtype``."""
        if dtype not in self.dtypes:
            import pytest

            pytest.skip(f"backend {self.backend!r} does not declare dtype {dtype}")


#: The array types the public API promises (README): each backend's own (NumPy or CuPy), and
#: PyTorch tensors, which reach it as one of those (CPU tensors as NumPy, CUDA tensors as CuPy).
ARRAY_TYPES = ("native", "torch")


def harness_for(backend: str, large_size: int = 300_007, array_type: str = "native") -> Harness:
    """The harness for ``backend`` with user data of ``array_type``: ``"native"`` (the backend's
    own NumPy or CuPy arrays) or ``"torch"`` (PyTorch CPU tensors for a NumPy backend, CUDA
    tensors for a CuPy one). Skips the running check where that array type cannot exist here."""
    info = get_registry().info(backend)
    if array_type not in ARRAY_TYPES:
        raise ValueError(f"array_type={array_type!r}; expected one of {ARRAY_TYPES}")
    if "numpy" in info.array_types:
        if array_type == "torch":
            return Harness(backend, _torch_from_numpy("cpu"), _torch_to_numpy, large_size, info.dtypes, "torch-cpu")
        return Harness(backend, lambda a: a, np.asarray, large_size, info.dtypes)
    if "cupy" in info.array_types:
        if array_type == "torch":
            return Harness(backend, _torch_from_numpy("cuda"), _torch_to_numpy, large_size, info.dtypes, "torch-cuda")
        import cupy

        return Harness(backend, cupy.asarray, cupy.asnumpy, large_size, info.dtypes, "cupy")
    raise ValueError(f"backend {backend!r} takes {sorted(info.array_types)} arrays; the kit knows numpy and cupy")


def _torch_from_numpy(device: str) -> Callable[[np.ndarray], Any]:
    import pytest

    torch = pytest.importorskip("torch", reason="torch is not installed: the PyTorch checks cannot run")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device: torch has no CUDA here")

    def convert(a: np.ndarray) -> Any:
        a = np.array(a, copy=True, order="C")  # its own writable storage, like the other harnesses
        if a.dtype.name == "bfloat16":  # torch.from_numpy knows no ml_dtypes.bfloat16: the bits
            return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16).to(device)
        return torch.from_numpy(a).to(device)

    return convert


def _torch_to_numpy(t: Any) -> np.ndarray:
    # A check's reference run hands NumPy arrays to the backend named "numpy", also when that is
    # the backend under test: its results are NumPy arrays.
    if isinstance(t, np.ndarray):
        return t
    return np.array(pp.arrays.to_numpy(t.detach().cpu()))


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def np_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


_DENORMAL = {"float16": 2.0**-20, "bfloat16": 2.0**-130, "float32": 2.0**-140, "float64": 2.0**-1060}


def tricky_array(shape: tuple, dtype: str, seed: int = 0, *, signed: bool = True) -> np.ndarray:
    """Normal values mixed with heavy ties (few levels, +x and -x), signed zeros and denormals."""
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape, dtype=np.int64))
    x = rng.standard_normal(size)
    kind = rng.integers(0, 6, size)
    x[kind == 1] = np.round(x[kind == 1] * 2) / 4  # few levels: many exact ties
    x[kind == 2] = 0.0
    x[kind == 3] = -0.0
    x[kind == 4] = _DENORMAL[dtype] * rng.integers(1, 4, int((kind == 4).sum()))
    if not signed:
        x = np.abs(x)
    else:
        x *= np.where(rng.random(size) < 0.5, -1.0, 1.0)
    return x.astype(np_dtype(dtype)).reshape(shape)


def with_layout(harness: Harness, source: np.ndarray, layout: str) -> tuple[np.ndarray, Any]:
    """The same logical array as a NumPy view (for the reference) and as a backend array view.

    ``source`` is a C-contiguous "base"; the layouts are views of it: Fortran order, a transposed
    view, a strided slice.
    """
    if layout == "C":
        return source, harness.to_backend(source.copy())
    if layout == "F":
        # A Fortran-ordered copy holding the same logical values.
        view = np.asfortranarray(source)
        base = harness.to_backend(np.ascontiguousarray(source.T)).T
        return view, base
    if layout == "transposed":
        view = source.T
        return view, harness.to_backend(source.copy()).T
    if layout == "strided":
        slices = tuple(slice(None, None, 2) if i == 0 else slice(1, None) for i in range(source.ndim))
        return source[slices], harness.to_backend(source.copy())[slices]
    raise ValueError(layout)


def assert_same_bits(actual: Any, expected: Any, what: str) -> None:
    """Same shape, dtype and bytes (so -0.0 != +0.0 and NaN payloads count)."""
    a, e = np.asarray(actual), np.asarray(expected)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != reference {e.shape}"
    assert a.dtype == e.dtype, f"{what}: dtype {a.dtype} != reference {e.dtype}"
    a_bytes = np.ascontiguousarray(a).view(np.uint8)
    e_bytes = np.ascontiguousarray(e).view(np.uint8)
    if not np.array_equal(a_bytes, e_bytes):
        diff = np.flatnonzero((np.ascontiguousarray(a) != np.ascontiguousarray(e)).ravel()
                              | (a_bytes.reshape(a.size, -1) != e_bytes.reshape(e.size, -1)).any(axis=1)
                              if a.size else np.zeros(0, bool))
        first = int(diff[0]) if diff.size else -1
        raise AssertionError(
            f"{what}: {diff.size} element(s) differ from the reference; first at flat index {first}: "
            f"{a.ravel()[first] if first >= 0 else '?'} != {e.ravel()[first] if first >= 0 else '?'}"
        )


def stats_close(got: float, ref: float) -> bool:
    """Mean and std may differ in the last bits between backends (summation order): 1e-12 relative.
    NaN matches NaN and infinities match exactly."""
    if np.isnan(ref) or np.isinf(ref):
        return bool(np.isnan(got)) if np.isnan(ref) else got == ref
    return abs(got - ref) <= 1e-12 * abs(ref) + 1e-300


def _outcome(func: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", func()
    except PrunePlugError as exc:
        return "error", exc


def assert_same_outcome(harness: Harness, run: Callable[[str], Any], what: str) -> Any:
    """Run ``run(backend)`` on the backend and on the reference: same result bits, or same error."""
    kind, result = _outcome(lambda: run(harness.backend))
    ref_kind, ref_result = _outcome(lambda: run(REFERENCE))
    if ref_kind == "error":
        assert kind == "error", f"{what}: reference raised {ref_result!r}, backend returned normally"
        assert type(result) is type(ref_result), f"{what}: {type(result).__name__} != {type(ref_result).__name__}"
        assert str(result) == str(ref_result), f"{what}: message {str(result)!r} != {str(ref_result)!r}"
        return result
    if kind == "error":
        raise AssertionError(f"{what}: backend raised {result!r}, the reference did not") from result
    return result, ref_result


@dataclass(frozen=True)
class Check:
    name: str
    func: Callable[[Harness], None]
    operations: frozenset = field(default_factory=frozenset)

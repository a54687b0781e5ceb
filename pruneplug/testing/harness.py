"""How a check reaches the backend under test: :class:`Harness` (the backend, its array type, the
dtypes it declares), :func:`harness_for` (the harness of a registered backend), :class:`Check`
(one named rule and the operations it needs) and :data:`REFERENCE` (the backend every result is
compared with).

A check is a function of a :class:`Harness`; it runs the public API on the backend under test
and on the reference with the same data and compares the two::

    >>> import numpy as np, pruneplug as pp
    >>> h = harness_for("numpy")
    >>> got, ref = h.run_both(pp.generate_nm_mask, np.array([[3.0, -1.0, 0.5, 2.0]]), 2, 4)
    >>> h.to_numpy(got.data).tolist() == ref.data.tolist() == [[True, False, False, True]]
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

import pruneplug as pp
from pruneplug.registry import get_registry

#: The backend every result is compared with: the NumPy reference, the specification. It is always
#: registered (``PRUNEPLUG_DISABLE_PLUGINS`` cannot remove it), so the kit runs wherever pruneplug does.
REFERENCE = "numpy"

#: The floating dtypes the kit covers (each check runs only those the backend declares).
DTYPES = ("float16", "bfloat16", "float32", "float64")

#: The array types the public API promises (README): each backend's own (NumPy or CuPy), and
#: PyTorch tensors, which reach it as one of those (CPU tensors as NumPy, CUDA tensors as CuPy).
ARRAY_TYPES = ("native", "torch")


@dataclass(frozen=True)
class Harness:
    """The backend under test and how to move NumPy data to its array type and back.

    ``large_size`` bounds the biggest input the kit builds (large enough to need several blocks and
    passes in a real backend; an emulated GPU backend may lower it).

    >>> h = Harness("numpy", to_backend=lambda a: a, to_numpy=np.asarray, dtypes=frozenset({"float32"}))
    >>> h.each()
    ['float32']
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
            import pytest  # only where a test suite uses the kit: pytest is not a dependency of pruneplug

            pytest.skip(f"backend {self.backend!r} does not declare dtype {dtype}")

    def data_for(self, backend: str, data: np.ndarray) -> Any:
        """``data`` as a run on ``backend`` takes it: as is for the reference (by name: NumPy
        arrays also when the reference is the backend under test), moved to the harness's array
        type for any other backend. For checks that run ``run(backend)`` on both, such as
        :func:`~pruneplug.testing.assertions.assert_same_outcome`.

        >>> h = harness_for("numpy")
        >>> a = np.ones(2)
        >>> h.data_for("numpy", a) is a
        True
        """
        return data if backend == REFERENCE else self.to_backend(data)

    def run_both(self, func: Callable[..., Any], data: np.ndarray, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        """``func(data, *args, **kwargs)`` on the backend under test (``data`` moved to its array
        type) and on the reference (``data`` as is): ``(result, reference result)``.

        >>> got, ref = harness_for("numpy").run_both(pp.prune, np.array([1.0, -3.0, 2.0, 0.5]), 0.5)
        >>> got.tolist(), ref.tolist()
        ([0.0, -3.0, 2.0, 0.0], [0.0, -3.0, 2.0, 0.0])
        """
        got = func(self.to_backend(data), *args, backend=self.backend, **kwargs)
        ref = func(data, *args, backend=REFERENCE, **kwargs)
        return got, ref


@dataclass(frozen=True)
class Check:
    """One rule of the kit: its ``name`` (the pytest id), the function that checks it on a
    :class:`Harness`, and the backend ``operations`` it needs (a backend that does not declare
    them skips it).

    >>> def check_nothing(h): pass
    >>> Check("nothing", check_nothing, frozenset({"nm_mask"})).operations
    frozenset({'nm_mask'})
    """

    name: str
    func: Callable[[Harness], None]
    operations: frozenset = field(default_factory=frozenset)


def harness_for(backend: str, large_size: int = 300_007, array_type: str = "native") -> Harness:
    """The harness for ``backend`` with user data of ``array_type``: ``"native"`` (the backend's
    own NumPy or CuPy arrays) or ``"torch"`` (PyTorch CPU tensors for a NumPy backend, CUDA
    tensors for a CuPy one). Skips the running check where that array type cannot exist here.

    >>> h = harness_for("numpy")
    >>> h.backend, h.array_type, sorted(h.dtypes)
    ('numpy', 'numpy', ['bfloat16', 'float16', 'float32', 'float64', 'int8'])
    """
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

"""Array adapters: turn user arrays (NumPy, CuPy, PyTorch) into what backends take, and back.

Backends only ever see NumPy arrays (array type ``"numpy"``) or CuPy arrays (``"cupy"``).
PyTorch tensors are viewed as one of those without copying where possible (CPU tensors through
``Tensor.numpy()``, CUDA tensors through DLPack) and results are turned back into tensors.
Nothing here imports torch or cupy unless the user handed us one of their arrays.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from pruneplug.errors import InvalidArgumentError, ReadOnlyError, UnsupportedArrayError, UnsupportedDtypeError

#: Dtypes magnitude pruning accepts.
FLOAT_DTYPES: frozenset[str] = frozenset({"float16", "bfloat16", "float32", "float64"})


@dataclass(frozen=True)
class Adapted:
    """A user array seen by the core: ``array`` is NumPy or CuPy; ``wrap`` turns a backend result
    array of the same array type back into the user's type (a tensor for a tensor)."""

    array: Any
    array_type: str
    wrap: Callable[[Any], Any]


def _identity(x: Any) -> Any:
    return x


def _module_root(obj: Any) -> str:
    return type(obj).__module__.split(".", 1)[0]


def array_module(array: Any) -> Any:
    """NumPy or CuPy, whichever ``array`` (a NumPy or CuPy array) belongs to; CuPy is not imported
    here: a CuPy array exists only once it is.

    Example::

        >>> import numpy as np
        >>> array_module(np.zeros(2)) is np
        True
    """
    return sys.modules["cupy"] if _module_root(array) == "cupy" else np


def is_torch_tensor(obj: Any) -> bool:
    return _module_root(obj) == "torch" and "torch" in sys.modules and isinstance(obj, sys.modules["torch"].Tensor)


def adapt(obj: Any, argname: str) -> Adapted:
    """View ``obj`` as a NumPy or CuPy array without copying where possible."""
    if isinstance(obj, np.ndarray):
        return Adapted(obj, "numpy", _identity)
    if _module_root(obj) == "cupy":
        return Adapted(obj, "cupy", _identity)
    if is_torch_tensor(obj):
        return _adapt_torch(obj)
    if isinstance(obj, (list, tuple, float, int, np.generic)) or hasattr(obj, "__array__"):
        return Adapted(np.asarray(obj), "numpy", _identity)
    raise UnsupportedArrayError(
        f"{argname}: expected a NumPy array, CuPy array or PyTorch tensor, got {type(obj).__name__}"
    )


def _adapt_torch(tensor: Any) -> Adapted:
    import torch

    tensor = tensor.detach()
    if tensor.device.type == "cpu":
        if tensor.dtype == torch.bfloat16:
            # NumPy has no bfloat16: view the bits as int16, then as ml_dtypes.bfloat16 (no copy).
            import ml_dtypes

            array = tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        else:
            array = tensor.numpy()
        return Adapted(array, "numpy", _numpy_to_torch)
    if tensor.device.type == "cuda":
        import cupy

        if tensor.dtype == torch.bfloat16:
            return Adapted(_bfloat16_cupy(cupy, tensor), "cupy", _cupy_to_torch)
        return Adapted(cupy.from_dlpack(tensor), "cupy", _cupy_to_torch)
    raise UnsupportedArrayError(f"tensors on device {tensor.device} are not supported (CPU and CUDA are)")


def _bfloat16_cupy(cupy: Any, tensor: Any) -> Any:
    """A bfloat16 CUDA tensor as a CuPy bfloat16 array, no copy: its bits go through DLPack as
    int16 (CuPy 13's from_dlpack of bfloat16 raises, or crashes in 13.3: cupy#8801), then are viewed
    as ``ml_dtypes.bfloat16``, a dtype CuPy has from version 14."""
    import ml_dtypes
    import torch

    bits = cupy.from_dlpack(tensor.view(torch.int16))
    try:
        return bits.view(ml_dtypes.bfloat16)
    except (TypeError, ValueError) as exc:
        raise UnsupportedDtypeError(
            f"weights: a bfloat16 CUDA tensor needs CuPy >= 14 (installed: {cupy.__version__}): {exc}"
        ) from None


def _numpy_to_torch(array: Any) -> Any:
    import torch

    if dtype_name(array) == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _cupy_to_torch(array: Any) -> Any:
    import torch

    if dtype_name(array) == "bfloat16":  # back through DLPack as int16 bits, as it came
        return torch.from_dlpack(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_dlpack(array)


def dtype_name(array: Any) -> str:
    """The dtype's name: ``"float32"``, ``"bfloat16"``, ``"bool"``, ..."""
    return _dtype_name(array.dtype)


@functools.lru_cache(maxsize=None)
def _dtype_name(dtype: Any) -> str:
    # A pure memo: NumPy's dtype.name costs microseconds, which matters for small arrays.
    return np.dtype(dtype).name


#: the unsigned integer type that holds the bits of a float of each width (bytes)
BITS_DTYPES = {2: np.dtype(np.uint16), 4: np.dtype(np.uint32), 8: np.dtype(np.uint64)}
FLOAT_ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}


def check_bits(bits: Any, dtype: str, argname: str) -> None:
    """``bits`` must be the raw bits of ``dtype`` floats: a C-contiguous NumPy array of the unsigned
    integer type of that width (how checkpoints hand bfloat16 to the C kernels without importing
    ``ml_dtypes``, whose import alone costs more than reading a small model)."""
    if dtype not in FLOAT_DTYPES:
        raise UnsupportedDtypeError(f"{argname}: dtype {dtype!r} is not supported; expected one of {sorted(FLOAT_DTYPES)}")
    if not isinstance(bits, np.ndarray) or bits.dtype != BITS_DTYPES[FLOAT_ITEMSIZE[dtype]] or not bits.flags.c_contiguous:
        raise InvalidArgumentError(f"{argname}: the raw bits of {dtype} must be a C-contiguous "
                                   f"{BITS_DTYPES[FLOAT_ITEMSIZE[dtype]]} NumPy array")


def float_view(bits: np.ndarray, dtype: str) -> np.ndarray:
    """The floats whose raw bits are ``bits`` (no copy; bfloat16 imports ``ml_dtypes``)."""
    if dtype == "bfloat16":
        import ml_dtypes

        return bits.view(ml_dtypes.bfloat16)
    return bits.view(np.dtype(dtype))


def score_dtype(dtype: Any) -> np.dtype:
    """The dtype of importance scores for weights of ``dtype``: float32 for the 16-bit floats
    (float16 and bfloat16 widen exactly), otherwise the weights' own dtype. The one home of this
    rule: the backends and the checkpoint's global select read it.

    Example::

        >>> import ml_dtypes
        >>> score_dtype(ml_dtypes.bfloat16), score_dtype("float64")
        (dtype('float32'), dtype('float64'))
    """
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype.itemsize == 2 else dtype


def check_float_dtype(array: Any, argname: str) -> str:
    name = dtype_name(array)
    if name not in FLOAT_DTYPES:
        raise UnsupportedDtypeError(
            f"{argname}: dtype {name} is not supported; expected one of {sorted(FLOAT_DTYPES)}"
        )
    return name


def contiguous(array: Any) -> Any:
    """A C-contiguous, native-byte-order version of a NumPy or CuPy array (the array itself when it
    already is one): what every backend receives."""
    if not array.dtype.isnative:
        return array.astype(array.dtype.newbyteorder("="), order="C")
    if array.flags.c_contiguous:
        return array
    return array.copy(order="C")


def in_byte_order_of(result: Any, original: Any) -> Any:
    """``result`` (a native-byte-order array computed from ``original``) stored in ``original``'s
    byte order: the backends work on native copies (:func:`contiguous`), and a ``>f4`` input must
    come back ``>f4``, not as a different dtype. The values are the same; only the storage differs.

    Example::

        >>> import numpy as np
        >>> in_byte_order_of(np.zeros(2, np.float32), np.ones(2, ">f4")).dtype.str
        '>f4'
    """
    if original.dtype.isnative or result.dtype == original.dtype:
        return result
    return result.astype(original.dtype)


def check_writable(array: Any, argname: str) -> None:
    flags = array.flags
    writeable = getattr(flags, "writeable", True)
    if not writeable:
        raise ReadOnlyError(f"{argname}: the array is read-only; in-place pruning needs a writable array")


def check_in_place(obj: Any, adapted: Adapted, argname: str) -> None:
    """Raise unless writing into ``adapted.array`` writes into ``obj`` itself: a writable NumPy or
    CuPy array, a PyTorch tensor, or an object whose ``__array__`` exposes its own storage. A list,
    tuple, Python or NumPy scalar (converted into a new array) cannot be pruned in place."""
    shares = (
        adapted.array is obj
        or adapted.array_type == "cupy"
        or is_torch_tensor(obj)
        # another object: a second conversion sharing memory with the first shows that it exposes
        # its own storage rather than a fresh copy each time
        or (not isinstance(obj, (list, tuple, int, float, complex, np.generic))
            and np.shares_memory(adapted.array, np.asarray(obj)))
    )
    if not shares:
        raise ReadOnlyError(
            f"{argname}: a {type(obj).__name__} cannot be written in place (it is converted into a new "
            "array); pass a NumPy array, CuPy array or PyTorch tensor, or use the returned array"
        )
    check_writable(adapted.array, argname)


def to_numpy(array: Any) -> np.ndarray:
    """A NumPy copy/view of any supported array (for tests, reports and the CLI)."""
    adapted = adapt(array, "array")
    if adapted.array_type == "cupy":
        return adapted.array.get()
    return adapted.array

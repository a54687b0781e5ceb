"""The name of each kernel the launch code asks for: one function per kernel family, building the
template instantiation from the codes in :mod:`._kernels` (which reads them from ``common.cuh``).

Which names the launch code asks for is found by running it (tests/test_cuda_emulated.py:
test_launched_kernels_are_exactly_the_instantiated_ones, every entry point at its edge values under a
loader as strict as CuPy's), not by a second list.

Example::

    >>> name_importance("float32", "abs")
    'importance<2, 0>'
"""

from __future__ import annotations

from . import _kernels as K


def dtype_code(dtype: str) -> int:
    """The ``DT`` template argument of ``dtype`` (its value in ``common.cuh``)."""
    return K.DT[dtype]


def transform_code(transform: str) -> int:
    """The ``TR`` template argument of ``transform`` (its value in ``common.cuh``)."""
    return K.TR[transform]


def name_importance(dtype: str, transform: str) -> str:
    return f"importance<{dtype_code(dtype)}, {transform_code(transform)}>"


def name_apply_mask(dtype: str) -> str:
    return f"apply_mask<{dtype_code(dtype)}>"


def name_select(kernel: str, dtype: str, transform: str) -> str:
    return f"{kernel}<{dtype_code(dtype)}, {transform_code(transform)}>"


def name_keyed(kernel: str, dtype: str, transform: str) -> str:
    return f"{kernel}<{K.key_ctype(dtype, transform)}>"


def name_nm(kernel: str, dtype: str, transform: str, m: int | None = None) -> str:
    if m is None:
        return f"{kernel}<{dtype_code(dtype)}, {transform_code(transform)}>"
    return f"{kernel}<{dtype_code(dtype)}, {transform_code(transform)}, {m}>"


def name_24(kernel: str, dtype: str, layout: str) -> str:
    return f"{kernel}<{K.DT24[dtype]}, {K.LAYOUT24[layout]}>"


def name_keyhist(dtype: str, transform: str, keys: str) -> str:
    return f"key_histogram<{dtype_code(dtype)}, {transform_code(transform)}, {K.KEYS[keys]}>"

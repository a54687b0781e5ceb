"""The CUDA 2:4 kernels (backends/cuda/compress24.cu) without a GPU.

1. Compile gate: NVRTC (CuPy's low-level bindings, CuPy's final option list) for sm_80 and sm_90,
   every instantiation, ``-Xptxas=-v``: no spills, no stack frame.
2. Logic: the same source run by the CPU emulator (tools/cuda_emu) under several thread schedules,
   compared bit for bit with the NumPy reference (values, metadata, dense, error positions).

Nothing here has run on a GPU. The CUDA backend launches these kernels as its ``compress_24``,
``decompress_24`` and ``prune_compress_24`` hooks: tests/test_cuda_emulated.py runs them through the
backend's launch code (and the conformance kit), tests/test_cuda_gpu.py on a device.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tools"))

from sparse24_data import DTYPES, shapes_for, sparse_weight  # noqa: E402

from pruneplug.sparse24 import format_of, metadata_shape  # noqa: E402
from pruneplug_backends.cuda import _kernels as cuda_kernels  # noqa: E402
from pruneplug_backends.numpy import compress24 as ref  # noqa: E402

SOURCE = cuda_kernels.source("compress24.cu")  # with codes.cuh inlined, as the backend compiles it
DT = {"float16": 0, "bfloat16": 1, "float32": 2, "int8": 5}  # DT_* of codes.cuh
LAYOUT = {"ptx": 0, "cutlass": 1}
BLOCK = 256
OPTIONS = ("--std=c++17",)
KERNELS = ("compress24", "decompress24", "prune_compress24")
NAME_EXPRESSIONS = [f"{k}<{d}, {lay}>" for k in KERNELS for d in DT.values() for lay in LAYOUT.values()]


def test_backend_instantiates_the_same_kernels():
    from pruneplug_backends.cuda import _kernels as K

    assert sorted(K.NAME_EXPRESSIONS["compress24.cu"]) == sorted(NAME_EXPRESSIONS)
    assert K.DT24 == DT and K.LAYOUT24 == LAYOUT


def launch_geometry(rows: int, cols: int, dtype: str) -> tuple[tuple[int, int, int], tuple[int, int, int], int]:
    """(grid, block, ncols) of every kernel in compress24.cu: one thread per metadata word."""
    ncols = cols // format_of(dtype).columns_per_word
    words = rows * ncols
    return (max(1, -(-words // BLOCK)), 1, 1), (BLOCK, 1, 1), ncols


# ---------------------------------------------------------------------------------------------
# compile gate
# ---------------------------------------------------------------------------------------------
def _nvrtc_or_skip():
    cupy = pytest.importorskip("cupy", reason="CuPy (pip install cupy-cuda12x) provides the NVRTC bindings")
    try:
        cupy.cuda.nvrtc.getVersion()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"NVRTC is not loadable here (pip install nvidia-cuda-nvrtc-cu12): {exc}")


@pytest.mark.parametrize("arch", ["80", "90"])
def test_compiles_without_spills_or_stack(arch):
    _nvrtc_or_skip()
    from cuda_helpers import cupy_final_options, nvrtc_compile, parse_ptxas

    options = cupy_final_options(OPTIONS, arch) + ("-Xptxas=-v",)
    compiled = nvrtc_compile(SOURCE, options, NAME_EXPRESSIONS, filename="compress24.cu")
    reports = parse_ptxas(compiled.log)
    lowered = set(compiled.lowered.values())
    assert lowered <= set(reports), f"ptxas reported {sorted(reports)}, expected every instantiation"
    for name in lowered:
        rep = reports[name]
        assert rep.spill_stores == 0 and rep.spill_loads == 0, f"sm_{arch} {name}: spills {rep}"
        assert rep.stack == 0, f"sm_{arch} {name}: {rep.stack}-byte stack frame"
        assert rep.registers <= 64, f"sm_{arch} {name}: {rep.registers} registers"


# ---------------------------------------------------------------------------------------------
# emulator
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _module(schedule: str = "forward"):
    try:
        import cuda_emu
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"tools/cuda_emu is not importable: {exc}")
    return cuda_emu.Module(SOURCE, options=OPTIONS, name_expressions=NAME_EXPRESSIONS, schedule=schedule, seed=7)


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint8)


def emu_compress(w: np.ndarray, layout: str, *, prune: bool = False, schedule: str = "forward"):
    dtype = w.dtype.name
    rows, cols = w.shape
    grid, block, ncols = launch_geometry(rows, cols, dtype)
    fmt = format_of(dtype)
    values = np.full((rows, cols // 2), 0x5A, dtype=np.uint8).view(w.dtype).reshape(rows, cols // 2) \
        if w.dtype.itemsize == 1 else np.empty((rows, cols // 2), dtype=w.dtype)
    meta = np.empty(metadata_shape((rows, cols), dtype), dtype=fmt.meta_dtype)
    err = np.full(1, np.iinfo(np.uint64).max, dtype=np.uint64)
    name = f"{'prune_compress24' if prune else 'compress24'}<{DT[dtype]}, {LAYOUT[layout]}>"
    fn = _module(schedule).get_function(name)
    args = [w.view(np.uint8), np.int64(rows), np.int64(ncols), values.view(np.uint8), meta.view(meta.dtype), err]
    nonfinite = np.array([0, np.iinfo(np.uint64).max], dtype=np.uint64)
    if prune:
        args.append(nonfinite)
    if rows * ncols:
        fn(grid, block, tuple(args))
    return values, meta, int(err[0]), nonfinite


def emu_decompress(values: np.ndarray, meta: np.ndarray, shape, layout: str, schedule: str = "forward"):
    dtype = values.dtype.name
    rows, cols = shape
    grid, block, ncols = launch_geometry(rows, cols, dtype)
    dense = np.empty((rows, cols), dtype=values.dtype)
    err = np.full(1, np.iinfo(np.uint64).max, dtype=np.uint64)
    fn = _module(schedule).get_function(f"decompress24<{DT[dtype]}, {LAYOUT[layout]}>")
    fn(grid, block, (values.view(np.uint8), meta, np.int64(rows), np.int64(ncols), dense.view(np.uint8), err))
    return dense, int(err[0])


CASES = [(d, lay) for d in DTYPES for lay in ("cutlass", "ptx")]


@pytest.mark.parametrize("dtype,layout", CASES)
def test_compress_matches_reference(dtype, layout):
    rng = np.random.default_rng(DT[dtype] * 10 + LAYOUT[layout])
    for i, shape in enumerate(shapes_for(dtype, layout, rng, 4)):
        w = sparse_weight(shape, dtype, seed=i)
        values, meta, err, _ = emu_compress(w, layout, schedule=("forward", "reverse", "random")[i % 3])
        rv, rm = ref.compress(w, layout)
        assert err == 2**64 - 1
        assert np.array_equal(_bits(values), _bits(rv)), f"{dtype} {layout} {shape}: values"
        assert np.array_equal(meta, rm), f"{dtype} {layout} {shape}: metadata"
        dense, derr = emu_decompress(rv, rm, shape, layout)
        assert derr == 2**64 - 1
        assert np.array_equal(_bits(dense), _bits(ref.decompress(rv, rm, shape, layout)))


@pytest.mark.parametrize("dtype,layout", CASES)
def test_first_offending_group(dtype, layout):
    fmt = format_of(dtype)
    rows, cols = fmt.row_group, fmt.columns_per_word * 2
    w = sparse_weight((rows, cols), dtype, seed=3, nan=False)
    one = np.ones((), dtype=w.dtype)
    # two offending groups; the first in C order must win whatever the thread schedule
    w[rows - 1, :fmt.m] = one
    w[5, cols - fmt.m:] = one
    for schedule in ("forward", "reverse", "random"):
        _, _, err, _ = emu_compress(w, layout, schedule=schedule)
        groups_per_row = cols // fmt.m
        assert err >> 3 == 5 * groups_per_row + groups_per_row - 1, schedule
        assert err & 7 == fmt.m


@pytest.mark.parametrize("dtype,layout", CASES)
def test_invalid_nibble(dtype, layout):
    fmt = format_of(dtype)
    rows, cols = fmt.row_group, fmt.columns_per_word * 2
    w = sparse_weight((rows, cols), dtype, seed=4, nan=False)
    values, meta = ref.compress(w, layout)
    logical = ref.from_layout(meta, layout).copy()
    unsigned = logical.view(np.uint16 if fmt.meta_dtype == "int16" else np.uint32)
    unsigned[7, 1] = (unsigned[7, 1] & ~np.array(0xF0, unsigned.dtype)) | np.array(0x50, unsigned.dtype)  # group 1: 0x5
    bad_meta = ref.to_layout(logical, layout)
    _, err = emu_decompress(values, bad_meta, (rows, cols), layout)
    assert err >> 4 == 7 * (cols // fmt.m) + fmt.groups_per_word + 1
    assert err & 0xF == 0x5


@pytest.mark.parametrize("dtype,layout", CASES)
def test_prune_compress_matches_reference(dtype, layout):
    rng = np.random.default_rng(5)
    fmt = format_of(dtype)
    shape = (fmt.row_group * 2, fmt.columns_per_word * 4)
    if dtype == "int8":
        w = rng.integers(-128, 128, shape).astype(np.int8)
        w[rng.random(shape) < 0.2] = 0
    else:
        from pruneplug.testing import tricky_array

        w = tricky_array(shape, dtype, seed=2)
        w = np.where(np.isfinite(w.astype(np.float64)), w, np.zeros((), w.dtype))
    transforms = ["abs", "square"] if dtype in ("float16", "int8") else ["abs"]
    for transform in transforms:
        values, meta, _, nonfinite = emu_compress(w, layout, prune=True, schedule="random")
        rv, rm = ref.prune_compress(w, transform, layout)
        assert np.array_equal(_bits(values), _bits(rv)), (dtype, layout, transform)
        assert np.array_equal(meta, rm), (dtype, layout, transform)
        assert int(nonfinite[0]) == 0


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_prune_compress_counts_nonfinite(dtype):
    fmt = format_of(dtype)
    shape = (fmt.row_group, fmt.columns_per_word * 2)
    w = sparse_weight(shape, dtype, seed=8, nan=False)
    w[3, 5] = np.inf
    w[1, 2] = np.nan
    w[20, 0] = -np.inf
    _, _, _, nonfinite = emu_compress(w, "cutlass", prune=True, schedule="reverse")
    assert int(nonfinite[0]) == 3
    assert int(nonfinite[1]) == 1 * shape[1] + 2

"""Compile gate of the CUDA backend (no GPU needed).

Every kernel file, with every template instantiation the backend launches, is compiled by NVRTC
through CuPy's low-level bindings with exactly the option list ``cupy.RawModule`` would hand NVRTC
(the backend's options, CuPy's includes and defaults, ``-ftz=true``, the architecture), for sm_80
and sm_90, to CUBIN with ``-Xptxas=-v``. The ptxas report is held to budget: no spills and no
stack frame for any kernel. The PTX must contain no flush-to-zero instruction (CuPy's trailing
``-ftz=true`` overrides the backend's ``-ftz=false``) and no float32 arithmetic, and where nvdisasm is
installed the streaming kernels must use 128-bit global loads (the 2:4 kernels also 128-bit stores).

``python tests/test_cuda_compile.py`` prints the per-kernel ptxas table.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cuda_helpers import (  # noqa: E402
    ARCHS,
    disassembler_path,
    cupy_compiler_defaults_unchanged,
    cupy_final_options,
    nvrtc_compile,
    nvrtc_ptx,
    parse_ptxas,
    sass_by_kernel,
)

cupy = pytest.importorskip("cupy")
try:
    cupy.cuda.nvrtc.getVersion()
except Exception as exc:  # noqa: BLE001
    pytest.skip(f"NVRTC is not loadable here: {exc}", allow_module_level=True)

from pruneplug_backends.cuda import _kernels as K  # noqa: E402

FILES = sorted(K.NAME_EXPRESSIONS)

# Kernels that stream the whole input: their main loads must be 16 bytes wide.
STREAMING = {
    "importance.cu": ["importance<2, 0>", "importance<0, 1>", "importance<3, 1>"],
    "select.cu": ["radix_hist0<2, 0>", "radix_compact<2, 0>", "radix_mask<2, 0>", "radix_hist0<0, 2>",
                  "radix_mask<3, 1>"],
    "elementwise.cu": ["check_nonfinite<2, 0>", "apply_mask<2>"],
    "nm.cu": ["nm_contig<2, 0, 4>", "nm_contig<0, 0, 8>", "nm_contig<3, 1, 2>"],
    "compress24.cu": K.NAME_EXPRESSIONS["compress24.cu"],
}


@functools.lru_cache(maxsize=None)
def compiled(filename: str, arch: str):
    options = cupy_final_options(K.OPTIONS, arch) + ("-Xptxas=-v",)
    return nvrtc_compile(K.source(filename), options, K.NAME_EXPRESSIONS[filename])


def test_cupy_defaults_are_the_ones_mirrored():
    missing = cupy_compiler_defaults_unchanged()
    assert not missing, f"CuPy's compiler no longer contains {missing}: update cuda_helpers.cupy_final_options"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("filename", FILES)
def test_compiles_within_budget(filename: str, arch: str):
    result = compiled(filename, arch)
    reports = parse_ptxas(result.log)
    names = K.NAME_EXPRESSIONS[filename]
    problems = []
    for name in names:
        mangled = result.lowered[name]
        report = reports.get(mangled)
        if report is None:
            problems.append(f"{name}: no ptxas report")
            continue
        if report.stack or report.spill_stores or report.spill_loads:
            problems.append(f"{name}: {report.stack} B stack, {report.spill_stores}/{report.spill_loads} B spills")
        if report.registers > 255:
            problems.append(f"{name}: {report.registers} registers")
    assert not problems, f"sm_{arch} {filename}:\n" + "\n".join(problems)


@pytest.mark.parametrize("filename", FILES)
def test_no_flush_to_zero_instructions(filename: str):
    """Under CuPy's final options (-ftz=true last), no instruction may depend on the FTZ mode."""
    options = cupy_final_options(K.OPTIONS, "80")
    ptx = nvrtc_ptx(K.source(filename), options, K.NAME_EXPRESSIONS[filename], "80")
    ftz = [line.strip() for line in ptx.splitlines() if ".ftz" in line]
    assert not ftz, f"{filename}: FTZ-dependent instructions: {ftz[:5]}"
    f32 = [line.strip() for line in ptx.splitlines() if ".f32" in line]
    assert not f32, f"{filename}: float32 arithmetic (would flush under -ftz=true): {f32[:5]}"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("filename", sorted(STREAMING))
def test_streaming_kernels_use_128_bit_loads(filename: str, arch: str):
    if disassembler_path() is None:
        pytest.skip("nvdisasm not installed (pip install nvidia-cuda-nvdisasm)")
    result = compiled(filename, arch)
    sass = sass_by_kernel(result.cubin)
    for name in STREAMING[filename]:
        text = sass[result.lowered[name]]
        assert "LDG.E.128" in text, f"sm_{arch} {name}: no 128-bit global load in its SASS"


@pytest.mark.parametrize("arch", ARCHS)
def test_compress24_stores_are_128_bit(arch: str):
    """2:4 values (and decompressed rows) leave each thread as 16-byte stores."""
    if disassembler_path() is None:
        pytest.skip("nvdisasm not installed (pip install nvidia-cuda-nvdisasm)")
    result = compiled("compress24.cu", arch)
    sass = sass_by_kernel(result.cubin)
    for name in K.NAME_EXPRESSIONS["compress24.cu"]:
        assert "STG.E.128" in sass[result.lowered[name]], f"sm_{arch} {name}: no 128-bit global store in its SASS"


def ptxas_table() -> str:
    rows = ["| file | kernel | " + " | ".join(f"sm_{a} regs / stack / spills" for a in ARCHS) + " |",
            "|---|---|" + "---|" * len(ARCHS)]
    for filename in FILES:
        per_arch = []
        for arch in ARCHS:
            result = compiled(filename, arch)
            per_arch.append((result, parse_ptxas(result.log)))
        for name in K.NAME_EXPRESSIONS[filename]:
            cells = []
            for result, reports in per_arch:
                r = reports[result.lowered[name]]
                cells.append(f"{r.registers} / {r.stack} / {r.spill_stores + r.spill_loads}")
            rows.append(f"| {filename} | `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(ptxas_table())

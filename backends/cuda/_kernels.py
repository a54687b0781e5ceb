"""Kernel sources, template instantiations and compile options of the CUDA backend.

The kernels are real CUDA C++ files next to this module (shipped as package data). Each ``.cu``
file includes ``common.cuh`` (and through it ``codes.cuh``); :func:`source` inlines them so that the text handed to the compiler is
self-contained: CuPy's on-disk kernel cache is keyed on the source text, and a header edit must
change that key. Templates are instantiated through ``name_expressions`` (:data:`NAME_EXPRESSIONS`).

Nothing here imports CuPy.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from pruneplug.sparse24 import DTYPES as SPARSE24_DTYPES

KERNEL_DIR = Path(__file__).resolve().parent

#: Options the backend passes to ``cupy.RawModule`` (CuPy adds its defaults around them).
#:
#: * ``--std=c++17``: ``if constexpr`` in the traits.
#: * ``-ftz=false``: denormals must rank exactly as on the CPU. NOTE: CuPy appends ``-ftz=true``
#:   *after* these options (``cupy/cuda/compiler.py``) and NVRTC's last ``-ftz`` wins, so this flag
#:   does not take effect under CuPy. The kernels therefore contain no float32 arithmetic at all
#:   (scores, squares and conversions are integer code on the bits; float64, which -ftz never
#:   touches, does the sums), and the compile gate asserts the PTX has no ``.ftz`` instruction
#:   under CuPy's final option list. The flag stays for any loader that honours it.
#: * ``--fmad=false``: no FMA contraction, so float64 sums round exactly as written.
OPTIONS: tuple[str, ...] = ("--std=c++17", "-ftz=false", "--fmad=false")

_DEFINE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+(\w+)[ \t]+(0x[0-9a-fA-F]+|\d+)u?\b", re.MULTILINE)


def defines(filename: str) -> dict[str, int]:
    """The integer ``#define`` s of ``filename`` (not of what it includes), in file order. The
    codes and sizes the launch code shares with the kernels have their one home in the CUDA
    files; this module reads them from there."""
    return {m.group(1): int(m.group(2), 0) for m in _DEFINE.finditer((KERNEL_DIR / filename).read_text())}


_SUFFIX_DTYPE = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64", "KEY64": "key64",
                 "I8": "int8"}


def _codes(table: dict[str, int], prefix: str, name=str.lower) -> dict[str, int]:
    return {name(k[len(prefix):]): v for k, v in table.items() if k.startswith(prefix)}


CODES = defines("codes.cuh")
#: dtype name -> template code (DT_* in codes.cuh); int8 is compressed 2:4 only
DT = _codes(CODES, "DT_", _SUFFIX_DTYPE.__getitem__)
#: transform name -> template code (TR_* in codes.cuh)
TR = _codes(CODES, "TR_")
#: 2:4 metadata layout name -> template code (LAYOUT24_* in codes.cuh)
LAYOUT24 = _codes(CODES, "LAYOUT24_")
#: the dtypes compress24.cu is instantiated for (those of the 2:4 format), with their DT_* codes
DT24 = {d: DT[d] for d in SPARSE24_DTYPES}
COMMON = defines("common.cuh")
#: workspace slot name -> index (WS_* in common.cuh): "SIZE", "BINCOUNT", "STATS", ...
WS = _codes(COMMON, "WS_", str.upper)
NM_FAST = (2, 4, 8, 16)
KERNELS24 = ("compress24", "decompress24", "prune_compress24")

_FLOATS = ("float16", "bfloat16", "float32", "float64")
#: selection key kinds (KEYS_* in keyhist.cu) and the dtypes each takes
KEYS = _codes(defines("keyhist.cu"), "KEYS_")
KEY_DTYPES = {"mag16": ("float16", "bfloat16"), "f32": ("float16", "bfloat16", "float32"), "f64": _FLOATS}
_TRANSFORMS = ("abs", "square", "identity")


def _selection_sources() -> list[tuple[int, int]]:
    return [(DT[d], TR[t]) for d in _FLOATS for t in _TRANSFORMS] + [(DT["key64"], TR["key"])]


def key_ctype(dtype: str, transform: str) -> str:
    """C++ type of the selection key (KeyOf<DT, TR> in common.cuh)."""
    if dtype in ("float16",) or (dtype == "bfloat16" and transform != "square"):
        return "unsigned short"
    if dtype in ("bfloat16", "float32"):
        return "unsigned int"
    return "unsigned long long"


def key_bits(dtype: str, transform: str) -> int:
    return {"unsigned short": 16, "unsigned int": 32, "unsigned long long": 64}[key_ctype(dtype, transform)]


def _name_expressions() -> dict[str, list[str]]:
    importance = [f"importance<{DT[d]}, {TR[t]}>" for d in _FLOATS for t in ("abs", "square")]
    importance.append("importance_finalize")
    select = []
    for dt, tr in _selection_sources():
        select += [f"radix_hist0<{dt}, {tr}>", f"radix_compact<{dt}, {tr}>", f"radix_mask<{dt}, {tr}>"]
    for k in ("unsigned short", "unsigned int", "unsigned long long"):
        select += [f"cand_hist<{k}>", f"eq_count<{k}>"]
    select += ["radix_select", "scan_tiles"]
    nm = []
    for d in _FLOATS:
        for t in _TRANSFORMS:
            for m in NM_FAST:
                nm += [f"nm_contig<{DT[d]}, {TR[t]}, {m}>", f"nm_strided<{DT[d]}, {TR[t]}, {m}>"]
            nm.append(f"nm_generic<{DT[d]}, {TR[t]}>")
    block = [f"block_sums<{DT[d]}, {TR[t]}>" for d in _FLOATS for t in _TRANSFORMS] + ["block_expand"]
    elementwise = [f"check_nonfinite<{DT[d]}, {TR[t]}>" for d in _FLOATS for t in _TRANSFORMS]
    elementwise += [f"apply_mask<{DT[d]}>" for d in _FLOATS] + ["fill_mask"]
    compress24 = [f"{k}<{DT24[d]}, {LAYOUT24[lay]}>" for k in KERNELS24 for d in DT24 for lay in LAYOUT24]
    keyhist = [f"key_histogram<{DT[d]}, {TR[t]}, {KEYS[k]}>" for k, ds in KEY_DTYPES.items() for d in ds
               for t in ("abs", "square")]
    return {
        "keyhist.cu": keyhist,
        "importance.cu": importance,
        "select.cu": select,
        "nm.cu": nm,
        "block.cu": block,
        "elementwise.cu": elementwise,
        "compress24.cu": compress24,
        "rows.cu": [f"row_select<{DT[d]}, {TR[t]}>" for d in _FLOATS for t in _TRANSFORMS],
    }


#: .cu file -> every template instantiation (and plain kernel) the backend launches from it
NAME_EXPRESSIONS: dict[str, list[str]] = _name_expressions()

_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$', re.MULTILINE)


@functools.lru_cache(maxsize=None)
def source(filename: str) -> str:
    """The compiler-ready text of ``filename``: local ``#include "x.cuh"`` lines inlined once."""
    seen: set[str] = set()

    def expand(name: str) -> str:
        if name in seen:
            return ""
        seen.add(name)
        text = (KERNEL_DIR / name).read_text()
        text = text.replace("#pragma once\n", "")
        return _INCLUDE.sub(lambda m: f"// ---- begin {m.group(1)}\n{expand(m.group(1))}// ---- end {m.group(1)}", text)

    text = expand(filename)
    left = re.search(r"^[ \t]*#[ \t]*include\b.*$", text, re.MULTILINE)
    if left:  # NVRTC would look for it on disk and fail at run time: refuse it here
        raise ValueError(f"{filename}: {left.group(0).strip()!r} is not a plain local include "
                         '(#include "x.cuh" alone on its line)')
    return text

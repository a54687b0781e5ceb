"""Helpers for the CUDA backend's tests: NVRTC compilation without a device (the same options CuPy's
RawModule would use), ptxas report parsing, SASS inspection, and the emulated backend plugin."""

from __future__ import annotations

import inspect
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ARCHS = ("80", "90")


# ---------------------------------------------------------------------------------------------
# NVRTC, as CuPy's RawModule would call it
# ---------------------------------------------------------------------------------------------
def cupy_final_options(user_options: tuple[str, ...], arch: str) -> tuple[str, ...]:
    """The option list NVRTC receives from ``cupy.RawModule(code, options=user_options,
    name_expressions=...)`` on an sm_``arch`` device: CuPy's include paths and default standard
    (``assemble_cupy_compiler_options``), then ``-ftz=true`` (``_compile_with_cache_cuda``), the
    architecture and ``--device-as-default-execution-space`` (``_compile_using_nvrtc``)."""
    from cupy._core import core

    options = core.assemble_cupy_compiler_options(tuple(user_options))
    options += ("-ftz=true", f"-arch=sm_{arch}", "--device-as-default-execution-space")
    return options


def cupy_compiler_defaults_unchanged() -> list[str]:
    """Lines of CuPy's compiler module this helper mirrors; empty list when all are still there."""
    from cupy.cuda import compiler

    text = inspect.getsource(compiler)
    wanted = ["options += ('-ftz=true',)", "options += ('--device-as-default-execution-space',)"]
    return [w for w in wanted if w not in text]


@dataclass
class Compiled:
    cubin: bytes
    ptx: bytes | None
    log: str
    lowered: dict[str, str]


def nvrtc_compile(code: str, options: tuple[str, ...], name_expressions: list[str], *,
                  want_ptx: bool = False, filename: str = "kern.cu") -> Compiled:
    """Compile with CuPy's low-level NVRTC bindings (needs no device)."""
    from cupy.cuda import nvrtc

    prog = nvrtc.createProgram(code, filename, [], [])
    try:
        for name in name_expressions:
            nvrtc.addNameExpression(prog, name)
        try:
            nvrtc.compileProgram(prog, list(options))
        except nvrtc.NVRTCError as exc:
            raise RuntimeError(f"NVRTC failed ({exc}):\n{nvrtc.getProgramLog(prog)}") from None
        log = nvrtc.getProgramLog(prog)
        lowered = {name: nvrtc.getLoweredName(prog, name) for name in name_expressions}
        cubin = _complete_elf(nvrtc.getCUBIN(prog))
        return Compiled(cubin, None, log if isinstance(log, str) else log.decode(), lowered)
    finally:
        nvrtc.destroyProgram(prog)


def _complete_elf(image: bytes) -> bytes:
    """CuPy 14's ``nvrtc.getCUBIN`` returns the image one byte short (it strips a trailing NUL as
    if the CUBIN were text), cutting into the ELF program-header table; nvdisasm then rejects the
    file. Pad with zeros up to the end the ELF header declares."""
    import struct

    if image[:4] != b"\x7fELF" or len(image) < 64:
        return image
    shoff, = struct.unpack_from("<Q", image, 0x28)
    phoff, = struct.unpack_from("<Q", image, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", image, 0x36)
    end = max(phoff + phentsize * phnum, shoff + shentsize * shnum)
    return image + b"\0" * max(0, end - len(image))


def nvrtc_ptx(code: str, options: tuple[str, ...], name_expressions: list[str], arch: str) -> str:
    """PTX for compute_``arch`` with the same options (the -arch option replaced)."""
    from cupy.cuda import nvrtc

    opts = [o for o in options if not o.startswith("-arch=")] + [f"-arch=compute_{arch}"]
    prog = nvrtc.createProgram(code, "kern.cu", [], [])
    try:
        for name in name_expressions:
            nvrtc.addNameExpression(prog, name)
        nvrtc.compileProgram(prog, opts)
        ptx = nvrtc.getPTX(prog)
        return ptx.decode() if isinstance(ptx, bytes) else ptx
    finally:
        nvrtc.destroyProgram(prog)


@dataclass
class PtxasReport:
    kernel: str  # mangled
    registers: int
    stack: int
    spill_stores: int
    spill_loads: int
    shared: int


_FN = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(log: str) -> dict[str, PtxasReport]:
    """Per-kernel resources from an ``-Xptxas=-v`` log."""
    reports: dict[str, PtxasReport] = {}
    current = None
    frame = (None, None, None)
    for line in log.splitlines():
        m = _FN.search(line)
        if m:
            current = m.group(1)
            frame = (None, None, None)
            continue
        if current is None:
            continue
        m = _FRAME.search(line)
        if m:
            frame = tuple(int(g) for g in m.groups())
            continue
        m = _REGS.search(line)
        if m and frame[0] is not None:
            s = _SMEM.search(line)
            reports[current] = PtxasReport(current, int(m.group(1)), frame[0], frame[1], frame[2],
                                           int(s.group(1)) if s else 0)
            current = None
    return reports


def disassembler_path() -> str | None:
    """nvdisasm from the ``nvidia-cuda-nvdisasm`` wheel (or PATH), if installed. (cuobjdump, from
    ``nvidia-cuda-cuobjdump``, needs nvdisasm for ``-sass`` anyway and takes only fat binaries.)"""
    try:
        import nvidia

        for base in nvidia.__path__:
            for cand in Path(base).glob("*/bin/nvdisasm"):
                return str(cand)
    except ImportError:
        pass
    return shutil.which("nvdisasm")


def sass_by_kernel(cubin: bytes) -> dict[str, str]:
    """SASS text of each kernel of a cubin (``nvdisasm``), keyed by mangled name."""
    tool = disassembler_path()
    assert tool is not None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        text = subprocess.run([tool, str(path)], check=True, capture_output=True, text=True).stdout
    out: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"\s*\.section\s+\.text\.([^,\s]+)", line)
        if m:
            current = m.group(1)
            out[current] = ""
        elif current is not None:
            out[current] += line + "\n"
    return out


# ---------------------------------------------------------------------------------------------
# the emulated backend as a plugin
# ---------------------------------------------------------------------------------------------
EMU_NAME = "cuda-emu"


def emulator_available() -> str | None:
    """None when ``tools/cuda_emu`` can be imported and used, else the reason."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import cuda_emu  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - reported as a skip reason
        return f"tools/cuda_emu is not importable: {type(exc).__name__}: {exc}"
    if not hasattr(cuda_emu, "Module"):
        return "tools/cuda_emu has no Module class yet"
    return None


def emu_load_module(schedule=None, seed: int = 0):
    """A ``load_module(code, options, name_expressions)`` that builds ``cuda_emu.Module`` s."""
    import cuda_emu

    def load(code: str, options: tuple[str, ...], name_expressions: list[str]):
        return cuda_emu.Module(code, options=tuple(options), name_expressions=list(name_expressions),
                               schedule=schedule, seed=seed)

    return load


def make_emulated_plugin(name: str = EMU_NAME, schedule=None, seed: int = 0):
    """(plugin object, backend instance) for the emulated CUDA backend: the real launch code over
    NumPy arrays, kernels run by the emulator."""
    from pruneplug_backends.cuda import _backend
    from pruneplug_backends.cuda import hooks as cuda_hooks

    backend = _backend.CudaBackend(np, emu_load_module(schedule, seed), name=name)
    plugin = cuda_hooks.CudaPlugin(lambda: backend, name=name, array_types={"numpy"}, priority=-100,
                                 description="CUDA backend kernels run by tools/cuda_emu")
    return plugin, backend


def register_emulated(name: str = EMU_NAME, schedule=None, seed: int = 0):
    import pruneplug as pp

    plugin, backend = make_emulated_plugin(name, schedule, seed)
    try:
        pp.unregister_backend(name)
    except Exception:  # noqa: BLE001 - not registered yet
        pass
    pp.register_backend(plugin)
    return plugin, backend

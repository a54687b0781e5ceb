"""cuda_emu: run CUDA C++ kernel source on the CPU, faithfully to CUDA's execution model.

The same ``.cu`` text that ``cupy.RawModule`` would load is compiled with g++ against a small
header (``include/cuda_emu.h``); each CUDA thread of a block runs as a fiber on one OS
thread, blocks run one after another.  The interface mirrors ``cupy.RawModule``::

    mod = cuda_emu.Module(code, options=(), name_expressions=(), schedule=None, seed=0)
    fn = mod.get_function("nm_mask_kernel<float, 4>")
    fn(grid, block, args, shared_mem=0)

NumPy arrays in ``args`` stand for device pointers (the kernel works on their memory in
place); NumPy scalars stand for by-value scalars.  See README.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "Module", "Function", "CompileError", "KernelError", "NotFoundError", "SanitizerError", "SCHEDULES",
    "sanitizer_env", "sanitize_requested", "racecheck_requested", "libasan_path", "using_schedule",
    "run_all_schedules",
    "STATIC_SHARED_LIMIT", "DEFAULT_DYNAMIC_SHARED_LIMIT",
]

_HERE = os.path.dirname(os.path.abspath(__file__))
_INCLUDE = os.path.join(_HERE, "include")
_HEADER = os.path.join(_INCLUDE, "cuda_emu.h")
_RUNTIME_VERSION = "2"

SCHEDULES = ("forward", "reverse", "random")
_SCHED_CODE = {"forward": 0, "reverse": 1, "random": 2}
STATIC_SHARED_LIMIT = 48 * 1024
DEFAULT_DYNAMIC_SHARED_LIMIT = 48 * 1024
MAX_DYNAMIC_SHARED = 227 * 1024          # sm_90 opt-in maximum (also the emulator's arena size)
_MAX_BLOCK = (1024, 1024, 64)
_MAX_GRID = (2**31 - 1, 65535, 65535)

_LAUNCH_LOCK = threading.RLock()         # one launch at a time per process (global runtime state, MXCSR, signals)
_LIB_CACHE: Dict[str, Tuple[ctypes.CDLL, dict]] = {}
_override = threading.local()


class CompileError(Exception):
    """g++ rejected the kernel source; ``.log`` holds the compiler output."""

    def __init__(self, message: str, log: str = ""):
        super().__init__(message + ("\n" + log if log else ""))
        self.log = log


class KernelError(RuntimeError):
    """The kernel violated CUDA's execution model (barrier divergence, bad shuffle mask,
    deadlock, crash, bad launch configuration, ...)."""


class NotFoundError(KeyError):
    """``get_function`` of a name the module does not contain: neither among its
    ``name_expressions`` nor an ``extern "C"`` kernel (CuPy: ``CUDA_ERROR_NOT_FOUND``)."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


class SanitizerError(RuntimeError):
    """CUDA_EMU_SANITIZE=1 was requested but libasan is not preloaded in this process."""


# ----------------------------------------------------------------------------- sanitizer
def sanitize_requested() -> bool:
    return os.environ.get("CUDA_EMU_SANITIZE", "").strip() not in ("", "0", "false", "False", "no")


def libasan_path() -> Optional[str]:
    """Path of the libasan that g++ links with, or None if it is not installed."""
    try:
        out = subprocess.run(["g++", "-print-file-name=libasan.so"], capture_output=True, text=True,
                             check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    if not out or not os.path.isabs(out) or not os.path.exists(out):
        return None
    return os.path.realpath(out)


def sanitizer_env(base: Optional[dict] = None) -> dict:
    """Environment for a subprocess that runs kernels under -fsanitize=address,undefined:
    LD_PRELOAD=<libasan>, ASAN_OPTIONS=detect_leaks=0, CUDA_EMU_SANITIZE=1."""
    env = dict(os.environ if base is None else base)
    lib = libasan_path()
    if lib is None:
        raise SanitizerError("libasan is not installed (g++ -print-file-name=libasan.so found nothing)")
    pre = env.get("LD_PRELOAD", "")
    env["LD_PRELOAD"] = lib + ((" " + pre) if pre else "")
    opts = env.get("ASAN_OPTIONS", "")
    env["ASAN_OPTIONS"] = "detect_leaks=0" + ((":" + opts) if opts else "")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
    env["CUDA_EMU_SANITIZE"] = "1"
    return env


def _libasan_loaded() -> bool:
    try:
        with open("/proc/self/maps") as f:
            return "libasan" in f.read()
    except OSError:
        return False


def racecheck_requested() -> bool:
    return os.environ.get("CUDA_EMU_RACECHECK", "").strip() not in ("", "0", "false", "False", "no")


_PC_RE = re.compile(r"\[pc \+(0x[0-9a-f]+)\]")


def _source_lines(lib_path: str, message: str) -> str:
    """Replace the racecheck's code offsets ``[pc +0x...]`` by ``file:line`` (addr2line)."""
    pcs = _PC_RE.findall(message)
    if not pcs:
        return message
    # the offsets are return addresses (after the call into the checker): the access is just before
    out = _run(["addr2line", "-e", lib_path] + [hex(int(pc, 16) - 1) for pc in pcs], os.path.dirname(lib_path))
    lines = [ln.split(" (")[0] for ln in out.stdout.splitlines()] if out.returncode == 0 else []
    if len(lines) != len(pcs):
        return message
    names = iter(lines)
    return _PC_RE.sub(lambda m: "at " + os.path.basename(next(names)), message)


# ----------------------------------------------------------------------------- schedules
@contextlib.contextmanager
def using_schedule(schedule: str, seed: int = 0):
    """Run every launch inside the block under ``schedule`` (for Modules created without an
    explicit schedule, e.g. inside the code under test)."""
    if schedule not in _SCHED_CODE:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
    prev = getattr(_override, "value", None)
    _override.value = (schedule, int(seed))
    try:
        yield
    finally:
        _override.value = prev


def run_all_schedules(fn: Callable[[], Any], schedules: Iterable[str] = SCHEDULES,
                      seeds: Iterable[int] = (0, 1, 2)) -> List[Tuple[str, int, Any]]:
    """Call ``fn()`` once per schedule ("random" once per seed) and return
    ``[(schedule, seed, result), ...]``.  Typical use::

        results = run_all_schedules(lambda: my_op(x))
        for sched, seed, r in results:
            np.testing.assert_array_equal(r, reference)
    """
    out = []
    seeds = tuple(seeds)
    for s in schedules:
        for seed in (seeds if s == "random" else (0,)):
            with using_schedule(s, seed):
                out.append((s, seed, fn()))
    return out


def _effective_schedule(mod_schedule: Optional[str], mod_seed: int) -> Tuple[int, int]:
    if mod_schedule is not None:
        return _SCHED_CODE[mod_schedule], mod_seed
    ov = getattr(_override, "value", None)
    if ov is not None:
        return _SCHED_CODE[ov[0]], ov[1]
    env = os.environ.get("CUDA_EMU_SCHEDULE", "").strip() or "forward"
    if env not in _SCHED_CODE:
        raise ValueError(f"CUDA_EMU_SCHEDULE={env!r}; expected one of {SCHEDULES}")
    seed = int(os.environ.get("CUDA_EMU_SEED", str(mod_seed)) or mod_seed)
    return _SCHED_CODE[env], seed


# ----------------------------------------------------------------------------- options
def _parse_options(options: Sequence[str]):
    defines: List[str] = []
    includes: List[str] = []
    std = "c++17"
    ftz = False
    it = iter(list(options))
    for opt in it:
        if not isinstance(opt, str):
            raise TypeError(f"compile options must be strings, got {opt!r}")
        o = opt.strip()
        if o in ("-D", "--define-macro"):
            defines.append(next(it))
        elif o.startswith("--define-macro="):
            defines.append(o.split("=", 1)[1])
        elif o.startswith("-D"):
            defines.append(o[2:])
        elif o in ("-I", "--include-path"):
            includes.append(next(it))
        elif o.startswith("--include-path="):
            includes.append(o.split("=", 1)[1])
        elif o.startswith("-I"):
            includes.append(o[2:])
        elif o.startswith(("-std=", "--std=")):
            v = o.split("=", 1)[1]
            if v in ("c++20", "c++2a", "c++23", "c++2b"):
                std = v
            # c++11/14 sources compile as c++17 (the header needs C++17)
        elif o.startswith(("-ftz=", "--ftz=")):
            ftz = o.split("=", 1)[1].lower() == "true"
        elif o in ("--use_fast_math", "-use_fast_math", "--use-fast-math"):
            ftz = True
        # everything else (-arch, --device-as-default-execution-space, -lineinfo, ...) is ignored
    return defines, includes, std, ftz


# ----------------------------------------------------------------------------- building
_DYN_RE = re.compile(r"\bextern(\s+)__shared__\b")
_DYN_NAME_RE = re.compile(r"\bextern\s+__shared__\b[^;{}]*?(\w+)\s*\[\s*\]\s*;")
_EXTERN_C_RE = re.compile(
    r'extern\s+"C"\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?__global__\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?'
    r'void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(')
_EXTERN_C_RE2 = re.compile(
    r'extern\s+"C"\s+__global__\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?void\s+(\w+)\s*\(')
_COMMENT_RE = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)


def _cache_dir() -> str:
    d = os.environ.get("CUDA_EMU_CACHE") or os.path.join(tempfile.gettempdir(), f"cuda_emu_cache_{os.getuid()}")
    os.makedirs(d, exist_ok=True)
    return d


def _header_digest() -> str:
    h = hashlib.sha256(_RUNTIME_VERSION.encode())
    for fn in sorted(os.listdir(_INCLUDE)):
        with open(os.path.join(_INCLUDE, fn), "rb") as f:
            h.update(fn.encode() + b"\0" + f.read())
    return h.hexdigest()


def _run(cmd: List[str], cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


_OBJ_RE = re.compile(r"^([0-9a-f]+)\s(.{7})\s(\S+)\s+([0-9a-f]+)\s+(?:\.hidden\s+)?(\S.*)$")


def _symbols(lib_path: str) -> List[Tuple[int, str, str, int, str]]:
    out = _run(["objdump", "-t", lib_path], os.path.dirname(lib_path))
    if out.returncode != 0:
        raise CompileError("objdump failed on the emulator library", out.stderr)
    syms = []
    for line in out.stdout.splitlines():
        m = _OBJ_RE.match(line)
        if m:
            syms.append((int(m.group(1), 16), m.group(2), m.group(3), int(m.group(4), 16), m.group(5).strip()))
    return syms


def _build(code: str, defines, includes, std, names: List[str], sanitize: bool,
           racecheck: bool = False) -> Tuple[str, dict]:
    key_src = json.dumps([_header_digest(), code, defines, includes, std, names, sanitize, racecheck])
    key = hashlib.sha256(key_src.encode()).hexdigest()[:32]
    cache = _cache_dir()
    lib_path = os.path.join(cache, f"k_{key}.so")
    meta_path = os.path.join(cache, f"k_{key}.json")
    if os.path.exists(lib_path) and os.path.exists(meta_path):
        with open(meta_path) as f:
            return lib_path, json.load(f)

    work = tempfile.mkdtemp(prefix="build_", dir=cache)
    try:
        src = _DYN_RE.sub(r"extern\1__emu_dyn_shared__", code)
        dyn_names = set(_DYN_NAME_RE.findall(_COMMENT_RE.sub("", code)))
        with open(os.path.join(work, "kernel.cu"), "w") as f:
            f.write(src)
        glue = ['#include "kernel.cu"', "", "#define EMU_EXPORT __attribute__((visibility(\"default\")))", 'extern "C" {']
        for i, n in enumerate(names):
            glue.append(f"EMU_EXPORT int __emu_launch_{i}(const ::cuda_emu::LaunchCfg* c, void** a) "
                        f"{{ return ::cuda_emu::launch(&{n}, c, a); }}")
            glue.append(f"EMU_EXPORT int __emu_info_{i}(::cuda_emu::ParamInfo* o, int cap) "
                        f"{{ return ::cuda_emu::param_info(&{n}, o, cap); }}")
            glue.append(f"EMU_EXPORT const void* __emu_addr_{i}() {{ return (const void*)&{n}; }}")
        glue += ["}", ""]
        with open(os.path.join(work, "glue.cpp"), "w") as f:
            f.write("\n".join(glue))
        # -fvisibility=hidden / -fno-gnu-unique: every symbol binds inside its own library, so two
        # libraries that instantiate the same template never share its (shared-memory) statics
        flags = ["-O1", "-g", f"-std={std}", "-fPIC", "-fno-strict-aliasing", "-w", "-fvisibility=hidden",
                 "-fno-gnu-unique"]
        if sanitize:
            flags += ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
        if racecheck:  # every load/store calls __tsan_*, which cuda_emu_race.h defines (no libtsan)
            flags += ["-fsanitize=thread", "-DCUDA_EMU_RACECHECK"]
        inc = ["-I", _INCLUDE] + sum((["-I", os.path.abspath(d)] for d in includes), [])
        dfs = ["-D" + d for d in defines]
        cmd = ["g++"] + flags + ["-include", _HEADER] + inc + dfs + ["-c", "glue.cpp", "-o", "glue.o"]
        r = _run(cmd, work)
        if r.returncode != 0:
            log = r.stderr
            hint = ""
            if "multiple storage classes" in log or "conflicting specifiers" in log:
                hint = ("\nhint: `extern __shared__` must be written in the kernel source itself (not in an "
                        "#included header) so that the emulator can rewrite it")
            raise CompileError("g++ failed to compile the kernel source" + hint, log)
        defsyms = []
        if dyn_names:
            u = _run(["nm", "-u", "glue.o"], work).stdout.split()
            uc = _run(["nm", "-uC", "glue.o"], work).stdout.splitlines()
            mangled = [s for s in u if s != "U"]
            demangled = [ln.split(None, 1)[1].strip() for ln in uc if ln.strip().startswith("U ")]
            for ms, ds in zip(mangled, demangled):
                last = ds.split("::")[-1]
                if last in dyn_names:
                    defsyms.append(f"-Wl,--defsym,{ms}=__emu_dyn_smem")
        lcmd = ["g++", "-shared", "-fPIC"] + (["-fsanitize=address,undefined"] if sanitize else []) + \
               ["glue.o", "-o", "lib.so"] + defsyms
        r = _run(lcmd, work)
        if r.returncode != 0:
            raise CompileError("linking the emulator library failed", r.stderr)
        lib_tmp = os.path.join(work, "lib.so")
        syms = _symbols(lib_tmp)
        statics = [(v, sz, name) for (v, fl, sec, sz, name) in syms
                   if name.startswith("_ZZ") and sec.startswith(".bss") and sz > 0 and "O" in fl]
        funcs = {}
        for (v, fl, sec, sz, name) in syms:
            if "F" in fl and sec == ".text":
                funcs.setdefault(str(v), []).append(name)
        anchor = [v for (v, fl, sec, sz, name) in syms if name == "__emu_dyn_smem"]
        meta = {"statics": statics, "funcs": funcs, "anchor": anchor[0] if anchor else None,
                "names": names, "sanitize": sanitize, "racecheck": racecheck}
        tmp_meta = os.path.join(work, "meta.json")
        with open(tmp_meta, "w") as f:
            json.dump(meta, f)
        os.replace(lib_tmp, lib_path)
        os.replace(tmp_meta, meta_path)
        return lib_path, meta
    finally:
        shutil.rmtree(work, ignore_errors=True)


class _ParamInfo(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int64) for n in (
        "size", "align", "is_pointer", "is_floating", "is_integral", "is_signed", "is_enum", "is_class",
        "is_bool", "pointee_kind", "pointee_size", "pointee_align", "pointee_signed")] + \
        [("type_name", ctypes.c_char_p)]


class _LaunchCfg(ctypes.Structure):
    _fields_ = [("grid", ctypes.c_uint32 * 3), ("block", ctypes.c_uint32 * 3), ("shmem", ctypes.c_uint64),
                ("schedule", ctypes.c_int32), ("ftz", ctypes.c_int32), ("seed", ctypes.c_uint64)]


def _load(lib_path: str, meta: dict) -> ctypes.CDLL:
    if lib_path in _LIB_CACHE:
        return _LIB_CACHE[lib_path][0]
    lib = ctypes.CDLL(lib_path, mode=os.RTLD_NOW | os.RTLD_LOCAL)
    base = ctypes.addressof(ctypes.c_ubyte.in_dll(lib, "__emu_dyn_smem")) - meta["anchor"]
    regions = meta["statics"]
    arr = (ctypes.c_uint64 * (2 * max(1, len(regions))))()
    for i, (v, sz, _name) in enumerate(regions):
        arr[2 * i] = base + v
        arr[2 * i + 1] = sz
    lib.__emu_set_shared_regions(arr, ctypes.c_int(len(regions)))
    lib.__emu_last_error.restype = ctypes.c_char_p
    _LIB_CACHE[lib_path] = (lib, {"base": base})
    return lib


def _type_name(pretty: bytes) -> str:
    s = pretty.decode(errors="replace")
    i = s.find("T = ")
    if i < 0:
        return s
    s = s[i + 4:]
    return s[:-1] if s.endswith("]") else s


# ----------------------------------------------------------------------------- Module
class Module:
    """Mirror of ``cupy.RawModule(code=..., options=..., name_expressions=...)``."""

    def __init__(self, code: str, options: Sequence[str] = (), name_expressions: Sequence[str] = (),
                 schedule: Optional[str] = None, seed: int = 0, *, sanitize: Optional[bool] = None,
                 racecheck: Optional[bool] = None):
        if not isinstance(code, str):
            raise TypeError("code must be a str")
        if schedule is not None and schedule not in _SCHED_CODE:
            raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
        self.code = code
        self.options = tuple(options)
        self.name_expressions = tuple(name_expressions)
        self.schedule = schedule
        self.seed = int(seed)
        self.sanitize = sanitize_requested() if sanitize is None else bool(sanitize)
        self.racecheck = racecheck_requested() if racecheck is None else bool(racecheck)
        if self.racecheck and self.sanitize:
            raise ValueError("racecheck and sanitize cannot be combined (ThreadSanitizer and AddressSanitizer "
                             "instrumentation exclude each other); run them separately")
        if self.sanitize and not _libasan_loaded():
            raise SanitizerError(
                "CUDA_EMU_SANITIZE=1 builds kernels with -fsanitize=address,undefined, which needs libasan "
                "preloaded into the process: run this in a subprocess with env=cuda_emu.sanitizer_env() "
                "(LD_PRELOAD=$(g++ -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0)")
        self._defines, self._includes, self._std, self.ftz = _parse_options(self.options)
        self._names: List[str] = list(dict.fromkeys(self.name_expressions))
        self._functions: Dict[str, Function] = {}
        stripped = _COMMENT_RE.sub("", code)
        cands = [n for n in dict.fromkeys(_EXTERN_C_RE.findall(stripped) + _EXTERN_C_RE2.findall(stripped))
                 if n not in self._names]
        self._lib = None
        if cands:
            try:
                self._compile(self._names + cands)
                return
            except CompileError:
                pass
        self._compile(self._names)

    def _compile(self, names: List[str]) -> None:
        with _LAUNCH_LOCK:
            lib_path, meta = _build(self.code, self._defines, self._includes, self._std, names, self.sanitize,
                                    self.racecheck)
            self._lib = _load(lib_path, meta)
        self._lib_path = lib_path
        self._meta = meta
        self._base = _LIB_CACHE[lib_path][1]["base"]
        self._names = list(names)
        self._functions = {}

    def get_function(self, name: str) -> "Function":
        """The kernel ``name``: one of the module's ``name_expressions`` or an ``extern "C"``
        kernel of the source. Anything else raises :class:`NotFoundError`, as
        ``cupy.RawModule.get_function`` does (``CUDA_ERROR_NOT_FOUND``): a template that was not
        instantiated through ``name_expressions`` does not exist in the compiled module."""
        if name in self._functions:
            return self._functions[name]
        if name not in self._names:
            raise NotFoundError(
                f"cuda_emu: no kernel {name!r} in this module (CUDA_ERROR_NOT_FOUND: named symbol not found); "
                f"a template kernel exists only if its instantiation is among name_expressions "
                f"({len(self.name_expressions)} given)")
        fn = Function(self, name, self._names.index(name))
        self._functions[name] = fn
        return fn

    # static shared memory of one kernel, from the symbol table (function-local statics)
    def _static_shared(self, addr: int) -> int:
        rel = addr - self._base
        names = self._meta["funcs"].get(str(rel), [])
        total = 0
        for n in names:
            enc = n[2:] if n.startswith("_Z") else f"{len(n)}{n}"
            pre = "_ZZ" + enc + "E"
            total = max(total, sum(sz for (_v, sz, sn) in self._meta["statics"] if sn.startswith(pre)))
        return total


def _as3(v, what: str) -> Tuple[int, int, int]:
    if isinstance(v, (int, np.integer)):
        v = (v,)
    if not isinstance(v, (tuple, list)) or not 1 <= len(v) <= 3:
        raise ValueError(f"{what} must be an int or a tuple of 1 to 3 ints, got {v!r}")
    vals = []
    for x in v:
        if not isinstance(x, (int, np.integer)) or isinstance(x, bool):
            raise ValueError(f"{what} must contain ints, got {v!r}")
        vals.append(int(x))
    while len(vals) < 3:
        vals.append(1)
    return tuple(vals)  # type: ignore[return-value]


_NP_FLOAT_KINDS = "f"
_NP_INT_KINDS = "iub"


class Function:
    """Mirror of ``cupy.cuda.Function``: ``fn(grid, block, args, shared_mem=0)``."""

    def __init__(self, module: Module, name: str, index: int):
        self.module = module
        self.name = name
        lib = module._lib
        self._launch = getattr(lib, f"__emu_launch_{index}")
        self._launch.restype = ctypes.c_int
        self._launch.argtypes = [ctypes.POINTER(_LaunchCfg), ctypes.POINTER(ctypes.c_void_p)]
        info = getattr(lib, f"__emu_info_{index}")
        info.restype = ctypes.c_int
        n = info(None, 0)
        arr = (_ParamInfo * max(n, 1))()
        info(arr, n)
        self.params = [arr[i] for i in range(n)]
        self.param_types = [_type_name(p.type_name) for p in self.params]
        addr_fn = getattr(lib, f"__emu_addr_{index}")
        addr_fn.restype = ctypes.c_void_p
        self.static_shared_bytes = module._static_shared(addr_fn())
        self.max_dynamic_shared_size_bytes = 0   # like cupy's attribute: opt-in above 48 KiB
        self._lib = lib

    @property
    def num_params(self) -> int:
        return len(self.params)

    def __repr__(self) -> str:
        return f"<cuda_emu.Function {self.name}({', '.join(self.param_types)})>"

    # ------------------------------------------------------------------ argument checks
    def _check_arg(self, i: int, a, p: _ParamInfo, tname: str):
        def err(msg):
            raise TypeError(f"{self.name}: argument {i}: kernel parameter type is '{tname}' but got {msg}")

        if isinstance(a, np.ndarray):
            if not p.is_pointer:
                err(f"a numpy array (dtype {a.dtype}); pass a numpy scalar such as np.{_suggest(p)}(...)")
            if not (a.flags.c_contiguous or a.size <= 1):
                raise ValueError(f"{self.name}: argument {i}: array is not C-contiguous; the kernel would see its "
                                 f"raw memory (pass np.ascontiguousarray(...))")
            dt = a.dtype
            k = p.pointee_kind
            if k in (1, 2, 4) and p.pointee_size != 1:
                if dt.itemsize != p.pointee_size:
                    err(f"an array of dtype {dt} (itemsize {dt.itemsize}) for a pointer to a "
                        f"{p.pointee_size}-byte element")
                raw16 = dt.kind == "f" and dt.itemsize == 2 and k == 1   # fp16 as raw unsigned short bits
                if (k == 2) != (dt.kind == "f") and not raw16:
                    err(f"an array of dtype {dt} ({'floating' if dt.kind == 'f' else 'integer'} elements) for a "
                        f"pointer to {'floating' if k == 2 else 'integer'} elements")
            if a.size > 0 and a.ctypes.data % max(1, p.pointee_align if k != 0 else 1):
                raise ValueError(f"{self.name}: argument {i}: array data address {a.ctypes.data:#x} is not "
                                 f"{p.pointee_align}-byte aligned as '{tname}' requires")
            return
        if isinstance(a, (bool, int, float, complex)) and not isinstance(a, np.generic):
            err(f"a Python {type(a).__name__} ({a!r}); pass a numpy scalar with the exact C++ type, e.g. "
                f"np.{_suggest(p)}({a!r}) (on a GPU CuPy would pass a Python int as 8 bytes)")
        if not isinstance(a, np.generic):
            err(f"an object of type {type(a).__name__}; expected a numpy array or numpy scalar")
        dt = a.dtype
        if p.is_pointer:
            err(f"a numpy scalar ({dt}) for a pointer parameter; pass a numpy array")
        if p.is_class:
            if dt.kind != "V" or dt.itemsize != p.size:
                err(f"a numpy scalar of dtype {dt}; a by-value struct parameter needs a numpy structured "
                    f"scalar (np.void) of {p.size} bytes")
            return
        if dt.itemsize != p.size:
            err(f"np.{dt.name} ({dt.itemsize} bytes) for a {p.size}-byte parameter")
        if p.is_floating:
            if dt.kind != "f":
                err(f"np.{dt.name} (an integer) for a floating-point parameter")
            return
        if dt.kind not in _NP_INT_KINDS:
            err(f"np.{dt.name} (not an integer) for an integer parameter")
        if p.is_bool:
            return
        is_signed_np = dt.kind == "i"
        if bool(p.is_signed) != is_signed_np and dt.kind != "b":
            v = int(a)
            bits = 8 * p.size
            lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if p.is_signed else (0, (1 << bits) - 1)
            if not lo <= v <= hi:
                err(f"np.{dt.name}({v}), which does not fit the parameter's "
                    f"{'signed' if p.is_signed else 'unsigned'} type")

    def __call__(self, grid, block, args, shared_mem: int = 0, stream=None, enable_cooperative_groups=False):
        g = _as3(grid, "grid")
        b = _as3(block, "block")
        for d, (v, lim) in enumerate(zip(b, _MAX_BLOCK)):
            if not 1 <= v <= lim:
                raise KernelError(f"{self.name}: invalid block dimension {'xyz'[d]}={v} (CUDA limit 1..{lim})")
        if b[0] * b[1] * b[2] > 1024:
            raise KernelError(f"{self.name}: block {b} has {b[0] * b[1] * b[2]} threads (CUDA limit 1024)")
        for d, (v, lim) in enumerate(zip(g, _MAX_GRID)):
            if not 1 <= v <= lim:
                raise KernelError(f"{self.name}: invalid grid dimension {'xyz'[d]}={v} (CUDA limit 1..{lim})")
        shared_mem = int(shared_mem)
        if shared_mem < 0:
            raise KernelError(f"{self.name}: negative shared_mem")
        if self.static_shared_bytes > STATIC_SHARED_LIMIT:
            raise KernelError(f"{self.name}: {self.static_shared_bytes} bytes of static __shared__ memory "
                              f"exceed the {STATIC_SHARED_LIMIT}-byte (48 KiB) limit")
        dyn_limit = max(DEFAULT_DYNAMIC_SHARED_LIMIT - self.static_shared_bytes,
                        int(self.max_dynamic_shared_size_bytes or 0))
        dyn_limit = min(dyn_limit, MAX_DYNAMIC_SHARED)
        if shared_mem > dyn_limit:
            raise KernelError(f"{self.name}: shared_mem={shared_mem} bytes of dynamic shared memory exceed the "
                              f"limit of {dyn_limit} bytes (48 KiB minus {self.static_shared_bytes} static; set "
                              f"max_dynamic_shared_size_bytes to opt in to more)")
        if not isinstance(args, (tuple, list)):
            raise TypeError(f"{self.name}: args must be a tuple")
        if len(args) != len(self.params):
            raise TypeError(f"{self.name}: the kernel takes {len(self.params)} arguments "
                            f"({', '.join(self.param_types)}) but {len(args)} were given")
        for i, (a, p, t) in enumerate(zip(args, self.params, self.param_types)):
            self._check_arg(i, a, p, t)
        sched, seed = _effective_schedule(self.module.schedule, self.module.seed)
        cfg = _LaunchCfg()
        cfg.grid[:] = g
        cfg.block[:] = b
        cfg.shmem = shared_mem
        cfg.schedule = sched
        cfg.ftz = 1 if self.module.ftz else 0
        cfg.seed = seed & (2**64 - 1)
        keep: List[Any] = []
        argv = (ctypes.c_void_p * max(1, len(args)))()
        copies = _SanitizeCopies(self._lib, args) if self.module.sanitize else None
        for i, a in enumerate(args):
            if isinstance(a, np.ndarray):
                buf = ctypes.c_uint64(copies.pointer(i) if copies else a.ctypes.data)
            else:
                raw = a.tobytes()
                buf = ctypes.create_string_buffer(raw, max(8, len(raw)))
            keep.append(buf)
            argv[i] = ctypes.addressof(buf)
        if self.module.racecheck:
            spans = [(a.ctypes.data, a.ctypes.data + a.nbytes) for a in args if isinstance(a, np.ndarray) and a.nbytes]
            pairs = (ctypes.c_uint64 * (2 * max(1, len(spans))))(*[v for span in spans for v in span])
        with _LAUNCH_LOCK:
            if copies:
                copies.copy_in()
            if self.module.racecheck:
                getattr(self._lib, "__emu_race_set")(pairs, ctypes.c_int(len(spans)), ctypes.c_int(1))
            rc = self._launch(ctypes.byref(cfg), argv)
            if copies:
                copies.copy_back()
                copies.free()
            if rc != 0:
                msg = getattr(self._lib, "__emu_last_error")().decode(errors="replace")
                if self.module.racecheck:
                    msg = _source_lines(self.module._lib_path, msg)
                raise KernelError(f"{self.name}: {msg}")


def _suggest(p: _ParamInfo) -> str:
    if p.is_floating:
        return {4: "float32", 8: "float64", 2: "float16"}.get(p.size, "float64")
    if p.is_bool:
        return "bool_"
    return ("int" if p.is_signed else "uint") + str(8 * p.size)


class _SanitizeCopies:
    """In sanitize mode each array argument (overlapping arrays: their union) is copied into a
    buffer of exactly its size, so that ASan sees out-of-bounds accesses; copied back after."""

    def __init__(self, lib, args):
        self.lib = lib
        self.alloc = getattr(lib, "__emu_san_alloc")
        self.alloc.restype = ctypes.c_void_p
        self.alloc.argtypes = [ctypes.c_uint64, ctypes.c_uint64]
        self.free_fn = getattr(lib, "__emu_san_free")
        self.free_fn.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
        spans = []
        for i, a in enumerate(args):
            if isinstance(a, np.ndarray):
                lo = a.ctypes.data
                hi = lo + a.nbytes
                spans.append([lo, hi, [i]])
        spans.sort()
        groups: List[list] = []
        for s in spans:
            if groups and s[0] < groups[-1][1]:
                groups[-1][1] = max(groups[-1][1], s[1])
                groups[-1][2] += s[2]
            else:
                groups.append(s)
        self.groups = []
        self.ptr = {}
        for lo, hi, idx in groups:
            pre = lo % 256
            buf = self.alloc(hi - lo, pre)
            self.groups.append((lo, hi, buf, pre))
            for i in idx:
                self.ptr[i] = buf + (args[i].ctypes.data - lo)

    def pointer(self, i):
        return self.ptr[i]

    def copy_in(self):
        for lo, hi, buf, _pre in self.groups:
            if hi > lo:
                ctypes.memmove(buf, lo, hi - lo)

    def copy_back(self):
        for lo, hi, buf, _pre in self.groups:
            if hi > lo:
                ctypes.memmove(lo, buf, hi - lo)

    def free(self):
        for _lo, _hi, buf, pre in self.groups:
            self.free_fn(buf, pre)
        self.groups = []

"""The cuda backend's declaration without a GPU: CuPy is not imported to describe it where no
device can exist (issue 8 item 13), and bfloat16 is declared only with a CuPy that has the dtype
(issue 8 item 3). Runs everywhere; nothing here needs a device."""

from __future__ import annotations

import subprocess
import sys

import pytest

import pruneplug as pp
import pruneplug_backends.cuda as cuda_plugin


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_describing_the_backends_does_not_import_cupy_without_a_device():
    """`import pruneplug; pp.backends()` (and so every CLI call) used to import CuPy, 20-230 MB of
    memory, even on machines with no GPU."""
    if cuda_plugin.cheap_probe() is None:
        pytest.skip("an NVIDIA device node exists here: describing the backend may import CuPy")
    out = _run("import sys, pruneplug as pp; rows = pp.backends(); "
               "print('cupy' in sys.modules, [r.available for r in rows if r.name == 'cuda'])")
    assert out == "False [False]", out


def test_cli_does_not_import_cupy_without_a_device():
    out = _run("import sys, pruneplug_backends.cuda as c; c._device_nodes = lambda: []; "
               "from pruneplug import cli; cli.main(['backends']); print('cupy imported:', 'cupy' in sys.modules)")
    assert out.splitlines()[-1] == "cupy imported: False", out


def test_no_device_node_means_no_cupy_import():
    """The same with the device nodes hidden (meaningful on a GPU machine too)."""
    out = _run("import sys, pruneplug_backends.cuda as c; c._device_nodes = lambda: []; "
               "import pruneplug as pp; rows = {r.name: r for r in pp.backends()}; "
               "print('cupy' in sys.modules, rows['cuda'].available, rows['cuda'].reason)")
    assert out.startswith("False False CUDA driver/device not found: no NVIDIA device node"), out


def test_cheap_probe_without_cupy(monkeypatch):
    monkeypatch.setattr(cuda_plugin, "_cupy_spec", lambda: None)
    assert cuda_plugin.cheap_probe() == "cupy is not installed (pip install 'pruneplug[cuda]')"
    assert cuda_plugin.probe() == (False, "cupy is not installed (pip install 'pruneplug[cuda]')")
    assert cuda_plugin.cupy_version() is None


def test_cupy_version_is_read_without_importing_it():
    cupy = pytest.importorskip("cupy")
    assert cuda_plugin.cupy_version() == cupy.__version__


@pytest.mark.parametrize("version,declared", [("13.6.0", False), ("13.3.0", False), ("14.0.0", True),
                                              ("14.2.0", True), ("15.0.0a1", True)])
def test_bfloat16_is_declared_only_with_a_cupy_that_has_it(monkeypatch, version, declared):
    monkeypatch.setattr(cuda_plugin, "cupy_version", lambda: version)
    monkeypatch.setattr(cuda_plugin.plugin, "_probe", lambda: (True, None))  # as on a GPU machine
    info = cuda_plugin.plugin.pruneplug_backend_info()
    assert info.available and {"float16", "float32", "float64", "int8"} <= info.dtypes
    assert ("bfloat16" in info.dtypes) is declared
    if declared:
        assert info.reason is None
    else:
        assert info.reason == f"bfloat16 needs CuPy >= 14 (installed: {version}, which has no bfloat16 dtype)"
        # `pruneplug backends` says why (in a subprocess: the registry reads declarations once)
        out = _run(f"import pruneplug_backends.cuda as c; c.cupy_version = lambda: {version!r}; "
                   "c.plugin._probe = lambda: (True, None); from pruneplug import cli; cli.main(['backends'])")
        line = [ln for ln in out.splitlines() if ln.startswith("cuda ")]
        assert line and "bfloat16 needs CuPy >= 14" in line[0], out


def test_unavailable_backend_keeps_its_own_reason(monkeypatch):
    monkeypatch.setattr(cuda_plugin, "cupy_version", lambda: "13.6.0")
    monkeypatch.setattr(cuda_plugin.plugin, "_probe", lambda: (False, "no device"))
    info = cuda_plugin.plugin.pruneplug_backend_info()
    assert not info.available and info.reason == "no device" and "bfloat16" not in info.dtypes


# --- PyTorch's current stream (issue 8 item 4), with stand-ins for torch.cuda and cupy.cuda ----
class _FakeExternalStream:
    def __init__(self, ptr, device_id):
        self.ptr, self.device_id = ptr, device_id
        self.entered = 0

    def __enter__(self):
        self.entered += 1
        return self

    def __exit__(self, *exc):
        return False


def _fakes(monkeypatch, *, initialized=True, torch_stream=0x5150, cupy_stream=0):
    from types import SimpleNamespace

    torch = SimpleNamespace(cuda=SimpleNamespace(
        is_initialized=lambda: initialized, current_device=lambda: 1,
        current_stream=lambda: SimpleNamespace(cuda_stream=torch_stream)))
    cupy = SimpleNamespace(cuda=SimpleNamespace(
        get_current_stream=lambda: SimpleNamespace(ptr=cupy_stream), ExternalStream=_FakeExternalStream,
        Stream=SimpleNamespace(null=SimpleNamespace(ptr=0), ptds=SimpleNamespace(ptr=2))))
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "cupy", cupy)


@pytest.mark.parametrize("cupy_default", [0, 2])  # CuPy's legacy and per-thread default streams
def test_torch_current_stream_is_picked_up(monkeypatch, cupy_default):
    _fakes(monkeypatch, cupy_stream=cupy_default)
    scope = cuda_plugin.torch_stream()
    assert isinstance(scope, _FakeExternalStream) and (scope.ptr, scope.device_id) == (0x5150, 1)


def test_torch_stream_through_the_cuda_stream_protocol(monkeypatch):
    """CuPy 14 deprecates ExternalStream for Stream.from_external(obj with __cuda_stream__)."""
    from types import SimpleNamespace

    _fakes(monkeypatch)
    torch_stream = SimpleNamespace(cuda_stream=0x5150, __cuda_stream__=lambda: (0, 0x5150))
    monkeypatch.setattr(sys.modules["torch"].cuda, "current_stream", lambda: torch_stream)
    wrapped = []
    sys.modules["cupy"].cuda.Stream.from_external = lambda obj: wrapped.append(obj) or _FakeExternalStream(0x5150, -1)
    scope = cuda_plugin.torch_stream()
    assert wrapped == [torch_stream] and isinstance(scope, _FakeExternalStream)


@pytest.mark.parametrize("case", [{"initialized": False}, {"torch_stream": 0}, {"cupy_stream": 0x77}])
def test_torch_stream_is_left_alone(monkeypatch, case):
    """No torch CUDA context; torch on the default stream (CuPy's too); a CuPy stream the caller chose."""
    _fakes(monkeypatch, **case)
    assert not isinstance(cuda_plugin.torch_stream(), _FakeExternalStream)


def test_every_operation_runs_inside_the_stream_scope():
    """Each hook of the plugin runs its backend call inside the stream context (so kernels, copies
    and the result all belong to PyTorch's stream)."""
    from pruneplug_backends.cuda import hooks as cuda_hooks

    events = []

    class Scope:
        def __enter__(self):
            events.append("enter")

        def __exit__(self, *exc):
            events.append("exit")
            return False

    class Recorder:
        def __getattr__(self, name):
            return lambda *args: events.append(name) or ("result", name)

    plugin = cuda_hooks.CudaPlugin(lambda: Recorder(), name="streams", stream=Scope)
    hooks = [h for h in dir(plugin) if h.startswith("pruneplug_") and h != "pruneplug_backend_info"]
    from pruneplug.backend_info import implemented_operations

    assert set(hooks) == {f"pruneplug_{op}" for op in implemented_operations(plugin)} and len(hooks) >= 12
    for hook in hooks:
        events.clear()
        fn = getattr(plugin, hook)
        nargs = fn.__code__.co_argcount - 1
        fn(*range(nargs))
        assert len(events) == 3 and events[0] == "enter" and events[2] == "exit", (hook, events)


def test_kernel_codes_have_one_home():
    """Dtype, transform, layout codes, workspace slots and launch constants are read from the CUDA
    files, not written a second time in Python (issue 10): every such #define is in the tables."""
    import re
    from pathlib import Path

    from pruneplug_backends.cuda import launches
    from pruneplug_backends.cuda import _kernels as K

    read = {name: (Path(K.KERNEL_DIR) / name).read_text() for name in ("codes.cuh", "common.cuh", "keyhist.cu")}
    for prefix, table, name in (("DT_", K.DT, "codes.cuh"), ("TR_", K.TR, "codes.cuh"),
                                ("LAYOUT24_", K.LAYOUT24, "codes.cuh"), ("WS_", K.WS, "common.cuh"),
                                ("KEYS_", K.KEYS, "keyhist.cu")):
        macros = dict(re.findall(rf"#define ({prefix}\w+) (\d+)", read[name]))
        assert sorted(table.values()) == sorted(int(v) for v in macros.values()) and macros, prefix
    # each code has one home: no other CUDA file defines a DT_, TR_ or LAYOUT24_ code
    for path in Path(K.KERNEL_DIR).glob("*.cu*"):
        if path.name != "codes.cuh":
            assert not re.findall(r"#define (DT\w*_|TR_|LAYOUT\w*_)\w+ \d", path.read_text()), path.name
    assert K.DT24 == {d: K.DT[d] for d in pp.sparse24.DTYPES}
    common = read["common.cuh"]
    assert (launches.BLOCK, launches.TILE, launches.DIGIT, launches.BINS) == tuple(
        int(re.search(rf"#define {name} (\d+)", common).group(1)) for name in ("PP_BLOCK", "PP_TILE", "PP_DIGIT", "PP_BINS"))
    assert K.WS["SIZE"] > max(v for k, v in K.WS.items() if k != "SIZE") + 3  # the four STATS slots fit


def test_an_include_the_inliner_cannot_resolve_is_refused(tmp_path, monkeypatch):
    """An include line the inliner does not take (here: a trailing comment) would reach NVRTC,
    which cannot open the file on a user's machine: source() refuses it instead."""
    from pruneplug_backends.cuda import _kernels as K

    (tmp_path / "codes.cuh").write_text("#define X 1\n")
    (tmp_path / "ok_include.cu").write_text('#include "codes.cuh"\n__global__ void k() {}\n')
    (tmp_path / "bad_include.cu").write_text('#include "codes.cuh"  // codes\n__global__ void k() {}\n')
    monkeypatch.setattr(K, "KERNEL_DIR", tmp_path)
    assert "#define X 1" in K.source("ok_include.cu")
    with pytest.raises(ValueError, match="bad_include.cu.*not a plain local include"):
        K.source("bad_include.cu")

"""Entry-point discovery for real: third-party plugin packages are pip-installed into a temporary
directory, found through the ``pruneplug`` entry-point group in a fresh interpreter, and checked."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

PLUGINS = Path(__file__).parent / "plugins"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    for package in ("demo_backend", "broken_backend"):
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
             "--no-index", "--target", str(target), str(PLUGINS / package)],
            check=True, capture_output=True, text=True,
        )
    return target


def _run(plugin_site, code=None, args=None, **env):
    environment = {**os.environ, "PYTHONPATH": str(plugin_site), **env}
    command = [sys.executable, "-c", code] if code else [sys.executable, *args]
    return subprocess.run(command, capture_output=True, text=True, env=environment, cwd=PLUGINS, timeout=600)


LIST_BACKENDS = "import pruneplug as pp; print({b.name: (b.available, b.error) for b in pp.backends()})"


def test_third_party_plugin_is_discovered_and_broken_one_isolated(plugin_site):
    result = _run(plugin_site, LIST_BACKENDS)
    assert result.returncode == 0, result.stderr
    backends = eval(result.stdout)  # a dict literal we printed ourselves
    assert backends["demo"] == (True, None)
    available, error = backends["broken"]
    assert available is False and "a_module_that_does_not_exist" in error
    assert "PluginLoadWarning" in result.stderr and "'broken' failed to load" in result.stderr


def test_disabled_plugins_are_skipped(plugin_site):
    result = _run(plugin_site, LIST_BACKENDS, PRUNEPLUG_DISABLE_PLUGINS="broken, demo")
    assert result.returncode == 0, result.stderr
    backends = eval(result.stdout)
    assert "demo" not in backends and "broken" not in backends and "numpy" in backends
    assert "PluginLoadWarning" not in result.stderr


def test_the_reference_backend_cannot_be_disabled(plugin_site):
    result = _run(plugin_site, LIST_BACKENDS, PRUNEPLUG_DISABLE_PLUGINS="numpy,cpu")
    assert result.returncode == 0, result.stderr
    backends = eval(result.stdout)
    assert backends["numpy"] == (True, None) and "cpu" not in backends
    # the conformance kit compares with the reference, so it still runs
    kit = _run(plugin_site, args=["-m", "pytest", "-q", "-p", "no:cacheprovider", "kit_for_demo.py"],
               PRUNEPLUG_DISABLE_PLUGINS="numpy")
    assert kit.returncode == 0, kit.stdout[-3000:] + kit.stderr[-2000:]


def test_third_party_backend_passes_the_conformance_kit(plugin_site):
    result = _run(plugin_site, args=["-m", "pytest", "-q", "-p", "no:cacheprovider", "kit_for_demo.py", "-rs"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    # The checks of the operations it declares ran and passed; the others were skipped with a reason.
    assert "demo-nm_mask " in result.stdout or "passed" in result.stdout
    summary = result.stdout.strip().splitlines()[-1]
    passed = int(summary.split(" passed")[0].split()[-1])
    assert passed >= 4, summary
    assert "does not declare" in result.stdout


def test_third_party_backend_is_used_by_name(plugin_site):
    code = (
        "import numpy as np, pruneplug as pp\n"
        "w = np.array([[0.1, -3.0, 0.2, 4.0]], dtype=np.float32)\n"
        "out, mask = pp.prune(w, pattern='2:4', backend='demo', return_mask=True)\n"
        "print(mask.backend, out.tolist())\n"
    )
    result = _run(plugin_site, code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "demo"
    assert "[[0.0, -3.0, 0.0, 4.0]]" in result.stdout

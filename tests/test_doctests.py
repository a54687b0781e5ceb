"""Every docstring example in the package runs and shows what it says (an example that drifts from
the code fails here, not in a user's hands). The examples run in a fresh interpreter: other test
modules register extra backends, and examples show what a user's session shows."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

RUN_ALL = textwrap.dedent("""
    import doctest, importlib, json, pkgutil, sys
    import pruneplug
    results = {}
    for info in sorted(pkgutil.walk_packages(pruneplug.__path__, "pruneplug."), key=lambda m: m.name):
        module = importlib.import_module(info.name)
        r = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        results[info.name] = [r.failed, r.attempted]
    print(json.dumps(results))
""")


def test_docstring_examples(tmp_path):
    # cwd outside the source tree: `python -c` puts the cwd on sys.path, and a build's egg-info there
    # would hide the installed entry points
    proc = subprocess.run([sys.executable, "-c", RUN_ALL], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    failed = {name: counts for name, counts in results.items() if counts[0]}
    assert len(results) > 40 and sum(a for _, a in results.values()) > 100, results
    assert failed == {}, f"failed examples (failed, attempted) per module: {failed}\n{proc.stdout[-6000:]}"

"""cffi definition of the C backend (``pruneplug_backends.cpu._native``).

The cdef is the concatenation of ``csrc/pruneplug.h`` and, when present, ``csrc/compress24.h``,
``csrc/pp_keyhist.h`` and ``csrc/rowselect.h`` (preprocessor lines dropped); every ``csrc/*.c`` is
compiled, and every ``csrc/*.h`` and ``csrc/*.inc`` (internal headers and kernel templates) is a build
dependency. Set ``PRUNEPLUG_SANITIZE=1`` to build with AddressSanitizer and UBSan (run with libasan
LD_PRELOADed).
"""

import glob
import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
HEADERS = [h for h in ("pruneplug.h", "compress24.h", "pp_keyhist.h", "rowselect.h") if os.path.exists(os.path.join(HERE, h))]


def _rel(path):
    # setuptools wants source paths relative to the project root (the current directory).
    try:
        return os.path.relpath(path)
    except ValueError:
        return path


def _cdef_text(path):
    with open(path, encoding="utf-8") as f:
        return "\n".join(line for line in f.read().splitlines() if not line.lstrip().startswith("#"))


SANITIZE = os.environ.get("PRUNEPLUG_SANITIZE", "") not in ("", "0")
COMPILE = ["-fopenmp", "-ffp-contract=off", "-fno-fast-math", "-fno-strict-aliasing", "-Wall"]
LINK = ["-fopenmp"]
if SANITIZE:
    COMPILE += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1", "-g"]
    LINK += ["-fsanitize=address,undefined"]
else:
    COMPILE += ["-O3"]

ffibuilder = FFI()
ffibuilder.cdef("\n".join(_cdef_text(os.path.join(HERE, h)) for h in HEADERS))
ffibuilder.set_source(
    "pruneplug_backends.cpu._native",
    "\n".join(f'#include "{h}"' for h in HEADERS),
    sources=[_rel(p) for p in sorted(glob.glob(os.path.join(HERE, "*.c")))],
    include_dirs=[_rel(HERE)],
    depends=[_rel(p) for p in sorted(glob.glob(os.path.join(HERE, "*.h")) + glob.glob(os.path.join(HERE, "*.inc")))],
    extra_compile_args=COMPILE,
    extra_link_args=LINK,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)

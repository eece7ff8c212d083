"""cffi builder for vswitch._fastpath (out-of-line API mode).

fastpath.h is the single declaration of the C API: the C sources include it and
this builder feeds it, minus its preprocessor lines, to cdef().

Build knobs (environment):
  VSWITCH_CFLAGS    extra compiler flags, e.g. "-O1 -g -fsanitize=address,undefined"
  VSWITCH_LDFLAGS   extra linker flags
"""

import os
import re
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
# setuptools wants sources relative to the project root, and runs from there.
ROOT = HERE.parent
SOURCES = sorted(str(p.relative_to(ROOT)) for p in HERE.glob("vs_*.c"))
_DEFINE = re.compile(r"^#define\s+\w+\s+-?\d+\s*$")


def cdef_text() -> str:
    lines = []
    for line in (HERE / "fastpath.h").read_text().splitlines():
        if line.startswith("#") and not _DEFINE.match(line):
            continue
        lines.append(line)
    return "\n".join(lines)


def make_builder(sources: list[str]) -> FFI:
    ffi = FFI()
    ffi.cdef(cdef_text())
    ffi.set_source(
        "vswitch._fastpath",
        '#include "fastpath.h"',
        sources=sources,
        include_dirs=[str(HERE)],
        extra_compile_args=[
            "-O2",
            "-std=gnu11",
            # The C API is reached only through the cffi wrapper in the same
            # module: hidden symbols make calls between our files direct
            # instead of through the PLT.
            "-fvisibility=hidden",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-Wno-unused-parameter",
            *os.environ.get("VSWITCH_CFLAGS", "").split(),
        ],
        extra_link_args=os.environ.get("VSWITCH_LDFLAGS", "").split(),
    )
    return ffi


ffibuilder = make_builder(SOURCES)

if __name__ == "__main__":
    # In-place build for development and the sanitizer tests:
    #   python csrc/build_fastpath.py [OUTDIR]  ->  OUTDIR/vswitch/_fastpath*.so
    import sys

    out = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT
    # cffi compiles from inside tmpdir: hand it absolute sources.
    make_builder([str(ROOT / s) for s in SOURCES]).compile(tmpdir=str(out), verbose=False)

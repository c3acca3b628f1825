"""Build the optional C extension ``fastbp._ckernels`` from ``csrc/``.

Everything else is declared in ``pyproject.toml``.  The extension is the
fallback backend where Numba is missing.  If it cannot be built (no C
compiler, no Cython), installation still succeeds with a warning, unless
``FASTBP_REQUIRE_EXTENSION=1`` makes that an error.  ``FASTBP_DEBUG_EXTENSION=1``
compiles with bounds checks, wraparound and initialisation checks on.
"""

import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent
SOURCE = "csrc/_ckernels.pyx"


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


REQUIRE = _flag("FASTBP_REQUIRE_EXTENSION")
DEBUG = _flag("FASTBP_DEBUG_EXTENSION")


def _extensions():
    if not (HERE / SOURCE).exists():
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        if REQUIRE:
            raise
        print("WARNING: Cython is not installed; skipping fastbp._ckernels.", file=sys.stderr)
        return []
    from setuptools import Extension

    checks = DEBUG
    directives = {
        "language_level": "3",
        "boundscheck": checks,
        "wraparound": checks,
        "initializedcheck": checks,
        "cdivision": True,
    }
    compile_args = [] if sys.platform == "win32" else (
        ["-O0", "-g"] if DEBUG else ["-O3", "-ffp-contract=fast"])
    ext = Extension("fastbp._ckernels", [SOURCE], extra_compile_args=compile_args)
    return cythonize([ext], compiler_directives=directives, force=DEBUG)


class OptionalBuildExt(build_ext):
    """Turn a failed compile into a warning unless the extension is required."""

    def run(self):
        try:
            super().run()
        except Exception as exc:
            self._skip(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._skip(exc)

    def _skip(self, exc):
        if REQUIRE:
            raise
        print(f"WARNING: building the C extension fastbp._ckernels failed ({exc}); fastbp "
              "will use the Numba or NumPy backend. Install a C compiler and Cython, or set "
              "FASTBP_REQUIRE_EXTENSION=1 to make this an error.", file=sys.stderr)


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})

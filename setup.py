"""Build the optional C extension ``fastbp._ckernels`` from ``csrc/``.

Everything else is declared in ``pyproject.toml``.  The extension is the
fallback backend where Numba is missing.  If it cannot be built (no C
compiler, no Cython), installation still succeeds with a warning, unless
``FASTBP_REQUIRE_EXTENSION=1`` makes that an error.

Three copies of the same kernels are built on x86-64:

``fastbp._ckernels``         the portable baseline (plain x86-64 / the platform default),
``fastbp._ckernels_avx2``    the same source with ``-mavx2 -mfma`` (x86-64-v3),
``fastbp._ckernels_avx512``  and with AVX-512 F/CD/VL/BW/DQ (x86-64-v4), 512-bit vectors.

``fastbp/_backends/cython_.py`` loads the best copy the running CPU supports
(the Numba backend compiles for the host CPU too; a portable wheel must not
assume more than x86-64).  The ISA copies are optional even under
``FASTBP_REQUIRE_EXTENSION=1`` (the baseline is what that setting requires).

Environment switches
--------------------
``FASTBP_REQUIRE_EXTENSION=1``  a failed build of ``fastbp._ckernels`` is an error.
``FASTBP_DEBUG_EXTENSION=1``    bounds, wraparound and initialisation checks on,
                                ``-O0 -g``, and the ``FASTBP_DEBUG`` macro, which
                                makes the kernels range-check every row index.
                                Its C files go to ``build/cython-debug`` so a debug
                                build never overwrites the optimized ``csrc/*.c``.
``FASTBP_SANITIZE_EXTENSION=1`` AddressSanitizer instrumentation (GCC/clang), to run
                                the tests with ``LD_PRELOAD=$(cc -print-file-name=libasan.so)
                                ASAN_OPTIONS=detect_leaks=0``; combine with the debug build.
``FASTBP_NATIVE_EXTENSION=1``   opt-in ``-march=native`` for a build that only has
                                to run on this machine (no ISA copies are then built).
"""

import os
import platform
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent
SOURCE = "csrc/_ckernels.pyx"
BASE_MODULE = "fastbp._ckernels"
# suffix -> (GCC/clang flags, MSVC flags); each copy's source is csrc/_ckernels_<suffix>.pyx,
# which includes _ckernels.pyx, which includes its parts (csrc/_*.pxi): each copy is one
# C translation unit, so the compiler inlines across the parts
ISA_VARIANTS = {
    "avx2": (["-mavx2", "-mfma"], ["/arch:AVX2"]),
    "avx512": (["-mavx512f", "-mavx512cd", "-mavx512vl", "-mavx512bw", "-mavx512dq",
                "-mavx2", "-mfma", "-mprefer-vector-width=512"], ["/arch:AVX512"]),
}


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


REQUIRE = _flag("FASTBP_REQUIRE_EXTENSION")
DEBUG = _flag("FASTBP_DEBUG_EXTENSION")
SANITIZE = _flag("FASTBP_SANITIZE_EXTENSION")
NATIVE = _flag("FASTBP_NATIVE_EXTENSION")
MSVC = sys.platform == "win32"
X86_64 = platform.machine().lower() in ("x86_64", "amd64")


def _compile_args():
    if MSVC:
        return ["/Od", "/Zi"] if DEBUG else ["/O2"]
    if DEBUG:
        return ["-O0", "-g"]
    # FMA contraction and reassociation (so dot products vectorise), inline sqrt (no
    # errno), but none of -ffast-math's finite-math assumptions: the kernels' NaN
    # checks must survive.  (-fassociative-math needs no-signed-zeros and no-trapping.)
    # -fno-wrapv undoes the -fwrapv in CPython's own CFLAGS: wrapping signed overflow
    # blocks the compiler's analysis of the kernels' index arithmetic (25% on W2/W3).
    # -g0 undoes its -g: debug info made each copy 6 MB (debug builds keep it).
    args = ["-O3", "-ffp-contract=fast", "-fno-math-errno", "-fno-trapping-math",
            "-fno-signed-zeros", "-fassociative-math", "-fno-wrapv", "-g0"]
    if NATIVE:
        args.append("-march=native")
    return args


def _includes():
    """The files csrc/_ckernels.pyx includes: its per-concern .pxi parts and the C header."""
    return sorted(str(p.relative_to(HERE).as_posix())
                  for pattern in ("csrc/*.pxi", "csrc/*.pxd", "csrc/*.h")
                  for p in HERE.glob(pattern))


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
    args = _compile_args()
    link_args = []
    if SANITIZE and not MSVC:
        args += ["-fsanitize=address", "-fno-omit-frame-pointer"]
        link_args += ["-fsanitize=address"]
    macros = [("FASTBP_DEBUG", "1")] if DEBUG else []
    # NumPy's deprecated API is never used (memoryviews only).
    macros.append(("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"))
    # depends: rebuild when the shared source, one of its includes (csrc/*.pxi) or the C
    # header changes (cythonize follows the includes itself; this is for the C compile)
    common = dict(define_macros=macros, include_dirs=["csrc"], extra_link_args=link_args,
                  depends=[SOURCE] + _includes())
    exts = [Extension(BASE_MODULE, [SOURCE], extra_compile_args=args, **common)]
    if X86_64 and not NATIVE:
        for suffix, (gcc_flags, msvc_flags) in ISA_VARIANTS.items():
            source = f"csrc/_ckernels_{suffix}.pyx"
            if (HERE / source).exists():
                exts.append(Extension(f"{BASE_MODULE}_{suffix}", [source],
                                      extra_compile_args=args + (msvc_flags if MSVC
                                                                 else gcc_flags),
                                      **common))
    # A debug build writes its C files elsewhere: cythonize skips sources whose C
    # file is newer, so debug C left in csrc/ would leak into the next optimized build.
    build_dir = "build/cython-debug" if DEBUG else None
    # the copies are cythonized (and later compiled) side by side
    jobs = max(1, min(len(exts), os.cpu_count() or 1))
    return cythonize(exts, compiler_directives=directives, force=DEBUG, build_dir=build_dir,
                     quiet=True, nthreads=jobs if jobs > 1 else 0)


# GCC flags, used only where the compiler accepts them (clang may not), each measured:
#   -fno-tree-loop-distribute-patterns  keeps the kernels' 2-4 element copy and zero
#       loops as loops: as memcpy/memset calls they cost more than they do (tiny nets);
#   --param=inline-unit-growth=400      lets the element-wise helpers be inlined into
#       every one of the tiny kernels' width specialisations (past the default budget
#       the rest call them, and their weights go through memory instead of registers);
#   -fno-tree-slp-vectorize             keeps the tiny kernels' scalar dependency chains
#       scalar: the SLP vectoriser packed them into vectors and back, adding shuffles to
#       the critical path.  The loops that matter use the loop vectoriser, unaffected.
#   -Wno-psabi                          silences GCC's note that 32-byte vector arguments
#       changed ABI in GCC 4.6: _gemm.h's helpers are static inline, never an ABI boundary.
OPTIONAL_ARGS = ([] if MSVC else ["-Wno-psabi"]) + ([] if (MSVC or DEBUG) else [
    "-fno-tree-loop-distribute-patterns", "--param=inline-unit-growth=400",
    "-fno-tree-slp-vectorize"])


class OptionalBuildExt(build_ext):
    """Turn a failed compile into a warning unless the extension is required."""

    def finalize_options(self):
        super().finalize_options()
        if self.parallel is None:
            # the copies are independent translation units: build them side by side
            self.parallel = max(1, min(len(ISA_VARIANTS) + 1, os.cpu_count() or 1))

    def build_extensions(self):
        extra = [flag for flag in OPTIONAL_ARGS if self._accepts(flag)]
        for ext in self.extensions:
            ext.extra_compile_args = list(ext.extra_compile_args) + extra
        super().build_extensions()

    def _accepts(self, flag):
        """Does the C compiler accept ``flag`` (without so much as a warning)?"""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "probe.c"
            src.write_text("int fastbp_probe(void) { return 0; }\n")
            try:
                self.compiler.compile([str(src)], output_dir=tmp,
                                      extra_postargs=[flag, "-Werror"])
            except Exception:
                return False
        return True

    def run(self):
        try:
            super().run()
        except Exception as exc:
            self._skip(exc, BASE_MODULE)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._skip(exc, ext.name)

    def _skip(self, exc, name):
        if REQUIRE and name == BASE_MODULE:
            raise
        if name == BASE_MODULE:
            print(f"WARNING: building the C extension {name} failed ({exc}); fastbp will use "
                  "the Numba or NumPy backend. Install a C compiler and Cython, or set "
                  "FASTBP_REQUIRE_EXTENSION=1 to make this an error.", file=sys.stderr)
        else:
            print(f"WARNING: building the optional C extension {name} failed ({exc}); the "
                  "Cython backend will use the other copies it has (fastbp._ckernels is the "
                  "portable one).", file=sys.stderr)


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})

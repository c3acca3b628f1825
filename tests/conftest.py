"""Shared fixtures: the backend x dtype matrix and one dtype-aware comparison."""

# --- no-numba mode ---
# FASTBP_TEST_BLOCK_NUMBA=1 runs the suite as on a machine without Numba: before
# fastbp is first imported, a meta-path finder makes ``import numba`` (and its
# submodules, and llvmlite) raise ImportError, so backend "auto" must fall back to
# "cython" (tests/test_cython.py checks that) and Numba's tests are skipped.
import os as _os
import sys as _sys

if _os.environ.get("FASTBP_TEST_BLOCK_NUMBA", "").strip().lower() in ("1", "true", "yes", "on"):
    class _BlockNumba:
        """A ``sys.meta_path`` finder that refuses numba and llvmlite."""

        BLOCKED = ("numba", "llvmlite")

        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if name.split(".", 1)[0] in cls.BLOCKED:
                raise ImportError(f"{name} is blocked by FASTBP_TEST_BLOCK_NUMBA=1",
                                  name=name)
            return None

    for _name in [m for m in _sys.modules if m.split(".", 1)[0] in _BlockNumba.BLOCKED]:
        del _sys.modules[_name]
    _sys.meta_path.insert(0, _BlockNumba)
# --- end of no-numba mode ---

import numpy as np
import pytest

from fastbp import _backends

# Tolerances after a fit (DESIGN §5): float64 agrees to rounding, float32 to ~1e-4.
TOLERANCES = {np.dtype(np.float64): dict(rtol=1e-9, atol=1e-12),
              np.dtype(np.float32): dict(rtol=1e-4, atol=1e-5)}


def assert_close(actual, expected, dtype, scale=1.0):
    """Compare arrays (or lists of arrays) with the tolerance of ``dtype``."""
    tol = TOLERANCES[np.dtype(dtype)]
    if isinstance(actual, (list, tuple)):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            assert_close(a, e, dtype, scale)
        return
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64),
                               np.asarray(expected, dtype=np.float64),
                               rtol=tol["rtol"] * scale, atol=tol["atol"] * scale)


def require_backend(name):
    """Skip (with the reason) when backend ``name`` cannot be imported here."""
    error = _backends.import_error(name)
    if error is not None:
        pytest.skip(f"backend {name!r} unavailable: {error}")


def pytest_report_header(config):
    """Say up front which backends run here and why the others are skipped."""
    lines = []
    for name in _backends.backend_names():
        error = _backends.import_error(name)
        lines.append(f"fastbp backend {name}: " + ("available" if error is None
                                                   else f"SKIPPED ({error})"))
    return lines


COMPILED = [name for name in _backends.backend_names() if name != "numpy"]


def _flag(name):
    return _os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _require_shared(name):
    """``require_backend`` for the shared suites: "cuda" on the simulator only when asked.

    On Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1, one Python thread per
    CUDA thread) the shared suites would take many minutes; tests/test_cuda.py
    covers the backend there, and CI runs a subset of the shared suites with
    FASTBP_TEST_CUDA=1.  On a real GPU they always run.
    """
    simulator = _os.environ.get("NUMBA_ENABLE_CUDASIM", "").strip() not in ("", "0")
    if name == "cuda" and simulator and not _flag("FASTBP_TEST_CUDA"):
        pytest.skip("backend 'cuda' on the CUDA simulator runs the shared suites only with "
                    "FASTBP_TEST_CUDA=1 (tests/test_cuda.py covers it)")
    require_backend(name)


@pytest.fixture(params=_backends.backend_names())
def backend(request):
    """Every backend fastbp knows; unavailable ones are skipped with the reason."""
    _require_shared(request.param)
    return request.param


@pytest.fixture(params=COMPILED)
def compiled_backend(request):
    """Every backend except the NumPy reference."""
    _require_shared(request.param)
    return request.param


@pytest.fixture(params=["float64", "float32"])
def dtype(request):
    return request.param


# --- the CI steps' selections (.ci/run selects with ``-m``) ---
# A test parametrised with backend "cuda" / "numba" / "cython" (fixtures ``backend``,
# ``compiled_backend``) and every test of that backend's own file gets the marker of the
# CI step that re-runs it in that backend's special environment:
STEP_MARKERS = {
    "cuda": "cuda_sim",        # NUMBA_ENABLE_CUDASIM=1: the CUDA kernels on the CPU simulator
    "numba": "no_jit",         # NUMBA_DISABLE_JIT=1: the Numba kernels as plain Python
    "cython": "debug_build",   # the extension built with bounds and index checks
}
STEP_FILES = {"test_cuda.py": "cuda", "test_numba.py": "numba", "test_cython.py": "cython"}
# ... except tests marked ``slow`` (the simulator and plain Python would take minutes),
# ``simulator_slow`` (not in the cuda_sim step) or ``needs_jit`` (not in the no_jit step).
# ``simulator_slow(dtype="float32")`` and the like apply only to the matching parameters.
STEP_EXCLUDED_BY = {"cuda_sim": ("slow", "simulator_slow"), "no_jit": ("slow", "needs_jit"),
                    "debug_build": ()}


def _item_backend(item):
    params = getattr(getattr(item, "callspec", None), "params", {})
    for name in ("backend", "compiled_backend"):
        if isinstance(params.get(name), str):
            return params[name]
    return STEP_FILES.get(item.path.name)


def _excluded(item, marker_name):
    params = getattr(getattr(item, "callspec", None), "params", {})
    for mark in item.iter_markers(marker_name):
        if all(params.get(key) == value for key, value in mark.kwargs.items()):
            return True
    return False


def pytest_collection_modifyitems(config, items):
    for item in items:
        step = STEP_MARKERS.get(_item_backend(item))
        if step and not any(_excluded(item, name) for name in STEP_EXCLUDED_BY[step]):
            item.add_marker(step)


def tile_width(dtype):
    """Width (in values of ``dtype``) of the register tile the Numba kernels compile for here.

    Test layers are sized from it (``tile + 3``, ``2 * tile + 1``) so that on every CPU
    they have full tiles and ragged edges.  Read from the Numba backend's kernel module
    when it offers it, else derived the same way from the CPU features Numba targets
    (two SIMD vectors; 16 bytes where Numba is missing).
    """
    itemsize = np.dtype(dtype).itemsize
    try:
        from fastbp._backends import numba_
        accessor = getattr(numba_, "tile_width", None)
        if accessor is not None:
            return int(accessor(dtype))
        from fastbp._backends._numba_kernels import target_cpu_features
        features = target_cpu_features()
        vector = 64 if "+avx512f" in features else 32 if "+avx" in features else 16
    except Exception:
        vector = 16
    return 2 * vector // itemsize

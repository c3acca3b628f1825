"""Backend registry: which kernel modules exist, which import, and what ``"auto"`` picks.

Every backend is a module in this package offering the functions of the
backend contract (``_contract.Backend``: ``predict``, ``loss_sum``,
``loss_and_gradients``, ``open_trainer``) with the same arguments; a module
that lacks one is reported as broken, not handed out.  Registering a module
here is all a new backend needs: the conformance suite
(``tests/test_backend_contract.py``) runs every registered backend.

Backends are imported lazily, the first time they are asked for, so that
``import fastbp`` never imports Numba or compiles anything.
"""

import importlib
import logging

from .._validation import warn
from . import _contract

logger = logging.getLogger("fastbp")

# name -> (module, how to get it when it is missing)
_BACKENDS = {
    "numpy": ("fastbp._backends.numpy_", "NumPy is a hard dependency; reinstall fastbp."),
    "numba": ("fastbp._backends.numba_", "install Numba: `pip install numba`."),
    "cython": ("fastbp._backends.cython_",
               "build the C extension: `pip install --force-reinstall --no-build-isolation .` "
               "from a source checkout with Cython and a C compiler available "
               "(set FASTBP_REQUIRE_EXTENSION=1 to make a failed build an error)."),
    "cuda": ("fastbp._backends.cuda_",
             "the CUDA backend needs Numba (`pip install numba`) and an NVIDIA GPU with its "
             "driver, so that numba.cuda.is_available() is True; to run its kernels on the "
             "CPU instead (slowly, e.g. for tests), set NUMBA_ENABLE_CUDASIM=1 before "
             "starting Python."),
}

#: The order in which ``"auto"`` tries backends.
AUTO_CHAIN = ("numba", "cython", "numpy")

_modules = {}
_errors = {}


def backend_names():
    """All backend names fastbp knows, installed or not."""
    return tuple(_BACKENDS)


def _try_import(name):
    if name in _modules:
        return _modules[name]
    if name in _errors:
        return None
    try:
        module = importlib.import_module(_BACKENDS[name][0])
    except ModuleNotFoundError as exc:
        # the backend's own module is missing: a reserved name, not a broken install
        _errors[name] = ("not part of this release" if exc.name == _BACKENDS[name][0]
                         else f"{type(exc).__name__}: {exc}")
        return None
    except Exception as exc:  # a broken install must not break the fallback chain
        _errors[name] = f"{type(exc).__name__}: {exc}"
        return None
    absent = _contract.missing(module)
    if absent:
        _errors[name] = (f"{_BACKENDS[name][0]} does not implement the backend contract "
                         f"(missing: {', '.join(absent)})")
        return None
    _modules[name] = module
    return module


def import_error(name):
    """Why backend ``name`` could not be imported (None if it imported)."""
    _try_import(name)
    return _errors.get(name)


def available_backends():
    """Names of the backends that import on this machine, fastest first.

    Returns
    -------
    list of str
        A subset of ``("numba", "cython", "numpy", "cuda")``.
    """
    return [name for name in (*AUTO_CHAIN, "cuda") if _try_import(name) is not None]


def resolve(name):
    """Return ``(resolved_name, module)`` for a backend name or ``"auto"``.

    Only ``"auto"`` falls back; a named backend that is missing raises
    ``ImportError`` saying how to install it.
    """
    if name == "auto":
        skipped = []
        for candidate in AUTO_CHAIN:
            module = _try_import(candidate)
            if module is not None:
                if skipped:
                    reasons = "; ".join(f"{n}: {_errors[n]}" for n in skipped)
                    message = (f"fastbp backend 'auto' chose {candidate!r} because faster "
                               f"backends are unavailable ({reasons}).")
                    # once per process: the registry caches the outcome
                    if not getattr(resolve, "_warned", False):
                        warn(message)
                        resolve._warned = True
                logger.info("backend 'auto' resolved to %r", candidate)
                return candidate, module
            skipped.append(candidate)
        raise ImportError("no fastbp backend could be imported; NumPy is required")
    if name not in _BACKENDS:
        raise ValueError(f"backend: expected one of {('auto', *_BACKENDS)}; found {name!r}. "
                         "Pass one of those names (or fix the FASTBP_BACKEND setting).")
    module = _try_import(name)
    if module is None:
        raise ImportError(
            f"fastbp backend {name!r} is not available on this machine "
            f"({_errors[name]}). To fix: {_BACKENDS[name][1]} "
            f"Installed backends: {available_backends()}; or use backend='auto'.")
    return name, module

"""Every fastbp setting, read in one place: defaults, ``FASTBP_*`` variables, and overrides.

=============  =====================  ==========================================================
setting        environment variable   meaning
=============  =====================  ==========================================================
backend        ``FASTBP_BACKEND``     force every ``Network`` onto this backend (``"auto"``:
                                      no force)
chunk_rows     ``FASTBP_CHUNK_ROWS``  rows handed to one compiled call (default 32768): chunks
                                      keep the progress bar live and Ctrl-C responsive at no
                                      measurable cost
cache          ``FASTBP_NO_CACHE``    whether compiled kernels are cached on disk (``1`` in the
                                      variable turns the cache off)
cache_dir      ``FASTBP_CACHE_DIR``   where compiled kernels are cached (default: a per-user
                                      directory); it must be private (see :func:`cache_dir`)
cython_isa     ``FASTBP_CYTHON_ISA``  which compiled copy of the C extension runs: ``auto``,
                                      ``baseline``, ``avx2``, ``avx512`` (read when the Cython
                                      backend is first imported)
=============  =====================  ==========================================================

A value comes from, in order: :func:`config_context` (this thread, inside
the ``with``), :func:`set_config` (the process), the environment variable,
the default -- the ``sklearn.set_config`` / ``config_context`` pattern.  The
environment is read when a setting is asked for, so a variable set before a
call counts.  Nothing else in fastbp reads ``os.environ`` for its settings.
"""

import contextlib
import os
import sys
import threading
from pathlib import Path

from ._version import __version__

DEFAULT_CHUNK_ROWS = 1 << 15
#: More rows than any memory holds means "one chunk"; the cap keeps every size
#: derived from it (chunk = rows // batch * batch, offsets) within int64.
MAX_CHUNK_ROWS = 1 << 40
CYTHON_ISAS = ("auto", "baseline", "avx2", "avx512")

_ENV = {"backend": "FASTBP_BACKEND", "chunk_rows": "FASTBP_CHUNK_ROWS",
        "cache": "FASTBP_NO_CACHE", "cache_dir": "FASTBP_CACHE_DIR",
        "cython_isa": "FASTBP_CYTHON_ISA"}

_process = {}                  # set_config's values
_thread = threading.local()    # config_context's stack of values, per thread


def _positive_rows(value, source):
    if isinstance(value, str):
        try:
            value = int(value.strip().replace("_", ""))
        except ValueError:
            value = 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"chunk_rows ({source}): expected a positive integer; found "
                         f"{value!r}. Unset it to use the default {DEFAULT_CHUNK_ROWS}.")
    return min(int(value), MAX_CHUNK_ROWS)


def _parse(name, value, source):
    """A setting's value, checked; ``source`` names where it came from, for the message."""
    if name == "backend":
        if not isinstance(value, str):
            raise TypeError(f"backend ({source}): expected a backend name; found {value!r}. "
                            "Pass e.g. backend='numpy'.")
        return value.strip().lower() or "auto"
    if name == "chunk_rows":
        return _positive_rows(value, source)
    if name == "cache":
        if source == _ENV["cache"]:  # FASTBP_NO_CACHE=1 means no cache
            return value.strip().lower() not in ("1", "true", "yes", "on")
        if not isinstance(value, bool):
            raise TypeError(f"cache ({source}): expected True or False; found {value!r}.")
        return value
    if name == "cache_dir":
        if value is None or value == "":
            return None
        try:
            return Path(os.fspath(value))
        except TypeError:
            raise TypeError(f"cache_dir ({source}): expected a directory path or None; found "
                            f"{value!r}.") from None
    if name == "cython_isa":
        choice = str(value).strip().lower() or "auto"
        if choice not in CYTHON_ISAS:
            raise ValueError(f"cython_isa ({source}): expected one of {CYTHON_ISAS}; found "
                             f"{value!r}. Unset it to pick automatically.")
        return choice
    raise TypeError(f"unknown fastbp setting {name!r}; expected one of {sorted(_ENV)}.")


def _default(name):
    return {"backend": "auto", "chunk_rows": DEFAULT_CHUNK_ROWS, "cache": True,
            "cache_dir": None, "cython_isa": "auto"}[name]


def get(name):
    """The current value of setting ``name`` (see the module docstring for the order)."""
    for values in reversed(getattr(_thread, "stack", ())):
        if name in values:
            return values[name]
    if name in _process:
        return _process[name]
    raw = os.environ.get(_ENV[name], "")
    if raw.strip():
        return _parse(name, raw, _ENV[name])
    return _default(name)


def get_config():
    """The current value of every fastbp setting, as a dict.

    Returns
    -------
    dict
        ``backend``, ``chunk_rows``, ``cache``, ``cache_dir``, ``cython_isa``.
    """
    return {name: get(name) for name in _ENV}


def _checked(settings, source):
    unknown = sorted(set(settings) - set(_ENV))
    if unknown:
        raise TypeError(f"{source}: unknown setting(s) {unknown}; expected names from "
                        f"{sorted(_ENV)}.")
    return {name: _parse(name, value, source) for name, value in settings.items()}


def set_config(**settings):
    """Set fastbp settings for the whole process (over the ``FASTBP_*`` variables).

    Parameters
    ----------
    **settings
        ``backend``, ``chunk_rows``, ``cache``, ``cache_dir``, ``cython_isa``;
        ``None`` for a setting removes its override.
    """
    resets = [name for name, value in settings.items() if value is None and name in _ENV]
    values = _checked({k: v for k, v in settings.items() if k not in resets}, "set_config")
    for name in resets:
        _process.pop(name, None)
    _process.update(values)


@contextlib.contextmanager
def config_context(**settings):
    """Settings for the code inside the ``with`` block, in this thread only.

    >>> import fastbp
    >>> with fastbp.config_context(chunk_rows=4096):
    ...     fastbp.get_config()["chunk_rows"]
    4096
    """
    values = _checked(settings, "config_context")
    stack = getattr(_thread, "stack", None)
    if stack is None:
        stack = _thread.stack = []
    stack.append(values)
    try:
        yield
    finally:
        stack.pop()


# ---------------------------------------------------------------------------- accessors
def backend():
    """The backend the settings force, or ``"auto"`` when none is forced."""
    return get("backend")


def chunk_rows():
    """Rows per compiled call."""
    return get("chunk_rows")


def cache_enabled():
    """Whether compiled kernels are cached on disk."""
    return get("cache")


def cython_isa():
    """Which compiled copy of the C extension the Cython backend loads."""
    return get("cython_isa")


def cache_dir():
    """Per-user cache directory for compiled kernels, keyed by the fastbp version.

    ``<cache_dir setting>/<version>``, else ``$XDG_CACHE_HOME/fastbp/<version>``
    (``~/.cache/fastbp/<version>``; ``%LOCALAPPDATA%\\fastbp\\<version>`` on
    Windows).  Never inside site-packages, which may be read-only.

    It holds the generated kernel sources (``*.py``), one lock file per
    module and, in ``__pycache__``, Numba's index (``*.nbi``, pickles) and
    machine code (``*.nbc``) files.  Numba unpickles and runs those, so the
    directory must be writable by nobody but the user: the Numba backend
    creates every level it makes with mode 0700 and refuses (with a warning,
    compiling in memory instead) a cache root, versioned directory or
    ``__pycache__`` that is a symlink, owned by someone else, or group- or
    world-writable.  This function only names the directory.
    """
    root = get("cache_dir")
    if root is not None:
        base = Path(root)
    elif sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")) / "fastbp"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fastbp"
    return base / __version__

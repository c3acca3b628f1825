"""Defaults and ``FASTBP_*`` environment settings, read in one place.

``FASTBP_BACKEND``     forces every ``Network`` onto this backend (default ``auto``: no force).
``FASTBP_CHUNK_ROWS``  rows handed to one compiled call (default 32768). Chunks keep the
                       progress bar live and Ctrl-C responsive at no measurable cost.
``FASTBP_NO_CACHE``    ``1`` turns the on-disk cache of compiled kernels off.
``FASTBP_CACHE_DIR``   where compiled kernels are cached (default: a per-user directory).
                       It must be private: it holds code that runs (see ``cache_dir``).
"""

import os
import sys
from pathlib import Path

from ._version import __version__

DEFAULT_CHUNK_ROWS = 1 << 15


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def backend():
    """The backend ``FASTBP_BACKEND`` forces, or ``"auto"`` when it is not set."""
    return os.environ.get("FASTBP_BACKEND", "").strip().lower() or "auto"


def chunk_rows():
    """Rows per compiled call (``FASTBP_CHUNK_ROWS``)."""
    raw = os.environ.get("FASTBP_CHUNK_ROWS", "").strip()
    if not raw:
        return DEFAULT_CHUNK_ROWS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"FASTBP_CHUNK_ROWS must be a positive integer; found {raw!r}. "
                         f"Unset it to use the default {DEFAULT_CHUNK_ROWS}.")
    # More rows than any memory holds means "one chunk"; the cap keeps every
    # size derived from it (chunk = rows // batch * batch, offsets) within int64.
    return min(value, 1 << 40)


def cache_enabled():
    """False when ``FASTBP_NO_CACHE`` is set."""
    return not _flag("FASTBP_NO_CACHE")


def cache_dir():
    """Per-user cache directory for compiled kernels, keyed by the fastbp version.

    ``$FASTBP_CACHE_DIR/<version>``, else ``$XDG_CACHE_HOME/fastbp/<version>``
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
    root = os.environ.get("FASTBP_CACHE_DIR")
    if root:
        base = Path(root)
    elif sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")) / "fastbp"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fastbp"
    return base / __version__

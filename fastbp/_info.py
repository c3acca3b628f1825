"""``fastbp.show_config()``: what is installed and what ``"auto"`` picks."""

import platform
import sys

from . import _backends, _config
from ._version import __version__


def show_config(file=None):
    """Print fastbp's version, its backends (installed or why not), and the active choice.

    Parameters
    ----------
    file : file-like, optional
        Where to print; defaults to ``sys.stdout``.
    """
    import numpy as np

    file = file or sys.stdout
    lines = [f"fastbp {__version__}",
             f"python {platform.python_version()} ({sys.executable})",
             f"numpy {np.__version__}", "backends:"]
    for name in _backends.backend_names():
        error = _backends.import_error(name)
        lines.append(f"  {name:<7} {'installed' if error is None else 'unavailable: ' + error}")
    requested = _config.backend()
    try:
        chosen, _ = _backends.resolve(requested)
    except (ImportError, ValueError) as exc:
        chosen = f"none ({exc})"
    source = "FASTBP_BACKEND" if requested != "auto" else f"auto chain {_backends.AUTO_CHAIN}"
    lines.append(f"active backend: {chosen} (from {source})")
    lines.append(f"chunk rows: {_config.chunk_rows()}")
    cache = _config.cache_dir() if _config.cache_enabled() else "off (FASTBP_NO_CACHE)"
    lines.append(f"kernel cache: {cache}")
    print("\n".join(lines), file=file)

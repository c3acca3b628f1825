"""Numba backend: the NumPy reference's contract, compiled, one call per chunk of rows.

Mirrors ``numpy_.py`` function for function (same names, arguments and
caller-allocated buffers; see the backend contract in its docstring), and
``csrc/_ckernels.pyx``, its Cython twin.

Design
------
* **One compiled call per chunk.**  ``train_chunk`` runs the forward pass,
  loss, backward pass and optimizer update of every sample or minibatch of
  the chunk inside one compiled function, with no Python and no allocation
  between samples.  Every kernel is compiled with ``nogil=True``: two
  networks trained from two threads run at once.
* **Kernels** (``_numba_kernels.py``): width-generic ``predict``,
  ``loss_sum``, ``loss_and_gradients`` and three training loops (per-sample
  plain SGD with the backward pass fused into the update; per-sample with
  a stateful optimizer; minibatches as small register-blocked matrix
  products).  Activation, loss and optimizer are run-time integer codes, so
  one compilation per dtype serves every network: measured, fixing the
  widths at compile time gained nothing on 20-64-64-1 or 100-256-256-1.
* **Specialised where it pays** (``_numba_codegen.py``): for tiny nets
  (at most 128 parameters, widths at most 16) trained per sample with
  plain SGD, a kernel generated for the architecture keeps every weight in
  a register for the whole chunk: 15x the generic kernel on 2-2-1.
* **Working layout.**  The kernels compute on zeroed, 64-byte-aligned
  copies of the parameters and optimizer state in which every kernel row,
  bias and activation row starts on a cache line (see "working layout" in
  ``_numba_kernels``).  A trainer (``open_trainer``, one per ``fit``) lays
  them out and fills them once; a chunk is one compiled call on them, and
  ``store`` copies the parameters back (O(n_params) per chunk of thousands
  of rows).  ``predict`` and the other stateless calls build them per call.
* **Cached per user.**  Kernel sources are written into
  ``fastbp._config.cache_dir()`` (per user, keyed by version, never
  site-packages) under content-hash names, and each module is compiled
  from the text fastbp generated, after checking that the file holds
  exactly that text; it is never imported through an import loader, so
  no ``__pycache__`` bytecode is read (or written).  The code objects
  carry the file's path, so Numba's ``cache=True`` (its in-tree locator)
  stores the machine code beside it, in ``__pycache__``.  Files are
  created atomically (write, then hard-link or rename), every function has
  one signature, and compiling a module takes a per-module file lock, so
  several processes starting on a cold cache all succeed (one compiles,
  the others load).  ``FASTBP_NO_CACHE=1`` builds the modules in memory and
  compiles without caching (the float64 generic kernels are then
  ``_numba_kernels`` itself, an ordinary import).  Importing this module compiles nothing and
  writes nothing; each kernel is compiled (or loaded) on first use.
* **The cache must be private.**  Numba's index (``.nbi``) and data
  (``.nbc``) files are pickles that Numba unpickles, and ``.nbc`` holds
  machine code that runs: fastbp cannot make them safe to load, so the
  protection is that nobody but the user can write to the directories
  that hold them.  fastbp creates every cache directory with mode 0700
  (whatever the umask) and, before using one, checks with ``os.lstat``
  that the cache root, the versioned directory, ``__pycache__`` and the
  directory Numba chose are real directories (no symlinks), owned by the
  user and not group- or world-writable (POSIX only).  Otherwise it warns
  once, naming the directory, what it found and the fix (remove it, since
  files planted in it would survive a chmod, or choose another
  ``FASTBP_CACHE_DIR``), and compiles in memory.  Lock files and
  sources are opened with ``O_NOFOLLOW`` and created 0600, so a planted
  symlink is refused (its target is never created or truncated).  A
  truncated or garbage cache file is rewritten (sources) or dropped and
  compiled again (Numba's files), never a crash.
* ``NUMBA_DISABLE_JIT=1`` runs the same kernels as plain Python (slowly),
  which lets the test suite check their logic without compiling.
"""

import contextlib
import functools
import logging
import os
import stat
import sys
import tempfile
import threading
import time
import types

try:
    import fcntl
except ImportError:  # Windows: processes compile side by side (still safe, see _process_lock)
    fcntl = None

import numba  # noqa: F401  (a missing Numba must fail this import: "auto" then falls back)
import numpy as np

from .. import _config
from .._validation import warn
from . import _codes, _contract
from . import _numba_codegen as _gen
from . import _numba_kernels as _kernels
from ._contract import (check_chunk, check_gradients_call, check_loss_call, check_predict_call,
                        check_trainer_call)
from ._layout import layer_views
from ._numba_kernels import LAY_ACT, LAY_ACT_LD, LAY_BIAS, LAY_KERNEL, LAY_KERNEL_LD

NAME = "numba"
# every kernel is compiled with nogil=True: worker threads run in parallel
RELEASES_GIL = True

logger = logging.getLogger("fastbp")

_lock = threading.RLock()
_modules = {}      # (label, dtype name, sizes or None, cache flag) -> module
_entries = {}      # (module name, function name) -> compiled dispatcher
_warned_cache = []

#: Seconds a process waits for another one compiling the same kernels.
LOCK_TIMEOUT = 120.0


# ----------------------------------------------------------------------------- module loading
# The cache directory holds code that runs: the generated sources (compiled
# from fastbp's own text, see _import_source) and Numba's index (.nbi) and
# machine code (.nbc) files, which Numba unpickles and executes.  fastbp
# cannot make a pickle safe; the protection is that nobody but the user can
# write there.  Every directory is therefore created 0700 and checked before
# use (a real directory, owned by the user, writable by nobody else); a
# directory that fails the check is not used (a warning, then in memory).

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # absent on Windows
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO planted in place of a file must not hang
_POSIX = os.name == "posix"


class UnsafeCacheError(OSError):
    """A cache directory that others could write to (or a symlink in its place)."""


_CHOOSE = "set FASTBP_CACHE_DIR to a private directory"


def _refuse(path, found, choose=_CHOOSE):
    return UnsafeCacheError(
        f"{path} {found}; the kernel cache holds code that runs (Numba's index and machine "
        f"code files are pickles), so it must be a real directory owned by you and writable "
        f"by nobody else. Remove it (`rm -r {path}`: files planted while others could write "
        f"there would survive a chmod) and fastbp recreates it privately, or {choose}")


def _check_private_dir(path, choose=_CHOOSE):
    """Raise ``UnsafeCacheError`` unless ``path`` is a private directory (os.lstat: no symlink)."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise _refuse(path, f"is a symlink (to {os.readlink(path)!r}), not a directory", choose)
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(path, f"is not a directory (mode {oct(st.st_mode)})", choose)
    if not _POSIX:
        return  # Windows: no POSIX owner and mode bits to check
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != os.getuid():
        raise _refuse(path, f"is owned by uid {st.st_uid}, not by you (uid {os.getuid()}; "
                            f"mode {oct(mode)})", choose)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        who = "group- and world-writable" if mode & stat.S_IWGRP and mode & stat.S_IWOTH else (
            "group-writable" if mode & stat.S_IWGRP else "world-writable")
        raise _refuse(path, f"is {who} (mode {oct(mode)}, owner uid {st.st_uid})", choose)


def _private_dir(path, top):
    """Create ``path`` (and missing parents) with mode 0700; check it and the levels up to ``top``.

    ``top`` is the root of fastbp's own tree (``FASTBP_CACHE_DIR`` or the
    per-user ``fastbp`` directory): it and every level below it are checked,
    the directories above it (``~/.cache``, ``/tmp``) are not.
    """
    path = os.path.abspath(path)
    top = os.path.abspath(top)
    missing = []
    probe = path
    while not os.path.lexists(probe):
        missing.append(probe)
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    for level in reversed(missing):
        try:
            # mode & ~umask never exceeds 0700; chmod restores what a umask took away
            os.mkdir(level, 0o700)
        except FileExistsError:
            continue  # another process created it: checked below like any other
        os.chmod(level, 0o700)
    checked = [path]
    while checked[-1] != top and os.path.dirname(checked[-1]) != checked[-1] \
            and checked[-1].startswith(top + os.sep):
        checked.append(os.path.dirname(checked[-1]))
    for level in reversed(checked):
        _check_private_dir(level)
    return path


def _open_nofollow(path, flags, mode=0o600):
    """``os.open`` that never follows a symlink at ``path`` (O_NOFOLLOW; new files 0600)."""
    return os.open(path, flags | _O_NOFOLLOW | _O_CLOEXEC | _O_BINARY | _O_NONBLOCK, mode)


def _read_nofollow(path):
    """The bytes of the regular file ``path`` (None when absent); never follows a symlink."""
    try:
        fd = _open_nofollow(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(f"{path} is not a regular file")
        return f.read()


def _write_atomically(path, data):
    """Create ``path`` holding the bytes ``data`` (mode 0600) unless it already does.

    A damaged file (truncated, garbage, a symlink) is replaced; a partial
    file is never exposed (write a temporary file, then hard-link or rename).
    """
    try:
        current = _read_nofollow(path)
    except OSError:  # a symlink (ELOOP) or something else in the way: replace it
        current = b""
    if current == data:
        return
    replace = current is not None
    # mkstemp: O_CREAT | O_EXCL (never follows a symlink), mode 0600
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=os.path.basename(path)[:-3],
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if replace:
            os.replace(tmp, path)  # replaces a symlink itself, never its target
            return
        try:
            # A hard link publishes the complete file atomically and fails if
            # another process got there first (its file has the same content).
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError:  # no hard links on this file system
            os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _cache_root():
    """``(versioned cache directory, root of fastbp's tree there)``.

    The root the user configured (``FASTBP_CACHE_DIR``, or the per-user
    default) is resolved first: a symlink there is the user's own choice of
    place, and the directory it leads to is checked like any other.  Below
    the root, no symlink is followed.
    """
    directory = _config.cache_dir()
    root = os.path.realpath(directory.parent)
    return os.path.join(root, directory.name), root


def _cached_dirs(module):
    """The directories Numba's cache locator chose for ``module``'s cached functions."""
    dirs = set()
    for value in vars(module).values():
        cache = getattr(value, "_cache", None)
        path = getattr(cache, "_cache_path", None)  # numba.core.caching.Cache
        if isinstance(path, str):
            dirs.add(path)
    return sorted(dirs)


def _import_source(name, text, cache):
    """Import ``text`` as module ``name``: backed by a verified file in the cache, or in memory.

    The module is always compiled from ``text`` itself, never through an
    import loader: those would run bytecode from ``__pycache__`` (an
    ``unchecked-hash`` .pyc is used without looking at the source).  With
    ``cache`` the text is first written to ``<cache dir>/<name>.py`` and read
    back (without following symlinks); the code objects then carry that path,
    which Numba's cache locator needs (it keys the cache on that file's
    content and stores its .nbi / .nbc files in ``__pycache__`` beside it).
    """
    module = types.ModuleType(name)
    if cache:
        directory, top = _cache_root()
        _private_dir(directory, top)
        # Numba's InTreeCacheLocator would create it with the umask's mode
        _private_dir(os.path.join(directory, "__pycache__"), top)
        path = os.path.join(os.path.abspath(directory), f"{name}.py")
        data = text.encode("utf-8")
        _write_atomically(path, data)
        if _read_nofollow(path) != data:
            raise OSError(f"{path} does not hold the source fastbp generated")
        filename = path
    else:
        filename = f"<fastbp generated {name}>"
    module.__file__ = filename
    code = compile(text, filename, "exec", dont_inherit=True)
    # Registered before it runs: Numba resolves a cached function's globals
    # through sys.modules, and the per-architecture modules import the kernels.
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)  # noqa: S102 (fastbp's own generated source)
        if cache:
            # Numba picked its cache directory when the decorators ran (the
            # in-tree __pycache__, or a directory in NUMBA_CACHE_DIR): check it
            # and its parent before any of its files are read.
            choose = _CHOOSE
            if os.environ.get("NUMBA_CACHE_DIR"):
                choose = "point NUMBA_CACHE_DIR (which Numba uses when set) at a private directory"
            for numba_dir in _cached_dirs(module):
                _check_private_dir(os.path.dirname(numba_dir), choose)
                _check_private_dir(numba_dir, choose)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


@functools.lru_cache(maxsize=1)
def _kernels_text():
    """The source of ``_numba_kernels``, read through its loader (materialised per dtype)."""
    return _kernels.__spec__.loader.get_source(_kernels.__name__)


def _module(dtype, sizes=None):
    """The kernel module for ``dtype``: the generic kernels and helpers, or ``sizes``' kernel.

    The generic kernels are ``_numba_kernels`` itself for float64 when nothing
    is cached (it is float64 and uncached as imported), and otherwise that
    module's text materialised for ``dtype`` and the cache (see its docstring).
    Under ``NUMBA_DISABLE_JIT=1`` nothing is compiled, so nothing is cached.
    """
    cache = _config.cache_enabled() and not numba.config.DISABLE_JIT
    key = (dtype.name, sizes, cache)
    module = _modules.get(key)
    if module is not None:
        return module
    with _lock:
        module = _modules.get(key)
        if module is not None:
            return module
        if sizes is None:
            if not cache and dtype.name == _kernels.DTYPE and not _kernels.CACHE:
                _modules[key] = _kernels
                return _kernels
            label = "generic"
            generic = None
        else:
            label = "net_" + "x".join(map(str, sizes))[:60]
            generic = _module(dtype)
            cache = cache and generic.CACHE  # the generic module's decorator decides caching

        def build(cache):
            if generic is None:
                text = _gen.kernels_source(_kernels_text(), dtype.name, cache)
            else:
                text = _gen.network_source(sizes, dtype.name, generic.__name__)
            name = f"fastbp_numba_{label}_{dtype.name}_{_gen.digest(text)}"
            return _import_source(name, text, cache)

        if cache:
            try:
                module = build(True)
            except OSError as exc:
                if not _warned_cache:
                    _warned_cache.append(True)
                    if isinstance(exc, UnsafeCacheError):
                        reason = f"not using the kernel cache: {exc}"
                    else:
                        reason = (f"cannot use the kernel cache in {_config.cache_dir()} "
                                  f"({exc}); set FASTBP_CACHE_DIR to a writable private "
                                  "directory")
                    warn(f"fastbp: {reason}. Compiling in memory instead (every process "
                         "compiles again); FASTBP_NO_CACHE=1 does so without this warning.")
                module = build(False)
        else:
            module = build(False)
        _modules[key] = module
        return module


_warned_locks = set()


def _warn_lock(path, found):
    if path not in _warned_locks:
        _warned_locks.add(path)
        warn(f"fastbp: the kernel cache lock {path} {found}; not following it, compiling "
             "without the lock. Remove it (the cache directory should hold only what fastbp "
             "and Numba write there).")


def _open_lock(path):
    """A file descriptor of the lock file ``path``, or None (with a warning) when unusable.

    Opened with O_NOFOLLOW (created 0600): a symlink planted there is
    refused, and its target is never created or truncated.
    """
    try:
        fd = _open_nofollow(path, os.O_RDWR | os.O_CREAT)
    except OSError as exc:
        if os.path.islink(path):
            _warn_lock(path, f"is a symlink (to {os.readlink(path)!r})")
        else:
            logger.warning("fastbp: compiling without the cache lock %s (%s)", path, exc)
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        _warn_lock(path, "is not a regular file")
        return None
    return fd


@contextlib.contextmanager
def _process_lock(module):
    """Serialise compiling ``module`` across processes sharing the cache directory.

    The first process compiles and stores; the others wait, then load the
    stored code instead of compiling it again.  Correctness does not depend
    on this lock (cache files are written atomically and hold one signature
    per function); after ``LOCK_TIMEOUT`` seconds a waiter compiles anyway.
    """
    path = getattr(module, "__file__", "") or ""
    if fcntl is None or not module.CACHE or not os.path.isfile(path):
        yield
        return
    fd = _open_lock(path[:-3] + ".lock")
    if fd is None:
        yield
        return
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT
        locked = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
                break
            except OSError:
                if time.monotonic() > deadline:
                    logger.warning("fastbp: compiling %s without the cache lock "
                                   "(still held after %s s)", module.__name__, LOCK_TIMEOUT)
                    break
                time.sleep(0.02)
        try:
            yield
        finally:
            if locked:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _compile(fn, signature):
    """``fn.compile(signature)``; an unreadable cache entry is dropped and compiled again.

    Numba raises when its index (.nbi) or data (.nbc) file is truncated or
    garbage (it unpickles them).  Such an entry is reset with the cache's
    own ``flush`` (an empty index, written atomically; the data files are
    then overwritten) and the function compiled again.  Errors of the
    compiler itself are not retried.
    """
    try:
        fn.compile(signature)
    except numba.core.errors.NumbaError:
        raise
    except Exception as exc:
        cache = getattr(fn, "_cache", None)
        if cache is None or not hasattr(cache, "flush"):
            raise
        logger.warning("fastbp: unreadable kernel cache entry for %s in %s (%s: %s); "
                       "compiling it again", fn.py_func.__qualname__,
                       getattr(cache, "cache_path", "?"), type(exc).__name__, exc)
        cache.flush()
        fn.compile(signature)


def _entry(module, name):
    """Entry point ``name`` of ``module``, compiled for its one signature on first use."""
    fn = _entries.get((module.__name__, name))
    if fn is not None:
        return fn
    with _lock:
        fn = _entries.get((module.__name__, name))
        if fn is not None:  # another thread compiled it while this one waited
            return fn
        fn = getattr(module, name)
        if hasattr(fn, "compile"):  # absent under NUMBA_DISABLE_JIT=1
            # One signature per function and module: loads from the on-disk
            # cache when it is there, else compiles (and stores it).
            with _process_lock(module):
                _compile(fn, module.SIGNATURES[name])
            fn.disable_compile()
        _entries[(module.__name__, name)] = fn
        return fn


def kernel(name, dtype, sizes=None):
    """The compiled kernel ``name`` for ``dtype`` (and ``sizes`` for training kernels).

    Exposed for tests and benchmarks (e.g. to compile ahead of timing).
    """
    sizes = None if sizes is None else tuple(int(s) for s in sizes)
    return _entry(_module(np.dtype(dtype), sizes), name)


# ----------------------------------------------------------------------------- working layout
# See "working layout" in _numba_kernels.py: the kernels compute on zeroed,
# 64-byte-aligned copies in which every kernel row, bias and activation row
# starts on a cache-line boundary.  Building them here, in NumPy, keeps that
# bookkeeping out of the compiled code (every compiled helper adds to the
# first-use compile time) and costs O(n_params) per call, next to a chunk of
# thousands of rows.

ALIGN = 64
#: Target bytes of one block of activations in predict / evaluate / gradients.
BLOCK_BYTES = 1 << 15


def _round_up(n, unit):
    return -(-n // unit) * unit


@functools.lru_cache(maxsize=256)
def _layout(sizes, itemsize, rows):
    """``(lay, work_size, half)`` for ``sizes`` with ``rows`` rows of workspace per layer.

    ``lay`` is the table of offsets and strides the kernels index with its
    named rows (``LAY_KERNEL`` ...; see "working layout" in _numba_kernels).
    """
    per_line = ALIGN // itemsize  # elements per cache line
    n_layers = len(sizes) - 1
    lay = np.zeros((5, n_layers + 1), dtype=np.int64)
    offset = 0
    for li in range(n_layers):
        n_in, n_out = sizes[li], sizes[li + 1]
        kernel_ld = n_out if n_out < 4 else _round_up(n_out, per_line)
        lay[LAY_KERNEL, li] = offset
        offset += _round_up(n_in * kernel_ld, per_line)
        lay[LAY_BIAS, li] = offset
        offset += _round_up(n_out, per_line)
        lay[LAY_KERNEL_LD, li] = kernel_ld
    half = 0
    for li in range(n_layers + 1):
        lay[LAY_ACT_LD, li] = _round_up(sizes[li], per_line)
        lay[LAY_ACT, li] = half
        half += rows * int(lay[LAY_ACT_LD, li])
    lay.setflags(write=False)
    return lay, offset, half


#: The minibatch kernels take rows in groups of this many (see _numba_kernels).
ROW_BLOCK = 4


def _block_rows(sizes, itemsize, n):
    per_row = sum(_round_up(w, ALIGN // itemsize) for w in sizes) * itemsize
    return _round_up(max(1, min(256, BLOCK_BYTES // per_row, n)), ROW_BLOCK)


#: Bytes of activations and deltas per block of a minibatch (about half of L2).
BATCH_BLOCK_BYTES = 1 << 18


def _batch_rows(sizes, itemsize, batch_size, n):
    """Rows per block of a minibatch: the whole batch when it fits BATCH_BLOCK_BYTES.

    Bounds the workspace (a batch of a million rows is processed 256 at a
    time, its gradients added up) and keeps a block in cache.
    """
    per_row = 2 * sum(_round_up(w, ALIGN // itemsize) for w in sizes) * itemsize
    cap = max(ROW_BLOCK, min(256, BATCH_BLOCK_BYTES // per_row))
    return _round_up(min(batch_size, n, cap), ROW_BLOCK)


def _aligned_zeros(n, dtype):
    """Zero-filled 1-D array of ``n`` elements starting on an ALIGN-byte boundary."""
    extra = ALIGN // dtype.itemsize
    buf = np.zeros(n + extra, dtype=dtype)
    shift = (-buf.ctypes.data % ALIGN) // dtype.itemsize
    return buf[shift:shift + n]


@functools.lru_cache(maxsize=256)
def _positions(sizes, itemsize):
    """Index of every flat (Keras-layout) parameter in the working layout.

    One gather or scatter with it moves a whole parameter vector between the
    two layouts: a Python loop over the layers cost more than the kernel on a
    small batch (stateless calls such as ``loss_and_gradients`` pay it twice).
    The parameter offsets do not depend on the workspace rows.
    """
    lay = _layout(sizes, itemsize, 1)[0]
    parts = []
    for li in range(len(sizes) - 1):
        n_in, n_out = sizes[li], sizes[li + 1]
        k0, b0, kernel_ld = (int(lay[row, li]) for row in (LAY_KERNEL, LAY_BIAS, LAY_KERNEL_LD))
        parts.append((k0 + np.arange(n_in)[:, None] * kernel_ld + np.arange(n_out)).ravel())
        parts.append(b0 + np.arange(n_out))
    index = np.concatenate(parts).astype(np.intp)
    index.setflags(write=False)
    return index


def _to_work(flat, sizes, lay, work):
    """Copy a flat parameter-shaped buffer (Keras layout) into the working layout."""
    work[_positions(sizes, work.dtype.itemsize)] = flat


def _from_work(work, sizes, lay, flat):
    """Copy the working layout back into a flat parameter-shaped buffer."""
    # (fancy indexing: np.take with ``out=`` took ten times as long here)
    flat[...] = work[_positions(sizes, work.dtype.itemsize)]


_scratch = threading.local()


def _scratch_params(dtype, wsize):
    """This thread's ``(wp, wg)`` working buffers of ``wsize`` elements, reused across calls.

    Only parameter positions are ever written into ``wp`` (its padding stays
    zero); ``wg`` is zeroed by the caller.  Per thread, so that calls from
    several threads (``predict(workers=N)``) never share one.
    """
    key = (dtype.char, wsize)
    cached = getattr(_scratch, "buffers", None)
    if cached is None or cached[0] != key:
        cached = (key, _aligned_zeros(wsize, dtype), _aligned_zeros(wsize, dtype))
        _scratch.buffers = cached
    return cached[1], cached[2]


def _sizes(sizes):
    return tuple(int(s) for s in sizes)


def _working_params(params, shape, lay, wsize):
    wp = _scratch_params(params.dtype, wsize)[0]
    _to_work(params, shape, lay, wp)
    return wp


# ----------------------------------------------------------------------------- the contract
def predict(params, sizes, acts, X, out):
    """Write the network's outputs for the rows of ``X`` into ``out`` (see ``_contract``)."""
    dtype = check_predict_call(params, sizes, acts, X, out)
    shape = _sizes(sizes)
    rows = _block_rows(shape, dtype.itemsize, X.shape[0])
    lay, wsize, half = _layout(shape, dtype.itemsize, rows)
    wp = _working_params(params, shape, lay, wsize)
    kernel("predict", dtype)(wp, lay, sizes, acts, X, out, _aligned_zeros(2 * half, dtype), rows)


def loss_sum(params, sizes, acts, loss, X, Y):
    """Sum over rows of the per-row loss, accumulated in float64 (see ``_contract``)."""
    dtype, loss = check_loss_call(params, sizes, acts, loss, X, Y)
    shape = _sizes(sizes)
    rows = _block_rows(shape, dtype.itemsize, X.shape[0])
    lay, wsize, half = _layout(shape, dtype.itemsize, rows)
    wp = _working_params(params, shape, lay, wsize)
    return float(kernel("loss_sum", dtype)(wp, lay, sizes, acts, loss, X, Y,
                                           _aligned_zeros(2 * half, dtype), rows))


def loss_and_gradients(params, sizes, acts, loss, X, Y, grad):
    """The loss sum over rows; d(loss sum)/d(param) written into ``grad`` (see ``_contract``)."""
    dtype, loss = check_gradients_call(params, sizes, acts, loss, X, Y, grad)
    shape = _sizes(sizes)
    rows = _batch_rows(shape, dtype.itemsize, max(1, X.shape[0]), max(1, X.shape[0]))
    lay, wsize, half = _layout(shape, dtype.itemsize, rows)
    wp = _working_params(params, shape, lay, wsize)
    wg = _scratch_params(dtype, wsize)[1]
    wg.fill(0)
    total = kernel("loss_and_gradients", dtype)(wp, wg, lay, sizes, acts, loss, X, Y,
                                                _aligned_zeros(2 * half, dtype), rows)
    _from_work(wg, shape, lay, grad)
    return float(total)


class _ScalarTrainer(_contract.CopyTrainer):
    """Tiny nets, per-sample plain SGD: the architecture's generated kernel on a flat copy."""

    def __init__(self, params, state, dtype, shape, acts, loss, hyper):
        fn = _entry(_module(dtype, shape), "train_scalar")

        def run(work_params, work_state, X, Y, order, step):
            check_chunk(dtype, shape, X, Y, order)
            if len(order) == 0:
                return 0.0, 0
            total, done = fn(work_params, acts, loss, X, Y, order, hyper)
            return float(total), int(done)

        super().__init__(params, state, _codes.SGD, run)


class _WorkingCopy:
    """The aligned working parameters ``_wp`` and state rows ``_wst`` of one fit.

    The Trainer methods that move them between the model's flat buffers and
    the working layout; subclasses lay them out and train on them.
    """

    def _open(self, params, state, dtype, shape, optimizer, rows):
        self._params, self._state = params, state
        self._dtype, self._shape = dtype, shape
        self._slots = _contract.state_slots(optimizer)
        self._rows = rows
        self._lay, wsize, half = _layout(shape, dtype.itemsize, rows)
        self._wp = _aligned_zeros(wsize, dtype)
        self._wst = _aligned_zeros(2 * wsize, dtype).reshape(2, wsize)
        return wsize, half

    def finite(self):
        # the padding of the working layout is zero, so the whole buffer can be tested
        return bool(np.isfinite(self._wp).all())

    def store(self):
        _from_work(self._wp, self._shape, self._lay, self._params)
        for k in range(self._slots):
            _from_work(self._wst[k], self._shape, self._lay, self._state[k])

    def reload(self):
        _to_work(self._params, self._shape, self._lay, self._wp)
        for k in range(self._slots):
            _to_work(self._state[k], self._shape, self._lay, self._wst[k])

    def close(self):
        self._wp = self._wst = None


class _Trainer(_WorkingCopy):
    """The generic kernels on aligned working buffers laid out once per fit.

    ``wp`` (parameters), ``wst`` (the optimizer state rows the rule uses),
    ``wg`` (gradient scratch) and ``work`` (activations and deltas) are
    allocated and filled at open; a chunk is one compiled call on them.
    """

    def __init__(self, params, state, dtype, shape, sizes, acts, loss, batch_size, optimizer,
                 hyper):
        self._sizes, self._acts, self._loss = sizes, acts, loss
        self._batch_size, self._optimizer, self._hyper = batch_size, optimizer, hyper
        # Rows of workspace: one for per-sample training; for minibatches the
        # block the kernels process a batch in (the whole batch when small).
        rows = 1 if batch_size == 1 else _batch_rows(shape, dtype.itemsize, batch_size,
                                                     batch_size)
        wsize, half = self._open(params, state, dtype, shape, optimizer, rows)
        self._work = _aligned_zeros(2 * half, dtype)
        self._wg = _aligned_zeros(wsize, dtype)
        if batch_size == 1 and optimizer == _codes.SGD:
            self._fn = kernel("train_sgd", dtype)
        elif batch_size == 1:
            self._fn = kernel("train_single", dtype)
        else:
            self._fn = kernel("train_batch", dtype)
        self.reload()

    def train(self, X, Y, order, step):
        check_chunk(self._dtype, self._shape, X, Y, order)
        if len(order) == 0:
            return 0.0, 0
        if self._batch_size == 1 and self._optimizer == _codes.SGD:
            total, done = self._fn(self._wp, self._lay, self._sizes, self._acts, self._loss, X,
                                   Y, order, self._hyper, self._work)
        elif self._batch_size == 1:
            total, done = self._fn(self._wp, self._wg, self._wst, self._lay, self._sizes,
                                   self._acts, self._loss, X, Y, order, self._optimizer,
                                   self._hyper, int(step), self._work)
        else:
            total, done = self._fn(self._wp, self._wg, self._wst, self._lay, self._sizes,
                                   self._acts, self._loss, X, Y, order, self._batch_size,
                                   self._rows, self._optimizer, self._hyper, int(step),
                                   self._work)
        return float(total), int(done)

    def close(self):
        super().close()
        self._wg = self._work = None


class _Splitter(_WorkingCopy):
    """Split minibatches (``fastbp._parallel.SplitBatchTrainer``) on the working layout.

    Every part has its own gradient row and workspace, so ``parts`` threads
    compute their gradients at once on the shared parameters; one compiled
    call then adds them in part order and takes the step.  No parameter
    copies per batch: a Python-level split through ``loss_and_gradients``
    spent more time on them than a 20-64-64-1 batch of 256 rows takes.
    """

    def __init__(self, params, state, dtype, shape, sizes, acts, loss, batch_size, optimizer,
                 hyper, parts):
        self._sizes, self._acts, self._loss = sizes, acts, loss
        self._optimizer, self._hyper = optimizer, hyper
        part_rows = -(-batch_size // parts)
        wsize, half = self._open(params, state, dtype, shape, optimizer,
                                 _batch_rows(shape, dtype.itemsize, part_rows, part_rows))
        # one row per part; wsize is whole cache lines, so every row stays aligned
        self._grads = _aligned_zeros(parts * wsize, dtype).reshape(parts, wsize)
        self._works = [_aligned_zeros(2 * half, dtype) for _ in range(parts)]
        self._gradient = kernel("batch_part_gradient", dtype)
        self._update = kernel("sum_and_update", dtype)
        self._parts, self._batch_size = parts, batch_size
        # the whole chunk in one call per thread, synchronised in compiled code (not
        # without the JIT: plain Python has no atomics to build the barrier from; and
        # POSIX only: a waiting thread yields its core with sched_yield)
        compiled = not numba.config.DISABLE_JIT and os.name == "posix"
        self._split = kernel("train_split", dtype) if compiled else None
        self._sync = np.zeros(_kernels.SYNC_WORDS, dtype=np.int64)
        self._losses = np.zeros(parts, dtype=np.float64)
        self.reload()

    @property
    def trains_chunks(self):
        """Whether :meth:`train_chunk` is available (compiled kernels)."""
        return self._split is not None

    def train_chunk(self, X, Y, order, step, runner):
        """Train rows ``order`` in split batches, every part's thread in one compiled call.

        ``runner`` runs the ``parts`` calls at once (``fastbp._parallel.TaskRunner``);
        they meet at barriers inside ``train_split``.  If a call cannot start or
        fails (a second Ctrl-C in the calling thread), the abort word releases
        the others.  Returns ``(loss_sum, rows_done)``.
        """
        def part(k):
            return self._split(self._wp, self._grads, self._wst, self._lay, self._sizes,
                               self._acts, self._loss, X, Y, order, self._batch_size,
                               self._rows, self._optimizer, self._hyper, int(step),
                               self._works[k], k, self._parts, self._sync, self._losses)

        return _contract.run_meeting_parts(runner, self._sync, _kernels.SYNC_ABORT, part)

    def gradient(self, part, X, Y, rows, size):
        """Part ``part``'s loss sum; its share of the batch-mean gradient kept for :meth:`step`."""
        return float(self._gradient(self._wp, self._grads[part], self._lay, self._sizes,
                                    self._acts, self._loss, X, Y, rows, size, self._rows,
                                    self._works[part]))

    def clear(self, part):
        """Part ``part`` has no rows in this batch: it adds nothing."""
        self._grads[part].fill(0)

    def step(self, step):
        """Add the parts' gradients in order and take one step (``step`` done before)."""
        self._update(self._wp, self._grads, self._wst, self._optimizer, self._hyper, int(step))

    def close(self):
        super().close()
        self._grads = self._works = None


def tile_width(dtype):
    """Columns of one register tile of the minibatch products for ``dtype`` on this CPU.

    Two SIMD vectors of the width Numba compiles for (e.g. 32 float32 values
    with AVX-512); tests derive their layer widths from it so the tiled path
    and its edges are exercised whatever the machine.
    """
    return int(_module(np.dtype(dtype)).TILE_WIDTH)


def open_trainer(params, state, sizes, acts, loss, batch_size, optimizer, hyper):
    """A trainer for one fit (see ``_contract.Trainer``): working buffers laid out once.

    Tiny nets trained per sample with plain SGD get the kernel generated for
    their architecture (weights in registers); everything else the generic
    kernels of ``_numba_kernels`` on the aligned working layout.
    """
    dtype, loss, batch_size, optimizer = check_trainer_call(params, state, sizes, acts, loss,
                                                            batch_size, optimizer, hyper)
    shape = _sizes(sizes)
    # the all-scalar kernels compute element-wise activations and mean losses only: a
    # softmax output (a row-wise activation, a summed loss) takes the generic kernels
    if (batch_size == 1 and optimizer == _codes.SGD and _gen.wants_scalar(shape)
            and int(acts[-1]) != _codes.SOFTMAX):
        return _ScalarTrainer(params, state, dtype, shape, acts, loss, hyper)
    return _Trainer(params, state, dtype, shape, sizes, acts, loss, batch_size, optimizer,
                    hyper)


def open_splitter(params, state, sizes, acts, loss, batch_size, optimizer, hyper, parts):
    """Per-part gradients and one summed step for split minibatches (see ``fastbp._parallel``).

    Optional in the backend contract: backends without it are split through
    ``loss_and_gradients`` and the reference update.
    """
    dtype, loss, batch_size, optimizer = check_trainer_call(params, state, sizes, acts, loss,
                                                            batch_size, optimizer, hyper)
    return _Splitter(params, state, dtype, _sizes(sizes), sizes, acts, loss, batch_size,
                     optimizer, hyper, int(parts))


#: One chunk without a Network (tests, benchmarks): ``_contract.train_chunk`` on this module.
train_chunk = _contract.module_train_chunk(__name__)

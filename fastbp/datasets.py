"""Synthetic regression sets of any size, in memory or written to ``.npy`` files block by block.

The target is a fixed nonlinear function of a few random projections of the
inputs, which a small ReLU network learns easily and a linear fit cannot
(see :func:`make_regression`).  Rows are generated in fixed blocks of
:data:`BLOCK_ROWS`, each block from its own random stream derived from
``(seed, block index)``.  That is what makes the set reproducible at any
size: :func:`make_regression` and :func:`write_regression` produce the same
rows, and the first ``n`` rows of a larger set equal a set of ``n`` rows.
"""

import contextlib
import csv
import errno
import json
import math
import os
import stat
import time
import warnings
from pathlib import Path

import numpy as np

from . import _files
from . import _validation as validation

#: Rows per generated block.  Part of the definition of the data: changing it
#: changes every set generated from a seed, so it is fixed, not configurable.
BLOCK_ROWS = 1 << 14

#: Free space kept on the disk beyond the data itself, checked before writing.
FREE_SPACE_MARGIN = 64 << 20

# Projections per output; see _target for the function of them.
_N_PROJECTIONS = 5
# Variance of the noiseless target before scaling, for independent standard
# normal projections: 0.5² + 1 + 1.5²(1 - 2/π) + 0.8²(1 - e⁻⁸)/2 ≈ 2.39.
_TARGET_SCALE = 1.0 / math.sqrt(2.39)
_HALF_NORMAL_MEAN = math.sqrt(2.0 / math.pi)  # E|u| for u ~ N(0, 1)


def _check_noise_fits(noise, dtype):
    """Refuse a noise level whose targets could overflow ``dtype``.

    The bound, the square root of the dtype's largest value (1.8e19 in
    float32), is far above any meaningful noise and far enough below the
    largest value that no normal draw times it overflows.
    """
    limit = math.sqrt(float(np.finfo(dtype).max))
    if noise > limit:
        raise ValueError(f"noise: expected at most {limit:.3g} for {np.dtype(dtype).name} "
                         f"targets (larger noise overflows them to inf); found {noise!r}. "
                         "Pass e.g. noise=0.1.")


def _check_sizes(n_samples, n_features, n_outputs, noise, seed):
    n_samples = validation.check_positive_int(n_samples, "n_samples")
    n_features = validation.check_positive_int(n_features, "n_features")
    n_outputs = validation.check_positive_int(n_outputs, "n_outputs")
    if (isinstance(noise, bool) or not isinstance(noise, (int, float, np.floating, np.integer))
            or not np.isfinite(noise) or noise < 0):
        raise ValueError(f"noise: expected a finite number >= 0 (the standard deviation of the "
                         f"Gaussian noise added to the targets); found {noise!r}. "
                         "Pass e.g. noise=0.1.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer; found {seed!r}. "
                         "Pass e.g. seed=0.")
    return n_samples, n_features, n_outputs, float(noise), int(seed)


def _projections(seed, n_features, n_outputs):
    """Unit directions, ``(n_features, n_outputs * 5)``, scaled so each projection has variance 1.

    Drawn from their own stream (spawn key 0) so they do not depend on any block.
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    directions = rng.normal(size=(n_features, n_outputs * _N_PROJECTIONS))
    directions /= np.linalg.norm(directions, axis=0)
    # inputs are uniform on [-1, 1] (variance 1/3): sqrt(3) makes each projection unit-variance
    return directions * math.sqrt(3.0)


def _target(U):
    """The noiseless target from projections ``U``, ``(rows, 5)`` per output.

    ``0.5 u0 + u1 u2 + 1.5 (|u3| - E|u3|) + 0.8 sin(2 u4)``: one linear term
    (so a linear baseline explains something), an interaction, a kink and a
    smooth bump, which a linear fit cannot represent; scaled to variance ~1.
    """
    y = 0.5 * U[:, 0] + U[:, 1] * U[:, 2]
    y += 1.5 * (np.abs(U[:, 3]) - _HALF_NORMAL_MEAN)
    y += 0.8 * np.sin(2.0 * U[:, 4])
    return y * _TARGET_SCALE


def _block(seed, index, directions, n_outputs, noise):
    """All :data:`BLOCK_ROWS` rows of block ``index`` (float64): inputs, targets.

    Always a whole block, even when fewer rows are wanted, and the projections
    are summed feature by feature rather than by a BLAS matrix product: every
    value is then computed by exactly the same operations whatever the set's
    size, so a short last block is bitwise a prefix of the full one (a BLAS
    kernel's rounding may depend on the number of rows and threads).
    """
    rows = BLOCK_ROWS
    x_seq = np.random.SeedSequence(seed, spawn_key=(1, index, 0))
    noise_seq = np.random.SeedSequence(seed, spawn_key=(1, index, 1))
    n_features = directions.shape[0]
    X = np.random.default_rng(x_seq).uniform(-1.0, 1.0, size=(rows, n_features))
    U = X[:, :1] * directions[0]
    for i in range(1, n_features):
        U += X[:, i:i + 1] * directions[i]
    Y = np.empty((rows, n_outputs))
    for j in range(n_outputs):
        Y[:, j] = _target(U[:, j * _N_PROJECTIONS:(j + 1) * _N_PROJECTIONS])
    if noise:
        Y += noise * np.random.default_rng(noise_seq).standard_normal(size=(rows, n_outputs))
    return X, Y


def _blocks(n_samples, n_features, n_outputs, noise, seed):
    """Yield ``(start, X, Y)`` for consecutive blocks of the set."""
    directions = _projections(seed, n_features, n_outputs)
    for index, start in enumerate(range(0, n_samples, BLOCK_ROWS)):
        rows = min(BLOCK_ROWS, n_samples - start)
        X, Y = _block(seed, index, directions, n_outputs, noise)
        yield start, X[:rows], Y[:rows]


def make_regression(n_samples, n_features=20, n_outputs=1, noise=0.1, seed=0, dtype="float64"):
    """A synthetic nonlinear regression set that a small network learns and a linear fit does not.

    Inputs are uniform on ``[-1, 1]``.  Each output is
    ``(0.5 u0 + u1 u2 + 1.5 (|u3| - E|u3|) + 0.8 sin(2 u4)) / sqrt(2.39)`` of five
    unit-variance random projections ``u = sqrt(3) X v`` (roughly unit variance),
    plus Gaussian noise.  A linear least-squares fit explains about 15% of the
    variance; a 20-64-64-1 ReLU network trained for one epoch of per-sample
    SGD on a few hundred thousand rows explains over 95%.

    Parameters
    ----------
    n_samples : int
        Rows to generate.
    n_features : int, default 20
    n_outputs : int, default 1
        Each output uses its own projections.
    noise : float, default 0.1
        Standard deviation of the Gaussian noise added to the targets.
    seed : int, default 0
        The same seed gives the same rows, at any ``n_samples`` (a smaller set
        is a prefix of a larger one) and in :func:`write_regression`'s files.
    dtype : {"float64", "float32"}
        Values are computed in float64 and then rounded to ``dtype``.

    Returns
    -------
    X : ndarray, shape (n_samples, n_features)
    y : ndarray, shape (n_samples,) when ``n_outputs == 1``, else (n_samples, n_outputs)

    Examples
    --------
    >>> X, y = make_regression(1000, 20, seed=0)
    >>> X.shape, y.shape
    ((1000, 20), (1000,))
    """
    n_samples, n_features, n_outputs, noise, seed = _check_sizes(
        n_samples, n_features, n_outputs, noise, seed)
    dtype = validation.check_dtype(dtype)
    _check_noise_fits(noise, dtype)
    try:
        X = np.empty((n_samples, n_features), dtype=dtype)
        Y = np.empty((n_samples, n_outputs), dtype=dtype)
    except (MemoryError, ValueError):  # ValueError: more elements than an array can have
        size = human_size(n_samples * (n_features + n_outputs) * dtype.itemsize)
        raise MemoryError(f"make_regression: expected data that fits in memory; found that "
                          f"{n_samples:,} rows x {n_features + n_outputs} columns of "
                          f"{dtype.name} ({size}) cannot be allocated. Pass fewer samples, or "
                          "write them to disk with write_regression (`fastbp make-data`) and "
                          "train on the memory-mapped files.") from None
    for start, Xb, Yb in _blocks(n_samples, n_features, n_outputs, noise, seed):
        X[start:start + len(Xb)] = Xb
        Y[start:start + len(Yb)] = Yb
    return X, (Y[:, 0] if n_outputs == 1 else Y)


def write_regression(directory, n_samples, n_features=20, n_outputs=1, noise=0.1, seed=0,
                     dtype="float32", overwrite=False, progress=False):
    """Write :func:`make_regression`'s set to ``directory/X.npy`` and ``directory/y.npy``.

    The files are written block by block, so memory use does not grow with
    ``n_samples``: 100 million rows of 20 float32 features (an 8 GB ``X.npy``)
    need about as much memory as 16,384.
    Each file is written under a temporary name and renamed when complete, so
    an interrupted run never leaves a truncated ``X.npy`` behind.  Load the
    result with ``np.load(path, mmap_mode="r")`` and pass it to ``fit`` to
    train on it out of core.

    Parameters
    ----------
    directory : str or path-like
        Created if missing.
    n_samples, n_features, n_outputs, noise, seed
        As for :func:`make_regression`; the rows are identical.
    dtype : {"float32", "float64"}, default "float32"
        Stored type; float32 halves the file size.
    overwrite : bool, default False
        Replace existing ``X.npy``/``y.npy``; otherwise they are an error.
    progress : bool, default False
        Show a tqdm progress bar.

    Returns
    -------
    (Path, Path)
        The paths of ``X.npy`` and ``y.npy``.

    Raises
    ------
    FileExistsError
        The files exist and ``overwrite`` is False.
    OSError
        Not enough free disk space (checked before anything is written, with
        :data:`FREE_SPACE_MARGIN` to spare), or the disk filled up while
        writing; no partial file is left behind either way.
    """
    n_samples, n_features, n_outputs, noise, seed = _check_sizes(
        n_samples, n_features, n_outputs, noise, seed)
    dtype = validation.check_dtype(dtype)
    _check_noise_fits(noise, dtype)
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{directory}: expected a directory to write X.npy and y.npy "
                                 "into; found a file. Pass another --out path.")
    x_path, y_path = directory / "X.npy", directory / "y.npy"
    if not overwrite:
        for path in (x_path, y_path, directory / "meta.json"):
            if os.path.lexists(path):
                raise FileExistsError(f"{path} exists; expected a directory without X.npy, "
                                      "y.npy and meta.json. Pass overwrite=True (--force on the "
                                      "command line) to replace them, or another directory.")
    y_shape = (n_samples,) if n_outputs == 1 else (n_samples, n_outputs)
    needed = n_samples * (n_features + n_outputs) * dtype.itemsize
    import shutil  # here, not at import: it pulls in bz2 and lzma

    # The space is checked on the nearest existing folder, before any folder is
    # made: a refused run leaves no empty directory behind.
    missing = []
    existing = directory
    while not existing.exists() and existing != existing.parent:
        missing.append(existing)
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if needed + FREE_SPACE_MARGIN > free:
        raise OSError(f"{directory}: expected room for {human_size(needed)} of data plus a "
                      f"{human_size(FREE_SPACE_MARGIN)} safety margin; found "
                      f"{human_size(free)} free. "
                      "Pass fewer samples, dtype float32, or another directory.")
    directory.mkdir(parents=True, exist_ok=True)

    # Everything is written under temporary names in the same directory and
    # renamed into place only when complete.  The rows go through ordinary
    # writes, not a memory map: on a full disk a write through a mapping is a
    # SIGBUS that kills the process (no message, partial files left behind),
    # while ``write`` raises an OSError that is reported and cleaned up.  The
    # space is also reserved up front where the OS allows it, so a disk that
    # fills up later (another process) cannot fail the run half-way.
    # Each temporary file gets a fresh random name (``_files.create_temp``:
    # O_EXCL, never following a link planted there), so concurrent runs never
    # share one, and is opened at once (closing it twice is harmless).
    temps = []
    bar = None
    try:
        for name in ("X.npy", "y.npy", "meta.json"):
            fd, tmp = _files.create_temp(directory, name, ".partial")
            temps.append((os.fdopen(fd, "wb"), tmp))
        (fx, x_tmp), (fy, y_tmp), (fm, meta_tmp) = temps
        with fx, fy:
            _start_npy(fx, dtype, (n_samples, n_features))
            _start_npy(fy, dtype, y_shape)
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=n_samples, unit="rows", unit_scale=True, desc="writing",
                           dynamic_ncols=True)
            for start, Xb, Yb in _blocks(n_samples, n_features, n_outputs, noise, seed):
                fx.write(np.ascontiguousarray(Xb, dtype=dtype).data)
                fy.write(np.ascontiguousarray(Yb[:, 0] if n_outputs == 1 else Yb,
                                              dtype=dtype).data)
                if bar is not None:
                    bar.update(len(Xb))
            for f in (fx, fy):
                f.flush()
                os.fsync(f.fileno())
        meta = {"generator": "fastbp.datasets.make_regression", "n_samples": n_samples,
                "n_features": n_features, "n_outputs": n_outputs, "noise": noise, "seed": seed,
                "dtype": dtype.name, "block_rows": BLOCK_ROWS, "written": time.time()}
        with fm:
            fm.write((json.dumps(meta, indent=1) + "\n").encode())
        os.replace(x_tmp, x_path)
        os.replace(y_tmp, y_path)
        os.replace(meta_tmp, directory / "meta.json")
    except BaseException as exc:
        for f, tmp in temps:
            with contextlib.suppress(OSError):
                f.close()
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        for folder in missing:  # the folders this call made, innermost first, if still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise OSError(exc.errno, f"{directory}: the disk filled up while writing the data "
                          f"({os.strerror(exc.errno)}); the partial files were removed. Free "
                          "some space, pass fewer samples or dtype float32, or write to another "
                          "directory.") from exc
        raise
    finally:
        if bar is not None:
            bar.close()
    return x_path, y_path


def _start_npy(f, dtype, shape):
    """Write the ``.npy`` header of a C-ordered ``dtype`` array of ``shape``; reserve its space.

    The rows follow as raw bytes, which is exactly the ``.npy`` layout
    ``np.load`` (and ``mmap_mode="r"``) reads.
    """
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
              "shape": tuple(shape)}
    np.lib.format.write_array_header_1_0(f, header)  # a 2-D shape fits format 1.0 easily
    f.flush()
    size = f.tell() + math.prod(shape) * dtype.itemsize
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(f.fileno(), 0, size)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise
            # EINVAL / EOPNOTSUPP: the file system cannot reserve; plain writes still report
            # a full disk as an OSError.


def human_size(n_bytes):
    """``n_bytes`` for people, in powers of 1000: ``"512 B"``, ``"8.0 GB"``."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n_bytes < 1000 or unit == "TB":
            return f"{n_bytes:.1f} {unit}" if unit != "B" else f"{n_bytes} B"
        n_bytes /= 1000
    return None  # pragma: no cover


# ---------------------------------------------------------------------------- loading files
def _one_line(exc):
    text = " ".join(str(exc).split())
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    return text or type(exc).__name__


def _check_regular_file(path, what):
    """Raise unless ``path`` names a regular file (links followed): ``what`` says what to pass.

    A FIFO or a terminal would block the read forever, and a device such as
    ``/dev/zero`` never ends.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file. Pass the path of {what}.") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror or exc}). Pass the path of "
                         f"{what}.") from None
    if not stat.S_ISREG(mode):
        kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO (named pipe)"
                if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "a device")
        raise ValueError(f"{path}: expected a regular file; found {kind}. Pass the path of "
                         f"{what}.")


def load_npy(path):
    """Memory-map a ``.npy`` file of real numbers, read-only (as ``fastbp train --x`` does).

    The file is not read into memory: :meth:`Network.fit` streams a
    memory-mapped array block by block, so the file may be larger than memory.

    Parameters
    ----------
    path : str or path-like
        A ``.npy`` file holding one array, e.g. one written by ``np.save``
        or :func:`write_regression`.

    Returns
    -------
    numpy.memmap
        Read-only; of the file's dtype (booleans, integers or floats).

    Raises
    ------
    FileNotFoundError
        There is no file at ``path``.
    ValueError
        The file is not a ``.npy`` file numpy can memory-map (empty,
        truncated, another format, unreadable), an ``.npz`` archive, or holds
        no real numbers (e.g. strings or objects).
    """
    _check_regular_file(path, "a .npy file, e.g. one written by `fastbp make-data`")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file. Pass the path of a .npy file, e.g. one "
                                "written by `fastbp make-data`.") from None
    except (ValueError, EOFError, OSError) as exc:  # not .npy, empty or truncated, unreadable
        raise ValueError(f"{path}: expected a .npy file of numbers; found something numpy "
                         f"cannot memory-map ({_one_line(exc)}). Write it with np.save or "
                         "`fastbp make-data`.") from None
    if not isinstance(array, np.ndarray):  # an .npz archive
        array.close()
        raise ValueError(f"{path}: expected a .npy file holding one array; found an .npz "
                         "archive. Save each array with np.save.")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{path}: expected real numbers; found dtype {array.dtype}.")
    return array


#: The most characters of a CSV file's first line read to tell a header from data.
_CSV_FIRST_LINE_MAX = 1 << 20


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def _csv_cells(line):
    """The cells of one CSV line, quotes removed, as ``np.loadtxt(quotechar='"')`` reads them."""
    return next(csv.reader([line]), [])


def _first_bad_csv_row(path, header):
    """Where the first row that ``load_csv`` cannot read is, counted as an editor counts lines.

    Only run after ``np.loadtxt`` refused the file (its message counts rows
    after the header from 0 and columns from 1).  None if no row is found.
    """
    width = None
    with open(path, encoding="utf-8-sig", newline="", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            line = line.split("#", 1)[0]  # np.loadtxt's comments
            if number <= header or not line.strip():
                continue
            cells = _csv_cells(line)
            if width is None:
                width = len(cells)
            if len(cells) != width:
                return (f"line {number} has {len(cells)} values where the first data row has "
                        f"{width}")
            for column, cell in enumerate(cells, start=1):
                if not _is_number(cell):
                    return f"line {number}, column {column}: found {cell.strip()!r}"
    return None


def load_csv(path, targets=1):
    """Read a CSV file of numbers into memory: the features, then ``targets`` target columns.

    As ``fastbp train --csv`` reads it: comma-separated numbers, one row per
    line (cells may be quoted; a UTF-8 byte-order mark is skipped); a first
    line of column names, none of them a number, is skipped.  A first line
    with a number in it is data, so a bad cell there is an error, not a
    header.

    Parameters
    ----------
    path : str or path-like
    targets : int, default 1
        How many columns at the end of each row are targets.

    Returns
    -------
    X : ndarray, shape (n_rows, n_columns - targets), float64
    y : ndarray, shape (n_rows, targets), float64

    Raises
    ------
    FileNotFoundError
        There is no file at ``path``.
    ValueError
        Not a regular file (a directory, FIFO or device), not UTF-8 text, a
        row that is not numbers or of another length (the message gives its
        line and column), no data rows, or no more than ``targets`` columns.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from fastbp.datasets import load_csv
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "houses.csv"
    >>> _ = path.write_text("rooms,age,price\\n3,10,200\\n4,5,320\\n")
    >>> X, y = load_csv(path)
    >>> X.tolist(), y.tolist()
    ([[3.0, 10.0], [4.0, 5.0]], [[200.0], [320.0]])
    """
    targets = validation.check_positive_int(targets, "targets")
    _check_regular_file(path, "a CSV file of comma-separated numbers")
    try:
        # utf-8-sig: a byte-order mark (as spreadsheet programs write) is not a cell
        with open(path, encoding="utf-8-sig", newline="") as f:
            first = f.readline(_CSV_FIRST_LINE_MAX)
    except UnicodeDecodeError:
        raise ValueError(f"{path}: expected a UTF-8 text file of comma-separated numbers; "
                         "found bytes that are not UTF-8 text (binary data?).") from None
    # Column names only: a first line with any number in it is data, so that a
    # row with one empty or mistyped cell is reported, never skipped as a header.
    header = int(bool(first.strip()) and not any(_is_number(c) for c in _csv_cells(first)))
    try:
        with warnings.catch_warnings():  # "input contained no data": said below, as an error
            warnings.simplefilter("ignore", UserWarning)
            data = np.loadtxt(path, delimiter=",", skiprows=header, ndmin=2, dtype=np.float64,
                              quotechar='"', encoding="utf-8-sig")
    except ValueError as exc:
        where = _first_bad_csv_row(path, header) or _one_line(exc)
        raise ValueError(f"{path}: expected comma-separated numbers in every row (one header "
                         f"line of column names allowed); {where}. Fix or remove that "
                         "row.") from None
    if data.shape[0] == 0:
        raise ValueError(f"{path}: expected data rows; found none.")
    if data.shape[1] <= targets:
        raise ValueError(f"{path}: expected more than {targets} columns (the features, then "
                         f"{targets} target column(s)); found {data.shape[1]}.")
    return data[:, :-targets], data[:, -targets:]

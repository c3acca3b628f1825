"""Where training rows come from: arrays in memory, or memory-mapped files streamed in blocks.

A source hands the training loop one chunk at a time as ``(X, Y, order)``:
the kernels train on rows ``order`` of ``X``/``Y``.  In memory, ``X`` is the
whole (validated, converted) array and ``order`` the chunk's slice of the
epoch's row order, a keyed bijection of the rows computed per chunk
(``fastbp._shuffle``).  Streamed, ``X`` is one block read from the file and ``order``
the same keyed order over that block (four keys per block): blocks are visited
in a fresh random order each epoch and shuffled within, so the shuffle stays
honest without random access to the whole file.  Files are only ever read.

Resident memory while streaming stays about two blocks (converted to the
network dtype) however large the file: each block is copied out of the
mapping and its pages are then released from this process with
``madvise(MADV_DONTNEED)``, which for a shared file mapping only drops the
page-table entries (the data stays in the OS page cache and in the file).  The
next block is announced with ``MADV_WILLNEED`` so the OS reads it from disk
while the kernels train on the current one.
"""

import hashlib
import mmap

import numpy as np

from . import _shuffle
from . import _validation as validation

try:  # numpy >= 2
    from numpy.lib.array_utils import byte_bounds as _byte_bounds
except ImportError:  # numpy 1.x
    _byte_bounds = np.byte_bounds

# Bytes beyond each end of a block whose pages are released with it (see _Pager.done).
_RELEASE_MARGIN = 1 << 20
# Rows at each end of the training data hashed into a source's fingerprint, and rows
# evenly spaced from the first to the last (an odd number: the middle row is one of them).
_FINGERPRINT_ROWS = 64
_FINGERPRINT_SAMPLES = 1025


class ArraySource:
    """Validated rows held in memory in the network dtype."""

    streamed = False

    def __init__(self, X, Y):
        self.X, self.Y = X, Y
        self.n_rows = X.shape[0]

    def chunks(self, rng, shuffle, chunk_rows, start_row=0):
        """Yield ``(X, Y, order)`` for one epoch, skipping the first ``start_row`` rows.

        Without ``shuffle`` the rows go in order.  With it, the epoch first
        draws four 32-bit round keys from ``rng``
        (``rng.integers(0, 2**32, size=4, dtype=np.uint32)``), and each
        chunk's ``order`` is its slice of the permutation those keys define:
        position ``p`` of the epoch trains row ``walk(p)``, a Feistel network
        on the smallest power of two at least the row count, cycle-walked
        into ``[0, n)`` (the formula is in ``fastbp._shuffle``).  Each chunk
        computes only its own slice, so the epoch never holds or draws a
        whole-set permutation; the same seed gives the same orders, each
        epoch a new one.  The keys are drawn even when rows are skipped, so
        the generator ends the epoch in the same state as an uninterrupted
        one, and a resumed epoch trains exactly the rows that were left.
        """
        if not shuffle:
            # each chunk's own indices: written and read while still in cache,
            # where one whole-epoch arange went out to memory and back
            for start in range(start_row, self.n_rows, chunk_rows):
                yield self.X, self.Y, np.arange(start, min(start + chunk_rows, self.n_rows))
            return
        keys = _shuffle.draw_keys(rng)
        for start in range(start_row, self.n_rows, chunk_rows):
            stop = min(start + chunk_rows, self.n_rows)
            yield self.X, self.Y, _shuffle.order(keys, self.n_rows, start, stop)

    def blocks(self, block_rows):
        """Yield consecutive ``(X, Y)`` blocks in file order (evaluation)."""
        for start in range(0, self.n_rows, block_rows):
            yield self.X[start:start + block_rows], self.Y[start:start + block_rows]

    def rows(self, start, stop):
        """Rows ``start:stop`` of X and Y in the network dtype, as ``(X, Y)``.

        In memory they are views of the validated arrays; a streamed source
        returns private, finite copies (see :meth:`StreamSource.rows`).
        """
        return self.X[start:stop], self.Y[start:stop]

    def _sample_rows(self, start, stop):
        """Rows ``start:stop`` of X and Y in the network dtype, unchecked (fingerprint)."""
        return self.X[start:stop], self.Y[start:stop]

    def _take(self, rows):
        """Rows ``rows`` (an index array) of X and Y in the network dtype."""
        return self.X[rows], self.Y[rows]

    def fingerprint(self):
        """A short hash of the shape and of sampled rows (their values in the network dtype).

        Stored with a training checkpoint, it catches resuming on other data
        without reading the whole set.  Hashed: the number of rows, features
        and outputs; the first and last 64 rows; and 1,025 rows evenly spaced
        from the first to the last (row ``i * (n - 1) // 1024`` for
        ``i = 0..1024``, so the middle row is one), which is every row of data
        of up to 1,025 rows.  A change in any other row is not detected.
        Reading them costs about 1,150 rows (and as many pages of a
        memory-map), whatever the size of the data.
        """
        n = self.n_rows
        k = min(n, _FINGERPRINT_ROWS)
        digest = hashlib.sha256(repr((n, self.X.shape[1], self.Y.shape[1])).encode())
        for start, stop in ((0, k), (n - k, n)):
            for part in self._sample_rows(start, stop):
                digest.update(np.ascontiguousarray(part, dtype=np.float64).tobytes())
        if n:
            spaced = np.unique(np.arange(_FINGERPRINT_SAMPLES, dtype=np.int64) * (n - 1)
                               // (_FINGERPRINT_SAMPLES - 1))
            for part in self._take(spaced):
                digest.update(np.ascontiguousarray(part, dtype=np.float64).tobytes())
        return digest.hexdigest()[:32]

    def split(self, fraction):
        """Keras's validation_split: the last ``fraction`` of rows, before shuffling."""
        n_val = int(self.n_rows * fraction)
        if n_val < 1 or n_val >= self.n_rows:
            raise ValueError(f"validation_split={fraction} leaves {self.n_rows - n_val} training "
                             f"and {n_val} validation rows of {self.n_rows}; both need at "
                             "least one. Pass more data or another fraction.")
        cut = self.n_rows - n_val
        return self._subset(0, cut), self._subset(cut, self.n_rows)

    def _subset(self, start, stop):
        return ArraySource(self.X[start:stop], self.Y[start:stop])


class _Pager:
    """Advises the OS about the pages of one memory-mapped array: needed soon, or done with.

    Only shared mappings (``mode`` "r", "r+", "w+") are advised: there
    ``MADV_DONTNEED`` merely unmaps pages whose data lives on in the page
    cache.  On a private copy-on-write mapping (``mode="c"``) it would discard
    the caller's in-memory changes, so such arrays, and anything that is not an
    ``np.memmap`` of a Python ``mmap``, are left alone.
    """

    def __init__(self, array):
        self._mm = None
        mm = getattr(array, "_mmap", None)
        if (not isinstance(mm, mmap.mmap) or getattr(array, "mode", None) not in ("r", "r+", "w+")
                or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED")):
            return
        try:
            probe = np.frombuffer(mm, dtype=np.uint8)
            self._base = probe.ctypes.data
            self._size = probe.size
            del probe  # release the buffer export at once: it would block mm.close()
        except (TypeError, ValueError, BufferError):
            return
        self._mm = mm

    def _advise(self, view, option, margin=0):
        if self._mm is None or view.size == 0:
            return
        low, high = _byte_bounds(view)
        start, stop = low - self._base, high - self._base
        if start < 0 or stop > self._size:  # not inside this mapping: never touch it
            return
        start = max(0, start - margin)
        stop = min(self._size, stop + margin)
        start -= start % mmap.PAGESIZE
        try:
            self._mm.madvise(option, start, stop - start)
        except (OSError, ValueError):
            pass  # advice only; a refusal changes nothing but speed and memory

    def done(self, view):
        """Drop ``view``'s pages from this process (they stay in the page cache).

        A page fault also maps the already-cached pages around it ("fault-around",
        64 KiB by default), which can lie outside ``view``: the margin releases
        those too, else they would pile up block after block.
        """
        self._advise(view, mmap.MADV_DONTNEED, margin=_RELEASE_MARGIN)

    def soon(self, view):
        """Ask the OS to start reading ``view``'s pages from disk in the background."""
        if hasattr(mmap, "MADV_WILLNEED"):
            self._advise(view, mmap.MADV_WILLNEED)


class StreamSource(ArraySource):
    """Rows read block by block from (memory-mapped) arrays, converted and checked per block.

    Peak memory is about two blocks of ``X`` and ``Y`` in the network dtype,
    independent of the file size (see the module docstring).
    """

    streamed = True

    def __init__(self, X, Y, dtype, names=("X", "y"), offset=0, classes=None):
        super().__init__(X, Y)
        self.dtype = dtype
        self.names = names
        # with classes=k, Y holds class labels (n, 1), turned into one-hot rows block
        # by block: the training loop never holds more than a block of them
        self.classes = classes
        # row of the caller's array where this source starts (a validation split
        # is a tail of it): error messages give the row in the caller's array
        self.offset = offset
        self._pagers = (_Pager(X), _Pager(Y))

    def _sample_rows(self, start, stop):
        return tuple(np.asarray(a[start:stop], dtype=self.dtype) for a in (self.X, self.Y))

    def _take(self, rows):
        # Sampled rows lie all over the file, and each one faults in its pages and
        # the fault-around ones: release them at once, as the training loop does
        # after each block, or fingerprinting would map in most of the file.
        # Row by row, so that the peak stays a few pages.
        taken = []
        for array, pager in zip((self.X, self.Y), self._pagers):
            out = np.empty((len(rows),) + array.shape[1:], dtype=self.dtype)
            for i, row in enumerate(rows):
                view = array[row:row + 1]
                out[i] = view[0]
                pager.done(view)
            taken.append(out)
        return tuple(taken)

    def _prefetch(self, start, stop):
        for array, pager in zip((self.X, self.Y), self._pagers):
            pager.soon(array[start:stop])

    def rows(self, start, stop):
        """A private, C-contiguous, finite copy of rows ``start:stop``; their pages released.

        Raises ValueError naming the row and column of a NaN or infinity.
        """
        out = []
        for array, pager, name in zip((self.X, self.Y), self._pagers, self.names):
            view = array[start:stop]
            if array is self.Y and self.classes is not None:
                out.append(validation.one_hot(view, self.classes, self.dtype, name,
                                              self.offset + start))
                pager.done(view)
                continue
            block = np.empty(view.shape, dtype=self.dtype)
            # Always copy, even when the dtype matches: the kernels then touch
            # private memory, and the mapped pages can be released right away.
            np.copyto(block, view, casting="unsafe")
            pager.done(view)
            bad = first_non_finite(block)
            if bad is not None:
                row, col = bad
                raise ValueError(
                    f"{name}: expected finite numbers; found {block[row, col]!r} (in "
                    f"{self.dtype}) at row {self.offset + start + row}, column {col} of the streamed "
                    "array. "
                    f"Remove or impute NaN/inf rows in the file first (e.g. keep rows where "
                    f"np.isfinite({name}).all(axis=1)).")
            out.append(block)
        return tuple(out)

    def chunks(self, rng, shuffle, chunk_rows, start_row=0):
        """Yield one epoch's ``(X_block, Y_block, order)``, skipping ``start_row`` rows.

        ``start_row`` counts rows already trained this epoch, in visiting order.
        With ``shuffle``, the blocks come in ``rng.permutation`` order and each
        block's rows in the keyed order of :mod:`fastbp._shuffle` over the
        block, with four keys drawn from ``rng`` as the block is reached.
        Skipped blocks still draw their keys, so the generator's stream is the
        same as in an uninterrupted epoch.
        """
        n_blocks = -(-self.n_rows // chunk_rows)
        blocks = rng.permutation(n_blocks) if shuffle else np.arange(n_blocks)
        bounds = [(int(b) * chunk_rows, min(int(b) * chunk_rows + chunk_rows, self.n_rows))
                  for b in blocks]
        done = 0
        for i, (start, stop) in enumerate(bounds):
            # each block's rows: the keyed order of _shuffle over the block (keys drawn
            # when the block is reached, also for a skipped one), which a Dask worker
            # computes from the keys alone
            keys = _shuffle.draw_keys(rng) if shuffle else None
            if done + (stop - start) <= start_row:
                done += stop - start
                continue
            X, Y = self.rows(start, stop)
            if i + 1 < len(bounds):
                self._prefetch(*bounds[i + 1])
            skip = max(0, start_row - done)
            done += stop - start
            yield X, Y, _shuffle.visit(keys, stop - start, skip)

    def blocks(self, block_rows):
        for start in range(0, self.n_rows, block_rows):
            stop = min(start + block_rows, self.n_rows)
            block = self.rows(start, stop)
            if stop < self.n_rows:
                self._prefetch(stop, min(stop + block_rows, self.n_rows))
            yield block

    def _subset(self, start, stop):
        return StreamSource(self.X[start:stop], self.Y[start:stop], self.dtype, self.names,
                            self.offset + start, self.classes)


def first_non_finite(block):
    """``(row, column)`` of the first NaN or infinity in 2-D ``block``, or None."""
    finite = np.isfinite(block)
    if finite.all():
        return None
    row, col = np.argwhere(~finite)[0]
    return int(row), int(col)


def make_source(X, y, n_features, n_outputs, dtype, names=("X", "y"), labels=False,
                convert=validation.to_dtype):
    """Check ``X``/``y`` and wrap them: in memory, or streamed when ``X`` is a memory-map.

    In-memory data is converted and checked for NaN/inf here, before training
    starts, by ``convert(array, dtype, name)`` (``validation.to_dtype``, or
    one that splits the rows across threads).  Streamed data is checked block by block as it is read; the
    caller rolls the model back if a bad block turns up.  With ``labels``
    (sparse categorical cross-entropy), ``y`` holds integer class labels in
    ``[0, n_outputs)``: they are checked and turned into one-hot rows of the
    network dtype here (in memory) or per block (streamed), so the kernels
    only ever see categorical cross-entropy.
    """
    X = validation.check_features(X, n_features, names[0])
    if labels:
        y = validation.check_label_shape(y, names[1])
    else:
        y = validation.check_targets(y, n_outputs, names[1])
    validation.check_same_length(X, y, names)
    if isinstance(X, np.memmap):
        return StreamSource(X, y, dtype, names, classes=n_outputs if labels else None)
    if labels:
        return ArraySource(convert(X, dtype, names[0]),
                           validation.one_hot(y, n_outputs, dtype, names[1]))
    return ArraySource(convert(X, dtype, names[0]), convert(y, dtype, names[1]))


def row_blocks(X, Y, start, stop, block_rows, dtype=np.float64):
    """Yield ``(X, Y)`` blocks of rows ``start:stop``: finite copies in ``dtype``.

    ``X`` is 2-D; ``Y`` 1-D or 2-D (blocks are 2-D).  Memory-maps are read
    block by block and their pages released (as training streams them), so
    any size of data costs memory of one block.
    """
    Y2 = Y.reshape(-1, 1) if Y.ndim == 1 else Y
    source = StreamSource(X, Y2, np.dtype(dtype))
    for lo in range(start, stop, block_rows):
        yield source.rows(lo, min(lo + block_rows, stop))

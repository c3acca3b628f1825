"""Where training rows come from: arrays in memory, or memory-mapped files streamed in blocks.

A source hands the training loop one chunk at a time as ``(X, Y, order)``:
the kernels train on rows ``order`` of ``X``/``Y``.  In memory, ``X`` is the
whole (validated, converted) array and ``order`` a slice of the epoch's
permutation.  Streamed, ``X`` is one block read from the file and ``order`` a
permutation of that block: blocks are visited in a fresh random order each
epoch and shuffled within, so the shuffle stays honest without random access
to the whole file.  Files are only ever read.
"""

import numpy as np

from . import _validation as V

class ArraySource:
    """Validated rows held in memory in the network dtype."""

    streamed = False

    def __init__(self, X, Y):
        self.X, self.Y = X, Y
        self.n_rows = X.shape[0]

    def chunks(self, rng, shuffle, chunk_rows, start_row=0):
        """Yield ``(X, Y, order)`` for one epoch, skipping the first ``start_row`` rows."""
        order = rng.permutation(self.n_rows) if shuffle else np.arange(self.n_rows)
        for start in range(start_row, self.n_rows, chunk_rows):
            yield self.X, self.Y, order[start:start + chunk_rows]

    def blocks(self, block_rows):
        """Yield consecutive ``(X, Y)`` blocks in file order (evaluation)."""
        for start in range(0, self.n_rows, block_rows):
            yield self.X[start:start + block_rows], self.Y[start:start + block_rows]

    def split(self, fraction):
        """Keras's validation_split: the last ``fraction`` of rows, before shuffling."""
        n_val = int(self.n_rows * fraction)
        if n_val < 1 or n_val >= self.n_rows:
            raise ValueError(f"validation_split={fraction} leaves {self.n_rows - n_val} training "
                             f"and {n_val} validation rows of {self.n_rows}; both need at "
                             "least one. Pass more data or another fraction.")
        cut = self.n_rows - n_val
        return (type(self)(self.X[:cut], self.Y[:cut]),
                type(self)(self.X[cut:], self.Y[cut:]))


class StreamSource(ArraySource):
    """Rows read block by block from (memory-mapped) arrays, converted and checked per block.

    Peak memory is about one block of ``X`` and ``Y`` in the network dtype
    plus the pages the OS keeps cached, independent of the file size.
    """

    streamed = True

    def __init__(self, X, Y, dtype):
        super().__init__(X, Y)
        self.dtype = dtype

    def _read(self, start, stop):
        X = V.to_dtype(self.X[start:stop], self.dtype, "X")
        Y = V.to_dtype(self.Y[start:stop], self.dtype, "y")
        return X, Y

    def chunks(self, rng, shuffle, chunk_rows, start_row=0):
        n_blocks = -(-self.n_rows // chunk_rows)
        blocks = rng.permutation(n_blocks) if shuffle else np.arange(n_blocks)
        # start_row counts rows already trained this epoch, in visiting order.
        done = 0
        for block in blocks:
            start = int(block) * chunk_rows
            stop = min(start + chunk_rows, self.n_rows)
            if done + (stop - start) <= start_row:
                # keep the generator's draws identical to an uninterrupted epoch
                if shuffle:
                    rng.permutation(stop - start)
                done += stop - start
                continue
            X, Y = self._read(start, stop)
            order = rng.permutation(stop - start) if shuffle else np.arange(stop - start)
            skip = max(0, start_row - done)
            done += stop - start
            yield X, Y, order[skip:]

    def blocks(self, block_rows):
        for start in range(0, self.n_rows, block_rows):
            yield self._read(start, min(start + block_rows, self.n_rows))

    def split(self, fraction):
        train, val = ArraySource.split(self, fraction)
        return (StreamSource(train.X, train.Y, self.dtype),
                StreamSource(val.X, val.Y, self.dtype))


def make_source(X, y, n_features, n_outputs, dtype):
    """Check ``X``/``y`` and wrap them: in memory, or streamed when ``X`` is a memory-map.

    In-memory data is converted and checked for NaN/inf here, before training
    starts.  Streamed data is checked block by block as it is read; the
    caller rolls the model back if a bad block turns up.
    """
    X = V.check_features(X, n_features)
    y = V.check_targets(y, n_outputs)
    V.check_same_length(X, y)
    if isinstance(X, np.memmap):
        return StreamSource(X, y, dtype)
    return ArraySource(V.to_dtype(X, dtype, "X"), V.to_dtype(y, dtype, "y"))

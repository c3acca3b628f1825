"""Where one W1 epoch's time goes: the shuffle, the data checks, the chunks, the kernel.

For every backend and row count, in one process, alternating the
configurations and taking medians of ``--repeats``:

* ``fit shuffle`` / ``fit no-shuffle``: ``Network.fit(epochs=1)`` with
  ``shuffle=True`` / ``False`` (after a warm-up fit), samples/s;
* ``kernel``: the same chunks through the trainer alone (rows in order,
  no ``fit``), samples/s; ``kernel shuffled``: the same on a pre-drawn
  permutation (what the random access to the rows costs the kernel);
  ``kernel blocks``: the same on an order with locality, drawn beforehand
  (the epoch cut into windows of 32,768 rows, each window 128 random blocks
  of 256 consecutive rows, shuffled within the window): what a shuffle that
  keeps rows near each other in memory would leave of the kernel rate;
* ``read shuffled``: no training, only the rows read in the pre-drawn
  permutation (a compiled loop that adds up each row of X and Y, W1's two
  columns and one target written out),
  samples/s: the rate at which this machine's memory hands out rows in
  random order, about the ceiling of any fully shuffled epoch;
* ``order``: drawing one epoch's row order (``ArraySource.chunks``'s orders
  for every chunk, concatenated; no training), ms;
* ``source``: ``make_source`` (validation and conversion), ms.

Run from the repository root::

    python benchmarks/epoch_cost.py --rows 1000000 4000000 --backends numba cython
"""

import argparse
import statistics
import time

import numba
import numpy as np


def _time(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(backend, rows, repeats):
    import fastbp
    from fastbp import _bench, _config, _data
    from fastbp._backends import _codes

    X, y = _bench.workload_data("W1", "float64", rows=rows)
    net = _bench.workload_network("W1", backend, "float64")
    net.fit(X[:1000], y[:1000], epochs=1, batch_size=1, verbose=0)
    source = _data.make_source(X, y, 2, 1, np.dtype(np.float64))
    chunk = _config.chunk_rows()
    trainer = net._kernels.open_trainer(net._params, net._state, net._sizes, net._acts,
                                        net._loss, 1, _codes.SGD, net._hyper)
    rng = np.random.default_rng(0)
    whole = np.arange(rows, dtype=np.int64)
    shuffled = np.random.default_rng(1).permutation(rows)
    blocked = _blocked_order(np.random.default_rng(2), rows)

    def kernel():
        for start in range(0, rows, chunk):
            trainer.train(source.X, source.Y, whole[start:start + chunk], 0)

    def kernel_shuffled():
        for start in range(0, rows, chunk):
            trainer.train(source.X, source.Y, shuffled[start:start + chunk], 0)

    def kernel_blocks():
        for start in range(0, rows, chunk):
            trainer.train(source.X, source.Y, blocked[start:start + chunk], 0)

    def read_shuffled():
        assert source.X.shape[1] == 2 and source.Y.shape[1] == 1, "W1 is 2-2-1"
        _sum_rows(source.X, source.Y, shuffled)

    def order():
        for _ in source.chunks(rng, True, chunk):
            pass

    runs = {
        "fit shuffle": lambda: net.fit(X, y, epochs=1, batch_size=1, shuffle=True, verbose=0),
        "fit no-shuffle": lambda: net.fit(X, y, epochs=1, batch_size=1, shuffle=False,
                                          verbose=0),
        "kernel": kernel,
        "kernel shuffled": kernel_shuffled,
        "kernel blocks": kernel_blocks,
        "read shuffled": read_shuffled,
        "order": order,
        "source": lambda: _data.make_source(X, y, 2, 1, np.dtype(np.float64)),
    }
    times = {name: [] for name in runs}
    for name, fn in runs.items():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(_time(fn))
    trainer.close()
    med = {name: statistics.median(t) for name, t in times.items()}
    rate = {name: rows / med[name] / 1e6
            for name in ("fit shuffle", "fit no-shuffle", "kernel", "kernel shuffled",
                         "kernel blocks", "read shuffled")}
    print(f"{backend:7s} {rows:>9,d} rows: fit shuffle {rate['fit shuffle']:.1f} M/s, "
          f"fit no-shuffle {rate['fit no-shuffle']:.1f} M/s, kernel {rate['kernel']:.1f} M/s, "
          f"kernel shuffled {rate['kernel shuffled']:.1f} M/s "
          f"(shuffled epoch {rate['fit shuffle'] / rate['kernel']:.0%} of the kernel rate), "
          f"kernel blocks {rate['kernel blocks']:.1f} M/s "
          f"({rate['kernel blocks'] / rate['kernel']:.0%}), "
          f"read shuffled {rate['read shuffled']:.1f} M/s; "
          f"order {1e3 * med['order']:.1f} ms, source {1e3 * med['source']:.1f} ms, "
          f"kernel {1e3 * med['kernel']:.1f} ms", flush=True)


@numba.njit(nogil=True, cache=False)
def _sum_rows(X, Y, order):
    """The sum of rows ``order`` of W1's X (2 columns) and Y (1): only the reads.

    The columns are written out, as the per-sample kernel's generated source
    writes out the layer sizes: a loop over the columns here ran at 31 M rows/s
    where this runs at about 50 M.
    """
    total = 0.0
    for i in range(order.shape[0]):
        row = order[i]
        total += X[row, 0] + X[row, 1] + Y[row, 0]
    return total


def _blocked_order(rng, rows, block=256, window=32_768):
    """An order with locality: 256-row blocks drawn from the whole array, shuffled in windows."""
    full = rows // block
    if full == 0:  # no whole block: a plain permutation
        return rng.permutation(rows)
    blocks = rng.permutation(full)
    per_window = window // block
    parts = []
    for first in range(0, full, per_window):
        chosen = blocks[first:first + per_window]
        part = (chosen[:, None] * block + np.arange(block)[None, :]).ravel()
        if first + per_window >= full:  # the rows after the last whole block
            part = np.concatenate([part, np.arange(full * block, rows)])
        parts.append(part[rng.permutation(len(part))])
    return np.concatenate(parts)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 4_000_000])
    parser.add_argument("--backends", nargs="+", default=["numba", "cython"])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    for rows in args.rows:
        for backend in args.backends:
            measure(backend, rows, args.repeats)


if __name__ == "__main__":
    main()

"""fastbp.dask: samples/s of 1 vs 2 single-threaded Dask workers, and the cost of a round.

Writes a float32 regression set with ``fastbp.datasets.write_regression``
(memory-mapped ``.npy``, read on the workers with ``fastbp.dask.from_npy``),
trains a 20-64-64-1 network by per-sample SGD on a ``LocalCluster`` of 1 and
of 2 single-threaded worker processes (the same chunks, the default
``average_every``) and prints one table:

- samples/s per configuration and the 2-vs-1 ratio;
- the final training loss (the last epoch's, and ``evaluate`` on all rows);
- the driver's resident memory (now, and its peak);
- the overhead of one averaging round in ms (rounds of one row per worker,
  so the kernels cost nothing) for networks of increasing parameter count.

Run::

    PYTHONPATH=. python benchmarks/dask_scaling.py --rows 1000000

Timings share the machine with whatever else runs: rerun to see the noise.
"""

import argparse
import os
import resource
import tempfile
import time
import warnings

import numpy as np


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cluster(n_workers):
    import distributed

    cluster = distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1,
                                       processes=True, dashboard_address=None, host="127.0.0.1")
    return cluster, distributed.Client(cluster)


def _warm_up(client, fastbp, fdask, layers, X):
    """Compile (or load) the kernels in every worker before the clock starts."""
    import dask.array as da

    net = fastbp.Network(layers, dtype="float32", seed=0)
    Xs = da.from_array(np.zeros((64, layers[0]), np.float32), chunks=(8, -1))
    ys = da.from_array(np.zeros((64, 1), np.float32), chunks=(8, -1))
    fdask.fit(net, Xs, ys, client=client, batch_size=1, average_every=4, verbose=0,
              optimizer=fastbp.SGD(0.001))


def _throughput(n_workers, paths, rows, chunk_rows, epochs, fastbp, fdask):
    cluster, client = _cluster(n_workers)
    try:
        _warm_up(client, fastbp, fdask, [20, 64, 64, 1], None)
        X = fdask.from_npy(paths[0], chunk_rows)
        y = fdask.from_npy(paths[1], chunk_rows)
        net = fastbp.Network([20, 64, 64, 1], dtype="float32", seed=0)
        start = time.perf_counter()
        hist = fdask.fit(net, X, y, client=client, epochs=epochs, batch_size=1,
                         optimizer=fastbp.SGD(0.001), verbose=0)
        seconds = time.perf_counter() - start
        loss = fdask.evaluate(net, X, y)
        return {"workers": n_workers, "seconds": seconds, "rate": rows * epochs / seconds,
                "loss": hist.history["loss"][-1], "evaluate": loss,
                "assignment": [len(a) for a in hist.assignment]}
    finally:
        client.close()
        cluster.close()


def _round_overhead(fastbp, fdask, widths, rounds=60):
    """ms per averaging round with two workers and one row each per round, per network."""
    import dask.array as da

    cluster, client = _cluster(2)
    out = []
    try:
        rng = np.random.default_rng(0)
        for width in widths:
            layers = [20, width, width, 1]
            n = 2 * rounds
            Xd = da.from_array(rng.standard_normal((n, 20)).astype(np.float32), chunks=(n // 2, -1))
            yd = da.from_array(rng.standard_normal((n, 1)).astype(np.float32), chunks=(n // 2, -1))
            _warm_up(client, fastbp, fdask, layers, None)
            net = fastbp.Network(layers, dtype="float32", seed=0)
            start = time.perf_counter()
            hist = fdask.fit(net, Xd, yd, client=client, batch_size=1, average_every=1,
                             optimizer=fastbp.SGD(1e-4), shuffle=False, verbose=0)
            seconds = time.perf_counter() - start
            trained = max(len(a) for a in hist.assignment)
            n_rounds = rounds if trained == 1 else n
            out.append((net.count_params(), 1000 * seconds / n_rounds))
    finally:
        client.close()
        cluster.close()
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--chunks", type=int, default=8, help="row chunks of the data set")
    parser.add_argument("--dir", default=None, help="where to write the data (a temp dir)")
    args = parser.parse_args()
    warnings.simplefilter("ignore", RuntimeWarning)

    import fastbp
    import fastbp.dask as fdask
    from fastbp.datasets import write_regression

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        paths = write_regression(tmp, args.rows, 20, dtype="float32")
        chunk_rows = -(-args.rows // args.chunks)
        results = [_throughput(n, paths, args.rows, chunk_rows, args.epochs, fastbp, fdask)
                   for n in (1, 2)]
    overhead = _round_overhead(fastbp, fdask, (64, 256, 1024))

    print(f"fastbp {fastbp.__version__}, {args.rows:,} rows x 20 float32 (memory-mapped .npy, "
          f"{args.chunks} chunks), 20-64-64-1, per-sample SGD(0.001), {args.epochs} epoch(s), "
          f"default average_every, {os.cpu_count()} CPUs")
    print(f"| workers | chunks per worker | seconds | samples/s | final loss (epoch) | "
          f"loss (evaluate) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['workers']} | {r['assignment']} | {r['seconds']:.2f} | {r['rate']:,.0f} | "
              f"{r['loss']:.4f} | {r['evaluate']:.4f} |")
    print(f"speedup 2 vs 1 workers: {results[1]['rate'] / results[0]['rate']:.2f}x")
    print(f"driver RSS: {_rss_mb():.0f} MB now, {_peak_mb():.0f} MB peak")
    print("| parameters | ms per averaging round (2 workers) |")
    print("|---|---|")
    for count, ms in overhead:
        print(f"| {count:,} | {ms:.2f} |")


if __name__ == "__main__":
    main()

"""``fastbp bench --dask 1,2``: W2 trained on LocalClusters of 1, 2, ... Dask workers.

For each worker count ``N`` it starts a :class:`distributed.LocalCluster` of
``N`` single-threaded worker processes (loopback TCP, no dashboard) and trains
the 20-64-64-1 ReLU net of workload W2 by per-sample SGD with
:func:`fastbp.dask.fit` on one generated float32 regression set
(:func:`fastbp.datasets.write_regression`, memory-mapped ``.npy`` files read
on the workers with :func:`fastbp.dask.from_npy`), with the default
``average_every``.  It prints samples/s and the ratio to the first count,
the final training loss of each run and its difference to the first run's,
the driver's resident memory, and the overhead of one averaging round (rounds
of one row per worker, so that the kernels cost nothing) for the W2 net and
for larger ones, measured on the cluster with the most workers.

Also used by the asv suite (``benchmarks/benchmarks/bench_dask.py``).  Dask is
imported by the functions here, not by the module, so ``fastbp bench``
without ``--dask`` needs no Dask.
"""

import io
import os
import resource
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np

#: Rows of the generated set, row chunks, and epochs of the timed fit (``fastbp bench --dask``).
ROWS = 1_000_000
CHUNKS = 8
EPOCHS = 1
#: Hidden widths of the ``20-w-w-1`` networks whose averaging round is timed (64: W2's net).
OVERHEAD_WIDTHS = (64, 256, 1024)
#: Rounds (of one row per worker) per timed network; the median interval is reported.
OVERHEAD_ROUNDS = 40
#: Learning rate of the timed fits (W2's plain SGD).
LEARNING_RATE = 1e-3
#: Seconds any start of, or wait on, a cluster may take.
TIMEOUT = 60

_LAYERS = [20, 64, 64, 1]


def rss_mb():
    """The resident memory of this process now, in MiB (``/proc/self/statm``; NaN elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def peak_rss_mb():
    """The peak resident memory of this process so far, in MiB (``getrusage``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def local_cluster(n_workers):
    """``(cluster, client)``: ``n_workers`` single-threaded worker processes on loopback.

    Waits (at most :data:`TIMEOUT` seconds) until every worker has joined.
    """
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(
            "fastbp bench --dask needs Dask's distributed scheduler, which is not installed "
            f"({exc}). Install it with `pip install 'fastbp[dask]'`.") from exc
    cluster = distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1,
                                       processes=True, dashboard_address=None,
                                       host="127.0.0.1")
    try:
        client = distributed.Client(cluster, timeout=TIMEOUT)
        client.wait_for_workers(n_workers, timeout=TIMEOUT)
    except BaseException:
        cluster.close()
        raise
    return cluster, client


def _clock():
    """A callback that records ``(seconds since it was made, epoch, running loss)`` per round."""
    from .callbacks import Callback

    class Clock(Callback):
        def __init__(self):
            self.start = time.perf_counter()
            self.points = []

        def on_chunk_end(self, epoch, logs=None):
            self.points.append((time.perf_counter() - self.start, epoch, logs["loss"]))

    return Clock()


def _warm_up(client, layers, backend):
    """Compile (or load) the kernels and open a trainer in every worker before timing."""
    import dask.array as da

    import fastbp
    import fastbp.dask as fdask

    n = 16 * len(client.scheduler_info(n_workers=-1)["workers"])
    net = fastbp.Network(layers, dtype="float32", backend=backend, seed=0)
    X = da.from_array(np.zeros((n, layers[0]), np.float32), chunks=(8, -1))
    y = da.from_array(np.zeros((n, 1), np.float32), chunks=(8, -1))
    fdask.fit(net, X, y, client=client, batch_size=1, average_every=4, verbose=0,
              optimizer=fastbp.SGD(LEARNING_RATE))


def _placed(client, a, addresses):
    """Dask array ``a`` with its chunk ``i`` of ``n`` computed and held on ``addresses[i*N//n]``."""
    import dask.array as da
    import distributed

    blocks = a.to_delayed().ravel()
    futures = [client.compute(block, workers=[addresses[i * len(addresses) // len(blocks)]])
               for i, block in enumerate(blocks)]
    distributed.wait(futures, timeout=TIMEOUT)
    return da.concatenate([da.from_delayed(f, (rows,) + a.shape[1:], a.dtype)
                           for f, rows in zip(futures, a.chunks[0])])


def measure_throughput(client, paths, chunk_rows, epochs=EPOCHS, backend="auto", workers=None):
    """One timed :func:`fastbp.dask.fit` of W2 on ``paths`` (``(X.npy, y.npy)``) with ``client``.

    ``workers``: None (every worker of ``client``; each chunk is read by the
    fit, on the worker that trains it, inside the timed part), or the
    addresses of the workers to train on: the chunks are read into their
    memory first (contiguous shares) and the others hold none, so they idle.

    Returns
    -------
    dict
        ``workers`` (count), ``seconds``, ``rate`` (samples/s over all
        epochs), ``loss`` (the last epoch's), ``evaluate`` (mean loss on all
        rows after the fit), ``chunks`` (chunks per worker), ``rss_mb``
        (driver, after the fit), ``worker_peak_mb`` (each training worker's
        peak resident memory, in worker order), ``held_mb`` (the converted
        rows each worker held), ``backend`` (the network's, resolved) and
        ``curve`` (``(seconds, epoch, running epoch loss)`` at every round).
    """
    import fastbp
    import fastbp.dask as fdask

    n_workers = len(client.scheduler_info(n_workers=-1)["workers"])
    _warm_up(client, _LAYERS, backend)
    X = fdask.from_npy(paths[0], chunk_rows)
    y = fdask.from_npy(paths[1], chunk_rows)
    if workers is not None:
        n_workers = len(workers)
        X, y = _placed(client, X, workers), _placed(client, y, workers)
    net = fastbp.Network(_LAYERS, dtype="float32", backend=backend, seed=0)
    clock = _clock()
    start = time.perf_counter()
    clock.start = start
    hist = fdask.fit(net, X, y, client=client, epochs=epochs, batch_size=1,
                     optimizer=fastbp.SGD(LEARNING_RATE), callbacks=[clock], verbose=0)
    seconds = time.perf_counter() - start
    trained = [w for w in hist.workers if w in client.scheduler_info(n_workers=-1)["workers"]]
    peaks = client.run(peak_rss_mb, workers=trained)
    row_bytes = (X.shape[1] + (y.shape[1] if y.ndim > 1 else 1)) * np.dtype(np.float32).itemsize
    return {"workers": n_workers, "seconds": seconds, "rate": X.shape[0] * epochs / seconds,
            "loss": hist.history["loss"][-1], "evaluate": fdask.evaluate(net, X, y),
            "chunks": [len(a) for a in hist.assignment], "rss_mb": rss_mb(),
            "worker_peak_mb": [peaks.get(w, float("nan")) for w in hist.workers],
            "held_mb": [sum(X.chunks[0][c] for c in a) * row_bytes / 2**20
                        for a in hist.assignment],
            "backend": net.backend, "curve": clock.points}


def measure_round_overhead(client, widths=OVERHEAD_WIDTHS, rounds=OVERHEAD_ROUNDS,
                           backend="auto"):
    """Milliseconds per averaging round on ``client``'s workers, per ``20-w-w-1`` network.

    Each worker trains one row per round (``batch_size=1, average_every=1``),
    so a round costs its scheduler round trip, sending the parameters both
    ways and averaging them.  The figure is the median interval between two
    rounds' ends (the first round, which opens the workers' trainers, is left
    out).

    Returns
    -------
    list of (int, float)
        ``(parameter count, ms per round)`` per width.
    """
    import dask.array as da

    import fastbp
    import fastbp.dask as fdask

    n_workers = len(client.scheduler_info(n_workers=-1)["workers"])
    rounds = max(int(rounds), 3)
    rng = np.random.default_rng(0)
    out = []
    for width in widths:
        layers = [20, int(width), int(width), 1]
        n = n_workers * rounds
        # one chunk of `rounds` rows per worker (chunk i is read on worker i)
        X = da.from_array(rng.standard_normal((n, 20)).astype(np.float32), chunks=(rounds, -1))
        y = da.from_array(rng.standard_normal((n, 1)).astype(np.float32), chunks=(rounds, -1))
        _warm_up(client, layers, backend)
        net = fastbp.Network(layers, dtype="float32", backend=backend, seed=0)
        clock = _clock()
        fdask.fit(net, X, y, client=client, batch_size=1, average_every=1, shuffle=False,
                  optimizer=fastbp.SGD(1e-4), callbacks=[clock], verbose=0)
        ends = [t for t, _, _ in clock.points]
        gaps = np.diff(ends)[1:] if len(ends) > 2 else np.diff(ends)
        out.append((net.count_params(), 1000 * float(statistics.median(gaps))))
    return out


def measure_dask(workers=(1, 2), rows=ROWS, chunks=CHUNKS, epochs=EPOCHS,
                 widths=OVERHEAD_WIDTHS, rounds=OVERHEAD_ROUNDS, backend="auto", directory=None,
                 one_cluster=False):
    """Train W2 on a LocalCluster of each worker count in ``workers``, in turn.

    Parameters
    ----------
    workers : sequence of int
        Worker counts; one cluster is started (and closed) per count.
    rows, chunks, epochs : int
        Rows of the generated float32 set, its row chunks, epochs of each fit.
    widths : sequence of int
        Hidden widths of the networks whose round overhead is timed, on the
        cluster of the largest count (empty: not timed).
    rounds : int
        Rounds per overhead measurement.
    backend : str
        The networks' backend (every worker must have it).
    directory : str, optional
        Where the data set is written (a temporary directory, removed after).
    one_cluster : bool, default False
        Start one cluster of the largest count only and train each count's
        fit on that many of its workers, the rows read into their memory
        before the clock starts (see :func:`measure_throughput`): one cluster
        start instead of one per count (what the asv benchmark uses).

    Returns
    -------
    dict
        ``runs`` (one :func:`measure_throughput` dict per count, in order),
        ``overhead`` (:func:`measure_round_overhead`'s list),
        ``overhead_workers``, ``rows``, ``chunks``, ``epochs``, ``backend``,
        ``peak_rss_mb`` (driver).
    """
    from .datasets import write_regression

    workers = [int(w) for w in workers]
    if not workers or min(workers) < 1:
        raise ValueError(f"workers: expected worker counts >= 1 such as (1, 2); found "
                         f"{workers!r}.")
    rows, chunks = int(rows), int(chunks)
    if rows < chunks or chunks < 1:
        raise ValueError(f"rows, chunks: expected 1 <= chunks <= rows; found rows={rows}, "
                         f"chunks={chunks}. Pass fewer chunks or more rows.")
    chunk_rows = -(-rows // chunks)
    runs, overhead = [], []
    biggest = max(workers)
    with warnings.catch_warnings(), tempfile.TemporaryDirectory(dir=directory) as tmp:
        # LocalCluster's notes (ports, memory limits) are not the benchmark's
        warnings.simplefilter("ignore", UserWarning)
        paths = write_regression(tmp, rows, 20, dtype="float32")
        if one_cluster:
            cluster, client = local_cluster(biggest)
            try:
                addresses = sorted(client.scheduler_info(n_workers=-1)["workers"])
                for n in workers:
                    runs.append(measure_throughput(client, paths, chunk_rows, epochs, backend,
                                                   workers=addresses[:n]))
                if widths:
                    overhead = measure_round_overhead(client, widths, rounds, backend)
            finally:
                client.close()
                cluster.close()
        done_overhead = one_cluster
        for n in workers if not one_cluster else ():
            cluster, client = local_cluster(n)
            try:
                runs.append(measure_throughput(client, paths, chunk_rows, epochs, backend))
                if n == biggest and widths and not done_overhead:
                    overhead = measure_round_overhead(client, widths, rounds, backend)
                    done_overhead = True
            finally:
                client.close()
                cluster.close()
    return {"runs": runs, "overhead": overhead, "overhead_workers": biggest, "rows": rows,
            "chunks": chunks, "epochs": int(epochs), "backend": backend,
            "peak_rss_mb": peak_rss_mb()}


def _percent(value, base):
    return 100.0 * (value - base) / base if base else float("nan")


def report(results, out=None):
    """Print :func:`measure_dask`'s ``results`` as Markdown tables."""
    from . import __version__

    out = sys.stdout if out is None else out
    runs = results["runs"]
    first = runs[0]
    print(f"fastbp {__version__} on Dask: {results['rows']:,} rows x 20 float32 (memory-mapped "
          f".npy, {results['chunks']} chunks), 20-64-64-1 relu, per-sample SGD({LEARNING_RATE}), "
          f"{results['epochs']} epoch(s), default average_every, backend "
          f"{first.get('backend', results['backend'])}; LocalCluster of N single-threaded "
          f"worker processes, {os.cpu_count()} CPUs here", file=out)
    print(f"| workers | chunks per worker | seconds | samples/s | x w={first['workers']} | "
          f"final loss (epoch) | vs w={first['workers']} | loss (evaluate) | "
          f"vs w={first['workers']} | driver RSS | worker peak RSS (rows held) |", file=out)
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|", file=out)
    for r in runs:
        print(f"| {r['workers']} | {', '.join(map(str, r['chunks']))} | {r['seconds']:.2f} | "
              f"{r['rate']:,.0f} | {r['rate'] / first['rate']:.2f} | {r['loss']:.5g} | "
              f"{_percent(r['loss'], first['loss']):+.1f}% | {r['evaluate']:.5g} | "
              f"{_percent(r['evaluate'], first['evaluate']):+.1f}% | {r['rss_mb']:.0f} MB | "
              + ", ".join(f"{p:.0f} MB ({h:.0f} MB)" for p, h in
                          zip(r.get("worker_peak_mb", ()), r.get("held_mb", ())))
              + " |", file=out)
    print(f"driver peak RSS: {results['peak_rss_mb']:.0f} MB", file=out)
    print("| workers | epoch | wall time at its end | epoch loss |", file=out)
    print("|---|---|---:|---:|", file=out)
    for r in runs:
        ends = {}
        for seconds, epoch, loss in r["curve"]:
            ends[epoch] = (seconds, loss)
        for epoch, (seconds, loss) in sorted(ends.items()):
            print(f"| {r['workers']} | {epoch + 1} | {seconds:.2f} s | {loss:.5g} |", file=out)
    if results["overhead"]:
        print(f"| parameters | ms per averaging round ({results['overhead_workers']} "
              f"worker(s), one row each) |", file=out)
        print("|---:|---:|", file=out)
        for count, ms in results["overhead"]:
            print(f"| {count:,} | {ms:.1f} |", file=out)
    out.flush()


def plot_curves(runs, path):
    """Draw each run's running epoch loss against wall time into the image file ``path``.

    ``runs``: dicts with ``workers`` and ``curve`` (as :func:`measure_throughput`
    returns).  Needs matplotlib (``pip install 'fastbp[plot]'``).
    """
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError(f"--plot needs matplotlib, which is not installed ({exc}). Install "
                          "it with `pip install 'fastbp[plot]'`, or leave --plot out.") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for r in runs:
        curve = r["curve"]
        ax.plot([p[0] for p in curve], [p[2] for p in curve], marker=".",
                label=f"{r['workers']} Dask worker{'s' if r['workers'] != 1 else ''}")
    ax.set_xlabel("wall time since fit started (s)")
    ax.set_ylabel("running epoch loss (mse)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    # rendered in memory, then written as model files are: never through a link at the path
    buffer = io.BytesIO()
    fig.savefig(buffer, format=os.path.splitext(str(path))[1].lower().lstrip(".") or "png",
                dpi=100)
    plt.close(fig)
    _files.atomic_write(path, [buffer.getvalue()], "--plot")


def run_dask(workers, rows=ROWS, chunks=CHUNKS, epochs=EPOCHS, rounds=OVERHEAD_ROUNDS,
             widths=OVERHEAD_WIDTHS, backend="auto", plot=None, out=None):
    """``fastbp bench --dask``: :func:`measure_dask`, :func:`report`, and the plot if asked for.

    Returns :func:`measure_dask`'s results.
    """
    results = measure_dask(workers, rows, chunks, epochs, widths, rounds, backend)
    report(results, out)
    if plot:
        plot_curves(results["runs"], plot)
    return results

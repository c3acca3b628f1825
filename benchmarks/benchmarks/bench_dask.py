"""Speedup of ``fastbp.dask.fit`` with two Dask workers over one (W2, per-sample SGD).

``fastbp._bench_dask.measure_dask`` (what ``fastbp bench --dask 1,2`` runs)
on a ``LocalCluster`` of two single-threaded worker processes (loopback),
started and closed inside the benchmark: a cluster cannot be shared through
``setup_cache``, which runs in another process.  To keep the smoke run short
(``asv run --quick`` in CI: about 10 s, most of it starting the cluster and
loading the kernels in its workers) the benchmark starts one cluster, not one
per count: the one-worker fit trains on one of its two workers (the rows of
each fit are read into its workers' memory before the clock starts, the other
worker holds none and idles), and the set is small, 200,000 float32 rows in
4 chunks (about 0.3 s of training per count on a compiled backend).
``fastbp bench --dask 1,2`` starts a cluster per count instead, on 1 M rows.
On a machine whose two vCPUs do not give two cores of floating-point
throughput the ratio stays well under 2.
"""

from fastbp._bench_dask import measure_dask

from .common import BACKENDS, require_backend

#: Rows of the generated float32 set and its row chunks (two per worker with two workers).
ROWS = 200_000
CHUNKS = 4


class SpeedupDask:
    """samples/s with two Dask workers over samples/s with one, same data and settings."""

    # the first compiled backend only: each parameter costs a cluster start
    params = [[b for b in BACKENDS if b in ("numba", "cython")][:1] or ["numba"]]
    param_names = ["backend"]
    timeout = 300
    # one measurement starts a cluster: asv's repeats would multiply that
    number = 1
    repeat = 1

    def setup(self, backend):
        try:
            import distributed  # noqa: F401
        except ImportError as exc:
            raise NotImplementedError(f"fastbp.dask needs dask[distributed]: {exc}") from None
        require_backend(backend)

    def track_speedup_dask(self, backend):
        runs = measure_dask((1, 2), rows=ROWS, chunks=CHUNKS, widths=(), backend=backend,
                            one_cluster=True)["runs"]
        return round(runs[1]["rate"] / runs[0]["rate"], 2)

    track_speedup_dask.unit = "x"

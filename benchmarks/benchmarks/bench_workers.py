"""Speedup of ``workers=2`` over one worker (``Network.fit``/``predict(workers=N)``).

Parametrised over the compiled CPU backends x the workloads of
``fastbp._bench.WORKER_WORKLOADS`` (per-sample W2 and W3 by local SGD, W2
with batch 256 split exactly, predict on 1M rows) x dtype; both worker
counts are timed in the same process, in turn, by ``_bench.measure_workers``.
On a one-core machine the ratio is ~1 (the workers take turns).
"""

from fastbp._bench import WORKER_WORKLOADS, measure_workers

from .common import BACKENDS, DTYPES, REPEATS, require_backend


class SpeedupWorkers:
    """samples/s with two workers over samples/s with one, same process."""

    params = [[b for b in BACKENDS if b in ("numba", "cython")] or ["numba"],
              list(WORKER_WORKLOADS), DTYPES]
    param_names = ["backend", "workload", "dtype"]
    timeout = 600

    def setup(self, backend, workload, dtype):
        require_backend(backend)

    def track_speedup_workers(self, backend, workload, dtype):
        rates = measure_workers(workload, backend, dtype, (1, 2), repeats=min(REPEATS, 3))
        return round(rates[2][0] / rates[1][0], 2)

    track_speedup_workers.unit = "x"

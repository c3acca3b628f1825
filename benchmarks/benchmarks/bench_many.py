"""``fastbp.fit_many``: K networks at once against K sequential fits (``fit_many(workers=N)``).

Parametrised over the compiled CPU backends x dtype x worker count; the
sequential fits and ``fit_many`` are timed in the same process, in turn, by
``_bench.measure_many`` (8 networks of the W2 net, per-sample SGD).  On a
one-core machine the ``workers=2`` ratio is ~1 (the threads take turns).
"""

from fastbp._bench import MANY_WORKERS, measure_many

from .common import BACKENDS, DTYPES, REPEATS, require_backend

#: networks per measurement
N_NETWORKS = 8


class FitMany:
    """Aggregate samples/s of fit_many over K sequential fits of the same networks."""

    params = [[b for b in BACKENDS if b in ("numba", "cython")] or ["numba"], DTYPES,
              list(MANY_WORKERS)]
    param_names = ["backend", "dtype", "workers"]
    timeout = 600

    def setup(self, backend, dtype, workers):
        require_backend(backend)

    def track_speedup_many(self, backend, dtype, workers):
        rates = measure_many(N_NETWORKS, backend, dtype, (workers,), repeats=min(REPEATS, 3))
        return round(rates[workers] / rates["sequential"], 2)

    track_speedup_many.unit = "x"

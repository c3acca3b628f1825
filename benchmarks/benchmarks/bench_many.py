"""fit_many: aggregate samples/s of 8 W2 networks (per-sample SGD) over 8 sequential fits.

``fastbp._bench.measure_many`` times the sequential fits and ``fit_many`` at
one and two workers in turn, in the same process; the ratios are tracked.
On a one-core machine the two-worker ratio is ~1 (the threads take turns).
"""

from fastbp._bench import measure_many

from .common import BACKENDS, DTYPES, REPEATS, require_backend


class FitMany:
    """fit_many of 8 networks over 8 fits one after another."""

    params = [[b for b in BACKENDS if b in ("numba", "cython")] or ["numba"], DTYPES, [1, 2]]
    param_names = ["backend", "dtype", "workers"]
    timeout = 600

    def setup(self, backend, dtype, workers):
        require_backend(backend)

    def track_speedup_fit_many(self, backend, dtype, workers):
        rates = measure_many(8, backend, dtype, (workers,), repeats=min(REPEATS, 3),
                             rows=5_000)
        return round(rates[workers] / rates["sequential"], 2)

    track_speedup_fit_many.unit = "x"

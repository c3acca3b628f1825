"""Training throughput of every backend on the workloads W1-W6, and its speedup over NumPy.

Every benchmark here is parametrised over backend x workload x dtype.  The
data sets are written once per run (``setup_cache``); ``setup`` skips a
backend that is not installed and runs one untimed warm-up fit, so JIT
compilation is never timed.
"""

from .common import (BACKENDS, BASELINE, BASELINE_REPEATS, REPEATS, WorkloadBenchmark,
                     fit_epoch, median_epoch_seconds, ready_network, require_backend, rows_for)


class TrainEpoch(WorkloadBenchmark):
    """Wall time of one training epoch (``Network.fit(epochs=1)``, shuffled; SGD, Adam on W5/W6).

    An epoch covers ``common.ROWS[workload]`` rows: the first count for the
    compiled backends, the second (smaller) one for the NumPy backend, so
    compare backends by ``Throughput``, not by these times.
    """

    def time_epoch(self, paths, backend, workload, dtype):
        fit_epoch(self.net, self.X, self.y, workload)


class FitPeakMemory(WorkloadBenchmark):
    """Peak resident memory of a process that loads one workload's data and fits one epoch."""

    def peakmem_fit(self, paths, backend, workload, dtype):
        fit_epoch(self.net, self.X, self.y, workload)


class Throughput(WorkloadBenchmark):
    """Training samples per second over one epoch: rows / median of several epoch times."""

    def track_samples_per_second(self, paths, backend, workload, dtype):
        seconds = median_epoch_seconds(self.net, self.X, self.y, workload, REPEATS)
        return round(self.rows / seconds)

    track_samples_per_second.unit = "samples/s"


class SpeedupOverNumpy(WorkloadBenchmark):
    """How many times faster than the NumPy backend one epoch trains, per sample.

    Both backends are timed in the same process: the median of several epochs
    each, NumPy on a smaller leading slice of the same rows (it runs at tens
    of thousands of samples per second), and the ratio of the per-sample
    times is reported.  The NumPy backend itself is not a parameter.
    """

    params = [[b for b in BACKENDS if b != BASELINE] or [BASELINE],
              *WorkloadBenchmark.params[1:]]

    def setup(self, paths, backend, workload, dtype):
        if backend == BASELINE:
            raise NotImplementedError("the NumPy backend is the baseline")
        require_backend(BASELINE)
        super().setup(paths, backend, workload, dtype)
        rows = rows_for(BASELINE, workload)
        self.base_X, self.base_y = self.X[:rows], self.y[:rows]
        self.base_net = ready_network(BASELINE, workload, dtype, self.base_X, self.base_y)

    def track_speedup_vs_numpy(self, paths, backend, workload, dtype):
        base = median_epoch_seconds(self.base_net, self.base_X, self.base_y, workload,
                                    BASELINE_REPEATS) / self.base_X.shape[0]
        this = median_epoch_seconds(self.net, self.X, self.y, workload,
                                    REPEATS) / self.X.shape[0]
        return round(base / this, 2)

    track_speedup_vs_numpy.unit = "x"

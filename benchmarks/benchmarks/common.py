"""Shared pieces of the fastbp asv suite: parameter lists, data, networks, timing helpers.

Nothing here is a benchmark (asv only collects ``time_*``, ``peakmem_*`` and
``track_*`` names), so importing this module stays cheap: NumPy and fastbp's
public package only.  No backend is imported until a benchmark's ``setup``
asks for one, so a broken or missing backend skips its own benchmarks and
nothing else.
"""

import os
import statistics
import time

import numpy as np

import fastbp
from fastbp import _backends
from fastbp._bench import WORKLOADS, workload_data, workload_network, workload_optimizer


def _gpu_present():
    """Cheap guess whether an NVIDIA GPU is attached, without importing numba.cuda."""
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")


def benchmark_backends():
    """Backends the suite is parametrised over: every registered one, in registry order.

    A new backend joins the suite by being added to the registry.  ``cuda``
    is left out on machines without an NVIDIA device, so that CPU-only
    machines don't report a column of skips.  Backends that are registered
    but not importable here stay in the list and are skipped in ``setup``.
    ``FASTBP_BENCH_BACKENDS=numba,numpy`` sets the list for ad-hoc runs.
    """
    names = [n for n in _backends.backend_names() if n != "cuda" or _gpu_present()]
    wanted = os.environ.get("FASTBP_BENCH_BACKENDS", "").strip()
    if wanted:
        chosen = [w.strip() for w in wanted.split(",") if w.strip()]
        unknown = sorted(set(chosen) - set(_backends.backend_names()))
        if unknown:
            raise ValueError(f"FASTBP_BENCH_BACKENDS: unknown backend(s) {unknown}; "
                             f"expected names from {list(_backends.backend_names())}.")
        return chosen
    return names


BACKENDS = benchmark_backends()
WORKLOAD_NAMES = list(WORKLOADS)          # W1..W6 (fastbp._bench)
DTYPES = ["float64", "float32"]
BASELINE = "numpy"

#: Rows per timed epoch, (compiled backends, NumPy backend).  Tuned so one
#: epoch takes roughly 0.05-0.3 s at the fastbp._bench targets (compiled) and at
#: the measured speed of the NumPy loop (~45-75 k/s W1, ~25-40 k/s W2,
#: ~7-17 k/s W3, ~0.4-0.75 M/s W4 on one Zen3 core).  The NumPy backend trains on the
#: first rows of the same data; speedups compare time per sample.
ROWS = {
    "W1": (2_000_000, 5_000),
    "W2": (50_000, 2_500),
    "W3": (4_000, 800),
    "W4": (100_000, 40_000),
    "W5": (50_000, 2_500),
    "W6": (4_000, 800),
}

LEARNING_RATE = 1e-3


def _env_int(name, default):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{name}: expected a positive integer; found {raw!r}.")
    return int(raw)


#: Timed epochs per measurement inside the track_* benchmarks (median taken),
#: for the backend and for the NumPy baseline.  ``FASTBP_BENCH_REPEATS=1``
#: sets both to one, which is what a smoke run (``asv run --quick``) wants.
REPEATS = _env_int("FASTBP_BENCH_REPEATS", 5)
BASELINE_REPEATS = _env_int("FASTBP_BENCH_REPEATS", 3)


def rows_for(backend, workload):
    """Rows one timed epoch of ``workload`` trains on with ``backend``."""
    compiled, baseline = ROWS[workload]
    return baseline if backend == BASELINE else compiled


def batch_size(workload):
    return WORKLOADS[workload][2]


def _required():
    raw = os.environ.get("FASTBP_BENCH_REQUIRE", "")
    return {name.strip() for name in raw.split(",") if name.strip()}


def require_backend(backend):
    """Skip (asv: NotImplementedError in setup) if ``backend`` does not import here.

    Backends named in ``FASTBP_BENCH_REQUIRE`` (comma-separated, e.g. in CI)
    fail instead of skipping, so a broken backend cannot pass as "not installed".
    """
    error = _backends.import_error(backend)
    if error is None:
        return
    message = f"fastbp backend {backend!r} is not available: {error}"
    if backend in _required():
        raise RuntimeError(message + " (it is listed in FASTBP_BENCH_REQUIRE)")
    raise NotImplementedError(message)


# ---------------------------------------------------------------------- data
def make_datasets():
    """Write every workload's data set once, as .npy files; return their absolute paths.

    Used as asv ``setup_cache``: it runs once per suite run, in a directory
    that asv keeps for the run.  Files rather than a returned dict of arrays
    keep each benchmark process loading (and holding in memory) only the one
    data set it trains on, which keeps ``peakmem_*`` about that workload.
    """
    paths = {}
    for workload in WORKLOAD_NAMES:
        n = max(ROWS[workload])
        X, y = workload_data(workload, "float64", rows=n, seed=0)
        for dtype in DTYPES:
            stem = os.path.abspath(f"fastbp-{workload}-{dtype}")
            np.save(stem + "-X.npy", X.astype(dtype))
            np.save(stem + "-y.npy", y.astype(dtype))
            paths[f"{workload}-{dtype}"] = (stem + "-X.npy", stem + "-y.npy")
    return paths


_loaded = {}


def load_dataset(paths, workload, dtype, rows):
    """The first ``rows`` rows of a data set written by :func:`make_datasets`.

    Kept in memory across asv's repeated calls of ``setup`` in one process.
    """
    key = paths[f"{workload}-{dtype}"]
    if key not in _loaded:
        _loaded.clear()
        _loaded[key] = (np.load(key[0]), np.load(key[1]))
    X, y = _loaded[key]
    if rows > X.shape[0]:
        raise ValueError(f"{workload}: {rows} rows asked for, the data set has {X.shape[0]}")
    # Leading slices of C-contiguous arrays: contiguous views, no copy.
    return X[:rows], y[:rows]


# ---------------------------------------------------------------------- training
def fit_epoch(net, X, y, workload):
    """One training epoch through the public API, as a user runs it."""
    net.fit(X, y, epochs=1, batch_size=batch_size(workload),
            optimizer=workload_optimizer(workload),
            shuffle=True, verbose=0)


def ready_network(backend, workload, dtype, X, y):
    """A network for ``workload`` on ``backend`` after one untimed warm-up fit.

    The warm-up trains on a few full batches and one short one, so every
    kernel the timed epoch uses is compiled (or loaded from the on-disk
    cache) before anything is timed.
    """
    net = workload_network(workload, backend, dtype, seed=0)
    warm = min(X.shape[0], 3 * batch_size(workload) + 1)
    fit_epoch(net, X[:warm], y[:warm], workload)
    return net


def median_epoch_seconds(net, X, y, workload, repeats):
    """Median wall time of ``repeats`` training epochs over ``X``/``y``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fit_epoch(net, X, y, workload)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class WorkloadBenchmark:
    """Base for the backend x workload x dtype benchmarks: shared data, skipping, warm-up.

    ``setup_cache`` is defined once here, so asv writes the data sets once per
    run for every class that derives from this one.  ``setup`` skips a backend
    that is not installed and leaves ``self.net`` warmed up on ``self.X``/``self.y``.
    """

    params = [BACKENDS, WORKLOAD_NAMES, DTYPES]
    param_names = ["backend", "workload", "dtype"]
    timeout = 300

    def setup_cache(self):
        return make_datasets()

    def setup(self, paths, backend, workload, dtype):
        require_backend(backend)
        self.rows = rows_for(backend, workload)
        self.X, self.y = load_dataset(paths, workload, dtype, self.rows)
        self.net = ready_network(backend, workload, dtype, self.X, self.y)

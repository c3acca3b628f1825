"""Benchmark workloads shared by ``fastbp bench`` and the asv suite (W1-W6), and the runner.

Each workload is a network shape, its activations and a batch size; the data
is a fixed synthetic regression set so that every backend sees the same rows.

``run()`` (also ``python -m fastbp._bench``) prints, for every workload, dtype
and installed backend:

* **epoch/s**: samples per second of one ``Network.fit(epochs=1,
  shuffle=True)`` after a warm-up fit, median of ``repeats`` epochs: what a
  user sees, including the per-epoch shuffle and the per-chunk bookkeeping
  of ``network.py``;
* **kernel/s**: the same epoch's ``train_chunk`` calls alone (a pre-drawn
  permutation, chunks of ``FASTBP_CHUNK_ROWS``): the compiled loop itself;
* **GFLOP/s** from the kernel rate and :func:`flops_per_sample` (the
  multiply-adds of forward, backward and update, 2 flops each), and that
  figure as a **% of the single-core matmul peak** measured in the same run
  (NumPy ``matmul`` of 1024x1024 in a subprocess pinned to one thread
  through the BLAS thread variables).  That reference is the BLAS NumPy
  ships, at the vector width its kernel choice uses: where it picks 256-bit
  kernels on a CPU with 512-bit vectors, kernels built for the host (Numba,
  the Cython backend's AVX-512 copy) can pass 100%;
* **x numpy**: the epoch rate and the kernel rate over the NumPy backend's,
  which is measured on fewer rows (its per-sample Python loop is ~1000x
  slower).  The epoch rate includes the shuffle (each chunk's slice of the
  epoch's row order, ``fastbp._shuffle``) and the random access to the rows
  it brings; ``benchmarks/epoch_cost.py`` splits an epoch into its parts;
* the target for the compiled backends, and whether the kernel
  rate meets it.

Timings are wall-clock on a single thread (the kernels are single-threaded);
run it on a quiet machine.
"""

import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

#: name -> (layer widths, hidden activation, batch size, rows per timed epoch)
WORKLOADS = {
    "W1": ((2, 2, 1), "linear", 1, 1_000_000),
    "W2": ((20, 64, 64, 1), "relu", 1, 100_000),
    "W3": ((100, 256, 256, 1), "relu", 1, 10_000),
    "W4": ((20, 64, 64, 1), "relu", 32, 200_000),
    "W5": ((20, 64, 64, 1), "relu", 1, 100_000),
    "W6": ((100, 256, 256, 1), "relu", 1, 10_000),
}

#: The optimizer of each workload: plain SGD, except W5 and W6, per-sample
#: Adam (the optimizer most users pick) on the shapes of W2 and W3.
ADAM_WORKLOADS = ("W5", "W6")

#: Targets for the compiled backends, samples/s per dtype: 1.3-3x what a compiled
#: per-sample loop elsewhere (JAX's jit(lax.scan)) reached on one Zen3 core.
TARGETS = {
    "W1": {"float64": 55e6, "float32": 55e6},
    "W2": {"float64": 400e3, "float32": 620e3},
    "W3": {"float64": 22e3, "float32": 45e3},
    "W4": {"float64": 1.0e6, "float32": 1.5e6},
    # 1.3x JAX's jit(lax.scan) of the same per-sample Adam on a Zen3 core
    # (81 k/s, 136 k/s; 7.7 k/s, 18.0 k/s): see benchmarks/jax_side_by_side.py
    "W5": {"float64": 105e3, "float32": 177e3},
    "W6": {"float64": 10e3, "float32": 23.4e3},
}

#: Rows the NumPy backend is timed on (its rate does not depend on the row count).
NUMPY_ROWS = {"W1": 20_000, "W2": 10_000, "W3": 1_000, "W4": 20_000, "W5": 10_000, "W6": 1_000}

#: Learning rate of the benchmark's plain SGD (small: the weights stay finite).
LEARNING_RATE = 1e-3
#: Learning rate of the Adam workloads (Adam's steps are ~lr whatever the gradient).
ADAM_LEARNING_RATE = 1e-4

_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def workload_data(name, dtype="float64", rows=None, seed=0):
    """``(X, y)`` for workload ``name``: inputs in [-1, 1], a smooth nonlinear target."""
    sizes, _, _, default_rows = WORKLOADS[name]
    n = default_rows if rows is None else rows
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1.0, 1.0, size=(n, sizes[0]))
    w = rng.normal(size=(sizes[0], sizes[-1])) / np.sqrt(sizes[0])
    y = np.tanh(X @ w) + 0.05 * rng.normal(size=(n, sizes[-1]))
    return X.astype(dtype), y.astype(dtype)


def workload_network(name, backend, dtype="float64", seed=0):
    """A fresh network for workload ``name`` on ``backend``."""
    from .network import Network

    sizes, activation, _, _ = WORKLOADS[name]
    return Network(list(sizes), activations=activation, dtype=dtype, backend=backend, seed=seed)


def workload_optimizer(name):
    """The optimizer workload ``name`` trains with (a fresh object)."""
    from .optimizers import SGD, Adam

    if name in ADAM_WORKLOADS:
        return Adam(learning_rate=ADAM_LEARNING_RATE)
    return SGD(learning_rate=LEARNING_RATE)


def flops_per_sample(name):
    """Multiply-add flops per training sample of workload ``name`` (2 per multiply-add).

    With ``W`` the kernel weights (sum of ``inputs x units`` over layers),
    ``W1`` the first layer's and ``P`` all parameters, a sample costs ``2W``
    forward, ``2W`` for the weight gradients, ``2(W - W1)`` to carry the
    error back to the hidden layers (not to the inputs), and its share of
    one update per batch, ``2P / batch_size``.  Activations and losses are
    element-wise and not counted, nor is the rest of an optimizer's update
    (Adam's moments, square root and division are counted as plain SGD's
    one multiply-add per parameter).
    """
    from ._backends._layout import n_params

    sizes, _, batch_size, _ = WORKLOADS[name]
    weights = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
    W = sum(weights)
    return 2 * W + 2 * W + 2 * (W - weights[0]) + 2 * n_params(sizes) / batch_size


# ----------------------------------------------------------------------------- measurements
_PEAK_CODE = """
import json, time
import numpy as np
out = {}
for name in ("float64", "float32"):
    a = np.random.default_rng(0).random((1024, 1024)).astype(name)
    b = a.copy()
    a @ b
    best = float("inf")
    for _ in range(7):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    out[name] = 2 * 1024 ** 3 / best / 1e9
print(json.dumps(out))
"""


def matmul_peak():
    """Single-core NumPy matmul GFLOP/s per dtype, measured in a subprocess pinned to one thread.

    Returns ``{"float64": ..., "float32": ...}``, or NaNs if the subprocess failed.
    """
    env = dict(os.environ, **{var: "1" for var in _THREAD_VARS})
    try:
        out = subprocess.run([sys.executable, "-c", _PEAK_CODE], env=env, capture_output=True,
                             text=True, timeout=300, check=True)
        return {k: float(v) for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}
    except (subprocess.SubprocessError, OSError, ValueError, IndexError):
        return {"float64": float("nan"), "float32": float("nan")}


def _median_seconds(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def measure(name, backend, dtype="float64", repeats=5, rows=None):
    """Samples/s of workload ``name`` on ``backend``: ``{"epoch": ..., "kernel": ...}``.

    ``epoch``: ``Network.fit(epochs=1, shuffle=True)`` after a warm-up fit;
    ``kernel``: the backend's ``train_chunk`` over one epoch's chunks alone.
    Both are medians of ``repeats`` runs on ``rows`` rows (default: the
    workload's).
    """
    from . import _backends, _config
    from ._backends import _codes as codes
    sizes, activation, batch_size, default_rows = WORKLOADS[name]
    rows = default_rows if rows is None else rows
    X, y = workload_data(name, dtype, rows=rows)
    net = workload_network(name, backend, dtype)
    optimizer = workload_optimizer(name)
    warm = min(rows, 4 * batch_size + 3)  # compiles (or loads) the kernels
    net.fit(X[:warm], y[:warm], epochs=1, batch_size=batch_size, optimizer=optimizer, verbose=0)

    def epoch():
        net.fit(X, y, epochs=1, batch_size=batch_size, optimizer=optimizer, shuffle=True,
                verbose=0)

    epoch()  # one untimed epoch: caches, page faults, branch predictors
    epoch_s = _median_seconds(epoch, repeats)

    _, kernels = _backends.resolve(backend)
    # the flat parameter buffer (Keras layout, see _layout), a copy of the net's
    params = np.concatenate([w.ravel() for w in net.get_weights()])
    sizes_a = np.array(sizes, dtype=np.int64)
    acts = np.array([codes.ACTIVATIONS[activation]] * (len(sizes) - 2) + [codes.LINEAR],
                    dtype=np.int64)
    code, hyper = optimizer._pack()
    state = np.zeros((codes.N_STATE_SLOTS, params.size), dtype=params.dtype)
    chunk = max(1, _config.chunk_rows() // batch_size) * batch_size
    order = np.random.default_rng(1).permutation(rows)

    def kernel_epoch():
        for start in range(0, rows, chunk):
            kernels.train_chunk(params, sizes_a, acts, codes.MSE, X, y, order[start:start + chunk],
                                batch_size, code, hyper, state, 0)

    kernel_epoch()
    kernel_s = _median_seconds(kernel_epoch, repeats)
    return {"epoch": rows / epoch_s, "kernel": rows / kernel_s}


def _si(x):
    if not np.isfinite(x):
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g}"


def _cpu_name():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(backends=None, workloads=None, dtypes=("float64", "float32"), repeats=5, file=None):
    """Measure the workloads and print the benchmark table.

    Parameters
    ----------
    backends : list of str, optional
        Backends to time; default: every installed CPU backend (NumPy always,
        as the speedup baseline).
    workloads : list of str, optional
        Names from :data:`WORKLOADS`; default all.
    dtypes : sequence of str
    repeats : int
        Timed epochs per figure (the median is reported).
    file : file-like, optional
        Where to print (default ``sys.stdout``).

    Returns
    -------
    list of dict
        One row per (workload, dtype, backend) with the printed figures.
    """
    from . import __version__
    from ._backends import available_backends

    out = sys.stdout if file is None else file
    if backends is None:
        backends = [b for b in available_backends() if b != "cuda"]
    backends = list(backends)
    if "numpy" not in backends:
        backends.append("numpy")  # the speedup baseline
    workloads = list(WORKLOADS) if workloads is None else list(workloads)
    peak = matmul_peak()

    try:
        import numba
        numba_version = numba.__version__
    except ImportError:
        numba_version = "not installed"
    print(f"fastbp {__version__} benchmark: numpy {np.__version__}, numba {numba_version}, "
          f"Python {platform.python_version()}, {_cpu_name()}", file=out)
    print("single-core matmul peak (NumPy, 1 thread, 1024x1024): "
          + ", ".join(f"{d} {peak[d]:.1f} GFLOP/s" for d in dtypes), file=out)
    print(f"epoch/s: fit(epochs=1, shuffle=True), median of {repeats}; kernel/s: the epoch's "
          "train_chunk calls alone; GFLOP/s from kernel/s (multiply-adds of forward, backward "
          "and update, 2 flops each)", file=out)
    print("%peak: of that NumPy matmul (its BLAS may use narrower vectors than the CPU has, "
          "so host-built kernels can pass 100%)", file=out)
    print("x numpy: the epoch and the kernel rate over the NumPy backend's; met: kernel/s "
          "reaches the target", file=out)
    header = (f"{'workload':<26}{'dtype':<9}{'backend':<9}{'epoch/s':>10}{'kernel/s':>10}"
              f"{'GFLOP/s':>9}{'%peak':>7}{'x numpy':>16}{'target':>9}  met")
    print(header, file=out)
    print("-" * len(header), file=out)
    results = []
    for name in workloads:
        sizes, activation, batch_size, rows = WORKLOADS[name]
        label = f"{name} {'-'.join(map(str, sizes))} {activation} b{batch_size}"
        flops = flops_per_sample(name)
        for dtype in dtypes:
            rates = {}
            for backend in ["numpy"] + [b for b in backends if b != "numpy"]:
                if backend == "numpy":
                    n_rows = min(rows, NUMPY_ROWS[name])
                    reps = max(1, min(repeats, 3))
                else:
                    n_rows, reps = rows, repeats
                try:
                    rates[backend] = measure(name, backend, dtype, reps, rows=n_rows)
                except ImportError as exc:
                    print(f"{label:<26}{dtype:<9}{backend:<9}  skipped: {exc}", file=out)
                    continue
            base = rates.get("numpy", {"epoch": float("nan"), "kernel": float("nan")})
            for backend, rate in rates.items():
                gflops = rate["kernel"] * flops / 1e9
                pct = 100 * gflops / peak.get(dtype, float("nan"))
                speedup = rate["epoch"] / base["epoch"]
                kernel_speedup = rate["kernel"] / base["kernel"]
                target = TARGETS[name][dtype] if backend != "numpy" else float("nan")
                met = "" if backend == "numpy" else ("yes" if rate["kernel"] >= target else "NO")
                row = {"workload": name, "dtype": dtype, "backend": backend,
                       "epoch_per_s": rate["epoch"], "kernel_per_s": rate["kernel"],
                       "gflops": gflops, "percent_peak": pct, "speedup": speedup,
                       "kernel_speedup": kernel_speedup, "target": target,
                       "peak_gflops": peak.get(dtype)}
                results.append(row)
                ratio = f"{speedup:.0f}x / {kernel_speedup:.0f}x"
                print(f"{label:<26}{dtype:<9}{backend:<9}{_si(rate['epoch']):>10}"
                      f"{_si(rate['kernel']):>10}{gflops:>9.2f}{pct:>6.1f}%{ratio:>16}"
                      f"{_si(target):>9}  {met}", file=out)
                out.flush()
    return results


#: ``--workers``: name -> (workload whose net and data it uses, batch size, rows, what is timed)
WORKER_WORKLOADS = {
    "W2": ("W2", 1, 200_000, "fit"),
    "W3": ("W3", 1, 20_000, "fit"),
    "W2-b256": ("W2", 256, 400_000, "fit"),
    "predict-1M": ("W2", None, 1_000_000, "predict"),
}


def measure_workers(name, backend, dtype, workers, repeats=3):
    """``{workers: (samples/s median, final loss)}`` of :data:`WORKER_WORKLOADS` ``name``.

    The worker counts are timed in turn within each repeat (so a noisy
    moment hits all of them alike); fits are one epoch of ``shuffle=False``
    from the same initial weights, after a warm-up fit that compiles.
    """
    base, batch_size, rows, kind = WORKER_WORKLOADS[name]
    X, y = workload_data(base, dtype, rows=rows)
    timings = {w: [] for w in workers}
    losses = {}
    for _ in range(repeats):
        for w in workers:
            net = workload_network(base, backend, dtype)
            if kind == "predict":
                net.predict(X[:10_000], workers=w)
                start = time.perf_counter()
                net.predict(X, workers=w)
            else:
                net.fit(X[:2_000], y[:2_000], batch_size=batch_size, verbose=0, workers=w,
                        optimizer=workload_optimizer(base), average_every=500)
                net = workload_network(base, backend, dtype)
                start = time.perf_counter()
                hist = net.fit(X, y, batch_size=batch_size, verbose=0, workers=w,
                               shuffle=False, optimizer=workload_optimizer(base))
                losses[w] = hist.history["loss"][-1]
            timings[w].append(rows / (time.perf_counter() - start))
    return {w: (float(np.median(timings[w])), losses.get(w)) for w in workers}


#: The side-by-side with scikit-learn's MLP: (task, solver, batch size) ->
#: (learning_rate_init, momentum).  Both libraries get the same settings.
MLP_SETTINGS = {("adam", 200): (0.001, 0.9), ("sgd", 1): (0.01, 0.0)}


def mlp_task(task, rows, seed=0):
    """``(X_train, X_test, y_train, y_test, ours, theirs)`` for ``"regression"``/``"classification"``.

    ``make_friedman1(rows, n_features=20)`` (R²) or a 3-class
    ``make_classification`` (accuracy), split 80/20; ``ours``/``theirs`` are
    the fastbp and scikit-learn estimator classes.  Imports scikit-learn.
    """
    from sklearn.datasets import make_classification, make_friedman1
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    from .sklearn import FastBPClassifier, FastBPRegressor
    if task == "regression":
        (X, y), ours, theirs = (make_friedman1(rows, n_features=20, random_state=seed),
                                FastBPRegressor, MLPRegressor)
    else:
        (X, y), ours, theirs = (make_classification(rows, n_features=20, n_informative=10,
                                                    n_classes=3, random_state=seed),
                                FastBPClassifier, MLPClassifier)
    return (*train_test_split(X, y, test_size=0.2, random_state=0), ours, theirs)


def measure_vs_mlp(data, solver, batch_size, epochs, seed, reference_rows=None,
                   blas_threads=1):
    """One fit of each library on ``data`` (:func:`mlp_task`): their samples/s and scores.

    Returns ``((fastbp samples/s, score), (scikit-learn samples/s, score))``.
    Hidden layers (64, 64), ``alpha=0`` for scikit-learn, ``tol=0`` (all
    ``epochs`` run).  scikit-learn trains on the first ``reference_rows`` rows
    (its per-sample SGD is one Python iteration per row: its rate does not
    depend on the row count).  Compile fastbp's kernels first (a small fit)
    for a steady-state rate.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits
    X_train, X_test, y_train, y_test, ours, theirs = data
    lr, momentum = MLP_SETTINGS[(solver, batch_size)]
    common = dict(hidden_layer_sizes=(64, 64), solver=solver, batch_size=batch_size,
                  max_iter=epochs, learning_rate_init=lr, momentum=momentum, tol=0.0,
                  n_iter_no_change=epochs + 1, random_state=seed)
    rows = len(X_train) if reference_rows is None else min(reference_rows, len(X_train))
    results = []
    with threadpool_limits(limits=blas_threads, user_api="blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for est, n in ((ours(**common), len(X_train)), (theirs(alpha=0.0, **common), rows)):
            start = time.perf_counter()
            est.fit(X_train[:n], y_train[:n])
            seconds = time.perf_counter() - start
            results.append((n * epochs / seconds, float(est.score(X_test, y_test))))
    return tuple(results)


def run_workers(backends=None, dtypes=("float64", "float32"), workers=(1, 2), repeats=3,
                out=sys.stdout):
    """Print samples/s at each worker count, the speedup over one worker and the final loss."""
    from . import _parallel
    from ._backends import available_backends

    backends = [b for b in (backends or available_backends()) if b not in ("numpy", "cuda")]
    print(f"{platform.processor() or platform.machine()}, {_parallel.usable_cores()} usable "
          f"cores; one epoch, shuffle=False, median of {repeats} (worker counts in turn)",
          file=out)
    header = f"{'workload':<12}{'dtype':<9}{'backend':<9}" + "".join(
        f"{f'w={w} /s':>12}" for w in workers) + "".join(
        f"{f'x w={w}':>8}" for w in workers[1:]) + "   final loss per worker count"
    print(header, file=out)
    print("-" * len(header), file=out)
    results = []
    for name in WORKER_WORKLOADS:
        for dtype in dtypes:
            for backend in backends:
                rates = measure_workers(name, backend, dtype, workers, repeats)
                one = rates[workers[0]][0]
                row = (f"{name:<12}{dtype:<9}{backend:<9}"
                       + "".join(f"{_si(rates[w][0]):>12}" for w in workers)
                       + "".join(f"{rates[w][0] / one:>7.2f}x" for w in workers[1:]))
                if rates[workers[0]][1] is not None:
                    row += "   " + " ".join(f"{rates[w][1]:.5g}" for w in workers)
                print(row, file=out)
                out.flush()
                results.append({"workload": name, "dtype": dtype, "backend": backend,
                                "rates": {w: r for w, (r, _) in rates.items()},
                                "losses": {w: v for w, (_, v) in rates.items()}})
    return results


#: ``--many K``: the workload of each network, its rows per epoch, and the fit_many worker counts
MANY_WORKLOAD, MANY_ROWS, MANY_WORKERS = "W2", 100_000, (1, 2)


def measure_many(n_networks, backend, dtype, workers=MANY_WORKERS, repeats=3,
                 rows=MANY_ROWS):
    """Aggregate samples/s of K networks: K sequential fits, and ``fit_many`` at each worker count.

    ``{"sequential": rate, 1: rate, 2: rate, ...}``, medians over ``repeats``;
    the configurations are timed in turn within each repeat (a noisy moment
    hits all alike).  Every network is the W2 net (20-64-64-1 relu) trained
    for one epoch of per-sample SGD from its own seed, after a warm-up fit
    that compiles; a rate counts the rows of all networks.
    """
    from ._many import fit_many

    X, y = workload_data(MANY_WORKLOAD, dtype, rows=rows)

    def nets():
        return [workload_network(MANY_WORKLOAD, backend, dtype, seed=k)
                for k in range(n_networks)]

    warm = nets()[:1]
    warm[0].fit(X[:2_000], y[:2_000], batch_size=1, optimizer=workload_optimizer("W2"),
                verbose=0)
    fit_many(warm, X[:2_000], y[:2_000], batch_size=1, verbose=0)

    def sequential():
        for net in nets():
            net.fit(X, y, batch_size=1, optimizer=workload_optimizer(MANY_WORKLOAD), verbose=0)

    def many(w):
        networks = nets()
        fit_many(networks, X, y, batch_size=1, verbose=0, workers=w,
                 optimizers=[workload_optimizer(MANY_WORKLOAD) for _ in networks])

    configs = {"sequential": sequential, **{w: (lambda w=w: many(w)) for w in workers}}
    timings = {name: [] for name in configs}
    for _ in range(repeats):
        for name, function in configs.items():
            start = time.perf_counter()
            function()
            timings[name].append(n_networks * rows / (time.perf_counter() - start))
    return {name: float(np.median(values)) for name, values in timings.items()}


def run_many(n_networks, backends=None, dtypes=("float64", "float32"), workers=MANY_WORKERS,
             repeats=3, out=sys.stdout, rows=MANY_ROWS):
    """Print fit_many's aggregate samples/s and its ratio over K sequential fits."""
    from . import _parallel
    from ._backends import available_backends

    backends = [b for b in (backends or available_backends()) if b not in ("numpy", "cuda")]
    print(f"{_cpu_name()}, {_parallel.usable_cores()} usable cores; {n_networks} networks "
          f"{'-'.join(map(str, WORKLOADS[MANY_WORKLOAD][0]))} per-sample SGD, one epoch of "
          f"{rows:,} rows each; aggregate samples/s, median of {repeats} "
          "(configurations in turn)", file=out)
    header = (f"{'dtype':<9}{'backend':<9}{'sequential':>12}"
              + "".join(f"{f'many w={w}':>12}" for w in workers)
              + "".join(f"{f'x w={w}':>8}" for w in workers))
    print(header, file=out)
    print("-" * len(header), file=out)
    results = []
    for dtype in dtypes:
        for backend in backends:
            rates = measure_many(n_networks, backend, dtype, workers, repeats, rows)
            base = rates["sequential"]
            print(f"{dtype:<9}{backend:<9}{_si(base):>12}"
                  + "".join(f"{_si(rates[w]):>12}" for w in workers)
                  + "".join(f"{rates[w] / base:>7.2f}x" for w in workers), file=out)
            out.flush()
            results.append({"dtype": dtype, "backend": backend, "rates": rates})
    return results


def _positive_int(text):
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, found {text!r}")
    return value


DESCRIPTION = ("Time one training epoch of workloads W1-W6 on each backend and print "
               "samples/s, GFLOP/s, %% of the single-core matmul peak and the speedup over NumPy.")


def add_arguments(parser):
    """Add the benchmark options to ``parser`` (``fastbp bench`` and ``python -m fastbp._bench``).

    Workloads are the keys of :data:`WORKLOADS`; backends come from the registry.
    """
    from ._backends import backend_names

    parser.add_argument("--backends", nargs="+", default=None,
                        choices=[name for name in backend_names() if name != "cuda"],
                        help="backends to time (default: every installed one)")
    parser.add_argument("--workloads", nargs="+", default=None, choices=list(WORKLOADS))
    parser.add_argument("--dtypes", nargs="+", default=["float64", "float32"],
                        choices=["float64", "float32"])
    parser.add_argument("--repeats", type=_positive_int, default=5,
                        help="timed epochs per figure; the median is reported (default 5)")
    parser.add_argument("--workers", type=_worker_list, default=None, metavar="N,N,...",
                        help="instead of the W1-W6 table, time fit/predict at these worker "
                        "counts (e.g. 1,2): per-sample W2 and W3, W2 with batch 256, predict "
                        "on 1M rows; speedups over the first count")
    parser.add_argument("--many", type=_positive_int, default=None, metavar="K",
                        help="instead of the W1-W6 table, time fastbp.fit_many of K W2 "
                        "networks (per-sample SGD) with 1 and 2 workers against K "
                        "sequential fits: aggregate samples/s and the ratios")
    dask = parser.add_argument_group(
        "Dask (needs fastbp[dask])",
        "--dask 1,2 trains the W2 net by per-sample SGD on a generated memory-mapped float32 "
        "set with fastbp.dask.fit on a LocalCluster of N single-threaded worker processes "
        "for each N, instead of the W1-W6 table")
    dask.add_argument("--dask", type=_worker_list, default=None, metavar="N,N,...",
                      help="Dask worker counts (e.g. 1,2): samples/s, ratio to the first count, "
                      "final loss and its difference, driver RSS, ms per averaging round")
    dask.add_argument("--dask-rows", type=_positive_int, default=1_000_000, metavar="ROWS",
                      help="rows of the generated set (default 1000000)")
    dask.add_argument("--dask-chunks", type=_positive_int, default=8, metavar="N",
                      help="row chunks of the set (default 8)")
    dask.add_argument("--dask-epochs", type=_positive_int, default=1, metavar="N",
                      help="epochs of each timed fit (default 1)")
    dask.add_argument("--dask-rounds", type=_positive_int, default=40, metavar="N",
                      help="rounds per averaging-overhead figure (default 40)")
    dask.add_argument("--dask-widths", type=_worker_list, default=[64, 256, 1024],
                      metavar="W,W,...", help="hidden widths of the 20-W-W-1 networks whose "
                      "averaging round is timed (default 64,256,1024; 64 is W2's)")
    dask.add_argument("--plot", default=None, metavar="PNG",
                      help="with --dask: draw the running loss against wall time of each "
                      "count into PNG (needs matplotlib)")
    return parser


def _worker_list(text):
    import argparse

    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected worker counts like 1,2; found {text!r}")
    return values


def main(argv=None, prog="python -m fastbp._bench"):
    """``python -m fastbp._bench [--backends ..] [--workloads ..] [--dtypes ..] [--repeats N]``."""
    import argparse

    parser = add_arguments(argparse.ArgumentParser(prog=prog, description=DESCRIPTION))
    args = parser.parse_args(argv)
    dispatch(args)
    return 0


def dispatch(args):
    """Run what the parsed ``add_arguments`` options ask for."""
    if getattr(args, "many", None):
        run_many(args.many, args.backends, tuple(args.dtypes), repeats=min(args.repeats, 3))
    elif getattr(args, "dask", None):
        from . import _bench_dask

        _bench_dask.run_dask(args.dask, rows=args.dask_rows, chunks=args.dask_chunks,
                             epochs=args.dask_epochs, rounds=args.dask_rounds,
                             widths=args.dask_widths,
                             backend=args.backends[0] if args.backends else "auto",
                             plot=args.plot)
    elif args.workers:
        run_workers(args.backends, tuple(args.dtypes), args.workers, min(args.repeats, 3))
    else:
        run(args.backends, args.workloads, tuple(args.dtypes), args.repeats)


if __name__ == "__main__":
    sys.exit(main())

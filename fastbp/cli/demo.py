"""``fastbp demo``: train 20-64-64-1 per-sample on synthetic rows and report the speedup."""

import time
import warnings

import fastbp

from .. import _backends, _config, _parallel
from ..datasets import make_regression
from .common import BACKENDS, DTYPES, non_negative_int, positive_int, say, workers_count
from .train import TRAIN_DEFAULTS, run_training

DEMO_SAMPLES = 2_000_000
DEMO_NUMPY_SAMPLES = 100_000  # what the demo shrinks to when only the NumPy loop is there


def add_parser(commands):
    """Add ``demo`` to the ``commands`` subparsers; returns its parser."""
    demo = commands.add_parser(
        "demo", help="train 20-64-64-1 per-sample on ~2M synthetic rows and report the speedup",
        description="Generate a synthetic regression set, train a 20-64-64-1 ReLU network with "
        "per-sample SGD on the fastest backend, and print held-out R² against a linear "
        "baseline, samples/s, and the speedup over the NumPy backend measured on a slice.")
    demo.add_argument("--samples", type=positive_int, default=None, metavar="N",
                      help=f"rows to generate (default {DEMO_SAMPLES:,}; "
                      f"{DEMO_NUMPY_SAMPLES:,} when only the NumPy backend is installed)")
    demo.add_argument("--epochs", type=positive_int, default=2, help="(default 2)")
    demo.add_argument("--backend", choices=BACKENDS, default="auto", help="(default auto)")
    demo.add_argument("--dtype", choices=DTYPES, default="float64",
                      help="(default float64)")
    demo.add_argument("--seed", type=non_negative_int, default=0, help="(default 0)")
    demo.add_argument("--workers", type=workers_count, default=-1, metavar="N",
                      help="threads to train with (default -1: every core this process may "
                      "use; 1 is the serial, Keras-exact run)")
    demo.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    demo.set_defaults(run=run)
    return demo



def run(args):
    """Run ``fastbp demo`` with parsed ``args``; returns the exit status."""
    requested = args.backend if args.backend != "auto" else _config.backend()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        backend, _ = _backends.resolve(requested)
    # every core by default: the showcase (the NumPy backend's workers would only take turns)
    workers = 1 if backend == "numpy" else _parallel.check_workers(args.workers)
    samples = args.samples
    if samples is None:
        samples = DEMO_SAMPLES
        if backend == "numpy":
            samples = DEMO_NUMPY_SAMPLES
            why = ("no compiled backend is installed (see `fastbp info`)" if requested == "auto"
                   else "the NumPy backend was asked for")
            say(f"note: {why}; the NumPy loop trains ~20x slower, so the demo uses "
                 f"{samples:,} rows instead of {DEMO_SAMPLES:,} to finish quickly.")
    opts = {**TRAIN_DEFAULTS, "synthetic": samples, "layers": [20, 64, 64, 1],
            "backend": backend, "dtype": args.dtype, "seed": args.seed, "epochs": args.epochs,
            "batch_size": 1, "optimizer": "sgd", "learning_rate": 0.01,
            "validation_split": 0.1, "quiet": args.quiet, "workers": workers}
    banner = (f"fastbp {fastbp.__version__} demo: 20-64-64-1 ReLU network, per-sample SGD "
              f"(batch size 1), {samples:,} synthetic rows, {workers} worker thread"
              f"{'s (local SGD: replicas averaged every round)' if workers > 1 else ''}")
    start = time.perf_counter()
    status = run_training(opts, banner=banner)
    if status:
        return status
    if backend != "numpy":
        _speedup(backend, args.dtype, args.seed, min(samples, 200_000))
    say(f"demo finished in {time.perf_counter() - start:.1f} s")
    return 0


def _speedup(backend, dtype, seed, rows):
    """Time per-sample SGD on a slice of ``rows`` rows with ``backend`` and with NumPy.

    NumPy trains only the first 10,000 rows (about a quarter of a second): its
    rate does not depend on how many rows it sees.
    """
    X, y = make_regression(rows, 20, seed=seed + 1, dtype=dtype)
    rates = {}
    for name, n in ((backend, rows), ("numpy", min(rows, 10_000))):
        net = fastbp.Network([20, 64, 64, 1], dtype=dtype, backend=name, seed=seed)
        net.fit(X[:1000], y[:1000], batch_size=1, verbose=0)  # compile / warm up
        begin = time.perf_counter()
        net.fit(X[:n], y[:n], batch_size=1, shuffle=False, optimizer=fastbp.SGD(0.01),
                verbose=0)
        rates[name] = n / (time.perf_counter() - begin)
    say(f"speed, per-sample SGD on a slice: {backend} {rates[backend]:,.0f} samples/s, numpy "
         f"{rates['numpy']:,.0f} samples/s: {backend} is {rates[backend] / rates['numpy']:.1f}x "
         "faster than the NumPy backend")

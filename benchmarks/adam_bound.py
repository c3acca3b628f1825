"""What bounds per-sample Adam on this CPU: the divider and square-root unit, or the memory streams.

    python benchmarks/adam_bound.py

Per parameter and sample, Adam's update does one square root, one division
and ~8 other flops, and streams three parameter-sized arrays (weights and
the two moments; the per-sample pass forms each gradient in a register).  This script measures, on one thread, in one process:

1. ``sqrt+div``: nanoseconds per element of a loop doing only
   ``a / (sqrt(b) + eps)`` on arrays that stay in L1 -- the throughput of
   the divider and square-root unit at the vector width Numba compiles for;
2. ``update``: nanoseconds per parameter of the whole Adam update (the Numba
   backend's formulas, from a gradient array, state flushed below the
   smallest normal) on
   arrays the size of the W5 (5,569 parameters) and W6 (92,417) nets;
3. ``sgd`` and ``adam``: the per-sample training rates of ``fit(batch_size=1)``
   with plain SGD and with Adam on W5 and W6,

and prints the bound they imply for Adam: the SGD sample time (forward and
backward) plus the update time over all parameters, against the measured
Adam rate.
"""

import math
import sys
import time

import numba
import numpy as np

import fastbp

FASTMATH = {"reassoc", "contract", "nsz", "arcp"}


@numba.njit(fastmath=FASTMATH, error_model="numpy", nogil=True)
def sqrt_div(a, b, out, eps, reps):
    for _ in range(reps):
        for k in range(a.shape[0]):
            out[k] = a[k] / (math.sqrt(b[k]) + eps)


@numba.njit(fastmath=FASTMATH, error_model="numpy", nogil=True)
def adam_update(w, g, m, v, alpha, c1, c2, eps, tiny, reps):
    for _ in range(reps):
        for k in range(w.shape[0]):
            gk = g[k]
            mk = m[k] + (gk - m[k]) * c1
            vk = v[k] + (gk * gk - v[k]) * c2
            w[k] -= alpha * mk / (math.sqrt(vk) + eps)
            if abs(mk) < tiny:
                mk = mk * 0
            if abs(vk) < tiny:
                vk = vk * 0
            m[k] = mk
            v[k] = vk


def _median_ns(fn, elements, repeats=7):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) / elements * 1e9


def _rate(sizes, dtype, optimizer, rows):
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(rows, sizes[0])).astype(dtype)
    y = np.tanh(X[:, :1]).astype(dtype)
    net = fastbp.Network(list(sizes), activations="relu", dtype=dtype, backend="numba")
    net.fit(X[:200], y[:200], batch_size=1, optimizer=optimizer, shuffle=False, verbose=0)
    seconds = _median_ns(lambda: net.fit(X, y, batch_size=1, optimizer=optimizer,
                                         shuffle=False, verbose=0), 1, repeats=5) / 1e9
    return rows / seconds


def main():
    print(f"fastbp {fastbp.__version__}, numba {numba.__version__}, one thread")
    print(f"{'net':<18}{'dtype':<9}{'sqrt+div ns':>12}{'update ns/p':>13}{'sgd k/s':>10}"
          f"{'bound k/s':>11}{'adam k/s':>10}{'of bound':>9}")
    for name, sizes, rows in (("W5 20-64-64-1", (20, 64, 64, 1), 40_000),
                              ("W6 100-256-256-1", (100, 256, 256, 1), 4_000)):
        n_params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
        for dtype in ("float64", "float32"):
            dt = np.dtype(dtype).type
            rng = np.random.default_rng(1)
            a, b = (rng.uniform(0.5, 1.5, 2048).astype(dtype) for _ in range(2))
            out = np.empty_like(a)
            reps = 2000
            div = _median_ns(lambda: sqrt_div(a, b, out, dt(1e-7), reps), a.size * reps)
            w, g = (rng.normal(size=n_params).astype(dtype) for _ in range(2))
            m, v = np.zeros_like(w), np.full_like(w, 1e-4)
            reps = max(1, 2_000_000 // n_params)
            update = _median_ns(lambda: adam_update(w, g, m, v, dt(1e-4), dt(0.1), dt(0.001),
                                                    dt(1e-7), dt(np.finfo(dtype).tiny), reps),
                                n_params * reps)
            sgd = _rate(sizes, dtype, fastbp.SGD(1e-3), rows)
            adam = _rate(sizes, dtype, fastbp.Adam(1e-4), rows)
            bound = 1e9 / (1e9 / sgd + update * n_params)
            print(f"{name:<18}{dtype:<9}{div:>12.3f}{update:>13.3f}{sgd / 1e3:>10.1f}"
                  f"{bound / 1e3:>11.1f}{adam / 1e3:>10.1f}{adam / bound:>8.0%}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Many networks at once on the GPU: aggregate samples/s of the CUDA backend, K networks.

For 20-64-64-1 (``--layers``) relu per-sample SGD on random rows (float32
and float64), train K networks of one shape, each with its own weights and
row order, one epoch over ``--rows`` rows, through the CUDA backend's many-network trainer (a thread block per
network, the rows resident on the device), and print the aggregate
samples/s (K x rows / seconds) for each K, beside one CPU core's Numba rate
for one network measured in the same process, and the ratio.  The last
column is the same through the public API: ``fastbp.fit_many`` of K
networks on the cuda backend, one shuffled epoch each (every network's row
order drawn on the host, one launch per chunk).  A warm-up launch (fit)
compiles the kernel first.

    python benchmarks/gpu_many.py [--ks 1,64,1024,4096] [--rows 20000]

Needs a CUDA GPU (or NUMBA_ENABLE_CUDASIM=1 for a tiny smoke run: the
simulator's figures mean nothing).
"""

import argparse
import time

import numpy as np

import fastbp
from fastbp._backends import _codes as C

LAYERS = (20, 64, 64, 1)


def _networks(layers, k, dtype, backend):
    return [fastbp.Network(list(layers), activations="relu", dtype=dtype, seed=s,
                           backend=backend) for s in range(k)]


def _data(layers, dtype, rows):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(rows, layers[0])).astype(dtype)
    return X, np.tanh(X[:, :layers[-1]]).astype(dtype)


def gpu_rate(k, dtype, rows, layers=LAYERS, batch_size=1):
    """Aggregate samples/s of ``k`` networks trained in one launch per chunk (seconds median of 3)."""
    from fastbp._backends import cuda_
    X, Y = _data(layers, dtype, rows)
    code, hyper = fastbp.SGD(0.001)._pack()
    sizes = np.array(layers, dtype=np.int64)
    acts = np.array([C.RELU] * (len(layers) - 2) + [C.LINEAR], dtype=np.int64)
    params = [net._params.copy() for net in _networks(layers, k, dtype, "numpy")]
    states = [np.zeros((C.N_STATE_SLOTS, p.size), dtype=dtype) for p in params]
    rng = np.random.default_rng(0)
    orders = np.stack([rng.permutation(rows) for _ in range(k)]).astype(np.int64)
    trainer = cuda_.open_many_trainer(params, states, sizes, acts, C.MSE, batch_size,
                                      [code] * k, [hyper] * k)
    try:
        trainer.train_many(X, Y, np.ascontiguousarray(orders[:, :min(rows, 64)]),
                           np.zeros(k, dtype=np.int64))  # compiles, uploads the rows
        times = []
        for _ in range(3):
            start = time.perf_counter()
            trainer.train_many(X, Y, orders, np.zeros(k, dtype=np.int64))
            trainer.finite_many()  # waits for the launch, copies the parameters back
            times.append(time.perf_counter() - start)
    finally:
        trainer.close()
    return k * rows / float(np.median(times))


def fit_many_rate(k, dtype, rows, layers=LAYERS):
    """Aggregate samples/s of ``fastbp.fit_many`` of ``k`` cuda networks, one epoch (median of 3)."""
    X, y = _data(layers, dtype, rows)
    networks = _networks(layers, k, dtype, "cuda")
    optimizers = [fastbp.SGD(0.001)] * k
    fastbp.fit_many(networks, X[:64], y[:64], batch_size=1, optimizers=optimizers, verbose=0)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fastbp.fit_many(networks, X, y, batch_size=1, optimizers=optimizers, verbose=0)
        times.append(time.perf_counter() - start)
    return k * rows / float(np.median(times))


def cpu_rate(dtype, rows, layers=LAYERS):
    """One network on one CPU core (Numba, or the best CPU backend here): samples/s."""
    X, y = _data(layers, dtype, rows)
    backend = "numba" if "numba" in fastbp.available_backends() else "auto"
    net = _networks(layers, 1, dtype, backend)[0]
    net.fit(X[:1000], y[:1000], batch_size=1, verbose=0, optimizer=fastbp.SGD(0.001))
    times = []
    for _ in range(3):
        start = time.perf_counter()
        net.fit(X, y, batch_size=1, shuffle=False, verbose=0, optimizer=fastbp.SGD(0.001))
        times.append(time.perf_counter() - start)
    return rows / float(np.median(times)), net.backend


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="1,64,1024,4096",
                        help="numbers of networks, comma-separated (default 1,64,1024,4096)")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--layers", default="20,64,64,1", help="layer widths (default 20,64,64,1)")
    args = parser.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",")]
    layers = tuple(int(w) for w in args.layers.split(","))
    from numba import cuda

    from fastbp._backends import cuda_
    if cuda_.SIMULATOR:
        device = "Numba's CUDA simulator (a smoke run: the figures mean nothing)"
    else:
        name = cuda.get_current_device().name
        device = name.decode() if isinstance(name, bytes) else str(name)
    print(f"device: {device}; {args.layers.replace(',', '-')} relu per-sample SGD, "
          f"{args.rows:,} rows per network")
    print("| dtype | K networks | GPU aggregate samples/s | one CPU core, one network | ratio "
          "| fit_many samples/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for dtype in args.dtypes.split(","):
        cpu, backend = cpu_rate(dtype, args.rows, layers)
        for k in ks:
            rate = gpu_rate(k, dtype, args.rows, layers)
            api = fit_many_rate(k, dtype, args.rows, layers)
            print(f"| {dtype} | {k:,} | {rate:,.0f} | {cpu:,.0f} ({backend}) | "
                  f"{rate / cpu:.2f}x | {api:,.0f} |", flush=True)


if __name__ == "__main__":
    main()

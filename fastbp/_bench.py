"""Benchmark workloads shared by ``fastbp bench`` and the asv suite (DESIGN §4).

Each workload is a network shape, its activations and a batch size; the data
is a fixed synthetic regression set so that every backend sees the same rows.
"""

import numpy as np

#: name -> (layer widths, hidden activation, batch size, rows per timed epoch)
WORKLOADS = {
    "W1": ((2, 2, 1), "linear", 1, 1_000_000),
    "W2": ((20, 64, 64, 1), "relu", 1, 100_000),
    "W3": ((100, 256, 256, 1), "relu", 1, 10_000),
    "W4": ((20, 64, 64, 1), "relu", 32, 200_000),
}


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

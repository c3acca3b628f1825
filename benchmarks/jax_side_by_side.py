"""Per-sample training beside JAX's compiled scan, in one process: fastbp's rate over JAX's.

    python benchmarks/jax_side_by_side.py                 # every optimizer, both nets, both dtypes
    python benchmarks/jax_side_by_side.py --optimizers adam --repeats 7

For each net (W5-shaped 20-64-64-1 and W6-shaped 100-256-256-1, relu, mse,
batch size 1), dtype and optimizer, it times one epoch of
``Network.fit(epochs=1, batch_size=1, shuffle=False)`` for each compiled
fastbp backend and one ``jax.jit(jax.lax.scan(step))`` over the same rows,
with the same formulas (Keras's: Adam's epsilon on the uncorrected root and
the bias correction folded into the step size; RMSprop's epsilon inside the
root), after a warm-up run of each (JIT time is never timed).  It prints
the medians of ``--repeats`` runs and fastbp's rate over JAX's, and checks
that both ended at the same weights (a benchmark of two different
computations would mean nothing).

JAX is optional: without it the script says so and exits with status 0.
Both sides run on one thread (JAX's CPU client is asked for one device and
XLA's intra-op threads are limited to one); run it on a quiet machine.
"""

import argparse
import os
import sys
import time

# One thread for XLA, set before JAX is imported.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                      "intra_op_parallelism_threads=1")
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

import fastbp  # noqa: E402

NETS = {"W5": ((20, 64, 64, 1), 40_000), "W6": ((100, 256, 256, 1), 4_000)}
LEARNING_RATE = 1e-3
OPTIMIZERS = {
    "sgd": lambda: fastbp.SGD(LEARNING_RATE),
    "momentum": lambda: fastbp.SGD(LEARNING_RATE, momentum=0.9),
    "nesterov": lambda: fastbp.SGD(LEARNING_RATE, momentum=0.9, nesterov=True),
    "adam": lambda: fastbp.Adam(LEARNING_RATE),
    "rmsprop": lambda: fastbp.RMSprop(LEARNING_RATE),
}


def data(sizes, rows, dtype, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1.0, 1.0, size=(rows, sizes[0]))
    w = rng.normal(size=(sizes[0], 1)) / np.sqrt(sizes[0])
    y = np.tanh(X @ w) + 0.05 * rng.normal(size=(rows, 1))
    return X.astype(dtype), y.astype(dtype)


def time_fastbp(backend, sizes, X, y, optimizer, repeats):
    """Median seconds of one per-sample epoch, and the weights after the first timed one."""
    times, weights = [], None
    for r in range(repeats + 1):  # the first run compiles (or loads) the kernels
        net = fastbp.Network(list(sizes), activations="relu", dtype=X.dtype.name,
                             backend=backend, seed=0)
        start = time.perf_counter()
        net.fit(X, y, epochs=1, batch_size=1, shuffle=False, optimizer=optimizer, verbose=0)
        if r:
            times.append(time.perf_counter() - start)
        weights = weights or net.get_weights()
    return float(np.median(times)), weights


def jax_trainer(jax, jnp, name, optimizer):
    """``train(params, state, X, Y) -> (params, state)``: one per-sample epoch, jitted."""
    lr = optimizer.learning_rate

    def forward(params, x):
        a = x
        for i, (K, b) in enumerate(params):
            a = a @ K + b
            if i < len(params) - 1:
                a = jnp.maximum(a, 0)
        return a

    def loss(params, x, y):
        return jnp.mean((forward(params, x) - y) ** 2)

    grad = jax.grad(loss)

    def update(params, state, g, t):
        leaves, tree = jax.tree_util.tree_flatten(params)
        gl = jax.tree_util.tree_leaves(g)
        if name == "sgd":
            return tree.unflatten([w - lr * d for w, d in zip(leaves, gl)]), state
        if name in ("momentum", "nesterov"):
            mu = optimizer.momentum
            ms = [mu * m - lr * d for m, d in zip(state[0], gl)]
            if name == "nesterov":
                new = [w + mu * m - lr * d for w, m, d in zip(leaves, ms, gl)]
            else:
                new = [w + m for w, m in zip(leaves, ms)]
            return tree.unflatten(new), (ms, state[1])
        if name == "adam":
            b1, b2, eps = optimizer.beta_1, optimizer.beta_2, optimizer.epsilon
            tf = t.astype(leaves[0].dtype)
            alpha = lr * jnp.sqrt(1 - b2 ** tf) / (1 - b1 ** tf)
            ms = [m + (d - m) * (1 - b1) for m, d in zip(state[0], gl)]
            vs = [v + (d * d - v) * (1 - b2) for v, d in zip(state[1], gl)]
            new = [w - alpha * m / (jnp.sqrt(v) + eps) for w, m, v in zip(leaves, ms, vs)]
            return tree.unflatten(new), (ms, vs)
        rho, eps = optimizer.rho, optimizer.epsilon
        vs = [rho * v + (1 - rho) * d * d for v, d in zip(state[0], gl)]
        new = [w - lr * d / jnp.sqrt(v + eps) for w, v, d in zip(leaves, vs, gl)]
        return tree.unflatten(new), (vs, state[1])

    def step(carry, xy):
        params, state, t = carry
        x, y = xy
        params, state = update(params, state, grad(params, x[None, :], y[None, :]), t + 1)
        return (params, state, t + 1), None

    @jax.jit
    def train(params, state, X, Y):
        (params, state, _), _ = jax.lax.scan(step, (params, state, jnp.int32(0)), (X, Y))
        return params, state

    return train


def time_jax(jax, jnp, name, optimizer, start_weights, X, y, repeats):
    params = [(jnp.asarray(K), jnp.asarray(b))
              for K, b in zip(start_weights[::2], start_weights[1::2])]
    zeros = [jnp.zeros_like(a) for pair in params for a in pair]
    state = (zeros, [jnp.zeros_like(a) for a in zeros])
    train = jax_trainer(jax, jnp, name, optimizer)
    Xj, yj = jnp.asarray(X), jnp.asarray(y)
    jax.block_until_ready(train(params, state, Xj, yj))  # compile
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = jax.block_until_ready(train(params, state, Xj, yj))
        times.append(time.perf_counter() - start)
        out = out or result[0]
    return float(np.median(times)), [np.asarray(a) for pair in out for a in pair]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    parser.add_argument("--dtypes", nargs="+", default=["float64", "float32"],
                        choices=["float64", "float32"])
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS),
                        choices=list(OPTIMIZERS))
    parser.add_argument("--backends", nargs="+", default=None,
                        help="fastbp backends (default: every installed compiled CPU backend)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    try:
        import jax
        import jax.numpy as jnp
    except ImportError as exc:
        print(f"JAX is not installed ({exc}); nothing to compare. `pip install jax` to run "
              "this benchmark.")
        return 0
    jax.config.update("jax_enable_x64", True)  # float64 arrays stay float64
    backends = args.backends or [b for b in fastbp.available_backends()
                                 if b in ("numba", "cython")]
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; fastbp {fastbp.__version__} "
          f"({', '.join(backends)}); per-sample fit(epochs=1, batch_size=1, shuffle=False), "
          f"relu, mse, medians of {args.repeats}")
    head = f"{'net':<18} {'dtype':<8} {'optimizer':<9} {'jax k/s':>9}"
    for backend in backends:
        head += f" {backend + ' k/s':>11} {'ratio':>6}"
    print(head + "  max |w - w_jax|")
    for net_name in args.nets:
        sizes, rows = NETS[net_name]
        for dtype in args.dtypes:
            X, y = data(sizes, rows, dtype)
            for opt_name in args.optimizers:
                optimizer = OPTIMIZERS[opt_name]()
                start = fastbp.Network(list(sizes), activations="relu", dtype=dtype,
                                       seed=0, backend="numpy").get_weights()
                jax_seconds, jax_weights = time_jax(jax, jnp, opt_name, optimizer, start, X, y,
                                                    args.repeats)
                line = (f"{net_name} {'-'.join(map(str, sizes)):<15} {dtype:<8} {opt_name:<9} "
                        f"{rows / jax_seconds / 1e3:>9.1f}")
                worst = 0.0
                for backend in backends:
                    seconds, weights = time_fastbp(backend, sizes, X, y, optimizer, args.repeats)
                    line += f" {rows / seconds / 1e3:>11.1f} {jax_seconds / seconds:>6.2f}"
                    worst = max(worst, max(float(np.max(np.abs(a - b)))
                                           for a, b in zip(weights, jax_weights)))
                print(f"{line}  {worst:.1e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training loss against wall time for workers = 1, 2, ... (local SGD, per-sample SGD).

    python benchmarks/workers_loss_curve.py [--workers 1,2] [--rows 400000] [--epochs 4]
                                            [--workload W2] [--plot loss_vs_time.png]
                                            [--seeds 1]

Fits the ReLU net of workload W2 (20-64-64-1) or W3 (100-256-256-1) per
sample on the same generated
regression rows with each worker count and prints, at every chunk end, the
wall time and the running mean loss of the epoch so far; the held-out mean
loss after each epoch closes each line of the table, and the final model's
mean loss over the training rows follows it.  ``--plot`` draws the
curves (needs matplotlib).  ``--seeds K`` repeats every fit with the network
seeds 0 to K-1 (each seed sets the initial weights and the shuffle) on the
same rows and ends with the median over the seeds of the final model's
loss for each worker count and of its ratio to the first count's: one
run's trajectory can land a few percent either way.
"""

import argparse
import statistics
import time

import fastbp
from fastbp._bench import workload_data, workload_network


class _Clock(fastbp.Callback):
    def __init__(self):
        self.start = time.perf_counter()
        self.points = []

    def on_chunk_end(self, epoch, logs=None):
        self.points.append((time.perf_counter() - self.start, epoch, logs["loss"]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--workload", default="W2", choices=("W2", "W3"))
    parser.add_argument("--plot", default=None)
    parser.add_argument("--seeds", type=int, default=1)
    args = parser.parse_args()
    X, y = workload_data(args.workload, rows=args.rows + 50_000)
    X_val, y_val = X[args.rows:], y[args.rows:]
    X, y = X[:args.rows], y[:args.rows]
    counts = [int(v) for v in args.workers.split(",")]
    curves = {}
    finals = {w: [] for w in counts}
    for seed in range(args.seeds):
        for w in counts:
            if seed == 0:  # compile (or load) the kernels outside the timed fit
                net = workload_network(args.workload, args.backend)
                net.fit(X[:2000], y[:2000], batch_size=1, verbose=0, workers=w,
                        average_every=500)
            net = workload_network(args.workload, args.backend, seed=seed)
            clock = _Clock()
            hist = net.fit(X, y, epochs=args.epochs, batch_size=1, verbose=0, workers=w,
                           optimizer=fastbp.SGD(0.01), validation_data=(X_val, y_val),
                           callbacks=[clock])
            if seed == 0:
                curves[w] = clock.points
            print(f"seed {seed} workers={w} ({net.backend}): "
                  + "; ".join(f"epoch {e + 1}: {t:.2f} s loss {loss:.5f} val_loss {v:.5f}"
                              for e, (t, loss, v) in enumerate(zip(
                                  [max(p[0] for p in clock.points if p[1] == e)
                                   for e in range(args.epochs)],
                                  hist.history["loss"], hist.history["val_loss"]))))
            # the final model's mean loss over the training rows (the epoch loss above is a
            # running mean taken while the weights still moved)
            finals[w].append(net.evaluate(X, y))
            print(f"  final model: training-set loss {finals[w][-1]:.5f}", flush=True)
    if args.seeds > 1:
        first = counts[0]
        for w in counts:
            ratios = [a / b for a, b in zip(finals[w], finals[first])]
            print(f"workers={w}: final training-set loss over {args.seeds} seeds "
                  f"{min(finals[w]):.5f}-{max(finals[w]):.5f}, median "
                  f"{statistics.median(finals[w]):.5f}; against workers={first}: median "
                  f"{statistics.median(ratios) - 1:+.1%}, "
                  f"{min(ratios) - 1:+.1%} to {max(ratios) - 1:+.1%}")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for w, points in curves.items():
            ax.plot([p[0] for p in points], [p[2] for p in points], label=f"workers={w}")
        ax.set_xlabel("wall time (s)")
        ax.set_ylabel("running epoch loss (mse)")
        ax.set_yscale("log")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()

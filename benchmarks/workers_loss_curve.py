"""Training loss against wall time for workers = 1, 2, ... (local SGD, per-sample SGD).

    python benchmarks/workers_loss_curve.py [--workers 1,2] [--rows 400000] [--epochs 4]
                                            [--workload W2] [--plot loss_vs_time.png]

Fits the ReLU net of workload W2 (20-64-64-1) or W3 (100-256-256-1) per
sample on the same generated
regression rows with each worker count and prints, at every chunk end, the
wall time and the running mean loss of the epoch so far; the held-out mean
loss after each epoch closes each line of the table, and the final model's
mean loss over the training rows follows it.  ``--plot`` draws the
curves (needs matplotlib).
"""

import argparse
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
    args = parser.parse_args()
    X, y = workload_data(args.workload, rows=args.rows + 50_000)
    X_val, y_val = X[args.rows:], y[args.rows:]
    X, y = X[:args.rows], y[:args.rows]
    curves = {}
    for w in (int(v) for v in args.workers.split(",")):
        net = workload_network(args.workload, args.backend)
        net.fit(X[:2000], y[:2000], batch_size=1, verbose=0, workers=w, average_every=500)
        net = workload_network(args.workload, args.backend)
        clock = _Clock()
        hist = net.fit(X, y, epochs=args.epochs, batch_size=1, verbose=0, workers=w,
                       optimizer=fastbp.SGD(0.01), validation_data=(X_val, y_val),
                       callbacks=[clock])
        curves[w] = clock.points
        print(f"workers={w} ({net.backend}): "
              + "; ".join(f"epoch {e + 1}: {t:.2f} s loss {loss:.5f} val_loss {v:.5f}"
                          for e, (t, loss, v) in enumerate(zip(
                              [max(p[0] for p in clock.points if p[1] == e)
                               for e in range(args.epochs)],
                              hist.history["loss"], hist.history["val_loss"]))))
        # the final model's mean loss over the training rows (the epoch loss above is a
        # running mean taken while the weights still moved)
        print(f"  final model: training-set loss {net.evaluate(X, y):.5f}")
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

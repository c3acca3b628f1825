"""What an order with locality would cost the model: W2's loss after a full and a blocked shuffle.

``epoch_cost.py`` shows that the random row access of a fully shuffled epoch
halves W1's kernel rate, and that an order which keeps rows near each other
(windows of 32,768 rows, each 128 random blocks of 256 consecutive rows,
shuffled within the window; ``epoch_cost._blocked_order``) keeps most of it.
This script measures the other side: the training-set loss of W2 (20-64-64-1,
float64, per-sample SGD, Numba) after ``--epochs`` epochs in each order, on
the generated rows as they come and on the same rows sorted by target (the
hard case for any shuffle with locality), for three seeds of the order.
Each epoch's order is drawn beforehand and the rows are trained in it with
``shuffle=False``.  Run from the repository root::

    python benchmarks/blocked_shuffle_loss.py --rows 300000 --epochs 3
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from epoch_cost import _blocked_order  # noqa: E402


def main(argv=None):
    from fastbp import _bench

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    X, y = _bench.workload_data("W2", "float64", rows=args.rows)
    y = np.asarray(y).reshape(-1)
    by_target = np.argsort(y, kind="stable")
    for data_name, (rows_x, rows_y) in {"as generated": (X, y),
                                        "sorted by target": (X[by_target], y[by_target])}.items():
        for order_name in ("full", "blocked"):
            losses = []
            for seed in (0, 1, 2):
                net = _bench.workload_network("W2", "numba", "float64")
                rng = np.random.default_rng(seed)
                for _ in range(args.epochs):
                    order = (rng.permutation(args.rows) if order_name == "full"
                             else _blocked_order(rng, args.rows))
                    net.fit(rows_x[order], rows_y[order], epochs=1, batch_size=1,
                            shuffle=False, verbose=0)
                losses.append(net.evaluate(rows_x, rows_y))
            print(f"{data_name:16s} {order_name:7s} training-set loss after {args.epochs} "
                  "epochs, seeds 0-2: " + "  ".join(f"{loss:.5f}" for loss in losses),
                  flush=True)


if __name__ == "__main__":
    main()

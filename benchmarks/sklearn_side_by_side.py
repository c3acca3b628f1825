"""FastBPRegressor / FastBPClassifier beside scikit-learn's MLPRegressor / MLPClassifier.

Fit rate (training samples per second) and held-out R² / accuracy, on
make_friedman1(n, n_features=20) and a 3-class make_classification, with
hidden_layer_sizes=(64, 64), 5 epochs, alpha=0 for scikit-learn, solver "adam"
with batch_size=200 and solver "sgd" with batch_size=1 (the same learning
rates for both: ``fastbp._bench.MLP_SETTINGS``).  Per-sample SGD in
scikit-learn is slow (one Python-level iteration per row), so its rate is
measured on --sgd-rows rows (its samples/s do not depend on the row count);
its score is then that of the smaller fit, and is reported as such.  Each
configuration runs with one BLAS thread (threadpoolctl) and with all of them.

Each configuration is fitted with ``--seeds`` random states (the same for
both libraries): rates are the median over them, scores the mean (one seed's
score moves by ~0.02 with the initial weights, more than the gap the targets
allow).  fastbp's kernels are loaded (compiled on a cold cache) by one small
fit before the timed ones; that first fit's time is printed below the table.

    python benchmarks/sklearn_side_by_side.py [--rows 100000] [--sgd-rows 5000] [--seeds 3]
"""

import argparse
import time

import numpy as np

from fastbp._bench import MLP_SETTINGS, measure_vs_mlp, mlp_task


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--sgd-rows", type=int, default=5_000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    print("| task | solver, batch | BLAS threads | fastbp samples/s | sklearn samples/s | "
          "speedup | fastbp score | sklearn score |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    warmups = []
    for task in ("regression", "classification"):
        data = mlp_task(task, args.rows)
        for solver, batch in MLP_SETTINGS:
            start = time.perf_counter()
            small = tuple(a[:1000] for a in data[:4]) + data[4:]
            measure_vs_mlp(small, solver, batch, 1, 0, reference_rows=200)
            warmups.append(time.perf_counter() - start)
            reference_rows = None if solver == "adam" else args.sgd_rows
            for threads in (1, None):
                runs = [measure_vs_mlp(data, solver, batch, args.epochs, seed, reference_rows,
                                       blas_threads=threads) for seed in range(args.seeds)]
                (rate_fast, score_fast), (rate_slow, score_slow) = (
                    (np.median([r[k][0] for r in runs]), np.mean([r[k][1] for r in runs]))
                    for k in (0, 1))
                rows = min(args.sgd_rows, len(data[0])) if reference_rows else len(data[0])
                note = "" if rows == len(data[0]) else f" ({rows:,} rows)"
                print(f"| {task} | {solver}, {batch} | {threads or 'all'} | {rate_fast:,.0f} | "
                      f"{rate_slow:,.0f}{note} | {rate_fast / rate_slow:.1f}x | "
                      f"{score_fast:.4f} | {score_slow:.4f}{note} |", flush=True)
    print(f"\n{args.seeds} seeds per row (rates: median; scores: mean). The first fit of each "
          f"configuration (1,000 rows; it loads or compiles fastbp's kernels) took "
          f"{min(warmups):.2f}-{max(warmups):.2f} s.")


if __name__ == "__main__":
    main()

"""FastBPRegressor / FastBPClassifier beside scikit-learn's MLPRegressor / MLPClassifier.

Fit rate (training samples per second) and held-out R² / accuracy, on
make_friedman1(n, n_features=20) and a 3-class make_classification, with
hidden_layer_sizes=(64, 64), 5 epochs, alpha=0 for scikit-learn, solver "adam"
with batch_size=200 and solver "sgd" with batch_size=1.  Per-sample SGD in
scikit-learn is slow (one Python-level iteration per row), so its rate is
measured on --sgd-rows rows (its samples/s do not depend on the row count);
its score is then that of the smaller fit, and is reported as such.  Each
configuration runs with one BLAS thread (threadpoolctl) and with all of them.

    python benchmarks/sklearn_side_by_side.py [--rows 100000] [--sgd-rows 5000]
"""

import argparse
import time
import warnings

import numpy as np
from sklearn.datasets import make_classification, make_friedman1
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier, MLPRegressor
from threadpoolctl import threadpool_limits

from fastbp.sklearn import FastBPClassifier, FastBPRegressor


def _timed_fit(est, X, y):
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--sgd-rows", type=int, default=5_000)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    tasks = {
        "regression": (make_friedman1(args.rows, n_features=20, random_state=0),
                       FastBPRegressor, MLPRegressor),
        "classification": (make_classification(args.rows, n_features=20, n_informative=10,
                                               n_classes=3, random_state=0),
                           FastBPClassifier, MLPClassifier),
    }
    print("| task | solver, batch | BLAS threads | fastbp samples/s | sklearn samples/s | "
          "speedup | fastbp score | sklearn score |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for task, ((X, y), ours, theirs) in tasks.items():
        X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2,
                                                            random_state=0)
        for solver, batch in (("adam", 200), ("sgd", 1)):
            common = dict(hidden_layer_sizes=(64, 64), solver=solver, batch_size=batch,
                          max_iter=args.epochs, learning_rate_init=0.001 if solver == "adam"
                          else 0.01, momentum=0.0 if solver == "sgd" else 0.9,
                          random_state=0, tol=0.0, n_iter_no_change=args.epochs + 1)
            for threads in (1, None):
                with threadpool_limits(limits=threads, user_api="blas"):
                    fast = ours(**common)
                    t_fast = _timed_fit(fast, X_train, y_train)
                    rows = len(X_train) if solver == "adam" else min(args.sgd_rows,
                                                                      len(X_train))
                    slow = theirs(alpha=0.0, **common)
                    t_slow = _timed_fit(slow, X_train[:rows], y_train[:rows])
                rate_fast = len(X_train) * args.epochs / t_fast
                rate_slow = rows * args.epochs / t_slow
                note = "" if rows == len(X_train) else f" ({rows:,} rows)"
                print(f"| {task} | {solver}, {batch} | {threads or 'all'} | {rate_fast:,.0f} | "
                      f"{rate_slow:,.0f}{note} | {rate_fast / rate_slow:.1f}x | "
                      f"{fast.score(X_test, y_test):.4f} | "
                      f"{slow.score(X_test, y_test):.4f}{note} |", flush=True)


if __name__ == "__main__":
    main()

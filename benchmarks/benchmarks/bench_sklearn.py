"""FastBPRegressor / FastBPClassifier over scikit-learn's MLPRegressor / MLPClassifier.

The same data (``fastbp._bench.mlp_task``: make_friedman1 or a 3-class
make_classification), hidden layers (64, 64), the same solver settings
(``fastbp._bench.MLP_SETTINGS``), one BLAS thread, both libraries timed in
the same process by ``fastbp._bench.measure_vs_mlp``.  scikit-learn's
per-sample SGD is timed on 1,000 rows (its rate does not depend on the row
count).  ``benchmarks/sklearn_side_by_side.py`` is the full-size table.
"""

from fastbp._bench import measure_vs_mlp, mlp_task


class SpeedupOverMLP:
    """fastbp's fit samples/s over scikit-learn's, and the score difference."""

    params = [["regression", "classification"], ["adam-200", "sgd-1"]]
    param_names = ["task", "solver"]
    timeout = 300

    def setup(self, task, solver):
        try:
            import sklearn  # noqa: F401
        except ImportError:
            raise NotImplementedError("scikit-learn is not installed") from None
        self.data = mlp_task(task, 25_000)
        self.solver, batch = solver.split("-")
        self.batch = int(batch)
        small = tuple(a[:500] for a in self.data[:4]) + self.data[4:]
        measure_vs_mlp(small, self.solver, self.batch, 1, 0, reference_rows=200)  # compiles

    def _run(self):
        return measure_vs_mlp(self.data, self.solver, self.batch, 2, 0,
                              reference_rows=1_000 if self.solver == "sgd" else None)

    def track_speedup_over_mlp(self, task, solver):
        (ours, _), (theirs, _) = self._run()
        return round(ours / theirs, 1)

    track_speedup_over_mlp.unit = "x"

"""The scikit-learn estimators: scikit-learn's own checks, MLP's rules, and where users put them."""

import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import make_classification, make_friedman1  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import fastbp  # noqa: E402
from fastbp.sklearn import FastBPClassifier, FastBPRegressor  # noqa: E402

# Small and quick: the checks fit these dozens of times on ~100-row data sets.
CHECKED = [FastBPRegressor(hidden_layer_sizes=(8,), max_iter=100, learning_rate_init=0.01,
                           random_state=0),
           FastBPClassifier(hidden_layer_sizes=(8,), max_iter=100, learning_rate_init=0.01,
                            random_state=0)]
# Checks expected to fail, each with the reason next to it: none.
EXPECTED_FAILURES = {}


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@parametrize_with_checks(CHECKED, expected_failed_checks=lambda est: EXPECTED_FAILURES)
def test_scikit_learn_checks(estimator, check):
    check(estimator)


def _regression(n=300, seed=0):
    X, y = make_friedman1(n, n_features=6, random_state=seed)
    return X, y


def test_import_fastbp_never_imports_scikit_learn():
    code = "import sys, fastbp; fastbp.Network([2, 1]); print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_regressor_learns_and_has_mlp_attributes():
    X, y = _regression()
    est = FastBPRegressor(hidden_layer_sizes=(16, 8), max_iter=30, learning_rate_init=0.01,
                          random_state=0, backend="numpy")
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        est.fit(X, y)
    assert est.n_iter_ == 30 == len(est.loss_curve_) and est.t_ == 30 * len(X)
    assert est.best_loss_ == min(est.loss_curve_) and est.validation_scores_ is None
    assert [c.shape for c in est.coefs_] == [(6, 16), (16, 8), (8, 1)]
    assert [b.shape for b in est.intercepts_] == [(16,), (8,), (1,)]
    assert est.n_features_in_ == 6 and est.n_outputs_ == 1
    assert isinstance(est.network_, fastbp.Network) and est.predict(X).shape == (300,)
    # as good as MLPRegressor with the same settings (the shuffles differ)
    from sklearn.neural_network import MLPRegressor
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp = MLPRegressor(hidden_layer_sizes=(16, 8), max_iter=30, learning_rate_init=0.01,
                           random_state=0, alpha=0.0).fit(X, y)
    assert est.score(X, y) == pytest.approx(mlp.score(X, y), abs=0.05)
    assert est.score(X, y) > 0.3
    # the loss curve is MLP's squared error (half the mse) of each epoch
    assert est.loss_curve_[-1] < est.loss_curve_[0]


def _mlp_task(task):
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    rng = np.random.default_rng(3)
    X = rng.normal(size=(40, 4))
    if task.startswith("regression"):
        k = int(task[-1])
        y = np.column_stack([np.sin(X[:, 0]) + X[:, 1] * (j + 1) for j in range(k)])
        return X, (y[:, 0] if k == 1 else y), FastBPRegressor, MLPRegressor
    if task == "binary":
        y = (X[:, 0] + X[:, 1] > 0).astype(int)
    elif task == "multiclass":
        y = np.digitize(X[:, 0] - X[:, 2], [-0.5, 0.5])
    else:  # multi-label: three 0/1 columns
        y = (X[:, :3] > 0).astype(int)
    return X, y, FastBPClassifier, MLPClassifier


MLP_SOLVERS = {"sgd": dict(solver="sgd", learning_rate_init=0.05, momentum=0.0),
               "nesterov": dict(solver="sgd", learning_rate_init=0.02, momentum=0.9),
               "adam": dict(solver="adam", learning_rate_init=0.01)}


@pytest.mark.parametrize("task", ["regression1", "regression2", "binary", "multiclass",
                                  "multilabel"])
@pytest.mark.parametrize("solver", sorted(MLP_SOLVERS))
@pytest.mark.parametrize("batch_size", [1, 7])
def test_training_equals_mlp_for_the_same_random_state(task, solver, batch_size):
    """scikit-learn's MLP is the oracle: the same weights, steps and loss curve.

    The same ``random_state`` gives MLP's initial weights; MLP's losses are not
    Keras's (half the squared error, with the gradient of half its sum over
    outputs; log-loss summed over sigmoid outputs): the estimators scale the
    solver so that its steps and ``loss_curve_`` are MLP's.  A second fit
    warm-starts, with a fresh solver as MLP's does.  (``shuffle=False``: the
    shuffles are fastbp's own.)
    """
    X, y, ours, theirs = _mlp_task(task)
    common = dict(hidden_layer_sizes=(5,), activation="tanh", batch_size=batch_size,
                  shuffle=False, tol=0.0, n_iter_no_change=10, warm_start=True, max_iter=1,
                  random_state=0, **MLP_SOLVERS[solver])
    fast = ours(backend="numpy", **common)
    mlp = theirs(alpha=0.0, **common)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fast.fit(X, y)
        mlp.fit(X, y)
        fast.set_params(max_iter=2).fit(X, y)
        mlp.set_params(max_iter=2).fit(X, y)
    for got, want in zip(fast.coefs_ + fast.intercepts_, mlp.coefs_ + mlp.intercepts_):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    assert len(fast.loss_curve_) == len(mlp.loss_curve_) == 3
    np.testing.assert_allclose(fast.loss_curve_, mlp.loss_curve_, rtol=1e-9)


@pytest.mark.parametrize("task", ["regression1", "multiclass"])
def test_early_stopping_equals_mlp_for_the_same_random_state(task):
    """The same split, validation scores, stopping epoch and restored weights as MLP's."""
    X, y, ours, theirs = _mlp_task(task)
    X, y = np.vstack([X] * 3), np.concatenate([y] * 3)
    common = dict(hidden_layer_sizes=(5,), activation="relu", batch_size=4, shuffle=False,
                  early_stopping=True, validation_fraction=0.25, n_iter_no_change=2,
                  max_iter=40, random_state=7, solver="adam", learning_rate_init=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fast = ours(backend="numpy", **common).fit(X, y)
        mlp = theirs(alpha=0.0, **common).fit(X, y)
    assert fast.n_iter_ == mlp.n_iter_ < 40
    np.testing.assert_allclose(fast.validation_scores_, mlp.validation_scores_, rtol=1e-9)
    np.testing.assert_allclose(fast.loss_curve_, mlp.loss_curve_, rtol=1e-9)
    for got, want in zip(fast.coefs_ + fast.intercepts_, mlp.coefs_ + mlp.intercepts_):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.filterwarnings("ignore:workers=2")
@pytest.mark.parametrize("batch_size", [1, 64])
def test_workers_train_as_the_network_does_with_them(batch_size, monkeypatch):
    """``workers`` is Network.fit's: local SGD per sample, an exact split for batches >= 64."""
    from fastbp import _parallel
    monkeypatch.setattr(_parallel, "usable_cores", lambda: 4)
    X, y = _regression(256)
    kw = dict(hidden_layer_sizes=(8,), max_iter=1, random_state=0, backend="numpy",
              batch_size=batch_size, shuffle=False, solver="sgd", momentum=0.0,
              learning_rate_init=0.01, loss="mse", warm_start=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        two = FastBPRegressor(workers=2, **kw).fit(X, y)
        one = FastBPRegressor(workers=1, **kw).fit(X, y)
        # the reference: the network itself, from the same weights, with workers=2
        net = fastbp.Network([6, 8, 1], activations="relu", backend="numpy")
        net.set_weights(two.network_.get_weights())
        two.set_params(max_iter=2).fit(X, y)   # warm start: two more epochs
        one.set_params(max_iter=2).fit(X, y)
        net.fit(X, y[:, None], epochs=2, batch_size=batch_size, optimizer=fastbp.SGD(0.01),
                shuffle=False, workers=2, verbose=0)
    for got, want in zip(two.network_.get_weights(), net.get_weights()):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(two.predict(X), net.predict(X).ravel())
    if batch_size == 64:  # exact: equal to one worker up to the summation order
        for a, b in zip(two.coefs_, one.coefs_):
            np.testing.assert_allclose(a, b, rtol=1e-9)
    else:  # local SGD trains another model than one worker
        assert not np.allclose(two.coefs_[0], one.coefs_[0], rtol=1e-6)


def test_tol_and_n_iter_no_change_stop_as_mlp_does():
    X, y = _regression()
    # a huge tol: the first epoch sets best_loss_, no later one improves on it by tol, and
    # MLP stops once more than n_iter_no_change epochs in a row did not: after 1 + 4 epochs
    est = FastBPRegressor(hidden_layer_sizes=(4,), max_iter=50, tol=1e6, n_iter_no_change=3,
                          random_state=0, backend="numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        est.fit(X, y)
    assert est.n_iter_ == 5


def test_early_stopping_scores_r2_and_restores_the_best_weights():
    X, y = _regression(400)
    est = FastBPRegressor(hidden_layer_sizes=(16,), max_iter=40, learning_rate_init=0.05,
                          early_stopping=True, n_iter_no_change=3, random_state=1,
                          backend="numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    assert est.best_loss_ is None and len(est.validation_scores_) == est.n_iter_
    assert est.best_validation_score_ == max(est.validation_scores_)
    # the validation rows and the restored weights are MLP's: see
    # test_early_stopping_equals_mlp_for_the_same_random_state


def test_partial_fit_is_one_epoch_and_continues_the_optimizer():
    X, y = _regression(100)
    a = FastBPRegressor(hidden_layer_sizes=(8,), random_state=0, backend="numpy",
                        batch_size=10, shuffle=False)
    b = clone(a).set_params(max_iter=2)
    a.partial_fit(X, y)
    assert a.n_iter_ == 1 and a.t_ == 100
    a.partial_fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        b.fit(X, y)
    # two single epochs equal one fit of two: the Adam state went on between the calls
    for wa, wb in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        np.testing.assert_array_equal(wa, wb)
    assert a.loss_curve_ == b.loss_curve_


@pytest.mark.parametrize("kind", ["binary", "multiclass", "multilabel"])
def test_classifier_outputs(kind):
    if kind == "multilabel":
        from sklearn.datasets import make_multilabel_classification
        X, y = make_multilabel_classification(300, n_features=6, n_classes=3, random_state=0)
    else:
        X, y = make_classification(300, n_features=6, n_informative=4,
                                   n_classes=2 if kind == "binary" else 3, random_state=0)
        y = np.array(["cat", "dog", "emu"])[y]  # string labels round-trip
    est = FastBPClassifier(hidden_layer_sizes=(16,), max_iter=60, learning_rate_init=0.01,
                           random_state=0, backend="numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    net = est.network_
    proba = est.predict_proba(X)
    if kind == "binary":
        assert net.activations[-1] == "sigmoid" and net.loss == "binary_crossentropy"
        assert net.layers[-1] == 1 and proba.shape == (300, 2)
        assert list(est.classes_) == ["cat", "dog"]
    elif kind == "multiclass":
        assert net.activations[-1] == "softmax"
        assert net.loss == "sparse_categorical_crossentropy" and proba.shape == (300, 3)
        np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-12)
        assert list(est.classes_) == ["cat", "dog", "emu"]
    else:
        assert net.activations[-1] == "sigmoid" and net.layers[-1] == 3
        assert proba.shape == (300, 3) and est.predict(X).shape == (300, 3)
    if kind != "multilabel":
        np.testing.assert_array_equal(est.predict(X), est.classes_[proba.argmax(axis=1)])
    # (multi-label: the share of right labels; score() is the stricter subset accuracy)
    right = (est.predict(X) == y).mean() if kind == "multilabel" else est.score(X, y)
    assert right > 0.7


def test_pipeline_grid_search_cross_val_clone_and_pickle():
    X, y = _regression(200)
    pipe = make_pipeline(StandardScaler(), FastBPRegressor(max_iter=20, random_state=0,
                                                           backend="numpy"))
    grid = GridSearchCV(pipe, {"fastbpregressor__hidden_layer_sizes": [(4,), (16,)],
                               "fastbpregressor__learning_rate_init": [0.01]}, cv=2, n_jobs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        grid.fit(X, y)
        scores = cross_val_score(clone(pipe), X, y, cv=3)
    assert grid.best_params_["fastbpregressor__hidden_layer_sizes"] in [(4,), (16,)]
    assert scores.shape == (3,)
    again = pickle.loads(pickle.dumps(grid.best_estimator_))
    np.testing.assert_array_equal(again.predict(X), grid.best_estimator_.predict(X))
    net = grid.best_estimator_[-1].network_
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(net)).predict(X[:5]),
                                  net.predict(X[:5]))


def test_dataframes_keep_feature_names():
    pd = pytest.importorskip("pandas")
    X, y = _regression(100)
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(6)])
    est = FastBPRegressor(hidden_layer_sizes=(4,), max_iter=2, backend="numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(frame, pd.Series(y))
    assert list(est.feature_names_in_) == list(frame.columns)
    np.testing.assert_array_equal(est.predict(frame), est.predict(X))


def test_fit_streams_a_memmap_without_copying_it(tmp_path, monkeypatch):
    X, y = _regression(500)
    np.save(tmp_path / "X.npy", X)
    Xm = np.load(tmp_path / "X.npy", mmap_mode="r")   # read-only
    seen = []
    fit = fastbp.Network.fit

    def spy(self, X, *args, **kwargs):
        seen.append(type(X))
        return fit(self, X, *args, **kwargs)

    monkeypatch.setattr(fastbp.Network, "fit", spy)
    est = FastBPRegressor(hidden_layer_sizes=(8,), max_iter=3, random_state=0, backend="numpy",
                          shuffle=False)
    ref = clone(est)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(Xm, y)
        ref.fit(X, y)
    assert seen[0] is np.memmap  # the network streamed it block by block
    np.testing.assert_allclose(est.predict(X), ref.predict(X), rtol=1e-9)


@pytest.mark.parametrize("change,error,words", [
    (dict(solver="lbfgs"), ValueError, "solver"),
    (dict(activation="softmax"), ValueError, "activation"),
    (dict(loss="log_loss"), ValueError, "loss"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(batch_size=-3), ValueError, "batch_size"),
    (dict(hidden_layer_sizes=(0,)), ValueError, "hidden_layer_sizes"),
    (dict(validation_fraction=1.0), ValueError, "validation_fraction"),
    (dict(workers=0), ValueError, "workers"),
    (dict(workers=1.5), ValueError, "workers"),
])
def test_bad_parameters_fail_at_fit_and_change_nothing(change, error, words):
    X, y = _regression(50)
    est = FastBPRegressor(max_iter=2, backend="numpy", **change)   # __init__ accepts anything
    with pytest.raises(error, match=words) as excinfo:
        est.fit(X, y)
    assert "expected" in str(excinfo.value) and "found" in str(excinfo.value)
    assert not hasattr(est, "network_")


def test_bad_data_errors():
    X, y = _regression(50)
    est = FastBPRegressor(hidden_layer_sizes=(4,), max_iter=2, backend="numpy")
    with pytest.raises(NotFittedError):
        est.predict(X)
    with pytest.raises(ValueError, match="not numbers"):
        est.fit(X, np.array(["a"] * 50))
    with pytest.raises(ValueError, match="finite"):
        est.fit(X, np.where(np.arange(50) == 3, np.nan, y))
    with pytest.raises(TypeError, match="sample_weight"):
        est.fit(X, y, sample_weight=np.ones(50))
    assert not hasattr(est, "network_")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    with pytest.raises(ValueError, match="6 features"):
        est.predict(X[:, :4])
    clf = FastBPClassifier(max_iter=2, backend="numpy")
    with pytest.raises(ValueError, match="class"):
        clf.fit(X, np.zeros(50))
    with pytest.raises(ValueError, match="classes="):
        clf.partial_fit(X, np.arange(50) % 2)


def test_the_guide_example_runs():
    """docs/guide/sklearn.md's Pipeline + GridSearchCV example, as the page shows it."""
    import pathlib
    import re
    page = (pathlib.Path(__file__).parents[1] / "docs" / "guide" / "sklearn.md").read_text()
    code = re.search(r"```python\n(.*?)```", page, re.S).group(1)
    namespace = {}
    exec(compile(code, "sklearn.md", "exec"), namespace)
    assert namespace["search"].best_score_ > 0.5


# ----------------------------------------------------------------------------- failed fits
def _fitted_state(est):
    """The estimator's fitted attributes and its network's weights, copied."""
    state = {k: v for k, v in vars(est).items() if k.endswith("_") and k != "network_"}
    weights = [w.copy() for w in est.network_.get_weights()] if hasattr(est, "network_") else []
    return state, weights


def _assert_same_state(a, b):
    (sa, wa), (sb, wb) = a, b
    assert sa.keys() == sb.keys()
    for key in sa:
        assert np.array_equal(np.asarray(sa[key]), np.asarray(sb[key])), key
    assert all(x.tobytes() == y.tobytes() for x, y in zip(wa, wb)) and len(wa) == len(wb)


def test_a_refused_warm_start_changes_no_fitted_attribute():
    X, y = _regression()
    r = FastBPRegressor((4,), max_iter=3, warm_start=True, random_state=0).fit(X, y)
    before = _fitted_state(r)
    with pytest.raises(ValueError, match="warm start: expected data for the fitted network"):
        r.fit(np.hstack([X, X[:, :1]]), y)
    _assert_same_state(_fitted_state(r), before)
    assert r.predict(X).shape == (len(X),)


@pytest.mark.parametrize("labels", ["more", "others", "one"])
def test_a_warm_start_with_other_classes_is_refused_and_changes_nothing(labels):
    X, y = make_classification(200, 6, n_informative=4, n_classes=3, random_state=0)
    c = FastBPClassifier((4,), max_iter=3, warm_start=True, random_state=0).fit(X, y)
    before = _fitted_state(c)
    new = {"more": (y + np.arange(len(y))) % 4, "others": y + 10, "one": np.zeros_like(y)}
    match = "at least 2 classes" if labels == "one" else "the classes of the previous fit"
    with pytest.raises(ValueError, match=match):
        c.fit(X, new[labels])
    _assert_same_state(_fitted_state(c), before)
    assert c.predict_proba(X).shape == (len(X), 3)
    c.fit(X, y[::-1])  # the same classes: a warm start as before


def test_a_failed_first_fit_leaves_an_unfitted_estimator():
    X, y = make_classification(100, 5, random_state=0)
    for call in (lambda c: c.fit(X, np.zeros_like(y)),
                 lambda c: c.partial_fit(X, np.full(len(y), 7), classes=[0, 1])):
        c = FastBPClassifier((4,), max_iter=2)
        with pytest.raises(ValueError):
            call(c)
        assert not [k for k in vars(c) if k.endswith("_")]
        assert c.__dict__.get("_partial_classes") is None
        with pytest.raises(NotFittedError):
            c.predict(X)

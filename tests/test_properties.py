"""Property-based tests (hypothesis): random problems through the chain of trust, random bad input.

1. Random architectures (1-4 layers, widths 1-70), activations, losses,
   optimizers, batch sizes (some larger than the data), shuffles and dtypes:
   every installed compiled backend against the NumPy reference, and the NumPy
   backend against the scalar oracle ``tests/naive.py``.
2. Random bad values for every public argument: a ``ValueError``/``TypeError``
   with a message, and nothing changed (weights, optimizer state, step count,
   the caller's arrays).

The data of a case is drawn from a seed that hypothesis picks (bounded,
well-conditioned values); hypothesis chooses the structure.  In CI the
examples are derandomised (the same cases every run, so a float32 rounding
coincidence cannot make the suite flaky); ``FASTBP_HYPOTHESIS_EXAMPLES=N``
runs N random examples per test instead.
"""

import math
import os

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fastbp  # noqa: E402

from . import naive  # noqa: E402
from .conftest import assert_close  # noqa: E402

_EXAMPLES = os.environ.get("FASTBP_HYPOTHESIS_EXAMPLES", "").strip()


def examples(default):
    """This module's settings for one test: ``default`` examples in CI, or
    ``FASTBP_HYPOTHESIS_EXAMPLES`` when set.

    Per test, never a loaded profile: loading one here would change the
    settings of every test module collected after this one.
    """
    return settings(
        max_examples=int(_EXAMPLES) if _EXAMPLES else default, deadline=None, database=None,
        derandomize=not _EXAMPLES,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                               HealthCheck.data_too_large])


def test_importing_this_module_leaves_the_hypothesis_profile_alone():
    import subprocess
    import sys
    from pathlib import Path

    code = ("import hypothesis; before = repr(hypothesis.settings.default); "
            "import tests.test_properties; "
            "assert repr(hypothesis.settings.default) == before, 'profile changed'")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    chosen = examples(7)
    assert chosen.max_examples == (int(_EXAMPLES) if _EXAMPLES else 7)
    assert chosen.deadline is None and chosen.database is None
    assert chosen.derandomize is not bool(_EXAMPLES)


ACTIVATIONS = ["linear", "relu", "sigmoid", "tanh"]
LOSSES = ["mse", "mae", "huber", "binary_crossentropy"]


# ------------------------------------------------------------------ random problems
@st.composite
def optimizers(draw):
    """(fastbp optimizer, the oracle's (kind, hyper-parameters)) with the same settings."""
    lr = draw(st.sampled_from([0.001, 0.005, 0.01, 0.03]))
    kind = draw(st.sampled_from(["sgd", "momentum", "nesterov", "adam", "rmsprop",
                                 "rmsprop_momentum"]))
    if kind == "sgd":
        return fastbp.SGD(lr), ("sgd", dict(learning_rate=lr))
    if kind in ("momentum", "nesterov"):
        mu = draw(st.sampled_from([0.5, 0.9]))
        nesterov = kind == "nesterov"
        return (fastbp.SGD(lr, momentum=mu, nesterov=nesterov),
                ("sgd", dict(learning_rate=lr, momentum=mu, nesterov=nesterov)))
    if kind == "adam":
        b1, b2 = draw(st.sampled_from([(0.9, 0.999), (0.5, 0.9)]))
        return (fastbp.Adam(lr, beta_1=b1, beta_2=b2),
                ("adam", dict(learning_rate=lr, beta_1=b1, beta_2=b2, epsilon=1e-7)))
    rho = draw(st.sampled_from([0.9, 0.5]))
    mu = 0.5 if kind == "rmsprop_momentum" else 0.0
    return (fastbp.RMSprop(lr, rho=rho, momentum=mu),
            ("rmsprop", dict(learning_rate=lr, rho=rho, momentum=mu, epsilon=1e-7)))


@st.composite
def problems(draw, max_width=70, max_rows=24):
    """A random network, data, optimizer and fit settings."""
    n_layers = draw(st.integers(1, 4))
    widths = draw(st.lists(st.integers(1, max_width), min_size=n_layers + 1,
                           max_size=n_layers + 1))
    hidden = draw(st.lists(st.sampled_from(ACTIVATIONS), min_size=n_layers - 1,
                           max_size=n_layers - 1))
    output = draw(st.sampled_from(ACTIVATIONS))
    loss = draw(st.sampled_from(LOSSES))
    rows = draw(st.integers(1, max_rows))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1.0, 1.0, size=(rows, widths[0]))
    if loss == "binary_crossentropy":
        y = rng.integers(0, 2, size=(rows, widths[-1])).astype(float)
    else:
        y = rng.normal(size=(rows, widths[-1]))
    return dict(
        layers=widths, hidden=hidden, output=output, loss=loss, X=X, y=y,
        optimizer=draw(optimizers()), batch_size=draw(st.integers(1, rows + 3)),
        epochs=draw(st.integers(1, 2)), shuffle=draw(st.booleans()),
        dtype=draw(st.sampled_from(["float64", "float32"])), seed=seed % 1000)


def _network(p, backend):
    # "activations" must be a list for one hidden layer or more; a net without
    # hidden layers takes the default (it is unused)
    activations = p["hidden"] if p["hidden"] else "relu"
    return fastbp.Network(p["layers"], activations=activations, output_activation=p["output"],
                          loss=p["loss"], dtype=p["dtype"], backend=backend, seed=p["seed"])


def _fit_everything(p, backend):
    net = _network(p, backend)
    hist = net.fit(p["X"], p["y"], epochs=p["epochs"], batch_size=p["batch_size"],
                   optimizer=p["optimizer"][0], shuffle=p["shuffle"], verbose=0)
    return (net.get_weights(), hist.history["loss"], net.predict(p["X"]),
            net.evaluate(p["X"], p["y"]), net.gradients(p["X"], p["y"]))


@examples(30)
@given(p=problems())
def test_random_problem_compiled_backend_equals_numpy(compiled_backend, p):
    want = _fit_everything(p, "numpy")
    got = _fit_everything(p, compiled_backend)
    for name, g, w in zip(("weights", "loss history", "predict", "evaluate", "gradients"),
                          got, want):
        try:
            assert_close(g, w, p["dtype"])
        except AssertionError as exc:
            raise AssertionError(f"{name} differ: {exc}") from None


@examples(25)
@given(p=problems(max_width=9, max_rows=10))
def test_random_problem_numpy_equals_oracle(p):
    net = _network(p, "numpy")
    start = [w.astype(np.float64) for w in net.get_weights()]
    hist = net.fit(p["X"], p["y"], epochs=p["epochs"], batch_size=p["batch_size"],
                   optimizer=p["optimizer"][0], shuffle=False, verbose=0)
    kind, hyper = p["optimizer"][1]
    oracle = naive.Optimizer(kind, **hyper)
    # the oracle sees the data as the network does: rounded to its dtype
    X = p["X"].astype(p["dtype"]).astype(np.float64)
    y = p["y"].astype(p["dtype"]).astype(np.float64)
    weights, losses = naive.to_lists(start), []
    for _ in range(p["epochs"]):
        weights, epoch_loss = naive.train(weights, p["hidden"] + [p["output"]], p["loss"], X, y,
                                          list(range(len(X))), p["batch_size"], oracle)
        losses.append(epoch_loss)
    assert_close(net.get_weights(), [np.array(w) for w in weights], p["dtype"])
    assert_close(hist.history["loss"], losses, p["dtype"])


# ------------------------------------------------------------------ random bad input
NAN, INF = float("nan"), float("inf")
# Values no numeric, name or flag argument of fastbp accepts.
NEVER_VALID = [object(), 1j, b"bytes", {}, {"a": 1}, (lambda: 0)]

BAD_NETWORK_ARGS = {
    "layers": [[], [3], [3, 0, 1], [3, -2, 1], [3, 2.5, 1], [3, "4", 1], [3, True, 1],
               [3, None, 1], "3,4,1", 5, None, [3, NAN, 1], [3, 2**70, 1]],
    "activations": ["bogus", "", "RELU ", ["relu", "relu"], [], 3, None, ["relu", 7]],
    "output_activation": ["bogus", "", "softplus", 0, None, ["linear"]],
    "loss": ["bogus", "", "MSE ", "cross_entropy", 1, None, ["mse"]],
    "kernel_initializer": ["bogus", "", NAN, INF, -INF, None, [0.1]],
    "bias_initializer": ["bogus", "ones", NAN, INF, None, [0.0]],
    "dtype": ["garbage", "float64 ", "float16x", "float16", "int32", "", np.int32, 3,
              "complex128"],
    "backend": ["bogus", "", "NumPy ", 1, None],
    "seed": [-1, 1.5, "3", True, NAN, [1], -(2**40)],
}

BAD_FIT_ARGS = {
    "epochs": [0, -1, 1.5, "2", True, NAN, INF, None, [1]],
    "batch_size": [0, -1, 2.5, "8", True, NAN, None, [1], -(2**63)],
    "validation_split": [-0.1, 1.0, 1.5, NAN, INF, "0.1", None, [0.1]],
    "verbose": [2, -1, "yes", 0.5, [1]],
    "optimizer": ["adam", "sgd", 0.01, 1, [fastbp.SGD()], fastbp.EarlyStopping],
    "callbacks": ["early", 1, fastbp.EarlyStopping(monitor="loss"), [1], [None]],
    "validation_data": [1, "val", (1,), (1, 2, 3), [np.zeros((2, 3))]],
    "checkpoint": [1, 2.5, ["run.ckpt"]],
}

BAD_OPTIMIZER_ARGS = {
    (fastbp.SGD, "learning_rate"): [0, -0.1, NAN, INF, "0.1", None, True],
    (fastbp.SGD, "momentum"): [-0.1, 1.5, NAN, INF, "0.9", None],
    (fastbp.Adam, "learning_rate"): [0, -1e-3, NAN, INF, "1e-3", None, True],
    (fastbp.Adam, "beta_1"): [-0.1, 1.5, NAN, INF, "0.9", None],
    (fastbp.Adam, "beta_2"): [-0.1, 1.5, NAN, INF, "0.999", None],
    (fastbp.Adam, "epsilon"): [-1e-7, NAN, INF, "1e-7", None],
    (fastbp.RMSprop, "learning_rate"): [0, -1e-3, NAN, INF, "1e-3", None],
    (fastbp.RMSprop, "rho"): [-0.1, 1.5, NAN, INF, "0.9", None],
    (fastbp.RMSprop, "momentum"): [-0.1, 1.5, NAN, INF, "0.5", None],
    (fastbp.RMSprop, "epsilon"): [-1e-7, NAN, INF, "1e-7", None],
}

BAD_EARLY_STOPPING_ARGS = {
    "monitor": ["accuracy", "", None, 1],
    "patience": [-1, 1.5, "2", NAN, None, True],
    "min_delta": [NAN, INF, "0.1", None],
}


def _assert_clear(exc_info):
    """The error contract: ValueError or TypeError with a message that says what was found."""
    exc = exc_info.value
    assert isinstance(exc, (ValueError, TypeError)), type(exc)
    assert len(str(exc)) >= 20, str(exc)


def _args_with_one_bad(bad_table, draw_key, draw_value):
    key = draw_key(st.sampled_from(sorted(bad_table, key=str)))
    value = draw_value(st.sampled_from(bad_table[key] + NEVER_VALID))
    return key, value


@examples(150)
@given(data=st.data())
def test_bad_network_argument_is_a_clear_error(data):
    key, value = _args_with_one_bad(BAD_NETWORK_ARGS, data.draw, data.draw)
    args = dict(layers=[3, 4, 1], activations="relu", backend="numpy")
    args[key] = value
    with pytest.raises(Exception) as info:
        fastbp.Network(**args)
    _assert_clear(info)


@examples(150)
@given(data=st.data())
def test_bad_optimizer_argument_is_a_clear_error(data):
    key = data.draw(st.sampled_from(sorted(BAD_OPTIMIZER_ARGS, key=str)))
    value = data.draw(st.sampled_from(BAD_OPTIMIZER_ARGS[key] + NEVER_VALID))
    cls, name = key
    with pytest.raises(Exception) as info:
        cls(**{name: value})
    _assert_clear(info)


@examples(60)
@given(data=st.data())
def test_bad_early_stopping_argument_is_a_clear_error(data):
    key, value = _args_with_one_bad(BAD_EARLY_STOPPING_ARGS, data.draw, data.draw)
    with pytest.raises(Exception) as info:
        fastbp.EarlyStopping(**{key: value})
    _assert_clear(info)


def _trained_net(dtype="float64"):
    net = fastbp.Network([3, 4, 2], activations="tanh", backend="numpy", dtype=dtype, seed=1)
    rng = np.random.default_rng(0)
    net.fit(rng.normal(size=(10, 3)), rng.normal(size=(10, 2)), epochs=1, batch_size=3,
            optimizer=fastbp.Adam(0.01), verbose=0)
    return net


def _state(net):
    return ([w.copy() for w in net.get_weights()],
            None if net._state is None else net._state.copy(), net._step, net.optimizer)


def _assert_unchanged(net, before):
    after = _state(net)
    for a, b in zip(after[0], before[0]):
        assert a.tobytes() == b.tobytes()
    assert (after[1] is None) == (before[1] is None)
    if after[1] is not None:
        assert after[1].tobytes() == before[1].tobytes()
    assert after[2:] == before[2:]


def _good_data(rng, rows=8):
    return rng.normal(size=(rows, 3)), rng.normal(size=(rows, 2))


@st.composite
def bad_arrays(draw):
    """(X, y) with exactly one thing wrong, and what is wrong."""
    rng = np.random.default_rng(draw(st.integers(0, 1000)))
    X, y = _good_data(rng)
    fault = draw(st.sampled_from([
        "nan_x", "inf_x", "nan_y", "inf_y", "x_1d", "x_3d", "x_width", "y_width", "y_rows",
        "x_empty", "x_str", "x_complex", "x_object", "y_str", "x_bool_scalar", "x_list_ragged"]))
    i, j = draw(st.integers(0, 7)), draw(st.integers(0, 1))
    if fault == "nan_x":
        X[i, j] = NAN
    elif fault == "inf_x":
        X[i, j] = -INF
    elif fault == "nan_y":
        y[i, j] = NAN
    elif fault == "inf_y":
        y[i, j] = INF
    elif fault == "x_1d":
        X = X[:, 0].copy()
    elif fault == "x_3d":
        X = X[:, :, None].copy()
    elif fault == "x_width":
        X = np.hstack([X, X[:, :1]])
    elif fault == "y_width":
        y = np.hstack([y, y[:, :1]])
    elif fault == "y_rows":
        y = y[:-1].copy()
    elif fault == "x_empty":
        X, y = X[:0].copy(), y[:0].copy()
    elif fault == "x_str":
        X = X.astype(str)
    elif fault == "x_complex":
        X = X.astype(complex)
    elif fault == "x_object":
        X = X.astype(object)
        X[i, j] = "a"
    elif fault == "y_str":
        y = y.astype(str)
    elif fault == "x_bool_scalar":
        X = True
    elif fault == "x_list_ragged":
        X = [[1.0, 2.0, 3.0], [1.0, 2.0]] + [[0.0, 0.0, 0.0]] * 6
    return fault, X, y


def _snapshot_arrays(*arrays):
    return [a.tobytes() if isinstance(a, np.ndarray) else repr(a) for a in arrays]


@examples(120)
@given(case=bad_arrays(), method=st.sampled_from(["fit", "evaluate", "gradients", "predict"]))
def test_bad_arrays_are_a_clear_error_and_change_nothing(case, method):
    fault, X, y = case
    if method == "predict" and fault.startswith(("nan_y", "inf_y", "y_")):
        return  # predict takes no targets
    net = _trained_net()
    before = _state(net)
    arrays_before = _snapshot_arrays(X, y)
    with pytest.raises(Exception) as info:
        if method == "fit":
            net.fit(X, y, epochs=1, batch_size=2, verbose=0)
        elif method == "predict":
            net.predict(X)
        else:
            getattr(net, method)(X, y)
    _assert_clear(info)
    _assert_unchanged(net, before)
    assert _snapshot_arrays(X, y) == arrays_before


@examples(150)
@given(data=st.data())
def test_bad_fit_argument_is_a_clear_error_and_changes_nothing(data):
    key, value = _args_with_one_bad(BAD_FIT_ARGS, data.draw, data.draw)
    net = _trained_net()
    before = _state(net)
    rng = np.random.default_rng(1)
    X, y = _good_data(rng)
    arrays_before = _snapshot_arrays(X, y)
    args = dict(epochs=1, batch_size=2, verbose=0)
    args[key] = value
    with pytest.raises(Exception) as info:
        net.fit(X, y, **args)
    _assert_clear(info)
    _assert_unchanged(net, before)
    assert _snapshot_arrays(X, y) == arrays_before


@examples(60)
@given(data=st.data())
def test_bad_set_weights_is_a_clear_error_and_changes_nothing(data):
    net = _trained_net()
    before = _state(net)
    good = net.get_weights()
    fault = data.draw(st.sampled_from(["short", "long", "shape", "nan", "inf", "str", "none",
                                       "not_list", "transposed", "scalar"]))
    weights = [w.copy() for w in good]
    k = data.draw(st.integers(0, len(weights) - 1))
    if fault == "short":
        weights = weights[:-1]
    elif fault == "long":
        weights = weights + [weights[-1]]
    elif fault == "shape":
        weights[k] = np.zeros(weights[k].shape + (1,))
    elif fault == "nan":
        weights[k].flat[0] = NAN
    elif fault == "inf":
        weights[k].flat[-1] = INF
    elif fault == "str":
        weights[k] = weights[k].astype(str)
    elif fault == "none":
        weights[k] = None
    elif fault == "not_list":
        weights = 3.0
    elif fault == "transposed":
        weights[0] = weights[0].T.copy()
    elif fault == "scalar":
        weights[k] = 1.0
    with pytest.raises(Exception) as info:
        net.set_weights(weights)
    _assert_clear(info)
    _assert_unchanged(net, before)


@examples(40)
@given(value=st.one_of(st.integers(max_value=0), st.integers(min_value=2**62),
                       st.floats(allow_nan=True), st.text(max_size=5)))
def test_epochs_and_batch_size_edge_values(value):
    """Anything but a positive int is refused; a huge positive batch size is one batch."""
    net = _trained_net()
    rng = np.random.default_rng(2)
    X, y = _good_data(rng)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        twin = _trained_net()
        net.fit(X, y, epochs=1, batch_size=value, shuffle=False, verbose=0)
        twin.fit(X, y, epochs=1, batch_size=len(X), shuffle=False, verbose=0)
        for a, b in zip(net.get_weights(), twin.get_weights()):
            assert a.tobytes() == b.tobytes()
        return
    before = _state(net)
    for name in ("epochs", "batch_size"):
        with pytest.raises(Exception) as info:
            net.fit(X, y, verbose=0, **{name: value})
        _assert_clear(info)
        _assert_unchanged(net, before)


def test_numpy_integers_are_accepted_and_stored_as_ints(tmp_path):
    net = fastbp.Network([np.int64(3), np.int32(4), np.uint8(1)], seed=np.int64(3),
                         backend="numpy")
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(6, 3)), rng.normal(size=6)
    net.fit(X, y, epochs=np.int64(2), batch_size=np.int32(2), verbose=0,
            callbacks=[fastbp.EarlyStopping(monitor="loss", patience=np.int64(2))])
    net.save(tmp_path / "m.fbp")
    loaded = fastbp.load(tmp_path / "m.fbp")
    assert loaded.layers == (3, 4, 1)
    assert all(type(w) is int for w in loaded.layers)
    for a, b in zip(loaded.get_weights(), net.get_weights()):
        assert a.tobytes() == b.tobytes()
    assert math.isfinite(loaded.evaluate(X, y))

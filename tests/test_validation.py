"""Bad input gets a clear error (expected / found / fix) and changes nothing."""

import copy
import re
import warnings

import numpy as np
import pytest

import fastbp
from fastbp import _validation


def _net(**kwargs):
    kwargs.setdefault("backend", "numpy")
    return fastbp.Network([3, 4, 1], **kwargs)


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(10, 3)), rng.normal(size=10)


def _assert_clear(excinfo):
    message = str(excinfo.value)
    assert "expected" in message and "found" in message, message


def _bad_fit_cases():
    X, y = _data()
    nan_X = X.copy()
    nan_X[3, 1] = np.nan
    inf_y = y.copy()
    inf_y[2] = np.inf
    return {
        "nan in X": (dict(X=nan_X, y=y), ValueError),
        "inf in y": (dict(X=X, y=inf_y), ValueError),
        "X 1-D": (dict(X=X[:, 0], y=y), ValueError),
        "X 3-D": (dict(X=X[None], y=y), ValueError),
        "wrong feature width": (dict(X=X[:, :2], y=y), ValueError),
        "wrong output width": (dict(X=X, y=np.stack([y, y], 1)), ValueError),
        "y 3-D": (dict(X=X, y=y[:, None, None]), ValueError),
        "length mismatch": (dict(X=X, y=y[:7]), ValueError),
        "zero rows": (dict(X=X[:0], y=y[:0]), ValueError),
        "object dtype": (dict(X=X.astype(object), y=y), TypeError),
        "string dtype": (dict(X=X.astype(str), y=y), TypeError),
        "complex dtype": (dict(X=X.astype(complex), y=y), TypeError),
        "ragged list": (dict(X=[[1, 2, 3], [1, 2]], y=[1, 2]), TypeError),
        "epochs 0": (dict(X=X, y=y, epochs=0), ValueError),
        "batch_size 0": (dict(X=X, y=y, batch_size=0), ValueError),
        "batch_size float": (dict(X=X, y=y, batch_size=2.5), ValueError),
        "optimizer string": (dict(X=X, y=y, optimizer="adam"), TypeError),
        "validation_split 1": (dict(X=X, y=y, validation_split=1.0), ValueError),
        "validation_data bad width": (dict(X=X, y=y, validation_data=(X[:, :2], y)), ValueError),
        "verbose 3": (dict(X=X, y=y, verbose=3), ValueError),
    }


@pytest.mark.parametrize("case", sorted(_bad_fit_cases()))
def test_bad_fit_input_is_rejected_and_changes_nothing(case):
    kwargs, error = _bad_fit_cases()[case]
    net = _net()
    weights = net.get_weights()
    X, y = kwargs["X"], kwargs["y"]
    snapshots = [copy.deepcopy(a) for a in (X, y)]
    with pytest.raises(error) as excinfo:
        net.fit(**kwargs)
    _assert_clear(excinfo)
    for before, after in zip(weights, net.get_weights()):
        assert before.tobytes() == after.tobytes()
    for before, after in zip(snapshots, (X, y)):
        if isinstance(after, np.ndarray):
            assert before.dtype == after.dtype and before.tobytes() == after.tobytes()
        else:
            assert before == after
    assert net.optimizer is None


@pytest.mark.parametrize("kwargs", [
    dict(activations="swish"), dict(output_activation="softmax"), dict(loss="hinge"),
    dict(kernel_initializer="orthogonal"), dict(bias_initializer="ones"),
    dict(kernel_initializer=float("nan")), dict(dtype="float16"), dict(dtype="int32"),
    dict(backend="tensorflow"), dict(activations=["relu", "relu"]), dict(seed=-1),
], ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_bad_constructor_arguments(kwargs):
    with pytest.raises(ValueError) as excinfo:
        _net(**kwargs)
    _assert_clear(excinfo)


@pytest.mark.parametrize("layers", [[3], [], [3, 0, 1], [3, 2.5, 1], "3,4,1", None])
def test_bad_layer_sizes(layers):
    with pytest.raises(ValueError) as excinfo:
        fastbp.Network(layers, backend="numpy")
    _assert_clear(excinfo)


@pytest.mark.parametrize("make", [
    lambda: fastbp.SGD(learning_rate=0), lambda: fastbp.SGD(learning_rate=-1),
    lambda: fastbp.SGD(momentum=1.0), lambda: fastbp.Adam(learning_rate=float("inf")),
    lambda: fastbp.Adam(beta_1=1.0), lambda: fastbp.RMSprop(rho=0), lambda: fastbp.Adam(epsilon=0),
])
def test_bad_optimizer_hyperparameters(make):
    with pytest.raises(ValueError) as excinfo:
        make()
    _assert_clear(excinfo)


@pytest.mark.parametrize("optimizer,name,becomes", [
    (fastbp.Adam(epsilon=1e-50), "epsilon", "0"), (fastbp.RMSprop(epsilon=1e-46), "epsilon", "0"),
    (fastbp.SGD(learning_rate=1e39), "learning_rate", "inf"),
])
def test_hyperparameters_the_float32_network_cannot_hold_are_refused(optimizer, name, becomes):
    """Valid in float64, but 0 or inf in the network's float32: refused, nothing changed."""
    X, y = _data()
    net = fastbp.Network([X.shape[1], 4, 1], dtype="float32", seed=0)
    net.fit(X, y, verbose=0, optimizer=fastbp.Adam(0.01))
    before = (net.get_weights(), net.optimizer, net._step, net._state.copy())
    calls = {"fit": lambda: net.fit(X, y, verbose=0, optimizer=optimizer),
             "fit_many": lambda: fastbp.fit_many([net], X, y, verbose=0, optimizers=[optimizer])}
    for call in calls.values():
        with pytest.raises(ValueError, match=f"{name}=.*which is {becomes} in float32") as exc:
            call()
        _assert_clear(exc)
        weights, opt, step, state = before
        assert all(a.tobytes() == b.tobytes() for a, b in zip(weights, net.get_weights()))
        assert net.optimizer == opt and net._step == step
        assert net._state.tobytes() == state.tobytes()
    # a float64 network holds them: not refused (a step of 1e39 may still diverge there)
    wide = fastbp.Network([X.shape[1], 4, 1], dtype="float64", seed=0)
    try:
        wide.fit(X, y, verbose=0, optimizer=optimizer)
    except fastbp.TrainingDivergedError:
        assert name == "learning_rate"


def test_set_weights_wrong_shapes_change_nothing():
    net = _net()
    before = net.get_weights()
    good = net.get_weights()
    bad_shape = [w.copy() for w in good]
    bad_shape[2] = np.zeros((4, 2))
    nan_weights = [w.copy() for w in good]
    nan_weights[3][0] = np.nan
    for weights in (bad_shape, good[:3], nan_weights, 5):
        with pytest.raises(ValueError) as excinfo:
            net.set_weights(weights)
        _assert_clear(excinfo)
    for a, b in zip(before, net.get_weights()):
        assert a.tobytes() == b.tobytes()


def test_unavailable_backend_says_how_to_install():
    missing = [name for name in ("cuda", "numba", "cython")
               if name not in fastbp.available_backends()]
    if not missing:
        pytest.skip("every backend is installed here")
    with pytest.raises(ImportError, match="To fix"):
        fastbp.Network([2, 1], backend=missing[0])


def test_predict_and_evaluate_check_their_input():
    net = _net()
    X, y = _data()
    with pytest.raises(ValueError, match="expected 3 features"):
        net.predict(X[:, :2])
    with pytest.raises(ValueError, match="finite"):
        net.evaluate(np.full((2, 3), np.nan), np.zeros(2))


def test_divergence_stops_fit_and_keeps_finite_weights(backend):
    X = np.full((64, 1), 1e3)
    y = np.full(64, -1e3)
    net = fastbp.Network([1, 4, 1], activations="linear", backend=backend)
    with pytest.raises(fastbp.TrainingDivergedError, match="NaN or infinite"):
        net.fit(X, y, batch_size=1, optimizer=fastbp.SGD(learning_rate=1.0), verbose=0)
    assert all(np.isfinite(w).all() for w in net.get_weights())


def test_inputs_are_never_written():
    X, y = _data()
    X_ro, y_ro = X.copy(), y.copy()
    X_ro.setflags(write=False)
    y_ro.setflags(write=False)
    net = _net()
    net.fit(X_ro, y_ro, epochs=2, batch_size=3, verbose=0)  # read-only arrays are fine
    np.testing.assert_array_equal(X_ro, X)
    np.testing.assert_array_equal(y_ro, y)


def test_ints_bools_and_strided_inputs_are_converted_once():
    X = np.arange(30, dtype=np.int64).reshape(10, 3) % 4
    y = (np.arange(10) % 2).astype(bool)
    a, b = _net(dtype="float32"), _net(dtype="float32")
    a.fit(X, y, epochs=1, batch_size=2, shuffle=False, verbose=0)
    Xf = np.asfortranarray(np.repeat(X.astype(np.float32), 2, axis=1)[:, ::2])  # strided, F-order
    b.fit(Xf, y.astype(np.float32), epochs=1, batch_size=2, shuffle=False, verbose=0)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        assert wa.dtype == np.float32
        np.testing.assert_array_equal(wa, wb)
    assert a.predict(X).dtype == np.float32


def test_validation_data_overrides_validation_split():
    """As in Keras: with validation_data, validation_split holds nothing out."""
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(40, 3)), rng.normal(size=40)
    val = (rng.normal(size=(8, 3)), rng.normal(size=8))
    a, b = _net(seed=3), _net(seed=3)
    ha = a.fit(X, y, epochs=2, batch_size=4, validation_data=val, validation_split=0.5,
               verbose=0)
    hb = b.fit(X, y, epochs=2, batch_size=4, validation_data=val, verbose=0)
    assert ha.history == hb.history
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        assert wa.tobytes() == wb.tobytes()


@pytest.mark.parametrize("callbacks,error", [
    (fastbp.EarlyStopping(), TypeError),               # not a list
    ([lambda epoch: None], TypeError),                 # not a Callback
    ([fastbp.EarlyStopping(monitor="val_loss")], ValueError),  # nothing to monitor
])
def test_bad_callbacks_are_refused_before_anything_changes(callbacks, error):
    X, y = _data()
    net = _net()
    net.fit(X, y, epochs=1, batch_size=2, optimizer=fastbp.Adam(0.01), verbose=0)
    before, state, step = net.get_weights(), net._state.copy(), net._step
    with pytest.raises(error) as excinfo:
        net.fit(X, y, epochs=2, optimizer=fastbp.SGD(0.1), callbacks=callbacks, verbose=0)
    _assert_clear(excinfo)
    assert net.optimizer == fastbp.Adam(0.01) and net._step == step
    assert net._state.tobytes() == state.tobytes()
    for a, b in zip(before, net.get_weights()):
        assert a.tobytes() == b.tobytes()


def test_forced_backend_setting_overrides_the_argument(monkeypatch):
    monkeypatch.setenv("FASTBP_BACKEND", "numpy")
    with pytest.warns(RuntimeWarning, match="FASTBP_BACKEND=numpy overrides"):
        net = fastbp.Network([2, 1], backend="cython")
    assert net.backend == "numpy"
    monkeypatch.setenv("FASTBP_BACKEND", "bogus")
    buffer = __import__("io").StringIO()
    fastbp.show_config(file=buffer)   # a diagnosis tool must not crash on a bad setting
    assert "found 'bogus'" in buffer.getvalue()


# ------------------------------------------------------------ the "how to fix" part of messages
def _message(make):
    with pytest.raises((ValueError, TypeError)) as excinfo:
        make()
    _assert_clear(excinfo)
    return str(excinfo.value)


@pytest.mark.parametrize("make,hint", [
    (lambda: _net(seed=-1), "Pass e.g. seed=0 (or None)."),
    (lambda: _net(seed=1.5), "Pass e.g. seed=0 (or None)."),
    (lambda: fastbp.EarlyStopping(patience=-1), "Pass e.g. EarlyStopping(patience=3)."),
    (lambda: fastbp.ProgbarLogger(epochs=0), "Pass e.g. ProgbarLogger(epochs=1)."),
    (lambda: fastbp.ProgbarLogger(rows=-3), "Pass e.g. ProgbarLogger(rows=1)."),
    (lambda: fastbp.EarlyStopping(restore_best_weights=1),
     "Pass EarlyStopping(restore_best_weights=True) or "
     "EarlyStopping(restore_best_weights=False)."),
    (lambda: fastbp.EarlyStopping(min_delta=float("nan")), "Pass e.g. EarlyStopping(min_delta="),
    (lambda: _net().fit(*_data(), batch_size=0), "Pass e.g. batch_size=1."),
    (lambda: _net().fit(*_data(), shuffle="no"), "Pass shuffle=True or shuffle=False."),
    (lambda: fastbp.Adam(beta_1=2), "Pass e.g. beta_1=0.5."),
    (lambda: fastbp.SGD(learning_rate=-1), "Pass e.g. learning_rate=0.001."),
    (lambda: _net(kernel_initializer=float("nan")),
     "Pass e.g. kernel_initializer=0.0 or kernel_initializer='glorot_uniform'."),
    (lambda: _net(bias_initializer=float("inf")),
     "Pass e.g. bias_initializer=0.0 or bias_initializer='zeros'."),
    (lambda: fastbp.Optimizer.from_config({"name": "adam"}),
     "(the name is case-sensitive). Pass the dict that get_config() returns, e.g. "
     "fastbp.Adam().get_config() = {'name': 'Adam'"),
    (lambda: fastbp.Optimizer.from_config({"learning_rate": 0.1}), "found no 'name' key. Pass"),
])
def test_messages_say_how_to_fix_in_words_a_user_can_type(make, hint):
    message = _message(make)
    assert hint in message, message


def test_example_writes_an_argument_as_a_user_types_it():
    from fastbp._validation import example

    assert example("batch_size", 1) == "batch_size=1"
    assert example("seed (or None)", 0) == "seed=0 (or None)"
    assert example("EarlyStopping patience", 3) == "EarlyStopping(patience=3)"
    assert example("kernel_initializer", "zeros") == "kernel_initializer='zeros'"


def test_show_is_the_one_helper_that_quotes_found_values():
    from fastbp._validation import show

    class Broken:
        def __repr__(self):
            raise RuntimeError("no repr")

    assert show(5) == "5" and show("a") == "'a'"
    long = show(list(range(100)))
    assert len(long) == 80 and long.endswith("...") and long.startswith("[0, 1, 2")
    assert len(show("x" * 500, limit=20)) == 20
    assert show(Broken()) == "<Broken object>"
    assert len(show(10 ** 5000)) <= 80        # a repr that raises or is huge
    assert show.__doc__ and "80" in show.__doc__


# ----------------------------------------------------------------- EarlyStopping min_delta
def test_negative_min_delta_counts_as_its_absolute_value_as_in_keras():
    assert fastbp.EarlyStopping(min_delta=-0.01).min_delta == 0.01
    assert type(fastbp.EarlyStopping(min_delta=np.float32(-0.5)).min_delta) is float
    X, y = _data()
    runs = []
    for delta in (0.05, -0.05):
        net = _net(seed=1)
        stopper = fastbp.EarlyStopping(monitor="loss", min_delta=delta, patience=1)
        history = net.fit(X, y, epochs=30, batch_size=2, callbacks=[stopper], verbose=0)
        runs.append((history.history["loss"], stopper.stopped_epoch,
                     [w.tobytes() for w in net.get_weights()]))
    assert runs[0] == runs[1] and runs[0][1] > 0     # it stopped, and the same way
    for bad in (float("nan"), float("inf"), -float("inf"), "0.1", None, True):
        with pytest.raises(ValueError):
            fastbp.EarlyStopping(min_delta=bad)


# ------------------------------------------------------------------ softmax and class labels
@pytest.mark.parametrize("kwargs,words", [
    (dict(activations="softmax"), "output activation only"),
    (dict(activations=["relu", "softmax"]), "hidden layer 2"),
    (dict(output_activation="softmax"), "Jacobian"),
    (dict(output_activation="softmax", loss="binary_crossentropy"), "Jacobian"),
    (dict(loss="categorical_crossentropy"), "output_activation='softmax'"),
    (dict(loss="sparse_categorical_crossentropy", output_activation="sigmoid"),
     "output_activation='softmax'"),
])
def test_softmax_pairs_with_the_categorical_losses_only(kwargs, words):
    with pytest.raises(ValueError, match=words) as excinfo:
        fastbp.Network([3, 4, 4, 3], backend="numpy", **kwargs)
    _assert_clear(excinfo)


@pytest.mark.parametrize("labels,found", [
    ([0, 1, 3, 0], "found 3 at row 2"),
    ([0, -1, 2, 0], "found -1 at row 1"),
    ([0.0, 1.5, 2.0, 0.0], "found 1.5 at row 1"),
    ([0.0, 1.0, np.nan, 0.0], "found nan at row 2"),
])
def test_bad_class_labels_are_refused_and_change_nothing(backend, labels, found):
    net = fastbp.Network([3, 4, 3], output_activation="softmax",
                         loss="sparse_categorical_crossentropy", backend=backend)
    before = net.get_weights()
    X = np.ones((4, 3))
    for call in (lambda: net.fit(X, np.array(labels), verbose=0),
                 lambda: net.evaluate(X, np.array(labels))):
        with pytest.raises(ValueError, match=found) as excinfo:
            call()
        _assert_clear(excinfo)
    with pytest.raises(ValueError, match="class labels of shape"):
        net.fit(X, np.eye(3)[[0, 1, 2, 0]], verbose=0)  # one-hot rows: the other loss
    for a, b in zip(before, net.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_bad_labels_in_a_streamed_block_name_the_row(tmp_path):
    X = np.ones((30, 3))
    labels = np.zeros(30, dtype=np.int64)
    labels[23] = 7
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", labels)
    net = fastbp.Network([3, 4, 3], output_activation="softmax",
                         loss="sparse_categorical_crossentropy", backend="numpy")
    before = net.get_weights()
    with fastbp.config_context(chunk_rows=10), \
            pytest.raises(ValueError, match="found 7 at row 23"):
        net.fit(np.load(tmp_path / "X.npy", mmap_mode="r"),
                np.load(tmp_path / "y.npy", mmap_mode="r"), shuffle=False, verbose=0)
    for a, b in zip(before, net.get_weights()):
        np.testing.assert_array_equal(a, b)


# Large arrays are checked by their sum first, small ones element-wise: both paths.
CHECK_ROWS = [4, _validation._SUM_CHECK_MIN // 2]


@pytest.mark.parametrize("rows", CHECK_ROWS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_finite_values_whose_sum_overflows_are_accepted_without_a_warning(dtype, rows):
    # the finiteness check sums large data first; a sum that overflows must fall
    # back to the element-wise check, not be taken for a NaN/inf
    big = np.finfo(dtype).max / 2
    data = np.full((rows, 2), big, dtype=dtype)
    data[1, 1] = -big
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise"):  # the caller's state does not leak in either
            _validation.check_finite(data, "X")
            assert _validation.to_dtype(data, dtype, "X") is data


@pytest.mark.parametrize("rows", CHECK_ROWS)
@pytest.mark.parametrize("bad, where", [
    (np.nan, (2, 1)), (np.inf, (3, 0)), (-np.inf, (0, 1)),
])
def test_a_single_nan_or_inf_is_found_at_its_index_even_beside_huge_values(bad, where, rows):
    data = np.full((rows + 1, 2), np.finfo(np.float64).max / 2)
    data[where] = bad
    before = data.copy()
    with pytest.raises(ValueError, match=re.escape(f"at index {where}")):
        _validation.check_finite(data, "X")
    np.testing.assert_array_equal(data, before)
    # an inf beside an inf of the other sign (their sum is NaN) is found first,
    # at the caller's row when the array is a block of it
    data = np.zeros((2 * rows, 1))
    data[1, 0], data[2, 0] = np.inf, -np.inf
    with pytest.raises(ValueError, match=re.escape("(inf) at index (11, 0)")):
        _validation.check_finite(data, "X", first_row=10)

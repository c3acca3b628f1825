"""The public surface: names, defaults, reporting, backend selection."""

import io
import subprocess
import sys

import numpy as np
import pytest

import fastbp


def test_public_names():
    """Each public name is what it says: classes, functions, the version string."""
    assert set(fastbp.__all__) <= set(dir(fastbp))
    for name in ("Network", "SGD", "Adam", "RMSprop", "EarlyStopping", "History",
                 "ProgbarLogger", "Callback"):
        assert isinstance(getattr(fastbp, name), type), name
    for name in ("SGD", "Adam", "RMSprop"):
        assert issubclass(getattr(fastbp, name), fastbp.Optimizer)
    for name in ("EarlyStopping", "History", "ProgbarLogger"):
        assert issubclass(getattr(fastbp, name), fastbp.Callback)
    assert issubclass(fastbp.TrainingDivergedError, FloatingPointError)
    assert issubclass(fastbp.ManyDivergedError, fastbp.TrainingDivergedError)
    for name in ("load", "available_backends", "show_config", "get_config", "set_config",
                 "config_context", "fit_many", "predict_many"):
        assert callable(getattr(fastbp, name)), name
    assert isinstance(fastbp.__version__, str) and fastbp.__version__.count(".") >= 1
    assert "numpy" in fastbp.available_backends()


def test_keras_defaults():
    assert fastbp.SGD() == fastbp.SGD(learning_rate=0.01, momentum=0.0, nesterov=False)
    assert fastbp.Adam() == fastbp.Adam(learning_rate=0.001, beta_1=0.9, beta_2=0.999,
                                        epsilon=1e-7)
    assert fastbp.RMSprop() == fastbp.RMSprop(learning_rate=0.001, rho=0.9, momentum=0.0,
                                              epsilon=1e-7)


def test_import_is_light():
    code = ("import sys, fastbp; "
            "print('numba' in sys.modules, 'fastbp._backends.numpy_' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]


def test_summary_counts_parameters():
    net = fastbp.Network([20, 64, 64, 1], backend="numpy")
    lines = []
    net.summary(print_fn=lines.append)
    text = lines[0]
    # 20*64+64 = 1344, 64*64+64 = 4160, 64*1+1 = 65; total 5569
    for count in ("1,344", "4,160", "65", "Total params: 5,569"):
        assert count in text
    assert net.count_params() == 5569


def test_weights_are_keras_layout():
    net = fastbp.Network([3, 4, 2], backend="numpy")
    shapes = [w.shape for w in net.get_weights()]
    assert shapes == [(3, 4), (4,), (4, 2), (2,)]
    # a copy: changing it changes nothing
    w = net.get_weights()
    w[0][...] = 7
    assert not (net.get_weights()[0] == 7).any()


@pytest.mark.parametrize("init,limit", [("glorot_uniform", np.sqrt(6 / (30 + 50))),
                                        ("he_uniform", np.sqrt(6 / 30))])
def test_initializers(init, limit):
    K = fastbp.Network([30, 50], kernel_initializer=init, backend="numpy").get_weights()[0]
    assert np.abs(K).max() <= limit and np.abs(K).max() > 0.9 * limit
    assert abs(K.mean()) < 0.05 * limit
    net = fastbp.Network([3, 2], kernel_initializer=0.1, bias_initializer=-0.5, backend="numpy")
    K, b = net.get_weights()
    assert (K == 0.1).all() and (b == -0.5).all()


def test_validation_data_and_split_report_val_loss():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 2)), rng.normal(size=40)
    net = fastbp.Network([2, 3, 1], backend="numpy")
    hist = net.fit(X, y, epochs=3, validation_data=(X[:5], y[:5]), verbose=0)
    assert len(hist.history["val_loss"]) == 3 and len(hist.history["loss"]) == 3
    assert hist.history["val_loss"][-1] == pytest.approx(net.evaluate(X[:5], y[:5]))
    net = fastbp.Network([2, 3, 1], backend="numpy")
    hist = net.fit(X, y, epochs=1, validation_split=0.25, shuffle=False, batch_size=1,
                   verbose=0)
    # Keras holds out the last rows: 30 train, 10 validation
    assert hist.history["val_loss"][0] == pytest.approx(net.evaluate(X[30:], y[30:]))


def test_available_backends_and_show_config():
    names = fastbp.available_backends()
    assert "numpy" in names
    buffer = io.StringIO()
    fastbp.show_config(file=buffer)
    text = buffer.getvalue()
    assert "active backend:" in text and "numpy" in text


def test_environment_forces_backend(monkeypatch):
    monkeypatch.setenv("FASTBP_BACKEND", "numpy")
    assert fastbp.Network([2, 1]).backend == "numpy"
    monkeypatch.setenv("FASTBP_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="FASTBP_BACKEND"):
        fastbp.Network([2, 1])


def test_auto_resolves_to_fastest_available():
    expected = next(n for n in ("numba", "cython", "numpy") if n in fastbp.available_backends())
    assert fastbp.Network([2, 1], backend="auto").backend == expected


def test_float32_end_to_end():
    X = np.random.default_rng(0).normal(size=(8, 2))  # float64 input, cast once
    net = fastbp.Network([2, 3, 1], dtype="float32", backend="numpy")
    net.fit(X, X[:, 0], epochs=1, verbose=0)
    assert all(w.dtype == np.float32 for w in net.get_weights())
    assert net.predict(X).dtype == np.float32
    assert isinstance(net.evaluate(X, X[:, 0]), float)
    assert all(g.dtype == np.float32 for g in net.gradients(X, X[:, 0]))

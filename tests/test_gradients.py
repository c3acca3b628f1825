"""Central finite differences (float64) against ``Network.gradients`` on every backend."""

import numpy as np
import pytest

import fastbp

from . import naive
from .conftest import assert_close

ACTIVATIONS = ["linear", "relu", "sigmoid", "tanh"]
LOSSES = ["mse", "mae", "huber", "binary_crossentropy"]


def _problem(loss, depth, n_out, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(6, 3))
    if loss == "binary_crossentropy":
        y = (rng.uniform(size=(6, n_out)) > 0.5).astype(float)
    else:
        y = rng.normal(size=(6, n_out)) * 2
    layers = [3] + [4] * depth + [n_out]
    return X, y, layers


def finite_difference(net, X, y, h=1e-6):
    weights = net.get_weights()
    grads = []
    for index, w in enumerate(weights):
        g = np.zeros_like(w)
        for pos in np.ndindex(w.shape):
            values = []
            for sign in (1, -1):
                trial = [v.copy() for v in weights]
                trial[index][pos] += sign * h
                net.set_weights(trial)
                values.append(net.evaluate(X, y))
            g[pos] = (values[0] - values[1]) / (2 * h)
        grads.append(g)
    net.set_weights(weights)
    return grads


@pytest.mark.parametrize("depth", [0, 1, 2])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradients_match_finite_differences(backend, activation, loss, depth):
    X, y, layers = _problem(loss, depth, n_out=2, seed=depth)
    output = "sigmoid" if loss == "binary_crossentropy" else activation
    # a non-zero bias keeps pre-activations off relu's kink at exactly 0, which a dead
    # hidden layer would otherwise produce and which finite differences cannot resolve
    net = fastbp.Network(layers, activations=activation, output_activation=output, loss=loss,
                         bias_initializer=0.05, backend=backend, seed=depth + 10)
    analytic = net.gradients(X, y)
    numeric = finite_difference(net, X, y)
    for a, n in zip(analytic, numeric):
        np.testing.assert_allclose(a, n, rtol=1e-6, atol=1e-8)


def test_gradients_match_oracle(backend, dtype):
    X, y, layers = _problem("mse", 2, n_out=2, seed=4)
    net = fastbp.Network(layers, activations=["tanh", "sigmoid"], backend=backend, dtype=dtype)
    _, expected = naive.batch_loss_and_gradients(naive.to_lists(net.get_weights()),
                                                 ["tanh", "sigmoid", "linear"], "mse", X, y)
    assert_close(net.gradients(X, y), [np.array(g) for g in expected], dtype)


def test_gradients_leave_weights_alone(backend):
    X, y, layers = _problem("mse", 1, n_out=1, seed=0)
    net = fastbp.Network(layers, backend=backend)
    before = net.get_weights()
    net.gradients(X, y)
    for a, b in zip(before, net.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_bce_gradient_is_zero_where_clipped(backend):
    # a linear output far outside [0, 1] is clipped: no gradient flows
    net = fastbp.Network([1, 1], output_activation="linear", loss="binary_crossentropy",
                         kernel_initializer=5.0, backend=backend)
    grads = net.gradients(np.array([[1.0]]), np.array([1.0]))
    assert grads[0][0, 0] == 0.0 and grads[1][0] == 0.0
    # loss there is -log(1 - 1e-7) as Keras clips: the clipped value
    assert np.isclose(net.evaluate(np.array([[1.0]]), np.array([1.0])), -np.log(1 - 1e-7),
                      rtol=1e-6)


@pytest.mark.parametrize("depth", [0, 1, 2])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("loss", ["categorical_crossentropy", "sparse_categorical_crossentropy"])
def test_categorical_gradients_match_finite_differences(backend, activation, loss, depth):
    rng = np.random.default_rng(depth)
    X = rng.normal(size=(6, 3))
    if loss == "sparse_categorical_crossentropy":
        y = rng.integers(0, 4, size=6)
    else:  # probability rows (each sums to 1): the loss whose derivative is softmax - y
        y = rng.uniform(0.1, 1.0, size=(6, 4))
        y /= y.sum(axis=1, keepdims=True)
    net = fastbp.Network([3] + [4] * depth + [4], activations=activation,
                         output_activation="softmax", loss=loss, bias_initializer=0.05,
                         backend=backend, seed=depth + 10)
    analytic = net.gradients(X, y)
    numeric = finite_difference(net, X, y)
    for a, n in zip(analytic, numeric):
        np.testing.assert_allclose(a, n, rtol=1e-6, atol=1e-8)


def test_categorical_gradients_match_oracle(backend, dtype):
    rng = np.random.default_rng(5)
    X, labels = rng.normal(size=(6, 3)), rng.integers(0, 3, size=6)
    net = fastbp.Network([3, 4, 4, 3], activations=["tanh", "relu"], output_activation="softmax",
                         loss="sparse_categorical_crossentropy", backend=backend, dtype=dtype)
    value, expected = naive.batch_loss_and_gradients(
        naive.to_lists(net.get_weights()), ["tanh", "relu", "softmax"],
        "categorical_crossentropy", X, np.eye(3)[labels])
    assert_close(net.gradients(X, labels), [np.array(g) for g in expected], dtype)
    assert_close(net.evaluate(X, labels), value, dtype)

"""Keras semantics, checked against numbers derived by hand from Keras 3's formulas.

Every expected value here is computed in the test from the formulas, with
plain scalar arithmetic -- never copied from fastbp's output.
"""

import math

import numpy as np
import pytest

import fastbp

from . import naive
from .conftest import assert_close

# (cgpa, score) -> package
ROWS = np.array([[8, 8, 4], [7, 9, 5], [6, 10, 6], [5, 12, 7]], dtype=float)


def small_net(backend, dtype="float64", **kwargs):
    kwargs.setdefault("activations", "linear")
    return fastbp.Network([2, 2, 1], kernel_initializer=0.1, backend=backend, dtype=dtype,
                          **kwargs)


def test_first_per_sample_step_by_hand(backend, dtype):
    net = small_net(backend, dtype)
    net.fit(ROWS[:1, :2], ROWS[:1, 2], epochs=1, batch_size=1, shuffle=False,
            optimizer=fastbp.SGD(learning_rate=0.001), verbose=0)
    # forward: each hidden unit 0.1*8 + 0.1*8 = 1.6; output 0.1*1.6 + 0.1*1.6 = 0.32
    h, p, y, lr = 1.6, 0.32, 4.0, 0.001
    dp = 2 * (p - y)                      # d(mse)/dp, one sample one output: -7.36
    dh = 0.1 * dp                         # through the linear output kernel
    K1 = np.full((2, 2), 0.1 - lr * 8 * dh)   # both inputs are 8
    b1 = np.full(2, 0.0 - lr * dh)
    K2 = np.full((2, 1), 0.1 - lr * h * dp)
    b2 = np.array([0.0 - lr * dp])
    assert_close(net.get_weights(), [K1, b1, K2, b2], dtype)
    assert math.isclose(0.1 - lr * 8 * dh, 0.105888, rel_tol=1e-12)  # the arithmetic, by hand


def test_two_two_one_epoch_matches_oracle_and_loss_definition(backend, dtype):
    net = small_net(backend, dtype)
    hist = net.fit(ROWS[:, :2], ROWS[:, 2], epochs=1, batch_size=1, shuffle=False,
                   optimizer=fastbp.SGD(learning_rate=0.001), verbose=0)
    weights, loss = naive.train(small_net("numpy").get_weights(), ["linear", "linear"], "mse",
                                ROWS[:, :2], ROWS[:, 2:], [0, 1, 2, 3], 1,
                                naive.Optimizer("sgd", learning_rate=0.001))
    assert_close(net.get_weights(), [np.array(w) for w in weights], dtype)
    assert_close(hist.history["loss"], [loss], dtype)
    # the first sample's loss, before its update, is (4 - 0.32)^2 = 13.5424
    assert loss > 13.5424 / 4


def test_epoch_loss_weights_short_last_batch(backend, dtype):
    """Reported loss = sum_b n_b L_b / sum_b n_b, each L_b taken before the update."""
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    y = [2.0, 1.0, 0.0, 1.0, 3.0]
    lr = 0.01
    net = fastbp.Network([1, 1], output_activation="linear", kernel_initializer=0.5,
                         backend=backend, dtype=dtype)
    hist = net.fit(np.array(x)[:, None], np.array(y), epochs=1, batch_size=2, shuffle=False,
                   optimizer=fastbp.SGD(learning_rate=lr), verbose=0)
    w, b = 0.5, 0.0
    weighted, batch_losses = 0.0, []
    for start in (0, 2, 4):  # batches of 2, 2 and 1 rows
        xs, ys = x[start:start + 2], y[start:start + 2]
        errors = [w * xi + b - yi for xi, yi in zip(xs, ys)]
        L = sum(e * e for e in errors) / len(xs)
        gw = sum(2 * e * xi for e, xi in zip(errors, xs)) / len(xs)
        gb = sum(2 * e for e in errors) / len(xs)
        weighted += len(xs) * L
        batch_losses.append(L)
        w, b = w - lr * gw, b - lr * gb
    assert_close(hist.history["loss"], [weighted / 5], dtype)
    assert not math.isclose(weighted / 5, sum(batch_losses) / 3, rel_tol=1e-3)
    assert_close(net.get_weights(), [np.array([[w]]), np.array([b])], dtype)


def _two_steps(kind, **hyper):
    """w, b of p = w*x + b after two steps on x=1, y=0, mse, from w=0.5, b=0.

    L = (w + b)^2, so both gradients equal 2 (w + b).  Keras 3's formulas.
    """
    w, b = 0.5, 0.0
    slots = {"w": [0.0, 0.0], "b": [0.0, 0.0]}
    lr = hyper["learning_rate"]
    for t in (1, 2):
        g = 2 * (w + b)
        new = {}
        for name, value in (("w", w), ("b", b)):
            s = slots[name]
            if kind == "sgd":
                value = value - lr * g
            elif kind == "momentum":
                s[0] = hyper["momentum"] * s[0] - lr * g
                value = value + s[0]
            elif kind == "nesterov":
                s[0] = hyper["momentum"] * s[0] - lr * g
                value = value + hyper["momentum"] * s[0] - lr * g
            elif kind == "adam":
                alpha = lr * math.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
                s[0] += (g - s[0]) * (1 - 0.9)
                s[1] += (g * g - s[1]) * (1 - 0.999)
                value = value - alpha * s[0] / (math.sqrt(s[1]) + 1e-7)
            elif kind in ("rmsprop", "rmsprop_momentum"):
                s[0] = 0.9 * s[0] + 0.1 * g * g
                increment = lr * g / math.sqrt(s[0] + 1e-7)
                if kind == "rmsprop_momentum":
                    s[1] = hyper["momentum"] * s[1] + increment
                    value = value - s[1]
                else:
                    value = value - increment
            new[name] = value
        w, b = new["w"], new["b"]
    return w, b


OPTIMIZERS = {
    "sgd": lambda: fastbp.SGD(learning_rate=0.1),
    "momentum": lambda: fastbp.SGD(learning_rate=0.1, momentum=0.9),
    "nesterov": lambda: fastbp.SGD(learning_rate=0.1, momentum=0.9, nesterov=True),
    "adam": lambda: fastbp.Adam(learning_rate=0.1),
    "rmsprop": lambda: fastbp.RMSprop(learning_rate=0.1),
    "rmsprop_momentum": lambda: fastbp.RMSprop(learning_rate=0.1, momentum=0.5),
}


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_optimizer_two_steps_by_hand(backend, dtype, kind):
    optimizer = OPTIMIZERS[kind]()
    net = fastbp.Network([1, 1], kernel_initializer=0.5, backend=backend, dtype=dtype)
    X, y = np.ones((2, 1)), np.zeros(2)
    net.fit(X, y, epochs=1, batch_size=1, shuffle=False, optimizer=optimizer, verbose=0)
    w, b = _two_steps(kind, learning_rate=0.1, momentum=getattr(optimizer, "momentum", 0))
    assert_close(net.get_weights(), [np.array([[w]]), np.array([b])], dtype)


def test_adam_first_step_is_learning_rate_sized():
    # m1 = 0.1 g, v1 = 0.001 g^2, alpha = lr sqrt(0.001) / 0.1 -> step = lr * |g| / (|g| + eps/sqrt(.001))
    net = fastbp.Network([1, 1], kernel_initializer=0.5, backend="numpy")
    net.fit(np.ones((1, 1)), np.zeros(1), batch_size=1, optimizer=fastbp.Adam(0.001), verbose=0)
    g = 1.0
    step = 0.001 * g / (g + 1e-7 / math.sqrt(0.001))
    assert math.isclose(net.get_weights()[0][0, 0], 0.5 - step, rel_tol=1e-12)


def test_optimizer_state_survives_second_fit(backend):
    X = np.linspace(-1, 1, 12).reshape(6, 2)
    y = X.sum(axis=1) ** 2
    one = fastbp.Network([2, 3, 1], activations="tanh", backend=backend, seed=3)
    one.fit(X, y, epochs=2, batch_size=2, shuffle=False, optimizer=fastbp.Adam(0.01), verbose=0)
    two = fastbp.Network([2, 3, 1], activations="tanh", backend=backend, seed=3)
    two.fit(X, y, epochs=1, batch_size=2, shuffle=False, optimizer=fastbp.Adam(0.01), verbose=0)
    two.fit(X, y, epochs=1, batch_size=2, shuffle=False, verbose=0)  # continues Adam
    assert_close(two.get_weights(), one.get_weights(), "float64")
    # a different optimizer configuration starts from fresh state
    three = fastbp.Network([2, 3, 1], activations="tanh", backend=backend, seed=3)
    three.fit(X, y, epochs=1, batch_size=2, shuffle=False, optimizer=fastbp.Adam(0.01), verbose=0)
    three.fit(X, y, epochs=1, batch_size=2, shuffle=False, optimizer=fastbp.Adam(0.02),
              verbose=0)
    assert not np.allclose(three.get_weights()[0], one.get_weights()[0])


def test_targets_1d_and_column_identical(backend, dtype):
    X = np.random.default_rng(0).normal(size=(9, 3))
    y = X[:, 0] - X[:, 1]
    a = fastbp.Network([3, 4, 1], backend=backend, dtype=dtype, seed=1)
    b = fastbp.Network([3, 4, 1], backend=backend, dtype=dtype, seed=1)
    ha = a.fit(X, y, epochs=2, batch_size=2, verbose=0)
    hb = b.fit(X, y[:, None], epochs=2, batch_size=2, verbose=0)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    assert ha.history == hb.history


def test_shuffle_is_seeded(backend):
    X = np.random.default_rng(1).normal(size=(20, 2))
    y = X @ [1.0, -2.0]

    def run(seed, shuffle=True):
        net = fastbp.Network([2, 3, 1], backend=backend, seed=0)
        net._rng = np.random.default_rng(seed)  # only the shuffle stream differs
        net.fit(X, y, epochs=2, batch_size=1, shuffle=shuffle, verbose=0)
        return net.get_weights()[0]

    np.testing.assert_array_equal(run(5), run(5))
    assert not np.array_equal(run(5), run(6))
    np.testing.assert_array_equal(run(5, shuffle=False), run(6, shuffle=False))


def test_same_seed_same_run_bitwise(backend, dtype):
    X = np.random.default_rng(2).normal(size=(50, 4))
    y = np.sin(X).sum(axis=1)

    def run():
        net = fastbp.Network([4, 8, 1], activations="tanh", backend=backend, dtype=dtype, seed=7)
        hist = net.fit(X, y, epochs=3, batch_size=4, optimizer=fastbp.Adam(0.01), verbose=0)
        return net.get_weights(), hist.history["loss"]

    (w1, l1), (w2, l2) = run(), run()
    assert l1 == l2
    for a, b in zip(w1, w2):
        np.testing.assert_array_equal(a, b)


def test_xor_is_learned(backend):
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=float)
    y = np.array([0, 1, 1, 0], dtype=float)
    net = fastbp.Network([2, 8, 1], activations="relu", output_activation="sigmoid",
                         loss="binary_crossentropy", backend=backend, seed=1)
    hist = net.fit(X, y, epochs=500, batch_size=4, optimizer=fastbp.Adam(0.05), verbose=0)
    assert hist.history["loss"][-1] < 0.1 < hist.history["loss"][0]
    np.testing.assert_array_equal(net.predict(X)[:, 0] > 0.5, y > 0.5)


@pytest.mark.parametrize("bias,target", [(2.0, 0.0), (-2.0, 1.0)])
def test_cross_entropy_at_saturated_predictions(backend, dtype, bias, target):
    """A prediction outside [eps, 1 - eps] is clipped in the network dtype, as Keras does.

    With a linear output the prediction is the bias: 2 is clipped to 1 - eps
    and the loss of target 0 is -log(1 - (1 - eps)), formed in the dtype (in
    float32 that is -log(1.19e-7), not -log(1e-7)); -2 is clipped to eps and
    the loss of target 1 is -log(eps).  No gradient flows through the clip.
    """
    t = np.dtype(dtype).type
    eps, one = t(1e-7), t(1)
    clipped = one - eps if bias > 0 else eps
    expected = -np.log(one - clipped) if target == 0.0 else -np.log(clipped)
    net = fastbp.Network([1, 1], output_activation="linear", loss="binary_crossentropy",
                         kernel_initializer=0.0, bias_initializer=bias, dtype=dtype,
                         backend=backend)
    X, y = np.zeros((1, 1)), np.array([target])
    assert net.evaluate(X, y) == pytest.approx(float(expected), rel=1e-6)
    kernel_grad, bias_grad = net.gradients(X, y)
    assert kernel_grad[0, 0] == 0 and bias_grad[0] == 0


# ------------------------------------------------------------------ softmax + categorical loss
def _softmax_row_by_hand(x, label, K1, b1, K2, b2):
    """Loss and gradients of one row of a 2-3-3 tanh/softmax net, scalar formulas only.

    loss = -log softmax(z)_label = logsumexp(z) - z_label (Keras's from-logits form);
    d loss / d z = softmax(z) - onehot(label).
    """
    h = [math.tanh(b1[j] + x[0] * K1[0][j] + x[1] * K1[1][j]) for j in range(3)]
    z = [b2[k] + sum(h[j] * K2[j][k] for j in range(3)) for k in range(3)]
    m = max(z)
    lse = m + math.log(sum(math.exp(v - m) for v in z))
    p = [math.exp(v - lse) for v in z]
    dz = [p[k] - (1.0 if k == label else 0.0) for k in range(3)]
    dK2 = [[h[j] * dz[k] for k in range(3)] for j in range(3)]
    dh = [sum(K2[j][k] * dz[k] for k in range(3)) * (1 - h[j] * h[j]) for j in range(3)]
    dK1 = [[x[i] * dh[j] for j in range(3)] for i in range(2)]
    return lse - z[label], p, [dK1, dh, dK2, dz]


SOFTMAX_WEIGHTS = ([[0.1, 0.2, -0.3], [0.0, -0.1, 0.2]], [0.05, 0.0, -0.05],
                   [[0.2, -0.1, 0.0], [0.1, 0.3, -0.2], [-0.3, 0.1, 0.4]],
                   [0.0, math.log(2), math.log(3)])


@pytest.mark.parametrize("batch", [1, 2])
def test_softmax_categorical_sgd_step_by_hand(backend, dtype, batch):
    rows, labels = [[1.0, 2.0], [-0.5, 0.25]], [2, 0]
    lr = 0.1
    net = fastbp.Network([2, 3, 3], activations="tanh", output_activation="softmax",
                         loss="sparse_categorical_crossentropy", backend=backend, dtype=dtype)
    net.set_weights([np.array(w) for w in SOFTMAX_WEIGHTS])
    weights = [np.array(w, dtype=float) for w in SOFTMAX_WEIGHTS]
    losses = []
    for start in range(0, 2, batch):  # SGD, one update per batch of the mean gradient
        parts = [_softmax_row_by_hand(rows[r], labels[r], *[w.tolist() for w in weights])
                 for r in range(start, start + batch)]
        losses += [part[0] for part in parts]
        for i in range(4):
            weights[i] = weights[i] - lr * sum(np.array(part[2][i]) for part in parts) / batch
    X, y = np.array(rows), np.array(labels)
    hist = net.fit(X, y, epochs=1, batch_size=batch, shuffle=False,
                   optimizer=fastbp.SGD(learning_rate=lr), verbose=0)
    assert_close(net.get_weights(), weights, dtype)
    # the epoch loss: the mean over rows of each row's loss, taken before its batch's update
    assert_close(hist.history["loss"], [sum(losses) / 2], dtype)
    # after the step: loss and probabilities of the new weights
    after = [_softmax_row_by_hand(rows[r], labels[r], *[w.tolist() for w in weights])
             for r in range(2)]
    assert_close(net.evaluate(X, y), (after[0][0] + after[1][0]) / 2, dtype)
    assert_close(net.predict(X), [after[0][1], after[1][1]], dtype)


def test_categorical_loss_is_a_sum_over_classes(backend, dtype):
    # zero kernels, output biases (0, ln 2, ln 3): softmax = (1/6, 2/6, 3/6) for any input,
    # so the loss of class 0 is ln 6 (a mean over the 3 outputs would give ln 6 / 3)
    net = fastbp.Network([2, 3], output_activation="softmax", loss="categorical_crossentropy",
                         kernel_initializer=0.0, backend=backend, dtype=dtype)
    net.set_weights([np.zeros((2, 3)), np.array([0.0, math.log(2), math.log(3)])])
    X = np.array([[1.0, -1.0], [3.0, 0.5]])
    assert_close(net.predict(X), [[1 / 6, 2 / 6, 3 / 6]] * 2, dtype)
    assert_close(net.evaluate(X, [[1, 0, 0], [0, 0, 1]]), (math.log(6) + math.log(2)) / 2, dtype)
    # soft targets: -(0.5 ln(1/6) + 0.5 ln(3/6))
    assert_close(net.evaluate(X[:1], [[0.5, 0, 0.5]]), 0.5 * math.log(6) + 0.5 * math.log(2),
                 dtype)
    # the gradient of the mean loss w.r.t. the output bias is mean(p - y)
    grads = net.gradients(X, [[1, 0, 0], [0, 0, 1]])
    assert_close(grads[1], [(1 / 6 - 1 + 1 / 6) / 2, 2 / 6, (3 / 6 + 3 / 6 - 1) / 2], dtype)


def test_softmax_is_stable_for_huge_logits(backend, dtype):
    # logits around 1e4 overflow exp() unshifted; the log-softmax form stays exact
    net = fastbp.Network([1, 2], output_activation="softmax",
                         loss="sparse_categorical_crossentropy", backend=backend, dtype=dtype)
    net.set_weights([np.array([[1.0e4, -1.0e4]]), np.zeros(2)])
    X = np.array([[1.0]])
    assert_close(net.predict(X), [[1.0, 0.0]], dtype)
    # class 1 has log-probability -2e4: the loss is 2e4, not inf or NaN
    assert_close(net.evaluate(X, [1]), 2.0e4, dtype)
    assert_close(net.evaluate(X, [0]), 0.0, dtype)

"""A slow, obviously correct oracle: scalar Python loops over neurons, Python floats.

Written from Keras 3's formulas (see docs/guide/keras.md) without looking at the backends, so
that it can check them.  Weights are lists in Keras layout: ``K[i][j]`` joins
input ``i`` to unit ``j``; ``b[j]`` is unit ``j``'s bias.
"""

import math

EPS = 1e-7  # Keras's epsilon, for the cross-entropy clip


def activate(name, z):
    if name == "linear":
        return z
    if name == "relu":
        return z if z > 0 else 0.0
    if name == "sigmoid":
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0
    if name == "tanh":
        return math.tanh(z)
    raise ValueError(name)


def activation_slope(name, a):
    """d act/dz written through the output a."""
    if name == "linear":
        return 1.0
    if name == "relu":
        return 1.0 if a > 0 else 0.0
    if name == "sigmoid":
        return a * (1.0 - a)
    return 1.0 - a * a  # tanh


def element_loss(name, p, y):
    """(loss, d loss / d p) of one output."""
    e = p - y
    if name == "mse":
        return e * e, 2.0 * e
    if name == "mae":
        return abs(e), (e > 0) - (e < 0)
    if name == "huber":
        if abs(e) <= 1.0:
            return 0.5 * e * e, e
        return abs(e) - 0.5, 1.0 if e > 0 else -1.0
    if name == "binary_crossentropy":
        q = min(max(p, EPS), 1.0 - EPS)
        value = -(y * math.log(q) + (1.0 - y) * math.log(1.0 - q))
        slope = -(y / q - (1.0 - y) / (1.0 - q)) if EPS <= p <= 1.0 - EPS else 0.0
        return value, slope
    raise ValueError(name)


def softmax(z):
    """exp(z_j) / sum_i exp(z_i), computed as exp(z_j - max z) / sum_i exp(z_i - max z)."""
    m = max(z)
    e = [math.exp(v - m) for v in z]
    s = sum(e)
    return [v / s for v in e]


def log_softmax(z):
    """z_j - max z - log(sum_i exp(z_i - max z)): Keras's (TensorFlow's) loss from logits."""
    m = max(z)
    lse = math.log(sum(math.exp(v - m) for v in z))
    return [v - m - lse for v in z]


def logits(weights, activations, x):
    """The output layer's pre-activations for one sample."""
    a = forward(weights, activations, x)[-2]
    K, b = weights[-2], weights[-1]
    return [b[j] + sum(a[i] * K[i][j] for i in range(len(a))) for j in range(len(b))]


def to_lists(weights):
    return [w.tolist() for w in weights]


def forward(weights, activations, x):
    """All layers' outputs for one sample, input first."""
    outputs = [list(map(float, x))]
    for layer, name in enumerate(activations):
        K, b = weights[2 * layer], weights[2 * layer + 1]
        a = outputs[-1]
        z = [b[j] + sum(a[i] * K[i][j] for i in range(len(a))) for j in range(len(b))]
        outputs.append(softmax(z) if name == "softmax" else [activate(name, v) for v in z])
    return outputs


def predict(weights, activations, X):
    return [forward(weights, activations, x)[-1] for x in X]


def batch_loss_and_gradients(weights, activations, loss, xs, ys):
    """Mean loss over the batch (each sample's loss a mean over outputs) and its gradient.

    ``categorical_crossentropy`` (softmax output): each sample's loss is
    -sum_j y_j log_softmax(z)_j, a sum over the classes, and its gradient
    with respect to the logits is softmax(z) - y.
    """
    grads = [[[0.0] * len(K[0]) for _ in K] if isinstance(K[0], list) else [0.0] * len(K)
             for K in weights]
    n = len(xs)
    total = 0.0
    for x, y in zip(xs, ys):
        outputs = forward(weights, activations, x)
        p = outputs[-1]
        k = len(p)
        delta = []
        if loss == "categorical_crossentropy":
            logp = log_softmax(logits(weights, activations, x))
            total += -sum(float(y[j]) * logp[j] for j in range(k)) / n
            delta = [(p[j] - float(y[j])) / n for j in range(k)]
        for j in range(k if loss != "categorical_crossentropy" else 0):
            value, slope = element_loss(loss, p[j], float(y[j]))
            total += value / k / n
            delta.append(slope / k / n * activation_slope(activations[-1], p[j]))
        for layer in range(len(activations) - 1, -1, -1):
            K = weights[2 * layer]
            a = outputs[layer]
            for i in range(len(a)):
                for j in range(len(delta)):
                    grads[2 * layer][i][j] += a[i] * delta[j]
            for j in range(len(delta)):
                grads[2 * layer + 1][j] += delta[j]
            if layer:
                delta = [sum(K[i][j] * delta[j] for j in range(len(delta)))
                         * activation_slope(activations[layer - 1], a[i]) for i in range(len(a))]
    return total, grads


def _flat(nested):
    for item in nested:
        if isinstance(item, list):
            yield from _flat(item)
        else:
            yield item


def _unflat(values, like):
    it = iter(values)

    def build(node):
        return [build(c) for c in node] if isinstance(node, list) else next(it)

    return [build(w) for w in like]


class Optimizer:
    """One optimizer's state over a flat list of parameters; Keras 3 formulas."""

    def __init__(self, kind, **hyper):
        self.kind, self.h, self.step = kind, hyper, 0
        self.slots = None

    def apply(self, params, grads):
        n = len(params)
        if self.slots is None:
            self.slots = [[0.0] * n, [0.0] * n]
        lr = self.h["learning_rate"]
        m, v = self.slots
        t = self.step + 1
        out = []
        for i, (w, g) in enumerate(zip(params, grads)):
            if self.kind == "sgd":
                mu = self.h.get("momentum", 0.0)
                if mu == 0.0 and not self.h.get("nesterov"):
                    w = w - lr * g
                else:
                    m[i] = mu * m[i] - lr * g
                    w = w + (mu * m[i] - lr * g if self.h.get("nesterov") else m[i])
            elif self.kind == "adam":
                b1, b2, eps = self.h["beta_1"], self.h["beta_2"], self.h["epsilon"]
                alpha = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
                m[i] = m[i] + (g - m[i]) * (1 - b1)
                v[i] = v[i] + (g * g - v[i]) * (1 - b2)
                w = w - alpha * m[i] / (math.sqrt(v[i]) + eps)
            elif self.kind == "rmsprop":
                rho, mu, eps = self.h["rho"], self.h.get("momentum", 0.0), self.h["epsilon"]
                m[i] = rho * m[i] + (1 - rho) * g * g
                increment = lr * g / math.sqrt(m[i] + eps)
                if mu > 0:
                    v[i] = mu * v[i] + increment
                    w = w - v[i]
                else:
                    w = w - increment
            out.append(w)
        self.step += 1
        return out


def train(weights, activations, loss, X, Y, order, batch_size, optimizer):
    """One epoch over rows ``order``; returns (new weights, reported epoch loss)."""
    weights = to_lists(weights) if not isinstance(weights[0], list) else weights
    X = [list(map(float, x)) for x in X]
    Y = [list(map(float, y)) for y in Y]
    weighted = 0.0
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        value, grads = batch_loss_and_gradients(weights, activations, loss,
                                                [X[r] for r in rows], [Y[r] for r in rows])
        weighted += value * len(rows)
        flat = optimizer.apply(list(_flat(weights)), list(_flat(grads)))
        weights = _unflat(flat, weights)
    return weights, weighted / len(order)

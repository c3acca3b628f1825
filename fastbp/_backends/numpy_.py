"""Reference backend: plain NumPy, one ``np.dot`` per layer.

This is the loop a user would write by hand, and it is kept that way on
purpose: it is the reference every compiled backend is checked against and
the baseline their speedups are measured over.  It is vectorised within a
sample (or within a minibatch) and loops in Python over samples / batches.

The backend contract (the functions, their arguments and the one policy:
kernels get validated arrays and only assert that) is written once, in
``_contract.py``.
"""

import math

import numpy as np

from . import _codes as C
from . import _contract
from ._contract import (CopyTrainer, check_chunk, check_gradients_call, check_loss_call,
                        check_predict_call, check_trainer_call)
from ._layout import layer_views

NAME = "numpy"
# NumPy releases the GIL only inside single operations: replicas run in turn
RELEASES_GIL = False


def _activate(z, code):
    """Apply activation ``code`` to ``z`` in place and return it."""
    if code == C.RELU:
        np.maximum(z, 0, out=z)
    elif code == C.SIGMOID:
        # exp(-z) overflows to inf for very negative z; 1 / (1 + inf) = 0 is
        # the right limit, so the overflow warning is noise.
        with np.errstate(over="ignore"):
            np.exp(-z, out=z)
        z += 1
        np.reciprocal(z, out=z)
    elif code == C.TANH:
        np.tanh(z, out=z)
    elif code == C.SOFTMAX:
        # the log-softmax of each row (see _codes): z - max - log(sum(exp(z - max))),
        # the stable form; predict returns exp() of it
        z -= z.max(axis=1, keepdims=True)
        z -= np.log(np.exp(z).sum(axis=1, keepdims=True))
    return z


def _derivative(a, code):
    """d act / d z expressed through the activation's output ``a``."""
    if code == C.RELU:
        return (a > 0).astype(a.dtype)  # relu'(0) = 0, as in Keras
    if code == C.SIGMOID:
        return a * (1 - a)
    if code == C.TANH:
        return 1 - a * a
    # linear: derivative 1, nothing to multiply; softmax: the categorical
    # cross-entropy's delta is already taken with respect to the logits
    return None


def _loss_terms(p, y, loss):
    """Element-wise loss and its derivative d loss / d p (not yet averaged).

    For categorical cross-entropy ``p`` is the log-softmax and the
    derivative is taken with respect to the logits: ``softmax - y``, as
    TensorFlow's ``softmax_cross_entropy_with_logits`` takes it (the exact
    derivative of the loss when each row of ``y`` sums to 1).
    """
    if loss == C.CATEGORICAL_CROSSENTROPY:
        return -(y * p), np.exp(p) - y
    e = p - y
    if loss == C.MSE:
        return e * e, 2 * e
    if loss == C.MAE:
        return np.abs(e), np.sign(e)
    if loss == C.HUBER:
        a = np.abs(e)
        small = a <= C.HUBER_DELTA
        value = np.where(small, 0.5 * e * e, C.HUBER_DELTA * (a - 0.5 * C.HUBER_DELTA))
        return value.astype(p.dtype, copy=False), np.where(small, e, C.HUBER_DELTA * np.sign(e))
    # binary cross-entropy on predictions clipped to [eps, 1 - eps]; the clip
    # passes no gradient outside that range.
    eps = p.dtype.type(C.BCE_EPSILON)
    one = p.dtype.type(1)
    pc = np.clip(p, eps, one - eps)
    value = -(y * np.log(pc) + (one - y) * np.log(one - pc))
    inside = (p >= eps) & (p <= one - eps)
    grad = np.where(inside, -(y / pc - (one - y) / (one - pc)), 0).astype(p.dtype, copy=False)
    return value, grad


def _per_row(loss, n_out):
    """What a row's summed element losses are divided by: the outputs, or 1 (a sum)."""
    return 1 if loss == C.CATEGORICAL_CROSSENTROPY else n_out


def _forward(layers, acts, a):
    """Activations of every layer for the rows of ``a`` (input first)."""
    outputs = [a]
    for (kernel, bias), code in zip(layers, acts):
        z = np.dot(a, kernel)
        z += bias
        a = _activate(z, code)
        outputs.append(a)
    return outputs


def _backward(layers, grads, acts, loss, outputs, y, scale):
    """Write d(scale * sum of per-row losses)/d(param) into ``grads``.

    Returns the sum over rows of the per-row loss (mean over outputs; the sum
    for categorical cross-entropy).
    ``scale`` is ``1 / n_rows`` for a training batch (the gradient of the
    batch mean, as Keras takes it) and 1 for a plain sum.
    """
    p = outputs[-1]
    value, dloss = _loss_terms(p, y, loss)
    n_out = _per_row(loss, p.shape[1])
    loss_sum = float(value.sum(dtype=np.float64)) / n_out
    delta = dloss * p.dtype.type(scale / n_out)
    for layer in range(len(layers) - 1, -1, -1):
        kernel, _ = layers[layer]
        grad_kernel, grad_bias = grads[layer]
        derivative = _derivative(outputs[layer + 1], acts[layer])
        if derivative is not None:
            delta *= derivative
        np.dot(outputs[layer].T, delta, out=grad_kernel)
        np.sum(delta, axis=0, out=grad_bias)
        if layer:
            delta = np.dot(delta, kernel.T)
    return loss_sum


def _apply_update(params, grad, optimizer, hyper, state, step):
    """One optimizer step (Keras 3 formulas) on the flat buffers; ``step`` counts from 0."""
    lr = float(hyper[0])
    if optimizer == C.SGD:
        params -= lr * grad
    elif optimizer in (C.SGD_MOMENTUM, C.SGD_NESTEROV):
        momentum = float(hyper[1])
        velocity = state[0]
        velocity *= momentum
        velocity -= lr * grad
        if optimizer == C.SGD_NESTEROV:
            params += momentum * velocity - lr * grad
        else:
            params += velocity
    elif optimizer == C.ADAM:
        beta_1, beta_2, epsilon = float(hyper[1]), float(hyper[2]), float(hyper[3])
        t = step + 1
        alpha = lr * math.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
        m, v = state[0], state[1]
        m += (grad - m) * (1 - beta_1)
        v += (grad * grad - v) * (1 - beta_2)
        params -= alpha * m / (np.sqrt(v) + epsilon)
    else:  # RMSprop, epsilon inside the square root (Keras)
        rho, momentum, epsilon = float(hyper[1]), float(hyper[2]), float(hyper[3])
        v = state[0]
        v *= rho
        v += (1 - rho) * (grad * grad)
        increment = lr * grad / np.sqrt(v + epsilon)
        if optimizer == C.RMSPROP_MOMENTUM:
            buffer = state[1]
            buffer *= momentum
            buffer += increment
            params -= buffer
        else:
            params -= increment


def predict(params, sizes, acts, X, out):
    """Write the network's outputs for the rows of ``X`` into ``out``."""
    check_predict_call(params, sizes, acts, X, out)
    layers = layer_views(params, sizes)
    out[...] = _forward(layers, acts, X)[-1]
    if acts[-1] == C.SOFTMAX:  # the activations hold the log-softmax
        np.exp(out, out=out)


def loss_sum(params, sizes, acts, loss, X, Y):
    """Sum over rows of the per-row loss (a mean over outputs; the sum for categorical
    cross-entropy)."""
    _, loss = check_loss_call(params, sizes, acts, loss, X, Y)
    layers = layer_views(params, sizes)
    p = _forward(layers, acts, X)[-1]
    value, _ = _loss_terms(p, Y, loss)
    return float(value.sum(dtype=np.float64)) / _per_row(loss, p.shape[1])


def loss_and_gradients(params, sizes, acts, loss, X, Y, grad):
    """Return the loss sum over rows and write d(loss sum)/d(param) into ``grad``."""
    check_gradients_call(params, sizes, acts, loss, X, Y, grad)
    layers = layer_views(params, sizes)
    outputs = _forward(layers, acts, X)
    return _backward(layers, layer_views(grad, sizes), acts, loss, outputs, Y, 1.0)


def open_trainer(params, state, sizes, acts, loss, batch_size, optimizer, hyper):
    """A trainer over flat working copies (``_contract.CopyTrainer``) running the batch loop."""
    dtype, loss, batch_size, optimizer = check_trainer_call(params, state, sizes, acts, loss,
                                                            batch_size, optimizer, hyper)
    grad = np.empty_like(params)

    def run(work_params, work_state, X, Y, order, step):
        check_chunk(dtype, sizes, X, Y, order)
        layers = layer_views(work_params, sizes)
        # Overflow on the way to divergence is reported by the caller as one clear
        # error; NumPy's per-operation warnings would only be noise.
        with np.errstate(over="ignore", invalid="ignore"):
            return _train_batches(layers, layer_views(grad, sizes), work_params, grad, acts,
                                  loss, X, Y, order, batch_size, optimizer, hyper, work_state,
                                  step)

    return CopyTrainer(params, state, optimizer, run)


def _train_batches(layers, grads, params, grad, acts, loss, X, Y, order, batch_size,
                   optimizer, hyper, state, step):
    total = 0.0
    n = len(order)
    for start in range(0, n, batch_size):
        rows = order[start:start + batch_size]
        if len(rows) == 1:  # per-sample: a view, not a gather
            x, y = X[rows[0]][None, :], Y[rows[0]][None, :]
        else:
            x, y = X[rows], Y[rows]
        outputs = _forward(layers, acts, x)
        batch_loss = _backward(layers, grads, acts, loss, outputs, y, 1.0 / len(rows))
        if not math.isfinite(batch_loss):
            return total, start
        total += batch_loss
        _apply_update(params, grad, optimizer, hyper, state, step)
        step += 1
    return total, n


#: One chunk without a Network (tests, benchmarks): ``_contract.train_chunk`` on this module.
train_chunk = _contract.module_train_chunk(__name__)

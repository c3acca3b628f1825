"""Chain of trust: naive oracle -> NumPy backend -> every compiled backend.

The NumPy backend is checked against ``tests/naive.py``; every other backend
against the NumPy backend, over activation x loss x optimizer x batch size x
dtype (a covering set rather than the full product, to keep compile counts
and run time small).
"""

import itertools

import numpy as np
import pytest

import fastbp

from . import naive
from .conftest import assert_close

ACTIVATIONS = ["linear", "relu", "sigmoid", "tanh"]
LOSSES = ["mse", "mae", "huber", "binary_crossentropy"]
OPTIMIZERS = {
    "sgd": (lambda: fastbp.SGD(0.01), ("sgd", dict(learning_rate=0.01))),
    "momentum": (lambda: fastbp.SGD(0.01, momentum=0.9),
                 ("sgd", dict(learning_rate=0.01, momentum=0.9))),
    "nesterov": (lambda: fastbp.SGD(0.01, momentum=0.9, nesterov=True),
                 ("sgd", dict(learning_rate=0.01, momentum=0.9, nesterov=True))),
    "adam": (lambda: fastbp.Adam(0.01),
             ("adam", dict(learning_rate=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7))),
    "rmsprop": (lambda: fastbp.RMSprop(0.01),
                ("rmsprop", dict(learning_rate=0.01, rho=0.9, epsilon=1e-7))),
    "rmsprop_momentum": (lambda: fastbp.RMSprop(0.01, momentum=0.5),
                         ("rmsprop", dict(learning_rate=0.01, rho=0.9, momentum=0.5,
                                          epsilon=1e-7))),
}

# Every activation meets every loss once; optimizers and batch sizes rotate
# through those pairs, and every optimizer meets both batch sizes.
CASES = [(act, loss, opt, batch)
         for (act, loss), opt, batch in zip(itertools.product(ACTIVATIONS, LOSSES),
                                            itertools.cycle(sorted(OPTIMIZERS)),
                                            itertools.cycle([1, 3, 1, 3, 3, 1]))]
CASES += [("tanh", "mse", opt, batch) for opt in sorted(OPTIMIZERS) for batch in (1, 3)]


def _data(loss, n_out, rows=7, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, 3))
    if loss == "binary_crossentropy":
        y = (X[:, :n_out] > 0).astype(float)
    else:
        y = np.tanh(X[:, :n_out] - X[:, 1:2]) + 0.1
    return X, y


def _network(activation, loss, backend, dtype, layers=(3, 4, 2)):
    output = "sigmoid" if loss == "binary_crossentropy" else "linear"
    return fastbp.Network(list(layers), activations=activation, output_activation=output,
                          loss=loss, backend=backend, dtype=dtype, seed=11)


@pytest.mark.parametrize("activation,loss,opt,batch", CASES)
def test_numpy_backend_matches_oracle(activation, loss, opt, batch, dtype):
    X, y = _data(loss, 2)
    net = _network(activation, loss, "numpy", dtype)
    start = net.get_weights()
    hist = net.fit(X, y, epochs=2, batch_size=batch, shuffle=False, optimizer=OPTIMIZERS[opt][0](),
                   verbose=0)
    kind, hyper = OPTIMIZERS[opt][1]
    oracle_opt = naive.Optimizer(kind, **hyper)
    weights, losses = naive.to_lists(start), []
    output = "sigmoid" if loss == "binary_crossentropy" else "linear"
    for _ in range(2):
        weights, epoch_loss = naive.train(weights, [activation, output], loss, X, y,
                                          list(range(len(X))), batch, oracle_opt)
        losses.append(epoch_loss)
    assert_close(net.get_weights(), [np.array(w) for w in weights], dtype)
    assert_close(hist.history["loss"], losses, dtype)


@pytest.mark.simulator_slow(dtype="float32")
@pytest.mark.parametrize("activation,loss,opt,batch", CASES)
def test_compiled_backend_matches_numpy(compiled_backend, activation, loss, opt, batch, dtype):
    X, y = _data(loss, 1, rows=41, seed=1)
    results = []
    for backend in ("numpy", compiled_backend):
        net = _network(activation, loss, backend, dtype, layers=(3, 5, 4, 1))
        hist = net.fit(X, y, epochs=3, batch_size=batch, optimizer=OPTIMIZERS[opt][0](),
                       verbose=0)
        results.append((net.get_weights(), hist.history["loss"], net.predict(X),
                        net.evaluate(X, y), net.gradients(X, y)))
    for got, want in zip(results[1], results[0]):
        assert_close(got, want, dtype)


@pytest.mark.simulator_slow
def test_compiled_backend_multi_output_and_long_run(compiled_backend, dtype):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 6))
    y = np.stack([np.sin(X[:, 0]), X[:, 1] * X[:, 2], np.tanh(X.sum(axis=1))], axis=1)
    results = []
    for backend in ("numpy", compiled_backend):
        net = fastbp.Network([6, 16, 8, 3], activations=["relu", "tanh"], backend=backend,
                             dtype=dtype, seed=5)
        hist = net.fit(X, y, epochs=4, batch_size=1, optimizer=fastbp.SGD(0.01, momentum=0.5),
                       verbose=0)
        results.append((net.get_weights(), hist.history["loss"]))
    # longer runs amplify float32 rounding differences a little
    assert_close(results[1], results[0], dtype, scale=10 if dtype == "float32" else 1)


# ------------------------------------------------------------------ inputs the API converts
@pytest.mark.simulator_slow
def test_read_only_memmap_inputs_through_the_api(compiled_backend, dtype, tmp_path):
    """X and y memory-mapped read-only (np.memmap mode 'r'): fit streams them block by block
    and trains as on in-memory arrays, as the NumPy reference does."""
    rng = np.random.default_rng(4)
    X, Y = rng.normal(size=(40, 4)).astype(dtype), rng.normal(size=(40, 2)).astype(dtype)
    maps = []
    for name, array in (("X", X), ("Y", Y)):
        array.tofile(tmp_path / f"{name}.dat")
        maps.append(np.memmap(tmp_path / f"{name}.dat", dtype=array.dtype, mode="r",
                              shape=array.shape))
    nets = [fastbp.Network([4, 8, 2], backend=b, dtype=dtype, seed=2)
            for b in (compiled_backend, "numpy")]
    for net, (x, y) in zip(nets, (maps, (X, Y))):
        net.fit(x, y, epochs=2, batch_size=4, shuffle=False, verbose=0)
    assert_close(nets[0].get_weights(), nets[1].get_weights(), dtype)


@pytest.mark.simulator_slow
def test_strided_and_fortran_inputs_are_converted_once(compiled_backend):
    """The API converts strided, Fortran-ordered and float32 inputs once; the backend then
    sees contiguous arrays of the right dtype (it refuses any other: test_backend_contract)."""
    rng = np.random.default_rng(3)
    base = rng.normal(size=(30, 8))
    X_strided = base[:, ::2]
    X_fortran = np.asfortranarray(base[:, :4])
    y = rng.normal(size=30)
    for X in (X_strided, X_fortran, X_strided.astype(np.float32)):
        nets = [fastbp.Network([4, 5, 1], backend=b, seed=1) for b in (compiled_backend, "numpy")]
        for net in nets:
            net.fit(X, y, epochs=2, batch_size=3, shuffle=False, verbose=0)
        assert_close(nets[0].get_weights(), nets[1].get_weights(), "float64")
        assert_close(nets[0].predict(X), nets[1].predict(X), "float64")


# ------------------------------------------------------------------ softmax + categorical losses
CATEGORICAL = ["categorical_crossentropy", "sparse_categorical_crossentropy"]
# every optimizer with both batch sizes; hidden activation and the two losses rotate
CATEGORICAL_CASES = [(act, loss, opt, batch)
                     for (opt, batch), act, loss in zip(
                         itertools.product(sorted(OPTIMIZERS), (1, 3)),
                         itertools.cycle(ACTIVATIONS), itertools.cycle(CATEGORICAL))]


def _categorical_data(loss, rows, seed, n_classes=3):
    """``(X, y, one_hot)``: class labels for the sparse loss, probability rows for the other.

    The probability rows are soft (every entry non-zero, each row summing to
    1), so the loss's every term counts; the labels depend on X so there is
    something to learn.
    """
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, 3))
    if loss == "sparse_categorical_crossentropy":
        labels = np.argmax(X @ rng.normal(size=(3, n_classes)), axis=1)
        return X, labels, np.eye(n_classes)[labels]
    z = X @ rng.normal(size=(3, n_classes))
    y = np.exp(z - z.max(axis=1, keepdims=True))
    y /= y.sum(axis=1, keepdims=True)
    return X, y, y


def _softmax_network(activation, loss, backend, dtype, layers=(3, 4, 3)):
    return fastbp.Network(list(layers), activations=activation, output_activation="softmax",
                          loss=loss, backend=backend, dtype=dtype, seed=11)


@pytest.mark.parametrize("activation,loss,opt,batch", CATEGORICAL_CASES)
def test_numpy_backend_matches_oracle_categorical(activation, loss, opt, batch, dtype):
    X, y, one_hot = _categorical_data(loss, 7, seed=0)
    net = _softmax_network(activation, loss, "numpy", dtype)
    start = net.get_weights()
    hist = net.fit(X, y, epochs=2, batch_size=batch, shuffle=False, optimizer=OPTIMIZERS[opt][0](),
                   verbose=0)
    kind, hyper = OPTIMIZERS[opt][1]
    oracle_opt = naive.Optimizer(kind, **hyper)
    weights, losses = naive.to_lists(start), []
    for _ in range(2):
        weights, epoch_loss = naive.train(weights, [activation, "softmax"],
                                          "categorical_crossentropy", X, one_hot,
                                          list(range(len(X))), batch, oracle_opt)
        losses.append(epoch_loss)
    assert_close(net.get_weights(), [np.array(w) for w in weights], dtype)
    assert_close(hist.history["loss"], losses, dtype)
    assert_close(net.predict(X), naive.predict(weights, [activation, "softmax"], X), dtype)


@pytest.mark.simulator_slow(dtype="float32")
@pytest.mark.parametrize("activation,loss,opt,batch", CATEGORICAL_CASES)
def test_compiled_backend_matches_numpy_categorical(compiled_backend, activation, loss, opt,
                                                    batch, dtype):
    X, y, _ = _categorical_data(loss, 41, seed=1, n_classes=4)
    results = []
    for backend in ("numpy", compiled_backend):
        net = _softmax_network(activation, loss, backend, dtype, layers=(3, 5, 4, 4))
        hist = net.fit(X, y, epochs=3, batch_size=batch, optimizer=OPTIMIZERS[opt][0](),
                       verbose=0)
        results.append((net.get_weights(), hist.history["loss"], net.predict(X),
                        net.evaluate(X, y), net.gradients(X, y)))
    for got, want in zip(results[1], results[0]):
        assert_close(got, want, dtype)


@pytest.mark.simulator_slow
def test_sparse_labels_from_a_read_only_memmap(compiled_backend, dtype, tmp_path):
    """Labels memory-mapped read-only with X: streamed and one-hot encoded block by block,
    the same training as one-hot rows in memory with categorical cross-entropy."""
    X, labels, one_hot = _categorical_data("sparse_categorical_crossentropy", 40, seed=2)
    np.save(tmp_path / "X.npy", X.astype(dtype))
    np.save(tmp_path / "y.npy", labels.astype(np.int32))
    Xm = np.load(tmp_path / "X.npy", mmap_mode="r")
    ym = np.load(tmp_path / "y.npy", mmap_mode="r")
    streamed = _softmax_network("tanh", "sparse_categorical_crossentropy", compiled_backend,
                                dtype)
    in_memory = _softmax_network("tanh", "categorical_crossentropy", "numpy", dtype)
    with fastbp.config_context(chunk_rows=12):  # several blocks
        h1 = streamed.fit(Xm, ym, epochs=2, batch_size=4, shuffle=False, verbose=0)
        h2 = in_memory.fit(X.astype(dtype), one_hot, epochs=2, batch_size=4, shuffle=False,
                           verbose=0)
    assert_close(streamed.get_weights(), in_memory.get_weights(), dtype)
    assert_close(h1.history["loss"], h2.history["loss"], dtype)

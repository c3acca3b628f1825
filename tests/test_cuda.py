"""The CUDA backend against the NumPy reference, kernel by kernel.

Without a GPU these tests run on Numba's CPU simulator
(``NUMBA_ENABLE_CUDASIM=1``), which executes one Python thread per CUDA
thread -- slow, so the nets are tiny (3-4-2 and 2-3-3-1, ten rows, two
epochs) and the activation x loss x optimizer x batch-size matrix is a
covering set.  Where neither a GPU nor the simulator is available every test
that needs the backend is skipped with the registry's reason.

The shared suite (test_parity.py, ...) also runs "cuda" through the
``backend`` fixture when FASTBP_TEST_CUDA=1 is set (see conftest.py).
"""

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

import fastbp
from fastbp._backends import _codes as C
from fastbp._backends import numpy_
from fastbp._backends._layout import n_params

from .conftest import assert_close, require_backend

NETS = {
    "3-4-2": [3, 4, 2],
    "2-3-3-1": [2, 3, 3, 1],
}
ACTIVATIONS = ["linear", "relu", "sigmoid", "tanh"]
LOSSES = ["mse", "mae", "huber", "binary_crossentropy"]
#: optimizer name -> (code, hyper = [learning_rate, h1, h2, epsilon])
OPTIMIZERS = {
    "sgd": (C.SGD, [0.05, 0.0, 0.0, 0.0]),
    "momentum": (C.SGD_MOMENTUM, [0.05, 0.9, 0.0, 0.0]),
    "nesterov": (C.SGD_NESTEROV, [0.05, 0.9, 0.0, 0.0]),
    "adam": (C.ADAM, [0.02, 0.9, 0.999, 1e-7]),
    "rmsprop": (C.RMSPROP, [0.01, 0.9, 0.0, 1e-7]),
    "rmsprop_momentum": (C.RMSPROP_MOMENTUM, [0.01, 0.9, 0.5, 1e-7]),
}
ROWS, EPOCHS = 10, 2

# Every activation meets every loss once, on alternating nets; optimizers and
# batch sizes rotate through those pairs; then every optimizer meets both
# batch sizes (1, and 3: ten rows leave a short last batch of one).
CASES = [(net, act, loss, opt, batch)
         for (act, loss), net, opt, batch in zip(itertools.product(ACTIVATIONS, LOSSES),
                                                 itertools.cycle(NETS),
                                                 itertools.cycle(OPTIMIZERS),
                                                 itertools.cycle([1, 3, 3, 1, 3]))]
CASES += [("2-3-3-1", "tanh", "mse", opt, batch) for opt in OPTIMIZERS for batch in (1, 3)]


@pytest.fixture
def cuda_():
    """The CUDA backend module; skipped (with the reason) where it cannot run."""
    require_backend("cuda")
    from fastbp._backends import cuda_ as module
    return module


def _problem(sizes, activation, loss, dtype, seed=0):
    """Small parameters, data and layer codes for one case."""
    rng = np.random.default_rng(seed)
    output = C.SIGMOID if loss == "binary_crossentropy" else C.LINEAR
    acts = np.array([C.ACTIVATIONS[activation]] * (len(sizes) - 2) + [output], dtype=np.int64)
    params = (rng.normal(size=n_params(sizes)) * 0.6).astype(dtype)
    X = rng.normal(size=(ROWS, sizes[0])).astype(dtype)
    if loss == "binary_crossentropy":
        Y = (rng.random((ROWS, sizes[-1])) > 0.5).astype(dtype)
    else:
        Y = rng.normal(size=(ROWS, sizes[-1])).astype(dtype)
    return np.array(sizes, dtype=np.int64), acts, C.LOSSES[loss], params, X, Y


def _run(backend, sizes, acts, loss, params, X, Y, opt, batch):
    """Train EPOCHS epochs (a different row order each), then evaluate every kernel."""
    code, hyper = OPTIMIZERS[opt]
    params = params.copy()
    state = np.zeros((C.N_STATE_SLOTS, len(params)), dtype=params.dtype)
    step, losses, orders = 0, [], np.random.default_rng(5)
    for _ in range(EPOCHS):
        order = orders.permutation(len(X)).astype(np.int64)
        total, done = backend.train_chunk(params, sizes, acts, loss, X, Y, order, batch, code,
                                          np.array(hyper), state, step)
        assert done == len(X)
        step += -(-done // batch)
        losses.append(total / done)
    out = np.empty((len(X), int(sizes[-1])), dtype=params.dtype)
    backend.predict(params, sizes, acts, X, out)
    grad = np.empty_like(params)
    grad_loss = backend.loss_and_gradients(params, sizes, acts, loss, X, Y, grad)
    return dict(params=params, state=state, losses=losses, predict=out,
                loss_sum=backend.loss_sum(params, sizes, acts, loss, X, Y),
                grad_loss=grad_loss, grad=grad)


def _assert_same(got, want, dtype):
    for key in want:
        assert_close(got[key], want[key], dtype)


@pytest.mark.parametrize("net,activation,loss,opt,batch", CASES)
def test_kernels_match_numpy(cuda_, net, activation, loss, opt, batch, dtype):
    sizes, acts, code, params, X, Y = _problem(NETS[net], activation, loss, dtype)
    got = _run(cuda_, sizes, acts, code, params, X, Y, opt, batch)
    want = _run(numpy_, sizes, acts, code, params, X, Y, opt, batch)
    _assert_same(got, want, dtype)
    assert got["params"].dtype == np.dtype(dtype)


@pytest.mark.parametrize("threads", [1, 2])
def test_fewer_threads_than_units(cuda_, monkeypatch, threads):
    """Threads stride over the units of layers wider than the block."""
    monkeypatch.setattr(cuda_, "_threads", lambda sizes: threads)
    sizes, acts, code, params, X, Y = _problem([3, 5, 4, 2], "tanh", "mse", "float64")
    got = _run(cuda_, sizes, acts, code, params, X, Y, "adam", 3)
    want = _run(numpy_, sizes, acts, code, params, X, Y, "adam", 3)
    _assert_same(got, want, "float64")


@pytest.mark.parametrize("bad", ["nan", "huge"])
def test_non_finite_batch_stops_before_its_update(cuda_, dtype, bad):
    """A batch whose loss is NaN/inf is not applied, and rows_done excludes it."""
    sizes, acts, code, params, X, Y = _problem([3, 4, 2], "relu", "mse", dtype)
    # in the second batch of three (rows 3..5): NaN, or a loss that overflows
    X[4, 1] = np.nan if bad == "nan" else np.finfo(dtype).max
    results = {}
    for backend in (cuda_, numpy_):
        p = params.copy()
        state = np.zeros((C.N_STATE_SLOTS, len(p)), dtype=dtype)
        with np.errstate(over="ignore", invalid="ignore"):
            total, done = backend.train_chunk(p, sizes, acts, code, X, Y,
                                              np.arange(ROWS, dtype=np.int64), 3, C.ADAM,
                                              np.array([0.01, 0.9, 0.999, 1e-7]), state, 0)
        results[backend.NAME] = p, state, total, done
    (p, state, total, done), (p_ref, state_ref, total_ref, done_ref) = results.values()
    assert done == done_ref == 3
    assert np.isfinite(p).all() and np.isfinite(state).all()
    assert_close([p, state], [p_ref, state_ref], dtype)
    assert_close(total, total_ref, dtype)


def test_network_end_to_end(cuda_, dtype):
    """fit (shuffled, two calls: the optimizer state carries over), predict, evaluate."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(12, 3))
    y = np.tanh(X[:, 0] - X[:, 2])
    results = []
    for backend in ("numpy", "cuda"):
        net = fastbp.Network([3, 4, 1], activations="tanh", backend=backend, dtype=dtype, seed=3)
        assert net.backend == backend
        history = []
        for _ in range(2):
            hist = net.fit(X, y, epochs=2, batch_size=5, optimizer=fastbp.Adam(0.01),
                           validation_split=0.25, verbose=0)
            history += hist.history["loss"] + hist.history["val_loss"]
        results.append((net.get_weights(), history, net.predict(X), net.evaluate(X, y),
                        net.gradients(X, y)))
    for got, want in zip(results[1], results[0]):
        assert_close(got, want, dtype)


def test_arguments_are_checked_before_launch(cuda_):
    sizes, acts, code, params, X, Y = _problem([3, 4, 2], "relu", "mse", "float64")
    state = np.zeros((C.N_STATE_SLOTS, len(params)))
    hyper = np.array([0.01, 0.0, 0.0, 0.0])
    before = params.copy()
    with pytest.raises(IndexError, match="order: expected row indices"):
        cuda_.train_chunk(params, sizes, acts, code, X, Y, np.array([0, ROWS]), 1, C.SGD,
                          hyper, state, 0)
    with pytest.raises(TypeError, match="X: expected dtype float64"):
        cuda_.train_chunk(params, sizes, acts, code, X.astype(np.float32), Y,
                          np.arange(ROWS), 1, C.SGD, hyper, state, 0)
    with pytest.raises(ValueError, match="out: expected shape"):
        cuda_.predict(params, sizes, acts, X, np.empty((ROWS, 3)))
    with pytest.raises(ValueError, match="params: expected 26 values"):
        cuda_.loss_sum(params[:-1], sizes, acts, code, X, Y)
    np.testing.assert_array_equal(params, before)
    # nothing to do: no launch, nothing changes
    assert cuda_.train_chunk(params, sizes, acts, code, X, Y, np.arange(0), 1, C.SGD, hyper,
                             state, 0) == (0.0, 0)
    np.testing.assert_array_equal(params, before)


def test_threads_per_block(cuda_):
    widest = cuda_._threads(np.array([3, 70, 1]))
    assert widest == (70 if cuda_.SIMULATOR else 96)
    assert cuda_._threads(np.array([3, 5000, 1])) == cuda_.MAX_THREADS


def test_import_is_lazy_and_missing_gpu_says_how_to_fix():
    """``import fastbp`` never imports numba.cuda; without a GPU the error says what to do."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    code = (
        "import sys, fastbp\n"
        "fastbp.Network([2, 1], backend='numpy').predict([[1.0, 2.0]])\n"
        "assert 'numba.cuda' not in sys.modules, 'import fastbp imported numba.cuda'\n"
        "from fastbp._backends import import_error\n"
        "if import_error('numba') is None and import_error('cuda') is not None:\n"
        "    try:\n"
        "        fastbp.Network([2, 1], backend='cuda')\n"
        "    except ImportError as exc:\n"
        "        assert 'NUMBA_ENABLE_CUDASIM=1' in str(exc) and 'GPU' in str(exc), exc\n"
        "    else:\n"
        "        raise AssertionError('no ImportError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=env,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

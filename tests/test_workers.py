"""Several workers: local SGD and split minibatches against a slow oracle and the NumPy reference.

The oracle (``local_sgd_oracle``) is written from the documented algorithm
with ``tests/naive.py``'s scalar training loop and optimizer, not from
``fastbp._parallel``: replicas train their shares of each round, then the
weights and optimizer slots of those that trained are averaged.
"""

import copy
import itertools
import os
import signal
import sys
import warnings

import numpy as np
import pytest

import fastbp
from fastbp import _parallel
from fastbp.datasets import make_regression

from . import naive
from .conftest import assert_close, require_backend


@pytest.fixture(autouse=True)
def four_cores(monkeypatch):
    """Pretend four usable cores, so that workers=3 is not capped on a small machine.

    Only the cap reads this; threads run on whatever cores there are.
    """
    monkeypatch.setattr(_parallel, "usable_cores", lambda: 4)


def _quiet_fit(net, *args, **kwargs):
    with warnings.catch_warnings():  # the NumPy backend says its workers take turns
        warnings.simplefilter("ignore", RuntimeWarning)
        return net.fit(*args, **kwargs)


def _naive_optimizer(optimizer):
    config = optimizer.get_config()
    kind = config.pop("name").lower()
    return naive.Optimizer("sgd" if kind == "sgd" else kind, **config)


def local_sgd_oracle(weights, activations, loss, X, Y, order, batch_size, optimizer, workers,
                     average_every):
    """One epoch of local SGD, written from the user guide's description, in Python floats."""
    replicas = [(naive.to_lists(weights), _naive_optimizer(optimizer)) for _ in range(workers)]
    loss_sum = 0.0
    round_rows = workers * average_every
    for start in range(0, len(order), round_rows):
        part = order[start:start + round_rows]
        n_batches = -(-len(part) // batch_size)
        trained = []
        step_before = replicas[0][1].step
        for k in range(workers):
            lo = min(k * n_batches // workers * batch_size, len(part))
            hi = min((k + 1) * n_batches // workers * batch_size, len(part))
            if lo == hi:
                continue
            w, opt = replicas[k]
            w, mean = naive.train(w, activations, loss, X, Y, part[lo:hi], batch_size, opt)
            replicas[k] = (w, opt)
            loss_sum += mean * (hi - lo)
            trained.append(k)
        flat = [list(naive._flat(replicas[k][0])) for k in trained]
        average = [sum(values) / len(trained) for values in zip(*flat)]
        slots = [[[sum(v) / len(trained) for v in zip(*(replicas[k][1].slots[s]
                                                         for k in trained))]
                  for s in range(2)]]
        steps = max(replicas[k][1].step for k in trained) - step_before
        for k in range(workers):
            opt = replicas[k][1]
            opt.slots = copy.deepcopy(slots[0])
            opt.step = step_before + steps
            replicas[k] = (naive._unflat(average, replicas[k][0]), opt)
    return replicas[0][0], loss_sum / len(order)


OPTIMIZERS = {
    "sgd": lambda: fastbp.SGD(0.05),
    "momentum": lambda: fastbp.SGD(0.03, momentum=0.9),
    "nesterov": lambda: fastbp.SGD(0.03, momentum=0.8, nesterov=True),
    "adam": lambda: fastbp.Adam(0.01),
    "rmsprop": lambda: fastbp.RMSprop(0.005),
    "rmsprop_momentum": lambda: fastbp.RMSprop(0.002, momentum=0.5),
}
LOSSES = ("mse", "mae", "huber", "binary_crossentropy")
ACTIVATIONS = ("relu", "tanh", "sigmoid", "linear")


def _problem(loss, n=90, seed=0):
    X, y = make_regression(n, 3, seed=seed)
    if loss == "binary_crossentropy":
        y = (y > np.median(y)).astype(np.float64)
    return X, y.reshape(-1, 1)


@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.parametrize("batch_size", [1, 4])
@pytest.mark.parametrize("opt", ["sgd", "adam", "rmsprop_momentum", "nesterov"])
def test_local_sgd_matches_the_oracle(workers, batch_size, opt):
    """The NumPy reference's local SGD equals the algorithm as documented, replica by replica."""
    X, y = _problem("mse", n=47)  # rounds that do not divide the rows, a short last batch
    net = fastbp.Network([3, 4, 1], activations="tanh", backend="numpy", seed=1)
    start = net.get_weights()
    hist = _quiet_fit(net, X, y, epochs=1, batch_size=batch_size, optimizer=OPTIMIZERS[opt](),
                      shuffle=False, verbose=0, workers=workers, average_every=6)
    expected, mean = local_sgd_oracle(start, ["tanh", "linear"], "mse", X, y,
                                      list(range(len(X))), batch_size, OPTIMIZERS[opt](),
                                      workers, 6 if batch_size == 1 else 8)
    got = [w.tolist() for w in net.get_weights()]
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-11, atol=1e-13)
    assert hist.history["loss"][0] == pytest.approx(mean, rel=1e-12)


# Every loss x optimizer, both dtypes and 1-3 workers; activations and batch modes
# (per-sample, small batch = local SGD, large batch = split) rotate through the cases.
CASES = [(loss, opt, act, batch)
         for i, (loss, opt) in enumerate(itertools.product(LOSSES, OPTIMIZERS))
         for act, batch in [(ACTIVATIONS[i % 4], (1, 5, 64)[i % 3])]]


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("loss,opt,act,batch_size", CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}-b{c[3]}" for c in CASES])
def test_compiled_backends_equal_the_reference(compiled_backend, dtype, workers, loss, opt, act,
                                               batch_size):
    if compiled_backend == "cuda":
        pytest.skip("the CUDA backend runs workers in turn; its kernels are checked alone")
    X, y = _problem(loss, n=200, seed=3)
    fits = {}
    for backend in ("numpy", compiled_backend):
        net = fastbp.Network([3, 6, 5, 1], activations=act, loss=loss,
                             output_activation="sigmoid" if loss == "binary_crossentropy"
                             else "linear", dtype=dtype, backend=backend, seed=4)
        hist = _quiet_fit(net, X, y, epochs=2, batch_size=batch_size,
                          optimizer=OPTIMIZERS[opt](), verbose=0, workers=workers,
                          average_every=20)
        fits[backend] = (net, hist)
    (ref, ref_hist), (net, hist) = fits["numpy"], fits[compiled_backend]
    assert_close(net.get_weights(), ref.get_weights(), dtype)
    assert_close(hist.history["loss"], ref_hist.history["loss"], dtype)
    assert net._step == ref._step


@pytest.mark.parametrize("opt", ["sgd", "adam", "momentum", "rmsprop"])
def test_split_minibatches_keep_keras_semantics(compiled_backend, opt):
    """workers=2 on batches >= 64: the serial run's numbers up to summation order."""
    require_backend(compiled_backend)
    if compiled_backend == "cuda":
        pytest.skip("the CUDA backend runs workers in turn")
    X, y = _problem("mse", n=700, seed=5)
    one = fastbp.Network([3, 16, 8, 1], backend=compiled_backend, seed=2)
    two = fastbp.Network([3, 16, 8, 1], backend=compiled_backend, seed=2)
    one.fit(X[:128], y[:128], batch_size=128, optimizer=OPTIMIZERS[opt](), shuffle=False,
            verbose=0)
    two.fit(X[:128], y[:128], batch_size=128, optimizer=OPTIMIZERS[opt](), shuffle=False,
            verbose=0, workers=2)
    for a, b in zip(two.get_weights(), one.get_weights()):  # one step
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    h1 = one.fit(X, y, epochs=3, batch_size=100, verbose=0)
    h2 = two.fit(X, y, epochs=3, batch_size=100, verbose=0, workers=2)
    assert_close(two.get_weights(), one.get_weights(), "float64")
    np.testing.assert_allclose(h2.history["loss"], h1.history["loss"], rtol=1e-9)
    assert one._step == two._step


@pytest.mark.parametrize("backend", ["numba", "cython"])
def test_split_minibatches_diverge_as_the_reference(backend):
    """A non-finite batch loss stops every thread of a split batch, at the reference's row."""
    require_backend(backend)
    X, y = _problem("mse", n=640, seed=5)
    y = y * 1e3
    found = {}
    compiled = backend
    for backend in ("numpy", compiled):
        net = fastbp.Network([3, 8, 1], backend=backend, seed=0)
        with pytest.raises(fastbp.TrainingDivergedError) as caught:
            _quiet_fit(net, X, y, epochs=20, batch_size=64, optimizer=fastbp.SGD(0.9),
                       verbose=0, workers=2, shuffle=False)
        assert all(np.isfinite(w).all() for w in net.get_weights())
        found[backend] = (str(caught.value), net.get_weights(), net._step)
    assert found[compiled][0] == found["numpy"][0]  # the same epoch and row in the message
    assert_close(found[compiled][1], found["numpy"][1], "float64")
    assert found[compiled][2] == found["numpy"][2]


@pytest.mark.parametrize("backend", ["numba", "cython"])
def test_split_chunk_releases_its_threads_when_the_caller_fails(backend):
    """The calling thread's part never starts (a Ctrl-C): the other part leaves its barrier."""
    require_backend(backend)
    import threading

    import importlib

    from fastbp._backends import _codes as C

    net = fastbp.Network([3, 4, 1], seed=0)
    code, hyper = fastbp.SGD(0.01)._pack()
    state = np.zeros((C.N_STATE_SLOTS, net._params.size))
    module = importlib.import_module(f"fastbp._backends.{backend}_")
    splitter = module.open_splitter(net._params, state, net._sizes, net._acts, net._loss, 64,
                                    code, hyper, 2)
    if not splitter.trains_chunks:
        pytest.skip("plain Python (NUMBA_DISABLE_JIT=1) splits batches in Python")
    X, y = _problem("mse", n=128)
    returned = []

    class FailingCaller:
        """Runs part 1 on a thread, then fails in the caller before part 0 starts."""

        def run(self, task, on_error=None):
            worker = threading.Thread(target=lambda: returned.append(task(1)))
            worker.start()
            on_error()
            worker.join(timeout=60)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        splitter.train_chunk(X, y, np.arange(128), 0, FailingCaller())
    assert returned == [(0.0, -1)]  # it saw the abort word and left without a step


def test_one_worker_is_the_serial_run_bitwise(backend):
    X, y = _problem("mse", n=120)
    nets = []
    for kwargs in ({}, {"workers": 1, "average_every": 7}):
        net = fastbp.Network([3, 5, 1], backend=backend, seed=6)
        net.fit(X, y, epochs=2, batch_size=1, optimizer=fastbp.Adam(0.01), verbose=0, **kwargs)
        nets.append(net)
    assert all(a.tobytes() == b.tobytes()
               for a, b in zip(nets[0].get_weights(), nets[1].get_weights()))


def test_average_every_is_rounded_up_to_whole_batches():
    X, y = _problem("mse", n=60)
    a = fastbp.Network([3, 4, 1], backend="numpy", seed=0)
    b = fastbp.Network([3, 4, 1], backend="numpy", seed=0)
    _quiet_fit(a, X, y, batch_size=4, verbose=0, workers=2, average_every=5, shuffle=False)
    _quiet_fit(b, X, y, batch_size=4, verbose=0, workers=2, average_every=8, shuffle=False)
    assert all(x.tobytes() == z.tobytes() for x, z in zip(a.get_weights(), b.get_weights()))


@pytest.mark.parametrize("average_every", [48, 2**62, 10**30])
def test_average_every_beyond_the_rows_is_one_round_per_epoch(tmp_path, average_every):
    """Any round longer than the data trains as one round; its checkpoint loads."""
    X, y = _problem("mse", n=47)
    net = fastbp.Network([3, 4, 1], activations="tanh", backend="numpy", seed=1)
    start = net.get_weights()
    path = tmp_path / "run.ckpt"
    _quiet_fit(net, X, y, epochs=1, batch_size=1, optimizer=fastbp.SGD(0.05), shuffle=False,
               verbose=0, workers=2, average_every=average_every, checkpoint=path)
    expected, _ = local_sgd_oracle(start, ["tanh", "linear"], "mse", X, y, list(range(len(X))),
                                   1, fastbp.SGD(0.05), 2, len(X))
    for g, e in zip(net.get_weights(), expected):
        np.testing.assert_allclose(g.tolist(), e, rtol=1e-11, atol=1e-13)
    loaded = fastbp.load(path)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(loaded.get_weights(),
                                                           net.get_weights()))


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or sys.platform == "win32",
                    reason="needs POSIX signals")
@pytest.mark.parametrize("saved_as_passed", [False, True], ids=["clamped", "as-passed"])
def test_a_fit_with_a_round_beyond_the_rows_resumes_exactly(tmp_path, saved_as_passed):
    """Interrupted and resumed: the uninterrupted fit's weights, also from a position that
    holds the value as passed (files written before the clamp)."""
    X, y = _problem("mse", n=50)
    backend = "numba" if _numba() else "numpy"
    fit = dict(epochs=3, batch_size=1, optimizer=fastbp.Adam(0.01), verbose=0, workers=2,
               average_every=10**6)
    ref = fastbp.Network([3, 8, 1], backend=backend, seed=5)
    ref_hist = _quiet_fit(ref, X, y, **fit)

    class Stop(fastbp.Callback):
        def on_chunk_end(self, epoch, logs=None):
            if epoch == 1:
                os.kill(os.getpid(), signal.SIGINT)

    net = fastbp.Network([3, 8, 1], backend=backend, seed=5)
    path = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        _quiet_fit(net, X, y, checkpoint=path, callbacks=[Stop()], **fit)
    resumed = fastbp.load(path, backend=backend)
    assert resumed.training_position["settings"]["average_every"] == 50
    if saved_as_passed:
        resumed._position["settings"]["average_every"] = 10**6
    hist = _quiet_fit(resumed, X, y, resume=True, **fit)
    for got, want in zip(resumed.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(hist.history["loss"], ref_hist.history["loss"], rtol=1e-12)


def test_default_average_every_is_about_75ms_of_work():
    # 20-64-64-1: 5,569 parameters -> 28,730 rows; 100-256-256-1: 92,417 -> 1,731
    assert _parallel.default_average_every(5569, 1) == int(1.6e8 / 5569)
    assert _parallel.default_average_every(92417, 8) % 8 == 0
    assert _parallel.default_average_every(10**9, 32) == 32  # at least one batch


def test_default_round_fits_in_a_chunk():
    """A round is one chunk: by default it is at most chunk_rows rows (a streamed file's read)."""
    n = 10**6  # rows
    assert _parallel.Plan(2, 1, None, 5569, 32768, n).average_every == 16384  # not 28,730
    assert _parallel.Plan(2, 1, None, 92417, 32768, n).average_every == int(1.6e8 / 92417)
    assert _parallel.Plan(3, 8, None, 21, 1000, n).average_every == 336  # 333: whole batches
    assert _parallel.Plan(2, 1, 50_000, 21, 1000, n).average_every == 50_000  # as passed


# ----------------------------------------------------------------------------- inference
@pytest.mark.parametrize("workers", [2, 3])
def test_inference_split_across_workers(compiled_backend, dtype, workers, monkeypatch):
    monkeypatch.setenv("FASTBP_CHUNK_ROWS", "1500")  # several blocks, each split
    X, y = make_regression(5000, 6, seed=1)
    net = fastbp.Network([6, 9, 2], activations="tanh", dtype=dtype, backend=compiled_backend)
    Y = np.column_stack([y, -y])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p = net.predict(X, workers=workers)
        e = net.evaluate(X, Y, workers=workers)
        g = net.gradients(X, Y, workers=workers)
    assert p.tobytes() == net.predict(X).tobytes()  # each row's output is the same
    assert e == pytest.approx(net.evaluate(X, Y), rel=1e-12 if dtype == "float64" else 1e-6)
    assert_close(g, net.gradients(X, Y), dtype)
    ref = fastbp.Network([6, 9, 2], activations="tanh", dtype=dtype, backend="numpy")
    assert_close(p, ref.predict(X), dtype)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_predict_names_the_first_bad_row_of_the_whole_input(backend, workers, monkeypatch):
    """Rows are converted and checked block by block and part by part; the message names X's row.

    Blocks of 1,500 x workers rows: the NaN at row 4,321 is not in the first
    block (bar workers=3); with two workers the inf at row 4,600 is in the
    same block's next part, whose thread fails too.
    """
    monkeypatch.setenv("FASTBP_CHUNK_ROWS", "1500")
    X, _ = make_regression(6000, 3, seed=2)
    X[4600, 0] = np.inf
    X[4321, 2] = np.nan
    untouched = X.copy()
    net = fastbp.Network([3, 4, 1], backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ValueError, match=r"found np\.float64\(nan\) .* at index \(4321, 2\)"):
            net.predict(X, workers=workers)
        with pytest.raises(ValueError, match=r"at index \(4321, 2\)"):
            fastbp.predict_many([net, fastbp.Network([3, 4, 1], backend=backend)], X,
                                workers=workers)
        y = np.zeros(6000)
        y[100] = np.inf  # X is checked whole before y, as with one worker
        for call in (net.evaluate, net.gradients):
            with pytest.raises(ValueError, match=r"X: .* at index \(4321, 2\)"):
                call(X, y, workers=workers)
            with pytest.raises(ValueError, match=r"y: .* at index \(100, 0\)"):
                call(np.nan_to_num(X), y, workers=workers)
    assert X.tobytes() == untouched.tobytes()


@pytest.mark.parametrize("workers", [1, 2])
def test_predict_converts_under_the_callers_errstate(compiled_backend, workers):
    """The float32 cast overflows in the second part: the caller's np.errstate decides."""
    X, _ = make_regression(4000, 5, seed=0)
    X[3500, 1] = 1e300
    net = fastbp.Network([5, 4, 1], dtype="float32", backend=compiled_backend)
    y = np.zeros(4000)
    for call in (net.predict, lambda X, workers: net.evaluate(X, y, workers=workers)):
        with np.errstate(over="raise"), pytest.raises(FloatingPointError, match="overflow"):
            call(X, workers=workers)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow warning would fail the call
        with np.errstate(over="ignore"), pytest.raises(ValueError, match=r"\(3500, 1\)"):
            net.predict(X, workers=workers)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad", [0, -2, 1.5, "2", True, None])
def test_bad_workers_are_refused_and_change_nothing(bad):
    X, y = _problem("mse", n=30)
    net = fastbp.Network([3, 4, 1], backend="numpy")
    before = net.get_weights()
    for call in (lambda: net.fit(X, y, verbose=0, workers=bad),
                 lambda: net.predict(X, workers=bad), lambda: net.evaluate(X, y, workers=bad),
                 lambda: net.gradients(X, y, workers=bad)):
        with pytest.raises(ValueError, match="workers: expected a positive integer, or -1"):
            call()
    assert all(a.tobytes() == b.tobytes() for a, b in zip(net.get_weights(), before))
    assert net.optimizer is None and net.training_position is None


@pytest.mark.parametrize("bad", [0, -1, 2.5, "100"])
def test_bad_average_every_is_refused(bad):
    X, y = _problem("mse", n=30)
    net = fastbp.Network([3, 4, 1], backend="numpy")
    before = net.get_weights()
    with pytest.raises(ValueError, match=r"average_every \(or None\): expected an integer >= 1"):
        net.fit(X, y, verbose=0, workers=2, average_every=bad)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(net.get_weights(), before))


def test_more_workers_than_cores_warns_and_caps(monkeypatch):
    monkeypatch.setattr(_parallel, "usable_cores", lambda: 2)
    with pytest.warns(RuntimeWarning, match="workers=5 is more than the 2 cores"):
        assert _parallel.check_workers(5) == 2
    assert _parallel.check_workers(-1) == 2
    assert _parallel.check_workers(np.int64(2)) == 2


def test_a_backend_holding_the_gil_says_its_workers_take_turns():
    X, y = _problem("mse", n=30)
    net = fastbp.Network([3, 4, 1], backend="numpy")
    with pytest.warns(RuntimeWarning, match="'numpy' backend holds the GIL"):
        net.fit(X, y, verbose=0, workers=2)
    # once per call: the val_loss of every epoch does not say it again
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net.fit(X, y, epochs=2, verbose=0, workers=2, validation_data=(X, y))
    assert sum("holds the GIL" in str(w.message) for w in caught) == 1


@pytest.mark.parametrize("call", ["fit", "predict", "evaluate", "gradients", "fit_many",
                                  "predict_many"])
@pytest.mark.parametrize("cause", ["cap", "turns"])
def test_worker_warnings_point_at_the_callers_line(monkeypatch, call, cause):
    """Each worker warning names the line that called fastbp, whatever the entry point."""
    monkeypatch.setattr(_parallel, "usable_cores", lambda: 2)
    X, y = _problem("mse", n=30)
    backend = "numpy" if cause == "turns" else None
    workers = 2 if cause == "turns" else 5
    nets = [fastbp.Network([3, 4, 1], backend=backend or "auto", seed=k) for k in range(2)]
    calls = {"fit": lambda: nets[0].fit(X, y, verbose=0, workers=workers),
             "predict": lambda: nets[0].predict(X, workers=workers),
             "evaluate": lambda: nets[0].evaluate(X, y, workers=workers),
             "gradients": lambda: nets[0].gradients(X, y, workers=workers),
             "fit_many": lambda: fastbp.fit_many(nets, X, y, verbose=0, workers=workers),
             "predict_many": lambda: fastbp.predict_many(nets, X, workers=workers)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        calls[call]()
    match = "more than the 2 cores" if cause == "cap" else "holds the GIL"
    found = [w for w in caught if match in str(w.message)]
    assert found, [str(w.message) for w in caught]
    assert {os.path.basename(w.filename) for w in found} == {os.path.basename(__file__)}


def test_the_backend_override_warning_points_at_the_callers_line(monkeypatch):
    monkeypatch.setenv("FASTBP_BACKEND", "numpy")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fastbp.Network([3, 4, 1], backend="cython")
    found = [w for w in caught if "overrides backend='cython'" in str(w.message)]
    assert [os.path.basename(w.filename) for w in found] == [os.path.basename(__file__)]


# ----------------------------------------------------------------------------- the fit's life
def test_divergence_keeps_the_last_finite_average(compiled_backend):
    if compiled_backend == "cuda":
        pytest.skip("the CUDA backend runs workers in turn")
    X, y = _problem("mse", n=400)
    y = y * 1e3
    net = fastbp.Network([3, 8, 1], backend=compiled_backend, seed=0)
    with pytest.raises(fastbp.TrainingDivergedError):
        net.fit(X, y, epochs=50, batch_size=1, optimizer=fastbp.SGD(0.5), verbose=0,
                workers=2, average_every=10)
    assert all(np.isfinite(w).all() for w in net.get_weights())
    assert net.training_position is None


def test_validation_early_stopping_and_callbacks_with_workers(compiled_backend, monkeypatch):
    if compiled_backend == "cuda":
        pytest.skip("the CUDA backend runs workers in turn")
    monkeypatch.setenv("FASTBP_CHUNK_ROWS", "100")  # -> chunks of one 60-row round
    X, y = _problem("mse", n=600)
    seen = []

    class Chunks(fastbp.Callback):
        def on_chunk_end(self, epoch, logs=None):
            seen.append(logs["rows"])

    net = fastbp.Network([3, 8, 1], backend=compiled_backend, seed=0)
    hist = net.fit(X, y, epochs=30, batch_size=2, optimizer=fastbp.Adam(0.01), verbose=0,
                   validation_split=0.25, workers=2, average_every=30,
                   callbacks=[fastbp.EarlyStopping(patience=2, restore_best_weights=True),
                              Chunks()])
    assert len(hist.history["val_loss"]) == len(hist.history["loss"]) >= 3
    assert seen[:8] == [60, 120, 180, 240, 300, 360, 420, 450]  # rounds of 2 x 30 rows


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or sys.platform == "win32",
                    reason="needs POSIX signals")
@pytest.mark.parametrize("streamed", [False, True], ids=["memory", "memmap"])
def test_checkpoint_and_resume_with_workers_equal_the_uninterrupted_run(tmp_path, monkeypatch,
                                                                        streamed):
    monkeypatch.setenv("FASTBP_CHUNK_ROWS", "40")
    X, y = _problem("mse", n=300)
    if streamed:
        np.save(tmp_path / "X.npy", X)
        np.save(tmp_path / "y.npy", y)
        X, y = (np.load(tmp_path / f"{n}.npy", mmap_mode="r") for n in ("X", "y"))
    fit = dict(epochs=3, batch_size=2, optimizer=fastbp.Adam(0.01), verbose=0, workers=2,
               average_every=10)
    ref = fastbp.Network([3, 8, 1], backend="numba" if _numba() else "numpy", seed=5)
    backend = ref.backend
    ref_hist = _quiet_fit(ref, X, y, **fit)

    class Stop(fastbp.Callback):
        chunks = 0

        def on_chunk_end(self, epoch, logs=None):
            Stop.chunks += 1
            if Stop.chunks == 11:  # a real Ctrl-C: fit stops at this chunk's end
                os.kill(os.getpid(), signal.SIGINT)

    net = fastbp.Network([3, 8, 1], backend=backend, seed=5)
    path = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        _quiet_fit(net, X, y, checkpoint=path, callbacks=[Stop()], **fit)
    resumed = fastbp.load(path, backend=backend)
    position = resumed.training_position
    assert position["settings"]["workers"] == 2 and position["rows"] % 20 == 0
    assert 0 < position["rows"]  # stopped inside an epoch
    with pytest.raises(ValueError, match="workers = 2; this call has 1"):
        resumed.fit(X, y, resume=True, **{**fit, "workers": 1})
    hist = _quiet_fit(resumed, X, y, resume=True, **fit)
    assert all(a.tobytes() == b.tobytes()
               for a, b in zip(resumed.get_weights(), ref.get_weights()))
    assert hist.history == ref_hist.history
    assert resumed._step == ref._step


def _numba():
    from fastbp import _backends
    return _backends.import_error("numba") is None


# ----------------------------------------------------------------------------- command line
def _cli(capsys, *argv):
    from fastbp import cli

    try:
        status = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse: usage errors
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def test_train_with_workers_and_bad_workers(capsys, tmp_path):
    model = tmp_path / "m.fbp"
    status, out, err = _cli(capsys, "train", "--synthetic", 3000, "--epochs", 2, "--quiet",
                            "--workers", 2, "--average-every", 200, "--save", model)
    assert status == 0, err
    assert fastbp.load(model).metadata["train_options"]["workers"] == 2
    status, _, err = _cli(capsys, "train", "--synthetic", 300, "--workers", 0)
    assert status == 2 and "expected an integer >= 1, or -1 for every core" in err
    status, _, err = _cli(capsys, "train", "--synthetic", 300, "--average-every", 10)
    assert status == 2 and "--average-every applies to --workers N" in err


def test_bench_measures_each_worker_count():
    from fastbp import _bench

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = _bench.measure_workers("predict-1M", "numba" if _numba() else "cython",
                                        "float32", (1, 2), repeats=1)
    assert set(result) == {1, 2} and all(rate > 0 for rate, _ in result.values())


def test_task_runner_waits_only_for_the_threads_it_started():
    """A Ctrl-C while handing out the tasks: on_error runs, and run() returns (no hang)."""
    import threading

    runner = _parallel.TaskRunner(3)
    called = []
    try:
        second = runner._threads[1]

        def interrupted(task):
            raise KeyboardInterrupt

        second.start_task = interrupted
        outcome = []

        def call():
            try:
                runner.run(lambda k: k, on_error=lambda: called.append(True))
            except KeyboardInterrupt:
                outcome.append("raised")

        caller = threading.Thread(target=call)
        caller.start()
        caller.join(timeout=30)
        assert outcome == ["raised"] and called == [True]
    finally:
        del second.start_task
        runner.close()


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs signal.pthread_kill")
def test_a_ctrl_c_while_waiting_for_a_worker_waits_for_its_task_to_end():
    """The Ctrl-C is raised once every task has ended, and the next run gets its own results.

    Before, the interrupted wait left the helper running: ``run`` raised
    while it still wrote, and the next ``run`` on the same runner took the
    old task's completion for its own and returned before its task ended.
    """
    import threading
    import time

    runner = _parallel.TaskRunner(2)
    ended = []

    def slow(k):
        if k == 1:
            time.sleep(0.5)
            ended.append(k)
        return ("slow", k)

    def interrupt_soon():
        time.sleep(0.1)  # the caller is waiting for task 1 by then
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=interrupt_soon).start()
        with pytest.raises(KeyboardInterrupt):
            runner.run(slow)
        assert ended == [1]  # task 1 had ended when the Ctrl-C was raised
        assert runner.run(lambda k: ("next", k)) == [("next", 0), ("next", 1)]
    finally:
        signal.signal(signal.SIGINT, previous)
        runner.close()


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_rows_converted_in_parts_equal_one_conversion(workers):
    from fastbp import _validation

    runner = _parallel.TaskRunner(workers)
    try:
        X, _ = make_regression(5000, 4, seed=3)
        for source, dtype in ((X, np.float32), (X[:, ::2], np.float64),
                              (np.arange(20000).reshape(5000, 4), np.float64)):
            got = _parallel.to_dtype_in_parts(source, np.dtype(dtype), "X", runner)
            want = _validation.to_dtype(source, np.dtype(dtype), "X")
            assert got.dtype == want.dtype and got.flags.c_contiguous
            assert got.tobytes() == want.tobytes()
        assert _parallel.to_dtype_in_parts(X, np.dtype(np.float64), "X", runner) is X
    finally:
        runner.close()


def test_a_ctrl_c_just_after_the_task_ended_leaves_the_pool_usable():
    """The handler may run right after the wait took the lock (the two look the same).

    The interrupt is raised, the wait does not block for good, and the next
    run hands over and returns its own results.
    """
    import threading

    class TakenThenInterrupted:
        def __init__(self, lock):
            self.lock, self.fired = lock, False

        def acquire(self, *args):
            taken = self.lock.acquire(*args)
            if not self.fired:
                self.fired = True
                raise KeyboardInterrupt  # as a SIGINT handled just after the call
            return taken

        def release(self):
            self.lock.release()

    runner = _parallel.TaskRunner(2)
    try:
        worker = runner._threads[0]
        worker._done = TakenThenInterrupted(worker._done)
        outcome = []

        def call():
            try:
                runner.run(lambda k: k)
            except KeyboardInterrupt:
                outcome.append("raised")
            outcome.append(runner.run(lambda k: ("next", k)))

        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        caller.join(timeout=30)
        assert outcome == ["raised", [("next", 0), ("next", 1)]]
    finally:
        runner.close()


def test_in_parts_conversion_takes_a_subclass_data_as_one_conversion_does():
    runner = _parallel.TaskRunner(2)
    try:
        X, _ = make_regression(5000, 3, seed=4)
        X[4000, 1] = np.nan
        masked = np.ma.masked_array(X, mask=np.isnan(X))  # the mask hides nothing here
        with pytest.raises(ValueError, match=r"at index \(4000, 1\)"):
            _parallel.to_dtype_in_parts(masked, np.dtype(np.float64), "X", runner)
        got = _parallel.to_dtype_in_parts(np.ma.masked_array(np.nan_to_num(X)),
                                          np.dtype(np.float64), "X", runner)
        assert type(got) is np.ndarray
    finally:
        runner.close()

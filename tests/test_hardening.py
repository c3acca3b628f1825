"""Hostile input: every bad argument gets a clear error and changes nothing.

Also: no resume after an exception that left the model past its recorded
position, one Network trained from two threads is refused, NumPy integers
work wherever Python ints do, and huge sizes never reach a kernel.
"""

import copy
import fractions
import math
import os
import signal
import sys
import threading

import numpy as np
import pytest

import fastbp
from fastbp import _config
from fastbp import _validation as V

needs_sigint = pytest.mark.skipif(not hasattr(signal, "SIGINT") or sys.platform == "win32",
                                  reason="needs POSIX signals")


def _net(**kwargs):
    kwargs.setdefault("backend", "numpy")
    kwargs.setdefault("seed", 3)
    return fastbp.Network([3, 4, 1], **kwargs)


def _data(n=40):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 3)), rng.normal(size=n)


def _assert_clear(excinfo):
    message = str(excinfo.value)
    assert "expected" in message and "found" in message, message


def _weights_equal(a, b):
    return all(x.tobytes() == y.tobytes() for x, y in zip(a.get_weights(), b.get_weights()))


class _Frozen:
    """Everything about a network that a refused call must leave byte-identical."""

    def __init__(self, net):
        self.net = net
        self.params = net._params.tobytes()
        self.state = None if net._state is None else net._state.tobytes()
        self.step, self.optimizer = net._step, net.optimizer
        self.rng = copy.deepcopy(net._rng.bit_generator.state)
        self.position = copy.deepcopy({k: v for k, v in (net._position or {}).items()
                                       if k != "arrays"})

    def check(self):
        net = self.net
        assert net._params.tobytes() == self.params
        assert (None if net._state is None else net._state.tobytes()) == self.state
        assert net._step == self.step and net.optimizer == self.optimizer
        assert net._rng.bit_generator.state == self.rng
        assert {k: v for k, v in (net._position or {}).items() if k != "arrays"} == self.position


# ------------------------------------------------------------------------ 1. dtype
@pytest.mark.parametrize("dtype", ["garbage", "float64 ", "float16x", " float32", "FLOAT64",
                                   "f8", "double", "float16", "int32", "", np.dtype(">f8"),
                                   np.dtype("float16"), np.float16, np.int64, int])
def test_dtype_only_exact_spellings_value_error(dtype):
    with pytest.raises(ValueError) as excinfo:
        _net(dtype=dtype)
    _assert_clear(excinfo)
    with pytest.raises(ValueError):
        V.check_dtype(dtype)


@pytest.mark.parametrize("dtype", [None, 5, 3.5, ["float64"], b"float64", object()])
def test_dtype_of_the_wrong_type_type_error(dtype):
    with pytest.raises(TypeError) as excinfo:
        _net(dtype=dtype)
    _assert_clear(excinfo)


@pytest.mark.parametrize("dtype,expected", [
    ("float32", np.float32), ("float64", np.float64), (np.float32, np.float32),
    (np.float64, np.float64), (np.dtype("float32"), np.float32), (np.dtype("<f8"), np.float64),
    (np.str_("float32"), np.float32)])
def test_dtype_accepted_spellings(dtype, expected):
    assert V.check_dtype(dtype) == np.dtype(expected)
    assert isinstance(V.check_dtype(dtype), np.dtype)
    assert _net(dtype=dtype).dtype == np.dtype(expected)


# ------------------------------------------------------------------------ 2. resume after errors
class RaiseAt(fastbp.Callback):
    """Raises RuntimeError in ``hook`` of epoch ``epoch`` (0-based), ``after`` calls into it."""

    def __init__(self, hook, epoch, after=1):
        self.hook, self.epoch, self.after, self.calls = hook, epoch, after, 0

    def _maybe(self, epoch):
        if epoch == self.epoch:
            self.calls += 1
            if self.calls == self.after:
                raise RuntimeError(f"boom in {self.hook}")

    def on_epoch_end(self, epoch, logs=None):
        if self.hook == "on_epoch_end":
            self._maybe(epoch)

    def on_chunk_end(self, epoch, logs=None):
        if self.hook == "on_chunk_end":
            self._maybe(epoch)


FIT = dict(epochs=3, batch_size=3, verbose=0)


@pytest.mark.parametrize("hook", ["on_epoch_end", "on_chunk_end"])
def test_resume_after_a_callback_error_is_refused_and_the_checkpoint_is_exact(
        tmp_path, monkeypatch, hook):
    monkeypatch.setenv("FASTBP_CHUNK_ROWS", "12")
    X, y = _data(60)
    ref = _net()
    ref.fit(X, y, optimizer=fastbp.Adam(0.01), **FIT)

    net = _net()
    path = tmp_path / "ck"
    with pytest.raises(RuntimeError, match="boom"):
        net.fit(X, y, optimizer=fastbp.Adam(0.01), checkpoint=path,
                callbacks=[RaiseAt(hook, epoch=1, after=2 if hook == "on_chunk_end" else 1)],
                **FIT)
    # the model is past the epoch-1 position kept for the checkpoint: no resume
    assert net._position is None
    frozen = _Frozen(net)
    with pytest.raises(ValueError, match="found none"):
        net.fit(X, y, resume=True, **FIT)
    frozen.check()
    # the checkpoint file itself holds an exact position
    resumed = fastbp.load(path, backend="numpy")
    resumed.fit(X, y, resume=True, **FIT)
    assert _weights_equal(resumed, ref) and resumed._step == ref._step


def test_resume_after_divergence_is_refused():
    X = np.full((64, 3), 1e3)
    y = np.full(64, -1e3)
    net = _net(activations="linear")
    with pytest.raises(fastbp.TrainingDivergedError):
        net.fit(X, y, batch_size=1, optimizer=fastbp.SGD(learning_rate=1.0), verbose=0)
    with pytest.raises(ValueError, match="found none"):
        net.fit(X, y, batch_size=1, resume=True, verbose=0)


class CtrlCAt(fastbp.Callback):
    def __init__(self, at):
        self.at, self.chunks = at, 0

    def on_chunk_end(self, epoch, logs=None):
        self.chunks += 1
        if self.chunks == self.at:
            os.kill(os.getpid(), signal.SIGINT)


@needs_sigint
def test_a_failed_resume_leaves_no_stale_position(monkeypatch):
    """Ctrl-C, then a resume that a callback breaks: a second resume must not repeat rows."""
    monkeypatch.setenv("FASTBP_CHUNK_ROWS", "12")
    X, y = _data(60)
    ref = _net()
    ref.fit(X, y, optimizer=fastbp.SGD(0.05, momentum=0.9), **FIT)
    net = _net()
    with pytest.raises(KeyboardInterrupt):
        net.fit(X, y, optimizer=fastbp.SGD(0.05, momentum=0.9), callbacks=[CtrlCAt(3)], **FIT)
    assert net._position is not None                   # Ctrl-C at a chunk boundary: exact
    with pytest.raises(RuntimeError, match="boom"):
        net.fit(X, y, resume=True, callbacks=[RaiseAt("on_chunk_end", epoch=1)], **FIT)
    with pytest.raises(ValueError, match="found none"):
        net.fit(X, y, resume=True, **FIT)
    # ... while a resume that is not broken still equals the uninterrupted run
    other = _net()
    with pytest.raises(KeyboardInterrupt):
        other.fit(X, y, optimizer=fastbp.SGD(0.05, momentum=0.9), callbacks=[CtrlCAt(3)],
                  **FIT)
    other.fit(X, y, resume=True, **FIT)
    assert _weights_equal(other, ref)


@needs_sigint
def test_set_weights_after_an_interrupt_drops_the_position(monkeypatch):
    monkeypatch.setenv("FASTBP_CHUNK_ROWS", "12")
    X, y = _data(60)
    net = _net()
    with pytest.raises(KeyboardInterrupt):
        net.fit(X, y, callbacks=[CtrlCAt(3)], **FIT)
    frozen = _Frozen(net)
    with pytest.raises(ValueError):
        net.set_weights([1, 2])                          # refused: the position stays
    frozen.check()
    net.set_weights(_net().get_weights())
    with pytest.raises(ValueError, match="found none"):
        net.fit(X, y, resume=True, **FIT)


@needs_sigint
def test_bad_streamed_block_during_a_resume_rolls_back_and_keeps_the_position(
        tmp_path, monkeypatch):
    """A resumed streamed fit that meets a NaN rolls back to where it began: still resumable."""
    monkeypatch.setenv("FASTBP_CHUNK_ROWS", "16")
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(300, 3)), rng.normal(size=300)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)

    def load():
        return np.load(tmp_path / "X.npy", mmap_mode="r"), np.load(tmp_path / "y.npy",
                                                                   mmap_mode="r")

    def write(value):
        spoiled = np.load(tmp_path / "X.npy", mmap_mode="r+")
        spoiled[150, 1] = value
        spoiled.flush()
        del spoiled

    class Spoil(fastbp.Callback):
        """Writes NaN into the file once the resumed fit is past its checks."""

        def on_epoch_begin(self, epoch, logs=None):
            write(np.nan)

    fit = dict(epochs=2, batch_size=4, shuffle=False, verbose=0)
    ref = _net()
    ref.fit(*load(), **fit)
    net = _net()
    with pytest.raises(KeyboardInterrupt):
        net.fit(*load(), callbacks=[CtrlCAt(2)], **fit)
    frozen = _Frozen(net)
    with pytest.raises(ValueError, match="finite"):
        net.fit(*load(), resume=True, callbacks=[Spoil()], **fit)
    frozen.check()                                       # rolled back, position kept
    write(X[150, 1])
    net.fit(*load(), resume=True, **fit)
    assert _weights_equal(net, ref) and net._step == ref._step


# ------------------------------------------------------------------------ 3. threads
class Gate(fastbp.Callback):
    """Holds ``fit`` at its first chunk end until released."""

    def __init__(self):
        self.inside, self.release = threading.Event(), threading.Event()

    def on_chunk_end(self, epoch, logs=None):
        if not self.inside.is_set():
            self.inside.set()
            assert self.release.wait(30)


def _in_thread(target):
    errors = []

    def run():
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


def test_a_network_trained_in_another_thread_refuses_second_callers():
    X, y = _data()
    net = _net()
    gate = Gate()
    thread, errors = _in_thread(lambda: net.fit(X, y, epochs=2, batch_size=2, callbacks=[gate],
                                                verbose=0))
    try:
        assert gate.inside.wait(30)
        frozen = _Frozen(net)
        calls = [lambda: net.fit(X, y, verbose=0), lambda: net.set_weights(net_weights),
                 lambda: net.predict(X), lambda: net.evaluate(X, y),
                 lambda: net.gradients(X, y), lambda: net.get_weights()]
        net_weights = [w.copy() for w in _net().get_weights()]
        for call in calls:
            with pytest.raises(RuntimeError, match="already being trained in another thread") \
                    as excinfo:
                call()
            _assert_clear(excinfo)
            assert "one Network per thread" in str(excinfo.value)
        frozen.check()
    finally:
        gate.release.set()
        thread.join(30)
    assert not errors
    assert net._step == 2 * len(X) // 2               # no update lost, none counted twice
    net.fit(X, y, verbose=0)                          # released: usable from this thread


def test_a_network_read_in_another_thread_refuses_a_writer():
    X, y = _data()
    net = _net()
    real = net._kernels
    inside, release = threading.Event(), threading.Event()

    class SlowPredict:
        def __getattr__(self, name):
            return getattr(real, name)

        def predict(self, *args):
            if threading.current_thread() is not threading.main_thread():
                inside.set()
                assert release.wait(30)
            return real.predict(*args)

    net._kernels = SlowPredict()
    thread, errors = _in_thread(lambda: net.predict(X))
    try:
        assert inside.wait(30)
        frozen = _Frozen(net)
        with pytest.raises(RuntimeError, match="another thread"):
            net.fit(X, y, verbose=0)
        with pytest.raises(RuntimeError, match="another thread"):
            net.set_weights(net.get_weights())      # reading from here too is fine
        frozen.check()
        net.predict(X)                                # two readers at once are fine
    finally:
        release.set()
        thread.join(30)
    assert not errors
    net._kernels = real
    net.fit(X, y, verbose=0)


def _python_calls(function):
    """The Python functions entered while ``function()`` runs (C functions not counted)."""
    calls = []

    def profile(frame, event, arg):
        if event == "call":
            calls.append(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        function()
    finally:
        sys.setprofile(None)
    return calls


def test_the_guard_costs_one_python_call():
    # The guard runs on every get_weights/predict; a generator-based context
    # manager per call (contextlib, its __enter__/__exit__ and the generator)
    # more than tripled the cost of get_weights.
    net = _net()
    X = np.ones((2, net.layers[0]))
    for method, args in ((net.get_weights, ()), (net.predict, (X,)),
                         (net.set_weights, (net.get_weights(),))):
        raw = getattr(type(net), method.__name__).__wrapped__
        guarded = _python_calls(lambda: method(*args))
        plain = _python_calls(lambda: raw(net, *args))
        # the lambda, then the guard wrapper: nothing else in Python
        assert guarded[:2] == ["<lambda>", "guarded"], guarded
        assert len(guarded) == len(plain) + 1, (guarded, plain)
    assert not net._guard._readers and net._guard._writer is None


def test_the_guard_is_released_on_every_exit_path():
    X, y = _data()
    net = _net()

    class Interrupt(fastbp.Callback):
        def on_chunk_end(self, epoch, logs=None):
            raise KeyboardInterrupt

    for callbacks, error in (([RaiseAt("on_epoch_end", 0)], RuntimeError),
                             ([Interrupt()], KeyboardInterrupt)):
        with pytest.raises(error):
            net.fit(X, y, callbacks=callbacks, verbose=0)
        with pytest.raises(ValueError):
            net.fit(X, y, epochs=0, verbose=0)
        with pytest.raises(ValueError):
            net.set_weights([1])
        with pytest.raises(ValueError):
            net.predict(X[:, :2])
        # another thread can use the network now
        thread, errors = _in_thread(lambda: net.fit(X, y, verbose=0))
        thread.join(30)
        assert not errors


def test_callbacks_may_use_the_network_inside_fit():
    X, y = _data()
    seen = []

    class Uses(fastbp.Callback):
        def on_chunk_end(self, epoch, logs=None):
            net = self.network
            seen.append((net.predict(X[:2]).shape, net.evaluate(X, y),
                         len(net.gradients(X, y)), len(net.get_weights())))
            net.set_weights(net.get_weights())

    net = _net()
    net.fit(X, y, epochs=2, validation_split=0.25, verbose=0,
            callbacks=[Uses(), fastbp.EarlyStopping(patience=0, restore_best_weights=True)])
    assert seen


def test_two_networks_in_two_threads_still_train_together():
    X, y = _data()
    nets = [_net(), _net()]
    gate = Gate()
    thread, errors = _in_thread(lambda: nets[0].fit(X, y, callbacks=[gate], verbose=0))
    try:
        assert gate.inside.wait(30)
        nets[1].fit(X, y, verbose=0)                  # while nets[0] is mid-fit
    finally:
        gate.release.set()
        thread.join(30)
    assert not errors
    assert _weights_equal(*nets)


# ------------------------------------------------------------------------ 4. NumPy integers
def test_numpy_integers_are_accepted_and_stored_as_ints(tmp_path):
    X, y = _data()
    net = fastbp.Network([np.int64(3), np.int32(4), np.uint8(1)], seed=np.int64(3),
                         backend="numpy")
    net.fit(X, y, epochs=np.int64(2), batch_size=np.int32(4), verbose=0,
            validation_split=np.float32(0.25),
            callbacks=[fastbp.EarlyStopping(patience=np.int64(2), min_delta=np.float32(0.0))])
    config = net.get_config()
    assert type(config["seed"]) is int and all(type(w) is int for w in config["layers"])
    net.save(tmp_path / "m.fbp")
    loaded = fastbp.load(tmp_path / "m.fbp", backend="numpy")
    assert _weights_equal(net, loaded)
    ref = _net()
    ref.fit(X, y, epochs=2, batch_size=4, validation_split=0.25, verbose=0)
    assert _weights_equal(net, ref)


@pytest.mark.parametrize("seed", [True, np.bool_(False), 3.0, 3.5, -1, np.int64(-2), "3",
                                  [3], float("nan")])
def test_bad_seeds(seed):
    with pytest.raises(ValueError) as excinfo:
        _net(seed=seed)
    _assert_clear(excinfo)


# ------------------------------------------------------------------------ 5. huge sizes
def test_a_batch_larger_than_the_data_is_one_batch(backend):
    X, y = _data(37)
    results = []
    for batch_size in (37, 42, 2**63, 10**30):
        net = fastbp.Network([3, 4, 1], backend=backend, seed=1)
        history = net.fit(X, y, epochs=2, batch_size=batch_size, optimizer=fastbp.Adam(0.01),
                          validation_split=0.0, verbose=0)
        results.append((net.get_weights(), history.history, net._step))
    for weights, history, step in results[1:]:
        assert all(a.tobytes() == b.tobytes() for a, b in zip(weights, results[0][0]))
        assert history == results[0][1] and step == results[0][2] == 2


def test_a_batch_larger_than_the_training_rows_of_a_split(backend):
    X, y = _data(40)
    a = fastbp.Network([3, 4, 1], backend=backend, seed=1)
    b = fastbp.Network([3, 4, 1], backend=backend, seed=1)
    a.fit(X, y, batch_size=30, validation_split=0.25, verbose=0)
    b.fit(X, y, batch_size=2**62, validation_split=0.25, verbose=0)
    assert _weights_equal(a, b)


def test_huge_epochs_are_accepted_and_a_callback_can_stop_them():
    X, y = _data()

    class StopAfterTwo(fastbp.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.network.stop_training = True

    for epochs in (2**63, 10**30, np.uint64(2**64 - 1)):
        net = _net()
        history = net.fit(X, y, epochs=epochs, callbacks=[StopAfterTwo()], verbose=0)
        assert len(history.history["loss"]) == 2


@pytest.mark.parametrize("raw", [str(2**63), str(10**30)])
def test_huge_chunk_rows_setting_is_capped(monkeypatch, raw, backend):
    monkeypatch.setenv("FASTBP_CHUNK_ROWS", raw)
    assert _config.chunk_rows() <= 2**62
    X, y = _data()
    net = fastbp.Network([3, 4, 1], backend=backend, seed=1)
    net.fit(X, y, batch_size=3, verbose=0)
    assert net.predict(X).shape == (40, 1)
    assert math.isfinite(net.evaluate(X, y)) and len(net.gradients(X, y)) == 4


@pytest.mark.parametrize("layers", [[2**62, 1], [10**30, 1], [2**40, 2**40, 1]])
def test_layers_too_large_for_memory(layers):
    with pytest.raises(ValueError) as excinfo:
        fastbp.Network(layers, backend="numpy")
    _assert_clear(excinfo)


# ------------------------------------------------------------------------ 6. EarlyStopping
@pytest.mark.parametrize("kwargs,error", [
    (dict(min_delta=float("nan")), ValueError), (dict(min_delta=float("inf")), ValueError),
    (dict(min_delta="0.1"), ValueError), (dict(min_delta=-math.inf), ValueError),
    (dict(min_delta=None), ValueError), (dict(min_delta=True), ValueError),
    (dict(min_delta=np.float64("nan")), ValueError), (dict(min_delta=10**400), ValueError),
    (dict(patience=-1), ValueError), (dict(patience=1.5), ValueError),
    (dict(patience=2.0), ValueError), (dict(patience=True), ValueError),
    (dict(patience="2"), ValueError), (dict(patience=None), ValueError),
    (dict(monitor="acc"), ValueError), (dict(monitor=None), ValueError),
    (dict(monitor=["loss"]), ValueError), (dict(monitor="LOSS"), ValueError),
    (dict(restore_best_weights="False"), TypeError), (dict(restore_best_weights=None), TypeError),
    (dict(restore_best_weights=1), TypeError),
])
def test_bad_early_stopping_arguments(kwargs, error):
    with pytest.raises(error) as excinfo:
        fastbp.EarlyStopping(**kwargs)
    _assert_clear(excinfo)


def test_early_stopping_accepts_numpy_values():
    stopper = fastbp.EarlyStopping(monitor=np.str_("loss"), min_delta=np.float32(0.5),
                                   patience=np.uint16(3), restore_best_weights=np.bool_(True))
    assert type(stopper.patience) is int and stopper.patience == 3
    assert type(stopper.min_delta) is float and stopper.min_delta == 0.5
    assert stopper.restore_best_weights is True and type(stopper.monitor) is str


@pytest.mark.parametrize("kwargs,error", [
    (dict(epochs=0), ValueError), (dict(rows=-3), ValueError), (dict(epochs=1.5), ValueError),
    (dict(file="stderr"), TypeError), (dict(file=3), TypeError)])
def test_bad_progress_bar_arguments(kwargs, error):
    with pytest.raises(error) as excinfo:
        fastbp.ProgbarLogger(**kwargs)
    _assert_clear(excinfo)


# ------------------------------------------------------------------------ 7. every argument
NAN, INF = float("nan"), float("inf")
BAD_REALS = [NAN, INF, -INF, "0.1", None, True, np.bool_(True), [0.1], 1 + 0j, 10**400,
             np.float64("nan")]


def _optimizer_cases():
    cases = []
    for cls in (fastbp.SGD, fastbp.Adam, fastbp.RMSprop):
        for bad in BAD_REALS + [0, -0.1, 0.0]:
            cases.append((cls, {"learning_rate": bad}))
        for name in {"SGD": ["momentum"], "Adam": ["beta_1", "beta_2"],
                     "RMSprop": ["rho", "momentum"]}[cls.__name__]:
            for bad in BAD_REALS + [1.0, 1.5, -0.1, np.float32(1.0)]:
                cases.append((cls, {name: bad}))
        if cls is not fastbp.SGD:
            for bad in BAD_REALS + [0, 0.0, -1e-7]:
                cases.append((cls, {"epsilon": bad}))
    for name in ("beta_1", "beta_2"):
        cases.append((fastbp.Adam, {name: 0.0}))
    cases.append((fastbp.RMSprop, {"rho": 0.0}))
    for bad in ("yes", "False", None, 1, 0.0):
        cases.append((fastbp.SGD, {"nesterov": bad}))
    return cases


@pytest.mark.parametrize("cls,kwargs", _optimizer_cases(),
                         ids=lambda v: v.__name__ if isinstance(v, type) else repr(v)[:40])
def test_bad_optimizer_arguments(cls, kwargs):
    with pytest.raises((ValueError, TypeError)) as excinfo:
        cls(**kwargs)
    _assert_clear(excinfo)


@pytest.mark.parametrize("make", [
    lambda: fastbp.SGD(learning_rate=np.float32(0.1), momentum=np.float16(0.5),
                       nesterov=np.bool_(True)),
    lambda: fastbp.SGD(learning_rate=1, momentum=0),
    lambda: fastbp.Adam(learning_rate=np.float64(1e-3), beta_1=np.float32(0.8), beta_2=0.99,
                        epsilon=np.float32(1e-6)),
    lambda: fastbp.RMSprop(learning_rate=fractions.Fraction(1, 100), rho=np.float32(0.9),
                           momentum=np.float64(0.1), epsilon=1e-7),
])
def test_numpy_and_other_real_hyperparameters_work(make):
    optimizer = make()
    for value in optimizer.get_config().values():
        assert type(value) in (str, float, bool)
    X, y = _data()
    net = _net()
    net.fit(X, y, optimizer=optimizer, verbose=0)
    assert net.optimizer == optimizer


def test_optimizer_from_config_checks_its_dict():
    for config, error in ((None, TypeError), ({"name": "Adagrad"}, ValueError),
                          ({"name": "SGD", "lr": 0.1}, ValueError),
                          ({"name": ["SGD"]}, ValueError)):
        with pytest.raises(error) as excinfo:
            fastbp.Optimizer.from_config(config)
        _assert_clear(excinfo)
    assert fastbp.Optimizer.from_config(fastbp.Adam(0.01).get_config()) == fastbp.Adam(0.01)


CONSTRUCTOR_CASES = [
    dict(layers=None), dict(layers=5), dict(layers=[3]), dict(layers=[3, True, 1]),
    dict(layers=[3, 2.0, 1]), dict(layers=[3, -4, 1]), dict(layers=[3, np.float64(4), 1]),
    dict(layers="341"), dict(layers=[[3], [1]]), dict(layers=b"\x03\x04\x01"),
    dict(layers=bytearray(b"\x03\x04\x01")), dict(layers={3: 1, 4: 1, 1: 1}),
    dict(layers={3, 4, 1}), dict(layers=[3, 2**70, 1]), dict(activations={"relu": 1}),
    dict(activations={"relu"}),
    dict(activations=None), dict(activations=5), dict(activations=["relu", "relu"]),
    dict(activations=["relu", 5]), dict(activations=b"relu"), dict(activations="Swish"),
    dict(output_activation=None), dict(output_activation=["linear"]), dict(loss=None),
    dict(loss=3), dict(loss="cross_entropy"), dict(kernel_initializer=None),
    dict(kernel_initializer=NAN), dict(kernel_initializer=INF), dict(kernel_initializer=True),
    dict(kernel_initializer=1j), dict(kernel_initializer=10**400),
    dict(kernel_initializer=1e300, dtype="float32"), dict(bias_initializer="ones"),
    dict(bias_initializer=np.float64("nan")), dict(bias_initializer=np.float32("inf")),
    dict(bias_initializer=-1e39, dtype="float32"), dict(backend=None), dict(backend="NUMPYX"),
    dict(backend=1), dict(seed=1.5), dict(seed="seed"), dict(dtype="float64\x00"),
]


@pytest.mark.parametrize("kwargs", CONSTRUCTOR_CASES, ids=lambda kw: repr(kw)[:60])
def test_bad_constructor_arguments_are_clear(kwargs):
    kwargs = dict(kwargs)
    layers = kwargs.pop("layers", [3, 4, 1])
    kwargs.setdefault("backend", "numpy")
    with pytest.raises((ValueError, TypeError)) as excinfo:
        fastbp.Network(layers, **kwargs)
    _assert_clear(excinfo)


def test_good_constructor_variants():
    net = fastbp.Network([3, 4, 1], kernel_initializer=np.float32(0.5),
                         bias_initializer=fractions.Fraction(1, 4), backend="numpy", seed=None)
    assert all((w[0] == 0.5).all() for w in [net.get_weights()[0]])
    assert (net.get_weights()[1] == 0.25).all()
    assert net.get_config()["kernel_initializer"] == 0.5
    for layers in (np.array([3, 4, 1]), (3, 4, 1), range(3, 0, -1)):
        assert fastbp.Network(layers, backend="numpy").layers[0] == 3


def _fit_cases(X, y):
    return [
        dict(epochs=bad) for bad in (0, -1, 1.0, 2.5, "3", None, True, np.bool_(True), NAN,
                                     [1], np.array([2]))
    ] + [
        dict(batch_size=bad) for bad in (0, -5, 32.0, "32", None, False, INF, np.float32(4))
    ] + [
        dict(shuffle=bad) for bad in ("False", None, 0, 1, "batch", np.array([True]))
    ] + [
        dict(resume=bad) for bad in ("yes", None, 1)
    ] + [
        dict(validation_split=bad) for bad in (1.0, -0.1, NAN, INF, "0.2", True, None)
    ] + [
        dict(verbose=bad) for bad in (2, -1, 0.5, "1", "AUTO", None, np.array([1]), [])
    ] + [
        dict(optimizer=bad) for bad in ("adam", fastbp.Adam, 0.1, True, fastbp.Optimizer())
    ] + [
        dict(validation_data=bad) for bad in (X, (X,), (X, y, y), "val", (X[:, :2], y),
                                              (X, y[:-1]), (X, np.full_like(y, np.nan)))
    ] + [
        dict(callbacks=bad) for bad in (fastbp.EarlyStopping(), "es", [None], [fastbp.History])
    ] + [
        dict(checkpoint=bad) for bad in (3, b"", [])
    ] + [
        dict(resume=True),  # nothing to resume
    ]


def _fit_case_ids():
    X, y = _data()
    return [repr(case)[:50] for case in _fit_cases(X, y)]


@pytest.mark.parametrize("index", range(len(_fit_case_ids())), ids=_fit_case_ids())
def test_bad_fit_arguments_change_nothing(index):
    X, y = _data()
    kwargs = _fit_cases(X, y)[index]
    X_before, y_before = X.copy(), y.copy()
    net = _net()
    net.fit(X, y, epochs=1, batch_size=4, optimizer=fastbp.Adam(0.01), verbose=0)
    frozen = _Frozen(net)
    with pytest.raises((ValueError, TypeError)) as excinfo:
        net.fit(X, y, **kwargs)
    _assert_clear(excinfo)
    frozen.check()
    assert X.tobytes() == X_before.tobytes() and y.tobytes() == y_before.tobytes()


@pytest.mark.parametrize("method", ["predict", "evaluate", "gradients"])
@pytest.mark.parametrize("bad", ["string", "None", "int", "ragged", "nan", "str dtype", "3-D",
                                 "too wide", "no rows"])
def test_bad_inference_arguments(method, bad):
    X, y = _data()
    bad_X = {"string": "abc", "None": None, "int": 5, "ragged": [[1, 2, 3], [1]],
             "nan": np.full((40, 3), np.nan), "str dtype": X.astype(str), "3-D": X[None],
             "too wide": np.zeros((40, 4)), "no rows": X[:0]}[bad]
    net = _net()
    frozen = _Frozen(net)
    args = (bad_X,) if method == "predict" else (bad_X, y)
    with pytest.raises((ValueError, TypeError)) as excinfo:
        getattr(net, method)(*args)
    _assert_clear(excinfo)
    frozen.check()


@pytest.mark.parametrize("weights", [None, 5, "weights", [], [np.zeros((3, 4))], {},
                                     {i: None for i in range(4)},
                                     "wrong shape", "nan", "object", "too many", "strings"])
def test_bad_set_weights_change_nothing(weights):
    net = _net()
    good = net.get_weights()
    weights = {"wrong shape": [np.zeros((4, 3)), *good[1:]],
               "nan": [np.full((3, 4), np.nan), *good[1:]],
               "object": [good[0].astype(object), *good[1:]],
               "too many": good + [good[0]],
               "strings": [good[0].astype(str), *good[1:]]}.get(
        weights if isinstance(weights, str) else None, weights)
    frozen = _Frozen(net)
    with pytest.raises((ValueError, TypeError)) as excinfo:
        net.set_weights(weights)
    _assert_clear(excinfo)
    frozen.check()

"""fastbp.fit_many / predict_many: each network exactly as its own fit, several at a time.

The oracle is each network's own ``Network.fit`` with the same arguments,
run one after another: ``fit_many`` must reproduce it bitwise (weights,
history, step, optimizer state) whatever ``workers`` is, on every CPU
backend and dtype.
"""

import copy
import os
import signal

import numpy as np
import pytest

import fastbp
from fastbp import _parallel

from .conftest import require_backend


@pytest.fixture(autouse=True)
def four_cores(monkeypatch):
    """workers=2 and 3 are not capped on a smaller machine (they share its cores)."""
    monkeypatch.setattr(_parallel, "usable_cores", lambda: 4)


def _data(n=120, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    return X, np.column_stack([np.tanh(X[:, 0] - X[:, 1]), 0.5 * X[:, 2]])


def _nets(backend, dtype, seeds=(1, 2, 3)):
    return [fastbp.Network([3, 6, 2], activations="tanh", backend=backend, dtype=dtype,
                           seed=s) for s in seeds]


def _optimizers():
    return [fastbp.SGD(0.05, momentum=0.9, nesterov=True), fastbp.Adam(0.01),
            fastbp.RMSprop(0.005, momentum=0.5)]


def _same(net, ref):
    for a, b in zip(net.get_weights(), ref.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert net._step == ref._step
    np.testing.assert_array_equal(net._state, ref._state)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("batch_size", [1, 5])
def test_each_network_as_its_own_fit(backend, dtype, batch_size, workers):
    require_backend(backend)
    X, y = _data()
    nets, refs = _nets(backend, dtype), _nets(backend, dtype)
    histories = fastbp.fit_many(nets, X, y, epochs=2, batch_size=batch_size,
                                optimizers=_optimizers(), validation_split=0.25,
                                verbose=0, workers=workers)
    for net, ref, opt, hist in zip(nets, refs, _optimizers(), histories):
        want = ref.fit(X, y, epochs=2, batch_size=batch_size, optimizer=opt,
                       validation_split=0.25, verbose=0)
        assert hist.history == want.history
        _same(net, ref)
    # a second call continues each network's optimizer state, as a second fit does
    fastbp.fit_many(nets, X, y, batch_size=batch_size, verbose=0, workers=workers)
    for net, ref in zip(nets, refs):
        ref.fit(X, y, batch_size=batch_size, verbose=0)
        _same(net, ref)


def test_streamed_files_and_validation_data(tmp_path):
    X, y = _data(200)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    Xm = np.load(tmp_path / "X.npy", mmap_mode="r")
    ym = np.load(tmp_path / "y.npy", mmap_mode="r")
    nets, refs = _nets("numpy", "float64"), _nets("numpy", "float64")
    with fastbp.config_context(chunk_rows=48):
        hists = fastbp.fit_many(nets, Xm, ym, epochs=2, batch_size=4, verbose=0, workers=2,
                                validation_data=(X[:30], y[:30]))
        for ref, hist in zip(refs, hists):
            want = ref.fit(Xm, ym, epochs=2, batch_size=4, verbose=0,
                           validation_data=(X[:30], y[:30]))
            assert hist.history == want.history
    for net, ref in zip(nets, refs):
        _same(net, ref)


def test_early_stopping_stops_networks_one_by_one():
    """One callback list: every network gets its own copy, and its own patience."""
    X, y = _data()
    seeds = (1, 2)
    nets, refs = _nets("numpy", "float64", seeds), _nets("numpy", "float64", seeds)
    rates = [1e-6, 0.05]  # the first barely moves: it stops early
    stopper = fastbp.EarlyStopping(monitor="loss", min_delta=1e-4, patience=1)
    hists = fastbp.fit_many(nets, X, y, epochs=6, batch_size=8, verbose=0,
                            optimizers=[fastbp.SGD(r) for r in rates], callbacks=[stopper])
    lengths = [len(h.history["loss"]) for h in hists]
    for ref, rate, hist in zip(refs, rates, hists):
        want = ref.fit(X, y, epochs=6, batch_size=8, verbose=0, optimizer=fastbp.SGD(rate),
                       callbacks=[fastbp.EarlyStopping(monitor="loss", min_delta=1e-4,
                                                       patience=1)])
        assert hist.history == want.history
    assert lengths[0] < lengths[1] == 6


def test_callbacks_know_their_network():
    seen = []

    class Record(fastbp.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((self.network_index, self.network))

    X, y = _data()
    nets = _nets("numpy", "float64")
    per_network = [[Record()] for _ in nets]
    fastbp.fit_many(nets, X, y, verbose=0, callbacks=per_network, workers=3)
    assert sorted(k for k, _ in seen) == [0, 1, 2]
    assert all(net is nets[k] for k, net in seen)


def test_predict_many_stacks_each_networks_predict():
    X, _ = _data()
    nets = _nets("numpy", "float64")
    out = fastbp.predict_many(nets, X, workers=2)
    assert out.shape == (3, len(X), 2)
    for k, net in enumerate(nets):
        np.testing.assert_array_equal(out[k], net.predict(X))


def test_ctrl_c_stops_every_network_at_a_chunk_and_each_resumes_exactly():
    X, y = _data(240)

    class CtrlC(fastbp.Callback):
        def on_chunk_end(self, epoch, logs=None):
            if self.network_index == 1 and epoch == 0 and logs["rows"] == 48:
                os.kill(os.getpid(), signal.SIGINT)

    nets, refs = _nets("numpy", "float64"), _nets("numpy", "float64")
    with fastbp.config_context(chunk_rows=24):
        with pytest.raises(KeyboardInterrupt):
            fastbp.fit_many(nets, X, y, epochs=3, batch_size=4, verbose=0, workers=2,
                            callbacks=[[], [CtrlC()], []])
        for net, ref in zip(nets, refs):
            ref.fit(X, y, epochs=3, batch_size=4, verbose=0)
            if net.training_position is not None:  # stopped at a chunk: resume it
                net.fit(X, y, epochs=3, batch_size=4, verbose=0, resume=True)
            elif net._step == 0:  # never started: fit it now
                net.fit(X, y, epochs=3, batch_size=4, verbose=0)
            _same(net, ref)
    assert nets[1]._step == refs[1]._step


@pytest.mark.parametrize("change,error,words", [
    (lambda nets: [], ValueError, "at least one network"),
    (lambda nets: nets[0], TypeError, "list of fastbp.Network"),
    (lambda nets: [nets[0], "net"], TypeError, "position 1"),
    (lambda nets: [nets[0], nets[0]], ValueError, "distinct"),
    (lambda nets: nets + [fastbp.Network([3, 7, 2], activations="tanh")], ValueError,
     "network 3 has layers"),
    (lambda nets: nets + [fastbp.Network([3, 6, 2], activations="relu")], ValueError,
     "network 3 has activations"),
    (lambda nets: nets + [fastbp.Network([3, 6, 2], activations="tanh", dtype="float32")],
     ValueError, "network 3 has dtype"),
])
def test_bad_networks_change_nothing(change, error, words):
    X, y = _data()
    nets = _nets("numpy", "float64")
    before = [copy.deepcopy(n.get_weights()) for n in nets]
    with pytest.raises(error, match=words):
        fastbp.fit_many(change(nets), X, y, verbose=0)
    for net, weights in zip(nets, before):
        assert all(np.array_equal(a, b) for a, b in zip(net.get_weights(), weights))
        assert net._step == 0 and net.optimizer is None


@pytest.mark.parametrize("kwargs,error,words", [
    (dict(optimizers=[fastbp.SGD()]), ValueError, "one optimizer per network"),
    (dict(optimizers=["adam", "sgd", "rmsprop"]), TypeError, "optimizer"),
    (dict(callbacks=[[], []]), ValueError, "one list per network"),
    (dict(callbacks=["x"]), TypeError, "Callback"),
    (dict(epochs=0), ValueError, "epochs"),
    (dict(workers=0), ValueError, "workers"),
])
def test_bad_arguments_change_nothing(kwargs, error, words):
    X, y = _data()
    nets = _nets("numpy", "float64")
    before = [n.get_weights() for n in nets]
    with pytest.raises(error, match=words):
        fastbp.fit_many(nets, X, y, verbose=0, **kwargs)
    for net, weights in zip(nets, before):
        assert all(np.array_equal(a, b) for a, b in zip(net.get_weights(), weights))
        assert net._step == 0 and net.optimizer is None


def test_bad_data_changes_nothing():
    X, y = _data()
    X[5, 1] = np.nan
    nets = _nets("numpy", "float64")
    with pytest.raises(ValueError, match="finite"):
        fastbp.fit_many(nets, X, y, verbose=0)
    assert all(net._step == 0 for net in nets)

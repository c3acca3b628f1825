"""fastbp.fit_many / predict_many: every network exactly as its own fit / predict.

The oracle is each network's own ``Network.fit(..., workers=1)`` (itself tied
to the NumPy reference and ``tests/naive.py`` by the parity suites), run on an
identical twin built from the same arguments: weights, optimizer state, step
count and history must agree bit for bit on the CPU backends.
"""

import sys

import numpy as np
import pytest

import fastbp
from fastbp import _parallel

from .conftest import require_backend

CPU_BACKENDS = ["numpy", "numba", "cython"]

# name -> (batch size, optimizer factory): per-sample and minibatch, every update rule
CASES = {
    "sgd-b1": (1, lambda k: fastbp.SGD(learning_rate=0.01 * (k + 1))),
    "sgd-nesterov-b7": (7, lambda k: fastbp.SGD(learning_rate=0.02, momentum=0.5 + 0.1 * k,
                                                nesterov=True)),
    "adam-b1": (1, lambda k: fastbp.Adam(learning_rate=0.003 * (k + 1))),
    "rmsprop-b16": (16, lambda k: fastbp.RMSprop(learning_rate=0.002, momentum=0.3 * k)),
}


@pytest.fixture(autouse=True)
def two_cores(monkeypatch):
    """workers=2 is not capped on a one-core runner (only the cap reads this)."""
    cores = max(2, _parallel.usable_cores())
    monkeypatch.setattr(_parallel, "usable_cores", lambda: cores)


@pytest.fixture(autouse=True)
def small_chunks():
    """Chunks of 64 rows: several rounds per epoch, and streamed blocks on small data."""
    with fastbp.config_context(chunk_rows=64):
        yield


def _data(n=150, features=4, outputs=2, seed=3, dtype="float64"):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, size=(n, features))
    y = np.tanh(X @ rng.normal(size=(features, outputs))) + 0.05 * rng.normal(size=(n, outputs))
    return X.astype(dtype), y.astype(dtype)


def _network(k, backend, dtype, layers=(4, 6, 5, 2), **kwargs):
    return fastbp.Network(list(layers), activations=["relu", "tanh"], dtype=dtype,
                          backend=backend, seed=10 + k, **kwargs)


def _state(net):
    """Everything a fit changes, copied."""
    return (net._params.copy(), None if net._state is None else net._state.copy(), net._step,
            net.optimizer, net._rng.bit_generator.state)


def _assert_same(a, b):
    pa, sa, step_a, opt_a, rng_a = a
    pb, sb, step_b, opt_b, rng_b = b
    assert pa.dtype == pb.dtype and pa.tobytes() == pb.tobytes()
    assert (sa is None) == (sb is None)
    if sa is not None:
        assert sa.tobytes() == sb.tobytes()
    assert step_a == step_b and opt_a == opt_b and rng_a == rng_b


def _quietly(function, *args, **kwargs):
    import warnings

    with warnings.catch_warnings():  # the NumPy backend says its workers take turns
        warnings.simplefilter("ignore", RuntimeWarning)
        return function(*args, **kwargs)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("n_networks,workers", [(1, 1), (1, 2), (3, 1), (3, 2)])
@pytest.mark.needs_jit(n_networks=1)  # as plain Python, the three-network cases suffice
def test_each_network_as_its_own_fit(backend, dtype, case, n_networks, workers):
    require_backend(backend)
    batch_size, make_optimizer = CASES[case]
    X, y = _data()
    nets = [_network(k, backend, dtype) for k in range(n_networks)]
    twins = [_network(k, backend, dtype) for k in range(n_networks)]
    # a first fit, so that the second continues optimizer state and step count
    for net in nets + twins:
        net.fit(X[:20], y[:20], batch_size=batch_size, optimizer=make_optimizer(0), verbose=0)
    optimizers = [make_optimizer(k) for k in range(n_networks)]
    histories = _quietly(fastbp.fit_many, nets, X, y, epochs=2, batch_size=batch_size,
                         optimizers=optimizers, validation_split=0.2, verbose=0,
                         workers=workers)
    assert len(histories) == n_networks
    for k, (net, twin, history) in enumerate(zip(nets, twins, histories)):
        expected = twin.fit(X, y, epochs=2, batch_size=batch_size, optimizer=make_optimizer(k),
                            validation_split=0.2, verbose=0)
        assert history.history == expected.history
        assert history.epoch == expected.epoch == [0, 1]
        _assert_same(_state(net), _state(twin))
    if n_networks > 1:  # the networks did train differently
        assert histories[0].history != histories[1].history


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_default_optimizers_and_validation_data(backend, dtype):
    """optimizers=None: each network's current optimizer (SGD() the first time)."""
    require_backend(backend)
    X, y = _data()
    Xv, yv = _data(40, seed=9)
    nets = [_network(k, backend, dtype) for k in range(3)]
    twins = [_network(k, backend, dtype) for k in range(3)]
    for net, twin in zip(nets[1:], twins[1:]):  # networks 1, 2 already have an Adam
        for n in (net, twin):
            n.fit(X[:10], y[:10], optimizer=fastbp.Adam(0.01), verbose=0)
    histories = _quietly(fastbp.fit_many, nets, X, y, epochs=2, batch_size=5, workers=2,
                         validation_data=(Xv, yv), verbose=0, shuffle=False)
    for net, twin, history in zip(nets, twins, histories):
        expected = twin.fit(X, y, epochs=2, batch_size=5, validation_data=(Xv, yv), verbose=0,
                            shuffle=False)
        assert history.history == expected.history and "val_loss" in history.history
        _assert_same(_state(net), _state(twin))
    assert nets[0].optimizer == fastbp.SGD() and nets[1].optimizer == fastbp.Adam(0.01)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_memory_mapped_inputs_stream(backend, tmp_path):
    require_backend(backend)
    X, y = _data(200)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    Xm = np.load(tmp_path / "X.npy", mmap_mode="r")
    ym = np.load(tmp_path / "y.npy", mmap_mode="r")
    nets = [_network(k, backend, "float32") for k in range(2)]
    twins = [_network(k, backend, "float32") for k in range(2)]
    histories = _quietly(fastbp.fit_many, nets, Xm, ym, epochs=2, batch_size=3, workers=2,
                         validation_split=0.25, verbose=0)
    for net, twin, history in zip(nets, twins, histories):
        expected = twin.fit(Xm, ym, epochs=2, batch_size=3, validation_split=0.25, verbose=0)
        assert history.history == expected.history
        _assert_same(_state(net), _state(twin))


def test_streamed_bad_block_changes_no_network(tmp_path):
    X, y = _data(200)
    X[170, 1] = np.nan  # in the third block of 64 rows
    np.save(tmp_path / "X.npy", X)
    Xm = np.load(tmp_path / "X.npy", mmap_mode="r")
    nets = [_network(k, "numpy", "float64") for k in range(2)]
    before = [_state(net) for net in nets]
    with pytest.raises(ValueError, match="row 170, column 1"):
        fastbp.fit_many(nets, Xm, y, epochs=2, batch_size=8, verbose=0)
    for net, state in zip(nets, before):
        _assert_same(_state(net), state)


@pytest.mark.parametrize("backend", ["numpy", "cython"])
def test_early_stopping_stops_networks_one_by_one(backend):
    require_backend(backend)
    X, y = _data()

    def stoppers(k):  # network 0 never counts as improving: it stops after two epochs
        return [fastbp.EarlyStopping(monitor="val_loss", patience=0,
                                     min_delta=1e9 if k == 0 else 0.0,
                                     restore_best_weights=True)]

    nets = [_network(k, backend, "float64") for k in range(3)]
    twins = [_network(k, backend, "float64") for k in range(3)]
    lists = [stoppers(k) for k in range(3)]
    histories = _quietly(fastbp.fit_many, nets, X, y, epochs=5, batch_size=4,
                         optimizers=[fastbp.SGD(0.02)] * 3, validation_split=0.2,
                         callbacks=lists, workers=2, verbose=0)
    for k, (net, twin, history) in enumerate(zip(nets, twins, histories)):
        expected = twin.fit(X, y, epochs=5, batch_size=4, optimizer=fastbp.SGD(0.02),
                            validation_split=0.2, callbacks=stoppers(k), verbose=0)
        assert history.history == expected.history
        _assert_same(_state(net), _state(twin))
        assert lists[k][0].network is net
    lengths = [len(h.history["loss"]) for h in histories]
    assert lengths[0] == 2 and max(lengths[1:]) > 2


def test_callback_factory_and_hooks_run_in_the_calling_thread():
    import threading

    calls = []

    class Record(fastbp.Callback):
        def __init__(self, k):
            self.k = k

        def on_train_begin(self, logs=None):
            calls.append((self.k, "begin", threading.get_ident()))

        def on_chunk_end(self, epoch, logs=None):
            calls.append((self.k, "chunk", threading.get_ident()))

        def on_epoch_end(self, epoch, logs=None):
            calls.append((self.k, "epoch", threading.get_ident()))
            assert self.network.get_weights()  # the network may be read from a callback

        def on_train_end(self, logs=None):
            calls.append((self.k, "end", threading.get_ident()))

    X, y = _data()
    nets = [_network(k, "numpy", "float64") for k in range(2)]
    _quietly(fastbp.fit_many, nets, X, y, epochs=2, batch_size=10, workers=2, verbose=0,
             callbacks=lambda k: [Record(k)])
    assert {ident for _, _, ident in calls} == {threading.get_ident()}
    for k in range(2):
        kinds = [kind for j, kind, _ in calls if j == k]
        # 150 rows in chunks of 60 (64 rounded down to whole batches): 3 per epoch
        assert kinds == ["begin"] + (["chunk"] * 3 + ["epoch"]) * 2 + ["end"]


def test_one_progress_bar(capsys):
    X, y = _data()
    nets = [_network(k, "numpy", "float64") for k in range(3)]
    fastbp.fit_many(nets, X, y, epochs=2, batch_size=30, verbose=1)
    err = capsys.readouterr().err
    assert "3 networks" in err and "900" in err  # 3 networks x 2 epochs x 150 rows
    assert "epoch 1/2" not in err  # not one bar per network and epoch


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_diverging_network_stops_alone(backend):
    require_backend(backend)
    X, y = _data()
    y = y * 1e3
    rates = [0.001, 50.0, 0.002]
    nets = [_network(k, backend, "float64") for k in range(3)]
    twins = [_network(k, backend, "float64") for k in range(3)]
    with pytest.raises(fastbp.ManyDivergedError, match=r"networks \[1\] diverged") as info:
        _quietly(fastbp.fit_many, nets, X, y, epochs=3, batch_size=2, workers=2, verbose=0,
                 optimizers=[fastbp.SGD(r) for r in rates])
    assert isinstance(info.value, fastbp.TrainingDivergedError)
    assert info.value.diverged == [1]
    for k, (net, twin) in enumerate(zip(nets, twins)):
        if k == 1:
            with pytest.raises(fastbp.TrainingDivergedError):
                twin.fit(X, y, epochs=3, batch_size=2, optimizer=fastbp.SGD(rates[k]),
                         verbose=0)
        else:
            expected = twin.fit(X, y, epochs=3, batch_size=2, optimizer=fastbp.SGD(rates[k]),
                                verbose=0)
            assert info.value.histories[k].history == expected.history
        _assert_same(_state(net), _state(twin))
        assert np.isfinite(net._params).all()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("workers", [1, 2])
def test_predict_many(backend, dtype, workers):
    require_backend(backend)
    X, _ = _data(300)
    nets = [_network(k, backend, dtype) for k in range(3)]
    out = _quietly(fastbp.predict_many, nets, X, workers=workers)
    assert out.shape == (3, 300, 2) and out.dtype == np.dtype(dtype)
    for k, net in enumerate(nets):
        assert out[k].tobytes() == net.predict(X).tobytes()


# ------------------------------------------------------------------------------ bad input
def _bad_calls():
    X, y = _data()
    return {
        "empty": (("empty", X, y), {}, ValueError, "at least one fastbp.Network; found an empty"),
        "not a list": (("net", X, y), {}, TypeError, "expected a list of fastbp.Network"),
        "non-network": (("nets+1", X, y), {}, TypeError, r"networks\[3\]: expected a "
                        "fastbp.Network; found int"),
        "same twice": (("twice", X, y), {}, ValueError, r"networks\[3\]: expected distinct "
                       r"Network objects; found the same Network as networks\[1\]"),
        "widths": (("widths", X, y), {}, ValueError, r"networks\[2\]: expected the layer "
                   r"widths of networks\[0\], \[4, 6, 5, 2\]; found \[4, 7, 5, 2\]"),
        "activations": (("acts", X, y), {}, ValueError, r"networks\[1\]: expected the "
                        "activations of networks"),
        "loss": (("loss", X, y), {}, ValueError, r"networks\[1\]: expected the loss of "
                 r"networks\[0\], 'mse'; found 'mae'"),
        "dtype": (("dtype", X, y), {}, ValueError, r"networks\[2\]: expected the dtype"),
        "optimizers length": ((None, X, y), {"optimizers": [fastbp.SGD()] * 2}, ValueError,
                              r"one optimizer per network \(3\); found 2"),
        "optimizer type": ((None, X, y), {"optimizers": [fastbp.SGD(), "adam", None]},
                           TypeError, r"optimizers\[1\]: expected fastbp.SGD"),
        "flat callbacks": ((None, X, y), {"callbacks": [fastbp.EarlyStopping()]}, TypeError,
                           "one instance cannot keep the state of several networks"),
        "shared callback": ((None, X, y), {"callbacks": "shared"}, ValueError,
                            "the same EarlyStopping for networks 0 and 1"),
        "callbacks length": ((None, X, y), {"callbacks": [[], []]}, ValueError,
                             r"one list of callbacks per network \(3\); found 2"),
        "factory result": ((None, X, y), {"callbacks": lambda k: "x"}, TypeError,
                           r"callbacks\(0\) returned"),
        "monitor": ((None, X, y), {"callbacks": lambda k: [fastbp.EarlyStopping()]},
                    ValueError, "expected validation rows"),
        "epochs": ((None, X, y), {"epochs": 0}, ValueError, "epochs"),
        "batch size": ((None, X, y), {"batch_size": -1}, ValueError, "batch_size"),
        "workers": ((None, X, y), {"workers": 0}, ValueError, "workers"),
        "verbose": ((None, X, y), {"verbose": 3}, ValueError, "verbose"),
        "split": ((None, X, y), {"validation_split": 1.5}, ValueError, "validation_split"),
        "X width": ((None, X[:, :3], y), {}, ValueError, "X"),
        "NaN": ((None, np.where(X > 0.99, np.nan, X), y), {}, ValueError, "finite"),
        "lengths": ((None, X, y[:-1]), {}, ValueError, "rows"),
        "validation data": ((None, X, y), {"validation_data": (X,)}, ValueError,
                            "validation_data"),
    }


@pytest.mark.parametrize("name", list(_bad_calls()))
def test_bad_input_changes_nothing(name):
    args, kwargs, error, match = _bad_calls()[name]
    nets = [_network(k, "numpy", "float64") for k in range(3)]
    for net in nets:  # an optimizer, state and step count that a change would show
        net.fit(*_data(12), optimizer=fastbp.Adam(0.01), verbose=0)
    others = {
        "empty": [], "net": nets[0], "nets+1": nets + [1], "twice": nets + [nets[1]],
        "widths": nets[:2] + [_network(2, "numpy", "float64", layers=(4, 7, 5, 2))],
        "acts": nets[:1] + [fastbp.Network([4, 6, 5, 2], activations="relu",
                                           backend="numpy")],
        "loss": nets[:1] + [_network(1, "numpy", "float64", loss="mae")],
        "dtype": nets[:2] + [_network(2, "numpy", "float32")],
    }
    if kwargs.get("callbacks") == "shared":
        stop = fastbp.EarlyStopping(monitor="loss")
        kwargs = {"callbacks": [[stop], [stop], []]}
    networks = nets if args[0] is None else others[args[0]]
    arrays = [np.array(a, copy=True) for a in args[1:]]
    before = [_state(net) for net in nets]
    with pytest.raises(error, match=match):
        fastbp.fit_many(networks, *args[1:], **{"verbose": 0, **kwargs})
    for net, state in zip(nets, before):
        _assert_same(_state(net), state)
        assert net._trainer is None and net._guard._writer is None
    for a, b in zip(args[1:], arrays):  # the caller's arrays are untouched
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad,error,match", [
    ([], ValueError, "empty"),
    (None, TypeError, "a list of fastbp.Network"),
    ("mixed", ValueError, r"networks\[1\]: expected the layer widths"),
])
def test_predict_many_bad_input(bad, error, match):
    nets = [_network(0, "numpy", "float64"), _network(1, "numpy", "float64", layers=(4, 7, 5, 2))] \
        if bad == "mixed" else bad
    with pytest.raises(error, match=match):
        fastbp.predict_many(nets, _data()[0])
    with pytest.raises(ValueError, match="X"):
        fastbp.predict_many([_network(0, "numpy", "float64")], _data()[0][:, :2])


def test_a_network_busy_in_another_thread_is_refused():
    import threading

    X, y = _data()
    nets = [_network(k, "numpy", "float64") for k in range(2)]
    started, release = threading.Event(), threading.Event()

    class Hold(fastbp.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            started.set()
            release.wait(10)

    thread = threading.Thread(target=nets[1].fit, args=(X, y),
                              kwargs={"callbacks": [Hold()], "verbose": 0})
    thread.start()
    try:
        started.wait(10)
        before = _state(nets[0])
        with pytest.raises(RuntimeError, match="fit_many: expected a Network that no other"):
            fastbp.fit_many(nets, X, y, verbose=0)
        _assert_same(_state(nets[0]), before)
        assert nets[0]._guard._writer is None  # given back
    finally:
        release.set()
        thread.join()


def test_predict_many_holds_every_network_for_the_whole_call(monkeypatch):
    """A fit from another thread between two blocks is refused: no output mixes weights."""
    import threading

    X, _ = _data(n=100)
    nets = [_network(k, "numpy", "float64") for k in range(2)]
    expected = [net.predict(X) for net in nets]
    before = _state(nets[1])
    kernels = nets[0]._kernels
    real_predict, refused = kernels.predict, []

    def predict_then_fit_elsewhere(*args):
        real_predict(*args)
        if not refused:  # after the first block: another thread tries to train nets[1]
            def train():
                try:
                    nets[1].fit(X, expected[1], verbose=0, optimizer=fastbp.SGD(0.5))
                except RuntimeError as exc:
                    refused.append(str(exc))
            thread = threading.Thread(target=train)
            thread.start()
            thread.join()
            if not refused:
                refused.append(None)  # the fit went through

    monkeypatch.setattr(kernels, "predict", predict_then_fit_elsewhere)
    with fastbp.config_context(chunk_rows=30):  # four blocks
        out = fastbp.predict_many(nets, X)
    assert refused and refused[0] is not None and "predict_many" in refused[0], refused
    _assert_same(_state(nets[1]), before)
    for k in range(2):
        assert out[k].tobytes() == expected[k].tobytes()


@pytest.mark.parametrize("outer", ["fit", "fit_many"])
@pytest.mark.parametrize("inner", ["fit", "fit_many"])
def test_training_a_network_from_its_own_training_callback_is_refused(outer, inner):
    """The nested call is refused and the outer training ends as it would have alone."""
    X, y = _data()
    errors = []

    class Nested(fastbp.Callback):
        def on_epoch_end(self, epoch, logs=None):
            try:
                if inner == "fit":
                    self.network.fit(X, y, verbose=0)
                else:
                    fastbp.fit_many([_network(9, "numpy", "float64"), self.network], X, y,
                                    verbose=0)
            except RuntimeError as exc:
                errors.append(str(exc))

    def train(nets, callbacks):
        if outer == "fit":
            nets[0].fit(X, y, epochs=2, verbose=0, callbacks=callbacks(0))
        else:
            fastbp.fit_many(nets, X, y, epochs=2, verbose=0, callbacks=callbacks)

    nets = [_network(k, "numpy", "float64") for k in range(2)]
    ref = [_network(k, "numpy", "float64") for k in range(2)]
    train(nets, lambda k: [Nested()])
    train(ref, lambda k: [])
    trained = 1 if outer == "fit" else 2
    assert len(errors) == 2 * trained  # one per epoch and network
    assert all(f"{inner}: expected a call outside the training" in e and
               f"while {outer} trains it" in e for e in errors), errors
    for a, b in zip(nets[:trained], ref[:trained]):
        _assert_same(_state(a), _state(b))


@pytest.mark.parametrize("call", ["fit", "fit_many"])
def test_a_callback_failing_before_training_gives_the_networks_back(call):
    """on_train_begin raises: optimizer, its state, step, shuffle state and position as before."""
    X, y = _data()
    nets = [_network(k, "numpy", "float64") for k in range(2)]
    for net in nets:
        net.fit(X, y, epochs=2, verbose=0, optimizer=fastbp.Adam(0.01))
    before = [_state(net) for net in nets]

    class Refuse(fastbp.Callback):
        def on_train_begin(self, logs=None):
            raise RuntimeError("not now")

    with pytest.raises(RuntimeError, match="not now"):
        if call == "fit":
            nets[0].fit(X, y, verbose=0, optimizer=fastbp.SGD(0.1), callbacks=[Refuse()])
        else:
            fastbp.fit_many(nets, X, y, verbose=0, optimizers=[fastbp.SGD(0.1)] * 2,
                            callbacks=lambda k: [Refuse()] if k == 1 else [])
    for net, state in zip(nets, before):
        _assert_same(_state(net), state)
        assert isinstance(net.optimizer, fastbp.Adam)


def test_public_names():
    for name in ("fit_many", "predict_many", "ManyDivergedError"):
        assert name in fastbp.__all__
    assert issubclass(fastbp.ManyDivergedError, fastbp.TrainingDivergedError)


# ------------------------------------------------------------------------- fastbp sweep
def _cli(capsys, *argv):
    """``(exit status, stdout, stderr)`` of ``fastbp ARGV`` in this process (as test_cli)."""
    from fastbp import cli

    try:
        status = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse: usage errors
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


SWEEP = ["sweep", "--synthetic", 400, "--layers", "5,6,1", "--backend", "numpy", "--epochs", 2,
         "--batch-size", 4, "--quiet"]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's workers take turns
def test_sweep_end_to_end(capsys, tmp_path):
    status, out, err = _cli(capsys, *SWEEP, "--learning-rates", "1e-3,3e-2", "--seeds", "0-1",
                            "--workers", 2, "--save-best", tmp_path / "best.fbp")
    assert status == 0, err
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("rank"))
    rows = [line.split() for line in lines[start + 2:start + 6]]
    assert [(float(r[1]), int(r[2])) for r in sorted(rows, key=lambda r: (float(r[1]), r[2]))] \
        == [(1e-3, 0), (1e-3, 1), (3e-2, 0), (3e-2, 1)]
    val_losses = [float(r[5]) for r in rows]
    assert val_losses == sorted(val_losses)  # best first
    # the best row is what `fastbp train` trains alone with its learning rate and seed
    best = fastbp.load(tmp_path / "best.fbp")
    lr, seed = float(rows[0][1]), int(rows[0][2])
    assert best.metadata == {"sweep": {"learning_rate": lr, "seed": seed}}
    X, y = fastbp.datasets.make_regression(400, 5, 1, noise=0.1, seed=0)
    twin = fastbp.Network([5, 6, 1], backend="numpy", seed=seed)
    history = twin.fit(X, y, epochs=2, batch_size=4, optimizer=fastbp.SGD(lr),
                       validation_split=0.1, verbose=0)
    assert best.get_weights()[0].tobytes() == twin.get_weights()[0].tobytes()
    assert f"{history.history['val_loss'][-1]:.4g}" == rows[0][5]
    held = fastbp.metrics.r2_score(y[360:], twin.predict(X[360:]))
    assert abs(float(rows[0][6]) - held) < 1e-4


def test_sweep_plot(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    status, out, err = _cli(capsys, *SWEEP, "--learning-rates", "1e-2", "--seeds", "0,2",
                            "--plot", tmp_path / "sweep.png")
    assert status == 0, err
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_plot_without_matplotlib(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else object())
    status, out, err = _cli(capsys, *SWEEP, "--learning-rates", "1e-2", "--plot",
                            tmp_path / "sweep.png")
    assert status == 1 and "pip install matplotlib" in err
    assert "rank" not in out  # refused before training


@pytest.mark.parametrize("argv,message", [
    (["--learning-rates", "0,1e-3"], "expected comma-separated learning rates > 0"),
    (["--learning-rates", "1e-3", "--seeds", "3-1"], "expected seeds >= 0"),
    (["--learning-rates", "1e-3", "--seeds", "0,0"], "each seed once"),
    # counted, never listed: a list of 10**11 seeds would fill the memory first
    (["--learning-rates", "1e-3", "--seeds", "0-100000000000"], "at most 10,000 seeds"),
    (["--learning-rates", "1e-3", "--seeds", "0-5000,10000-15000"], "found 10,002"),
    (["--learning-rates", "1e-3", "--checkpoint", "c.ckpt"], "unrecognized arguments"),
    (["--learning-rates", "1e-3", "--rho", "0.5"], "--rho applies to --optimizer rmsprop"),
])
def test_sweep_usage_errors(capsys, argv, message):
    status, _, err = _cli(capsys, *SWEEP, *argv)
    assert status == 2 and message in err


def test_the_data_is_checked_and_converted_once(monkeypatch):
    from fastbp import _validation, network

    made, converted = [], []
    make_source, to_dtype = network.make_source, _validation.to_dtype
    monkeypatch.setattr(network, "make_source",
                        lambda *a, **k: made.append(a[-1] if a else None) or make_source(*a, **k))
    monkeypatch.setattr(_validation, "to_dtype",
                        lambda *a, **k: converted.append(a[2]) or to_dtype(*a, **k))
    X, y = _data(dtype="float32")  # converted to float64 for the networks
    nets = [_network(k, "numpy", "float64") for k in range(4)]
    fastbp.fit_many(nets, X, y, batch_size=30, validation_data=_data(20, seed=5), verbose=0)
    assert len(made) == 2  # the training rows and the validation rows, once each
    assert sorted(converted) == ["X", "validation_data[0]", "validation_data[1]", "y"]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to this process")
def test_ctrl_c_stops_after_the_round():
    import signal

    class CtrlC(fastbp.Callback):
        def on_chunk_end(self, epoch, logs=None):
            if logs["rows"] == 60:  # the first chunk: 60 rows (64 rounded to batches of 10)
                signal.raise_signal(signal.SIGINT)

    X, y = _data()
    nets = [_network(k, "numpy", "float64") for k in range(3)]
    with pytest.raises(KeyboardInterrupt):
        fastbp.fit_many(nets, X, y, epochs=2, batch_size=10, verbose=0,
                        callbacks=lambda k: [CtrlC()] if k == 0 else [])
    for k, net in enumerate(nets):
        # every network finished the round's chunk, and no more
        twin = _network(k, "numpy", "float64")
        with pytest.raises(KeyboardInterrupt):
            twin.fit(X, y, batch_size=10, optimizer=fastbp.SGD(), verbose=0,
                     callbacks=[_StopAfterRows(60)])
        assert net._step == 6 and net._params.tobytes() == twin._params.tobytes()
        assert net._trainer is None and net._guard._writer is None
        assert net.training_position is None


class _StopAfterRows(fastbp.Callback):
    """Ctrl-C after ``rows`` rows of a plain fit (the oracle of the interrupted round)."""

    def __init__(self, rows):
        self.rows = rows

    def on_chunk_end(self, epoch, logs=None):
        import signal

        if logs["rows"] == self.rows:
            signal.raise_signal(signal.SIGINT)

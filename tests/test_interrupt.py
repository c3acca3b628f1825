"""Ctrl-C: fit stops at a chunk boundary with a consistent model; checkpoint + resume is exact."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import fastbp
from fastbp.datasets import make_regression

CHUNK = 16
needs_sigint = pytest.mark.skipif(not hasattr(signal, "SIGINT") or sys.platform == "win32",
                                  reason="needs POSIX signals")


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setenv("FASTBP_CHUNK_ROWS", str(CHUNK))


class CtrlCAt(fastbp.Callback):
    """Sends this process a real SIGINT after chunk number ``at`` (1-based, over the whole fit)."""

    def __init__(self, at, times=1):
        self.at, self.times, self.chunks = at, times, 0

    def on_chunk_end(self, epoch, logs=None):
        self.chunks += 1
        if self.chunks == self.at:
            for _ in range(self.times):
                os.kill(os.getpid(), signal.SIGINT)


def _data(tmp_path, streamed, n=150):
    X, y = make_regression(n, 4, seed=2)
    if not streamed:
        return X, y
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    return np.load(tmp_path / "X.npy", mmap_mode="r"), np.load(tmp_path / "y.npy", mmap_mode="r")


def _net():
    return fastbp.Network([4, 8, 1], activations="relu", backend="numpy", seed=3)


def _stopper():
    return fastbp.EarlyStopping(patience=1, restore_best_weights=True)


FIT = dict(epochs=4, batch_size=3, validation_split=0.2, verbose=0)


def _weights_equal(a, b):
    return all(x.tobytes() == y.tobytes() for x, y in zip(a.get_weights(), b.get_weights()))


@needs_sigint
def test_ctrl_c_stops_after_the_chunk_in_progress():
    X, y = make_regression(200, 4, seed=0)
    net = _net()
    # whatever handler the process had (Python's default, or SIG_IGN when started in
    # the background) is what fit must put back
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        net.fit(X, y, batch_size=2, shuffle=False, callbacks=[CtrlCAt(3)], verbose=0)
    # exactly the first three chunks were trained: the same as fitting those rows alone
    ref = _net()
    ref.fit(X[:3 * CHUNK], y[:3 * CHUNK], batch_size=2, shuffle=False, verbose=0)
    assert _weights_equal(net, ref)
    assert net._step == ref._step == 3 * CHUNK // 2
    assert signal.getsignal(signal.SIGINT) is before  # handler restored


@needs_sigint
@pytest.mark.parametrize("streamed", [False, True], ids=["memory", "memmap"])
@pytest.mark.parametrize("at", [1, 7, 8, 9, 20])   # 8 chunks per epoch: ends, starts, middles
def test_resume_from_checkpoint_equals_uninterrupted_run(tmp_path, streamed, at):
    X, y = _data(tmp_path, streamed)
    ref = _net()
    ref_hist = ref.fit(X, y, optimizer=fastbp.Adam(0.02), callbacks=[_stopper()], **FIT)

    net = _net()
    path = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        net.fit(X, y, optimizer=fastbp.Adam(0.02), callbacks=[CtrlCAt(at), _stopper()],
                checkpoint=path, **FIT)
    del net
    resumed = fastbp.load(path, backend="numpy")
    hist = resumed.fit(X, y, callbacks=[_stopper()], resume=True, **FIT)
    assert _weights_equal(resumed, ref)
    assert hist.history == ref_hist.history
    assert resumed._step == ref._step
    assert resumed._rng.bit_generator.state == ref._rng.bit_generator.state
    assert resumed._position is None                   # finished: nothing left to resume
    assert sorted(p.name for p in tmp_path.iterdir() if "ckpt" in p.name) == ["run.ckpt"]


@needs_sigint
def test_resume_in_the_same_process_without_a_file():
    X, y = make_regression(150, 4, seed=2)
    ref = _net()
    ref.fit(X, y, optimizer=fastbp.RMSprop(0.01, momentum=0.5), **FIT)
    net = _net()
    with pytest.raises(KeyboardInterrupt):
        net.fit(X, y, optimizer=fastbp.RMSprop(0.01, momentum=0.5), callbacks=[CtrlCAt(11)],
                **FIT)
    net.fit(X, y, resume=True, **FIT)
    assert _weights_equal(net, ref)


@needs_sigint
def test_second_ctrl_c_inside_a_chunk_undoes_that_chunk_and_resume_is_still_exact(tmp_path):
    X, y = make_regression(150, 4, seed=2)
    ref = _net()
    ref.fit(X, y, optimizer=fastbp.SGD(0.05, momentum=0.9), **FIT)

    net = _net()
    real = net._kernels
    calls = []

    class TwiceInKernel:          # trains the chunk, then two Ctrl-C land before it returns
        def __getattr__(self, name):
            return getattr(real, name)

        def open_trainer(self, *args):
            trainer = real.open_trainer(*args)
            train = trainer.train

            def interrupted_train(*chunk):
                result = train(*chunk)
                calls.append(1)
                if len(calls) == 5:
                    os.kill(os.getpid(), signal.SIGINT)
                    os.kill(os.getpid(), signal.SIGINT)
                return result

            trainer.train = interrupted_train
            return trainer

    net._kernels = TwiceInKernel()
    path = tmp_path / "ck"
    with pytest.raises(KeyboardInterrupt):
        net.fit(X, y, optimizer=fastbp.SGD(0.05, momentum=0.9), checkpoint=path, **FIT)
    assert net._position["rows"] == 4 * (CHUNK // 3 * 3)   # the fifth chunk was rolled back
    resumed = fastbp.load(path, backend="numpy")
    resumed.fit(X, y, resume=True, **FIT)
    assert _weights_equal(resumed, ref)


def test_checkpoint_is_written_every_epoch_and_loads(tmp_path):
    X, y = make_regression(60, 4, seed=2)
    path = tmp_path / "ck"
    net = _net()
    net.fit(X, y, epochs=2, batch_size=4, checkpoint=str(path), verbose=0)
    saved = fastbp.load(path, backend="numpy")
    assert saved._position["epoch"] == 2 and saved._position["rows"] == 0
    assert _weights_equal(saved, net)
    # resuming a finished run with more epochs continues like one longer run
    longer = _net()
    longer.fit(X, y, epochs=3, batch_size=4, verbose=0)
    saved.fit(X, y, epochs=3, batch_size=4, resume=True, verbose=0)
    assert _weights_equal(saved, longer)


def test_resume_refuses_mismatched_calls_and_changes_nothing(tmp_path):
    X, y = make_regression(60, 4, seed=2)
    net = _net()
    with pytest.raises(ValueError, match="resume=True.*found none"):
        net.fit(X, y, resume=True, verbose=0)
    net.fit(X, y, epochs=1, batch_size=4, checkpoint=tmp_path / "ck", verbose=0)
    loaded = fastbp.load(tmp_path / "ck", backend="numpy")
    before = loaded.get_weights()
    cases = [
        (dict(X=X, y=y, batch_size=5), "batch_size"),
        (dict(X=X[:50], y=y[:50], batch_size=4), "number of training rows"),
        (dict(X=X[::-1].copy(), y=y[::-1].copy(), batch_size=4), "training data"),
        (dict(X=X, y=y, batch_size=4, shuffle=False), "shuffle"),
        (dict(X=X, y=y, batch_size=4, validation_split=0.5), "number of training rows"),
        (dict(X=X, y=y, batch_size=4, optimizer=fastbp.Adam()), "optimizer"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            loaded.fit(epochs=2, resume=True, verbose=0, **kwargs)
        assert all(a.tobytes() == b.tobytes() for a, b in zip(before, loaded.get_weights()))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        net.fit(X, y, checkpoint=tmp_path / "missing" / "ck", verbose=0)


# --------------------------------------------------------------------------- a real process
def _start(args, env):
    return subprocess.Popen([sys.executable, "-m", "fastbp", "train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@needs_sigint
def test_real_sigint_to_fastbp_train_then_resume_is_exact(tmp_path):
    env = {**os.environ, "FASTBP_CHUNK_ROWS": "200", "PYTHONWARNINGS": "ignore"}
    common = ["--synthetic", "12000", "--features", "6", "--hidden", "8", "--epochs", "3",
              "--backend", "numpy", "--optimizer", "adam", "--patience", "1"]
    ref = subprocess.run([sys.executable, "-m", "fastbp", "train", *common, "--quiet",
                          "--save", str(tmp_path / "ref.fbp")], env=env, capture_output=True,
                         timeout=120)
    assert ref.returncode == 0, ref.stderr.decode()

    proc = _start([*common, "--checkpoint", str(tmp_path / "ck"),
                   "--save", str(tmp_path / "out.fbp")], env)
    seen = b""
    deadline = time.monotonic() + 60
    while b"epoch 1/" not in seen and time.monotonic() < deadline:   # the bar: fit is running
        seen += os.read(proc.stderr.fileno(), 4096)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    err = (seen + err).decode()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "--resume" in err
    assert not (tmp_path / "out.fbp").exists()

    # output paths are never taken from the checkpoint: --save is given again
    resumed = subprocess.run([sys.executable, "-m", "fastbp", "train", "--resume",
                              str(tmp_path / "ck"), "--save", str(tmp_path / "out.fbp"),
                              "--quiet"], env=env, capture_output=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert b"resuming" in resumed.stdout
    a = fastbp.load(tmp_path / "ref.fbp", backend="numpy")
    b = fastbp.load(tmp_path / "out.fbp", backend="numpy")
    assert _weights_equal(a, b)


# ------------------------------------------------------------- a batch larger than the data
@pytest.mark.parametrize("streamed", [False, True], ids=["memory", "memmap"])
def test_checkpoint_with_a_batch_larger_than_the_data_loads_and_resumes(tmp_path, streamed):
    # fit clamps the batch to the 8 training rows: the position must record that
    # size, of which its chunk size is a multiple, or the file cannot be loaded.
    X, y = _data(tmp_path, streamed, n=10)
    fit = dict(batch_size=1000, validation_split=0.2, optimizer=fastbp.Adam(0.02), verbose=0)
    ref = _net()
    ref_hist = ref.fit(X, y, epochs=3, **fit)
    net = _net()
    net.fit(X, y, epochs=2, checkpoint=tmp_path / "a.ckpt", **fit)
    loaded = fastbp.load(tmp_path / "a.ckpt", backend="numpy")
    assert loaded._position["settings"]["batch_size"] == 8
    hist = loaded.fit(X, y, epochs=3, resume=True, **{**fit, "optimizer": None})
    assert _weights_equal(loaded, ref)
    assert hist.history == ref_hist.history and loaded._step == ref._step == 3


@needs_sigint
def test_ctrl_c_with_a_batch_larger_than_the_data_resumes_from_the_file(tmp_path):
    X, y = make_regression(40, 4, seed=2)
    ref = _net()
    ref.fit(X, y, epochs=3, batch_size=500, verbose=0)
    net = _net()
    with pytest.raises(KeyboardInterrupt):
        net.fit(X, y, epochs=3, batch_size=500, callbacks=[CtrlCAt(2)],
                checkpoint=tmp_path / "ck", verbose=0)
    resumed = fastbp.load(tmp_path / "ck", backend="numpy")
    resumed.fit(X, y, epochs=3, batch_size=500, resume=True, verbose=0)
    assert _weights_equal(resumed, ref)


def _train(tmp_path, *args):
    from fastbp import cli

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        return cli.main(["train", "--backend", "numpy", "--quiet", *map(str, args)])
    finally:
        os.chdir(cwd)


def test_fastbp_train_checkpoint_with_a_batch_larger_than_the_data_resumes(tmp_path, capsys):
    data = ["--synthetic", 50, "--layers", "3,4,1", "--batch-size", 1000]
    assert _train(tmp_path, *data, "--epochs", 3, "--save", "ref.fbp") == 0
    assert _train(tmp_path, *data, "--epochs", 2, "--checkpoint", "run.ckpt") == 0
    assert _train(tmp_path, "--resume", "run.ckpt", "--epochs", 3, "--save", "out.fbp") == 0
    capsys.readouterr()
    assert _weights_equal(fastbp.load(tmp_path / "ref.fbp", backend="numpy"),
                          fastbp.load(tmp_path / "out.fbp", backend="numpy"))


def test_fastbp_train_resume_accepts_the_same_large_batch_size_typed_again(tmp_path, capsys):
    data = ["--synthetic", 50, "--layers", "3,4,1", "--batch-size", 1000]
    assert _train(tmp_path, *data, "--epochs", 2, "--checkpoint", "run.ckpt") == 0
    try:
        status = _train(tmp_path, "--resume", "run.ckpt", "--epochs", 3, "--batch-size", 1000)
    except SystemExit as exc:   # a usage error
        status = exc.code
    capsys.readouterr()
    assert status == 0


# ------------------------------------------------------------------ a failed checkpoint write
class FailingWrites:
    """``_io.write_model_file`` that fails with ENOSPC on the calls numbered in ``fail``."""

    def __init__(self, monkeypatch, *fail):
        import fastbp._io

        self.real, self.fail, self.calls = fastbp._io.write_model_file, set(fail), 0
        monkeypatch.setattr(fastbp._io, "write_model_file", self)

    def __call__(self, path, state, arrays):
        self.calls += 1
        if self.calls in self.fail:
            raise OSError(28, "No space left on device")
        return self.real(path, state, arrays)


def test_a_failed_checkpoint_write_keeps_the_exact_position(tmp_path, monkeypatch):
    X, y = make_regression(60, 4, seed=2)
    fit = dict(epochs=4, batch_size=4, validation_split=0.2, verbose=0)
    ref = _net()
    ref_hist = ref.fit(X, y, optimizer=fastbp.Adam(0.02), callbacks=[_stopper()], **fit)
    net = _net()
    writes = FailingWrites(monkeypatch, 2)
    with pytest.raises(OSError, match="No space"):
        net.fit(X, y, optimizer=fastbp.Adam(0.02), callbacks=[_stopper()],
                checkpoint=tmp_path / "ck", **fit)
    assert writes.calls == 2
    assert net._position is not None and net._position["epoch"] == 2
    assert net._position["rows"] == 0
    # space freed: resume in this process, or from a file saved now
    net.save(tmp_path / "later.ckpt")
    hist = net.fit(X, y, callbacks=[_stopper()], resume=True, **fit)
    assert _weights_equal(net, ref) and hist.history == ref_hist.history
    loaded = fastbp.load(tmp_path / "later.ckpt", backend="numpy")
    loaded.fit(X, y, callbacks=[_stopper()], resume=True, **fit)
    assert _weights_equal(loaded, ref)


@needs_sigint
def test_a_failed_checkpoint_write_after_ctrl_c_keeps_the_exact_position(tmp_path, monkeypatch):
    X, y = make_regression(150, 4, seed=2)
    ref = _net()
    ref.fit(X, y, optimizer=fastbp.Adam(0.02), **FIT)
    net = _net()
    FailingWrites(monkeypatch, 1)
    with pytest.raises(OSError, match="No space"):
        net.fit(X, y, optimizer=fastbp.Adam(0.02), callbacks=[CtrlCAt(3)],
                checkpoint=tmp_path / "ck", **FIT)
    assert net._position is not None and net._position["rows"] == 3 * (CHUNK // 3 * 3)
    net.fit(X, y, resume=True, **FIT)
    assert _weights_equal(net, ref)


def test_other_errors_during_fit_still_drop_the_position(tmp_path, monkeypatch):
    X, y = make_regression(60, 4, seed=2)

    class Boom(fastbp.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("boom")

    net = _net()
    with pytest.raises(RuntimeError, match="boom"):
        net.fit(X, y, epochs=3, batch_size=4, callbacks=[Boom()], checkpoint=tmp_path / "ck",
                verbose=0)
    assert net._position is None


# ---------------------------------------------------------------- the fingerprint is lazy
@pytest.fixture
def fingerprints(monkeypatch):
    from fastbp._data import ArraySource

    calls = []
    real = ArraySource.fingerprint

    def counted(self):
        calls.append(type(self).__name__)
        return real(self)

    monkeypatch.setattr(ArraySource, "fingerprint", counted)   # StreamSource inherits it
    return calls


@pytest.mark.parametrize("streamed", [False, True], ids=["memory", "memmap"])
def test_the_data_fingerprint_is_computed_only_for_a_position(tmp_path, streamed, fingerprints):
    X, y = _data(tmp_path, streamed, n=60)
    net = _net()
    net.fit(X, y, epochs=2, batch_size=4, validation_split=0.2, verbose=0)
    assert fingerprints == []                      # no checkpoint, no resume, no Ctrl-C
    net.fit(X, y, epochs=3, batch_size=4, checkpoint=tmp_path / "ck", verbose=0)
    assert len(fingerprints) == 1                  # once per fit, for its three positions
    loaded = fastbp.load(tmp_path / "ck", backend="numpy")
    loaded.fit(X, y, epochs=5, batch_size=4, resume=True, checkpoint=tmp_path / "ck", verbose=0)
    assert len(fingerprints) == 2                  # the resume check, reused for the positions
    with pytest.raises(ValueError, match="found none"):
        _net().fit(X, y, resume=True, verbose=0)   # nothing to compare: nothing read
    assert len(fingerprints) == 2

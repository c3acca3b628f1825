"""fastbp.dask on a real LocalCluster: semantics against Network.fit, faults, errors.

Every test runs against real Dask components (a LocalCluster of worker
processes and a Client); nothing of Dask is mocked.  Data is tiny and every
wait has a timeout, so the file runs in well under a minute.
"""

import os
import signal
import subprocess
import sys
import warnings

import numpy as np
import pytest

distributed = pytest.importorskip(
    "distributed", reason="fastbp.dask needs dask[distributed] (pip install 'fastbp[dask]')")
import dask.array as da  # noqa: E402

import fastbp  # noqa: E402
import fastbp.dask as fdask  # noqa: E402
from fastbp.datasets import make_regression  # noqa: E402

from .conftest import require_backend  # noqa: E402

TIMEOUT = 30  # seconds any single wait on the cluster may take


def _cluster(n_workers=2):
    return distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                    dashboard_address=None, host="127.0.0.1")


@pytest.fixture(scope="module")
def client():
    cluster = _cluster()
    client = distributed.Client(cluster, timeout=TIMEOUT)
    client.wait_for_workers(2, timeout=TIMEOUT)
    yield client
    client.close()
    cluster.close()


def _problem(n=96, features=3, seed=0):
    X, y = make_regression(n, features, seed=seed)
    return X, y.reshape(-1, 1)


def _pinned(client, X, y, chunk_rows, workers_of_chunks):
    """Dask arrays whose chunk ``i`` lives on worker ``workers_of_chunks[i]`` (scattered there)."""
    xs, ys = [], []
    for i, addr in enumerate(workers_of_chunks):
        lo, hi = i * chunk_rows, (i + 1) * chunk_rows
        # hash=False: tests scatter equal chunks again and again, and a content-hashed key
        # released by one test while the next re-scatters it gets cancelled (dask/distributed
        # #8576, #3703)
        fx = client.scatter(X[lo:hi], workers=[addr], hash=False)
        fy = client.scatter(y[lo:hi], workers=[addr], hash=False)
        xs.append(da.from_delayed(fx, (hi - lo, X.shape[1]), X.dtype))
        ys.append(da.from_delayed(fy, (hi - lo, y.shape[1]), y.dtype))
    return da.concatenate(xs), da.concatenate(ys)


def _net(backend="numpy", seed=1):
    return fastbp.Network([3, 6, 1], activations="tanh", backend=backend, seed=seed)


def _workers(client):
    return sorted(client.scheduler_info(n_workers=-1)["workers"])


OPTIMIZERS = {"sgd": lambda: fastbp.SGD(0.05), "adam": lambda: fastbp.Adam(0.01),
              "rmsprop_momentum": lambda: fastbp.RMSprop(0.002, momentum=0.5)}


def test_import_fastbp_does_not_import_dask():
    code = ("import sys, fastbp; bad = [m for m in ('dask', 'distributed') if m in sys.modules];"
            " assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=TIMEOUT)


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_one_worker_equals_network_fit(client, opt, batch_size):
    """Every chunk on one worker, shuffle=False: bitwise net.fit (same backend, workers=1)."""
    X, y = _problem()
    a = _workers(client)[0]
    Xd, yd = _pinned(client, X, y, 24, [a] * 4)
    net, ref = _net(), _net()
    hist = fdask.fit(net, Xd, yd, client=client, epochs=2, batch_size=batch_size,
                     optimizer=OPTIMIZERS[opt](), shuffle=False, average_every=8, verbose=0)
    expected = ref.fit(X, y, epochs=2, batch_size=batch_size, optimizer=OPTIMIZERS[opt](),
                       shuffle=False, verbose=0)
    assert hist.workers == [a] and hist.assignment == [[0, 1, 2, 3]]
    for got, want in zip(net.get_weights(), ref.get_weights()):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(hist.history["loss"], expected.history["loss"], rtol=1e-12)
    assert net._step == ref._step


def test_one_worker_shuffled_equals_streamed_fit(client, tmp_path):
    """shuffle=True, one worker: net.fit on the memmap with chunk_rows = the Dask chunk length."""
    X, y = _problem()
    a = _workers(client)[0]
    Xd, yd = _pinned(client, X, y, 24, [a] * 4)
    np.save(tmp_path / "X.npy", X)
    net, ref = _net(), _net()
    fdask.fit(net, Xd, yd, client=client, epochs=2, batch_size=2, optimizer=fastbp.SGD(0.05),
              average_every=10, verbose=0)
    with fastbp.config_context(chunk_rows=24):
        ref.fit(np.load(tmp_path / "X.npy", mmap_mode="r"), y, epochs=2, batch_size=2,
                optimizer=fastbp.SGD(0.05), verbose=0)
    for got, want in zip(net.get_weights(), ref.get_weights()):
        np.testing.assert_array_equal(got, want)
    assert net._rng.bit_generator.state == ref._rng.bit_generator.state


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("opt", ["sgd", "adam", "rmsprop_momentum"])
def test_two_workers_equal_in_process_local_sgd(client, backend, opt):
    """Two workers, two chunks each: the in-process local SGD of the interleaved row order."""
    require_backend(backend)
    X, y = _problem()
    a, b = _workers(client)
    Xd, yd = _pinned(client, X, y, 24, [a, a, b, b])
    A, batch_size = 6, 3
    net, ref = _net(backend), _net(backend)
    hist = fdask.fit(net, Xd, yd, client=client, epochs=2, batch_size=batch_size,
                     optimizer=OPTIMIZERS[opt](), shuffle=False, average_every=A, verbose=0)
    assert hist.workers == [a, b] and hist.assignment == [[0, 1], [2, 3]]
    # worker k's sequence: its chunks' rows in order; a round takes A rows of each
    sequences = [np.arange(0, 48), np.arange(48, 96)]
    order = np.concatenate([s[r:r + A] for r in range(0, 48, A) for s in sequences])
    with warnings.catch_warnings():  # numpy's workers take turns
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = ref.fit(X[order], y[order], epochs=2, batch_size=batch_size,
                           optimizer=OPTIMIZERS[opt](), shuffle=False, verbose=0, workers=2,
                           average_every=A)
    for got, want in zip(net.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(hist.history["loss"], expected.history["loss"], rtol=1e-9)
    assert net._step == ref._step


def test_a_round_longer_than_the_data_trains_as_one_round_and_checkpoints(client, tmp_path):
    """average_every beyond the rows trains as the rows' count; its checkpoint loads."""
    X, y = _problem()
    a, b = _workers(client)
    Xd, yd = _pinned(client, X, y, 24, [a, a, b, b])
    nets = []
    for A, ckpt in [(len(X), None), (10**30, tmp_path / "run.ckpt")]:
        net = _net("numpy")
        fdask.fit(net, Xd, yd, client=client, epochs=2, batch_size=1, shuffle=False,
                  average_every=A, checkpoint=ckpt, verbose=0)
        nets.append(net)
    for got, want in zip(nets[1].get_weights(), nets[0].get_weights()):
        np.testing.assert_array_equal(got, want)
    loaded = fastbp.load(tmp_path / "run.ckpt")
    for got, want in zip(loaded.get_weights(), nets[1].get_weights()):
        np.testing.assert_array_equal(got, want)


def test_deterministic_and_inference(client):
    """Same seed and assignment: the same bits; predict/evaluate equal the in-process ones."""
    X, y = _problem()
    a, b = _workers(client)
    Xd, yd = _pinned(client, X, y, 24, [a, b, a, b])
    runs = []
    for _ in range(2):
        net = _net("numba" if "numba" in fastbp.available_backends() else "numpy")
        fdask.fit(net, Xd, yd, client=client, epochs=2, batch_size=1, optimizer=fastbp.Adam(0.01),
                  average_every=5, verbose=0)
        runs.append(net)
    for w1, w2 in zip(runs[0].get_weights(), runs[1].get_weights()):
        np.testing.assert_array_equal(w1, w2)
    net = runs[0]
    pred = fdask.predict(net, Xd)
    assert isinstance(pred, da.Array) and pred.shape == (96, 1)
    np.testing.assert_allclose(pred.compute(), net.predict(X), rtol=1e-12)
    assert fdask.evaluate(net, Xd, yd) == pytest.approx(net.evaluate(X, y), rel=1e-12)


def test_validation_and_callbacks(client):
    X, y = _problem()
    Xd, yd = da.from_array(X, chunks=(24, -1)), da.from_array(y[:, 0], chunks=16)
    net = _net()
    stopper = fastbp.EarlyStopping(monitor="val_loss", patience=0)
    hist = fdask.fit(net, Xd, yd, client=client, epochs=3, batch_size=4,
                     validation_data=(Xd[:32], yd[:32]), callbacks=[stopper], verbose=0)
    assert len(hist.history["val_loss"]) == len(hist.history["loss"]) >= 1
    assert hist.history["val_loss"][-1] == pytest.approx(net.evaluate(X[:32], y[:32]), rel=1e-9)


def test_nan_in_a_chunk_names_it_and_changes_nothing(client):
    X, y = _problem()
    X[24 * 2 + 5, 1] = np.nan
    net = _net()
    before = net.get_weights()
    with pytest.raises(ValueError, match=r"chunk 2 .*row 53 \(row 5 of the chunk\), column 1"):
        fdask.fit(net, da.from_array(X, chunks=(24, -1)), da.from_array(y, chunks=(24, -1)),
                  client=client, verbose=0)
    for got, want in zip(net.get_weights(), before):
        np.testing.assert_array_equal(got, want)
    assert net.optimizer is None


def test_predict_and_evaluate_name_the_bad_row_of_the_whole_array(client):
    X, y = _problem()
    X[24 * 2 + 5, 1] = np.nan
    y[24 * 3 + 1, 0] = np.inf
    Xd, yd = da.from_array(X, chunks=(24, -1)), da.from_array(y, chunks=(24, -1))
    net = _net()
    with pytest.raises(ValueError, match=r"X: .* at index \(53, 1\)"):
        fdask.predict(net, Xd).compute()
    with pytest.raises(ValueError, match=r"y: .* at index \(73, 0\)"):
        fdask.evaluate(net, da.from_array(np.nan_to_num(X), chunks=(24, -1)), yd)
    for _ in range(3):  # the first bad row in row order, whichever chunk's task ends first
        with pytest.raises(ValueError, match=r"X: .* at index \(53, 1\)"):
            fdask.evaluate(net, Xd, yd)


def test_bad_arguments(client):
    X, y = _problem()
    net = _net()
    with pytest.raises(TypeError, match="expected a dask.array.Array"):
        fdask.fit(net, X, y, client=client)
    with pytest.raises(ValueError, match="expected shape"):
        fdask.fit(net, da.from_array(X[:, :2]), da.from_array(y), client=client)
    with pytest.raises(TypeError, match="expected a fastbp.Network"):
        fdask.predict("net", da.from_array(X))


def test_ctrl_c_stops_at_an_averaging_point(client):
    X, y = _problem()
    Xd, yd = da.from_array(X, chunks=(24, -1)), da.from_array(y, chunks=(24, -1))

    class Interrupt(fastbp.Callback):
        rounds = 0

        def on_chunk_end(self, epoch, logs=None):
            self.rounds += 1
            if self.rounds == 2:
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: deferred to the round's end

    net = _net()
    with pytest.raises(KeyboardInterrupt):
        fdask.fit(net, Xd, yd, client=client, epochs=3, batch_size=2, average_every=4,
                  callbacks=[Interrupt()], verbose=0)
    assert net._step == 2 * 2  # two rounds of two batches per replica
    assert all(np.isfinite(w).all() for w in net.get_weights())
    position = net.training_position  # after the second round: fit(resume=True) goes on
    assert (position["epoch"], position["rows"]) == (0, 2 * 2 * 4)


def _uninterrupted(client, epochs):
    """A pinned problem, the fit settings, and the network and history of the whole fit."""
    X, y = _problem()
    a, b = _workers(client)
    Xd, yd = _pinned(client, X, y, 24, [a, b, b, a])
    settings = dict(client=client, epochs=epochs, batch_size=2, optimizer=fastbp.Adam(0.01),
                    average_every=6, verbose=0)
    whole = _net()
    history = fdask.fit(whole, Xd, yd, **settings)
    return (X, y, Xd, yd), settings, whole, history


def test_checkpoint_and_resume_at_an_epoch_boundary(client, tmp_path):
    (_, _, Xd, yd), settings, whole, _ = _uninterrupted(client, epochs=3)

    class InterruptInEpoch2(fastbp.Callback):
        def on_chunk_end(self, epoch, logs=None):
            if epoch == 1:
                os.kill(os.getpid(), signal.SIGINT)

    ckpt = tmp_path / "run.ckpt"
    net = _net()
    with pytest.raises(KeyboardInterrupt):
        fdask.fit(net, Xd, yd, checkpoint=ckpt, callbacks=[InterruptInEpoch2()], **settings)
    resumed = fastbp.load(ckpt)
    assert resumed.training_position["epoch"] == 1
    settings["optimizer"] = None
    hist = fdask.fit(resumed, Xd, yd, resume=True, **settings)
    assert len(hist.history["loss"]) == 3
    # not bitwise: a network loaded from a file continues its fit a rounding away from the
    # one saved (Network.fit too); the rows, rounds and steps are the same
    for got, want in zip(resumed.get_weights(), whole.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    assert resumed._step == whole._step
    with pytest.raises(ValueError, match="resume=True"):
        fdask.fit(_net(), Xd, yd, resume=True, **settings)


def test_the_fingerprint_samples_the_chunks_where_they_were_read(client):
    """The checkpoint's data fingerprint, sampled from the chunks as read on their workers, is
    Network.fit's of the same rows (so either checks the other's data). That the picks leave
    each chunk where it was is checked by the epoch-boundary resume test, whose placement
    a pick run on another worker changes."""
    from fastbp._data import ArraySource

    X, y = _problem(n=3000)  # more rows than the 1,153 sampled
    a, b = _workers(client)
    Xd, yd = _pinned(client, X, y, 500, [a, a, a, b, b, b])
    net = fastbp.Network([3, 6, 1], activations="tanh", backend="numpy", dtype="float32")

    class Interrupt(fastbp.Callback):
        def on_chunk_end(self, epoch, logs=None):
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        fdask.fit(net, Xd, yd, client=client, batch_size=1, average_every=50,
                  callbacks=[Interrupt()], verbose=0)
    want = ArraySource(X.astype(np.float32), y.astype(np.float32)).fingerprint()
    assert net.training_position["settings"]["fingerprint"] == want


def test_resume_inside_an_epoch_equals_the_uninterrupted_fit(client, tmp_path):
    """Ctrl-C after a round, in memory and through the checkpoint file, then resume=True.

    The resumed epoch draws the rounds already done again (the same rows, in
    the same order) and trains the rest; with the same chunks on the same
    workers the result is the uninterrupted fit's.
    """
    (X, y, Xd, yd), settings, whole, whole_history = _uninterrupted(client, epochs=2)
    a, b = _workers(client)

    class InterruptAfterRound3(fastbp.Callback):
        rounds = 0

        def on_chunk_end(self, epoch, logs=None):
            self.rounds += 1
            if self.rounds == 3:  # epoch 0 has 4 rounds of 2 x 6 rows
                os.kill(os.getpid(), signal.SIGINT)

    ckpt = tmp_path / "run.ckpt"
    net = _net()
    with pytest.raises(KeyboardInterrupt):
        fdask.fit(net, Xd, yd, checkpoint=ckpt, callbacks=[InterruptAfterRound3()],
                  **settings)
    assert net.training_position["rows"] == 3 * 2 * 6
    assert net.training_position["dask"]["rounds"] == 3
    loaded = fastbp.load(ckpt)
    assert loaded.training_position["dask"] == net.training_position["dask"]
    settings["optimizer"] = None
    for resumed in (net, loaded):
        history = fdask.fit(resumed, Xd, yd, resume=True, **settings)
        assert resumed._step == whole._step
        # the file's weights are a rounding away from the model's (as for Network.fit)
        for got, want in zip(resumed.get_weights(), whole.get_weights()):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(history.history["loss"], whole_history.history["loss"],
                                   rtol=1e-12)
    assert net.get_weights()[0].tobytes() == whole.get_weights()[0].tobytes()
    # the chunks held elsewhere: that epoch cannot continue row for row
    moved, moved_y = _pinned(client, X, y, 24, [b, a, a, b])
    stopped = _net()
    with pytest.raises(KeyboardInterrupt):
        fdask.fit(stopped, Xd, yd, callbacks=[InterruptAfterRound3()], **settings)
    before = stopped.get_weights()
    with pytest.raises(ValueError, match="cannot continue row for row"):
        fdask.fit(stopped, moved, moved_y, resume=True, **settings)
    assert all((p == q).all() for p, q in zip(stopped.get_weights(), before))


def _on_disk(tmp_path, n):
    """A problem of ``n`` rows saved as X.npy / y.npy, and the kill marker's path."""
    X, y = _problem(n=n)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    return X, y, str(tmp_path / "killed")


def _fit_noting_warnings(net, Xd, yd, client, A, batch_size):
    """The fault tests' fit (2 epochs of SGD in order): its history and its warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hist = fdask.fit(net, Xd, yd, client=client, epochs=2, batch_size=batch_size,
                         optimizer=fastbp.SGD(0.05), shuffle=False, average_every=A, verbose=0)
    return hist, caught


def _kill_in_round(victim, marker, when):
    """A worker plugin: SIGKILL worker ``victim`` in its second round.

    ``when="training"``: the victim's second ``_train_round`` task arms the
    plugin as it starts executing, and the worker kills itself as that task
    calls its trainer's ``train`` (the NumPy backend's ``CopyTrainer``,
    wrapped in the worker process): always round 2, mid-task.  (Watching the
    task's stack from a thread instead missed short rounds on a busy machine
    and killed in a later one.)  ``when="stored"``: the worker kills itself
    as its second round's result is stored, before it reports it.  Either
    way the victim's round number goes to ``marker`` first.  Defined in a
    function so that it travels by value (the workers need not import the
    tests).
    """

    class KillInRound(distributed.WorkerPlugin):
        name = "fastbp-test-kill-in-round"

        def setup(self, worker):
            self.worker, self.rounds, self.armed = worker, 0, False
            if when == "training":
                from fastbp._backends import _contract

                train, plugin = _contract.CopyTrainer.train, self

                def train_or_die(trainer, *args):
                    if plugin.armed:
                        plugin._kill()
                    return train(trainer, *args)

                _contract.CopyTrainer.train = train_or_die

        def transition(self, key, start, finish, **kwargs):
            if not str(key).startswith("_train_round"):
                return
            if getattr(self.worker, "address", None) != victim or os.path.exists(marker):
                return  # another worker, or the nanny's replacement of the victim
            if finish == "executing":
                self.rounds += 1
                self.armed = self.rounds == 2 and when == "training"
            elif start == "executing" and finish == "memory" and self.rounds == 2 \
                    and when == "stored":
                self._kill()

        def _kill(self):
            with open(marker, "w") as f:
                f.write(str(self.rounds))
            os.kill(os.getpid(), signal.SIGKILL)

    return KillInRound()


def _kill_when_reported(victim, pid, marker):
    """A scheduler plugin: SIGKILL worker ``victim`` once the scheduler has its round-2 result.

    The client is told the task finished, but the result is gone with the
    worker before the driver can fetch it.
    """

    class KillWhenReported(distributed.SchedulerPlugin):
        name = "fastbp-test-kill-when-reported"

        async def start(self, scheduler):
            self.scheduler, self.rounds = scheduler, 0

        def transition(self, key, start, finish, *args, **kwargs):
            if not (str(key).startswith("_train_round") and start == "processing"
                    and finish == "memory") or os.path.exists(marker):
                return
            ts = self.scheduler.tasks.get(key)
            if ts is None or victim not in {ws.address for ws in ts.who_has or ()}:
                return
            self.rounds += 1
            if self.rounds == 2:
                with open(marker, "w") as f:
                    f.write(str(self.rounds))
                os.kill(pid, signal.SIGKILL)

    return KillWhenReported()


@pytest.mark.parametrize("when", ["training", "stored", "reported"])
def test_a_worker_killed_during_a_round_does_not_fail_the_fit(tmp_path, when):
    """SIGKILL a worker process during its round: the round is redone from the last average.

    ``training``: while its task trains; ``stored``: as its result is
    stored on the worker, before it reports it; ``reported``: once the
    scheduler knows the task finished, before the driver fetched the result.

    Worker a holds rows 0-79 (chunks 0-3), the victim b rows 80-159 (chunks
    4-7); rounds of A rows each.  Killed in its round r, b's rows from
    (r-1)*A on go after a's own, so the result is local SGD over the first
    r-1 rounds, then serial SGD from that average over a's rest and b's rest
    (one replica), then a serial epoch of all rows in chunk order: computed
    in process below.
    """
    X, y, marker = _on_disk(tmp_path, 160)
    A, batch_size = 10, 2
    with _cluster() as cluster, distributed.Client(cluster, timeout=TIMEOUT) as client:
        client.wait_for_workers(2, timeout=TIMEOUT)
        a, victim = _workers(client)
        if when == "reported":
            pid = client.run(os.getpid, workers=[victim])[victim]
            client.register_plugin(_kill_when_reported(victim, pid, marker))
        else:
            client.register_plugin(_kill_in_round(victim, marker, when))
        Xd = fdask.from_npy(tmp_path / "X.npy", chunk_rows=20)
        yd = fdask.from_npy(tmp_path / "y.npy", chunk_rows=20)
        net = _net()
        hist, caught = _fit_noting_warnings(net, Xd, yd, client, A, batch_size)
        assert os.path.exists(marker), "the victim was not killed during a round"
        r = int(open(marker).read())
        assert r == 2
        assert victim not in _workers(client)
    lost = [w for w in caught if issubclass(w.category, fdask.WorkerLostWarning)]
    assert len(lost) == 1 and victim in str(lost[0].message)
    assert "redone from the last average" in str(lost[0].message)
    assert hist.rounds_redone == 1 and hist.workers == [a, victim]
    assert hist.assignment == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert len(hist.history["loss"]) == 2 and np.isfinite(hist.history["loss"]).all()

    ref = _net()
    done = (r - 1) * A
    if done:
        first = np.concatenate([s[i:i + A] for i in range(0, done, A)
                                for s in (np.arange(0, 80), np.arange(80, 160))])
        with warnings.catch_warnings():  # numpy's workers take turns
            warnings.simplefilter("ignore", RuntimeWarning)
            ref.fit(X[first], y[first], batch_size=batch_size, optimizer=fastbp.SGD(0.05),
                    shuffle=False, workers=2, average_every=A, verbose=0)
    rest = np.concatenate([np.arange(done, 80), np.arange(80 + done, 160)])
    ref.fit(X[rest], y[rest], batch_size=batch_size, optimizer=fastbp.SGD(0.05),
            shuffle=False, verbose=0)
    ref.fit(X, y, batch_size=batch_size, optimizer=fastbp.SGD(0.05), shuffle=False, verbose=0)
    for got, want in zip(net.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_a_worker_lost_in_a_round_only_it_trains_hands_its_rows_over(tmp_path):
    """Worker a holds 10 rows, the victim b 50: round 2 is b's alone, and b dies in it.

    The redone round then has no rows of its own (b's wait in a's queue):
    a takes them from there, so the fit is local SGD over round 1, then a's
    serial SGD over b's rows 20-59 from that average, then a serial epoch.
    """
    X, y, marker = _on_disk(tmp_path, 60)
    A, batch_size = 10, 2
    with _cluster() as cluster, distributed.Client(cluster, timeout=TIMEOUT) as client:
        client.wait_for_workers(2, timeout=TIMEOUT)
        a, victim = _workers(client)
        client.register_plugin(_kill_in_round(victim, marker, "training"))
        Xd = da.from_array(fdask._NpyFile(tmp_path / "X.npy"), chunks=((10, 50), (3,)),
                           asarray=False, fancy=False)
        yd = da.from_array(fdask._NpyFile(tmp_path / "y.npy"), chunks=((10, 50), (1,)),
                           asarray=False, fancy=False)
        net = _net()
        hist, caught = _fit_noting_warnings(net, Xd, yd, client, A, batch_size)
        assert os.path.exists(marker) and int(open(marker).read()) == 2
    assert hist.rounds_redone == 1 and hist.assignment == [[0], [1]]
    assert any(issubclass(w.category, fdask.WorkerLostWarning) for w in caught)
    ref = _net()
    with warnings.catch_warnings():  # numpy's workers take turns
        warnings.simplefilter("ignore", RuntimeWarning)
        ref.fit(X[:20], y[:20], batch_size=batch_size, optimizer=fastbp.SGD(0.05),
                shuffle=False, workers=2, average_every=A, verbose=0)
    ref.fit(X[20:], y[20:], batch_size=batch_size, optimizer=fastbp.SGD(0.05), shuffle=False,
            verbose=0)
    ref.fit(X, y, batch_size=batch_size, optimizer=fastbp.SGD(0.05), shuffle=False, verbose=0)
    for got, want in zip(net.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_a_stopped_worker_raises_round_timeout_and_the_fit_returns(tmp_path):
    """SIGSTOP a worker between rounds: the next round's scatter and task get no answer, and
    round_timeout still ends the fit (RoundTimeoutError, model at the last average)."""
    X, y = _problem()
    with _cluster() as cluster, distributed.Client(cluster, timeout=TIMEOUT) as client:
        client.wait_for_workers(2, timeout=TIMEOUT)
        a, b = _workers(client)
        Xd, yd = _pinned(client, X, y, 24, [a, a, b, b])
        pid = client.run(os.getpid, workers=[b])[b]

        class StopAfterFirstRound(fastbp.Callback):
            seen = None

            def on_chunk_end(self, epoch, logs=None):
                if self.seen is None:
                    self.seen = self.network.get_weights()
                    os.kill(pid, signal.SIGSTOP)

        stopper, outcome = StopAfterFirstRound(), []

        def fit():
            try:
                fdask.fit(_net(), Xd, yd, client=client, epochs=2, batch_size=2,
                          average_every=6, shuffle=False, callbacks=[stopper], verbose=0,
                          round_timeout=2)
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        import threading

        thread = threading.Thread(target=fit, daemon=True)
        thread.start()
        try:
            thread.join(timeout=90)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert not thread.is_alive(), "the fit did not return after round_timeout"
        assert isinstance(outcome[0], fdask.RoundTimeoutError), outcome
        assert b in str(outcome[0])


def test_a_round_that_hangs_raises_after_round_timeout(client):
    """A round task stuck while its worker stays: RoundTimeoutError, the model at the last average.

    After the first round, the test takes worker a's replica lock (in the
    worker, through client.run), so a's second round waits on it.
    """
    X, y = _problem()
    a, b = _workers(client)
    Xd, yd = _pinned(client, X, y, 24, [a, a, b, b])

    def hold(dask_worker):
        import fastbp.dask as m

        locks = [replica.lock for replica in m._replicas.values()]
        for lock in locks:
            lock.acquire()
        dask_worker.fastbp_test_held = locks
        return len(locks)

    def release(dask_worker):
        for lock in dask_worker.fastbp_test_held:
            lock.release()
        return True

    class HoldAfterFirstRound(fastbp.Callback):
        seen = None

        def on_chunk_end(self, epoch, logs=None):
            if self.seen is None:
                self.seen = (self.network.get_weights(), self.network._step)
                assert client.run(hold, workers=[a]) == {a: 1}

    holder = HoldAfterFirstRound()
    net = _net()
    try:
        with pytest.raises(fdask.RoundTimeoutError,
                           match=rf"round_timeout=1\.5 s; found no answer from {a}.*last average"):
            fdask.fit(net, Xd, yd, client=client, epochs=2, batch_size=2, average_every=6,
                      shuffle=False, callbacks=[holder], verbose=0, round_timeout=1.5)
    finally:
        if holder.seen is not None:
            client.run(release, workers=[a])
    weights, step = holder.seen
    for got, want in zip(net.get_weights(), weights):
        np.testing.assert_array_equal(got, want)
    assert net._step == step == 3
    # the cluster is fine afterwards: the stuck round closed its replica when it ended
    again = _net()
    fdask.fit(again, Xd, yd, client=client, batch_size=2, average_every=6, verbose=0,
              round_timeout=TIMEOUT)
    assert all(np.isfinite(w).all() for w in again.get_weights())
    with pytest.raises(ValueError, match="round_timeout: expected a finite number > 0"):
        fdask.fit(_net(), Xd, yd, client=client, round_timeout=0)


@pytest.mark.parametrize("fake", ["__version__ = '0.0.0.other'\n",
                                  "raise ModuleNotFoundError(\"No module named 'fastbp'\", "
                                  "name='fastbp')\n"])
def test_a_worker_with_another_fastbp_is_refused_before_training(tmp_path, fake):
    (tmp_path / "fastbp").mkdir()
    (tmp_path / "fastbp" / "__init__.py").write_text(fake)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    with distributed.LocalCluster(n_workers=0, processes=True, dashboard_address=None,
                                  host="127.0.0.1") as cluster:
        worker = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", cluster.scheduler_address,
             "--nthreads", "1", "--no-nanny", "--no-dashboard", "--host", "127.0.0.1"],
            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with distributed.Client(cluster, timeout=TIMEOUT) as client:
                client.wait_for_workers(1, timeout=TIMEOUT)
                X, y = _problem(n=20)
                net = _net()
                before = net.get_weights()
                with pytest.raises(RuntimeError, match=f"expected fastbp {fastbp.__version__}"
                                   r".*(0\.0\.0\.other|no fastbp)"):
                    fdask.fit(net, da.from_array(X), da.from_array(y), client=client)
                for got, want in zip(net.get_weights(), before):
                    np.testing.assert_array_equal(got, want)
        finally:
            worker.terminate()
            worker.wait(timeout=TIMEOUT)


def _array_bytes(obj, depth=0, seen=None):
    """Bytes of the NumPy arrays reachable from ``obj`` (containers, attributes, slots)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 12:
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, dict):
        items = list(obj.values())
    elif isinstance(obj, (list, tuple, set, frozenset)):
        items = list(obj)
    elif isinstance(obj, (str, bytes, int, float, type(None))):
        return 0
    else:
        items = list(getattr(obj, "__dict__", {}).values())
        items += [getattr(obj, name, None) for klass in type(obj).__mro__
                  for name in getattr(klass, "__slots__", ())]
    return sum(_array_bytes(item, depth + 1, seen) for item in items)


def test_rounds_keep_parameters_and_row_orders_out_of_the_scheduler_logs(client):
    """Dask keeps recent stream messages (below 1 MB each, 1,000 of them) in memory: a round's
    task messages must carry neither the average nor the row order, or the driver (which hosts
    a LocalCluster's scheduler) grows by both every round."""
    X, y = _problem(n=2400)
    a, b = _workers(client)
    Xd, yd = _pinned(client, X, y, 600, [a, a, b, b])  # scattered first: not in the graph
    net = fastbp.Network([3, 128, 128, 1], activations="tanh", backend="numpy", seed=0)
    params = net.count_params() * 8  # 17,281 parameters: 138 KB a copy
    logs = [comm.recent_message_log for comm in client.cluster.scheduler.stream_comms.values()]
    logs.append(client.scheduler_comm.recent_message_log)
    before = sum(_array_bytes(list(log)) for log in logs)
    hist = fdask.fit(net, Xd, yd, client=client, epochs=1, batch_size=1, average_every=100,
                     optimizer=fastbp.SGD(0.01), verbose=0)
    assert len(hist.history["loss"]) == 1
    # 12 rounds of 2 workers: a copy of the average (or 100 row indices) per task would
    # put megabytes here
    assert sum(_array_bytes(list(log)) for log in logs) - before < params


def test_cli_trains_on_a_local_cluster(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [os.path.dirname(os.path.dirname(fastbp.__file__)), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-m", "fastbp", "train", "--synthetic", "400", "--layers", "20,8,1",
         "--epochs", "2", "--dask-local-workers", "2", "--dask-round-timeout", "120",
         "--quiet", "--backend", "numpy", "--save", str(tmp_path / "m.fbp")],
        env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "dask: 2 worker(s)" in out.stdout + out.stderr
    assert fastbp.load(tmp_path / "m.fbp").evaluate(*make_regression(50, 20, seed=3)) < 10


def test_cli_bench_dask_on_local_clusters(tmp_path):
    """`fastbp bench --dask 1,2`, tiny: one LocalCluster per count, the table and the overhead."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [os.path.dirname(os.path.dirname(fastbp.__file__)), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-m", "fastbp", "bench", "--dask", "1,2", "--dask-rows", "2000",
         "--dask-chunks", "4", "--dask-rounds", "4", "--dask-widths", "64,96", "--backends",
         "numpy"], env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    rows = [line.split("|")[1:-1] for line in lines
            if line.startswith(("| 1 |", "| 2 |")) and line.count("|") == 12]
    assert len(rows) == 2, out.stdout
    # the last column: each training worker's peak memory and the rows it held
    assert [r[-1].count(" MB (") for r in rows] == [1, 2], out.stdout
    epochs = [line for line in lines if line.startswith(("| 1 | 1 |", "| 2 | 1 |"))]
    assert len(epochs) == 2 and all(line.endswith(" |") for line in epochs), out.stdout
    (w1, chunks1, _, rate1, x1, loss1, d1, *_), (w2, chunks2, _, rate2, x2, loss2, d2, *_) = \
        [[c.strip() for c in r] for r in rows]
    assert (chunks1, chunks2) == ("4", "2, 2")
    assert float(x1) == 1.0 and d1 == "+0.0%"
    assert float(x2) == pytest.approx(float(rate2.replace(",", "")) /
                                      float(rate1.replace(",", "")), abs=0.011)
    # local SGD of two workers: not the serial fit's loss, and the % says by how much
    assert float(d2.rstrip("%")) == pytest.approx(100 * (float(loss2) / float(loss1) - 1), abs=0.1)
    assert "driver peak RSS" in out.stdout
    overhead = [line for line in out.stdout.splitlines()
                if line.startswith("| 5,569 |") or line.startswith("| 11,425 |")]
    assert len(overhead) == 2 and all(float(o.split("|")[2]) > 0 for o in overhead), out.stdout


def test_bench_dask_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib (fastbp[plot])")
    from fastbp import _bench_dask

    runs = [{"workers": 1, "curve": [(0.5, 0, 0.2), (1.0, 0, 0.1)]},
            {"workers": 2, "curve": [(0.3, 0, 0.25), (0.6, 0, 0.12)]}]
    _bench_dask.plot_curves(runs, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

"""What is specific to the CUDA backend (``fastbp._backends.cuda_``).

The conformance suite (test_backend_contract.py) runs the backend through
the contract against the NumPy reference, as every registered backend; on
Numba's CPU simulator (``NUMBA_ENABLE_CUDASIM=1``, one Python thread per
CUDA thread) with ``FASTBP_TEST_CUDA=1`` and only its tiny-net cases (CI:
``-m cuda_sim``).  Here: the block size and threads striding over layers
wider than the block, fit end to end (two calls, the optimizer state carried
over, a validation split), and ``import fastbp`` never importing numba.cuda.
Where neither a GPU nor the simulator is available every test that needs
the backend is skipped with the registry's reason.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import fastbp
from fastbp._backends import _codes as C

from . import test_backend_contract as contract
from .conftest import assert_close, require_backend

@pytest.fixture
def cuda_():
    """The CUDA backend module; skipped (with the reason) where it cannot run."""
    require_backend("cuda")
    from fastbp._backends import cuda_ as module
    return module


@pytest.mark.parametrize("threads", [1, 2])
def test_fewer_threads_than_units(cuda_, monkeypatch, threads):
    """Threads stride over the units of layers wider than the block."""
    monkeypatch.setattr(cuda_, "_threads", lambda sizes: threads)
    contract.check_case(cuda_, ("3-5-4-2", C.TANH, C.MSE, C.ADAM, 3), "float64")


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


_PTX_PROBE = """
import os, shutil, subprocess, sys, types

from numba import cuda, types as nb
import numba.cuda.dispatcher

def trivial(a):
    a[0] = 1.0

try:
    cuda.compile_ptx(trivial, (nb.float64[::1],), cc=(9, 0))
except Exception as exc:  # no libNVVM here (a CUDA toolkit): nothing to compile with
    print("NO-NVVM", type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
    sys.exit(3)
# The backend refuses to import without a GPU, and Numba compiles device functions for the
# current device's compute capability: with no GPU, name the target ourselves.
cuda.is_available = lambda: True
numba.cuda.dispatcher.get_current_device = lambda: types.SimpleNamespace(
    compute_capability=(9, 0))
from fastbp._backends import cuda_

ptxas = shutil.which("ptxas") or os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"),
                                               "bin", "ptxas")
for name, dtype in (("float64", nb.float64), ("float32", nb.float32)):
    a1, a2, a3 = (nb.Array(dtype, n, "C") for n in (1, 2, 3))
    i1, i2 = nb.Array(nb.int64, 1, "C"), nb.Array(nb.int64, 2, "C")
    f2 = nb.Array(nb.float64, 2, "C")
    # _run's arguments, in order
    sig = (nb.int64, a2, i1, i1, i1, i1, nb.int64, a2, a2, i2, i1, nb.int64, i1, a2, a2, a2,
           a2, a2, f2, a2, a3, nb.Array(nb.int32, 1, "C"), f2, i1)
    for tile in (1, cuda_.TILE):
        ptx, _ = cuda.compile_ptx(cuda_._make_kernel(tile).py_func, sig, cc=(9, 0))
        report = "no ptxas"
        if os.path.exists(ptxas):
            path = f"{sys.argv[1]}/kernel_{name}_{tile}.ptx"
            with open(path, "w") as f:
                f.write(ptx)
            run = subprocess.run([ptxas, "-arch=sm_90", "-v", path, "-o", os.devnull],
                                 capture_output=True, text=True, check=True)
            report = " ".join(line.split(":", 1)[-1].strip()
                              for line in run.stderr.splitlines() if "spill" in line)
        print(name, tile, report)
"""


@pytest.mark.simulator_slow  # compiles for a real GPU: the simulator step has nothing to add
def test_the_kernels_compile_for_a_real_gpu(tmp_path):
    """Every kernel variant compiles to PTX for sm_90 (H100/H200) and assembles without spills.

    The simulator runs the kernels as Python and so never types or lowers
    them; this compiles what a GPU would run, with the CUDA toolkit's libNVVM
    (and ``ptxas`` for the register report) where one is installed.
    """
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    run = subprocess.run([sys.executable, "-c", _PTX_PROBE, str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=600)
    if run.returncode == 3 and run.stdout.startswith("NO-NVVM"):
        pytest.skip(f"no CUDA toolkit to compile with: {run.stdout.strip()}")
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    assert [line.split()[:2] for line in lines] == [["float64", "1"], ["float64", "8"],
                                                     ["float32", "1"], ["float32", "8"]]
    for line in lines:
        if "no ptxas" not in line:
            assert "0 bytes spill stores, 0 bytes spill loads" in line, line


@pytest.mark.parametrize("batch_size", [1, 3])
def test_many_networks_one_launch_each_as_its_own_fit(cuda_, dtype, batch_size):
    """A block per network: each network trains as the NumPy reference trains it alone.

    Three networks of one shape with their own weights, optimizer kinds and
    hyper-parameters, state and row order, trained in two chunks of one
    launch each (the rows on the device once, the orders and steps per chunk).
    """
    from fastbp._backends import numpy_
    rng = np.random.default_rng(5)
    X = rng.normal(size=(14, 3)).astype(dtype)
    Y = np.tanh(X[:, :2] * 0.7).astype(dtype)
    sizes, acts = np.array([3, 5, 2]), np.array([C.TANH, C.LINEAR])
    optimizers = [fastbp.SGD(0.05, momentum=0.9, nesterov=True), fastbp.Adam(0.02),
                  fastbp.RMSprop(0.01, momentum=0.5)]
    packed = [o._pack() for o in optimizers]
    nets = [fastbp.Network([3, 5, 2], activations="tanh", dtype=dtype, seed=s,
                           backend="numpy") for s in (1, 2, 3)]
    params = [net._params.copy() for net in nets]
    states = [np.zeros((C.N_STATE_SLOTS, p.size), dtype=dtype) for p in params]
    orders = np.stack([rng.permutation(14) for _ in nets]).astype(np.int64)
    want_params = [p.copy() for p in params]
    want_states = [s.copy() for s in states]
    want_losses = []
    for p, s, (code, hyper), order in zip(want_params, want_states, packed, orders):
        trainer = numpy_.open_trainer(p, s, sizes, acts, C.MSE, batch_size, code, hyper)
        step, sums = 0, []
        for part in (order[:8], order[8:]):
            total, done = trainer.train(X, Y, part, step)
            step += -(-done // batch_size)
            sums.append(total)
        trainer.store()
        want_losses.append(sums)
    many = cuda_.open_many_trainer(params, states, sizes, acts, C.MSE, batch_size,
                                   [c for c, _ in packed], [h for _, h in packed])
    steps = np.zeros(3, dtype=np.int64)
    got_losses = []
    for part in (orders[:, :8], orders[:, 8:]):
        totals, done = many.train_many(X, Y, np.ascontiguousarray(part), steps)
        assert list(done) == [part.shape[1]] * 3
        steps += -(-done // batch_size)
        got_losses.append(totals)
    assert many.finite_many().tolist() == [True] * 3
    many.store()
    many.close()
    assert_close(np.array(got_losses).T, np.array(want_losses), dtype)
    assert_close(params, want_params, dtype)
    assert_close(states, want_states, dtype)


def test_many_networks_refuse_mismatched_buffers(cuda_):
    params = [np.zeros(11), np.zeros(11, dtype=np.float32)]
    states = [np.zeros((C.N_STATE_SLOTS, 11)), np.zeros((C.N_STATE_SLOTS, 11), np.float32)]
    code, hyper = fastbp.SGD(0.1)._pack()
    with pytest.raises(ValueError, match="one dtype"):
        cuda_.open_many_trainer(params, states, np.array([3, 2, 1]),
                                np.array([C.TANH, C.LINEAR]), C.MSE, 1, [code] * 2, [hyper] * 2)
    with pytest.raises(ValueError, match="as many"):
        cuda_.open_many_trainer(params[:1], states, np.array([3, 2, 1]),
                                np.array([C.TANH, C.LINEAR]), C.MSE, 1, [code], [hyper])


def _many_case(dtype, stream, tmp_path, n=13):
    """Rows (in memory or memory-mapped) and three networks' optimizers for fit_many."""
    rng = np.random.default_rng(8)
    X = rng.normal(size=(n, 3)).astype(dtype)
    y = np.tanh(X[:, :2] * 0.8).astype(dtype)
    if stream:
        np.save(tmp_path / "X.npy", X)
        X = np.load(tmp_path / "X.npy", mmap_mode="r")
    return X, y


def _many_optimizers():
    return [fastbp.SGD(0.05, momentum=0.9, nesterov=True), fastbp.Adam(0.02),
            fastbp.RMSprop(0.01, momentum=0.5)]


def _stoppers(k):
    """Network 0 never counts as improving: it stops after two epochs, the others go on."""
    return [fastbp.EarlyStopping(monitor="val_loss", patience=0,
                                 min_delta=1e9 if k == 0 else 0.0)]


@pytest.mark.parametrize("stream", [False, True])
def test_fit_many_trains_the_networks_in_one_launch_per_round(cuda_, dtype, stream,
                                                              monkeypatch, tmp_path):
    """fit_many on cuda: every network as its own fit, one launch per round for rows in memory.

    Three networks (their own seeds, optimizer kinds and hyper-parameters),
    several rounds per epoch (chunks of 4 rows), one network stopped early so
    that later launches leave it out.  Oracles: each network's twin trained
    alone by ``fit`` on the cuda backend (the same kernel: bit for bit) and on
    the NumPy reference.  A memory-mapped file gives each network its own
    blocks: then each network's chunk is a launch of its own.
    """
    X, y = _many_case(dtype, stream, tmp_path)
    launches = []
    run = cuda_._run

    def counting(mode, *args, **kwargs):
        if mode == cuda_._TRAIN:
            launches.append(1)
        return run(mode, *args, **kwargs)

    def nets(backend):
        return [fastbp.Network([3, 4, 2], activations="tanh", backend=backend, dtype=dtype,
                               seed=k) for k in range(3)]

    settings = dict(epochs=3, batch_size=3, validation_split=0.25, verbose=0)
    with fastbp.config_context(chunk_rows=4):
        many = nets("cuda")
        monkeypatch.setattr(cuda_, "_run", counting)
        histories = fastbp.fit_many(many, X, y, optimizers=_many_optimizers(),
                                    callbacks=_stoppers, **settings)
        monkeypatch.setattr(cuda_, "_run", run)
        # 10 training rows (Keras's split keeps ceil(0.75 * 13)) in chunks of 3 (whole
        # batches): 4 rounds an epoch; network 0 trains 2 epochs, the others 3
        rounds = 3 * 4
        assert len(launches) == ((2 + 3 + 3) * 4 if stream else rounds)
        for backend in ("cuda", "numpy"):
            for k, (net, twin) in enumerate(zip(many, nets(backend))):
                want = twin.fit(X, y, optimizer=_many_optimizers()[k], callbacks=_stoppers(k),
                                **settings)
                if backend == "cuda":
                    assert histories[k].history == want.history
                    assert net._params.tobytes() == twin._params.tobytes()
                    assert net._state.tobytes() == twin._state.tobytes()
                    assert net._step == twin._step
                else:
                    assert_close(histories[k].history["loss"], want.history["loss"], dtype)
                    assert_close(net.get_weights(), twin.get_weights(), dtype)
    assert [len(h.history["loss"]) for h in histories] == [2, 3, 3]


def test_fit_many_one_network_diverges_the_others_finish(cuda_):
    """A diverged network keeps its last finite weights; the launches go on without it."""
    X, y = _many_case("float32", False, None)
    optimizers = [fastbp.SGD(0.05), fastbp.SGD(1e30), fastbp.Adam(0.02)]

    def nets():
        return [fastbp.Network([3, 4, 2], activations="tanh", backend="cuda",
                               dtype="float32", seed=k) for k in range(3)]

    many = nets()
    with fastbp.config_context(chunk_rows=4):
        with pytest.raises(fastbp.ManyDivergedError) as caught:
            fastbp.fit_many(many, X, y, epochs=2, batch_size=1, optimizers=optimizers,
                            verbose=0)
        assert caught.value.diverged == [1]
        for k, (net, twin) in enumerate(zip(many, nets())):
            if k == 1:
                with pytest.raises(fastbp.TrainingDivergedError):
                    twin.fit(X, y, epochs=2, batch_size=1, optimizer=optimizers[k], verbose=0)
            else:
                want = twin.fit(X, y, epochs=2, batch_size=1, optimizer=optimizers[k],
                                verbose=0)
                assert caught.value.histories[k].history == want.history
            assert np.isfinite(net._params).all()
            assert net._params.tobytes() == twin._params.tobytes()
            assert net._step == twin._step


def test_shared_memory_placement_by_hand(cuda_):
    """What a block keeps in shared memory (48 KiB), derived by hand for 20-64-64-1."""
    # 20 + 64 + 64 + 1 = 149 units a row; 20*64 + 64 + 64*64 + 64 + 64 + 1 = 5,569 parameters
    assert cuda_.SHARED_BYTES == 49152
    # float32, one row: units, deltas, parameters and gradient, 4 * 11,436 = 45,744 bytes
    place, used = cuda_._placement(149, 5569, 1, 4)
    assert place.tolist() == [0, 149, 298, 5867, -1] and used == 45744
    # float64: the gradient would make 8 * 11,436 = 91,488 bytes; it stays in global memory
    place, used = cuda_._placement(149, 5569, 1, 8)
    assert place.tolist() == [0, 149, 298, -1, -1] and used == 8 * 5867
    # float32 tiles of 8 rows: 1,192 units and 1,192 deltas, then the parameters
    place, used = cuda_._placement(149, 5569, 8, 4)
    assert place.tolist() == [0, 1192, 2384, -1, -1] and used == 4 * (2384 + 5569)
    # predictions in float64 tiles of 8: 9,536 bytes of units; the parameters (44,552) no more
    place, used = cuda_._placement(149, 5569, 8, 8, gradients=False)
    assert place.tolist() == [0, -1, -1, -1, -1] and used == 9536
    # a gradient that fits after parameters that do not
    place, used = cuda_._placement(1, 5000, 1, 8)
    assert place.tolist() == [0, 1, 2, -1, -1] and used == 8 * 5002
    place, used = cuda_._placement(1, 7000, 1, 8)
    assert place.tolist() == [0, 1, -1, -1, -1] and used == 16
    assert cuda_._placement(10**5, 10**6, 8, 8)[0].tolist() == [-1] * 5
    # training a 3-4-2 network: 9 units, 26 parameters, 2 x 26 state values, 976 bytes in all
    place, used = cuda_._placement(9, 26, 1, 8, state_slots=2)
    assert place.tolist() == [0, 9, 18, 44, 70] and used == 976
    # 20-64-64-1 in float32 with its state (2 x 5,569 values): no room after the gradient
    assert cuda_._placement(149, 5569, 1, 4, state_slots=2)[0].tolist() == [0, 149, 298, 5867, -1]


@pytest.mark.parametrize("in_shared", [0, 1, 2, 3, 4, 5])
@pytest.mark.parametrize("batch", [1, 3])
def test_every_shared_memory_placement_matches_the_reference(cuda_, monkeypatch, dtype,
                                                              in_shared, batch):
    """Units, deltas, parameters, gradient, state: the first ``in_shared`` in shared memory."""
    case = ("3-4-2", C.TANH, C.MSE, C.ADAM, batch)
    n_units, n_params, tile = 3 + 4 + 2, 3 * 4 + 4 + 4 * 2 + 2, cuda_._tile_for(batch)
    assert tile == {1: 1, 3: 4}[batch]
    budget = np.dtype(dtype).itemsize * sum([tile * n_units, tile * n_units, n_params,
                                             n_params, C.N_STATE_SLOTS * n_params][:in_shared])
    monkeypatch.setattr(cuda_, "SHARED_BYTES", budget)
    place = cuda_._placement(n_units, n_params, tile, np.dtype(dtype).itemsize,
                             state_slots=C.N_STATE_SLOTS)[0]
    assert ((place >= 0).tolist() == [True] * in_shared + [False] * (5 - in_shared))
    contract.check_case(cuda_, case, dtype)


@pytest.mark.parametrize("loss", [C.MSE, C.CATEGORICAL_CROSSENTROPY])
def test_tiles_change_no_number(cuda_, monkeypatch, dtype, loss):
    """Batches of 5 in tiles of 1, 2, 4 and 8 rows: bit for bit the same results.

    A row's sums run in the same order whatever the tile; a softmax head
    covers the tile's row-wise normalisation.
    """
    sizes, params, X, Y = contract.problem((3, 5, 4, 3), C.MSE, dtype, rows=13)
    if loss == C.CATEGORICAL_CROSSENTROPY:
        acts = np.array([C.TANH, C.RELU, C.SOFTMAX], dtype=np.int64)
        Y = np.eye(3, dtype=dtype)[np.arange(13) % 3]
    else:
        acts = np.array([C.TANH, C.RELU, C.LINEAR], dtype=np.int64)
    results = []
    for tile in (1, 2, 4, 8):
        monkeypatch.setattr(cuda_, "_tile_for", lambda batch_size, tile=tile: tile)
        got = contract.train(cuda_, sizes, acts, loss, params, X, Y, 5, C.RMSPROP_MOMENTUM)
        got.update(contract.evaluate(cuda_, sizes, acts, loss, got["params"], X, Y))
        results.append(got)
    want = contract.train(contract.numpy_, sizes, acts, loss, params, X, Y, 5,
                          C.RMSPROP_MOMENTUM)
    want.update(contract.evaluate(contract.numpy_, sizes, acts, loss, want["params"], X, Y))
    contract.compare(results[0], want, dtype)
    for got in results[1:]:
        assert got["done"] == results[0]["done"]
        for key in ("params", "state", "totals", "out", "grad", "losses"):
            assert got[key].tobytes() == results[0][key].tobytes(), key


def test_fit_many_refuses_more_networks_than_the_gpu_holds(cuda_, monkeypatch):
    """Say how many fit, and change no network."""
    # [3, 4, 2] in float64: 26 parameters, each with 2 state slots and a gradient (8 bytes
    # each: 832); batches of 3 rows go through in tiles of 4: 4 x 9 units' activations and
    # deltas (576), 4 x 2 float64 output losses (64); 64 bytes of flags and results; per
    # launch a chunk of 3 int64 positions and 1 step size
    assert cuda_.network_bytes([3, 4, 2], "float64", 3, 3) == 832 + 576 + 64 + 64 + 24 + 8
    # one row at a time: a tile of 1
    assert cuda_.network_bytes([3, 4, 2], "float64", 3, 1) == 832 + 144 + 16 + 64 + 24 + 24
    X, y = _many_case("float64", False, None, n=12)
    rows = X.nbytes + y.nbytes
    need = cuda_.network_bytes([3, 4, 2], "float64", 12, 12)  # chunk = batch = all 12 rows
    monkeypatch.setattr(cuda_, "free_bytes", lambda: (2.5 * need + rows) / 0.9)
    nets = [fastbp.Network([3, 4, 2], activations="tanh", backend="cuda", seed=k)
            for k in range(3)]
    before = [net.get_weights() for net in nets]
    with pytest.raises(ValueError, match="at most 2 networks .* found 3. Train them in groups"):
        fastbp.fit_many(nets, X, y, batch_size=12, optimizers=[fastbp.Adam()] * 3, verbose=0)
    for net, weights in zip(nets, before):
        assert all((a == b).all() for a, b in zip(net.get_weights(), weights))
        assert net.optimizer is None and net._step == 0
    fastbp.fit_many(nets[:2], X, y, batch_size=12, verbose=0)  # two fit


@pytest.mark.parametrize("workers,batch_size", [(2, 1), (3, 4), (2, 64)])
def test_workers_equal_the_reference_with_the_same_workers(cuda_, dtype, workers, batch_size):
    """fit(workers=N) on cuda: local SGD (batch 1 and 4) and a split minibatch (64 rows).

    The backend holds the GIL, so the replicas (or the batch's parts) take
    turns, with a warning that says so; the numbers are the algorithm's,
    equal to the NumPy reference's with the same ``workers``.
    """
    rng = np.random.default_rng(6)
    X = rng.normal(size=(70, 3))
    y = np.tanh(X @ np.array([0.5, -0.3, 0.8]))
    fits = {}
    for backend in ("numpy", "cuda"):
        net = fastbp.Network([3, 4, 1], activations="tanh", backend=backend, dtype=dtype,
                             seed=1)
        with pytest.warns(RuntimeWarning, match="take turns|one after another"):
            history = net.fit(X, y, epochs=2, batch_size=batch_size, workers=workers,
                              average_every=12, optimizer=fastbp.Adam(0.01), verbose=0)
        fits[backend] = (net, history)
    (ref, ref_history), (net, history) = fits["numpy"], fits["cuda"]
    assert_close(net.get_weights(), ref.get_weights(), dtype)
    assert_close(history.history["loss"], ref_history.history["loss"], dtype)
    assert net._step == ref._step


def test_gpu_benchmark_script_runs(cuda_):
    """benchmarks/gpu_many.py (the GPU figures' script) runs end to end, tiny."""
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "gpu_many.py")
    out = subprocess.run([sys.executable, script, "--ks", "1,2", "--rows", "8", "--dtypes",
                          "float32", "--layers", "3,4,1"], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"} if cuda_.SIMULATOR
                         else None)
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| float32 |")]
    assert [row.split("|")[2].strip() for row in rows] == ["1", "2"]

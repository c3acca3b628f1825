"""The Numba backend: parity details, caching, concurrency, nogil, divergence, determinism.

The shared parity suite (test_parity.py) compares every backend with the
NumPy one through the public API.  This file covers what is particular to
``fastbp._backends.numba_``: each of its kernels (the tiny-net scalar one
and the width-generic ones) against ``numpy_`` at the contract level, the
on-disk kernel cache, processes compiling into a cold cache at once,
``FASTBP_NO_CACHE``, the GIL being released, divergence detection under
fast-math flags, bitwise repeatability, and a ``NUMBA_DISABLE_JIT=1`` run.

Compile counts stay low: the generic kernels are compiled once per dtype for
every architecture, and only two tiny architectures (2-2-1, 3-4-2) get a
specialised kernel.  Subprocess tests use the cheapest kernels.
"""

import itertools
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from fastbp._backends import _codes as C
from fastbp._backends import numpy_
from fastbp._backends._layout import n_params

from .conftest import TOLERANCES, require_backend

require_backend("numba")

import numba  # noqa: E402

from fastbp._backends import _numba_codegen as codegen  # noqa: E402
from fastbp._backends import numba_  # noqa: E402

# Under NUMBA_DISABLE_JIT=1 the kernels run as plain Python: the parity and
# divergence checks still run (small data), the ones about compiled code
# (GIL, on-disk cache) are skipped.
NO_JIT = bool(numba.config.DISABLE_JIT)
compiled_only = pytest.mark.skipif(NO_JIT, reason="needs compiled kernels (NUMBA_DISABLE_JIT=1)")

HYPER = {
    C.SGD: [0.05, 0.0, 0.0, 0.0],
    C.SGD_MOMENTUM: [0.02, 0.9, 0.0, 0.0],
    C.SGD_NESTEROV: [0.02, 0.9, 0.0, 0.0],
    C.ADAM: [0.01, 0.9, 0.999, 1e-7],
    C.RMSPROP: [0.01, 0.9, 0.0, 1e-7],
    C.RMSPROP_MOMENTUM: [0.01, 0.9, 0.5, 1e-7],
}

# (3, 4, 2) and (2, 2, 1) take the scalar kernel for per-sample plain SGD;
# the others (a width above 16) the generic ones.  Together they cover
# narrow (dot form, dense kernel), padded and one-unit-head layers, inputs
# that are not a multiple of four, and depth 2 to 4.
SCALAR_NETS = [(2, 2, 1), (3, 4, 2)]
GENERIC_NETS = [(6, 17, 5, 1), (3, 24, 9, 10, 2)]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _problem(sizes, loss, dtype, rows=23, seed=0):
    rng = np.random.default_rng(seed)
    params = rng.uniform(-0.5, 0.5, n_params(sizes)).astype(dtype)
    X = rng.normal(size=(rows, sizes[0])).astype(dtype)
    if loss == C.BINARY_CROSSENTROPY:
        Y = (rng.random((rows, sizes[-1])) > 0.5).astype(dtype)
    else:
        Y = np.tanh(rng.normal(size=(rows, sizes[-1]))).astype(dtype)
    return params, X, Y


def _acts(sizes, hidden, loss):
    out = C.SIGMOID if loss == C.BINARY_CROSSENTROPY else hidden if loss == C.MSE else C.LINEAR
    return np.array([hidden] * (len(sizes) - 2) + [out], dtype=np.int64)


def _train(backend, sizes, acts, loss, params, X, Y, batch, opt, chunks=2):
    """Two chunks (continuing the optimizer state and step) of a fixed shuffle."""
    params = params.copy()
    state = np.zeros((C.N_STATE_SLOTS, params.size), dtype=params.dtype)
    hyper = np.array(HYPER[opt])
    step, total, done = 0, 0.0, 0
    for chunk in range(chunks):
        order = np.random.default_rng(100 + chunk).permutation(len(X))
        loss_sum, rows = backend.train_chunk(params, np.array(sizes), acts, loss, X, Y, order,
                                             batch, opt, hyper, state, step)
        step += -(-rows // batch)
        total += loss_sum
        done += rows
    return params, state, total, done


def _close(actual, expected, dtype):
    tol = TOLERANCES[np.dtype(dtype)]
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64),
                               rtol=tol["rtol"], atol=tol["atol"])


def _run(code, env=None, timeout=300):
    """Run ``code`` in a fresh interpreter from the repository root; return stdout."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                         env=full_env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-4000:]
    return out.stdout


# ----------------------------------------------------------------------------- parity
# Every activation meets every loss once per net; optimizers and batch sizes
# (1, and 3 / 5 with a short last batch of 23 rows) rotate through them.
PARITY = [(sizes, act, loss, opt, batch)
          for sizes in SCALAR_NETS[1:] + GENERIC_NETS
          for (act, loss), opt, batch in zip(itertools.product(range(4), range(4)),
                                             itertools.cycle(sorted(HYPER)),
                                             itertools.cycle([1, 5, 1, 3, 1]))]
# plain SGD per sample is the scalar kernel for tiny nets, train_sgd otherwise
PARITY += [(sizes, act, C.MSE, C.SGD, 1) for sizes in SCALAR_NETS + GENERIC_NETS
           for act in range(4)]


@pytest.mark.parametrize("sizes,act,loss,opt,batch", PARITY)
def test_train_chunk_matches_numpy(sizes, act, loss, opt, batch, dtype):
    params, X, Y = _problem(sizes, loss, dtype)
    acts = _acts(sizes, act, loss)
    got = _train(numba_, sizes, acts, loss, params, X, Y, batch, opt)
    want = _train(numpy_, sizes, acts, loss, params, X, Y, batch, opt)
    assert got[3] == want[3] == 2 * len(X)
    _close(got[0], want[0], dtype)  # weights
    _close(got[1], want[1], dtype)  # optimizer state
    _close(got[2], want[2], dtype)  # loss sums


@pytest.mark.parametrize("batch", [300, 301, 700])
def test_large_batches_span_blocks(batch):
    """A batch larger than one block of the workspace is processed in blocks whose
    gradients add up (here 256 rows, then the rest, padded to a multiple of 4)."""
    sizes = GENERIC_NETS[0]
    assert numba_._batch_rows(sizes, 8, batch, 700) < batch
    params, X, Y = _problem(sizes, C.MSE, "float64", rows=700)
    acts = _acts(sizes, C.RELU, C.MSE)
    got = _train(numba_, sizes, acts, C.MSE, params, X, Y, batch, C.RMSPROP)
    want = _train(numpy_, sizes, acts, C.MSE, params, X, Y, batch, C.RMSPROP)
    for a, b in zip(got, want):
        _close(a, b, "float64")


@pytest.mark.parametrize("sizes", SCALAR_NETS[1:] + GENERIC_NETS)
@pytest.mark.parametrize("loss", range(4))
def test_predict_loss_gradients_match_numpy(sizes, loss, dtype):
    params, X, Y = _problem(sizes, loss, dtype, rows=301)  # several blocks, a ragged last
    acts = _acts(sizes, (loss + 1) % 4, loss)
    sz = np.array(sizes)
    out = {}
    for backend in (numba_, numpy_):
        pred = np.empty((len(X), sizes[-1]), dtype=dtype)
        backend.predict(params, sz, acts, X, pred)
        grad = np.empty_like(params)
        total = backend.loss_and_gradients(params, sz, acts, loss, X, Y, grad)
        out[backend.NAME] = pred, backend.loss_sum(params, sz, acts, loss, X, Y), total, grad
    for got, want in zip(out["numba"], out["numpy"]):
        _close(got, want, dtype)


def test_kernel_choice():
    """Tiny nets get the scalar kernel, everything else the generic ones."""
    assert codegen.wants_scalar((2, 2, 1)) and codegen.wants_scalar((3, 4, 2))
    assert not any(codegen.wants_scalar(s) for s in GENERIC_NETS)
    assert not codegen.wants_scalar((20, 64, 64, 1))


def test_empty_chunk_and_inputs():
    sizes = (3, 4, 2)
    params, X, Y = _problem(sizes, C.MSE, "float64")
    state = np.zeros((2, params.size))
    before = params.copy()
    assert numba_.train_chunk(params, np.array(sizes), _acts(sizes, 1, C.MSE), C.MSE, X, Y,
                              np.array([], dtype=np.int64), 1, C.SGD, np.array(HYPER[C.SGD]),
                              state, 0) == (0.0, 0)
    assert np.array_equal(params, before)
    out = np.empty((0, 2))
    numba_.predict(params, np.array(sizes), _acts(sizes, 1, C.MSE), X[:0], out)
    assert numba_.loss_sum(params, np.array(sizes), _acts(sizes, 1, C.MSE), C.MSE, X[:0],
                           Y[:0]) == 0.0


def test_readonly_inputs_work_and_strided_ones_are_refused():
    """Read-only (memory-mapped) inputs give the same numbers; a strided one is refused.

    The backend contract: the API hands over C-contiguous arrays (it copies a
    Fortran-ordered or strided one once, see test_validation); the kernels
    assert that and never convert.
    """
    sizes = GENERIC_NETS[0]
    params, X, Y = _problem(sizes, C.MSE, "float64")
    acts = _acts(sizes, C.TANH, C.MSE)
    Xr, Yr = X.copy(), Y.copy()
    Xr.flags.writeable = False
    Yr.flags.writeable = False
    results = [_train(numba_, sizes, acts, C.MSE, params, a, b, 3, C.ADAM)[0]
               for a, b in ((X, Y), (Xr, Yr))]
    assert np.array_equal(results[0], results[1])
    with pytest.raises(ValueError, match="C-contiguous"):
        _train(numba_, sizes, acts, C.MSE, params, np.asfortranarray(X), Y, 3, C.ADAM)


# ----------------------------------------------------------------------------- divergence
@pytest.mark.parametrize("sizes,opt,batch", [((3, 4, 2), C.SGD, 1),          # scalar kernel
                                             ((6, 17, 5, 1), C.SGD, 1),      # train_sgd
                                             ((6, 17, 5, 1), C.ADAM, 1),     # train_single
                                             ((6, 17, 5, 1), C.SGD, 4)])     # train_batch
def test_nan_in_data_stops_before_its_update(sizes, opt, batch, dtype):
    """The compiled kernels (fast-math flags included) still see a NaN loss and stop.

    A NaN in one input row must travel through the relu (NaN < 0 is False),
    the loss and the finiteness check; ``nnan``/``ninf`` flags would let the
    compiler delete that check.
    """
    fn = numba_.kernel("train_sgd", dtype)
    if not NO_JIT:
        assert not {"nnan", "ninf", "fast"} & set(fn.targetoptions["fastmath"])
    params, X, Y = _problem(sizes, C.MSE, dtype, rows=40)
    X[17, 1] = np.nan
    acts = _acts(sizes, C.RELU, C.MSE)
    order = np.arange(40)
    results = {}
    for backend in (numba_, numpy_):
        p = params.copy()
        state = np.zeros((2, p.size), dtype=dtype)
        total, done = backend.train_chunk(p, np.array(sizes), acts, C.MSE, X, Y, order, batch,
                                          opt, np.array(HYPER[opt]), state, 0)
        results[backend.NAME] = p, total, done
    expected_done = 17 // batch * batch
    assert results["numba"][2] == results["numpy"][2] == expected_done
    assert np.all(np.isfinite(results["numba"][0]))
    _close(results["numba"][0], results["numpy"][0], dtype)
    _close(results["numba"][1], results["numpy"][1], dtype)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow, in plain Python (no JIT)
@pytest.mark.parametrize("sizes,batch", [((2, 2, 1), 1), ((6, 17, 5, 1), 1),
                                         ((6, 17, 5, 1), 8)])
def test_overflow_detected(sizes, batch):
    """A learning rate that blows the weights up: the loss turns inf/NaN and training stops."""
    params, X, Y = _problem(sizes, C.MSE, "float32", rows=500)
    X *= 30
    acts = _acts(sizes, C.LINEAR, C.MSE)
    state = np.zeros((2, params.size), dtype=np.float32)
    total, done = numba_.train_chunk(params, np.array(sizes), acts, C.MSE, X, Y,
                                     np.arange(500), batch, C.SGD, np.array([5.0, 0, 0, 0]),
                                     state, 0)
    assert done < 500 and done % batch == 0
    assert np.isfinite(total)


# ----------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("sizes,opt,batch", [((2, 2, 1), C.SGD, 1), ((6, 17, 5, 1), C.SGD, 1),
                                             ((6, 17, 5, 1), C.RMSPROP_MOMENTUM, 1),
                                             ((3, 24, 9, 10, 2), C.ADAM, 7)])
def test_bitwise_repeatable(sizes, opt, batch, dtype):
    params, X, Y = _problem(sizes, C.HUBER, dtype, rows=200)
    acts = _acts(sizes, C.TANH, C.HUBER)
    first = _train(numba_, sizes, acts, C.HUBER, params, X, Y, batch, opt)
    second = _train(numba_, sizes, acts, C.HUBER, params, X, Y, batch, opt)
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert first[2] == second[2]


def test_network_fit_repeatable():
    import fastbp

    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(300, 6)), rng.normal(size=300)
    runs = []
    for _ in range(2):
        net = fastbp.Network([6, 17, 5, 1], activations="tanh", backend="numba", seed=5)
        hist = net.fit(X, y, epochs=2, batch_size=1, optimizer=fastbp.Adam(0.01), verbose=0)
        runs.append((net.get_weights(), hist.history["loss"]))
    assert all(np.array_equal(a, b) for a, b in zip(runs[0][0], runs[1][0]))
    assert runs[0][1] == runs[1][1]


# ----------------------------------------------------------------------------- threads
@compiled_only
def test_kernels_release_the_gil():
    """While one thread is inside a kernel, another thread runs Python code.

    The worker runs a call that takes most of a second; meanwhile the main
    thread sleeps 70 ms, and waking up needs the GIL.  With the GIL released
    it wakes on time; a kernel holding the GIL would keep it asleep until
    the call returned.  Only the ratio of the two durations is checked.
    """
    sizes = (20, 64, 64, 1)
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(20_000, 20))
    Y = np.tanh(X[:, :1]).copy()
    params = rng.uniform(-0.1, 0.1, n_params(sizes))
    acts = np.array([C.RELU, C.RELU, C.LINEAR])
    state = np.zeros((2, params.size))
    hyper = np.array([1e-4, 0, 0, 0])
    numba_.train_chunk(params, np.array(sizes), acts, C.MSE, X, Y, np.arange(10), 1, C.SGD,
                       hyper, state, 0)  # compile outside the timed part
    order = np.tile(np.arange(20_000), 50)  # 1M samples: most of a second, or more
    started = threading.Event()
    kernel_seconds = []

    def work():
        started.set()
        start = time.perf_counter()
        numba_.train_chunk(params, np.array(sizes), acts, C.MSE, X, Y, order, 1, C.SGD,
                           hyper, state, 0)
        kernel_seconds.append(time.perf_counter() - start)

    worker = threading.Thread(target=work)
    worker.start()
    started.wait()
    start = time.perf_counter()
    time.sleep(0.07)  # the worker enters the compiled loop meanwhile
    slept = time.perf_counter() - start
    worker.join()
    assert kernel_seconds[0] > 0.2, "the call was too short to tell"
    assert slept < 0.5 * kernel_seconds[0], (
        f"the main thread slept {slept:.2f} s during a {kernel_seconds[0]:.2f} s kernel call: "
        "the kernel holds the GIL")


def test_two_networks_in_two_threads_match_sequential():
    import fastbp

    rng = np.random.default_rng(1)
    data = [(rng.normal(size=(400, 6)), rng.normal(size=400)) for _ in range(2)]

    def fit(i, out):
        net = fastbp.Network([6, 17, 5, 1], backend="numba", seed=i)
        net.fit(*data[i], epochs=2, batch_size=(1, 8)[i], verbose=0,
                optimizer=fastbp.SGD(0.01, momentum=0.5))
        out[i] = net.get_weights()

    sequential, threaded = {}, {}
    for i in range(2):
        fit(i, sequential)
    threads = [threading.Thread(target=fit, args=(i, threaded)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        assert all(np.array_equal(a, b) for a, b in zip(sequential[i], threaded[i]))


# ----------------------------------------------------------------------------- cache
_CACHE_SCRIPT = """
    import json, sys
    import numpy as np
    from fastbp._backends import numba_, _codes as C
    sizes = (2, 2, 1)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 2)); Y = np.tanh(X[:, :1]).copy()
    p = np.full(9, 0.1)
    st = np.zeros((2, 9))
    total, done = numba_.train_chunk(p, np.array(sizes), np.array([0, 0]), C.MSE, X, Y,
                                     np.arange(64), 1, C.SGD, np.array([0.01, 0, 0, 0]), st, 0)
    out = np.empty((64, 1))
    numba_.predict(p, np.array(sizes), np.array([0, 0]), X, out)
    fns = [numba_.kernel("train_scalar", "float64", sizes), numba_.kernel("predict", "float64")]
    hits = [sum(f.stats.cache_hits.values()) if hasattr(f, "stats") else 0 for f in fns]
    print(json.dumps({"total": total, "params": p.tolist(), "out": float(out.sum()),
                      "hits": hits}))
"""


def _cache_files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, files in os.walk(root) for f in files)


@compiled_only
def test_import_compiles_and_writes_nothing(tmp_path):
    out = _run("""
        import sys
        import fastbp
        assert "numba" not in sys.modules
        from fastbp._backends import numba_
        print(len(numba_._modules), len(numba_._entries))
    """, env={"FASTBP_CACHE_DIR": str(tmp_path)})
    assert out.split() == ["0", "0"]
    assert _cache_files(tmp_path) == []


@compiled_only
def test_cache_dir_is_used_and_reused(tmp_path):
    import json

    env = {"FASTBP_CACHE_DIR": str(tmp_path)}
    cold = json.loads(_run(_CACHE_SCRIPT, env))
    files = _cache_files(tmp_path)
    from fastbp import __version__

    assert files and all(f.startswith(__version__ + os.sep) for f in files)  # keyed by version
    assert any(f.endswith(".py") and "net_2x2x1" in f for f in files)  # generated source
    assert any(f.endswith(".nbi") for f in files) and any(f.endswith(".nbc") for f in files)
    warm = json.loads(_run(_CACHE_SCRIPT, env))
    assert warm["hits"] == [1, 1], "the second process compiled instead of loading"
    assert cold["hits"] == [0, 0]
    assert (warm["total"], warm["params"], warm["out"]) == (cold["total"], cold["params"],
                                                            cold["out"])


@compiled_only
def test_no_cache_env_writes_nothing(tmp_path):
    import json

    env = {"FASTBP_CACHE_DIR": str(tmp_path), "FASTBP_NO_CACHE": "1"}
    result = json.loads(_run(_CACHE_SCRIPT, env))
    assert result["hits"] == [0, 0]
    assert _cache_files(tmp_path) == []


@compiled_only
def test_concurrent_processes_on_a_cold_cache(tmp_path):
    """Three processes start together on an empty cache directory: all succeed, agree,
    and leave a cache that a fourth process loads instead of compiling."""
    import json

    env = dict(os.environ, FASTBP_CACHE_DIR=str(tmp_path))
    code = textwrap.dedent(_CACHE_SCRIPT)
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-4000:]
        results.append(json.loads(stdout))
    for r in results[1:]:
        assert (r["total"], r["params"], r["out"]) == (results[0]["total"],
                                                       results[0]["params"], results[0]["out"])
    assert not [f for f in _cache_files(tmp_path) if ".tmp" in f]  # no leftovers
    after = json.loads(_run(_CACHE_SCRIPT, {"FASTBP_CACHE_DIR": str(tmp_path)}))
    assert after["hits"] == [1, 1]
    assert after["params"] == results[0]["params"]


# ----------------------------------------------------------------------------- no JIT
def test_disable_jit_matches_numpy(tmp_path):
    """The kernels' logic run as plain Python (NUMBA_DISABLE_JIT=1) against numpy_."""
    out = _run("""
        import numpy as np
        from fastbp._backends import numba_, numpy_, _codes as C
        from fastbp._backends._layout import n_params
        hyper = {C.SGD: [0.05, 0, 0, 0], C.ADAM: [0.01, 0.9, 0.999, 1e-7],
                 C.RMSPROP_MOMENTUM: [0.01, 0.9, 0.5, 1e-7]}
        cases = [((2, 2, 1), C.RELU, C.MSE, C.SGD, 1),           # scalar kernel
                 ((6, 17, 5, 1), C.TANH, C.HUBER, C.SGD, 1),      # train_sgd
                 ((6, 17, 5, 1), C.SIGMOID, C.MAE, C.ADAM, 1),    # train_single
                 ((3, 9, 2), C.RELU, C.BINARY_CROSSENTROPY, C.RMSPROP_MOMENTUM, 3)]
        for sizes, act, loss, opt, batch in cases:
            rng = np.random.default_rng(0)
            p0 = rng.uniform(-0.5, 0.5, n_params(sizes))
            X = rng.normal(size=(11, sizes[0]))
            Y = (rng.random((11, sizes[-1])) > 0.5).astype(float)
            out_act = C.SIGMOID if loss == C.BINARY_CROSSENTROPY else C.LINEAR
            acts = np.array([act] * (len(sizes) - 2) + [out_act])
            res = []
            for b in (numba_, numpy_):
                p = p0.copy(); st = np.zeros((2, p.size)); sz = np.array(sizes)
                total, done = b.train_chunk(p, sz, acts, loss, X, Y, np.arange(11)[::-1].copy(),
                                            batch, opt, np.array(hyper[opt]), st, 0)
                pred = np.empty((11, sizes[-1])); b.predict(p, sz, acts, X, pred)
                g = np.empty_like(p); lg = b.loss_and_gradients(p, sz, acts, loss, X, Y, g)
                res.append([p, st, total, done, pred, b.loss_sum(p, sz, acts, loss, X, Y), g, lg])
            for a, e in zip(*res):
                np.testing.assert_allclose(a, e, rtol=1e-9, atol=1e-12)
        fn = numba_.kernel("train_sgd", "float64")
        print("plain-python" if not hasattr(fn, "compile") else "compiled")
    """, env={"NUMBA_DISABLE_JIT": "1", "FASTBP_CACHE_DIR": str(tmp_path)})
    assert out.strip() == "plain-python"

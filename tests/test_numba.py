"""What is particular to the Numba backend (``fastbp._backends.numba_``).

The conformance suite (test_backend_contract.py) runs this backend, like
every registered one, through the contract against the NumPy reference.
Here: which kernel runs (the one generated for a tiny net vs the
width-generic ones) and that the conformance cases reach each of them, the
test widths following the compiled register tile, batches spanning workspace
blocks, the fast-math flags keeping the NaN checks, bitwise repeatability,
the on-disk kernel cache (processes compiling into a cold cache at once,
``FASTBP_NO_CACHE``), threads and the GIL being released, and a
``NUMBA_DISABLE_JIT=1`` run.

Compile counts stay low: the generic kernels are compiled once per dtype for
every architecture, and only the tiny architectures of the conformance cases
(2-2-1, 3-4-2, 2-3-3-1) get a specialised kernel.  Subprocess tests use the
cheapest kernels.
"""

import os
import platform
import subprocess
import sys
import tempfile
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

from fastbp._backends import numba_  # noqa: E402

# Under NUMBA_DISABLE_JIT=1 (CI: the no_jit step) the kernels run as plain Python:
# the checks of results still run (small data), the ones about compiled code (GIL,
# on-disk cache, fast-math flags) are skipped.
NO_JIT = bool(numba.config.DISABLE_JIT)
compiled_only = pytest.mark.skipif(NO_JIT, reason="needs compiled kernels (NUMBA_DISABLE_JIT=1)")

# The conformance suite (test_backend_contract.py) runs this backend through the
# contract against numpy_; its harness and cases are reused here.
from . import test_backend_contract as contract  # noqa: E402
from .conftest import tile_width  # noqa: E402

HYPER = contract.HYPER
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINING_KERNELS = {"train_scalar", "train_sgd", "train_single", "train_batch"}


def _problem(sizes, loss, dtype, rows=23, seed=0):
    sizes, params, X, Y = contract.problem(sizes, loss, dtype, rows=rows, seed=seed)
    return params, X, Y


_acts = contract.acts_for


def _train(backend, sizes, acts, loss, params, X, Y, batch, opt, chunks=2):
    r = contract.train(backend, np.array(sizes), acts, loss, params, X, Y, batch, opt, chunks)
    return r["params"], r["state"], r["totals"].sum(), sum(r["done"])


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


# ----------------------------------------------------------------------------- which kernel runs
@pytest.fixture
def kernels_called(monkeypatch):
    """The names of the compiled entry points called, in order (a counter around each)."""
    calls = []
    real = numba_._entry

    def entry(module, name):
        fn = real(module, name)

        def counted(*args):
            calls.append(name)
            return fn(*args)
        return counted

    monkeypatch.setattr(numba_, "_entry", entry)
    return calls


def _train_once(sizes, opt, batch, dtype="float64", rows=9):
    sizes, params, X, Y = contract.problem(sizes, C.MSE, dtype, rows=rows)
    return numba_.train_chunk(params, sizes, contract.acts_for(sizes, C.TANH, C.MSE), C.MSE,
                              X, Y, np.arange(rows, dtype=np.int64), batch, opt,
                              np.array(HYPER[opt]), contract.fresh_state(params), 0)


@pytest.mark.parametrize("spec,opt,batch,expected", [
    ("2-2-1", C.SGD, 1, "train_scalar"),          # the kernel generated for the architecture
    ("3-4-2", C.SGD, 1, "train_scalar"),
    ("3-4-2", C.ADAM, 1, "train_single"),         # tiny, but not plain SGD: generic
    ("3-4-2", C.SGD, 3, "train_batch"),           # tiny, but minibatches: generic
    ("tile+3", C.SGD, 1, "train_sgd"),            # too wide for the scalar kernel
    ("tile+3", C.RMSPROP_MOMENTUM, 1, "train_single"),
    ("2tile+1", C.ADAM, 7, "train_batch"),
    ("20-64-64-1", C.SGD, 1, "train_sgd"),        # too many parameters for it
])
def test_which_kernel_runs(kernels_called, spec, opt, batch, expected, dtype):
    """Tiny nets trained per sample with plain SGD run their generated kernel; everything
    else the generic ones: exactly one training kernel call per chunk, the expected one."""
    _, done = _train_once(contract.sizes_of(spec, dtype), opt, batch, dtype)
    assert done == 9
    assert kernels_called == [expected]
    sizes, params, X, Y = contract.problem(contract.sizes_of(spec, dtype), C.MSE, dtype)
    contract.evaluate(numba_, sizes, contract.acts_for(sizes, C.TANH, C.MSE), C.MSE, params,
                      X, Y)
    assert kernels_called[1:] == ["predict", "loss_and_gradients", "loss_sum"]


def test_contract_cases_reach_every_training_kernel(kernels_called):
    """The conformance suite's parity and divergence cases run each of the four kernels."""
    for spec, _, _, opt, batch in contract.CASES:
        _train_once(contract.sizes_of(spec, "float64"), opt, batch, rows=4)
    assert set(kernels_called) == TRAINING_KERNELS
    kernels_called.clear()
    for spec, opt, batch in contract.DIVERGENCE:
        _train_once(contract.sizes_of(spec, "float64"), opt, batch, rows=4)
    assert set(kernels_called) == TRAINING_KERNELS


def test_test_widths_follow_the_compiled_tile(dtype):
    """conftest.tile_width (which sizes the contract suite's wide layers) is the register
    tile the kernels compile for here: 2 SIMD vectors of ``dtype``."""
    module = numba_._module(np.dtype(dtype))
    assert tile_width(dtype) == module.TILE_WIDTH
    widths = [max(contract.sizes_of(spec, dtype)) for spec in contract.TILED]
    assert max(widths) > 2 * module.TILE_WIDTH and min(widths) % module.TILE_WIDTH == 3


@pytest.mark.parametrize("batch", [300, 301, 700])
def test_large_batches_span_blocks(batch):
    """A batch larger than one block of the workspace is processed in blocks whose
    gradients add up (here 256 rows, then the rest, padded to a multiple of 4)."""
    sizes = contract.sizes_of("tile+3", "float64")
    assert numba_._batch_rows(sizes, 8, batch, 700) < batch
    params, X, Y = _problem(sizes, C.MSE, "float64", rows=700)
    acts = _acts(sizes, C.RELU, C.MSE)
    got = _train(numba_, sizes, acts, C.MSE, params, X, Y, batch, C.RMSPROP)
    want = _train(numpy_, sizes, acts, C.MSE, params, X, Y, batch, C.RMSPROP)
    for a, b in zip(got, want):
        _close(a, b, "float64")


# ----------------------------------------------------------------------------- fast-math
@compiled_only
def test_fast_math_flags_keep_the_nan_checks(dtype):
    """No kernel is compiled with ``nnan``/``ninf``/``fast``: those would let the compiler
    delete the finiteness check that stops a diverging chunk (the behaviour itself is
    test_backend_contract.py::test_non_finite_batch_stops_before_its_update)."""
    names = ["train_sgd", "train_single", "train_batch", "predict", "loss_sum",
             "loss_and_gradients"]
    fns = [numba_.kernel(name, dtype) for name in names]
    fns.append(numba_.kernel("train_scalar", dtype, (3, 4, 2)))
    for fn in fns:
        assert not {"nnan", "ninf", "fast"} & set(fn.targetoptions.get("fastmath") or ())


@compiled_only
def test_per_sample_passes_run_at_the_full_avx512_width():
    """Where the CPU has AVX-512, the per-sample kernels ask LLVM for 512-bit vectors
    (LLVM's tuning for most such Intel CPUs prefers 256) and their loops use zmm registers;
    elsewhere the hint is off and changes nothing."""
    from fastbp._backends import _numba_kernels as K

    avx512 = "+avx512f" in K.target_cpu_features()
    hint = '"prefer-vector-width"="512"'

    @numba.njit(fastmath=K.FASTMATH)
    def scale_add(a, b, out):
        K.full_vector_width()
        for k in range(out.shape[0]):
            out[k] = a[k] * b[k] + out[k]

    v = np.ones(64)
    scale_add(v, v, v.copy())
    sig = scale_add.signatures[0]
    assert (hint in scale_add.inspect_llvm(sig)) == avx512
    assert ("zmm" in scale_add.inspect_asm(sig)) == avx512
    sig = K.SIGNATURES["train_single"]
    K.train_single.compile(sig)
    assert (hint in K.train_single.inspect_llvm(sig.args)) == avx512


_WIDTH_PROBE = """
import numba
from fastbp._backends import _numba_kernels as K

@numba.njit(fastmath=K.FASTMATH)
def scale_add(a, b, out):
    K.full_vector_width()
    for k in range(out.shape[0]):
        out[k] = a[k] * b[k] + out[k]

array = numba.types.Array(numba.float64, 1, "C")
scale_add.compile((array, array, array))  # compiled only: the target may not be this CPU
ir = scale_add.inspect_llvm(scale_add.signatures[0])
print(K.FULL_WIDTH, K.VECTOR * K.ITEMSIZE, '"prefer-vector-width"="512"' in ir)
"""


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="the named CPUs are x86-64 ones")
@pytest.mark.parametrize("cpu,features,expected", [
    # a portable build: Numba compiles with no feature at all, whatever this host has
    ("generic", None, "False 16 False"),
    # an AVX-512 target named explicitly, on any x86-64 host
    ("skylake-avx512", "+avx512f,+avx512dq,+avx512bw,+avx512vl,+avx2,+avx,+fma,+sse4.2",
     "True 64 True"),
    ("haswell", "+avx2,+avx,+fma,+sse4.2,-avx512f", "False 32 False"),
])
def test_the_width_hint_follows_the_cpu_numba_targets(cpu, features, expected):
    """FULL_WIDTH and the hint come from the CPU Numba compiles for, not from this host."""
    env = dict(os.environ, NUMBA_CPU_NAME=cpu, NUMBA_CACHE_DIR=tempfile.mkdtemp())
    env.pop("NUMBA_CPU_FEATURES", None)
    env.pop("NUMBA_DISABLE_JIT", None)
    if features is not None:
        env["NUMBA_CPU_FEATURES"] = features
    run = subprocess.run([sys.executable, "-c", _WIDTH_PROBE], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[-2] == expected


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow, in plain Python (no JIT)
@pytest.mark.parametrize("spec,batch", [("2-2-1", 1), ("tile+3", 1), ("tile+3", 8)])
def test_overflow_detected(spec, batch):
    """A learning rate that blows the weights up: the loss turns inf/NaN and training stops."""
    sizes = contract.sizes_of(spec, "float32")
    params, X, Y = _problem(sizes, C.MSE, "float32", rows=500)
    X *= 30
    acts = _acts(sizes, C.LINEAR, C.MSE)
    state = np.zeros((2, params.size), dtype=np.float32)
    total, done = numba_.train_chunk(params, np.array(sizes), acts, C.MSE, X, Y,
                                     np.arange(500), batch, C.SGD, np.array([5.0, 0, 0, 0]),
                                     state, 0)
    assert done < 500 and done % batch == 0
    assert np.isfinite(total)
    assert np.isfinite(params).all()


# ----------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("spec,opt,batch", [("2-2-1", C.SGD, 1), ("tile+3", C.SGD, 1),
                                            ("tile+3", C.RMSPROP_MOMENTUM, 1),
                                            ("2tile+1", C.ADAM, 7)])
def test_bitwise_repeatable(spec, opt, batch, dtype):
    sizes = contract.sizes_of(spec, dtype)
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


@pytest.mark.needs_jit  # minutes as plain Python
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


_MINIBATCH_SCRIPT = """
    import json
    import numpy as np
    import fastbp
    from fastbp._backends import numba_
    rng = np.random.default_rng(0)
    X = rng.normal(size=(256, 20)); y = X[:, 0] - X[:, 1]
    net = fastbp.Network([20, 64, 64, 1], activations="relu", backend="numba")
    net.fit(X, y, batch_size=32, epochs=1, verbose=0)
    module = numba_._module(np.dtype("float64"))
    fn = numba_.kernel("train_batch", "float64")
    print(json.dumps({"entries": sorted(name for _, name in numba_._entries),
                      "hits": sum(fn.stats.cache_hits.values()),
                      "inner": len(module.batch_rows_gradient.overloads),
                      "weights": [w.tolist() for w in net.get_weights()]}))
"""


@compiled_only
@pytest.mark.needs_jit
def test_first_minibatch_fit_compiles_one_kernel_and_caches_it(tmp_path):
    """A minibatch fit compiles train_batch alone; a second process loads it from the cache.

    The helper shared by the minibatch kernels is inlined into them, never
    compiled as a function of its own (that level of optimisation was compile
    time spent twice).
    """
    import json

    env = {"FASTBP_CACHE_DIR": str(tmp_path)}
    cold = json.loads(_run(_MINIBATCH_SCRIPT, env))
    warm = json.loads(_run(_MINIBATCH_SCRIPT, env))
    assert cold["entries"] == warm["entries"] == ["train_batch"]
    assert (cold["hits"], warm["hits"]) == (0, 1), "the second process compiled instead of loading"
    assert cold["inner"] == warm["inner"] == 0
    assert warm["weights"] == cold["weights"]


@compiled_only
def test_no_cache_env_writes_nothing(tmp_path):
    import json

    env = {"FASTBP_CACHE_DIR": str(tmp_path), "FASTBP_NO_CACHE": "1"}
    result = json.loads(_run(_CACHE_SCRIPT, env))
    assert result["hits"] == [0, 0]
    assert _cache_files(tmp_path) == []


@compiled_only
@pytest.mark.needs_jit
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


def test_seeded_reciprocal_square_root_is_within_a_few_ulp():
    """Float64 RMSprop's ``u / sqrt(x)``: a float32 seed and one third-order step.

    The seed's relative error e is below 3e-7 (float32 rounding of x, the
    root and the quotient, or the CPU's refined estimate); the step leaves
    ~(5/16)(2e)^3 < 1e-19, so what remains is the float64 rounding of the
    step's four operations: a few units in the last place.
    """
    from fastbp._backends import _numba_kernels as K

    @numba.njit
    def both(u, x, out):
        for k in range(x.shape[0]):
            out[0, k] = K.scaled_rsqrt(u[k], x[k], True)
            out[1, k] = K.scaled_rsqrt(u[k], x[k], False)

    rng = np.random.default_rng(0)
    n = 20_000 if numba.config.DISABLE_JIT else 1_000_000
    x = np.exp(rng.uniform(np.log(K.SEED_MIN), np.log(2 * K.SEED_LIMIT), n))
    x[:3] = K.SEED_MIN, 1.0, 2 * K.SEED_LIMIT
    u = rng.normal(size=n)
    out = np.empty((2, n))
    both(u, x, out)
    np.testing.assert_array_equal(out[1], u / np.sqrt(x))  # the exact form: sqrt, then divide
    ulp = np.spacing(np.abs(out[1]))
    assert np.max(np.abs(out[0] - out[1]) / ulp) <= 4


"""What is specific to the Cython backend (``fastbp._backends.cython_`` over ``fastbp._ckernels``).

The shared parity suite (tests/test_parity.py) covers the backend through the
public API.  Here: a quick direct parity check of every compiled copy
(baseline, AVX2, AVX-512) against the NumPy reference over every
activation, loss, optimizer, dtype and batch size 1 and 3 -- including the
tiny-net kernels and the padded working layout --, the adapter's validation
errors (the memory-safety gate in front of unchecked loops), read-only
memory-mapped input, the GIL being released, the fallback without Numba,
and the debug build's own index checks.

Environment switches used by CI:

``FASTBP_TEST_BLOCK_NUMBA=1``    conftest.py blocks ``import numba``; "auto" must pick cython.
``FASTBP_TEST_EXPECT_DEBUG=1``   the extension under test must be a debug build.
"""

import importlib
import itertools
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import fastbp
from fastbp import _backends
from fastbp._backends import _codes as C
from fastbp._backends import numpy_
from fastbp._backends._layout import n_params

from .conftest import assert_close

pytestmark = pytest.mark.skipif(_backends.import_error("cython") is not None,
                                reason=f"cython backend unavailable: "
                                       f"{_backends.import_error('cython')}")

if _backends.import_error("cython") is None:
    from fastbp._backends import cython_
else:  # pragma: no cover - the whole module is skipped
    cython_ = None

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _copies():
    """Every compiled copy importable and runnable here, by ISA name."""
    from fastbp import _ckernels

    found = {"baseline": _ckernels}
    for isa, suffix, check in cython_._COPIES:
        if not getattr(_ckernels, check)():   # check before importing (see cython_.py)
            continue
        try:
            found[isa] = importlib.import_module(f"fastbp._ckernels{suffix}")
        except ImportError:
            continue
    return found


COPIES = _copies() if cython_ is not None else {}


@pytest.fixture(params=sorted(COPIES))
def kernels(request):
    """Each compiled copy of the kernels (the adapter uses the best one)."""
    return COPIES[request.param]


# ----------------------------------------------------------------------------- helpers
def _problem(sizes, acts, loss, dtype, rows=13, seed=0, weight_scale=0.3):
    rng = np.random.default_rng(seed)
    sizes = np.array(sizes, dtype=np.int64)
    params = (rng.normal(size=n_params(sizes)) * weight_scale).astype(dtype)
    X = rng.normal(size=(rows, sizes[0])).astype(dtype)
    if loss == C.BINARY_CROSSENTROPY:
        Y = (rng.uniform(size=(rows, sizes[-1])) > 0.5).astype(dtype)
    else:
        Y = rng.normal(size=(rows, sizes[-1])).astype(dtype)
    return params, sizes, np.array(acts, dtype=np.int64), X, Y


HYPER = {C.SGD: [0.02, 0, 0, 0], C.SGD_MOMENTUM: [0.02, 0.9, 0, 0],
         C.SGD_NESTEROV: [0.02, 0.9, 0, 0], C.ADAM: [0.01, 0.9, 0.999, 1e-7],
         C.RMSPROP: [0.005, 0.9, 0, 1e-7], C.RMSPROP_MOMENTUM: [0.005, 0.9, 0.5, 1e-7]}


def _run(module, params, sizes, acts, loss, X, Y, batch, opt, epochs=2, step=0):
    """Train ``epochs`` passes over the rows, then evaluate everything once."""
    params = params.copy()
    state = np.zeros((C.N_STATE_SLOTS, params.size), dtype=params.dtype)
    hyper = np.array(HYPER[opt], dtype=np.float64)
    order = np.random.default_rng(7).permutation(len(X)).astype(np.int64)
    totals, done = [], []
    for _ in range(epochs):
        total, rows = module.train_chunk(params, sizes, acts, loss, X, Y, order, batch, opt,
                                         hyper, state, step)
        step += -(-rows // batch)
        totals.append(total)
        done.append(rows)
    grad = np.empty_like(params)
    grad_loss = module.loss_and_gradients(params, sizes, acts, loss, X, Y, grad)
    out = np.empty((len(X), sizes[-1]), dtype=params.dtype)
    module.predict(params, sizes, acts, X, out)
    evaluated = module.loss_sum(params, sizes, acts, loss, X, Y)
    return dict(params=params, state=state, totals=np.array(totals), done=done, grad=grad,
                losses=np.array([grad_loss, evaluated]), out=out)


def _compare(got, want, dtype):
    assert got["done"] == want["done"]
    for key in ("params", "state", "totals", "grad", "losses", "out"):
        assert_close(got[key], want[key], dtype)


# ----------------------------------------------------------------------------- build facts
def test_codes_match_the_python_side():
    """The integer codes compiled in are those of _codes.py."""
    for module in COPIES.values():
        codes = module.CODES
        assert codes["activations"] == C.ACTIVATIONS
        assert codes["losses"] == C.LOSSES
        assert codes["optimizers"] == {name: getattr(C, name) for name in codes["optimizers"]}
        assert codes["BCE_EPSILON"] == C.BCE_EPSILON
        assert codes["HUBER_DELTA"] == C.HUBER_DELTA


def test_selected_copy_is_the_best_supported_one():
    """'auto' runs the widest instruction set the CPU has (FASTBP_CYTHON_ISA may force one)."""
    forced = os.environ.get("FASTBP_CYTHON_ISA", "").strip().lower()
    if forced and forced != "auto":
        assert cython_.ISA == forced
        return
    best = [isa for isa in ("avx512", "avx2") if isa in COPIES]
    assert cython_.ISA == (best[0] if best else COPIES["baseline"].ISA)
    assert cython_._kernels.ISA == cython_.ISA


def test_isa_switch_is_checked():
    code = "import fastbp._backends.cython_"
    env = dict(os.environ, FASTBP_CYTHON_ISA="sse9")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd=REPO)
    assert proc.returncode != 0
    assert "FASTBP_CYTHON_ISA" in proc.stderr and "sse9" in proc.stderr


@pytest.mark.skipif(not _flag("FASTBP_TEST_EXPECT_DEBUG"),
                    reason="only in the CI run against the debug build")
def test_debug_build_is_under_test():
    assert cython_.DEBUG, "FASTBP_TEST_EXPECT_DEBUG=1 but the optimized extension was imported"
    assert all(module.DEBUG for module in COPIES.values())


# ----------------------------------------------------------------------------- parity
ALL = list(itertools.product(C.ACTIVATIONS.values(), C.LOSSES.values()))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("opt", sorted(HYPER))
def test_parity_every_activation_and_loss(kernels, opt, batch, dtype):
    """Every activation x loss for this optimizer, batch size and dtype, against numpy_."""
    for act, loss in ALL:
        out_act = C.SIGMOID if loss == C.BINARY_CROSSENTROPY else act
        problem = _problem((3, 5, 4, 2), [act, act, out_act], loss, dtype,
                           seed=act * 4 + loss)
        want = _run(numpy_, *problem[:3], loss, *problem[3:], batch, opt)
        got = _run(kernels, *problem[:3], loss, *problem[3:], batch, opt)
        _compare(got, want, dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("sizes,acts", [
    ((2, 2, 1), [C.LINEAR, C.LINEAR]),            # the tiny kernels (W1's shape)
    ((3, 4, 2), [C.RELU, C.LINEAR]),
    ((4, 3), [C.LINEAR]),                         # one layer
    ((1, 1, 1), [C.RELU, C.LINEAR]),
    ((2, 3, 3, 1), [C.TANH, C.RELU, C.LINEAR]),   # three layers: the generic path
    ((3, 17, 9, 2), [C.RELU, C.SIGMOID, C.LINEAR]),   # kernel rows padded to cache lines
    ((5, 33, 1), [C.TANH, C.LINEAR]),             # a one-unit head after a wide layer
])
@pytest.mark.parametrize("batch", [1, 3, 4])
def test_parity_shapes(kernels, sizes, acts, batch, dtype):
    """Tiny, generic and padded layouts, plain SGD (the tiny path) and Adam."""
    for opt in (C.SGD, C.ADAM):
        problem = _problem(sizes, acts, C.MSE, dtype, rows=14, seed=len(sizes) + batch)
        want = _run(numpy_, *problem[:3], C.MSE, *problem[3:], batch, opt, epochs=3)
        got = _run(kernels, *problem[:3], C.MSE, *problem[3:], batch, opt, epochs=3)
        _compare(got, want, dtype)


@pytest.mark.parametrize("batch", [1, 3])
def test_adam_step_counter_continues(kernels, batch):
    """Adam's t = step + 1 for the first batch of a call."""
    problem = _problem((3, 6, 2), [C.TANH, C.LINEAR], C.MSE, "float64")
    want = _run(numpy_, *problem[:3], C.MSE, *problem[3:], batch, C.ADAM, step=41)
    got = _run(kernels, *problem[:3], C.MSE, *problem[3:], batch, C.ADAM, step=41)
    _compare(got, want, "float64")


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("sizes,acts", [((2, 2, 1), [C.LINEAR, C.LINEAR]),
                                        ((3, 9, 2), [C.RELU, C.LINEAR])])
def test_divergence_stops_before_the_bad_batch(kernels, sizes, acts, batch):
    """A non-finite batch loss ends the chunk before that batch is applied."""
    params, sizes, acts, X, Y = _problem(sizes, acts, C.MSE, "float64", rows=8)
    X[5] = np.inf
    order = np.arange(8, dtype=np.int64)
    results = []
    for module in (numpy_, kernels):
        p = params.copy()
        state = np.zeros((2, p.size))
        with np.errstate(all="ignore"):
            total, done = module.train_chunk(p, sizes, acts, C.MSE, X, Y, order, batch, C.SGD,
                                             np.array([0.01, 0, 0, 0]), state, 0)
        results.append((total, done, p))
    (t0, d0, p0), (t1, d1, p1) = results
    assert d1 == d0 == (5 // batch) * batch
    assert_close(t1, t0, "float64")
    assert_close(p1, p0, "float64")


def test_empty_inputs(kernels):
    params, sizes, acts, X, Y = _problem((3, 4, 2), [C.RELU, C.LINEAR], C.MSE, "float64")
    state = np.zeros((2, params.size))
    hyper = np.array([0.1, 0, 0, 0])
    before = params.copy()
    assert kernels.train_chunk(params, sizes, acts, C.MSE, X, Y, np.empty(0, np.int64), 1,
                               C.SGD, hyper, state, 0) == (0.0, 0)
    assert np.array_equal(params, before)
    grad = np.full_like(params, 7.0)
    assert kernels.loss_and_gradients(params, sizes, acts, C.MSE, X[:0], Y[:0], grad) == 0.0
    assert not grad.any()
    assert kernels.loss_sum(params, sizes, acts, C.MSE, X[:0], Y[:0]) == 0.0
    kernels.predict(params, sizes, acts, X[:0], np.empty((0, 2)))


def test_many_rows_in_blocks(kernels):
    """predict / loss / gradients go through rows in blocks: a ragged last block."""
    params, sizes, acts, X, Y = _problem((6, 20, 3), [C.TANH, C.LINEAR], C.HUBER, "float64",
                                         rows=203)
    want_out = np.empty((203, 3))
    numpy_.predict(params, sizes, acts, X, want_out)
    got_out = np.empty((203, 3))
    kernels.predict(params, sizes, acts, X, got_out)
    assert_close(got_out, want_out, "float64")
    want_grad, got_grad = np.empty_like(params), np.empty_like(params)
    want = numpy_.loss_and_gradients(params, sizes, acts, C.HUBER, X, Y, want_grad)
    got = kernels.loss_and_gradients(params, sizes, acts, C.HUBER, X, Y, got_grad)
    assert_close(got, want, "float64")
    assert_close(got_grad, want_grad, "float64")


# ----------------------------------------------------------------------------- memory safety
def _valid(dtype="float64"):
    params, sizes, acts, X, Y = _problem((3, 4, 2), [C.RELU, C.LINEAR], C.MSE, dtype, rows=6)
    return dict(params=params, sizes=sizes, acts=acts, loss=C.MSE, X=X, Y=Y,
                order=np.arange(6, dtype=np.int64), batch_size=2, optimizer=C.SGD,
                hyper=np.array([0.1, 0, 0, 0]), state=np.zeros((2, params.size), dtype=dtype),
                step=0)


def _train(**kw):
    return cython_.train_chunk(**kw)


@pytest.mark.parametrize("change,error,words", [
    (dict(order=np.array([0, 6], dtype=np.int64)), IndexError, ["order", "[0, 6)", "6"]),
    (dict(order=np.array([-1, 2], dtype=np.int64)), IndexError, ["order", "-1"]),
    (dict(order=np.array([0, 1], dtype=np.int32)), TypeError, ["order", "int64", "int32"]),
    (dict(order=np.arange(12, dtype=np.int64)[::2]), ValueError, ["order", "C-contiguous"]),
    (dict(X=np.zeros((6, 3), dtype=np.float32)), TypeError, ["X", "float64", "float32"]),
    (dict(X=np.asfortranarray(np.ones((6, 3)))), ValueError, ["X", "C-contiguous",
                                                              "np.ascontiguousarray"]),
    (dict(X=np.ones((6, 6))[:, ::2]), ValueError, ["X", "C-contiguous"]),
    (dict(X=np.ones((6, 4))), ValueError, ["X", "(n, 3)", "(6, 4)"]),
    (dict(Y=np.ones((5, 2))), ValueError, ["Y", "(6, 2)", "(5, 2)"]),
    (dict(X=[[0.0] * 3] * 6), TypeError, ["X", "numpy.ndarray", "list"]),
    (dict(params=np.zeros(7)), ValueError, ["params", "26", "7"]),
    (dict(params=np.zeros(26, dtype=np.int64)), TypeError, ["params", "float32 or float64"]),
    (dict(state=np.zeros((2, 5))), ValueError, ["state", "(2, 26)", "(2, 5)"]),
    (dict(hyper=np.zeros(3)), ValueError, ["hyper", "4"]),
    (dict(sizes=np.array([3, 4, 2], dtype=np.int32)), TypeError, ["sizes", "int64"]),
    (dict(acts=np.array([1, 9], dtype=np.int64)), ValueError, ["acts", "0..3"]),
    (dict(acts=np.array([1], dtype=np.int64)), ValueError, ["acts", "2 activation codes"]),
    (dict(sizes=np.array([3, 0, 2], dtype=np.int64)), ValueError, ["sizes", "positive"]),
    (dict(loss=7), ValueError, ["loss", "0..3"]),
    (dict(optimizer=11), ValueError, ["optimizer", "11"]),
    (dict(batch_size=0), ValueError, ["batch_size", "positive"]),
])
def test_adapter_refuses_bad_arguments_before_any_loop(change, error, words):
    kw = _valid()
    kw.update(change)
    params_before = kw["params"].copy()
    with pytest.raises(error) as info:
        _train(**kw)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    assert np.array_equal(kw["params"], params_before)  # nothing ran


def test_adapter_refuses_read_only_outputs():
    kw = _valid()
    kw["params"].setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        _train(**kw)
    kw = _valid()
    kw["state"].setflags(write=False)
    with pytest.raises(ValueError, match="state.*read-only"):
        _train(**kw)
    kw = _valid()
    out = np.empty((6, 2))
    out.setflags(write=False)
    with pytest.raises(ValueError, match="out.*read-only"):
        cython_.predict(kw["params"], kw["sizes"], kw["acts"], kw["X"], out)
    grad = np.empty_like(kw["params"])[::1]
    grad.setflags(write=False)
    with pytest.raises(ValueError, match="grad.*read-only"):
        cython_.loss_and_gradients(kw["params"], kw["sizes"], kw["acts"], C.MSE, kw["X"],
                                   kw["Y"], grad)


def test_adapter_checks_the_other_entry_points():
    kw = _valid()
    with pytest.raises(ValueError, match="out.*expected shape"):
        cython_.predict(kw["params"], kw["sizes"], kw["acts"], kw["X"], np.empty((5, 2)))
    with pytest.raises(TypeError, match="out.*float64"):
        cython_.predict(kw["params"], kw["sizes"], kw["acts"], kw["X"],
                        np.empty((6, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="grad.*expected shape"):
        cython_.loss_and_gradients(kw["params"], kw["sizes"], kw["acts"], C.MSE, kw["X"],
                                   kw["Y"], np.empty(5))
    with pytest.raises(ValueError, match="Y"):
        cython_.loss_sum(kw["params"], kw["sizes"], kw["acts"], C.MSE, kw["X"], kw["Y"][:3])


def test_compiled_entry_points_recheck_shapes(kernels):
    """The O(1) shape facts are re-checked inside the extension, without the adapter."""
    kw = _valid()
    with pytest.raises(ValueError, match="params"):
        kernels.predict(np.zeros(3), kw["sizes"], kw["acts"], kw["X"], np.empty((6, 2)))
    with pytest.raises(ValueError, match="state"):
        kernels.train_chunk(kw["params"], kw["sizes"], kw["acts"], C.MSE, kw["X"], kw["Y"],
                            kw["order"], 1, C.SGD, kw["hyper"], np.zeros((2, 3)), 0)
    with pytest.raises(ValueError, match="Y"):
        kernels.loss_sum(kw["params"], kw["sizes"], kw["acts"], C.MSE, kw["X"], kw["Y"][:2])
    with pytest.raises(ValueError):  # a float32 X with float64 params
        kernels.loss_sum(kw["params"], kw["sizes"], kw["acts"], C.MSE,
                         kw["X"].astype(np.float32), kw["Y"])


def test_debug_build_checks_row_indices():
    """Past the adapter, a debug build still refuses an out-of-range row (release: UB)."""
    if not cython_.DEBUG:
        pytest.skip("release build: row indices are checked by the adapter only")
    kw = _valid()
    for batch in (1, 2):
        with pytest.raises(IndexError, match="row index 6"):
            cython_._kernels.train_chunk(kw["params"], kw["sizes"], kw["acts"], C.MSE,
                                         kw["X"], kw["Y"], np.array([0, 6], dtype=np.int64),
                                         batch, C.ADAM, kw["hyper"], kw["state"], 0)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_read_only_memmap_inputs(tmp_path, dtype):
    """X, Y and order opened read-only straight from disk (np.memmap mode 'r')."""
    params, sizes, acts, X, Y = _problem((4, 8, 2), [C.RELU, C.LINEAR], C.MSE, dtype, rows=40)
    order = np.random.default_rng(1).permutation(40).astype(np.int64)
    maps = {}
    for name, array in (("X", X), ("Y", Y), ("order", order)):
        path = tmp_path / f"{name}.dat"
        array.tofile(path)
        maps[name] = np.memmap(path, dtype=array.dtype, mode="r", shape=array.shape)
        assert not maps[name].flags.writeable
    for batch in (1, 5):
        got_p, want_p = params.copy(), params.copy()
        state = np.zeros((2, params.size), dtype=dtype)
        got = cython_.train_chunk(got_p, sizes, acts, C.MSE, maps["X"], maps["Y"],
                                  maps["order"], batch, C.ADAM, np.array(HYPER[C.ADAM]), state, 0)
        want = numpy_.train_chunk(want_p, sizes, acts, C.MSE, X, Y, order, batch, C.ADAM,
                                  np.array(HYPER[C.ADAM]), np.zeros_like(state), 0)
        assert got[1] == want[1]
        assert_close(got[0], want[0], dtype)
        assert_close(got_p, want_p, dtype)
    out = np.empty((40, 2), dtype=dtype)
    cython_.predict(params, sizes, acts, maps["X"], out)
    grad = np.empty_like(params)
    cython_.loss_and_gradients(params, sizes, acts, C.MSE, maps["X"], maps["Y"], grad)
    # and through the public API, which streams a memmap block by block
    net = fastbp.Network([4, 8, 2], backend="cython", dtype=dtype, seed=2)
    ref = fastbp.Network([4, 8, 2], backend="numpy", dtype=dtype, seed=2)
    for model, data in ((net, maps), (ref, dict(X=X, Y=Y))):
        model.fit(data["X"], data["Y"], epochs=2, batch_size=4, shuffle=False, verbose=0)
    assert_close(net.get_weights(), ref.get_weights(), dtype)


def test_network_converts_strided_and_fortran_inputs():
    """The API converts once; the adapter then sees contiguous arrays of the right dtype."""
    rng = np.random.default_rng(3)
    base = rng.normal(size=(30, 8))
    X_strided = base[:, ::2]
    X_fortran = np.asfortranarray(base[:, :4])
    y = rng.normal(size=30)
    for X in (X_strided, X_fortran, X_strided.astype(np.float32)):
        nets = [fastbp.Network([4, 5, 1], backend=b, seed=1) for b in ("cython", "numpy")]
        for net in nets:
            net.fit(X, y, epochs=2, batch_size=3, shuffle=False, verbose=0)
        assert_close(nets[0].get_weights(), nets[1].get_weights(), "float64")
        assert_close(nets[0].predict(X), nets[1].predict(X), "float64")


# ----------------------------------------------------------------------------- the GIL
def test_train_chunk_releases_the_gil():
    """While one thread trains, another keeps running Python code.

    If the kernel held the GIL, the main thread could not execute a single
    bytecode between the kernel's start and end; we count its loop
    iterations strictly inside that window.
    """
    params, sizes, acts, X, Y = _problem((16, 48, 48, 1), [C.RELU, C.RELU, C.LINEAR], C.MSE,
                                         "float64", rows=1000)
    state = np.zeros((2, params.size))
    hyper = np.array([1e-4, 0, 0, 0])
    window = {}

    def calibrate(n_rows):
        order = np.tile(np.arange(1000, dtype=np.int64), n_rows // 1000)
        start = time.perf_counter()
        cython_.train_chunk(params, sizes, acts, C.MSE, X, Y, order, 1, C.SGD, hyper, state, 0)
        return order, time.perf_counter() - start

    order, took = calibrate(2000)
    repeat = max(1, int(0.3 / max(took, 1e-6)))
    order = np.tile(order, repeat)   # about 0.3 s of work

    def work():
        window["start"] = time.perf_counter()
        cython_.train_chunk(params, sizes, acts, C.MSE, X, Y, order, 1, C.SGD, hyper, state, 0)
        window["end"] = time.perf_counter()

    stamps = []
    thread = threading.Thread(target=work)
    thread.start()
    while thread.is_alive():
        stamps.append(time.perf_counter())
        time.sleep(0)
    thread.join()
    start, end = window["start"], window["end"]
    margin = 0.1 * (end - start)
    inside = [t for t in stamps if start + margin < t < end - margin]
    assert len(inside) > 10, (f"the main thread ran {len(inside)} times during a "
                              f"{end - start:.3f} s kernel call: the GIL was held")


# ----------------------------------------------------------------------------- without Numba
_NO_NUMBA = textwrap.dedent("""
    import sys, warnings

    class Block:
        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if name.split(".")[0] in ("numba", "llvmlite"):
                raise ImportError("blocked")

    sys.meta_path.insert(0, Block)
    import fastbp
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = fastbp.Network([2, 3, 1], backend="auto")
    print(net.backend, fastbp.available_backends(), [str(w.message) for w in caught])
""")


def test_auto_falls_back_to_cython_without_numba():
    """A fresh interpreter in which ``import numba`` fails picks cython for 'auto' and says so."""
    env = {k: v for k, v in os.environ.items() if k != "FASTBP_BACKEND"}
    proc = subprocess.run([sys.executable, "-c", _NO_NUMBA], env=env, capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    backend, rest = proc.stdout.split(" ", 1)
    assert backend == "cython"
    assert "numba" not in rest.split("]")[0]
    assert "chose 'cython'" in rest


@pytest.mark.skipif(not _flag("FASTBP_TEST_BLOCK_NUMBA"),
                    reason="only in the FASTBP_TEST_BLOCK_NUMBA=1 run (conftest blocks numba)")
@pytest.mark.skipif(bool(os.environ.get("FASTBP_BACKEND")), reason="FASTBP_BACKEND is set")
def test_no_numba_mode_auto_is_cython():
    """In this very process numba cannot be imported, and 'auto' resolves to cython."""
    with pytest.raises(ImportError):
        import numba  # noqa: F401
    assert "numba" not in fastbp.available_backends()
    net = fastbp.Network([2, 3, 1], backend="auto")
    assert net.backend == "cython"
    X = np.random.default_rng(0).normal(size=(20, 2))
    y = X.sum(axis=1)
    hist = net.fit(X, y, epochs=2, batch_size=1, verbose=0)
    assert np.isfinite(hist.history["loss"]).all()


def test_missing_extension_gives_a_clear_error():
    """Without fastbp._ckernels, 'cython' is unavailable with a how-to-build message."""
    code = textwrap.dedent("""
        import sys
        sys.modules["fastbp._ckernels"] = None   # as if it had never been built
        import fastbp
        from fastbp import _backends
        try:
            import fastbp._backends.cython_
        except ImportError as exc:
            print("IMPORT:", exc)
        try:
            fastbp.Network([2, 1], backend="cython")
        except ImportError as exc:
            print("NETWORK:", exc)
        print("AUTO:", fastbp.Network([2, 1], backend="auto").backend)
    """)
    env = {k: v for k, v in os.environ.items() if k != "FASTBP_BACKEND"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "IMPORT:" in out and "not built" in out
    assert "NETWORK:" in out and "build the C extension" in out and "pip install" in out
    assert "AUTO: cython" not in out

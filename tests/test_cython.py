"""What is specific to the Cython backend (``fastbp._backends.cython_`` over ``fastbp._ckernels``).

The conformance suite (tests/test_backend_contract.py) runs the backend --
the compiled copy it selected -- through the contract against the NumPy
reference, its argument checks included.  Here: the build facts (codes,
which copy is selected, the ISA switch, the debug build), every *other*
compiled copy (baseline, AVX2, AVX-512) through the conformance suite's
cases, the compiled entry points re-checking shapes without the adapter, the
debug build's own index checks, the GIL being released, and the fallback
without Numba.

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
import warnings

import numpy as np
import pytest

import fastbp
from fastbp import _backends, _parallel
from fastbp._backends import _codes as C
from fastbp._backends import numpy_

from . import test_backend_contract as contract
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


# ----------------------------------------------------------------------------- every copy
OTHER_COPIES = sorted(isa for isa, module in COPIES.items()
                      if cython_ is not None and module is not cython_._kernels)


@pytest.mark.parametrize("isa", OTHER_COPIES)
def test_every_other_copy_passes_the_conformance_cases(isa, dtype, monkeypatch):
    """The copies the adapter did not select, each run through the conformance suite's
    parity, shape, divergence and many-row cases (the selected one runs the whole suite)."""
    monkeypatch.setattr(cython_, "_kernels", COPIES[isa])
    for case in contract.CASES:
        contract.check_case(cython_, case, dtype)
    for spec, acts in contract.SHAPES:
        sizes, params, X, Y = contract.problem(contract.sizes_of(spec, dtype), C.MSE, dtype,
                                               rows=14)
        for batch, opt in itertools.product((1, 3, 4), (C.SGD, C.ADAM)):
            got, want = (contract.train(m, sizes, np.array(acts), C.MSE, params, X, Y, batch,
                                        opt, chunks=3) for m in (cython_, numpy_))
            contract.compare(got, want, dtype)
    for spec, opt, batch in contract.DIVERGENCE:
        sizes, params, X, Y = contract.problem(contract.sizes_of(spec, dtype), C.MSE, dtype,
                                               rows=20)
        X[13, 1] = np.nan
        acts = contract.acts_for(sizes, C.RELU, C.MSE)
        done = [contract.train(m, sizes, acts, C.MSE, params, X, Y, batch, opt,
                               chunks=1)["done"] for m in (cython_, numpy_)]
        assert done[0] == done[1] and done[0][0] < 20   # (rows in a shuffled order)
    sizes, params, X, Y = contract.problem(contract.sizes_of("tile+3", dtype), C.HUBER, dtype,
                                           rows=203)
    acts = contract.acts_for(sizes, C.TANH, C.HUBER)
    contract.compare(contract.evaluate(cython_, sizes, acts, C.HUBER, params, X, Y),
                     contract.evaluate(numpy_, sizes, acts, C.HUBER, params, X, Y), dtype)


@pytest.mark.parametrize("isa", sorted(COPIES))
@pytest.mark.parametrize("workers", [2, 3])
def test_every_copy_splits_minibatches_as_the_reference(isa, dtype, workers, monkeypatch):
    """fit(workers=N) on batches of 64+ rows: each copy's threads meet at its barriers.

    Three epochs of split batches (a short last batch; three parts on this
    two-core machine wait for each other by yielding) equal the NumPy
    reference's split with the same workers.
    """
    cores = max(3, _parallel.usable_cores())  # workers=3 is not capped on two cores
    monkeypatch.setattr(_parallel, "usable_cores", lambda: cores)
    rng = np.random.default_rng(11)
    X = rng.normal(size=(300, 5)).astype(dtype)
    y = np.tanh(X @ rng.normal(size=(5, 2))).astype(dtype)
    fits = []
    for backend in ("numpy", "cython"):
        if backend == "cython":
            monkeypatch.setattr(cython_, "_kernels", COPIES[isa])
        net = fastbp.Network([5, 9, 2], activations="tanh", dtype=dtype, backend=backend,
                             seed=3)
        with warnings.catch_warnings():  # the NumPy backend says its workers take turns
            warnings.simplefilter("ignore", RuntimeWarning)
            history = net.fit(X, y, epochs=3, batch_size=70, workers=workers,
                              optimizer=fastbp.Adam(0.01), verbose=0)
        fits.append((net.get_weights(), history.history["loss"], net._step))
    (want, want_loss, want_step), (got, got_loss, got_step) = fits
    assert_close(got, want, dtype)
    assert_close(got_loss, want_loss, dtype)
    assert got_step == want_step == 3 * 5


# ----------------------------------------------------------------------------- past the adapter
def _valid():
    return contract._valid()


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


# ----------------------------------------------------------------------------- the GIL
def test_train_chunk_releases_the_gil():
    """While one thread trains, another keeps running Python code.

    If the kernel held the GIL, the main thread could not execute a single
    bytecode between the kernel's start and end; we count its loop
    iterations strictly inside that window.
    """
    sizes, params, X, Y = contract.problem((16, 48, 48, 1), C.MSE, "float64", rows=1000)
    acts = np.array([C.RELU, C.RELU, C.LINEAR])
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

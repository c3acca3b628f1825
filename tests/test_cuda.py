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

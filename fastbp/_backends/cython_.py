"""Cython backend: a thin, checking adapter over the compiled ``fastbp._ckernels``.

The kernels themselves live in ``csrc/_ckernels.pyx`` (the Cython twin of
``numba_.py``) and run without bounds checks and without the GIL.  This
module is their only caller and the gate that makes that safe: before any
compiled loop runs it checks that every array has the parameter dtype, is
C-contiguous, has the shape the layer widths imply, that output buffers are
writeable and that every index in ``order`` lies in ``[0, len(X))``.  It
converts nothing and allocates nothing: the Network hands over contiguous
arrays in the right dtype once per chunk (read-only arrays, such as
``np.memmap`` opened with ``mode="r"``, are fine for ``X``, ``Y`` and
``order``).  An array that fails a check raises ``ValueError``/``TypeError``
saying what was expected, what was found and how to fix it.

Up to three builds of the same source are installed: ``fastbp._ckernels``
(portable x86-64), ``fastbp._ckernels_avx2`` (AVX2 + FMA) and
``fastbp._ckernels_avx512`` (AVX-512).  The best one the running CPU
supports is used -- the Numba backend, too, compiles for the host CPU.
``FASTBP_CYTHON_ISA=baseline|avx2|avx512`` forces one (``auto`` is the
default); ``ISA`` says which one runs.

Importing this module raises ``ImportError`` when the extension was not
built; the registry turns that into "how to build it".
"""

import importlib
import os

import numpy as np

try:
    from .. import _ckernels as _baseline
except ImportError as exc:  # not built: let the registry say how to build it
    raise ImportError(
        "the C extension fastbp._ckernels is not built (" + str(exc) + "); build it with "
        "`pip install --no-build-isolation -e .` (needs Cython and a C compiler; "
        "FASTBP_REQUIRE_EXTENSION=1 makes a failed build an error)") from exc

from . import _codes as C
from ._layout import n_params as _n_params

NAME = "cython"

#: Compiled copies, best first: (ISA name, module suffix, CPU check in the baseline module).
_COPIES = (("avx512", "_avx512", "cpu_has_avx512"), ("avx2", "_avx2", "cpu_has_avx2_fma"))
_ISA_CHOICES = ("auto", "baseline", "avx2", "avx512")


def _select_kernels():
    """The compiled copy to run: the best instruction set the CPU supports.

    ``FASTBP_CYTHON_ISA`` (``auto`` by default) names one copy instead; a
    named copy that is missing or unsupported raises ImportError.
    """
    choice = os.environ.get("FASTBP_CYTHON_ISA", "").strip().lower() or "auto"
    if choice not in _ISA_CHOICES:
        raise ImportError(f"FASTBP_CYTHON_ISA: expected one of {_ISA_CHOICES}; found "
                          f"{choice!r}. Unset it to pick automatically.")
    if choice == "baseline":
        return _baseline
    for isa, suffix, check in _COPIES:
        if choice not in ("auto", isa):
            continue
        # The CPU check comes first: merely importing a copy built for a newer
        # instruction set may execute its instructions (module initialisation).
        if not getattr(_baseline, check)():
            if choice == isa:
                raise ImportError(f"FASTBP_CYTHON_ISA={isa} but this CPU lacks it; unset it.")
            continue
        try:
            return importlib.import_module(f"fastbp._ckernels{suffix}")
        except ImportError as exc:
            if choice == isa:
                raise ImportError(f"FASTBP_CYTHON_ISA={isa} but fastbp._ckernels{suffix} is "
                                  f"not built ({exc}); rebuild on an x86-64 machine or unset "
                                  "it.") from exc
    return _baseline


_kernels = _select_kernels()
#: Instruction set of the compiled copy in use ("baseline", "avx2", ...).
ISA = _kernels.ISA
#: True when the compiled copy is a debug build (bounds checks on).
DEBUG = _kernels.DEBUG

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_INT64 = np.dtype(np.int64)
_FIX = ("Pass what fastbp.Network passes: C-contiguous arrays in the parameter dtype "
        "(np.ascontiguousarray(a, dtype=params.dtype)).")


# ---------------------------------------------------------------------------- checks
def _array(a, name):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray; found {type(a).__name__}. {_FIX}")
    return a


def _check(a, name, dtype, ndim, writeable=False):
    """Dtype, dimensions, C-contiguity (and writeability) of one argument."""
    _array(a, name)
    if a.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}; found {a.dtype}. {_FIX}")
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array; found shape {a.shape}. {_FIX}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array; found a strided or "
                         f"Fortran-ordered one (shape {a.shape}, strides {a.strides}). "
                         f"Copy it once with np.ascontiguousarray({name}).")
    if writeable and not a.flags.writeable:
        raise ValueError(f"{name}: the backend writes into this array, but it is read-only. "
                         "Pass a writeable array (e.g. a copy).")


# (sizes bytes, acts bytes) -> parameter count, for layer descriptions already checked
_checked_nets = {}


def _check_net(params, sizes, acts, writeable=False):
    """The parameter buffer and the layer description; returns the dtype.

    The value checks of ``sizes``/``acts`` run once per architecture (they
    are cached by content); dtype, layout and length are checked every call.
    """
    _array(params, "params")
    if params.dtype not in _FLOATS:
        raise TypeError(f"params: expected dtype float32 or float64; found {params.dtype}. "
                        "Use Network(dtype='float32') or 'float64'.")
    _check(params, "params", params.dtype, 1, writeable)
    _check(sizes, "sizes", _INT64, 1)
    _check(acts, "acts", _INT64, 1)
    key = (sizes.tobytes(), acts.tobytes())
    expected = _checked_nets.get(key)
    if expected is None:
        if len(sizes) < 2 or (sizes < 1).any():
            raise ValueError(f"sizes: expected at least two positive layer widths; found "
                             f"{sizes.tolist()}.")
        if len(acts) != len(sizes) - 1:
            raise ValueError(f"acts: expected {len(sizes) - 1} activation codes (one per "
                             f"layer); found {len(acts)}.")
        if acts.min() < 0 or acts.max() >= len(C.ACTIVATIONS):
            raise ValueError(f"acts: expected codes in 0..{len(C.ACTIVATIONS) - 1}; found "
                             f"{acts.tolist()}.")
        expected = _n_params(sizes)
        if len(_checked_nets) < 256:
            _checked_nets[key] = expected
    if params.shape[0] != expected:
        raise ValueError(f"params: expected {expected} values for layer widths "
                         f"{sizes.tolist()}; found {params.shape[0]}.")
    return params.dtype


def _check_rows(A, name, dtype, n_cols, n_rows=None, writeable=False):
    _check(A, name, dtype, 2, writeable)
    if A.shape[1] != n_cols or (n_rows is not None and A.shape[0] != n_rows):
        want = f"({'n' if n_rows is None else n_rows}, {n_cols})"
        raise ValueError(f"{name}: expected shape {want}; found {A.shape}.")


def _check_loss(loss):
    if not 0 <= int(loss) < len(C.LOSSES):
        raise ValueError(f"loss: expected a code in 0..{len(C.LOSSES) - 1}; found {loss!r}.")
    return int(loss)


# ---------------------------------------------------------------------------- contract
def predict(params, sizes, acts, X, out):
    """Write the network's outputs for the rows of ``X`` into ``out``."""
    dtype = _check_net(params, sizes, acts)
    _check_rows(X, "X", dtype, int(sizes[0]))
    _check_rows(out, "out", dtype, int(sizes[-1]), X.shape[0], writeable=True)
    _kernels.predict(params, sizes, acts, X, out)


def loss_sum(params, sizes, acts, loss, X, Y):
    """Sum over rows of the per-row loss (each row's loss is a mean over outputs)."""
    dtype = _check_net(params, sizes, acts)
    _check_rows(X, "X", dtype, int(sizes[0]))
    _check_rows(Y, "Y", dtype, int(sizes[-1]), X.shape[0])
    return _kernels.loss_sum(params, sizes, acts, _check_loss(loss), X, Y)


def loss_and_gradients(params, sizes, acts, loss, X, Y, grad):
    """Return the loss sum over rows and write d(loss sum)/d(param) into ``grad``."""
    dtype = _check_net(params, sizes, acts)
    _check_rows(X, "X", dtype, int(sizes[0]))
    _check_rows(Y, "Y", dtype, int(sizes[-1]), X.shape[0])
    _check(grad, "grad", dtype, 1, writeable=True)
    if grad.shape != params.shape:
        raise ValueError(f"grad: expected shape {params.shape}; found {grad.shape}.")
    return _kernels.loss_and_gradients(params, sizes, acts, _check_loss(loss), X, Y, grad)


def train_chunk(params, sizes, acts, loss, X, Y, order, batch_size,
                optimizer, hyper, state, step):
    """Train on the rows ``order`` in consecutive batches of ``batch_size``.

    Returns ``(loss_sum, rows_done)`` as described in ``numpy_.train_chunk``.
    """
    dtype = _check_net(params, sizes, acts, writeable=True)
    _check_rows(X, "X", dtype, int(sizes[0]))
    _check_rows(Y, "Y", dtype, int(sizes[-1]), X.shape[0])
    _check(order, "order", _INT64, 1)
    if len(order):
        # the one O(n) check: every row index must be inside X before the unchecked loop
        low, high = int(order.min()), int(order.max())
        if low < 0 or high >= X.shape[0]:
            bad = low if low < 0 else high
            raise IndexError(f"order: expected row indices in [0, {X.shape[0]}); found {bad}. "
                             "Indices must refer to rows of X.")
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer; found {batch_size}.")
    optimizer = int(optimizer)
    if not C.SGD <= optimizer <= C.RMSPROP_MOMENTUM:
        raise ValueError(f"optimizer: expected a code in {C.SGD}..{C.RMSPROP_MOMENTUM}; "
                         f"found {optimizer}.")
    _check(hyper, "hyper", np.dtype(np.float64), 1)
    if hyper.shape[0] != C.N_HYPER:
        raise ValueError(f"hyper: expected {C.N_HYPER} float64 values; found {hyper.shape[0]}.")
    _check(state, "state", dtype, 2, writeable=True)
    if state.shape != (C.N_STATE_SLOTS, params.shape[0]):
        raise ValueError(f"state: expected shape {(C.N_STATE_SLOTS, params.shape[0])}; "
                         f"found {state.shape}.")
    return _kernels.train_chunk(params, sizes, acts, _check_loss(loss), X, Y, order,
                                batch_size, optimizer, hyper, state, int(step))

"""The backend contract, written once: what every kernel module offers, and its one policy.

A backend is a module of this package (``numpy_``, ``numba_``, ``cython_``,
``cuda_``) that offers the functions of :class:`Backend` with exactly these
arguments.  The registry (``fastbp._backends``) checks that a module does
before it hands it out; ``tests/test_backend_contract.py`` runs every
registered backend through the same conformance suite against the NumPy
reference, so a new backend is tested by registering it.

Arguments (all arrays C-contiguous):

``params``     1-D float32/float64 buffer; layer ``l`` stores its kernel
               ``(sizes[l], sizes[l+1])`` row-major, then its bias (``_layout``).
``sizes``      int64 layer widths, inputs first (``n_layers + 1`` of them).
``acts``       int64 activation code per layer (``_codes``).
``loss``       int loss code; ``optimizer`` int update-rule code (``_codes``).
               Softmax (output layer only) pairs with categorical cross-entropy:
               see :func:`check_pairing`.
``hyper``      float64 ``[learning_rate, h1, h2, epsilon]`` (``_codes``).
``state``      ``(N_STATE_SLOTS, n_params)`` optimizer state in the parameter dtype.
``X, Y``       2-D arrays in the parameter dtype, ``(n, sizes[0])`` and ``(n, sizes[-1])``.
``order``      int64 row indices into ``X``/``Y``, in training order.

**The one policy.**  The API layer (``fastbp.Network``) hands the kernels
validated, C-contiguous arrays of the right dtype and shape.  Backends
assert that cheaply with the ``check_*`` functions below -- they raise
``TypeError``/``ValueError``/``IndexError`` saying expected / found / how to
fix, and never convert or copy -- because the compiled kernels index raw
memory without bounds checks.  Checks that depend only on the network run
once per architecture (or once per :class:`Trainer`); per chunk only the
rows and ``order`` are checked (``order``'s range is the one O(n) check).

**Training goes through a trainer.**  ``open_trainer`` is called once per
``fit``: the backend derives its layout, allocates its working buffers
(aligned copies, device arrays, ...) and copies the model's ``params`` and
``state`` in.  Each chunk then trains the working copy in place; the
model's own buffers change only when the caller says :meth:`Trainer.store`,
so between stores they hold the last state the caller accepted, which is
what a divergence or a Ctrl-C rolls back to (:meth:`Trainer.reload`).
"""

import sys
from typing import Protocol

import numpy as np

from . import _codes as C
from ._layout import n_params

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
INT64 = np.dtype(np.int64)
_FIX = ("Pass what fastbp.Network passes: C-contiguous arrays in the parameter dtype "
        "(np.ascontiguousarray(a, dtype=params.dtype)).")

# (sizes bytes, acts bytes) -> parameter count, for layer descriptions already checked:
# the value checks of an architecture run once, not on every chunk
_checked_nets = {}


def check_array(a, name, dtype, ndim, writeable=False):
    """Type, dtype, dimensions, C-contiguity (and writeability) of one argument."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray; found {type(a).__name__}. {_FIX}")
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


def check_net(params, sizes, acts, writeable=False):
    """The parameter buffer and the layer description; returns the dtype."""
    if isinstance(params, np.ndarray) and params.dtype not in FLOATS:
        raise TypeError(f"params: expected dtype float32 or float64; found {params.dtype}. "
                        "Use Network(dtype='float32') or 'float64'.")
    check_array(params, "params", getattr(params, "dtype", None), 1, writeable)
    check_array(sizes, "sizes", INT64, 1)
    check_array(acts, "acts", INT64, 1)
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
        expected = n_params(sizes)
        if len(_checked_nets) < 256:
            _checked_nets[key] = expected
    if params.shape[0] != expected:
        raise ValueError(f"params: expected {expected} values for layer widths "
                         f"{sizes.tolist()}; found {params.shape[0]}.")
    return params.dtype


def check_rows(A, name, dtype, n_cols, n_rows=None, writeable=False):
    """A 2-D array of ``n_cols`` columns (and ``n_rows`` rows, when given)."""
    check_array(A, name, dtype, 2, writeable)
    if A.shape[1] != n_cols or (n_rows is not None and A.shape[0] != n_rows):
        want = f"({'n' if n_rows is None else n_rows}, {n_cols})"
        raise ValueError(f"{name}: expected shape {want}; found {A.shape}.")


def check_loss(loss):
    """A loss code; returned as an int."""
    if not 0 <= int(loss) < len(C.LOSSES):
        raise ValueError(f"loss: expected a code in 0..{len(C.LOSSES) - 1}; found {loss!r}.")
    return int(loss)


def check_pairing(acts, loss):
    """Softmax only on the output layer, and there exactly with categorical cross-entropy.

    The kernels store the log-softmax as the output activations and take
    the gradient of categorical cross-entropy with respect to the logits
    (``p - y``), so either one without the other would compute something
    else than its formula (``fastbp.Network`` refuses such a network first).
    """
    if (acts[:-1] == C.SOFTMAX).any():
        raise ValueError(f"acts: expected softmax ({C.SOFTMAX}) on the output layer only; "
                         f"found codes {acts.tolist()}.")
    softmax = int(acts[-1]) == C.SOFTMAX
    if softmax != (loss == C.CATEGORICAL_CROSSENTROPY):
        raise ValueError(f"acts, loss: expected a softmax output ({C.SOFTMAX}) exactly with "
                         f"categorical cross-entropy ({C.CATEGORICAL_CROSSENTROPY}); found "
                         f"output code {int(acts[-1])} with loss code {loss}.")


# --------------------------------------------------------------------- one per contract call
def check_predict_call(params, sizes, acts, X, out):
    """``predict``'s arguments; returns the dtype."""
    dtype = check_net(params, sizes, acts)
    check_rows(X, "X", dtype, int(sizes[0]))
    check_rows(out, "out", dtype, int(sizes[-1]), X.shape[0], writeable=True)
    return dtype


def check_loss_call(params, sizes, acts, loss, X, Y):
    """``loss_sum``'s arguments; returns ``(dtype, loss)``."""
    dtype = check_net(params, sizes, acts)
    check_rows(X, "X", dtype, int(sizes[0]))
    check_rows(Y, "Y", dtype, int(sizes[-1]), X.shape[0])
    loss = check_loss(loss)
    check_pairing(acts, loss)
    return dtype, loss


def check_gradients_call(params, sizes, acts, loss, X, Y, grad):
    """``loss_and_gradients``' arguments; returns ``(dtype, loss)``."""
    dtype = check_net(params, sizes, acts)
    check_rows(X, "X", dtype, int(sizes[0]))
    check_rows(Y, "Y", dtype, int(sizes[-1]), X.shape[0])
    check_array(grad, "grad", dtype, 1, writeable=True)
    if grad.shape != params.shape:
        raise ValueError(f"grad: expected shape {params.shape}; found {grad.shape}.")
    loss = check_loss(loss)
    check_pairing(acts, loss)
    return dtype, loss


def check_trainer_call(params, state, sizes, acts, loss, batch_size, optimizer, hyper):
    """``open_trainer``'s arguments; returns ``(dtype, loss, batch_size, optimizer)``."""
    dtype = check_net(params, sizes, acts, writeable=True)
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer; found {batch_size}.")
    optimizer = int(optimizer)
    if not C.SGD <= optimizer <= C.RMSPROP_MOMENTUM:
        raise ValueError(f"optimizer: expected a code in {C.SGD}..{C.RMSPROP_MOMENTUM}; "
                         f"found {optimizer}.")
    check_array(hyper, "hyper", np.dtype(np.float64), 1)
    if hyper.shape[0] != C.N_HYPER:
        raise ValueError(f"hyper: expected {C.N_HYPER} float64 values; found {hyper.shape[0]}.")
    check_array(state, "state", dtype, 2, writeable=True)
    if state.shape != (C.N_STATE_SLOTS, params.shape[0]):
        raise ValueError(f"state: expected shape {(C.N_STATE_SLOTS, params.shape[0])}; "
                         f"found {state.shape}.")
    loss = check_loss(loss)
    check_pairing(acts, loss)
    return dtype, loss, batch_size, optimizer


def check_chunk(dtype, sizes, X, Y, order):
    """One chunk's rows and ``order`` (every index inside ``X``)."""
    check_rows(X, "X", dtype, int(sizes[0]))
    check_rows(Y, "Y", dtype, int(sizes[-1]), X.shape[0])
    check_array(order, "order", INT64, 1)
    if len(order):
        # the one O(n) check: every row index must be inside X before the unchecked loop
        low, high = int(order.min()), int(order.max())
        if low < 0 or high >= X.shape[0]:
            bad = low if low < 0 else high
            raise IndexError(f"order: expected row indices in [0, {X.shape[0]}); found {bad}. "
                             "Indices must refer to rows of X.")


def state_slots(optimizer):
    """How many rows of ``state`` the update rule ``optimizer`` uses (see ``_codes``)."""
    if optimizer in (C.ADAM, C.RMSPROP_MOMENTUM):
        return 2
    return 0 if optimizer == C.SGD else 1


# --------------------------------------------------------------------- the interfaces
class Trainer(Protocol):
    """Trains one network's working copy, chunk after chunk, for the length of one ``fit``.

    Opened by :meth:`Backend.open_trainer` with the model's ``params`` and
    ``state``, which it copies into its working buffers; they are written
    back only by :meth:`store`.
    """

    def train(self, X, Y, order, step):
        """Train the working copy on rows ``order`` in consecutive batches of ``batch_size``.

        Per batch: forward pass, loss, backward pass, one optimizer step; the
        last batch may be short.  ``step`` is the number of optimizer steps
        taken before this chunk (Adam uses ``t = step + 1`` for its first
        batch).  Returns ``(loss_sum, rows_done)``: the sum of per-row
        losses, each taken before its batch's update, and the rows in
        completed batches -- fewer than ``len(order)`` when a batch's loss
        was not finite, which was then not applied and training stopped.
        """

    def finite(self):
        """Whether every working parameter is finite."""

    def store(self):
        """Write the working parameters and optimizer state into the model's buffers."""

    def reload(self):
        """Overwrite the working copy with the model's buffers (undo the chunks since a store)."""

    def close(self):
        """Release the working buffers (device memory, ...); the trainer is not used after."""


class Backend(Protocol):
    """What a backend module offers (module-level functions and ``NAME``)."""

    NAME: str
    #: Whether the kernels run outside the GIL, so that ``workers`` threads run
    #: them in parallel (``fastbp._parallel``); else the workers' tasks run in turn.
    RELEASES_GIL: bool

    def predict(self, params, sizes, acts, X, out):
        """Write the network's outputs for the rows of ``X`` into ``out``."""

    def loss_sum(self, params, sizes, acts, loss, X, Y):
        """Sum over rows of the per-row loss, accumulated in float64.

        The per-row loss is a mean over outputs, except for categorical
        cross-entropy, where it is the sum over the classes (as in Keras).
        """

    def loss_and_gradients(self, params, sizes, acts, loss, X, Y, grad):
        """The loss sum over rows; d(loss sum)/d(param) written into ``grad``."""

    def open_trainer(self, params, state, sizes, acts, loss, batch_size, optimizer, hyper):
        """A :class:`Trainer` for this network and optimizer, its working copy loaded."""


#: The functions a backend module must define (see :class:`Backend`).
FUNCTIONS = ("predict", "loss_sum", "loss_and_gradients", "open_trainer")


def missing(module):
    """The names of :data:`FUNCTIONS` (and ``NAME``, ``RELEASES_GIL``) that ``module`` lacks."""
    absent = [name for name in FUNCTIONS if not callable(getattr(module, name, None))]
    if not isinstance(getattr(module, "NAME", None), str):
        absent.append("NAME")
    if not isinstance(getattr(module, "RELEASES_GIL", None), bool):
        absent.append("RELEASES_GIL")
    return absent


class CopyTrainer:
    """A :class:`Trainer` over flat working copies of ``params`` and the used state rows.

    For backends whose chunk function takes the flat layout itself:
    ``run(params, state, X, Y, order, step) -> (loss_sum, rows_done)`` trains
    the copies in place.  Only the state rows the update rule uses are
    copied in and stored back.
    """

    def __init__(self, params, state, optimizer, run):
        self._params, self._state = params, state
        self._slots = state_slots(optimizer)
        self.params = params.copy()
        self.state = state.copy()
        self._run = run

    def train(self, X, Y, order, step):
        return self._run(self.params, self.state, X, Y, order, step)

    def finite(self):
        return bool(np.isfinite(self.params).all())

    def store(self):
        self._params[...] = self.params
        self._state[:self._slots] = self.state[:self._slots]

    def reload(self):
        self.params[...] = self._params
        self.state[:self._slots] = self._state[:self._slots]

    def close(self):
        self.params = self.state = None


def train_chunk(backend, params, sizes, acts, loss, X, Y, order, batch_size, optimizer, hyper,
                state, step):
    """One chunk through a fresh trainer of ``backend``, stored at once: ``(loss_sum, rows_done)``.

    ``params`` and ``state`` are updated in place (including the batches
    before a non-finite one).  What tests and benchmarks call to train a
    chunk without a ``Network``; ``fit`` keeps one trainer for all chunks.
    """
    trainer = backend.open_trainer(params, state, sizes, acts, loss, batch_size, optimizer,
                                   hyper)
    try:
        result = trainer.train(X, Y, order, step)
        trainer.store()
    finally:
        trainer.close()
    return result


def module_train_chunk(module_name):
    """A backend module's own ``train_chunk``: :func:`train_chunk` bound to that module.

    ``train_chunk = _contract.module_train_chunk(__name__)`` in each backend
    module, so tests and benchmarks can train one chunk without a Network.
    """
    def train_chunk_of_module(params, sizes, acts, loss, X, Y, order, batch_size, optimizer,
                              hyper, state, step):
        """One chunk through a fresh trainer, stored at once (``_contract.train_chunk``)."""
        return train_chunk(sys.modules[module_name], params, sizes, acts, loss, X, Y, order,
                           batch_size, optimizer, hyper, state, step)

    train_chunk_of_module.__name__ = "train_chunk"
    return train_chunk_of_module


def run_meeting_parts(runner, sync, abort_slot, part):
    """Run ``part(k)`` for every part at once, parts that wait for each other at barriers.

    ``sync`` (int64 barrier words) is zeroed first.  If a part fails, or
    the calling thread is interrupted before its part starts, word
    ``abort_slot`` is raised so that the parts waiting at a barrier leave.
    Returns part 0's ``(loss_sum, rows_done)``.
    """
    sync[:] = 0

    def abort():
        sync[abort_slot] = 1

    def task(k):
        try:
            return part(k)
        except BaseException:  # e.g. no memory for its scratch: release the others
            abort()
            raise

    results = runner.run(task, on_error=abort)
    return float(results[0][0]), int(results[0][1])

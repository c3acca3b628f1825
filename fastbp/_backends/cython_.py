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
The ``cython_isa`` setting (``FASTBP_CYTHON_ISA=baseline|avx2|avx512``, see
``fastbp._config``; ``auto`` is the default) forces one, read when this
module is first imported; ``ISA`` says which one runs.

Importing this module raises ``ImportError`` when the extension was not
built; the registry turns that into "how to build it".
"""

import importlib

import numpy as np

try:
    from .. import _ckernels as _baseline
except ImportError as exc:  # not built: let the registry say how to build it
    raise ImportError(
        "the C extension fastbp._ckernels is not built (" + str(exc) + "); build it with "
        "`pip install --no-build-isolation -e .` (needs Cython and a C compiler; "
        "FASTBP_REQUIRE_EXTENSION=1 makes a failed build an error)") from exc


from .. import _config
from . import _contract
from ._contract import (check_chunk, check_gradients_call, check_loss_call, check_predict_call,
                        check_trainer_call)

NAME = "cython"
# every kernel runs inside `with nogil`: worker threads run in parallel
RELEASES_GIL = True

#: Compiled copies, best first: (ISA name, module suffix, CPU check in the baseline module).
_COPIES = (("avx512", "_avx512", "cpu_has_avx512"), ("avx2", "_avx2", "cpu_has_avx2_fma"))


def _select_kernels():
    """The compiled copy to run: the best instruction set the CPU supports.

    ``FASTBP_CYTHON_ISA`` (``auto`` by default) names one copy instead; a
    named copy that is missing or unsupported raises ImportError.
    """
    try:
        choice = _config.cython_isa()
    except ValueError as exc:  # the registry reports the backend as unavailable, and why
        raise ImportError(str(exc)) from None
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

# ---------------------------------------------------------------------------- contract
def predict(params, sizes, acts, X, out):
    """Write the network's outputs for the rows of ``X`` into ``out``."""
    check_predict_call(params, sizes, acts, X, out)
    _kernels.predict(params, sizes, acts, X, out)


def loss_sum(params, sizes, acts, loss, X, Y):
    """Sum over rows of the per-row loss (each row's loss is a mean over outputs)."""
    _, loss = check_loss_call(params, sizes, acts, loss, X, Y)
    return _kernels.loss_sum(params, sizes, acts, loss, X, Y)


def loss_and_gradients(params, sizes, acts, loss, X, Y, grad):
    """Return the loss sum over rows and write d(loss sum)/d(param) into ``grad``."""
    _, loss = check_gradients_call(params, sizes, acts, loss, X, Y, grad)
    return _kernels.loss_and_gradients(params, sizes, acts, loss, X, Y, grad)


class _Trainer:
    """The extension's ``Trainer`` bound to the model's buffers (``_contract.Trainer``).

    The compiled trainer lays out its line-aligned working copy once, at
    open; each chunk trains it in place (no per-chunk layout or copy), and
    ``store``/``reload`` copy between it and the model's ``params``/``state``.
    """

    def __init__(self, params, state, sizes, acts, loss, batch_size, optimizer, hyper, dtype):
        self._params, self._state, self._sizes, self._dtype = params, state, sizes, dtype
        self._work = _kernels.Trainer(params, state, sizes, acts, loss, batch_size, optimizer,
                                      hyper)

    def train(self, X, Y, order, step):
        check_chunk(self._dtype, self._sizes, X, Y, order)
        return self._work.train(X, Y, order, int(step))

    def finite(self):
        return self._work.finite()

    def store(self):
        self._work.store(self._params, self._state)

    def reload(self):
        self._work.reload(self._params, self._state)

    def close(self):
        self._work.close()


def open_trainer(params, state, sizes, acts, loss, batch_size, optimizer, hyper):
    """A trainer over the extension's aligned working copy (``_ckernels.Trainer``) for one fit."""
    dtype, loss, batch_size, optimizer = check_trainer_call(params, state, sizes, acts, loss,
                                                            batch_size, optimizer, hyper)
    return _Trainer(params, state, sizes, acts, loss, batch_size, optimizer, hyper, dtype)


#: The barrier words of a split (``csrc/_train.pxi``: SYNC_WORDS), and its abort word.
_SYNC_WORDS, _SYNC_ABORT = 24, 16


class _Splitter(_Trainer):
    """Split minibatches (``fastbp._parallel.SplitBatchTrainer``) on the extension's trainer.

    The ``parts`` threads each train the whole chunk in one call
    (``Trainer.train_split``), meeting at barriers inside the extension:
    per batch, their shares' gradients at the same weights, then each part's
    slice of the sum in part order and of the step.  It trains chunks only
    (``trains_chunks``).
    """

    trains_chunks = True

    def __init__(self, params, state, sizes, acts, loss, batch_size, optimizer, hyper, dtype,
                 parts):
        super().__init__(params, state, sizes, acts, loss, batch_size, optimizer, hyper, dtype)
        self._batch_size, self._parts = batch_size, parts
        self._sync = np.zeros(_SYNC_WORDS, dtype=np.int64)
        self._losses = np.zeros(parts, dtype=np.float64)

    def train_chunk(self, X, Y, order, step, runner):
        """Train rows ``order``, the parts run at once by ``runner``: ``(loss_sum, rows)``."""
        check_chunk(self._dtype, self._sizes, X, Y, order)
        if len(order) == 0:
            return 0.0, 0
        parts, work = self._parts, self._work
        work.split_reserve(parts, -(-min(self._batch_size, len(order)) // parts))
        return _contract.run_meeting_parts(
            runner, self._sync, _SYNC_ABORT,
            lambda k: work.train_split(X, Y, order, int(step), k, parts, self._sync,
                                       self._losses))


def open_splitter(params, state, sizes, acts, loss, batch_size, optimizer, hyper, parts):
    """Split minibatches over ``parts`` threads (see ``fastbp._parallel``), trained by chunk."""
    dtype, loss, batch_size, optimizer = check_trainer_call(params, state, sizes, acts, loss,
                                                            batch_size, optimizer, hyper)
    return _Splitter(params, state, sizes, acts, loss, batch_size, optimizer, hyper, dtype,
                     int(parts))


#: One chunk without a Network (tests, benchmarks): ``_contract.train_chunk`` on this module.
train_chunk = _contract.module_train_chunk(__name__)

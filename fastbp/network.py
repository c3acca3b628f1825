"""The :class:`Network`: checks input, owns the parameters, runs the epoch loop.

No numeric loops live here: every forward, backward and update runs inside
the selected backend's kernels, one call per chunk of rows.
"""

import contextlib
import copy
import functools
import json
import math
import numbers
import signal
import sys
import threading

import numpy as np

from . import _backends, _checkpoint, _config, _io, _parallel
from . import _validation as validation
from ._backends._codes import (ACTIVATIONS, CATEGORICAL_CROSSENTROPY, LOSS_NAMES, N_STATE_SLOTS,
                              SPARSE_LOSSES)
from ._backends._layout import layer_views, n_params
from ._data import make_source
from ._initializers import BIAS_INITIALIZERS, KERNEL_INITIALIZERS
from .callbacks import Callback, EarlyStopping, History, ProgbarLogger
from .optimizers import SGD, Adam, Optimizer, RMSprop


def _check_callbacks(callbacks):
    """``callbacks`` as a list of :class:`Callback` instances, or a clear error."""
    if callbacks is None:
        return []
    if isinstance(callbacks, Callback) or not isinstance(callbacks, (list, tuple)):
        raise TypeError(f"callbacks: expected a list of fastbp callbacks; found "
                        f"{type(callbacks).__name__}. Pass e.g. "
                        "callbacks=[fastbp.EarlyStopping(patience=3)].")
    for callback in callbacks:
        if not isinstance(callback, Callback):
            raise TypeError(f"callbacks: expected instances of fastbp.Callback; found "
                            f"{type(callback).__name__}. Subclass fastbp.Callback and pass "
                            "an instance.")
    return list(callbacks)


def _check_monitored(callbacks, val):
    """Refuse an EarlyStopping on ``val_loss`` when there are no validation rows."""
    for callback in callbacks:
        if isinstance(callback, EarlyStopping) and callback.monitor == "val_loss" \
                and val is None:
            raise ValueError("EarlyStopping(monitor='val_loss'): expected validation rows; "
                             "found neither validation_data nor validation_split. Pass "
                             "one of them, or monitor='loss'.")


#: The loss names of categorical cross-entropy (one-hot rows, or class labels).
_CATEGORICAL = tuple(name for name, code in LOSS_NAMES.items()
                     if code == CATEGORICAL_CROSSENTROPY)


class TrainingDivergedError(FloatingPointError):
    """The training loss became NaN or infinite; the model keeps its last finite weights."""


class _Guard:
    """Which threads are using a Network: one writer (re-entrant) or any number of readers.

    A second thread that tries to train (or set the weights of) a network
    another thread is using, or to read one that another thread is training,
    gets a RuntimeError at once instead of a silently corrupted model.  The
    thread that holds the network may re-enter it: a callback inside ``fit``
    can call ``predict``, ``evaluate``, ``get_weights`` or ``set_weights``.
    """

    # Entered and left inline by the decorators below: a generator-based
    # context manager per call cost more than twice the lock itself.
    __slots__ = ("_mutex", "_writer", "_writing", "_depth", "_readers")

    def __init__(self):
        self._mutex = threading.Lock()
        self._writer = None     # ident of the writing thread
        self._writing = None    # the method it runs, for the message
        self._depth = 0
        self._readers = {}      # ident -> [depth, method]

    def _refuse(self, what, busy, training):
        doing = "trained" if training else "used"
        raise RuntimeError(
            f"{what}: expected a Network that no other thread is using; found this Network "
            f"is already being {doing} in another thread ({busy} is running there). Calls "
            "from several threads would mix their updates and corrupt the weights and "
            "optimizer state. Use one Network per thread (copy it with net.save() and "
            "fastbp.load(), or with set_weights(net.get_weights()) on a new Network), or "
            "wait for the other call to return.")

    def busy_reader(self, me):
        """A method another thread is reading with, or None (hold the lock)."""
        for ident, entry in list(self._readers.items()):
            if ident != me:
                return entry[1]
        return None


_get_ident = threading.get_ident


def _enter_writer(guard, what):
    """Take ``guard`` for writing in this thread (re-entrant), or raise RuntimeError.

    The writer's side of :class:`_Guard` for :func:`_writing`; :func:`_writes`
    inlines the same steps.
    """
    me = _get_ident()
    with guard._mutex:
        writer = guard._writer
        if writer is not None and writer != me:
            guard._refuse(what, guard._writing, True)
        readers = guard._readers
        if readers and (len(readers) > 1 or me not in readers):
            busy = guard.busy_reader(me)
            if busy is not None:  # else that reader has just left
                guard._refuse(what, busy, False)
        if guard._depth == 0:
            guard._writer, guard._writing = me, what
        guard._depth += 1


def _leave_writer(guard):
    """Give back one level of :func:`_enter_writer`."""
    with guard._mutex:
        guard._depth -= 1
        if guard._depth == 0:
            guard._writer = guard._writing = None


def refuse_nested_fit(networks, what):
    """Raise RuntimeError if this thread is training one of ``networks`` already.

    The guard lets the training thread re-enter its network (a callback may
    read it or set its weights), but a second ``fit`` from a callback would
    train on the buffers the outer one is using and leave both half done.
    """
    me = _get_ident()
    for network in networks:
        guard = network._guard
        if guard._writer == me and guard._writing in ("fit", "fit_many"):
            raise RuntimeError(
                f"{what}: expected a call outside the training of this Network; found it "
                f"called while {guard._writing} trains it in this thread (from one of its "
                "callbacks). A nested fit would train on the state the outer one is using. "
                "Set network.stop_training = True in the callback and call "
                f"{what} after the outer {guard._writing} returns.")


def _writes(method):
    """Run ``method`` holding the network for writing (see :class:`_Guard`).

    :func:`_enter_writer` and :func:`_leave_writer`, inlined like the
    reader's side below (``set_weights`` runs in callbacks' loops).
    """
    what = method.__name__
    trains = what == "fit"

    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        if trains:
            refuse_nested_fit((self,), what)
        guard = self._guard
        me = _get_ident()
        with guard._mutex:
            writer = guard._writer
            if writer is not None and writer != me:
                guard._refuse(what, guard._writing, True)
            readers = guard._readers
            if readers and (len(readers) > 1 or me not in readers):
                busy = guard.busy_reader(me)
                if busy is not None:  # else that reader has just left
                    guard._refuse(what, busy, False)
            if guard._depth == 0:
                guard._writer, guard._writing = me, what
            guard._depth += 1
        try:
            return method(self, *args, **kwargs)
        finally:
            with guard._mutex:
                guard._depth -= 1
                if guard._depth == 0:
                    guard._writer = guard._writing = None
    return guarded


@contextlib.contextmanager
def _writing(networks, what):
    """Hold every network of ``networks`` for writing (:func:`fastbp.fit_many`).

    All or none: when one is busy in another thread, those already taken
    are given back before the RuntimeError propagates.
    """
    held = []
    try:
        for network in networks:
            _enter_writer(network._guard, what)
            held.append(network)
        yield
    finally:
        for network in reversed(held):
            _leave_writer(network._guard)


def _enter_reader(guard, what):
    """Take ``guard`` for reading in this thread (re-entrant), or raise RuntimeError.

    The reader's side of :class:`_Guard` for :func:`_reading`; :func:`_reads`
    inlines the same steps.
    """
    me = _get_ident()
    with guard._mutex:
        writer = guard._writer
        if writer is not None and writer != me:
            guard._refuse(what, guard._writing, guard._writing in ("fit", "fit_many"))
        entry = guard._readers.get(me)
        if entry is None:
            guard._readers[me] = [1, what]
        else:
            entry[0] += 1


def _leave_reader(guard):
    """Give back one level of :func:`_enter_reader` (see :func:`_reads` on the lock)."""
    readers, me = guard._readers, _get_ident()
    entry = readers[me]
    if entry[0] == 1:
        del readers[me]
    else:
        entry[0] -= 1


@contextlib.contextmanager
def _reading(networks, what):
    """Hold every network of ``networks`` for reading (:func:`fastbp.predict_many`).

    For the whole call, so that no ``fit`` in another thread changes a
    network between two blocks of its rows.  All or none, as :func:`_writing`.
    """
    held = []
    try:
        for network in networks:
            _enter_reader(network._guard, what)
            held.append(network)
        yield
    finally:
        for network in reversed(held):
            _leave_reader(network._guard)


def _reads(method):
    """Run ``method`` as a reader: refused while another thread trains the network.

    The reader's side of :class:`_Guard`, inlined: these methods are called
    in tight loops (``predict`` on a few rows, ``get_weights`` in callbacks).
    """
    what = method.__name__

    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        guard = self._guard
        me = _get_ident()
        readers = guard._readers
        with guard._mutex:
            writer = guard._writer
            if writer is not None and writer != me:
                guard._refuse(what, guard._writing, guard._writing in ("fit", "fit_many"))
            entry = readers.get(me)
            if entry is None:
                readers[me] = [1, what]
            else:
                entry[0] += 1
        try:
            return method(self, *args, **kwargs)
        finally:
            # Without the lock: only this thread changes its own entry, and a
            # writer that still sees it refuses (it checks under the lock and
            # copies the entries before it looks at them).
            entry = readers[me]
            if entry[0] == 1:
                del readers[me]
            else:
                entry[0] -= 1
    return guarded


class _Unprinted:
    """A data source's ``settings`` view, its fingerprint left to be computed (``None``)."""

    def __init__(self, source):
        self.streamed, self.n_rows = source.streamed, source.n_rows

    def fingerprint(self):
        return None


def _check_verbose(verbose):
    """``"auto"``, 0 or 1 (bools too) -> 0 or 1."""
    if isinstance(verbose, str) and verbose == "auto":
        isatty = getattr(sys.stderr, "isatty", None)
        try:
            return 1 if isatty is not None and isatty() else 0
        except (OSError, ValueError):  # a closed or detached stderr
            return 0
    if isinstance(verbose, (bool, np.bool_)) or (isinstance(verbose, numbers.Integral)
                                                 and verbose in (0, 1)):
        return int(verbose)
    raise ValueError(f"verbose: expected 0, 1 or 'auto'; found {verbose!r}. Pass verbose=0 "
                     "(silent), verbose=1 (progress bar) or verbose='auto'.")


class Network:
    """A dense feed-forward network trained by backpropagation.

    Parameters
    ----------
    layers : sequence of int
        Layer widths: inputs, hidden..., outputs, e.g. ``[20, 64, 64, 1]``.
    activations : str or sequence of str, default "relu"
        Hidden-layer activation, or one per hidden layer: ``"linear"``,
        ``"relu"``, ``"sigmoid"`` or ``"tanh"``.
    output_activation : str, default "linear"
        One of the hidden activations, or ``"softmax"`` (output only, and
        only with a categorical loss).
    loss : str, default "mse"
        ``"mse"``, ``"mae"``, ``"huber"``, ``"binary_crossentropy"``,
        ``"categorical_crossentropy"`` (one-hot or probability rows ``y``)
        or ``"sparse_categorical_crossentropy"`` (``y`` holds integer class
        labels ``0..k-1``, shape ``(n,)`` or ``(n, 1)``).  The two
        categorical losses go with ``output_activation="softmax"`` and no
        other output; their per-row loss is the sum over the classes,
        computed from the logits, and averaged over the batch as Keras does.
    kernel_initializer : {"glorot_uniform", "he_uniform", "zeros"} or float
        A number sets every kernel weight to it.
    bias_initializer : "zeros" or float
    dtype : {"float64", "float32"}
        Parameters, arithmetic and converted inputs all use this type.
    backend : {"auto", "numpy", "numba", "cython", "cuda"}
        ``"auto"`` picks the fastest installed backend; a named backend that
        is missing raises an error.  The ``FASTBP_BACKEND`` setting, when
        set, forces its backend over this argument (with a warning if they
        differ).
    seed : int or None, default 0
        Seeds the initial weights and the per-epoch shuffles.

    Attributes
    ----------
    backend : str
        The resolved backend's name, e.g. ``"numba"``.
    optimizer : Optimizer or None
        The optimizer of the last ``fit``; its state lives with the network.
    stop_training : bool
        Set by a callback to end ``fit`` after the current epoch.

    Notes
    -----
    A network is used by one thread at a time: while one thread trains it
    (or sets its weights), calls from other threads raise RuntimeError rather
    than corrupt it; inference from several threads at once is fine when none
    trains.  Give each thread its own network (``fastbp.load`` of a saved one,
    or ``set_weights(net.get_weights())`` on a new one).
    """

    def __init__(self, layers, activations="relu", output_activation="linear", loss="mse",
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 dtype="float64", backend="auto", seed=0):
        self._guard = _Guard()
        sizes = validation.check_layer_sizes(layers)
        hidden = validation.check_activations(activations, len(sizes) - 2, ACTIVATIONS)
        output = validation.check_choice(output_activation, ACTIVATIONS, "output_activation")
        self._loss_name = validation.check_choice(loss, LOSS_NAMES, "loss")
        validation.check_output_pairing(hidden, output, self._loss_name, _CATEGORICAL)
        self._dtype = validation.check_dtype(dtype)
        self._kernel_init = validation.check_initializer(kernel_initializer, "kernel_initializer",
                                                KERNEL_INITIALIZERS, self._dtype)
        self._bias_init = validation.check_initializer(bias_initializer, "bias_initializer",
                                              BIAS_INITIALIZERS, self._dtype)
        if seed is not None:  # stored as a plain int: it goes into model files as JSON
            seed = validation.check_int(seed, "seed (or None)", minimum=0, example=0)
        choices = ("auto", *_backends.backend_names())
        requested = validation.check_choice(backend, choices, "backend")
        forced = validation.check_choice(_config.backend(), choices, "backend (from FASTBP_BACKEND)")
        if forced != "auto":  # the setting forces a backend, e.g. to rerun a script on numpy
            if requested not in ("auto", forced):
                validation.warn(f"FASTBP_BACKEND={forced} overrides backend={requested!r}.")
            requested = forced
        self.backend, self._kernels = _backends.resolve(requested)

        self._activation_names = hidden + [output]
        self._acts = np.array([ACTIVATIONS[a] for a in self._activation_names], dtype=np.int64)
        self._loss = LOSS_NAMES[self._loss_name]
        count = n_params(sizes)
        try:
            self._params = np.zeros(count, dtype=self._dtype)
        except (MemoryError, ValueError, OverflowError):
            raise ValueError(
                f"layer sizes: expected a network whose parameters fit in memory; found "
                f"{validation.show(list(sizes))}, which has {count:,} parameters "
                f"({count * self._dtype.itemsize / 2**30:,.1f} GiB in {self._dtype.name}). "
                "Use narrower or fewer layers.") from None
        self._sizes = np.array(sizes, dtype=np.int64)
        self._views = layer_views(self._params, sizes)

        # Two independent streams: initial weights, and the per-epoch shuffles.
        init_seq, shuffle_seq = np.random.SeedSequence(seed).spawn(2)
        self._seed = seed
        self._initialize(np.random.default_rng(init_seq))
        self._rng = np.random.default_rng(shuffle_seq)

        self.optimizer = None
        self._opt_code = None
        self._hyper = None
        self._state = None
        self._step = 0
        self.stop_training = False
        # Where an interrupted fit stopped (see _checkpoint; training_position),
        # and JSON metadata that travels with the model file (metadata).
        self._position = None
        self._extra = None
        # The backend's trainer while a fit runs (see _backends._contract.Trainer).
        self._trainer = None

    # ------------------------------------------------------------------ parameters
    def _initialize(self, rng):
        for kernel, bias in self._views:
            fan_in, fan_out = kernel.shape
            if isinstance(self._kernel_init, float):
                kernel[...] = self._kernel_init
            elif self._kernel_init == "zeros":
                kernel[...] = 0
            else:
                limit = math.sqrt(6.0 / (fan_in + fan_out) if self._kernel_init == "glorot_uniform"
                                  else 6.0 / fan_in)
                kernel[...] = rng.uniform(-limit, limit, size=kernel.shape)
            bias[...] = 0 if self._bias_init == "zeros" else self._bias_init

    @property
    def layers(self):
        """Layer widths, inputs first."""
        return tuple(int(s) for s in self._sizes)

    @property
    def dtype(self):
        """The parameter dtype."""
        return self._dtype

    @property
    def activations(self):
        """Activation names per layer, the output layer's last."""
        return list(self._activation_names)

    @property
    def loss(self):
        """The loss name."""
        return self._loss_name

    @property
    def training_position(self):
        """Where an interrupted ``fit`` stopped, or None.

        A ``fit`` stopped by Ctrl-C, or one that writes a checkpoint, leaves
        the network holding its training position until a later ``fit``
        finishes (``set_weights`` drops it); ``fit(..., resume=True)``
        continues from it, and :meth:`save` writes it with the model.

        Returns
        -------
        dict or None
            A copy of the position's JSON part: ``"epoch"`` (0-based, the one
            in progress), ``"rows"`` trained in it, ``"loss_sum"``,
            ``"epochs"`` (of the interrupted call), ``"chunk_rows"``,
            ``"stopped"``, ``"history"`` (per-epoch values so far),
            ``"settings"`` (what a resuming call must repeat: ``n_rows``,
            ``batch_size``, ``shuffle``, ...), ``"epoch_rng"`` and
            ``"callbacks"`` (their saved states).  The callbacks' arrays are
            left out.  Changing the copy changes nothing.
        """
        if self._position is None:
            return None
        return copy.deepcopy({key: value for key, value in self._position.items()
                              if key != "arrays"})

    @property
    def metadata(self):
        """JSON-able metadata saved with the model, or None.

        Written into the model file by :meth:`save` and read back by
        :func:`fastbp.load`; ``fastbp train`` stores its options here.

        Returns
        -------
        dict or None
            A copy: set the attribute to change it.

        Raises
        ------
        TypeError
            On assignment of something other than a dict or None.
        ValueError
            On assignment of a dict that JSON cannot represent.
        """
        return copy.deepcopy(self._extra)

    @metadata.setter
    def metadata(self, value):
        if value is not None and not isinstance(value, dict):
            raise TypeError(f"metadata: expected a dict or None; found {type(value).__name__}. "
                            "Pass e.g. net.metadata = {'note': 'trained on 2024 data'}.")
        if value is not None:
            try:  # stored as a file will hold it: tuples become lists, keys strings
                value = json.loads(json.dumps(value, allow_nan=True))
            except (TypeError, ValueError, RecursionError) as exc:
                raise ValueError(f"metadata: expected a dict JSON can represent (strings, "
                                 f"numbers, booleans, None, lists and dicts of them); {exc}. "
                                 "Convert other values, e.g. arrays with .tolist().") from None
        self._extra = value

    def count_params(self):
        """Total number of trainable parameters."""
        return self._params.size

    def _shapes(self):
        return [s for kernel, bias in self._views for s in (kernel.shape, bias.shape)]

    @_reads
    def get_weights(self):
        """Copies of the parameters in Keras layout: ``[K1, b1, K2, b2, ...]``.

        ``K`` has shape ``(inputs, units)`` and ``b`` shape ``(units,)``.
        """
        return [a.copy() for pair in self._views for a in pair]

    @_writes
    def set_weights(self, weights):
        """Set all parameters from a list in Keras layout (as :meth:`get_weights` returns).

        The training position of an interrupted fit, if any, is dropped: the
        weights no longer match it, so ``fit(resume=True)`` is refused after this.
        """
        arrays = validation.check_weights(weights, self._shapes(), self._dtype)
        for target, source in zip((a for pair in self._views for a in pair), arrays):
            target[...] = source
        self._position = None
        if self._trainer is not None:  # called from a callback: train on from these weights
            self._trainer.reload()

    # ------------------------------------------------------------------ inference
    def _source(self, X, y, names=("X", "y"), runner=None):
        """Checked data; with ``runner``, in-memory rows are converted and checked in parts."""
        convert = validation.to_dtype if runner is None else functools.partial(
            _parallel.to_dtype_in_parts, runner=runner)
        return make_source(X, y, self.layers[0], self.layers[-1], self._dtype, names,
                           labels=self._loss_name in SPARSE_LOSSES, convert=convert)

    def _runner(self, workers, warn=True):
        """A task runner for inference with ``workers`` (checked) threads.

        ``warn``: say that a backend holding the GIL takes turns (``fit`` has
        said so already when it computes ``val_loss``).
        """
        threads = _parallel.releases_gil(self._kernels)
        if warn and workers > 1 and not threads:
            _parallel.warn_in_turn(self._kernels, workers)
        return _parallel.inference_runner(workers, threads)

    @_reads
    def predict(self, X, workers=1):
        """Network outputs for the rows of ``X``; shape ``(n_samples, n_outputs)``.

        Parameters
        ----------
        X : array_like, shape (n_samples, n_inputs)
        workers : int, default 1
            Threads to split the rows across (-1: every usable core); each
            row's output is the same whatever the number.
        """
        workers = _parallel.check_workers(workers)
        X = validation.check_features(X, self.layers[0])
        out = np.empty((X.shape[0], self.layers[-1]), dtype=self._dtype)
        runner = self._runner(workers)
        step = _config.chunk_rows() * workers
        errstate = _parallel.callers_errstate()
        for start in range(0, X.shape[0], step):
            parts = _parallel.split_rows(min(step, X.shape[0] - start), workers)

            def task(k, start=start, parts=parts):
                lo, hi = start + parts[k][0], start + parts[k][1]
                # Each thread converts and checks its own rows: done once for the
                # whole block before the threads, the check was ~6% of a one-thread
                # W2 predict, run serially.  The lowest part's error is raised first,
                # so a bad value is reported at the same row whatever ``workers``.
                with errstate():
                    rows = validation.to_dtype(X[lo:hi], self._dtype, "X", first_row=lo)
                self._kernels.predict(self._params, self._sizes, self._acts, rows, out[lo:hi])

            runner.run(task, len(parts))
        return out

    @_reads
    def _predict_block(self, X, out):
        """Outputs of the validated rows ``X`` (network dtype) into ``out`` (predict_many)."""
        self._kernels.predict(self._params, self._sizes, self._acts, X, out)

    def _blocks_in_parts(self, source, workers, work, block_rows=None, runner=None):
        """``work(X, Y)`` on every block of ``source``, split in parts: results in row order.

        Blocks of ``block_rows`` rows (default: the ``chunk_rows`` setting of
        this thread) times ``workers``, on ``runner`` (default: the inference
        runner of ``workers`` threads).
        """
        runner = self._runner(workers) if runner is None else runner
        results = []
        block_rows = _config.chunk_rows() if block_rows is None else block_rows
        for X, Y in source.blocks(block_rows * workers):
            parts = _parallel.split_rows(X.shape[0], workers)

            def task(k, X=X, Y=Y, parts=parts):
                lo, hi = parts[k]
                return work(k, X[lo:hi], Y[lo:hi])

            results.extend(runner.run(task, len(parts)))
        return results

    def _mean_loss(self, source, workers=1, block_rows=None, runner=None):
        def part_loss(k, X, Y):
            return self._kernels.loss_sum(self._params, self._sizes, self._acts, self._loss, X, Y)

        total = 0.0  # added in row order: the same sum for a given number of workers
        for value in self._blocks_in_parts(source, workers, part_loss, block_rows, runner):
            total += value
        return total / source.n_rows

    @_reads
    def evaluate(self, X, y, workers=1):
        """Mean loss over the rows of ``X``/``y`` (the quantity ``fit`` reports).

        ``workers`` threads (-1: every usable core) split the rows; their
        loss sums are added in row order.
        """
        workers = _parallel.check_workers(workers)
        runner = self._runner(workers)
        return self._mean_loss(self._source(X, y, runner=runner), workers, runner=runner)

    @_reads
    def gradients(self, X, y, workers=1):
        """d(mean loss)/d(parameter) at the current weights, in :meth:`get_weights` layout.

        ``workers`` threads (-1: every usable core) split the rows; their
        gradient sums are added in row order.
        """
        workers = _parallel.check_workers(workers)
        runner = self._runner(workers)
        source = self._source(X, y, runner=runner)
        scratch = [np.empty_like(self._params) for _ in range(workers)]

        def part_gradient(k, X, Y):
            self._kernels.loss_and_gradients(self._params, self._sizes, self._acts, self._loss,
                                             X, Y, scratch[k])
            return scratch[k].copy()

        total = np.zeros_like(self._params)
        for grad in self._blocks_in_parts(source, workers, part_gradient, runner=runner):
            total += grad
        total /= source.n_rows
        return [a.copy() for pair in layer_views(total, self._sizes) for a in pair]

    # ------------------------------------------------------------------ training
    def _fit_sources(self, X, y, validation_data, validation_split):
        """``(train, val)`` sources of a fit: checked and converted once (``val`` may be None).

        ``validation_split`` is already checked; ``validation_data``, when
        given, overrides it (as in Keras).  :func:`fastbp.fit_many` calls this
        once, on its first network, for all of them.
        """
        train = self._source(X, y)
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                found = (f"{len(validation_data)} items" if isinstance(validation_data,
                                                                        (tuple, list))
                         else type(validation_data).__name__)
                raise ValueError("validation_data: expected a tuple (X_val, y_val); found "
                                 f"{found}. Pass validation_data=(X_val, y_val).")
            val = self._source(*validation_data,
                               names=("validation_data[0]", "validation_data[1]"))
        elif validation_split:
            train, val = train.split(validation_split)
        return train, val

    def _bind_optimizer(self, optimizer):
        """Keep the state when the optimizer configuration is unchanged, else start fresh."""
        if optimizer is None:
            optimizer = self.optimizer if self.optimizer is not None else SGD()
        if not isinstance(optimizer, (SGD, Adam, RMSprop)):  # the Optimizer base has no rule
            raise TypeError(f"optimizer: expected fastbp.SGD, fastbp.Adam or fastbp.RMSprop; "
                            f"found {type(optimizer).__name__}. Pass e.g. "
                            "optimizer=fastbp.Adam(learning_rate=0.001).")
        if optimizer != self.optimizer:
            self.optimizer = optimizer
            self._opt_code, self._hyper = optimizer._pack()
            self._state = np.zeros((N_STATE_SLOTS, self._params.size), dtype=self._dtype)
            self._step = 0

    def _snapshot(self, shuffle_state=False):
        """The trainable state; with ``shuffle_state``, the shuffle generator's too.

        A chunk's rollback needs no generator state (the epoch drew from it
        before the chunk began); a whole fit's rollback does.
        """
        state = None if self._state is None else self._state.copy()
        rng = self._rng.bit_generator.state if shuffle_state else None
        return (self._params.copy(), state, self._step, self.optimizer, self._opt_code,
                self._hyper, rng)

    def _restore(self, snapshot):
        params, state, self._step, self.optimizer, self._opt_code, self._hyper, rng = snapshot
        self._params[...] = params
        self._state = state
        if rng is not None:
            self._rng.bit_generator.state = rng

    @_writes
    def fit(self, X, y, epochs=1, batch_size=32, optimizer=None, shuffle=True,
            validation_data=None, validation_split=0.0, callbacks=None, verbose="auto",
            checkpoint=None, resume=False, workers=1, average_every=None):
        """Train with minibatch gradient descent; Keras's semantics.

        Parameters
        ----------
        X : array_like, shape (n_samples, n_inputs)
            Inputs; a ``np.memmap`` is streamed from disk block by block.
        y : array_like, shape (n_samples,) or (n_samples, n_outputs)
        epochs : int, default 1
        batch_size : int, default 32
            1 is per-sample SGD.  Batches are consecutive slices of the
            (shuffled) row order; the last may be short.  A batch size larger
            than the training rows makes one batch of all of them (as in Keras).
        optimizer : SGD, Adam, RMSprop or None
            None continues with the network's current optimizer (SGD() the
            first time).  An optimizer equal to the current one continues its
            state; a different one starts fresh state.
        shuffle : bool, default True
            A fresh seeded permutation each epoch (in memory: computed chunk
            by chunk from four keys drawn per epoch, see the user guide's
            "The shuffle"; memory-mapped data: blocks and the rows within
            them in a random order).
        validation_data : (X_val, y_val), optional
            Rows to compute ``val_loss`` on after each epoch; when given,
            ``validation_split`` is ignored (as in Keras).
        validation_split : float in [0, 1), default 0
            Hold out the last fraction of the rows (before shuffling).
        callbacks : list of Callback, optional
        verbose : {"auto", 0, 1}
            1 shows a progress bar; "auto" shows it when stderr is a terminal.
        checkpoint : str or path-like, optional
            Write the model with its training position to this file, atomically,
            after every epoch and when Ctrl-C interrupts the fit.
        resume : bool, default False
            Continue the fit that was interrupted (in this process, or in the
            one that wrote the checkpoint now loaded with :func:`fastbp.load`):
            the same epoch, skipping the rows it had done, with its history and
            callback states.  Pass the same data, ``batch_size``, ``shuffle``
            and validation split; ``epochs`` counts from the start of the
            original fit.  The final weights equal an uninterrupted run's.
            Only a fit stopped by Ctrl-C (or one that wrote a checkpoint) can be
            resumed: after any other exception (a callback's, a divergence) the
            network holds no position and ``resume=True`` is refused, because
            the model is no longer where any recorded position says.
        workers : int, default 1
            Threads to train with; -1 uses every core this process may run on
            (more than that is capped, with a warning).  1 is the serial,
            Keras-exact run.  With more, a minibatch of at least 64 rows is
            split across the threads and its gradient sums added in a fixed
            order before one step (Keras's semantics, up to summation order);
            smaller batches and per-sample training use local SGD: each worker
            trains a replica on its own share of the shuffled rows for
            ``average_every`` rows, then the replicas (weights and optimizer
            state) are averaged and all continue from the average.  Every
            setting is deterministic for a given seed and number of workers;
            see the user guide's "Using every core".  The NumPy and CUDA
            backends run the workers' shares one after another (same results,
            no speedup; a warning says so).
        average_every : int, optional
            Local SGD only: rows each worker trains between two averages,
            rounded up to whole batches.  The default makes a round about
            75 ms of kernel time (about 160 million parameter-rows divided
            by the parameter count), at most ``chunk_rows / workers`` rows
            (a round is one chunk: streamed files stay a chunk in memory).
            A value above the number of training rows trains as that number
            (one round per epoch either way).

        Returns
        -------
        History
            ``history.history["loss"]``: per epoch, the batch-size-weighted
            mean of batch losses, each taken before that batch's update;
            ``"val_loss"`` when validation data is given.

        Raises
        ------
        TrainingDivergedError
            The loss became NaN or inf; the model keeps its last finite weights.
        RuntimeError
            Another thread is already training or using this network.
        KeyboardInterrupt
            Ctrl-C stops training after the chunk of rows in progress (a second
            Ctrl-C at once, undoing that chunk).  The model keeps the state after
            the last completed chunk and its training position, so that
            ``fit(..., resume=True)`` (or ``save`` and later ``load``) continues it.
        """
        epochs = validation.check_positive_int(epochs, "epochs")
        batch_size = validation.check_positive_int(batch_size, "batch_size")
        shuffle = validation.check_bool(shuffle, "shuffle")
        resume = validation.check_bool(resume, "resume")
        validation_split = validation.check_fraction(validation_split, "validation_split")
        if optimizer is not None and not isinstance(optimizer, (SGD, Adam, RMSprop)):
            self._bind_optimizer(optimizer)  # raises the type error
        if optimizer is not None:
            optimizer._check_dtype(self._dtype)
        verbose = _check_verbose(verbose)
        workers = _parallel.check_workers(workers)
        average_every = _parallel.check_average_every(average_every)
        checkpoint = _checkpoint.check_path(checkpoint)
        callbacks = _check_callbacks(callbacks)
        train, val = self._fit_sources(X, y, validation_data, validation_split)
        _check_monitored(callbacks, val)
        # A batch larger than the data is one batch of all rows (as in Keras);
        # the kernels only ever see the clamped size, and a position records it
        # (its chunk size is a multiple of it).  A resume with the same
        # batch_size clamps to the same value: its data must be the same.
        batch_size = min(batch_size, train.n_rows)
        parallel = _parallel.Plan(workers, batch_size, average_every, self._params.size,
                                  _config.chunk_rows(), train.n_rows)
        # The data's fingerprint reads about 1,150 scattered rows (as many pages
        # of a memory-map): only computed when a position is kept or a resume
        # checked, once per fit.
        resume_settings = _checkpoint.settings(_Unprinted(train), val, batch_size, shuffle,
                                               validation_split, parallel.workers,
                                               parallel.average_every)

        def settings():
            if resume_settings["fingerprint"] is None:
                resume_settings["fingerprint"] = train.fingerprint()
            return resume_settings

        position = None
        if resume:
            if self._position is not None:
                settings()
            _checkpoint.check_resume(self._position, resume_settings, optimizer,
                                     self.optimizer)
            position = self._position

        # From here on the model changes.  It keeps a training position only
        # where that position is exact (keep_position, just before the
        # KeyboardInterrupt below): after any other exception a resume would
        # repeat or skip rows, so it is refused ("found none") instead.
        previous_position, self._position = self._position, None
        rolled_back = False
        own_interrupt = None
        before = self._snapshot(shuffle_state=True)
        self._bind_optimizer(optimizer)
        history = History()
        if verbose and not any(isinstance(c, ProgbarLogger) for c in callbacks):
            callbacks.append(ProgbarLogger())
        for callback in callbacks:
            if isinstance(callback, ProgbarLogger):
                callback.set_params(epochs, train.n_rows)
        callbacks = [history, *callbacks]
        for callback in callbacks:
            callback.set_network(self)
        self.stop_training = False
        # A chunk is whole batches, and with local SGD whole rounds: its end is
        # an averaging point, where Ctrl-C, checkpoints and resume find one model.
        chunk_rows = max(1, _config.chunk_rows() // parallel.unit_rows) * parallel.unit_rows
        epoch, start_row, loss_sum = 0, 0, 0.0
        if position is not None:
            # Continue inside the interrupted epoch: its chunk size (which fixes
            # the order of streamed blocks), its shuffle redrawn from the state
            # at its start, the rows already trained skipped.
            chunk_rows = position["chunk_rows"]
            epoch, start_row, loss_sum = position["epoch"], position["rows"], position["loss_sum"]
            self._rng.bit_generator.state = position["epoch_rng"]
            history.history = {key: list(values) for key, values in position["history"].items()}
            history.epoch = list(range(len(history.history.get("loss", []))))
            self.stop_training = bool(position.get("stopped", False))

        failed_save = None

        def keep_position(**where):
            nonlocal failed_save
            self._position = _checkpoint.capture(epochs=epochs, chunk_rows=chunk_rows,
                                                 resume_settings=settings(),
                                                 history=history.history,
                                                 callbacks=callbacks, **where)
            if checkpoint is not None:
                try:
                    self.save(checkpoint)
                except BaseException as exc:
                    # A full disk, a second Ctrl-C: the file is not written, but
                    # the model is exactly at the position just kept.
                    failed_save = exc
                    raise

        stopped = self.stop_training
        first_epoch = epoch
        streamed = train.streamed or (val is not None and val.streamed)
        try:
            for callback in callbacks:
                callback.on_train_begin()
            if position is not None:
                _checkpoint.restore_callbacks(position, callbacks)
            self.stop_training = stopped
            # One trainer for the whole fit: the backend lays out its working
            # buffers once; the model's own buffers are written after every chunk
            # that ends finite, so they always hold the last accepted state.
            self._trainer = parallel.open_trainer(
                self._kernels, self._params, self._state, self._sizes, self._acts,
                self._loss, batch_size, self._opt_code, self._hyper)
        except BaseException:
            # Nothing has trained (a callback's on_train_begin raised, or the
            # buffers could not be made): the model, its optimizer and its
            # training position are given back as they were before this call.
            parallel.close()
            self._restore(before)
            self._position = previous_position
            raise
        try:
            with _deferred_sigint() as interrupted:
                while epoch < epochs and not self.stop_training:
                    epoch_rng = self._rng.bit_generator.state
                    for callback in callbacks:
                        callback.on_epoch_begin(epoch, {"rows": start_row})
                    try:
                        rows, loss_sum, finished = self._train_epoch(
                            train, shuffle, batch_size, chunk_rows, epoch, callbacks,
                            interrupted, start_row, loss_sum)
                        if finished:
                            logs = {"loss": loss_sum / rows}
                            if val is not None:
                                logs["val_loss"] = self._mean_loss(
                                    val, workers, runner=self._runner(workers, warn=False))
                    except ValueError:
                        # Bad data in a streamed block, training or validation. The first
                        # epoch reads every block, so it is the only one that can find
                        # one: leave the model as it was before this fit.
                        if streamed and epoch == first_epoch:
                            self._restore(before)
                            rolled_back = True
                        raise
                    if not finished:  # Ctrl-C: stopped at a chunk boundary, state consistent
                        keep_position(epoch=epoch, rows=rows, loss_sum=loss_sum,
                                      epoch_rng=epoch_rng, stopped=False)
                        own_interrupt = KeyboardInterrupt()
                        raise own_interrupt
                    for callback in callbacks:
                        callback.on_epoch_end(epoch, logs)
                    epoch, start_row, loss_sum = epoch + 1, 0, 0.0
                    stop_now = interrupted()  # Ctrl-C during validation or callbacks
                    if checkpoint is not None or stop_now:
                        keep_position(epoch=epoch, rows=0, loss_sum=0.0,
                                      epoch_rng=self._rng.bit_generator.state,
                                      stopped=self.stop_training)
                    if stop_now:
                        own_interrupt = KeyboardInterrupt()
                        raise own_interrupt
        except BaseException as exc:
            if exc is not own_interrupt and exc is not failed_save:
                # Not a Ctrl-C stop at a known point, nor a failed write of the
                # position just kept: the model may be anywhere past the last
                # kept position.  Only a rollback to the state before this fit
                # makes the position held then exact again.
                self._position = previous_position if rolled_back else None
            for callback in callbacks:  # don't leave a half-drawn bar behind
                if isinstance(callback, ProgbarLogger):
                    callback.on_train_end()
            raise
        finally:
            self._trainer.close()
            self._trainer = None
            parallel.close()
        self._position = None
        for callback in callbacks:
            callback.on_train_end()
        return history

    def _train_epoch(self, source, shuffle, batch_size, chunk_rows, epoch, callbacks,
                     interrupted, start_row=0, loss_sum=0.0):
        """One epoch from row ``start_row`` on; ``loss_sum`` is the loss of the rows before.

        Returns ``(rows, loss_sum, finished)``.  ``finished`` is False when
        Ctrl-C stopped the epoch at a chunk boundary: the model then holds the
        state after the last completed chunk, and ``rows``/``loss_sum`` say how
        far the epoch got.
        """
        rows = start_row
        for X, Y, order in source.chunks(self._rng, shuffle, chunk_rows, start_row):
            trained = self._train_chunk(X, Y, order, batch_size, epoch, rows)
            if trained is None:
                return rows, loss_sum, False
            loss_sum += trained[0]
            rows += trained[1]
            logs = {"rows": rows, "loss": loss_sum / rows}
            for callback in callbacks:
                callback.on_chunk_end(epoch, logs)
            if interrupted():
                return rows, loss_sum, False
        return rows, loss_sum, True

    def _train_chunk(self, X, Y, order, batch_size, epoch, rows):
        """Train rows ``order`` of one chunk with the open trainer: ``(loss_sum, rows_done)``.

        After a finite chunk the model's buffers hold its result and the step
        count has advanced; otherwise they keep the state before it and
        TrainingDivergedError is raised (``rows`` is the rows of the epoch
        before this chunk, for the message).  Returns None when a second
        Ctrl-C interrupted the chunk: the model then holds the state before it.
        """
        trainer = self._trainer
        try:
            chunk_loss, done = trainer.train(X, Y, order, self._step)
        except KeyboardInterrupt:
            # A second Ctrl-C inside a long chunk (the NumPy backend loops in
            # Python): the model's buffers still hold the state before the
            # chunk, so model and position agree; the trainer follows them.
            trainer.reload()
            return None
        finite = trainer.finite()
        if finite:  # the batches before a non-finite loss count
            trainer.store()
            # local SGD: the steps one replica took; else one per batch
            steps = getattr(trainer, "last_steps", None)
            self._step += -(-done // batch_size) if steps is None else steps
        else:  # an update overflowed the weights: back to the state before the chunk
            trainer.reload()
        if done < len(order) or not finite:
            raise TrainingDivergedError(
                f"training diverged in epoch {epoch + 1} after {rows + done} rows: the loss or "
                "the weights became NaN or infinite. The model keeps its last finite weights. "
                "Lower the learning rate, scale the inputs and targets, or use a bounded "
                "loss such as 'huber'.")
        return chunk_loss, done

    # ------------------------------------------------------------------ reporting, files
    def summary(self, print_fn=print):
        """Print a Keras-like table of the layers and their parameter counts."""
        rows = [("Layer (type)", "Output Shape", "Param #")]
        rows.append(("input (Input)", f"(None, {self.layers[0]})", "0"))
        for i, ((kernel, bias), act) in enumerate(zip(self._views, self._activation_names)):
            rows.append((f"dense_{i} (Dense, {act})", f"(None, {kernel.shape[1]})",
                         f"{kernel.size + bias.size:,}"))
        widths = [max(len(r[c]) for r in rows) + 2 for c in range(3)]
        line = "-" * sum(widths)

        def fmt(r):
            return "".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip()

        text = [f'Model: "fastbp.Network" (backend={self.backend}, dtype={self._dtype.name}, '
                f'loss={self._loss_name})', line, fmt(rows[0]), "=" * sum(widths)]
        text += [fmt(r) for r in rows[1:]]
        text += ["=" * sum(widths), f"Total params: {self.count_params():,}",
                 f"Trainable params: {self.count_params():,}", line]
        print_fn("\n".join(text))

    def get_config(self):
        """The constructor arguments that rebuild this architecture."""
        return {"layers": list(self.layers), "activations": self._activation_names[:-1],
                "output_activation": self._activation_names[-1], "loss": self._loss_name,
                "kernel_initializer": self._kernel_init, "bias_initializer": self._bias_init,
                "dtype": self._dtype.name, "seed": self._seed}

    @_reads
    def save(self, path):
        """Write weights, architecture and optimizer state to one file, atomically.

        Load it back with :func:`fastbp.load`.
        """
        _io.write_model_file(path, *self._saved_state())

    def _saved_state(self):
        """``(state, arrays)`` for ``_io.write_model_file``: all a model file holds."""
        arrays = {"params": self._params}
        if self._state is not None:
            arrays["optimizer_state"] = self._state
        state = {"config": self.get_config(),
                 "optimizer": None if self.optimizer is None else self.optimizer.get_config(),
                 "step": int(self._step), "shuffle_rng": self._rng.bit_generator.state,
                 "extra": self._extra, "training": self._position}
        return state, arrays

    @classmethod
    def _from_state(cls, state, arrays, backend="auto"):
        """The network a model file describes: ``(state, arrays)`` of ``_io.read_model_file``.

        Raises ``_io.InvalidContent`` when the file's config does not build a
        network, ImportError when ``backend`` is not installed.
        """
        try:
            network = cls(**state["config"], backend=backend)
        except ImportError:  # a missing compiled backend: not the file's fault
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            # the backend name and setting are checked before: this is the file's config
            raise _io.InvalidContent(f"config: {exc}") from None
        network._params[...] = arrays["params"]
        if state["optimizer"] is not None:
            network._bind_optimizer(Optimizer.from_config(state["optimizer"]))
            network._state[...] = arrays["optimizer_state"]
            network._step = state["step"]
        network._rng.bit_generator.state = state["shuffle_rng"]
        network._extra = state["extra"]
        network._position = state["training"]
        return network

    # Pickling (multiprocessing, joblib, scikit-learn's GridSearchCV(n_jobs=...)) goes
    # through the model file's contents, so a pickle holds exactly what save() writes and
    # is rebuilt by the checks load() runs; the lock and the trainer are never pickled.
    def __getstate__(self):
        state, arrays = self._saved_state()
        return {"state": copy.deepcopy(state), "arrays": {k: v.copy() for k, v in arrays.items()},
                "backend": self.backend}

    def __setstate__(self, pickled):
        network = Network._from_state(pickled["state"], pickled["arrays"], pickled["backend"])
        self.__dict__.update(network.__dict__)

    def __repr__(self):
        return (f"Network({list(self.layers)}, activations={self._activation_names[:-1]}, "
                f"output_activation={self._activation_names[-1]!r}, loss={self._loss_name!r}, "
                f"dtype={self._dtype.name!r}, backend={self.backend!r})")


def load(path, backend="auto"):
    """Load a network saved with :meth:`Network.save`.

    Parameters
    ----------
    path : str or path-like
    backend : str, default "auto"
        The backend of the loaded network.

    Returns
    -------
    Network
        With the saved weights, optimizer, optimizer state and shuffle state,
        so that a further ``fit`` continues the saved training.  A file written
        by ``fit(checkpoint=...)`` also restores the training position, which
        ``fit(..., resume=True)`` continues.

    Raises
    ------
    ValueError
        The file is not a model file this fastbp reads (damaged, truncated,
        crafted or of another format), or ``backend`` is not a backend name.
    OSError
        The file cannot be opened or read.
    """
    # the caller's argument first, so that its error is not blamed on the file
    _check_backend(backend)
    return load_contents(path, _io.read_model_file(path), backend)


def load_contents(path, contents, backend="auto"):
    """The network of ``contents = _io.read_model_file(path)``: a file read and checked once.

    Internal (the command line's): lets a caller look at the header
    (``contents[0]``, e.g. its ``extra``) before choosing the backend, without
    reading the file a second time.  Errors as :func:`load`'s.
    """
    _check_backend(backend)
    state, arrays = contents
    try:
        return Network._from_state(state, arrays, backend)
    except _io.InvalidContent as exc:
        raise _io.corrupt(path, str(exc)) from None


def _check_backend(backend):
    """Refuse a bad ``backend`` argument or ``FASTBP_BACKEND`` setting (ValueError)."""
    choices = ("auto", *_backends.backend_names())
    validation.check_choice(backend, choices, "backend")
    validation.check_choice(_config.backend(), choices, "backend (from FASTBP_BACKEND)")


@contextlib.contextmanager
def _deferred_sigint():
    """Turn the first Ctrl-C into a flag that the loop checks after each chunk.

    The kernels run whole chunks without returning to Python; deferring the
    interrupt to a chunk boundary keeps weights, optimizer state and step count
    consistent.  A second Ctrl-C interrupts at once, or, while worker threads
    train, as soon as their current tasks have ended (see ``_parallel``).
    """
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag.is_set
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        if flag.is_set():
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        flag.set()

    try:
        signal.signal(signal.SIGINT, handler)
    except ValueError:  # signals unavailable (embedded interpreter)
        yield flag.is_set
        return
    try:
        yield flag.is_set
    finally:
        signal.signal(signal.SIGINT, previous)

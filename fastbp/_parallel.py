"""Several cores for one network: local SGD replicas, split minibatches, split inference.

Between the API layer (``fastbp.Network``) and the backends: everything here
is written once, over the backend contract (``_backends._contract``), so every
backend runs the same algorithm and the NumPy backend stays the reference for
``workers > 1`` too.  Threads run the compiled kernels, which release the GIL;
a backend that cannot release it (``numpy``, ``cuda``) runs the same work one
task after another in the calling thread, with the same results.

Two trainers implement the contract's :class:`~fastbp._backends._contract.Trainer`
over ``workers`` replicas or threads; ``fit`` picks one per call:

:class:`LocalSGDTrainer` (per-sample and small minibatches)
    Each worker holds a replica of the parameters and the optimizer state.
    A *round* takes the next ``workers * average_every`` rows of the epoch's
    (shuffled) order; worker ``k`` trains its own contiguous share of them,
    in consecutive batches, then the replicas that trained are averaged
    (parameters and the used optimizer-state rows; summed in worker order,
    divided by their count) and every replica continues from the average.
    With one worker this is serial SGD exactly.

:class:`SplitBatchTrainer` (minibatches of at least :data:`SPLIT_BATCH_MIN` rows)
    Each batch's rows are split into ``workers`` contiguous parts; every part's
    loss and gradient sums are computed in parallel at the same weights, added
    in part order, and one optimizer step (the reference's formulas) is taken:
    Keras's semantics, up to the order of the summation.  A splitter that
    ``trains_chunks`` (Numba) runs one compiled call per thread for a whole
    chunk, the threads meeting at barriers in compiled code; the others get
    one task per part per batch.
"""

import math
import os
import threading
import time

import numpy as np

from . import _validation as validation
from ._backends import _contract

#: Minibatches with at least this many rows are split exactly across the workers;
#: smaller ones train replicas (local SGD).  Below it a part is too small for the
#: per-batch cost of handing work to the threads and adding their gradients.
SPLIT_BATCH_MIN = 64

#: Kernel work per averaging round, in parameter-rows (rows x parameters): about
#: 75 ms per round of per-sample SGD on one core, so that averaging (a few
#: parameter-sized copies) costs well under 1% of the round.
_ROUND_WORK = 1.6e8


def usable_cores():
    """The number of CPU cores this process may run on (its affinity mask)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def check_workers(workers, name="workers"):
    """``workers`` as a positive int: -1 means every usable core; more than those is capped."""
    if isinstance(workers, (bool, np.bool_)) or not isinstance(workers, (int, np.integer)) \
            or (workers < 1 and workers != -1):
        raise ValueError(f"{name}: expected a positive integer, or -1 for every core this "
                         f"process may use ({usable_cores()} here); found "
                         f"{validation.show(workers)}. Pass e.g. {name}=2 or {name}=-1.")
    cores = usable_cores()
    if workers == -1:
        return cores
    if workers > cores:
        validation.warn(f"{name}={int(workers)} is more than the {cores} cores this process "
                        f"may use; using {cores} (threads beyond the cores only take turns).")
        return cores
    return int(workers)


def check_average_every(average_every):
    """``average_every`` as a positive int, or None (the default)."""
    if average_every is None:
        return None
    return validation.check_int(average_every, "average_every (or None)", minimum=1,
                                example=10000)


def default_average_every(n_params, batch_size):
    """Rows per worker between averages: about 75 ms of kernel time, whole batches."""
    rows = max(batch_size, int(_ROUND_WORK / max(1, n_params)))
    return round_to_batches(rows, batch_size)


def clamp_average_every(average_every, n_rows):
    """``average_every``, at most ``n_rows``: a longer round is the same single round.

    No worker trains more than the epoch's rows between two averages, so every
    larger value trains exactly the same; the clamp keeps the round (and the
    chunk sizes built on it) within what a saved training position can hold.
    """
    return min(average_every, n_rows)


def round_to_batches(rows, batch_size):
    """``rows`` rounded up to a whole number of batches."""
    return -(-rows // batch_size) * batch_size


def releases_gil(backend):
    """Whether ``backend``'s kernels run outside the GIL (threads then run in parallel)."""
    return bool(getattr(backend, "RELEASES_GIL", False))


def warn_in_turn(backend, workers):
    """Warn that ``backend`` runs the ``workers`` tasks one after another (it holds the GIL)."""
    validation.warn(f"workers={workers}: the {backend.NAME!r} backend holds the GIL, so the "
                    f"{workers} workers' shares run one after another in this thread (the "
                    "same results as the compiled CPU backends, no speedup). Use "
                    "backend='numba' or 'cython' for parallel work.")


class _Worker(threading.Thread):
    """A pool thread that runs one task per :meth:`start_task`, handed over with two raw locks.

    Raw locks are CPython's cheapest wake-up (one futex each way): a
    ``concurrent.futures`` pool's queue and condition variables cost several
    times more per task, which a split minibatch pays on every batch.
    """

    def __init__(self, index):
        super().__init__(name=f"fastbp-worker-{index}", daemon=True)
        self._go, self._done = threading.Lock(), threading.Lock()
        self._go.acquire()
        self._done.acquire()
        self._task = self._result = self._error = None
        self._ended = False
        self._index = index
        self.start()

    def run(self):
        while True:
            self._go.acquire()
            task = self._task
            if task is None:  # closed
                return
            try:
                self._result, self._error = task(self._index), None
            except BaseException as exc:  # handed to the caller, not lost in this thread
                self._result, self._error = None, exc
            self._done.release()
            self._ended = True  # after the release (see finish)

    def start_task(self, task):
        self._task = task
        self._ended = False
        self._go.release()

    def finish(self):
        """Wait for the task; its result, or raise its exception.

        A Ctrl-C during the wait is raised only once the task has ended: the
        task would otherwise go on writing into buffers its caller is about
        to reuse, and its late completion would be taken for the next task's.
        """
        interrupt = None
        try:
            self._done.acquire()
        except KeyboardInterrupt as exc:
            interrupt = exc
        if interrupt is not None:
            # Raised during the wait, or just after the lock was taken: the two
            # cannot be told apart.  Wait until the task has released the lock,
            # then hand over through a fresh, taken lock, so the next task starts
            # from a known state either way.
            while True:
                try:
                    while not self._ended:
                        time.sleep(0.001)
                    break
                except KeyboardInterrupt:
                    pass
            done = threading.Lock()
            done.acquire()
            self._done = done
        self._task = None
        error, self._error = self._error, None
        if interrupt is not None:
            raise interrupt
        if error is not None:
            raise error
        return self._result

    def stop(self):
        self._task = None
        self._go.release()
        self.join()


class TaskRunner:
    """Runs one task per worker and returns their results in worker order.

    With threads, the caller runs task 0 itself and ``workers - 1`` pool
    threads the others; without (``threads=False``: a backend that holds the
    GIL), the tasks run one after another in the caller.  Either way every
    task has finished when :meth:`run` returns or raises, so no thread still
    writes into a buffer the caller is about to read or reset.  One caller
    at a time (a lock makes concurrent callers wait their turn).
    """

    def __init__(self, workers, threads=True):
        self.workers = workers
        self._threads = []
        self._lock = threading.Lock()
        if threads and workers > 1:
            self._threads = [_Worker(k) for k in range(1, workers)]

    def run(self, task, n_tasks=None, on_error=None):
        """``[task(0), ..., task(n_tasks - 1)]`` (``n_tasks`` defaults to ``workers``).

        ``on_error`` (tasks that wait for each other, threads only) is called
        when task 0 in the calling thread raises, or a Ctrl-C lands before it
        started, before waiting for the others: it must release them.
        """
        n_tasks = self.workers if n_tasks is None else n_tasks
        if not self._threads or n_tasks == 1:
            return [task(k) for k in range(n_tasks)]
        with self._lock:
            helpers = []  # the pool threads started on this task (the ones to wait for)
            try:
                for worker in self._threads[:n_tasks - 1]:
                    worker.start_task(task)
                    helpers.append(worker)
                first = task(0)
            except BaseException:
                if on_error is not None:
                    on_error()
                raise
            finally:
                # a Ctrl-C or an error in task 0: let the others finish before unwinding
                results, errors = [], []
                for worker in helpers:
                    try:
                        results.append(worker.finish())
                    except BaseException as exc:
                        errors.append(exc)
            if errors:  # a Ctrl-C first, else the lowest worker's error
                raise next((e for e in errors if isinstance(e, KeyboardInterrupt)), errors[0])
            return [first] + results

    @property
    def threaded(self):
        """Whether the tasks run on threads at once (else one after another)."""
        return bool(self._threads)

    def close(self):
        for worker in self._threads:
            worker.stop()
        self._threads = []


def batch_shares(n_rows, batch_size, workers):
    """``[(start, stop), ...]``: one contiguous share of whole batches per worker.

    The ``ceil(n_rows / batch_size)`` batches are dealt out in order, worker
    ``k`` taking batches ``k * B // workers`` up to ``(k + 1) * B // workers``;
    only the last batch may be short.  A full round (``workers`` times the
    same number of batches) gives every worker the same share.
    """
    n_batches = -(-n_rows // batch_size)
    shares = []
    for k in range(workers):
        lo, hi = k * n_batches // workers, (k + 1) * n_batches // workers
        shares.append((min(lo * batch_size, n_rows), min(hi * batch_size, n_rows)))
    return shares


def average_replicas(params, states, out, state_out):
    """The mean of replicas ``params[k]`` (and ``states[k]``) into ``out`` (``state_out``).

    Summed in list order, then divided by the count: a fixed order, so the
    same replicas give the same bits on every run, backend and transport
    (threads here, Dask workers in ``fastbp.dask``).  Returns False when the
    mean is not finite (the mean of finite replicas can overflow).
    """
    out[...] = params[0]
    state_out[...] = states[0]
    for p, s in zip(params[1:], states[1:]):
        out += p
        state_out += s
    if len(params) > 1:
        out /= len(params)
        state_out /= len(params)
    return bool(np.isfinite(out).all())


class LocalSGDTrainer:
    """``workers`` replicas trained on their own shares, averaged every round (module doc).

    Implements the contract's Trainer.  ``train`` runs whole rounds only;
    chunks are multiples of a round (``fit`` makes them so), so a chunk
    boundary is an averaging point: Ctrl-C, checkpoints and resume all see
    one consistent model, and a resumed fit redoes exactly the same rounds.
    """

    def __init__(self, backend, params, state, sizes, acts, loss, batch_size, optimizer, hyper,
                 workers, average_every, runner):
        self._params, self._state = params, state
        self._slots = _contract.state_slots(optimizer)
        self._batch_size, self._average_every = batch_size, average_every
        self._runner = runner
        self.workers = workers
        self._replica_params = [params.copy() for _ in range(workers)]
        self._replica_state = [state.copy() for _ in range(workers)]
        self._trainers = []
        try:
            for p, s in zip(self._replica_params, self._replica_state):
                self._trainers.append(backend.open_trainer(p, s, sizes, acts, loss, batch_size,
                                                           optimizer, hyper))
        except BaseException:
            self.close()
            raise
        self._sum = np.empty_like(params)
        self._state_sum = np.empty_like(state[:self._slots])
        # The average the current round started from (what a failed round returns to).
        self._start = params.copy()
        self._start_state = state[:self._slots].copy()
        #: optimizer steps one replica took in the last ``train`` (the step count advances by it)
        self.last_steps = 0

    @property
    def round_rows(self):
        """Rows of one full round: ``workers * average_every``."""
        return self.workers * self._average_every

    def train(self, X, Y, order, step):
        loss_sum, done, steps = 0.0, 0, 0
        self.last_steps = 0
        for start in range(0, len(order), self.round_rows):
            part = order[start:start + self.round_rows]
            shares = batch_shares(len(part), self._batch_size, self.workers)

            def task(k, part=part, shares=shares, at=step + steps):
                lo, hi = shares[k]
                if lo == hi:
                    return 0.0, 0
                return self._trainers[k].train(X, Y, part[lo:hi], at)

            results = self._runner.run(task)
            trained = [k for k, (lo, hi) in enumerate(shares) if hi > lo]
            ok = all(results[k][1] == shares[k][1] - shares[k][0] for k in trained) \
                and all(self._trainers[k].finite() for k in trained)
            if not (ok and self._average(trained)):
                self._load(self._start, self._start_state)  # the round is undone
                break
            loss_sum += math.fsum(results[k][0] for k in trained)
            done += len(part)
            steps += max(-(-(hi - lo) // self._batch_size) for lo, hi in shares)
        self.last_steps = steps
        return loss_sum, done

    def _average(self, trained):
        """Average the replicas in ``trained`` into every replica; False if not finite."""
        for k in trained:
            self._trainers[k].store()
        if not average_replicas([self._replica_params[k] for k in trained],
                                [self._replica_state[k][:self._slots] for k in trained],
                                self._sum, self._state_sum):
            return False
        self._load(self._sum, self._state_sum)
        return True

    def _load(self, params, state_rows):
        """Every replica (buffers and working copy) set to ``params`` / ``state_rows``."""
        if params is not self._start:
            self._start[...] = params
            self._start_state[...] = state_rows
        for p, s, trainer in zip(self._replica_params, self._replica_state, self._trainers):
            p[...] = params
            s[:self._slots] = state_rows
            trainer.reload()

    def finite(self):
        # every round's average was checked before it was accepted
        return bool(np.isfinite(self._replica_params[0]).all())

    def store(self):
        self._params[...] = self._replica_params[0]
        self._state[:self._slots] = self._replica_state[0][:self._slots]

    def reload(self):
        self._load(self._params, self._state[:self._slots])

    def close(self):
        for trainer in self._trainers:
            trainer.close()
        self._trainers = []


class _ContractSplitter(_contract.CopyTrainer):
    """Split-minibatch parts through any backend's ``loss_and_gradients`` (the fallback).

    Each part's rows are gathered and their gradient sum taken at the flat
    working parameters, scaled by ``1 / batch rows``; :meth:`step` adds the
    parts in order and applies the NumPy reference's update rule.  Used by
    backends without their own ``open_splitter`` (it is the reference).
    """

    def __init__(self, backend, params, state, sizes, acts, loss, batch_size, optimizer, hyper,
                 parts):
        super().__init__(params, state, optimizer, None)
        self._backend, self._net = backend, (sizes, acts, loss)
        self._optimizer, self._hyper = optimizer, hyper
        self._grads = np.zeros((parts, params.shape[0]), dtype=params.dtype)

    def gradient(self, part, X, Y, rows, size):
        grad = self._grads[part]
        sizes, acts, loss = self._net
        value = self._backend.loss_and_gradients(self.params, sizes, acts, loss, X[rows],
                                                 Y[rows], grad)
        np.multiply(grad, grad.dtype.type(1.0 / size), out=grad)
        return value

    def clear(self, part):
        self._grads[part].fill(0)

    def step(self, step):
        total = self._grads[0]
        for grad in self._grads[1:]:  # part order: the same sum on every run
            np.add(total, grad, out=total)
        # the reference's rule; imported here, as backends are only imported when used
        from ._backends.numpy_ import _apply_update
        with np.errstate(over="ignore", invalid="ignore"):
            _apply_update(self.params, total, self._optimizer, self._hyper, self.state, step)


class SplitBatchTrainer:
    """Each batch's gradient computed by ``workers`` threads on parts of its rows (module doc).

    Implements the contract's Trainer over a *splitter*: the backend's own
    (``open_splitter``, optional in the contract) or :class:`_ContractSplitter`.
    Per batch, part ``k`` of ``workers`` contiguous parts has its loss and
    its share of the mean gradient computed at the current weights; the
    splitter then adds the parts in order and takes one step.
    """

    def __init__(self, backend, params, state, sizes, acts, loss, batch_size, optimizer, hyper,
                 workers, runner):
        opener = getattr(backend, "open_splitter", None)
        args = (params, state, sizes, acts, loss, batch_size, optimizer, hyper, workers)
        self._splitter = opener(*args) if opener is not None \
            else _ContractSplitter(backend, *args)
        self._check = (params.dtype, sizes)
        self._batch_size, self._workers, self._runner = batch_size, workers, runner

    def train(self, X, Y, order, step):
        _contract.check_chunk(*self._check, X, Y, order)
        splitter, workers = self._splitter, self._workers
        if getattr(splitter, "trains_chunks", False) and self._runner.threaded:
            # the backend meets its threads inside compiled code: one call each per chunk
            return splitter.train_chunk(X, Y, order, step, self._runner)
        loss_sum = 0.0
        for start in range(0, len(order), self._batch_size):
            rows = order[start:start + self._batch_size]
            parts = batch_shares(len(rows), -(-len(rows) // workers), workers)

            def task(k, rows=rows, parts=parts):
                lo, hi = parts[k]
                if lo == hi:
                    splitter.clear(k)
                    return 0.0
                return splitter.gradient(k, X, Y, rows[lo:hi], len(rows))

            batch_loss = math.fsum(self._runner.run(task))
            if not math.isfinite(batch_loss):
                return loss_sum, start  # this batch's step is not taken
            loss_sum += batch_loss
            splitter.step(step)
            step += 1
        return loss_sum, len(order)

    def finite(self):
        return self._splitter.finite()

    def store(self):
        self._splitter.store()

    def reload(self):
        self._splitter.reload()

    def close(self):
        self._splitter.close()


def split_rows(n_rows, workers, minimum=1024):
    """``[(start, stop), ...]``: ``n_rows`` in at most ``workers`` contiguous parts.

    Parts have at least ``minimum`` rows (fewer parts for small inputs), so a
    call on a few rows does not pay for threads it cannot use.
    """
    parts = max(1, min(workers, n_rows // minimum))
    return [(k * n_rows // parts, (k + 1) * n_rows // parts) for k in range(parts)]


def callers_errstate():
    """A factory of ``np.errstate`` contexts holding the calling thread's settings.

    NumPy's floating-point error handling is thread-local: a worker thread
    that converts the caller's rows enters one of these, so that an overflow
    raises, warns or passes as it would in the caller.
    """
    settings = np.geterr()
    return lambda: np.errstate(**settings)


def to_dtype_in_parts(array, dtype, name, runner):
    """``validation.to_dtype(array, dtype, name)`` with the rows split across ``runner``'s threads.

    The same array (no copy when it already is C-contiguous in ``dtype``) and
    the same error, at the same row, whatever the number of threads: the
    parts are contiguous and the lowest part's error is raised.  Each thread
    converts under the caller's ``np.errstate`` (:func:`callers_errstate`).
    """
    parts = split_rows(array.shape[0], runner.workers)
    if not runner.threaded or len(parts) == 1:
        return validation.to_dtype(array, dtype, name)
    array = np.asarray(array)  # a subclass's data, as np.ascontiguousarray takes it (no mask)
    same = array.dtype == dtype and array.flags.c_contiguous
    out = array if same else np.empty(array.shape, dtype=dtype)
    errstate = callers_errstate()

    def task(k):
        lo, hi = parts[k]
        with errstate():
            if not same:
                out[lo:hi] = array[lo:hi]  # the cast np.ascontiguousarray makes
            validation.check_finite(out[lo:hi], name, dtype, first_row=lo)

    runner.run(task, len(parts))
    return out


_runners = {}
_runners_lock = threading.Lock()


def inference_runner(workers, threads):
    """A :class:`TaskRunner` kept for inference calls with ``workers`` threads (reused)."""
    if workers == 1 or not threads:
        return TaskRunner(1, threads=False)
    with _runners_lock:
        runner = _runners.get(workers)
        if runner is None:
            runner = _runners[workers] = TaskRunner(workers)
        return runner


class Plan:
    """How one ``fit`` uses its workers: ``"serial"``, ``"split"`` or ``"local"`` (module doc).

    Made before anything changes (its values go into the resume settings),
    it opens the fit's trainer and owns the worker threads until
    :meth:`close`.
    """

    def __init__(self, workers, batch_size, average_every, n_params, chunk_rows, n_rows):
        self.workers, self.batch_size = workers, batch_size
        if workers == 1:
            self.mode, self.average_every = "serial", None
        elif batch_size >= SPLIT_BATCH_MIN:
            self.mode, self.average_every = "split", None
        else:
            self.mode = "local"
            if average_every is None:
                # A chunk is whole rounds and a streamed file is read a chunk at a
                # time, so by default a round fits in the configured chunk: small nets'
                # ~75 ms rounds would otherwise read millions of rows into memory at once.
                rows = min(default_average_every(n_params, batch_size),
                           max(batch_size, chunk_rows // workers))
            else:
                rows = clamp_average_every(average_every, n_rows)
            self.average_every = round_to_batches(rows, batch_size)
        self._runner = None

    @property
    def unit_rows(self):
        """Rows a chunk is a multiple of: a batch, or a local SGD round."""
        if self.mode == "local":
            return self.workers * self.average_every
        return self.batch_size

    def open_trainer(self, backend, params, state, sizes, acts, loss, batch_size, optimizer,
                     hyper):
        """The fit's Trainer: the backend's own (serial), or one over ``workers`` threads."""
        if self.mode == "serial":
            return backend.open_trainer(params, state, sizes, acts, loss, batch_size, optimizer,
                                        hyper)
        threads = releases_gil(backend)
        if self.mode == "split" and threads and getattr(backend, "open_splitter", None) is None:
            # Through loss_and_gradients, every batch pays parameter copies and a
            # NumPy update: measured slower than one thread (0.5-0.6x on 20-64-64-1,
            # batch 256), so the exact result is computed serially instead.
            validation.warn(f"workers={self.workers}: the {backend.NAME!r} backend has no "
                            "split-minibatch kernels, so batches of 64+ rows train on one "
                            "thread (the same numbers; use backend='numba' for split "
                            "batches, or a batch size below 64 for local SGD).")
            self.mode = "serial"
            return backend.open_trainer(params, state, sizes, acts, loss, batch_size,
                                        optimizer, hyper)
        if not threads:
            warn_in_turn(backend, self.workers)
        self._runner = TaskRunner(self.workers, threads)
        if self.mode == "split":
            return SplitBatchTrainer(backend, params, state, sizes, acts, loss, batch_size,
                                     optimizer, hyper, self.workers, self._runner)
        return LocalSGDTrainer(backend, params, state, sizes, acts, loss, batch_size, optimizer,
                               hyper, self.workers, self.average_every, self._runner)

    def close(self):
        """Stop the worker threads (after the trainer is closed)."""
        if self._runner is not None:
            self._runner.close()
            self._runner = None

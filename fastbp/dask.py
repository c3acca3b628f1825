"""Training on a Dask cluster: local SGD where the rows live, parameters averaged on the driver.

``fastbp.dask.fit(net, X, y, client=...)`` trains a :class:`fastbp.Network`
on Dask arrays chunked by rows.  It is the local SGD of ``Network.fit(...,
workers=N)`` (``fastbp._parallel``) with Dask workers in place of threads:

1. Every row chunk is read (and converted to the network dtype, checked for
   NaN/inf) once, on one worker, and stays there: data already in the
   workers' memory where it is; else chunk ``i`` of ``n`` on worker
   ``i * W // n`` of the ``W`` workers ordered by address.  The
   *assignment* maps each chunk to the first (by address) worker holding it.
2. Each epoch, worker ``k``'s rows are its chunks in ascending index order
   (``shuffle=False``), or in a permutation drawn from the network's shuffle
   generator, the rows of each chunk in the keyed order of ``_shuffle``
   over the chunk (``shuffle=True``; four keys drawn on the driver as the
   worker reaches the chunk, in round order, worker order within a round,
   as a memory-mapped fit draws a block's).
3. A *round*: every worker trains the next ``average_every`` rows of its
   sequence, in consecutive batches, on its replica (parameters and
   optimizer state), starting from the last average.  The driver then
   averages the replicas that trained with ``_parallel.average_replicas``
   (worker order) and the step counter advances by the most batches one
   replica took.  Only the average (scattered to each worker that trains)
   and, in each task, a few numbers per piece of rows (chunk, keys, start,
   stop) travel; rows never do.

Each worker keeps its replica's trainer (``backend.open_trainer``) alive
between rounds in worker-local state keyed by a per-fit id (a module dict
of this module in the worker process), so a round costs one task per worker
and no re-opening; every round sends the average, so a replica never
depends on what it held before.  The replicas are dropped when the fit ends.

This module imports Dask; ``import fastbp`` does not import it.
"""

import asyncio
import math
import threading
import time
import uuid
from collections import deque

import numpy as np

try:
    import dask
    import dask.array as da
    import distributed
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "fastbp.dask needs Dask's distributed scheduler, which is not installed "
        f"({exc}). Install it with `pip install 'fastbp[dask]'` (or `pip install "
        "'dask[distributed]'`).") from exc

from . import _checkpoint, _parallel, _shuffle
from . import _validation as validation
from ._backends import _contract, available_backends, resolve
from ._backends._codes import N_STATE_SLOTS
from ._backends._layout import n_params
from ._data import ArraySource, first_non_finite
from ._version import __version__
from .callbacks import EarlyStopping, History, ProgbarLogger
from .network import (Network, TrainingDivergedError, _check_callbacks, _check_verbose,
                      _deferred_sigint, _reads, _writes)
from .optimizers import SGD, Adam, RMSprop

__all__ = ["RoundTimeoutError", "WorkerLostWarning", "evaluate", "fit", "from_npy", "predict"]

#: Seconds between checks that the workers of a round are still there.
_POLL = 0.25
#: The default round is this many of ``Network.fit``'s (about 80 ms of W2's float32 kernels
#: on a recent x86 core): a round through the scheduler costs about 20 ms, not microseconds.
_ROUNDS_PER_DEFAULT = 4
#: Backends a worker may run (the CUDA one is not a CPU backend).
_CPU_BACKENDS = ("numba", "cython", "numpy")


class WorkerLostWarning(RuntimeWarning):
    """A Dask worker left during a fit; its round was redone without it (the message says how)."""


class RoundTimeoutError(TimeoutError):
    """A round took longer than ``fit(round_timeout=...)`` while its workers stayed connected.

    The model holds the last average of the replicas (weights, optimizer
    state and step count agree); the message names the workers whose task
    had not answered.
    """


# ====================================================================== data
class _NpyFile:
    """A ``.npy`` file as an array-like for ``da.from_array``: pickles as its path only.

    Each chunk is read on the worker that computes it (the file must be
    visible there, e.g. on shared storage), so a chunk lost with its worker
    is read again from the file.
    """

    def __init__(self, path):
        self.path = str(path)
        array = np.load(self.path, mmap_mode="r")
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __getitem__(self, key):
        return np.array(np.load(self.path, mmap_mode="r")[key])


def from_npy(path, chunk_rows=65536):
    """A Dask array of a ``.npy`` file, chunked by rows, read on the workers.

    Parameters
    ----------
    path : str or path-like
        A ``.npy`` file every worker can read at the same path (shared
        storage).  Only the path travels to the workers.
    chunk_rows : int, default 65536
        Rows per chunk.

    Returns
    -------
    dask.array.Array
    """
    chunk_rows = validation.check_int(chunk_rows, "chunk_rows", minimum=1, example=65536)
    source = _NpyFile(path)
    chunks = (chunk_rows,) + tuple(-1 for _ in source.shape[1:])
    return da.from_array(source, chunks=chunks, asarray=False, fancy=False)


def _check_dask_array(a, name, fix):
    if not isinstance(a, da.Array):
        raise TypeError(f"{name}: expected a dask.array.Array chunked by rows; found "
                        f"{type(a).__name__}. {fix}")
    if any(math.isnan(s) for s in a.shape) or any(math.isnan(c) for c in a.chunks[0]):
        raise ValueError(f"{name}: expected known chunk sizes; found unknown (NaN) row counts "
                         f"(shape {a.shape}). Call {name}.compute_chunk_sizes() first.")


def _features(net, X, name="X"):
    """``X`` as a 2-D Dask array with one column chunk, its width checked."""
    _check_dask_array(X, name, f"Wrap it with dask.array.from_array({name}, chunks=(rows, -1)) "
                      "or read it with fastbp.dask.from_npy(path).")
    if X.ndim != 2 or X.shape[1] != net.layers[0]:
        raise ValueError(f"{name}: expected shape (n_samples, {net.layers[0]}), as the "
                         f"network's input layer has; found {X.shape}.")
    if X.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one row; found 0 rows. Pass some data.")
    return X if X.numblocks[1] == 1 else X.rechunk({1: -1})


def _targets(net, X, y, name="y"):
    """``y`` as a 2-D Dask array with the row chunks of ``X``."""
    _check_dask_array(y, name, f"Wrap it with dask.array.from_array({name}, chunks=rows).")
    n_out = net.layers[-1]
    if y.ndim == 1 and n_out == 1:
        y = y.reshape(-1, 1)
    if y.ndim != 2 or y.shape[1] != n_out:
        raise ValueError(f"{name}: expected shape (n_samples,) or (n_samples, {n_out}); found "
                         f"{y.shape}.")
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"{name}: expected {X.shape[0]:,} rows, as X has; found "
                         f"{y.shape[0]:,}. Pass targets for every row of X.")
    if y.numblocks[1] != 1 or y.chunks[0] != X.chunks[0]:
        # the targets follow the inputs' chunks: a chunk trains where its inputs are
        y = y.rechunk((X.chunks[0], (n_out,)))
    return y


def _prepare(x, y, dtype, index, offset):
    """A chunk's rows as ``(X, Y)``: C-contiguous, in ``dtype``, finite (else ValueError)."""
    X = np.ascontiguousarray(x, dtype=dtype)
    Y = np.ascontiguousarray(np.reshape(y, (len(y), -1)), dtype=dtype)
    for block, name in ((X, "X"), (Y, "y")):
        bad = first_non_finite(block)
        if bad is not None:
            row, col = bad
            raise ValueError(
                f"{name}: expected finite numbers; found {block[row, col]!r} (in {dtype}) in "
                f"chunk {index} (rows {offset:,}-{offset + len(block) - 1:,}), at row "
                f"{offset + row} (row {row} of the chunk), column {col}. Remove or impute "
                "NaN/inf rows first (e.g. keep rows where np.isfinite(a).all(axis=1)).")
    return X, Y


def _read_chunks(client, X, Y, parts):
    """Futures of the chunks' ``(X, Y)``, each read on the worker that will train it.

    Arrays already in the workers' memory (persisted, scattered) stay where
    they are: each read runs on a worker holding its chunk of ``X`` (of ``y``
    when only ``y`` is held), another only if those are gone.  Otherwise chunk ``i`` of
    ``n`` is read on worker ``i * W // n`` of the ``W`` workers (by address):
    contiguous, balanced shares that depend only on the worker count.
    """
    if distributed.futures_of(X) or distributed.futures_of(Y):
        # each read on the workers holding its chunk of X (else of y), or Dask may run
        # it elsewhere (a busy holder, work stealing) and the rows move with it
        blocks = [(distributed.futures_of(xb) or distributed.futures_of(yb))
                  for xb, yb in zip(X.to_delayed().ravel(), Y.to_delayed().ravel())]
        held = client.who_has([f for fs in blocks for f in fs])
        out = []
        for part, futures in zip(parts, blocks):
            where = sorted({a for f in futures for a in held.get(f.key, ())})
            out.append(client.compute(part, workers=where or None, allow_other_workers=True))
        return out
    workers = sorted(_current_workers(client))
    # loose: a chunk lost with its worker is read again on another one
    return [client.compute(part, workers=[workers[i * len(workers) // len(parts)]],
                           allow_other_workers=True)
            for i, part in enumerate(parts)]


class _DaskRows(ArraySource):
    """The training rows for ``ArraySource.fingerprint``: sampled from the chunks as read.

    The sampled rows are picked out of the converted chunks the fit holds
    on its workers (``pairs``, one future per chunk; ``offsets``: each
    chunk's first row; ``where``: the worker holding each chunk), never read
    again from the source: a fingerprint
    through the Dask arrays themselves read every chunk a second time (the
    evenly spaced rows reach all of them) and held them all at once.
    """

    streamed = True

    def __init__(self, X, Y, client, pairs, offsets, where):
        super().__init__(X, Y)
        self.client, self.pairs, self.offsets, self.where = client, pairs, offsets, where

    def _sample_rows(self, start, stop):
        return self._take(np.arange(start, stop, dtype=np.int64))

    def _take(self, rows):
        rows = np.asarray(rows, dtype=np.int64)  # ascending
        chunk_of = np.searchsorted(self.offsets, rows, side="right") - 1
        # each pick on the worker holding its chunk: a chunk copied to another worker would
        # move it in the placement (and hold it twice)
        futures = [self.client.submit(_pick, self.pairs[c], rows[chunk_of == c] - self.offsets[c],
                                      workers=[self.where[c]], allow_other_workers=True,
                                      pure=False)
                   for c in np.unique(chunk_of).tolist()]
        parts = self.client.gather(futures)
        return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


def _pick(pair, rows):
    """Rows ``rows`` of a read chunk ``pair = (X, Y)``."""
    return pair[0][rows], pair[1][rows]


# ====================================================================== worker side
_replicas = {}
_replicas_lock = threading.Lock()


class _Replica:
    """One worker's replica of a fit: parameter and state buffers, and the backend's trainer."""

    def __init__(self, spec):
        _, backend = resolve(spec["backend"])
        dtype = np.dtype(spec["dtype"])
        count = n_params(spec["sizes"])
        self.params = np.zeros(count, dtype=dtype)
        self.state = np.zeros((N_STATE_SLOTS, count), dtype=dtype)
        self.slots = spec["slots"]
        self.trainer = backend.open_trainer(self.params, self.state, spec["sizes"], spec["acts"],
                                            spec["loss"], spec["batch_size"], spec["optimizer"],
                                            spec["hyper"])
        # a round that was given up on (its worker looked lost, or the round timed out) may
        # still run when the redone round arrives, or when the fit ends: they take turns
        self.lock = threading.Lock()
        self.dropped = False  # the fit ended: the round holding the lock closes the trainer
        self.closed = False

    def close(self):
        """Close the trainer once (the caller holds ``self.lock``)."""
        if not self.closed:
            self.closed = True
            self.trainer.close()


#: Ids of the fits whose replicas this worker dropped: a round of theirs that starts late
#: (given up on by the driver) must not open a new replica that nothing would close.
_dropped_ids = set()


def _rows(pieces, chunks):
    """``(X, Y, order)`` of the rows of ``pieces`` (``(chunk, keys, lo, hi)``) for a trainer.

    A piece is positions ``lo:hi`` of its chunk's visiting order
    (``_shuffle.visit``: keyed by ``keys``, or in order for None).  One piece
    trains on its chunk through the order (no copy); several are gathered
    into one block, so that a batch may span two chunks.
    """
    orders = [(c, _shuffle.visit(keys, len(chunks[c][0]), lo, hi)) for c, keys, lo, hi in pieces]
    if len(orders) == 1:
        (chunk, order), = orders
        return chunks[chunk][0], chunks[chunk][1], order
    X = np.concatenate([chunks[c][0][rows] for c, rows in orders])
    Y = np.concatenate([chunks[c][1][rows] for c, rows in orders])
    return X, Y, np.arange(len(X), dtype=np.int64)


def _train_round(fit_id, spec, average, pieces, *chunks):
    """Worker side of a round: the replica set to ``average``, trained on ``pieces``.

    ``average`` is ``(params, state_rows, step)``, scattered to the workers
    once per round (so that the scheduler's task messages stay small).
    Returns ``(params, state_rows, loss_sum, rows_done, finite)``.
    """
    params, state_rows, step = average
    with _replicas_lock:
        if fit_id in _dropped_ids:
            raise RuntimeError(f"fastbp.dask: fit {fit_id} has ended; this round of it was "
                               "given up on by the driver.")
        replica = _replicas.get(fit_id)
        if replica is None:
            replica = _replicas[fit_id] = _Replica(spec)
    X, Y, order = _rows(pieces, chunks)
    with replica.lock:
        if replica.closed:
            raise RuntimeError(f"fastbp.dask: fit {fit_id} has ended; this round of it was "
                               "given up on by the driver.")
        try:
            replica.params[...] = params
            replica.state[:replica.slots] = state_rows
            replica.trainer.reload()
            loss_sum, done = replica.trainer.train(X, Y, order, step)
            finite = replica.trainer.finite()
            replica.trainer.store()
            return (replica.params.copy(), replica.state[:replica.slots].copy(),
                    float(loss_sum), int(done), bool(finite))
        finally:
            if replica.dropped:  # the fit ended while this round ran
                replica.close()


def _drop_replica(fit_id):
    """Close and forget this worker's replica of fit ``fit_id`` (run on every worker).

    Runs in the worker's event loop (``client.run``), so it never waits: a
    round still running on the replica (one the driver gave up on) closes the
    trainer when it ends.
    """
    with _replicas_lock:
        replica = _replicas.pop(fit_id, None)
        _dropped_ids.add(fit_id)
    if replica is None:
        return False
    replica.dropped = True
    if replica.lock.acquire(blocking=False):
        try:
            replica.close()
        finally:
            replica.lock.release()
    return True


def _worker_backends():
    """The CPU backends this worker's fastbp can run."""
    return [name for name in available_backends() if name in _CPU_BACKENDS]


#: Evaluated on each worker by ``client.run(eval, ...)``: needs nothing but the builtins to
#: arrive, so that a worker without fastbp answers with its ImportError.
_VERSION_PROBE = "__import__('fastbp').__version__"


def _check_workers(client, backend):
    """Every worker's fastbp version and backends, before anything trains; returns the backend.

    The network's backend when every worker has it (``cuda``: the fastest CPU
    backend all workers have).
    """
    versions = client.run(eval, _VERSION_PROBE, on_error="return")
    if not versions:
        raise RuntimeError("fastbp.dask: expected at least one Dask worker; found none. Start "
                           "workers (`dask worker tcp://SCHEDULER:8786`) or wait for them "
                           "with client.wait_for_workers(n).")
    bad = {addr: v for addr, v in versions.items() if v != __version__}
    if bad:
        found = "; ".join(
            f"{addr}: " + (f"fastbp {v}" if isinstance(v, str)
                           else f"no fastbp ({type(v).__name__}: {v})")
            for addr, v in sorted(bad.items()))
        raise RuntimeError(
            f"fastbp.dask: expected fastbp {__version__} (the driver's version) on every Dask "
            f"worker; found {found}. Install the same fastbp on the workers (pip install "
            f"fastbp=={__version__}, in the workers' environment) and restart them. Nothing "
            "was trained.")
    have = client.run(_worker_backends)
    common = [name for name in _CPU_BACKENDS if all(name in b for b in have.values())]
    wanted = backend if backend in _CPU_BACKENDS else None
    if wanted is not None and wanted in common:
        return wanted
    if wanted is None and common:
        return common[0]
    found = "; ".join(f"{addr}: {', '.join(b) or 'none'}" for addr, b in sorted(have.items()))
    raise RuntimeError(
        f"fastbp.dask: expected the network's backend {backend!r} on every Dask worker (the "
        f"same kernels give the same bits); found backends {found}. Install it on the workers "
        "(`fastbp info` there says why it is missing), or build the network with a backend "
        "every worker has.")


# ====================================================================== driver side
class _Queue:
    """One worker's rows for the rest of an epoch, as pieces ``(chunk, keys, lo, hi)``.

    A piece is positions ``lo:hi`` of its chunk's visiting order: keyed by
    ``keys`` (four ints drawn with ``_shuffle.draw_keys`` as the worker
    reaches the chunk, as a memory-mapped fit draws a block's), or in order
    for ``keys=None`` (``shuffle=False``).  The worker computes the rows from
    the keys, so the driver never holds an order and a round's message is a
    few numbers per piece.  Chunks not reached yet hold ``_NOT_DRAWN``.
    """

    def __init__(self, chunks, lengths, rng, shuffle):
        self._rng, self._shuffle = rng, shuffle
        if shuffle:
            chunks = [chunks[i] for i in rng.permutation(len(chunks))]
        self.items = deque((c, _NOT_DRAWN, 0, lengths[c]) for c in chunks)

    @property
    def remaining(self):
        return _rows_of(self.items)

    def take(self, n):
        """The next ``n`` rows (fewer at the end) as ``[(chunk, keys, lo, hi), ...]``."""
        out = []
        while n > 0 and self.items:
            chunk, keys, lo, hi = self.items.popleft()
            if keys is _NOT_DRAWN:  # as plain ints: four numbers in the task's message
                keys = tuple(int(k) for k in _shuffle.draw_keys(self._rng)) \
                    if self._shuffle else None
            if hi - lo > n:
                self.items.appendleft((chunk, keys, lo + n, hi))
                hi = lo + n
            out.append((chunk, keys, lo, hi))
            n -= hi - lo
        return out


_NOT_DRAWN = "not drawn"


def _rows_of(pieces):
    return sum(hi - lo for _, _, lo, hi in pieces)


def _current_workers(client):
    return set(client.scheduler_info(n_workers=-1)["workers"])


_TIMEOUTS = (TimeoutError, asyncio.TimeoutError, distributed.TimeoutError)


class _RoundTimedOut(Exception):
    """Internal: the round's deadline passed; ``args[0]``: the addresses that had not answered."""


def _await_round(client, futures, addresses, deadline=None):
    """Wait for a round: ``(results, set())``, or ``(None, addresses that left meanwhile)``.

    A worker that leaves after its task finished takes the result with it
    (fetching it then times out, and the worker is found gone).  Raises
    ``_RoundTimedOut`` once ``time.monotonic()`` passes ``deadline`` (None:
    no limit) while every worker is still there.
    """
    while True:
        try:
            distributed.wait(futures, timeout=_POLL)
        except (*_TIMEOUTS, distributed.CancelledError):
            pass  # cancelled: the round's average was lost with its worker (looked at below)
        else:
            if all(f.status == "finished" for f in futures):
                try:
                    return [f.result(timeout=10 * _POLL) for f in futures], set()
                except (*_TIMEOUTS, distributed.CancelledError, OSError):
                    pass  # a result went missing (its worker left) or is slow: look again
        gone = set(addresses) - _current_workers(client)
        if gone:
            return None, gone
        for future in futures:
            if future.status in ("error", "cancelled"):
                future.result()  # a worker-side error (not a lost worker): raise it
        if deadline is not None and time.monotonic() > deadline:
            raise _RoundTimedOut(sorted(a for a, f in zip(addresses, futures)
                                        if f.status != "finished"))


class _Fit:
    """The state of one ``fastbp.dask.fit`` on the driver (see :func:`fit`)."""

    def __init__(self, net, client, pairs, lengths, offsets, batch_size, average_every, shuffle,
                 spec, placement, round_timeout=None):
        self.net, self.client, self.pairs = net, client, pairs
        self.round_timeout = round_timeout
        self.lengths, self.offsets = lengths, offsets
        self.batch_size, self.average_every, self.shuffle = batch_size, average_every, shuffle
        self.spec = spec
        self.slots = spec["slots"]
        self.fit_id = uuid.uuid4().hex
        self.rounds_redone = 0
        self.hung = set()  # workers whose round timed out (not waited for again)
        self.slots_addr, self.assignment = placement
        # may this epoch be resumed from its rounds done? (not once a worker has left in it)
        self.replayable = True

    def epoch(self, rng, callbacks, epoch, interrupted, start=(0, 0, 0.0), on_round=None):
        """One epoch of rounds; ``(rows, loss_sum, finished)`` (False: Ctrl-C at a round's end).

        ``start = (rounds, rows, loss_sum)`` continues an epoch after its first
        ``rounds`` rounds (``rng`` in its state at the epoch's start): their
        rows are drawn again, in the same order, and not trained.
        ``on_round(rounds, rows, loss_sum)`` runs after each round.
        """
        net = self.net
        self.replayable = True
        queues = [_Queue(chunks, self.lengths, rng, self.shuffle) for chunks in self.assignment]
        rounds, rows, loss_sum = start
        for _ in range(rounds):
            for q in queues:
                q.take(self.average_every)
        while True:
            pieces = [q.take(self.average_every) for q in queues]
            if not any(pieces):
                return rows, loss_sum, True
            results, pieces, queues = self._run_round(pieces, queues, epoch)
            trained = [k for k, p in enumerate(pieces) if p]
            wanted = [_rows_of(pieces[k]) for k in trained]
            ok = all(results[i][3] == wanted[i] and results[i][4] for i in range(len(trained)))
            average = np.empty_like(net._params)
            state_average = np.empty_like(net._state[:self.slots])
            if not (ok and _parallel.average_replicas([r[0] for r in results],
                                                      [r[1] for r in results], average,
                                                      state_average)):
                done = rows + sum(r[3] for r in results)
                raise TrainingDivergedError(
                    f"training diverged in epoch {epoch + 1} after about {done} rows: the loss or "
                    "the weights became NaN or infinite. The model keeps the last finite average "
                    "of the replicas. Lower the learning rate, scale the inputs and targets, or "
                    "use a bounded loss such as 'huber'.")
            net._params[...] = average
            net._state[:self.slots] = state_average
            net._step += max(-(-n // self.batch_size) for n in wanted)
            loss_sum += math.fsum(r[2] for r in results)
            rows += sum(wanted)
            rounds += 1
            if on_round is not None:  # right after the model moved, before any callback
                on_round(rounds, rows, loss_sum)
            logs = {"rows": rows, "loss": loss_sum / rows}
            for callback in callbacks:
                callback.on_chunk_end(epoch, logs)
            if interrupted():
                return rows, loss_sum, False

    def _run_round(self, pieces, queues, epoch):
        """Train one round; redone from the same average without workers that leave.

        Returns ``(results of the workers that trained, pieces, queues)``, the
        last two without the workers that left.
        """
        # the round's starting point, sent once per round to the workers that train
        # (scattered, not inside the task messages: the scheduler keeps recent messages
        # below 1 MB in its logs, which must not fill with parameters)
        average = (self.net._params.copy(), self.net._state[:self.slots].copy(),
                   self.net._step)
        while True:
            training = [k for k, worker_pieces in enumerate(pieces) if worker_pieces]
            addresses = [self.slots_addr[k] for k in training]
            # the deadline covers sending the average too: a worker that stopped answering
            # may hold up the scatter as well as its task
            deadline = None if self.round_timeout is None else \
                time.monotonic() + self.round_timeout
            sent, futures = None, []
            try:
                sent, gone = self._send(average, addresses, deadline)
                for k in training if sent is not None else ():
                    used = sorted({piece[0] for piece in pieces[k]})
                    local = {c: j for j, c in enumerate(used)}
                    futures.append(self.client.submit(
                        _train_round, self.fit_id, self.spec, sent[len(futures)],
                        [(local[c], keys, lo, hi) for c, keys, lo, hi in pieces[k]],
                        *[self.pairs[c] for c in used], workers=[self.slots_addr[k]],
                        allow_other_workers=False, pure=False))
                if sent is not None:
                    results, gone = _await_round(self.client, futures, addresses, deadline)
            except _RoundTimedOut as exc:
                self.client.cancel(futures)
                self.hung.update(exc.args[0])
                hung = ", ".join(exc.args[0])
                raise RoundTimeoutError(
                    f"fastbp.dask: expected every worker to finish a round of epoch {epoch + 1} "
                    f"within round_timeout={self.round_timeout:g} s; found no answer from "
                    f"{hung} after that long, although it is still connected. The model holds "
                    f"the last average of the replicas (consistent, step {average[2]}). See "
                    f"what the task is doing (client.call_stack(), the worker's log), restart "
                    f"the worker (client.restart_workers([...])) and fit again, or pass a "
                    f"larger round_timeout (None: no limit).") from None
            finally:
                for future in sent or ():
                    future.release()
            if not gone:
                return results, pieces, queues
            self.client.cancel(futures)
            pieces, queues = self._drop_workers(gone, pieces, queues, epoch)
            if not any(pieces):
                # only the workers that left had rows in this round: theirs now wait in
                # the others' queues, after their own rows
                pieces = [q.take(self.average_every) for q in queues]

    def _send(self, average, addresses, deadline=None):
        """``(futures, set())``: ``average`` scattered to each of ``addresses`` (in order).

        Each copy goes through the scheduler (``direct=False``: the driver
        may not reach the workers).  ``(None, gone)`` when a worker of them
        has left (the round is then redone without it).  A worker that is
        there but not running (paused, for instance) is waited for; past
        ``deadline`` (``time.monotonic()``; None: no limit) ``_RoundTimedOut``
        names the workers.
        """
        client = self.client

        async def each():
            sends = asyncio.gather(*(
                client.scatter([average], workers=[address], hash=False, direct=False,
                               asynchronous=True) for address in addresses))
            if deadline is None:
                return await sends
            return await asyncio.wait_for(sends, max(deadline - time.monotonic(), 1e-3))

        while True:
            try:
                return [future for futures in client.sync(each) for future in futures], set()
            except Exception as exc:
                gone = set(addresses) - _current_workers(client)
                if gone:
                    return None, gone
                if not isinstance(exc, _TIMEOUTS):
                    raise
            # every worker is there, but a scatter timed out: a worker not running yet
            if deadline is not None and time.monotonic() > deadline:
                raise _RoundTimedOut(sorted(addresses))
            time.sleep(_POLL)

    def _drop_workers(self, gone, pieces, queues, epoch):
        """Hand the rows and chunks of the workers in ``gone`` to the others (fewest rows first)."""
        keep = [k for k, addr in enumerate(self.slots_addr) if addr not in gone]
        if not keep:
            raise RuntimeError(
                f"fastbp.dask: every Dask worker of this fit left during epoch {epoch + 1} "
                f"({', '.join(sorted(gone))}). The model holds the last average of the "
                "replicas (consistent); start workers and fit again (or resume=True from the "
                "last checkpoint).")
        moved = []
        for k, addr in enumerate(self.slots_addr):
            if addr not in gone:
                continue
            # this epoch: the round's rows and the rest of its queue go to the worker
            # with the fewest rows left, after its own
            target = min(keep, key=lambda j: (queues[j].remaining + _rows_of(pieces[j]), j))
            queues[target].items.extend(list(pieces[k]) + list(queues[k].items))
            # later epochs: each chunk to the worker with the fewest rows
            for chunk in self.assignment[k]:
                j = min(keep, key=lambda j: (sum(self.lengths[c] for c in self.assignment[j]),
                                             j))
                self.assignment[j] = sorted(self.assignment[j] + [chunk])
            moved.append((addr, self.assignment[k]))
        self.rounds_redone += 1
        self.replayable = False
        what = "; ".join(f"{addr} (chunks {', '.join(map(str, chunks))})"
                         for addr, chunks in moved)
        validation.warn(
            f"fastbp.dask: Dask worker(s) left during a round of epoch {epoch + 1}: {what}. "
            f"The round was redone from the last average with the remaining {len(keep)} "
            "worker(s); the lost chunks are read again from their source and trained by the "
            "remaining workers (the fit continues, but its result now differs from an "
            "undisturbed run's).", WorkerLostWarning)
        self.slots_addr = [self.slots_addr[k] for k in keep]
        self.assignment = [self.assignment[k] for k in keep]
        return [pieces[k] for k in keep], [queues[k] for k in keep]

    def close(self):
        try:
            # not a worker whose round timed out: it may never answer (even a run with
            # wait=False waits for it); its replica goes when it is restarted, as the
            # RoundTimeoutError says to do
            answering = sorted(_current_workers(self.client) - self.hung)
            self.client.run(_drop_replica, self.fit_id, workers=answering, on_error="ignore")
        except Exception:  # a closing cluster: the workers' replicas go with it
            pass


def _placement(client, pairs):
    """``(worker addresses, chunk indices of each)``: each chunk on the first worker holding it.

    Workers (sorted by address) that hold no chunk have nothing to train on
    and are left out (see the user guide).
    """
    holders = client.who_has(pairs)
    workers = sorted(_current_workers(client))
    assignment = {addr: [] for addr in workers}
    for i, future in enumerate(pairs):
        held = sorted(a for a in holders.get(future.key, ()) if a in assignment)
        if not held:  # lost since it was read: the scheduler re-reads it on demand
            held = [min(workers, key=lambda a: (len(assignment[a]), a))]
        assignment[held[0]].append(i)
    addresses = [a for a in workers if assignment[a]]
    return addresses, [assignment[a] for a in addresses]


def _spec(net, backend, batch_size):
    """What a worker needs to open its replica's trainer (sent with every round)."""
    return {"backend": backend, "dtype": net._dtype.name, "sizes": net._sizes,
            "acts": net._acts, "loss": net._loss, "batch_size": int(batch_size),
            "optimizer": net._opt_code, "hyper": net._hyper,
            "slots": _contract.state_slots(net._opt_code)}


def _client(client):
    if client is None:
        try:
            return distributed.get_client()
        except ValueError:
            raise ValueError("client: expected a distributed.Client, or a current one; found "
                             "none. Pass client=distributed.Client('tcp://HOST:8786') (or "
                             "create a Client first).") from None
    if not isinstance(client, distributed.Client):
        raise TypeError(f"client: expected a distributed.Client or None; found "
                        f"{type(client).__name__}.")
    return client


def _check_network(net):
    if not isinstance(net, Network):
        raise TypeError(f"net: expected a fastbp.Network; found {type(net).__name__}. Pass "
                        "e.g. fastbp.Network([20, 64, 64, 1]).")


def fit(net, X, y, *, client=None, epochs=1, batch_size=32, optimizer=None, shuffle=True,
        average_every=None, validation_data=None, callbacks=None, verbose="auto",
        checkpoint=None, resume=False, round_timeout=None):
    """Train ``net`` in place on a Dask cluster: local SGD on the workers holding the rows.

    Parameters
    ----------
    net : fastbp.Network
        Updated in place, as by :meth:`fastbp.Network.fit`.
    X : dask.array.Array, shape (n_samples, n_inputs)
        Chunked by rows (e.g. :func:`from_npy`, ``dask.array.from_npy_stack``,
        ``dask.array.from_zarr``).  Each chunk is read once on the worker
        Dask puts it on, converted to the network dtype there, and trained
        there.
    y : dask.array.Array, shape (n_samples,) or (n_samples, n_outputs)
        Rechunked to ``X``'s row chunks when they differ.
    client : distributed.Client, optional
        Defaults to the current client.
    epochs, batch_size, optimizer, shuffle, callbacks, verbose
        As in :meth:`fastbp.Network.fit`.  Every batch size trains by local
        SGD (there is no split-minibatch mode on a cluster).
    average_every : int, optional
        Rows each worker trains between two averages, rounded up to whole
        batches; the default is four times ``Network.fit``'s (about 300 ms
        of kernel time per round: about 640 million parameter-rows divided
        by the parameter count), as a round costs a scheduler round trip.
        A value above the number of training rows trains as that number.
    validation_data : (X_val, y_val), optional
        Dask arrays; ``val_loss`` is computed on the cluster after each epoch.
    checkpoint : str or path-like, optional
        Write the model and its training position after every round and
        every epoch (atomically).
    resume : bool, default False
        Continue the position of an interrupted fit (Ctrl-C keeps it on
        ``net``; or :func:`fastbp.load` a checkpoint first), with the same
        data, batch size, shuffle and ``average_every``.  From an epoch
        boundary any cluster may continue; inside an epoch the same chunks
        must be on the same workers (the epoch's rounds are replayed), else
        a ValueError names both assignments.
    round_timeout : float, optional
        Seconds a round may take while its workers stay connected (a worker
        that leaves is handled by redoing the round, and the clock starts
        again); past it, :class:`RoundTimeoutError` is raised and the model
        keeps the last average.  Default None: wait without limit.

    Returns
    -------
    History
        As ``Network.fit``'s, with three more attributes: ``workers`` (the
        addresses that trained, in worker order), ``assignment`` (the chunk
        indices of each, at the start of the fit) and ``rounds_redone``
        (rounds redone because a worker left).

    Raises
    ------
    RuntimeError
        A worker lacks fastbp, has another version or lacks the backend
        (before anything is trained); or every worker left.
    RoundTimeoutError
        A round took longer than ``round_timeout`` seconds (a task hangs on
        a worker that stays): the model holds the last average.
    ValueError
        NaN/inf in a chunk (the message names the chunk, row and column):
        the model is rolled back to its state before this fit.
    TrainingDivergedError
        The loss or an average became NaN/inf; the model keeps the last
        finite average.
    KeyboardInterrupt
        Ctrl-C stops at the next averaging point: the model holds that
        average (weights, optimizer state and step count agree).

    Notes
    -----
    With one worker (or every chunk on one worker) the result equals
    ``net.fit`` on the same rows (same backend and settings, ``workers=1``):
    bitwise for ``shuffle=False``; for ``shuffle=True`` it equals
    ``net.fit`` on a ``np.memmap`` of the rows with ``FASTBP_CHUNK_ROWS``
    equal to the Dask chunk length, when every chunk's length is a multiple
    of ``batch_size``.  With ``K`` workers it is in-process local SGD over
    the workers' row sequences: ``net.fit(X[order], y[order],
    shuffle=False, workers=K, average_every=A)`` for ``order`` that
    interleaves the ``K`` sequences ``A`` rows at a time (when they are
    equally long, a multiple of ``A``).  The result is deterministic for a
    given seed and assignment; the assignment depends on where Dask placed
    the chunks (worker count, addresses, data already persisted), and
    changes when a worker leaves.  See the user guide's "Training on a
    cluster".
    """
    _check_network(net)
    return _fit(net, X, y, client=client, epochs=epochs, batch_size=batch_size,
                optimizer=optimizer, shuffle=shuffle, average_every=average_every,
                validation_data=validation_data, callbacks=callbacks, verbose=verbose,
                checkpoint=checkpoint, resume=resume, round_timeout=round_timeout)


def _fit_network(net, X, y, *, client, epochs, batch_size, optimizer, shuffle, average_every,
                 validation_data, callbacks, verbose, checkpoint, resume, round_timeout):
    epochs = validation.check_positive_int(epochs, "epochs")
    if round_timeout is not None:
        round_timeout = validation.check_positive_float(round_timeout, "round_timeout")
    batch_size = validation.check_positive_int(batch_size, "batch_size")
    shuffle = validation.check_bool(shuffle, "shuffle")
    resume = validation.check_bool(resume, "resume")
    if optimizer is not None and not isinstance(optimizer, (SGD, Adam, RMSprop)):
        net._bind_optimizer(optimizer)  # raises the type error
    if optimizer is not None:
        optimizer._check_dtype(net.dtype)
    verbose = _check_verbose(verbose)
    average_every = _parallel.check_average_every(average_every)
    checkpoint = _checkpoint.check_path(checkpoint)
    callbacks = _check_callbacks(callbacks)
    client = _client(client)
    X = _features(net, X)
    Y = _targets(net, X, y)
    val = None
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError("validation_data: expected a tuple (X_val, y_val) of Dask arrays; "
                             f"found {type(validation_data).__name__}.")
        Xv = _features(net, validation_data[0], "validation_data[0]")
        val = (Xv, _targets(net, Xv, validation_data[1], "validation_data[1]"))
    for callback in callbacks:
        if isinstance(callback, EarlyStopping) and callback.monitor == "val_loss" and val is None:
            raise ValueError("EarlyStopping(monitor='val_loss'): expected validation_data; "
                             "found none. Pass validation_data=(X_val, y_val), or "
                             "monitor='loss'.")
    n_rows = int(X.shape[0])
    batch_size = min(batch_size, n_rows)
    rows = _ROUNDS_PER_DEFAULT * _parallel.default_average_every(net._params.size, batch_size) \
        if average_every is None else _parallel.clamp_average_every(average_every, n_rows)
    average_every = _parallel.round_to_batches(rows, batch_size)
    backend = _check_workers(client, net.backend)

    resume_settings = {"source": "dask", "n_rows": n_rows,
                       "n_val": None if val is None else int(val[0].shape[0]),
                       "fingerprint": None, "batch_size": int(batch_size),
                       "shuffle": bool(shuffle), "validation_split": 0.0,
                       # an epoch boundary holds one model: any cluster may continue it
                       "workers": 1,
                       "average_every": int(average_every)}

    def settings():
        if resume_settings["fingerprint"] is None:
            resume_settings["fingerprint"] = _DaskRows(X, Y, client, pairs, offsets,
                                                       where).fingerprint()
        return resume_settings

    # Read every chunk once, where Dask puts it: converted and checked before the model
    # changes, so bad data leaves the model as it was.  pure=False: the prepared chunks are
    # this fit's own; content-derived keys would be shared with an earlier fit on the same
    # data, whose release can race with this fit asking for them again (the scheduler then
    # cancels them).
    offsets = np.concatenate([[0], np.cumsum(X.chunks[0])]).astype(np.int64)
    lengths = [int(n) for n in X.chunks[0]]
    parts = [dask.delayed(_prepare, pure=False)(xb, yb, net._dtype, i, int(offsets[i]))
             for i, (xb, yb) in enumerate(zip(X.to_delayed().ravel(), Y.to_delayed().ravel()))]
    pairs = _read_chunks(client, X, Y, parts)
    try:
        distributed.wait(pairs)
        for future in pairs:
            if future.status == "error":
                future.result()  # raises the chunk's error (ValueError names the row)
        placement = _placement(client, pairs)
        where = {c: addr for addr, chunks in zip(*placement) for c in chunks}
        # resume is checked once the chunks are read: the fingerprint samples them
        position = None
        if resume:
            if net._position is not None:
                settings()
            _checkpoint.check_resume(net._position, resume_settings, optimizer, net.optimizer)
            position = net._position
            if position["rows"] and "dask" not in position:
                raise ValueError(
                    f"fastbp.dask.fit(resume=True): expected a position of a cluster fit (at an "
                    f"epoch boundary, or after a round); found Network.fit's, "
                    f"{position['rows']:,} rows into epoch {position['epoch'] + 1}. Resume it "
                    "with Network.fit(resume=True) on the data it was started with.")
        inside = position is not None and position["rows"] > 0
        if inside and position["dask"]["assignment"] != placement[1]:
            raise ValueError(
                f"fastbp.dask.fit(resume=True): the fit stopped {position['rows']:,} rows into "
                f"epoch {position['epoch'] + 1} with its chunks on "
                f"{len(position['dask']['assignment'])} workers as "
                f"{position['dask']['assignment']}; this cluster holds them as "
                f"{placement[1]}, so that epoch cannot continue row for row. Resume on a "
                "cluster of the same workers holding the same chunks (the assignment is by "
                "where each chunk lives; see the user guide), or fit from the current weights "
                "without resume=True.")
    except BaseException:
        client.cancel(pairs)
        raise

    previous_position, net._position = net._position, None
    before = net._snapshot(shuffle_state=True)
    net._bind_optimizer(optimizer)
    history = History()
    if verbose and not any(isinstance(c, ProgbarLogger) for c in callbacks):
        callbacks.append(ProgbarLogger())
    for callback in callbacks:
        if isinstance(callback, ProgbarLogger):
            callback.set_params(epochs, n_rows)
    callbacks = [history, *callbacks]
    for callback in callbacks:
        callback.set_network(net)
    net.stop_training = False
    epoch = 0
    if position is not None:
        epoch = position["epoch"]
        net._rng.bit_generator.state = position["epoch_rng"]
        history.history = {key: list(values) for key, values in position["history"].items()}
        history.epoch = list(range(len(history.history.get("loss", []))))
        net.stop_training = bool(position.get("stopped", False))
    stopped = net.stop_training
    for callback in callbacks:
        callback.on_train_begin()
    if position is not None:
        _checkpoint.restore_callbacks(position, callbacks)
    net.stop_training = stopped

    run = _Fit(net, client, pairs, lengths, offsets, batch_size, average_every, shuffle,
               _spec(net, backend, batch_size), placement, round_timeout)
    history.workers = list(run.slots_addr)
    history.assignment = [list(a) for a in run.assignment]
    start = (0, 0, 0.0)
    if position is not None and position["rows"]:
        start = (position["dask"]["rounds"], position["rows"], position["loss_sum"])
    # The position where the model stands after the last round (captured then, with the
    # history, callback states and assignment of that moment), or None once a worker has
    # left in this epoch (its rounds can no longer be replayed): Ctrl-C keeps it,
    # checkpoints write it.
    last = None

    def keep(rounds, rows, loss_sum, epoch_rng):
        nonlocal last
        last = _checkpoint.capture(
            epoch=epoch, rows=rows, loss_sum=loss_sum, epoch_rng=epoch_rng,
            stopped=net.stop_training, epochs=epochs, chunk_rows=average_every,
            resume_settings=settings(), history=history.history, callbacks=callbacks)
        if rows:  # inside an epoch: which rounds are done, with which chunks where
            last["dask"] = {"rounds": int(rounds),
                            "assignment": [list(a) for a in run.assignment]}
        if checkpoint is not None:
            net._position = last
            net.save(checkpoint)
            net._position = None

    try:
        with _deferred_sigint() as interrupted:
            while epoch < epochs and not net.stop_training:
                epoch_rng = net._rng.bit_generator.state
                if last is None:  # the first epoch (the others were kept as the last ended)
                    keep(*start, epoch_rng)
                for callback in callbacks:
                    callback.on_epoch_begin(epoch, {"rows": start[1]})

                def after_round(rounds, rows, loss_sum):
                    nonlocal last
                    if run.replayable:
                        keep(rounds, rows, loss_sum, epoch_rng)
                    else:  # the file keeps the epoch's start; Ctrl-C leaves no position
                        last = None

                try:
                    rows, loss_sum, finished = run.epoch(net._rng, callbacks, epoch,
                                                         interrupted, start, after_round)
                except ValueError:
                    # bad data re-read from a changed source: as before this fit
                    net._restore(before)
                    net._position = previous_position
                    raise
                if not finished:
                    raise KeyboardInterrupt
                logs = {"loss": loss_sum / rows}
                if val is not None:
                    logs["val_loss"] = _mean_loss(net, *val, backend=backend)
                for callback in callbacks:
                    callback.on_epoch_end(epoch, logs)
                epoch += 1
                start = (0, 0, 0.0)
                keep(0, 0, 0.0, net._rng.bit_generator.state)
                if interrupted():
                    raise KeyboardInterrupt
    except BaseException as exc:
        for callback in callbacks:  # don't leave a half-drawn bar behind
            if isinstance(callback, ProgbarLogger):
                callback.on_train_end()
        if isinstance(exc, KeyboardInterrupt) and last is not None:
            net._position = last  # fit(resume=True) continues after the last round
        raise
    finally:
        run.close()
        history.rounds_redone = run.rounds_redone
        client.cancel(pairs)
    for callback in callbacks:
        callback.on_train_end()
    return history


_fit_network.__name__ = "fit"
_fit = _writes(_fit_network)


# ====================================================================== inference
def _inference_spec(net, backend):
    return {"backend": backend, "dtype": net._dtype.name, "sizes": net._sizes,
            "acts": net._acts, "loss": net._loss, "params": net._params.copy(),
            "n_out": int(net.layers[-1])}


def _predict_block(block, spec, block_info=None):
    _, kernels = resolve(spec["backend"])
    dtype = np.dtype(spec["dtype"])
    # block_info (given by map_blocks) places the chunk, so an error names X's row
    first_row = block_info[0]["array-location"][0][0] if block_info else 0
    X = validation.to_dtype(block, dtype, "X", first_row=first_row)
    out = np.empty((X.shape[0], spec["n_out"]), dtype=dtype)
    kernels.predict(spec["params"], spec["sizes"], spec["acts"], X, out)
    return out


def _loss_block(x, y, spec, first_row=0):
    """A chunk's loss sum, or the ValueError naming its bad value (raised in chunk order)."""
    _, kernels = resolve(spec["backend"])
    dtype = np.dtype(spec["dtype"])
    try:
        X = validation.to_dtype(x, dtype, "X", first_row=first_row)
        Y = validation.to_dtype(np.reshape(y, (len(y), -1)), dtype, "y", first_row=first_row)
    except ValueError as exc:
        return exc
    return float(kernels.loss_sum(spec["params"], spec["sizes"], spec["acts"], spec["loss"],
                                  X, Y))


def _cpu_backend(net):
    return net.backend if net.backend in _CPU_BACKENDS else "auto"


def _predict_network(net, X):
    X = _features(net, X)
    spec = _inference_spec(net, _cpu_backend(net))
    return X.map_blocks(_predict_block, spec=spec, dtype=net._dtype,
                        chunks=(X.chunks[0], (spec["n_out"],)))


_predict_network.__name__ = "predict"
_predict_network = _reads(_predict_network)


def predict(net, X):
    """The network's outputs for the rows of Dask array ``X``, as a lazy Dask array.

    Parameters
    ----------
    net : fastbp.Network
    X : dask.array.Array, shape (n_samples, n_inputs)

    Returns
    -------
    dask.array.Array, shape (n_samples, n_outputs)
        One task per row chunk, run where the chunk is; computed with the
        weights ``net`` has now (copied at this call), in the network dtype.
    """
    _check_network(net)
    return _predict_network(net, X)


def _mean_loss(net, X, Y, backend=None):
    spec = _inference_spec(net, backend or _cpu_backend(net))
    starts = np.cumsum((0,) + X.chunks[0][:-1])  # each chunk's first row, for error messages
    parts = [dask.delayed(_loss_block, pure=True)(xb, yb, spec, int(start))
             for xb, yb, start in zip(X.to_delayed().ravel(), Y.to_delayed().ravel(), starts)]
    values = dask.compute(*parts)
    for value in values:  # the first bad chunk's error, whichever task failed first
        if isinstance(value, ValueError):
            raise value
    total = 0.0
    for value in values:  # added in chunk order: the same sum on every run
        total += value
    return total / X.shape[0]


def _evaluate_network(net, X, y):
    X = _features(net, X)
    return _mean_loss(net, X, _targets(net, X, y))


_evaluate_network.__name__ = "evaluate"
_evaluate_network = _reads(_evaluate_network)


def evaluate(net, X, y):
    """Mean loss of ``net`` over the rows of Dask arrays ``X``/``y`` (what ``fit`` reports).

    Computed on the cluster (one task per row chunk); the chunks' loss sums
    are added in chunk order.

    Returns
    -------
    float
    """
    _check_network(net)
    return _evaluate_network(net, X, y)

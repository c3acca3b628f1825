"""Many networks at once: :func:`fit_many` and :func:`predict_many`.

Sweeps and ensembles train K networks of one architecture on the same rows.
The data is checked and converted once for all of them; every network then
trains exactly as its own ``Network.fit(..., workers=1)`` would (its initial
weights, its shuffle stream, its optimizer and optimizer state, its step
count), one chunk of rows at a time, with the networks spread over
``workers`` threads (the compiled kernels release the GIL).

One *round* trains the next chunk of every network still training: the
threads take networks in turn from a shared counter, so a network that stops
early (EarlyStopping) frees its thread for the others.  Between rounds the
calling thread, and only it, runs the callbacks and the progress bar: a
callback never runs concurrently with another one, nor with the training of
its own network.

A backend that trains many networks in one launch (``open_many_trainer``:
the CUDA backend, a thread block per network) gets them all in one trainer:
a round then draws every network's chunk and trains those that share rows
(all of them, for data in memory) in one kernel launch, from the calling
thread; each network still sees the :class:`Trainer` contract through its
:class:`_Member`, so the bookkeeping (step count, divergence, callbacks) is
the same code as for the CPU backends.
"""

__all__ = ["ManyDivergedError", "fit_many", "predict_many"]

import itertools

from . import _config, _parallel
from . import _validation as validation
from .callbacks import Callback, History, ProgbarLogger
from .network import (Network, TrainingDivergedError, _check_callbacks, _check_monitored,
                      _check_verbose, _deferred_sigint, _reading, _writing,
                      refuse_nested_fit)
from .optimizers import SGD, Adam, RMSprop


class ManyDivergedError(TrainingDivergedError):
    """Some networks of :func:`fit_many` diverged; the others finished their training.

    Attributes
    ----------
    diverged : list of int
        The indices of the networks that diverged (each keeps its last finite weights).
    histories : list of History
        One per network, as :func:`fit_many` would have returned them: a
        diverged network's holds the epochs it completed.
    """

    def __init__(self, message, diverged, histories):
        super().__init__(message)
        self.diverged = diverged
        self.histories = histories


def _check_networks(networks, what):
    """``networks`` as a list of distinct Networks of one architecture, or a clear error."""
    if isinstance(networks, Network) or not isinstance(networks, (list, tuple)):
        raise TypeError(f"networks: expected a list of fastbp.Network; found "
                        f"{type(networks).__name__}. Pass e.g. {what}([net_a, net_b], X, ...), "
                        "or net.fit(...) for a single network.")
    networks = list(networks)
    if not networks:
        raise ValueError(f"networks: expected at least one fastbp.Network; found an empty "
                         f"list. Pass e.g. [fastbp.Network([20, 64, 1], seed=s) for s in "
                         f"range(4)].")
    seen = {}
    for k, network in enumerate(networks):
        if not isinstance(network, Network):
            raise TypeError(f"networks[{k}]: expected a fastbp.Network; found "
                            f"{type(network).__name__}. Pass a list of fastbp.Network objects.")
        if id(network) in seen:
            raise ValueError(f"networks[{k}]: expected distinct Network objects; found the same "
                             f"Network as networks[{seen[id(network)]}]. Each network trains "
                             "on its own; to train a copy, build another Network (e.g. with "
                             "another seed) or set_weights(net.get_weights()) on a new one.")
        seen[id(network)] = k
    first = networks[0]
    fields = (("layer widths", lambda n: list(n.layers)),
              ("activations", lambda n: n.activations),
              ("loss", lambda n: n.loss),
              ("dtype", lambda n: n.dtype.name))
    for k, network in enumerate(networks[1:], start=1):
        for field, value in fields:
            if value(network) != value(first):
                raise ValueError(
                    f"networks[{k}]: expected the {field} of networks[0], "
                    f"{validation.show(value(first))}; found {validation.show(value(network))}. "
                    f"{what} runs networks of one architecture on the same data: build them "
                    "with the same layers, activations, output_activation, loss and dtype "
                    "(seeds, initializers, backends and optimizers may differ).")
    return networks


def _check_optimizers(optimizers, n):
    """One optimizer (or None: the network's current one) per network."""
    if optimizers is None:
        return [None] * n
    if not isinstance(optimizers, (list, tuple)):
        raise TypeError(f"optimizers: expected a list with one optimizer per network, or None; "
                        f"found {type(optimizers).__name__}. Pass e.g. "
                        f"optimizers=[fastbp.SGD(0.01)] * {n}.")
    if len(optimizers) != n:
        raise ValueError(f"optimizers: expected one optimizer per network ({n}); found "
                         f"{len(optimizers)}. Pass a list as long as networks (None entries "
                         "keep that network's current optimizer).")
    for k, optimizer in enumerate(optimizers):
        if optimizer is not None and not isinstance(optimizer, (SGD, Adam, RMSprop)):
            raise TypeError(f"optimizers[{k}]: expected fastbp.SGD, fastbp.Adam, "
                            f"fastbp.RMSprop or None; found {type(optimizer).__name__}. Pass "
                            "e.g. fastbp.Adam(learning_rate=0.001).")
    return list(optimizers)


def _check_many_callbacks(callbacks, n):
    """Each network's own list of callbacks, from a factory or a list of lists."""
    if callbacks is None:
        return [[] for _ in range(n)]
    how = ("Pass a function of the network's index that returns its callbacks, e.g. "
           "callbacks=lambda k: [fastbp.EarlyStopping(patience=3)], or a list with one "
           "list of callbacks per network.")
    if callable(callbacks) and not isinstance(callbacks, Callback):
        lists = []
        for k in range(n):
            made = callbacks(k)
            try:
                lists.append(_check_callbacks(made))
            except TypeError as exc:
                raise TypeError(f"callbacks({k}) returned what fit does not take: {exc}") \
                    from None
    elif isinstance(callbacks, (list, tuple)) and all(
            isinstance(item, (list, tuple)) for item in callbacks):
        if len(callbacks) != n:
            raise ValueError(f"callbacks: expected one list of callbacks per network ({n}); "
                             f"found {len(callbacks)}. {how}")
        lists = [_check_callbacks(item) for item in callbacks]
    else:
        raise TypeError(f"callbacks: expected a function k -> list of callbacks, or one list "
                        f"per network; found {type(callbacks).__name__}"
                        + (" of callbacks (one instance cannot keep the state of several "
                           "networks)" if isinstance(callbacks, (list, tuple)) else "")
                        + f". {how}")
    owner = {}
    for k, items in enumerate(lists):
        for callback in items:
            if id(callback) in owner and owner[id(callback)] != k:
                raise ValueError(f"callbacks: expected a fresh callback object per network; "
                                 f"found the same {type(callback).__name__} for networks "
                                 f"{owner[id(callback)]} and {k}. A callback keeps the state "
                                 f"of one network (EarlyStopping's best loss, say). {how}")
            owner[id(callback)] = k
    return lists


class _Job:
    """One network's fit inside :func:`fit_many`: its callbacks, epoch and chunk iterator.

    :meth:`begin_epoch`, :meth:`after_step` and the callbacks run in the
    calling thread; :meth:`step` (one chunk, and the validation loss at the
    end of an epoch) in whichever worker thread takes the network.
    """

    def __init__(self, index, network, callbacks, run):
        self.index, self.network, self.run = index, network, run
        self.history = History()
        self.callbacks = [self.history, *callbacks]
        self.epoch = 0
        self.active = True
        self.diverged = None
        self.trained = 0  # rows trained in this call, all epochs
        self._chunks = None

    def begin_epoch(self):
        """Start the next epoch, or end this network's training (False)."""
        run = self.run
        if self.epoch >= run.epochs or self.network.stop_training:
            self.active = False
            self._chunks = None
            return False
        self.rows, self.loss_sum, self.logs = 0, 0.0, None
        self._chunks = run.train.chunks(self.network._rng, run.shuffle, run.chunk_rows)
        for callback in self.callbacks:
            callback.on_epoch_begin(self.epoch, {"rows": 0})
        return True

    def next_chunk(self):
        """The ``(X, Y, order)`` of this network's next chunk."""
        return next(self._chunks)

    def step(self, chunk=None):
        """Train ``chunk`` (default: the next); at the epoch's end compute its logs.

        Returns True, or False when a second Ctrl-C interrupted the chunk.
        """
        run, network = self.run, self.network
        X, Y, order = self.next_chunk() if chunk is None else chunk
        trained = network._train_chunk(X, Y, order, run.batch_size, self.epoch, self.rows)
        if trained is None:
            return False
        self.loss_sum += trained[0]
        self.rows += trained[1]
        self.trained += trained[1]
        if self.rows == run.train.n_rows:
            self.logs = {"loss": self.loss_sum / self.rows}
            if run.val is not None:
                # the caller's chunk_rows: a worker thread does not see its config_context
                self.logs["val_loss"] = network._mean_loss(run.val, 1, run.block_rows)
        return True

    def after_step(self):
        """The callbacks of the chunk just trained (and of the epoch, if it ended)."""
        logs = {"rows": self.rows, "loss": self.loss_sum / self.rows}
        for callback in self.callbacks:
            callback.on_chunk_end(self.epoch, logs)
        if self.logs is not None:
            for callback in self.callbacks:
                callback.on_epoch_end(self.epoch, self.logs)
            self.epoch += 1
            self.begin_epoch()


class _Member:
    """Network ``k``'s view of a many-network trainer: the :class:`Trainer` contract.

    Its chunk was already trained by the round's one launch
    (:func:`_group_round`), which left the result here; :meth:`train` hands
    it over, and the rest acts on network ``k`` alone.
    """

    def __init__(self, group, k):
        self.group, self.k = group, k
        self.result = None

    def train(self, X, Y, order, step):
        result, self.result = self.result, None
        return result

    def finite(self):
        return bool(self.group.finite_many()[self.k])

    def store(self):
        self.group.store([self.k])

    def reload(self):
        self.group.reload([self.k])

    def close(self):
        pass  # the group trainer is closed once, by fit_many


def _trains_many(networks):
    """The networks' one backend when it trains many networks in one launch, else None."""
    kernels = networks[0]._kernels
    if not hasattr(kernels, "open_many_trainer") or any(net._kernels is not kernels
                                                         for net in networks):
        return None
    return kernels


def _check_device_memory(networks, train, run):
    """Refuse more networks than one launch of a many-network backend can hold."""
    kernels = _trains_many(networks)
    if kernels is None:
        return
    resident = 0 if train.streamed else train.X.nbytes + train.Y.nbytes
    if resident > kernels.RESIDENT_BYTES:
        resident = 0  # then only each chunk's rows travel
    free = kernels.free_bytes()
    chunk = min(run.chunk_rows, train.n_rows)  # the longest row order one launch takes
    shape = (networks[0]._sizes, networks[0]._dtype, chunk, run.batch_size)
    fit = kernels.max_networks(*shape, resident, free)
    if len(networks) > fit:
        need = kernels.network_bytes(*shape)
        raise ValueError(
            f"fit_many: expected at most {fit} networks of this shape on the GPU (each needs "
            f"{need / 2**20:.2f} MiB of device memory with chunks of {chunk} rows, "
            f"the rows {resident / 2**20:.1f} MiB, and {free / 2**20:.0f} MiB "
            f"are free); found {len(networks)}. Train them in groups of at most {fit} "
            f"(one fit_many call each), or lower chunk_rows with fastbp.config_context.")


def _group_trainer(networks, batch_size):
    """One trainer for every network when their backend trains many at once, else None."""
    kernels = _trains_many(networks)
    if kernels is None:
        return None
    return kernels.open_many_trainer(
        [net._params for net in networks], [net._state for net in networks],
        networks[0]._sizes, networks[0]._acts, networks[0]._loss, batch_size,
        [net._opt_code for net in networks], [net._hyper for net in networks])


def _group_round(group, active):
    """Train one chunk of every job in ``active`` with the many-network trainer.

    The chunks are drawn in network order; the networks whose chunks share
    their rows (all of them, for data in memory; a streamed file gives each
    network its own block) train in one launch.  Results as :func:`_round`'s.
    """
    chunks = []
    for job in active:
        try:
            chunks.append(job.next_chunk())
        except BaseException as exc:  # bad data in a streamed block: that job's result
            chunks.append(exc)
    by_rows = {}
    for i, chunk in enumerate(chunks):
        if not isinstance(chunk, BaseException):
            by_rows.setdefault((id(chunk[0]), id(chunk[1])), []).append(i)
    try:
        for members in by_rows.values():
            X, Y, _ = chunks[members[0]]
            totals, done = group.train_many(
                X, Y, [chunks[i][2] for i in members],
                [active[i].network._step for i in members],
                networks=[active[i].index for i in members])
            for i, total, rows in zip(members, totals, done):
                active[i].network._trainer.result = (float(total), int(rows))
    except KeyboardInterrupt:  # a second Ctrl-C: every network back to its last chunk
        group.reload()
        return [False] * len(active)
    results = []
    for job, chunk in zip(active, chunks):
        if isinstance(chunk, BaseException):
            results.append(chunk)
            continue
        try:
            results.append(job.step(chunk))
        except BaseException as exc:  # kept in network order, raised by the caller
            results.append(exc)
    return results


class _Run:
    """What every network of one :func:`fit_many` call shares."""

    def __init__(self, train, val, epochs, batch_size, shuffle):
        self.train, self.val = train, val
        self.epochs, self.batch_size, self.shuffle = epochs, batch_size, shuffle
        # read here, in the calling thread (its config_context applies)
        self.block_rows = _config.chunk_rows()
        self.chunk_rows = max(1, self.block_rows // batch_size) * batch_size


class _Progress:
    """One bar for the whole job: rows trained over all networks and epochs."""

    def __init__(self, jobs):
        from tqdm.auto import tqdm  # imported only when a bar is shown

        self._jobs = jobs
        self._bar = tqdm(total=self._total(), unit="rows", unit_scale=True, leave=True,
                         desc=f"{len(jobs)} networks", dynamic_ncols=True)

    def _total(self):
        # a network that stopped early (or diverged) will train no more rows
        return sum(job.run.epochs * job.run.train.n_rows if job.active else job.trained
                   for job in self._jobs)

    def update(self):
        self._bar.total = self._total()
        self._bar.update(sum(job.trained for job in self._jobs) - self._bar.n)
        losses = [job.history.history["loss"][-1] for job in self._jobs
                  if job.history.history.get("loss")]
        postfix = {"training": sum(job.active for job in self._jobs)}
        if losses:
            postfix["best loss"] = f"{min(losses):.4g}"
        self._bar.set_postfix(postfix, refresh=False)

    def close(self):
        self._bar.close()


def fit_many(networks, X, y, *, epochs=1, batch_size=32, optimizers=None, shuffle=True,
             validation_data=None, validation_split=0.0, callbacks=None, verbose="auto",
             workers=1):
    """Train several networks of one architecture on the same data, each as its own ``fit``.

    Parameters
    ----------
    networks : list of Network
        Distinct networks with the same layer widths, activations, loss and
        dtype (seeds, initial weights, backends and optimizers may differ).
    X, y : array_like
        As for :meth:`Network.fit`; checked and converted once for all the
        networks.  A ``np.memmap`` ``X`` is streamed block by block (each
        network reads its blocks in its own shuffled order).
    epochs, batch_size, shuffle, validation_data, validation_split
        As for :meth:`Network.fit`, the same for every network.
    optimizers : list or None
        One optimizer per network (an entry None, or ``optimizers=None``:
        that network's current optimizer, ``SGD()`` the first time, as
        ``fit(optimizer=None)`` chooses).  The state rules are ``fit``'s: an
        optimizer equal to a network's current one continues its state.
    callbacks : callable or list of lists, optional
        Each network's own callbacks: a function ``callbacks(k)`` returning
        the list for network ``k`` (called once per network, before any
        training), or a list with one list per network.  A callback object
        serves one network (``callback.network``; the same object for two
        networks is refused).  An ``EarlyStopping`` stops its own network
        only; the others go on.
    verbose : {"auto", 0, 1}
        1 draws one progress bar for the whole job (rows over all networks).
    workers : int, default 1
        Threads to spread the networks over (-1: every usable core).  Each
        network trains serially, so the results do not depend on it.  Not
        used when every network is on the ``"cuda"`` backend: one kernel
        launch per round trains them all, a thread block each.

    Returns
    -------
    list of History
        ``histories[k]`` is what ``networks[k].fit(X, y, ..., optimizer=optimizers[k],
        workers=1)`` would return.

    Raises
    ------
    ManyDivergedError
        Some networks diverged (each keeps its last finite weights); the
        others trained to the end.  Its ``histories`` and ``diverged``
        attributes hold the results and the indices.
    KeyboardInterrupt
        Ctrl-C stops after the round of chunks in progress; each network
        keeps the state after its last completed chunk (``fit_many`` keeps
        no training position: it cannot be resumed).
    RuntimeError
        Another thread is using one of the networks.
    ValueError
        Bad arguments or data (nothing changed); on the ``"cuda"`` backend,
        more networks than the GPU's free memory holds (the message says how
        many fit).

    Notes
    -----
    On the CPU backends each network's weights, optimizer state, step count
    and history equal bit for bit those of its own ``fit`` with the same
    arguments and ``workers=1``; on the ``"cuda"`` backend they run the same
    kernel as that ``fit``, a block per network, in one launch.  Callbacks
    and the progress bar run in the calling thread, between rounds (one
    chunk of every network still training); a bad argument or bad data (in
    memory) changes no network.
    """
    networks = _check_networks(networks, "fit_many")
    refuse_nested_fit(networks, "fit_many")
    with _writing(networks, "fit_many"):
        return _fit_many(networks, X, y, epochs, batch_size, optimizers, shuffle,
                         validation_data, validation_split, callbacks, verbose, workers)


def _fit_many(networks, X, y, epochs, batch_size, optimizers, shuffle, validation_data,
              validation_split, callbacks, verbose, workers):
    # Every check before anything changes, in fit's order.
    epochs = validation.check_positive_int(epochs, "epochs")
    batch_size = validation.check_positive_int(batch_size, "batch_size")
    shuffle = validation.check_bool(shuffle, "shuffle")
    validation_split = validation.check_fraction(validation_split, "validation_split")
    optimizers = _check_optimizers(optimizers, len(networks))
    for k, optimizer in enumerate(optimizers):
        if optimizer is not None:
            optimizer._check_dtype(networks[k].dtype, f"optimizers[{k}]")
    verbose = _check_verbose(verbose)
    workers = _parallel.check_workers(workers)
    lists = _check_many_callbacks(callbacks, len(networks))
    # The data once, for all: every network has the first one's widths, loss and dtype.
    train, val = networks[0]._fit_sources(X, y, validation_data, validation_split)
    for items in lists:
        _check_monitored(items, val)
    batch_size = min(batch_size, train.n_rows)  # as fit: one batch of all rows
    run = _Run(train, val, epochs, batch_size, shuffle)
    _check_device_memory(networks, train, run)

    threads = all(_parallel.releases_gil(net._kernels) for net in networks)
    # one launch trains them all on a many-network backend: no turns to warn of
    if workers > 1 and not threads and _trains_many(networks) is None:
        slow = next(net for net in networks if not _parallel.releases_gil(net._kernels))
        _parallel.warn_in_turn(slow._kernels, workers)
    workers = min(workers, len(networks))

    # From here on the networks change (as fit, each drops its training position).
    before = [net._snapshot(shuffle_state=True) for net in networks]
    positions = [net._position for net in networks]
    jobs = []
    for k, (net, optimizer, items) in enumerate(zip(networks, optimizers, lists)):
        net._position = None
        net._bind_optimizer(optimizer)
        for callback in items:
            if isinstance(callback, ProgbarLogger):
                callback.set_params(epochs, train.n_rows)
        jobs.append(_Job(k, net, items, run))
    streamed = train.streamed or (val is not None and val.streamed)
    runner = group = None
    progress = None
    # Until the first round, nothing has trained: any failure (a callback's
    # on_train_begin, the buffers) gives every network back as it was.
    rollback = True
    try:
        for job in jobs:
            for callback in job.callbacks:
                callback.set_network(job.network)
            job.network.stop_training = False
            for callback in job.callbacks:
                callback.on_train_begin()
        group = _group_trainer(networks, batch_size)
        for job in jobs:
            net = job.network
            net._trainer = (_Member(group, job.index) if group is not None else
                            net._kernels.open_trainer(net._params, net._state, net._sizes,
                                                      net._acts, net._loss, batch_size,
                                                      net._opt_code, net._hyper))
        runner = _parallel.TaskRunner(workers, threads)
        if verbose:
            progress = _Progress(jobs)
        rollback = False
        with _deferred_sigint() as interrupted:
            for job in jobs:
                job.begin_epoch()
            while True:
                active = [job for job in jobs if job.active]
                if not active:
                    break
                results = (_group_round(group, active) if group is not None else
                           _round(runner, active, workers))
                stop = False
                for job, result in zip(active, results):  # network order: deterministic
                    if isinstance(result, TrainingDivergedError):
                        job.diverged = result
                        job.active = False
                        for callback in job.callbacks:  # no half-drawn bar behind
                            if isinstance(callback, ProgbarLogger):
                                callback.on_train_end()
                    elif isinstance(result, BaseException):
                        # Bad data in a streamed block is found in the first epoch,
                        # which reads every block: then every network goes back to
                        # where it was before this call, as fit does.
                        rollback = (isinstance(result, ValueError) and streamed
                                    and job.epoch == 0)
                        raise result
                    elif result is False:
                        stop = True
                for job, result in zip(active, results):
                    if result is True:
                        job.after_step()
                if progress is not None:
                    progress.update()
                if stop or interrupted():
                    raise KeyboardInterrupt
    except BaseException:
        if rollback:
            for net, snapshot, position in zip(networks, before, positions):
                net._restore(snapshot)
                net._position = position
        _end_bars(jobs)
        raise
    finally:
        if progress is not None:
            progress.close()
        for job in jobs:
            trainer, job.network._trainer = job.network._trainer, None
            if trainer is not None:
                trainer.close()
        if group is not None:
            group.close()
        if runner is not None:
            runner.close()
    histories = [job.history for job in jobs]
    for job in jobs:
        if job.diverged is None:
            for callback in job.callbacks:
                callback.on_train_end()
    diverged = [job.index for job in jobs if job.diverged is not None]
    if diverged:
        first = jobs[diverged[0]].diverged
        raise ManyDivergedError(
            f"fit_many: networks {diverged} diverged (the loss or the weights became NaN or "
            f"infinite; each keeps its last finite weights); the others trained to the end. "
            f"networks[{diverged[0]}]: {first} The histories are in this error's .histories.",
            diverged, histories)
    return histories


def _round(runner, active, workers):
    """Train one chunk of every job in ``active`` on the threads: results in job order.

    A job's result is True (trained), False (a second Ctrl-C interrupted it)
    or the exception it raised; the threads take jobs from a shared counter.
    """
    results = [None] * len(active)
    counter = itertools.count()

    def task(_):
        for i in iter(counter.__next__, None):
            if i >= len(active):
                return
            try:
                results[i] = active[i].step()
            except BaseException as exc:  # kept in network order, raised by the caller
                results[i] = exc

    runner.run(task, min(workers, len(active)))
    return results


def _end_bars(jobs):
    for job in jobs:
        for callback in job.callbacks:
            if isinstance(callback, ProgbarLogger):
                callback.on_train_end()


def predict_many(networks, X, *, workers=1):
    """The outputs of several networks of one architecture on the same rows.

    Parameters
    ----------
    networks : list of Network
        Distinct networks with the same layer widths, activations, loss and dtype.
    X : array_like, shape (n_samples, n_inputs)
        Checked once; converted to the networks' dtype one block at a time
        (a ``np.memmap`` is read block by block), each block once for all
        the networks.
    workers : int, default 1
        Threads to spread the networks over (-1: every usable core).

    Returns
    -------
    ndarray, shape (n_networks, n_samples, n_outputs)
        ``out[k]`` equals ``networks[k].predict(X)``, bit for bit.
    """
    import numpy as np

    networks = _check_networks(networks, "predict_many")
    workers = _parallel.check_workers(workers)
    first = networks[0]
    X = validation.check_features(X, first.layers[0])
    out = np.empty((len(networks), X.shape[0], first.layers[-1]), dtype=first.dtype)
    threads = all(_parallel.releases_gil(net._kernels) for net in networks)
    workers = min(workers, len(networks))
    if workers > 1 and not threads:
        slow = next(net for net in networks if not _parallel.releases_gil(net._kernels))
        _parallel.warn_in_turn(slow._kernels, workers)
    runner = _parallel.TaskRunner(workers, threads)
    step = _config.chunk_rows()  # the blocks of predict(X, workers=1): the same bits
    try:
        with _reading(networks, "predict_many"):
            _predict_blocks(networks, X, out, runner, workers, step)
    finally:
        runner.close()
    return out


def _predict_blocks(networks, X, out, runner, workers, step):
    """``out[k] = networks[k].predict(X)`` block by block, ``workers`` tasks per block."""
    first = networks[0]
    for start in range(0, X.shape[0], step):
        block = validation.to_dtype(X[start:start + step], first.dtype, "X", first_row=start)
        counter = itertools.count()

        def task(_, block=block, start=start, counter=counter):
            for k in iter(counter.__next__, None):
                if k >= len(networks):
                    return
                networks[k]._predict_block(block, out[k, start:start + block.shape[0]])

        runner.run(task, workers)


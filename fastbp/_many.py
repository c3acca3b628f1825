"""Many networks of one shape at once: :func:`fit_many` and :func:`predict_many`.

Sweeps (learning rates x seeds), seed ensembles and bagging train networks
that share the layer widths, activations, loss and dtype on the same data.
``fit_many`` checks and converts the data once for all of them, then runs
each network's own ``fit`` on it, ``workers`` networks at a time (the
compiled kernels release the GIL, so each thread trains one network on its
own core).  Each network keeps its own weights, seed (its own shuffles),
optimizer and optimizer state, so each result is exactly what that
network's ``fit`` gives alone: the same code on the same rows, bitwise.
"""

import copy
import threading

import numpy as np

from . import _parallel
from . import _validation as validation
from ._config import config_context, get_config
from .callbacks import Callback, ProgbarLogger
from .network import Network, _check_verbose

__all__ = ["fit_many", "predict_many"]


def _check_networks(networks, what):
    """``networks`` as a list of distinct Networks of one shape, or a clear error."""
    if isinstance(networks, Network) or not isinstance(networks, (list, tuple)):
        raise TypeError(f"{what}: expected a list of fastbp.Network; found "
                        f"{type(networks).__name__}. Pass e.g. [Network(...), Network(...)].")
    networks = list(networks)
    if not networks:
        raise ValueError(f"{what}: expected at least one network; found an empty list.")
    for k, net in enumerate(networks):
        if not isinstance(net, Network):
            raise TypeError(f"{what}: expected fastbp.Network items; found "
                            f"{type(net).__name__} at position {k}.")
    seen = {}
    for k, net in enumerate(networks):
        if id(net) in seen:
            raise ValueError(f"{what}: expected distinct networks; found the same Network at "
                             f"positions {seen[id(net)]} and {k}. Pass each network once "
                             "(copy.deepcopy(net) makes an independent one).")
        seen[id(net)] = k
    first = networks[0]
    for k, net in enumerate(networks[1:], start=1):
        for field, value in (("layers", lambda n: tuple(n.layers)),
                             ("activations", lambda n: tuple(n.activations)),
                             ("loss", lambda n: n.loss), ("dtype", lambda n: str(n.dtype))):
            if value(net) != value(first):
                raise ValueError(f"{what}: expected networks of one shape; network {k} has "
                                 f"{field} {value(net)!r}, network 0 has {value(first)!r}. "
                                 "Train networks of different shapes with separate calls.")
    return networks


def _per_network_callbacks(callbacks, n):
    """One callback list per network: a list of lists as given, or copies of one list."""
    if callbacks is None:
        return [[] for _ in range(n)]
    if isinstance(callbacks, (list, tuple)) and callbacks and all(
            isinstance(c, (list, tuple)) for c in callbacks):
        if len(callbacks) != n:
            raise ValueError(f"callbacks: expected one list per network ({n}); found "
                             f"{len(callbacks)} lists. Pass {n} lists, or one list of "
                             "callbacks that every network gets a copy of.")
        lists = [list(c) for c in callbacks]
    elif isinstance(callbacks, (list, tuple)):
        # Callbacks keep state (EarlyStopping's patience): every network gets its own.
        lists = [list(callbacks)] + [copy.deepcopy(list(callbacks)) for _ in range(n - 1)]
    else:
        raise TypeError(f"callbacks: expected a list of fastbp callbacks, or one list per "
                        f"network; found {type(callbacks).__name__}.")
    for k, group in enumerate(lists):
        for callback in group:
            if not isinstance(callback, Callback):
                raise TypeError(f"callbacks: expected instances of fastbp.Callback; found "
                                f"{type(callback).__name__} (for network {k}).")
    return lists


class _SharedBar(Callback):
    """All networks' progress on one bar (rows trained over networks x epochs x rows)."""

    def __init__(self, bar, lock):
        self.bar, self.lock = bar, lock
        self._done = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._done = (logs or {}).get("rows", 0)

    def on_chunk_end(self, epoch, logs=None):
        with self.lock:
            self.bar.update(logs["rows"] - self._done)
        self._done = logs["rows"]


def fit_many(networks, X, y, *, epochs=1, batch_size=32, optimizers=None, shuffle=True,
             validation_data=None, validation_split=0.0, callbacks=None, verbose="auto",
             workers=1):
    """Train several networks of one shape on the same data; each as its own ``fit`` would.

    Parameters
    ----------
    networks : list of Network
        Distinct networks with the same layer widths, activations, loss and
        dtype (their backends may differ).  Each keeps its own weights, seed
        (its shuffles), optimizer state and step.
    X, y, epochs, batch_size, shuffle, validation_data, validation_split
        As :meth:`Network.fit`'s, the same for every network.  The data is
        checked and converted once for all of them.
    optimizers : list of optimizers, optional
        One per network (e.g. ``[SGD(lr) for lr in rates]``); None gives
        each network what ``fit(optimizer=None)`` would: its current one.
    callbacks : list of Callback, or list of lists, optional
        One list per network, or one list of which every network gets its
        own copy (``copy.deepcopy``; callbacks keep state, so
        ``EarlyStopping`` stops each network on its own).  Every callback's
        ``network_index`` is set to the position of its network.
    verbose : {"auto", 0, 1}
        1 shows one progress bar for the whole job.
    workers : int, default 1
        Networks trained at the same time, each on its own thread (-1: every
        usable core).  Each network's own fit is serial (``workers=1``), so
        its result does not depend on this number.

    Returns
    -------
    list of History
        One per network, in order.

    Raises
    ------
    ValueError, TypeError
        Bad networks, optimizers or callbacks, and everything ``fit`` refuses;
        raised before any network changes.
    KeyboardInterrupt
        Ctrl-C stops every network at its next chunk of rows, each holding a
        consistent state and its training position (as ``fit`` does).

    Notes
    -----
    A network whose fit raises (e.g. ``TrainingDivergedError``) does not stop
    the others; once all are done, the first such error is raised.
    """
    networks = _check_networks(networks, "fit_many networks")
    n = len(networks)
    if optimizers is None:
        optimizers = [None] * n
    elif not isinstance(optimizers, (list, tuple)) or len(optimizers) != n:
        found = (f"{len(optimizers)} optimizers" if isinstance(optimizers, (list, tuple))
                 else type(optimizers).__name__)
        raise ValueError(f"optimizers: expected a list of one optimizer per network ({n}); "
                         f"found {found}. Pass e.g. [fastbp.SGD(lr) for lr in rates], or "
                         "None.")
    groups = _per_network_callbacks(callbacks, n)
    verbose = _check_verbose(verbose)
    workers = _parallel.check_workers(workers)
    settings = [net._fit_settings(epochs, batch_size, opt, shuffle, validation_split, group,
                                  0, None, False, 1, None)
                for net, opt, group in zip(networks, optimizers, groups)]
    first = networks[0]
    train, val = first._fit_sources(X, y, validation_data, settings[0]["validation_split"])
    if train.streamed or (val is not None and val.streamed):
        # a streamed source reads (and releases) its file's pages as it goes: one per network
        sources = [(train, val)] + [net._fit_sources(X, y, validation_data,
                                                     settings[0]["validation_split"])
                                    for net in networks[1:]]
    else:
        sources = [(train, val)] * n
    for k, group in enumerate(groups):
        for callback in group:
            callback.network_index = k
    bar = None
    if verbose:
        from tqdm.auto import tqdm  # imported only when a bar is shown
        bar = tqdm(total=n * int(settings[0]["epochs"]) * train.n_rows, unit="rows",
                   unit_scale=True, desc=f"{n} networks", dynamic_ncols=True)
        lock = threading.Lock()
        for setting in settings:
            setting["callbacks"].append(_SharedBar(bar, lock))
    stop = threading.Event()
    results = [None] * n

    def train_one(k):
        try:
            results[k] = _fit_one(networks[k], *sources[k], settings[k], stop)
        except BaseException as exc:  # reported after the others finish
            results[k] = exc

    try:
        if workers == 1:
            for k in range(n):
                train_one(k)
                if isinstance(results[k], KeyboardInterrupt):
                    break
        else:
            _run_threads(train_one, n, workers, stop)
    finally:
        if bar is not None:
            bar.close()
    errors = [r for r in results if isinstance(r, BaseException)]
    interrupts = [e for e in errors if isinstance(e, KeyboardInterrupt)]
    if interrupts or stop.is_set():
        raise interrupts[0] if interrupts else KeyboardInterrupt()
    if errors:
        raise errors[0]
    return results


def _fit_one(net, train, val, settings, stop):
    """One network's fit on the shared sources; ``stop`` is Ctrl-C for fits in threads."""
    in_thread = threading.current_thread() is not threading.main_thread()
    return net._fit_member(train, val, settings, stop if in_thread else None)


def _run_threads(task, n, workers, stop):
    """``task(k)`` for every k on ``workers`` threads; Ctrl-C sets ``stop`` and waits.

    The threads see the caller's settings (``config_context`` is per thread).
    """
    queue = list(range(n))
    lock = threading.Lock()
    settings = get_config()

    def loop():
        with config_context(**settings):
            while not stop.is_set():
                with lock:
                    if not queue:
                        return
                    k = queue.pop(0)
                task(k)

    threads = [threading.Thread(target=loop, name=f"fastbp-fit-many-{i}", daemon=True)
               for i in range(min(workers, n))]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.1)
    except KeyboardInterrupt:
        stop.set()  # each fit stops at its next chunk with a consistent state
        for thread in threads:
            thread.join()
        raise


def predict_many(networks, X, *, workers=1):
    """The outputs of every network for the rows of ``X``: shape ``(K, n_samples, n_outputs)``.

    ``networks`` as :func:`fit_many`'s; each network's outputs are its own
    ``predict(X)``.  ``workers`` threads share the networks.  The mean over
    the first axis is an ensemble's prediction, the spread its uncertainty.
    """
    networks = _check_networks(networks, "predict_many networks")
    workers = _parallel.check_workers(workers)
    first = networks[0]
    X = validation.check_features(X, first.layers[0])
    out = np.empty((len(networks), X.shape[0], first.layers[-1]), dtype=first.dtype)

    def task(k):
        out[k] = networks[k].predict(X)

    errors = []

    def safe(k):
        try:
            task(k)
        except BaseException as exc:
            errors.append(exc)

    if workers == 1:
        for k in range(len(networks)):
            task(k)
    else:
        _run_threads(safe, len(networks), workers, threading.Event())
        if errors:
            raise errors[0]
    return out

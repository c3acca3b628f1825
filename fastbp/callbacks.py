"""Training callbacks with Keras's names: History, EarlyStopping, ProgbarLogger.

``fit`` calls, in order: ``on_train_begin``, then per epoch ``on_epoch_begin``,
``on_chunk_end`` after every compiled call (a chunk of rows, not a batch: the
kernels run whole chunks without returning to Python), ``on_epoch_end`` with
``logs = {"loss": ..., "val_loss": ...}``; finally ``on_train_end``.  A
callback stops training by setting ``network.stop_training = True``.
"""

import math

from . import _validation as V


class Callback:
    """Base class: override the hooks you need.  ``self.network`` is set by ``fit``."""

    network = None

    def set_network(self, network):
        self.network = network

    def on_train_begin(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_chunk_end(self, epoch, logs=None):
        """After each compiled call; ``logs = {"rows": rows done this epoch, "loss": running mean}``."""

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass


class History(Callback):
    """What ``fit`` returns: ``history["loss"]`` (and ``"val_loss"``) hold one float per epoch."""

    def __init__(self):
        self.history = {}
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)

    def __repr__(self):
        return f"History(epochs={len(self.epoch)}, keys={sorted(self.history)})"


class EarlyStopping(Callback):
    """Stop when a monitored loss has stopped improving (Keras semantics).

    Parameters
    ----------
    monitor : {"val_loss", "loss"}, default "val_loss"
    min_delta : float, default 0
        An improvement must lower the monitored value by more than this.  Its
        absolute value is used (as in Keras): ``-0.01`` means ``0.01``.
    patience : int >= 0, default 0
        Epochs without improvement after which training stops.
    restore_best_weights : bool, default False
        At the end of training, put back the weights of the best epoch.
    """

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0,
                 restore_best_weights=False):
        if not isinstance(monitor, str) or monitor not in ("val_loss", "loss"):
            raise ValueError(f"EarlyStopping monitor: expected 'val_loss' or 'loss'; found "
                             f"{V.show(monitor)}. Pass monitor='val_loss' (with validation "
                             "data) or monitor='loss'.")
        delta = V.as_real(min_delta)
        if delta is None or not math.isfinite(delta):
            raise ValueError(f"EarlyStopping min_delta: expected a finite number; found "
                             f"{V._found(min_delta, delta)}. Pass e.g. "
                             "EarlyStopping(min_delta=0.0) (any improvement counts) or "
                             "EarlyStopping(min_delta=1e-4).")
        self.monitor = str(monitor)
        self.min_delta = abs(delta)  # as Keras: the sign does not matter
        self.patience = V.check_int(patience, "EarlyStopping patience", minimum=0, example=3)
        self.restore_best_weights = V.check_bool(restore_best_weights,
                                                 "EarlyStopping restore_best_weights")

    def on_train_begin(self, logs=None):
        self.wait = 0
        self.best = math.inf
        self.best_epoch = 0
        self.best_weights = None
        self.stopped_epoch = 0

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get(self.monitor)
        if current is None:
            raise ValueError(f"EarlyStopping monitors {self.monitor!r}, which fit did not "
                             f"compute (found {sorted(logs or {})}). Pass validation_data or "
                             "validation_split, or monitor='loss'.")
        self.wait += 1
        if current + self.min_delta < self.best:
            self.best = current
            self.best_epoch = epoch
            self.wait = 0
            if self.restore_best_weights:
                self.best_weights = self.network.get_weights()
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.network.stop_training = True

    def on_train_end(self, logs=None):
        if self.restore_best_weights and self.best_weights is not None:
            self.network.set_weights(self.best_weights)

    # A checkpoint written by fit(checkpoint=...) keeps this state, so a
    # resumed fit stops at the same epoch and restores the same weights.
    def _get_state(self):
        state = {"wait": self.wait, "best": None if math.isinf(self.best) else self.best,
                 "best_epoch": self.best_epoch, "stopped_epoch": self.stopped_epoch}
        weights = {} if self.best_weights is None else \
            {f"best_weights.{i}": w for i, w in enumerate(self.best_weights)}
        return state, weights

    def _set_state(self, state, arrays):
        self.wait = int(state["wait"])
        self.best = math.inf if state["best"] is None else float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.stopped_epoch = int(state["stopped_epoch"])
        self.best_weights = [arrays[f"best_weights.{i}"] for i in range(len(arrays))] or None


class ProgbarLogger(Callback):
    """A tqdm progress bar per epoch showing rows/s and the running loss.

    ``fit(verbose=1)`` adds one; pass it in ``callbacks`` to choose where it
    writes.  It updates once per chunk of rows (not per batch), so it costs
    nothing measurable.

    Parameters
    ----------
    epochs, rows : int, optional
        The epoch count and rows per epoch; ``fit`` fills them in when omitted.
    file : file-like, optional
        Where the bar is drawn; tqdm's default (``sys.stderr``) when omitted.
    """

    def __init__(self, epochs=None, rows=None, file=None):
        self.epochs = None if epochs is None else V.check_int(epochs, "ProgbarLogger epochs")
        self.rows = None if rows is None else V.check_int(rows, "ProgbarLogger rows")
        if file is not None and not callable(getattr(file, "write", None)):
            raise TypeError(f"ProgbarLogger file: expected a writable text stream (an object "
                            f"with a write() method) or None; found {type(file).__name__}. "
                            "Pass e.g. file=sys.stderr, or open(path, 'w').")
        self.file = file
        self._bar = None

    def set_params(self, epochs, rows):
        """Called by ``fit`` with its epoch count and training rows (unless given here)."""
        if self.epochs is None:
            self.epochs = epochs
        if self.rows is None:
            self.rows = rows

    def on_epoch_begin(self, epoch, logs=None):
        from tqdm.auto import tqdm  # imported only when a bar is shown

        # a resumed epoch starts with rows already done; tqdm's rate excludes them
        self._done = (logs or {}).get("rows", 0)
        self._bar = tqdm(total=self.rows, initial=self._done, unit="rows", unit_scale=True,
                         leave=True, desc=f"epoch {epoch + 1}/{self.epochs}",
                         dynamic_ncols=True, file=self.file)

    def on_chunk_end(self, epoch, logs=None):
        self._bar.update(logs["rows"] - self._done)
        self._done = logs["rows"]
        self._bar.set_postfix(loss=f"{logs['loss']:.4g}", refresh=False)

    def on_epoch_end(self, epoch, logs=None):
        self._bar.set_postfix({k: f"{v:.4g}" for k, v in (logs or {}).items()}, refresh=False)
        self._bar.close()
        self._bar = None

    def on_train_end(self, logs=None):
        if self._bar is not None:  # interrupted mid-epoch
            self._bar.close()
            self._bar = None

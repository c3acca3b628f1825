"""Training positions: where a ``fit`` stopped, so that ``fit(resume=True)`` continues it exactly.

A position is a JSON-able dict plus a few arrays, kept on the network (read
it with ``Network.training_position``) and written into model files by
``_io.write_model_file`` (header field ``"training"``; arrays in the payload).  It records

- where in the data training stood: ``epoch`` (0-based, the one in progress),
  ``rows`` trained in it and their ``loss_sum`` (for the epoch's mean loss);
- ``epoch_rng``: the shuffle generator's state at the START of that epoch, so
  the resumed run redraws the same permutation and skips the rows done;
- ``settings`` of the interrupted call that must not change on resume (data
  size and fingerprint, batch size, shuffle, validation split) and the chunk
  size, which fixes the visiting order of streamed blocks;
- the history so far and the state of callbacks that keep any
  (``EarlyStopping``'s best value, patience counter and best weights).

Weights, optimizer state and step count are saved with the model as always.
"""

import numpy as np

from ._parallel import clamp_average_every, round_to_batches

# Settings that must match between the interrupted fit and the resuming one.
_MUST_MATCH = {
    "source": "kind of data source (in memory, memory-mapped file or Dask array)",
    "n_rows": "number of training rows",
    "n_val": "number of validation rows",
    "fingerprint": "training data (its shape or sampled rows differ)",
    "batch_size": "batch_size",
    "shuffle": "shuffle",
    "workers": "workers",
    "average_every": "average_every (rows per worker between averages, in whole batches and "
                     "at most the training rows)",
}
# What a position written before these settings existed implies.
_DEFAULTS = {"workers": 1, "average_every": None}


def settings(train, val, batch_size, shuffle, validation_split, workers=1, average_every=None):
    """The parts of a ``fit`` call that a resumed call must repeat.

    ``workers`` and the resolved ``average_every`` (None unless local SGD)
    change which rows each replica trains and when they are averaged.
    """
    return {"source": "stream" if train.streamed else "memory", "n_rows": int(train.n_rows),
            "n_val": None if val is None else int(val.n_rows), "fingerprint": train.fingerprint(),
            "batch_size": int(batch_size), "shuffle": bool(shuffle),
            "validation_split": float(validation_split), "workers": int(workers),
            "average_every": None if average_every is None else int(average_every)}


def capture(*, epoch, rows, loss_sum, epoch_rng, stopped, epochs, chunk_rows, resume_settings,
            history, callbacks):
    """A position (dict with an ``"arrays"`` entry) from the training loop's state."""
    states, arrays = [], {}
    for callback in callbacks:
        get_state = getattr(callback, "_get_state", None)
        if get_state is None:
            continue
        state, cb_arrays = get_state()
        index = len(states)
        states.append({"class": type(callback).__name__, "state": state,
                       "arrays": sorted(cb_arrays)})
        for name, array in cb_arrays.items():
            arrays[f"callback{index}.{name}"] = np.array(array)
    return {"epoch": int(epoch), "rows": int(rows), "loss_sum": float(loss_sum),
            "epoch_rng": epoch_rng, "stopped": bool(stopped), "epochs": int(epochs),
            "chunk_rows": int(chunk_rows), "settings": dict(resume_settings),
            "history": {key: [float(v) for v in values] for key, values in history.items()},
            "callbacks": states, "arrays": arrays}


def check_resume(position, resume_settings, optimizer, current_optimizer):
    """Raise ValueError unless ``position`` can be continued by a call with ``resume_settings``.

    ``resume_settings`` is :func:`settings` of the resuming call.
    """
    if position is None:
        raise ValueError(
            "fit(resume=True): expected a network holding an unfinished training position "
            "(one whose fit was interrupted, or loaded with fastbp.load() from a file written "
            "by fit(checkpoint=...)); found none. Load the checkpoint first, or drop "
            "resume=True to start a new fit.")
    saved = position["settings"]
    for key, what in _MUST_MATCH.items():
        was = saved.get(key, _DEFAULTS.get(key))
        if key == "average_every" and was is not None:
            # Files written before the clamp to the training rows hold the value as
            # passed; it trained exactly as its clamped value does.
            was = round_to_batches(clamp_average_every(was, saved["n_rows"]),
                                   saved["batch_size"])
        if was != resume_settings[key]:
            raise ValueError(
                f"fit(resume=True): the interrupted fit was run with {what} = {was!r}; "
                f"this call has {resume_settings[key]!r}. Resume with the same data, batch_size, "
                "shuffle, validation split, workers and average_every as the interrupted call "
                "(only epochs may change).")
    if optimizer is not None and optimizer != current_optimizer:
        raise ValueError(
            f"fit(resume=True): the interrupted fit used {current_optimizer!r}; this call "
            f"passes {optimizer!r}, which would start a fresh optimizer state. Pass "
            "optimizer=None (or the same optimizer) to resume.")


def restore_callbacks(position, callbacks):
    """Give callbacks their saved state, matched by class name and order of appearance."""
    saved = {}
    for i, entry in enumerate(position["callbacks"]):
        arrays = {name: position["arrays"][f"callback{i}.{name}"] for name in entry["arrays"]}
        saved.setdefault(entry["class"], []).append((entry["state"], arrays))
    for callback in callbacks:
        if getattr(callback, "_set_state", None) is None:
            continue
        queue = saved.get(type(callback).__name__)
        if queue:
            callback._set_state(*queue.pop(0))


def check_path(path, what="checkpoint", example="run.ckpt"):
    """``None`` or a ``Path`` that ``save`` can write; checked before training starts.

    See :func:`fastbp._files.check_output_path`: a regular file or a new path
    (a symbolic link is refused, never followed), in an existing directory
    where a file can really be created; an existing file must be writable.
    """
    from ._files import check_output_path

    return check_output_path(path, what, example)

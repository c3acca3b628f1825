"""Model files: one file, written atomically, read without unpickling.

Layout::

    FASTBP-MODEL\\n
    {"format": "fastbp-model", "version": 1, "sha256": ..., "payload_bytes": ..., ...}\\n
    <npz payload: params, optimizer state>

The JSON header carries the architecture, the optimizer configuration and
step count, and the SHA-256 of the payload; ``load`` checks all of it and
opens the payload with ``allow_pickle=False``.
"""

import contextlib
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np

MAGIC = b"FASTBP-MODEL\n"
FORMAT_VERSION = 1
_MAX_HEADER_BYTES = 1 << 20
# Payload arrays of a training position (callback states) carry this prefix.
_TRAINING_PREFIX = "training."


def _atomic_write(path, chunks):
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def save_network(network, path, extra=None):
    """Write ``network`` (and an optional JSON-able ``extra`` dict) to ``path``.

    ``extra`` defaults to ``network._extra`` (what the file it was loaded from
    carried, or what the command line attached).  A network whose ``fit`` was
    interrupted also carries its training position (``network._position``,
    see ``_checkpoint``); it is written too, so ``fastbp.load`` followed by
    ``fit(..., resume=True)`` continues that training exactly.
    """
    from ._checkpoint import check_path

    path = check_path(path, "path", "model.fbp")  # before anything is written
    if extra is None:
        extra = getattr(network, "_extra", None)
    arrays = {"params": network._params}
    if network._state is not None:
        arrays["optimizer_state"] = network._state
    position = getattr(network, "_position", None)
    training = None
    if position is not None:
        training = {key: value for key, value in position.items() if key != "arrays"}
        for name, array in position["arrays"].items():
            arrays[_TRAINING_PREFIX + name] = array
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    payload = buffer.getvalue()
    header = {
        "format": "fastbp-model",
        "version": FORMAT_VERSION,
        "config": network.get_config(),
        "optimizer": None if network.optimizer is None else network.optimizer.get_config(),
        "step": network._step,
        "shuffle_rng": network._rng.bit_generator.state,
        "extra": extra,
        "training": training,
        "payload_bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    line = json.dumps(header, sort_keys=True).encode() + b"\n"
    _atomic_write(path, [MAGIC, line, payload])


def _corrupt(path, what):
    return ValueError(f"{path}: not a valid fastbp model file ({what}). Expected a file "
                      "written by Network.save(); it may be truncated, corrupted or of another "
                      "format. Save the model again.")


def read_model_file(path):
    """Return ``(header, arrays)`` of a model file after checking it."""
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise _corrupt(path, "missing the FASTBP-MODEL signature")
        line = f.readline(_MAX_HEADER_BYTES)
        payload = f.read()
    try:
        header = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise _corrupt(path, "unreadable header") from None
    if not isinstance(header, dict) or header.get("format") != "fastbp-model":
        raise _corrupt(path, "unknown header")
    if header.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: model file format version {header.get('version')!r}; this "
                         f"fastbp reads version {FORMAT_VERSION}. Use the fastbp release that "
                         "wrote it.")
    if len(payload) != header.get("payload_bytes") or \
            hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise _corrupt(path, "checksum mismatch")
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except Exception as exc:
        raise _corrupt(path, f"unreadable payload: {exc}") from None
    return header, arrays


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
    """
    from .network import Network
    from .optimizers import Optimizer

    header, arrays = read_model_file(path)
    try:
        network = Network(**header["config"], backend=backend)
        params = arrays["params"]
        if params.shape != network._params.shape or params.dtype != network._params.dtype:
            raise ValueError("parameter buffer does not match the architecture")
        network._params[...] = params
        if header["optimizer"] is not None:
            network._bind_optimizer(Optimizer.from_config(header["optimizer"]))
            if "optimizer_state" in arrays:
                network._state[...] = arrays["optimizer_state"]
            network._step = int(header["step"])
        network._rng.bit_generator.state = header["shuffle_rng"]
        network._extra = header.get("extra")
        training = header.get("training")  # absent from files of older fastbp versions
        if training is not None:
            training = dict(training)
            training["arrays"] = {name[len(_TRAINING_PREFIX):]: array
                                  for name, array in arrays.items()
                                  if name.startswith(_TRAINING_PREFIX)}
            for key in ("epoch", "rows", "loss_sum", "epoch_rng", "settings", "history",
                        "callbacks", "chunk_rows"):
                if key not in training:
                    raise KeyError(f"training position lacks {key!r}")
        network._position = training
    except (KeyError, TypeError, ValueError) as exc:
        raise _corrupt(path, f"inconsistent contents: {exc}") from None
    return network

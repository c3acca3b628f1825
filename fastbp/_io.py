"""Model files: one file, written atomically, read without unpickling.

Layout (format version 2)::

    FASTBP-MODEL\\n
    {"format": "fastbp-model", "version": 2, "header_sha256": ..., "sha256": ..., ...}\\n
    <npz payload: params, optimizer state, training position arrays, history>

The JSON header (one line, at most ``_MAX_HEADER_BYTES``) carries the
architecture, the optimizer configuration and step count, the shuffle state,
the caller's ``extra`` metadata and the JSON part of a training position.
Two checksums guard it: ``sha256`` of the payload and ``header_sha256`` of
the header's canonical JSON (sorted keys, no spaces) without that field.
Everything that grows with training -- the per-epoch history -- lives in the
payload (``history.<i>`` arrays, float64, in the order of the header's
``training.history`` key list), so the header stays small however long a run
is; ``save`` refuses to write a header ``load`` could not read.

:func:`read_model_file` checks in this order, and allocates nothing the file does not
already hold: the signature, the header (size, JSON, checksum), the payload
(size, checksum), every header field's type and range, and then each payload
member's ``.npy`` header (name, dtype, shape, stored size) against what the
header declares -- all before a network is built or a member's data is read.
Members are read as raw bytes (never unpickled) and must be stored
uncompressed, as ``numpy.savez`` writes them.

Version 1 files (no ``header_sha256``, history inside the header) are still
read, with the same field checks.

This module reads and writes the format and nothing else: it knows no
:class:`~fastbp.Network`.  The network gives :func:`write_model_file` its
state and builds itself from what :func:`read_model_file` returns (see
``fastbp.network.load``).
"""

import errno
import hashlib
import io
import json
import math
import os
import stat

import numpy as np

from . import _files
from ._backends._codes import ACTIVATIONS, LOSS_NAMES, N_STATE_SLOTS
from ._initializers import BIAS_INITIALIZERS, KERNEL_INITIALIZERS

MAGIC = b"FASTBP-MODEL\n"
FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
_MAX_HEADER_BYTES = 1 << 20
# Payload arrays of a training position (callback states) carry this prefix.
_TRAINING_PREFIX = "training."
# Per-epoch history values, one float64 array per history key (format 2).
_HISTORY_PREFIX = "history."
_MAX_NPY_HEADER = 10_000
_INT64_LIMIT = 1 << 63


# ---------------------------------------------------------------------------- writing
def _canonical(header):
    """The bytes ``header_sha256`` covers: sorted keys, no spaces, ASCII."""
    return json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=True).encode("ascii")


def write_model_file(path, state, arrays):
    """Write one model file at ``path``, atomically: ``state`` in the header, ``arrays`` after it.

    Parameters
    ----------
    path : str or path-like
        Checked before anything is written (a regular file or a new path).
    state : dict
        The header fields: ``"config"`` (``Network.get_config()``),
        ``"optimizer"`` (its ``get_config()`` dict, or None), ``"step"``,
        ``"shuffle_rng"`` (a PCG64 state dict), ``"extra"`` (a JSON-able dict
        or None) and ``"training"``: a training position (see ``_checkpoint``)
        or None.  A position's arrays and its per-epoch history are written
        into the payload; the rest of it into the header.
    arrays : dict of ndarray
        ``"params"`` and, with an optimizer, ``"optimizer_state"``.

    Raises
    ------
    ValueError
        The header would be larger than ``load`` reads; nothing is written.
    """
    if path is None:  # check_output_path passes None through (an optional output)
        raise TypeError("path: expected a file path (str or os.PathLike); found NoneType. "
                        "Pass e.g. path='model.fbp'.")
    path = _files.check_output_path(path, "path", "model.fbp")  # before anything is written
    extra = state["extra"]
    arrays = dict(arrays)
    position = state["training"]
    training = None
    if position is not None:
        training = {key: value for key, value in position.items()
                    if key not in ("arrays", "history")}
        for name, array in position["arrays"].items():
            arrays[_TRAINING_PREFIX + name] = array
        keys = list(position["history"])
        training["history"] = keys
        for i, key in enumerate(keys):
            arrays[f"{_HISTORY_PREFIX}{i}"] = np.asarray(position["history"][key],
                                                         dtype=np.float64).reshape(-1)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    payload = buffer.getvalue()
    header = {
        "format": "fastbp-model",
        "version": FORMAT_VERSION,
        "config": state["config"],
        "optimizer": state["optimizer"],
        "step": int(state["step"]),
        "shuffle_rng": state["shuffle_rng"],
        "extra": extra,
        "training": training,
        "payload_bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    header["header_sha256"] = hashlib.sha256(_canonical(header)).hexdigest()
    line = _canonical(header) + b"\n"
    if len(line) > _MAX_HEADER_BYTES:
        raise ValueError(
            f"{path}: the model header would take {len(line):,} bytes; the model file format "
            f"allows {_MAX_HEADER_BYTES:,}. Its metadata (the extra dict: "
            f"{len(json.dumps(extra)):,} bytes) or the number of layers is too large; attach "
            "less metadata. Nothing was written.")
    _files.atomic_write(path, [MAGIC, line, payload])


# ---------------------------------------------------------------------------- reading
class InvalidContent(ValueError):
    """A header field or payload member that is not what ``save`` writes.

    Its message says which and why; :func:`corrupt` turns it into the error a
    reader of ``path`` reports.
    """



def corrupt(path, what):
    """The ValueError for a file at ``path`` that is not a valid model file (``what`` is wrong)."""
    return ValueError(f"{path}: not a valid fastbp model file ({what}). Expected a file "
                      "written by Network.save(); it may be truncated, corrupted or of another "
                      "format. Save the model again.")


def _short(value):
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # e.g. an int too long to print
        text = f"a {type(value).__name__}"
    return text if len(text) <= 80 else text[:77] + "..."


def _bad(field, expected, value):
    return InvalidContent(f"header field {field!r}: expected {expected}; found {_short(value)}")


def _int(value, field, low=0, high=_INT64_LIMIT - 1):
    if type(value) is not int or not low <= value <= high:
        raise _bad(field, f"an integer in [{low}, {high}]", value)
    return int(value)


def _real(value, field, low=None, high=None):
    if type(value) not in (int, float):
        raise _bad(field, "a number", value)
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number) or (low is not None and number < low) or \
            (high is not None and number > high):
        bounds = "" if low is None else f" >= {low}" if high is None else f" in [{low}, {high}]"
        raise _bad(field, f"a finite number{bounds}", value)
    return number


def _bool(value, field):
    if type(value) is not bool:
        raise _bad(field, "true or false", value)
    return value


def _str(value, field, choices=None):
    if type(value) is not str or (choices is not None and value not in choices):
        expected = "a string" if choices is None else f"one of {sorted(choices)}"
        raise _bad(field, expected, value)
    return value


def _dict(value, field, required=(), optional=()):
    if type(value) is not dict:
        raise _bad(field, "a JSON object", value)
    missing = [key for key in required if key not in value]
    if missing:
        raise InvalidContent(f"header field {field!r}: lacks {missing[0]!r}")
    unknown = [key for key in value if key not in required and key not in optional]
    if unknown:
        raise InvalidContent(f"header field {field!r}: unknown entry {_short(unknown[0])}")
    return value


def _list(value, field):
    if type(value) is not list:
        raise _bad(field, "a list", value)
    return value


def _rng_state(value, field):
    """A PCG64 state dict, as ``Generator.bit_generator.state`` gives."""
    value = _dict(value, field, ("bit_generator", "state", "has_uint32", "uinteger"))
    _str(value["bit_generator"], f"{field}.bit_generator", {"PCG64"})
    inner = _dict(value["state"], f"{field}.state", ("state", "inc"))
    return {"bit_generator": "PCG64",
            "state": {"state": _int(inner["state"], f"{field}.state.state", 0, (1 << 128) - 1),
                      "inc": _int(inner["inc"], f"{field}.state.inc", 0, (1 << 128) - 1)},
            "has_uint32": _int(value["has_uint32"], f"{field}.has_uint32", 0, 1),
            "uinteger": _int(value["uinteger"], f"{field}.uinteger", 0, (1 << 32) - 1)}


_CONFIG_KEYS = ("layers", "activations", "output_activation", "loss", "kernel_initializer",
                "bias_initializer", "dtype", "seed")


def _initializer(value, field, names):
    if type(value) is str:
        return _str(value, field, names)
    return _real(value, field)


def _check_config(value):
    value = _dict(value, "config", _CONFIG_KEYS)
    layers = _list(value["layers"], "config.layers")
    if len(layers) < 2:
        raise _bad("config.layers", "at least two layer widths", layers)
    layers = [_int(w, f"config.layers[{i}]", 1) for i, w in enumerate(layers)]
    activations = _list(value["activations"], "config.activations")
    if len(activations) != len(layers) - 2:
        raise _bad("config.activations", f"{len(layers) - 2} names (one per hidden layer)",
                   activations)
    return {"layers": layers,
            "activations": [_str(a, f"config.activations[{i}]", ACTIVATIONS)
                            for i, a in enumerate(activations)],
            "output_activation": _str(value["output_activation"], "config.output_activation",
                                      ACTIVATIONS),
            "loss": _str(value["loss"], "config.loss", LOSS_NAMES),
            "kernel_initializer": _initializer(value["kernel_initializer"],
                                               "config.kernel_initializer", KERNEL_INITIALIZERS),
            "bias_initializer": _initializer(value["bias_initializer"],
                                             "config.bias_initializer", BIAS_INITIALIZERS),
            "dtype": _str(value["dtype"], "config.dtype", {"float32", "float64"}),
            "seed": None if value["seed"] is None else
            _int(value["seed"], "config.seed", 0, math.inf)}


def _check_optimizer(value):
    import dataclasses

    from .optimizers import SGD, Adam, Optimizer, RMSprop

    if value is None:
        return None
    classes = {cls.__name__: cls for cls in (SGD, Adam, RMSprop)}
    if type(value) is not dict:
        raise _bad("optimizer", "a JSON object or null", value)
    name = _str(value.get("name"), "optimizer.name", classes)
    fields = [f.name for f in dataclasses.fields(classes[name])]
    value = _dict(value, "optimizer", ("name", *fields))
    config = {"name": name}
    for field in fields:
        checker = _bool if field == "nesterov" else _real
        config[field] = checker(value[field], f"optimizer.{field}")
    try:
        return Optimizer.from_config(config)
    except (TypeError, ValueError) as exc:
        raise InvalidContent(f"header field 'optimizer': {exc}") from None


_TRAINING_KEYS = ("epoch", "rows", "loss_sum", "epoch_rng", "stopped", "epochs", "chunk_rows",
                  "settings", "history", "callbacks")
_SETTINGS_KEYS = ("source", "n_rows", "n_val", "fingerprint", "batch_size", "shuffle",
                  "validation_split")
_EARLY_STOPPING_STATE = ("wait", "best", "best_epoch", "stopped_epoch")


def _check_training(value, version, layer_shapes):
    """The JSON part of a training position, and the payload arrays it declares.

    Returns ``(training, declared)``: ``declared`` maps payload member names to
    ``(dtype kind or None, shape or None)`` -- ``None`` where any is allowed.
    """
    if value is None:
        return None, {}
    if version == 1 and type(value) is dict:  # older releases wrote no "stopped"/"epochs"
        value = dict(value)
        value.setdefault("stopped", False)
        value.setdefault("epochs", value.get("epoch", 0) + 1
                         if type(value.get("epoch")) is int else 1)
    value = _dict(value, "training", _TRAINING_KEYS, ("dask",))
    s = _dict(value["settings"], "training.settings", _SETTINGS_KEYS,
              ("workers", "average_every"))
    settings = {
        "source": _str(s["source"], "training.settings.source", {"memory", "stream", "dask"}),
        "n_rows": _int(s["n_rows"], "training.settings.n_rows", 1),
        "n_val": None if s["n_val"] is None else _int(s["n_val"], "training.settings.n_val"),
        "fingerprint": _str(s["fingerprint"], "training.settings.fingerprint"),
        "batch_size": _int(s["batch_size"], "training.settings.batch_size", 1),
        "shuffle": _bool(s["shuffle"], "training.settings.shuffle"),
        "validation_split": _real(s["validation_split"], "training.settings.validation_split",
                                  0.0, 1.0),
        # absent from positions written before fit had workers
        "workers": _int(s.get("workers", 1), "training.settings.workers", 1, 1 << 16),
        "average_every": (None if s.get("average_every") is None
                          else _int(s["average_every"], "training.settings.average_every", 1,
                                    1 << 62)),
    }
    if settings["validation_split"] >= 1.0:
        raise _bad("training.settings.validation_split", "a number in [0, 1)",
                   s["validation_split"])
    chunk_rows = _int(value["chunk_rows"], "training.chunk_rows", 1, 1 << 62)
    if chunk_rows % settings["batch_size"]:
        raise _bad("training.chunk_rows",
                   f"a multiple of the batch size {settings['batch_size']}", chunk_rows)
    if settings["average_every"] is not None:  # local SGD: chunks are whole rounds
        round_rows = settings["workers"] * settings["average_every"]
        if chunk_rows % round_rows:
            raise _bad("training.chunk_rows", f"a multiple of the round of {round_rows} rows",
                       chunk_rows)
    training = {
        "epoch": _int(value["epoch"], "training.epoch"),
        "rows": _int(value["rows"], "training.rows", 0, settings["n_rows"]),
        "loss_sum": _real(value["loss_sum"], "training.loss_sum", 0.0),
        "epoch_rng": _rng_state(value["epoch_rng"], "training.epoch_rng"),
        "stopped": _bool(value["stopped"], "training.stopped"),
        "epochs": _int(value["epochs"], "training.epochs", 1),
        "chunk_rows": chunk_rows,
        "settings": settings,
    }
    if "dask" in value:
        training["dask"] = _check_dask_position(value["dask"], settings)
    declared = {}
    if version == 1:
        history = _dict(value["history"], "training.history",
                        optional=value["history"] if type(value["history"]) is dict else ())
        training["history"] = {
            _str(key, "training.history"): [
                _real(v, f"training.history.{key}[{i}]")
                for i, v in enumerate(_list(values, f"training.history.{key}"))]
            for key, values in history.items()}
    else:
        keys = _list(value["history"], "training.history")
        for i, key in enumerate(keys):
            _str(key, f"training.history[{i}]")
        if len(set(keys)) != len(keys):
            raise _bad("training.history", "distinct history keys", keys)
        training["history"] = list(keys)  # filled from the payload
        for i in range(len(keys)):
            declared[f"{_HISTORY_PREFIX}{i}"] = ("f8", None)
    callbacks = []
    for i, entry in enumerate(_list(value["callbacks"], "training.callbacks")):
        field = f"training.callbacks[{i}]"
        entry = _dict(entry, field, ("class", "state", "arrays"))
        cls = _str(entry["class"], f"{field}.class")
        names = _list(entry["arrays"], f"{field}.arrays")
        for j, name in enumerate(names):
            _str(name, f"{field}.arrays[{j}]")
        if len(set(names)) != len(names):
            raise _bad(f"{field}.arrays", "distinct array names", names)
        if cls == "EarlyStopping":
            st = _dict(entry["state"], f"{field}.state", _EARLY_STOPPING_STATE)
            state = {"wait": _int(st["wait"], f"{field}.state.wait"),
                     "best": None if st["best"] is None else
                     _real(st["best"], f"{field}.state.best"),
                     "best_epoch": _int(st["best_epoch"], f"{field}.state.best_epoch"),
                     "stopped_epoch": _int(st["stopped_epoch"], f"{field}.state.stopped_epoch")}
            expected = {f"best_weights.{k}": shape for k, shape in enumerate(layer_shapes)}
            if names and set(names) != set(expected):
                raise _bad(f"{field}.arrays", f"none or the {len(expected)} best_weights "
                           "arrays of the architecture", names)
            for name in names:
                declared[f"{_TRAINING_PREFIX}callback{i}.{name}"] = ("net", expected[name])
        else:  # a callback of the caller's with its own _get_state: any JSON, any arrays
            state = _dict(entry["state"], f"{field}.state",
                          optional=entry["state"] if type(entry["state"]) is dict else ())
            for name in names:
                declared[f"{_TRAINING_PREFIX}callback{i}.{name}"] = (None, None)
        callbacks.append({"class": cls, "state": state, "arrays": list(names)})
    training["callbacks"] = callbacks
    return training, declared


def _check_dask_position(value, settings):
    """Where a ``fastbp.dask.fit`` stopped inside an epoch: its rounds and chunk assignment."""
    if settings["source"] != "dask":
        raise _bad("training.dask", "absent (the position is not a cluster fit's)", value)
    value = _dict(value, "training.dask", ("rounds", "assignment"))
    assignment = _list(value["assignment"], "training.dask.assignment")
    if not 1 <= len(assignment) <= 1 << 16:
        raise _bad("training.dask.assignment", "1 to 65536 workers' chunk lists",
                   len(assignment))
    chunks = [[_int(c, f"training.dask.assignment[{k}]", 0, settings["n_rows"] - 1)
               for c in _list(cs, f"training.dask.assignment[{k}]")]
              for k, cs in enumerate(assignment)]
    flat = [c for cs in chunks for c in cs]
    if len(set(flat)) != len(flat) or any(not cs for cs in chunks):
        raise _bad("training.dask.assignment", "non-empty lists of distinct chunk indices",
                   chunks)
    return {"rounds": _int(value["rounds"], "training.dask.rounds", 1, settings["n_rows"]),
            "assignment": chunks}


def _check_header(header, version):
    """A checked copy of the header, and the payload members it declares."""
    config = _check_config(header.get("config"))
    optimizer = _check_optimizer(header.get("optimizer", None))
    step = _int(header.get("step"), "step")
    if optimizer is None and step:
        raise _bad("step", "0 for a network that was never trained (optimizer null)", step)
    extra = header.get("extra")
    if extra is not None and type(extra) is not dict:
        raise _bad("extra", "a JSON object or null", extra)
    layers = config["layers"]
    layer_shapes = [s for a, b in zip(layers[:-1], layers[1:]) for s in ((a, b), (b,))]
    n_params = sum(a * b + b for a, b in zip(layers[:-1], layers[1:]))  # Python ints
    training, declared = _check_training(header.get("training"), version, layer_shapes)
    declared["params"] = ("net", (n_params,))
    if optimizer is not None:
        declared["optimizer_state"] = ("net", (N_STATE_SLOTS, n_params))
    checked = {"format": header["format"], "version": version, "config": config,
               "optimizer": None if optimizer is None else optimizer.get_config(),
               "step": step, "shuffle_rng": _rng_state(header.get("shuffle_rng"), "shuffle_rng"),
               "extra": extra, "training": training}
    return checked, optimizer, declared


def _read_members(payload, declared, net_dtype):
    """The payload's arrays, after checking each member against ``declared``.

    Each member's ``.npy`` header is read and checked (name, dtype, shape and
    the stored size it implies) before its data is; nothing is decompressed
    or unpickled.
    """
    import zipfile  # here, not at import: it pulls in bz2 and lzma

    from numpy.lib import format as npy

    try:
        archive = zipfile.ZipFile(io.BytesIO(payload))
    except Exception as exc:  # zipfile raises many types on damaged archives
        raise InvalidContent(f"unreadable payload: {type(exc).__name__}: {exc}") from None
    with archive:
        infos = archive.infolist()
        names = [info.filename for info in infos]
        if len(set(names)) != len(names):
            raise InvalidContent("unreadable payload: duplicate members")
        found = {name[:-4] for name in names if name.endswith(".npy")}
        if len(found) != len(names) or found != set(declared):
            extra = sorted(set(names) - {n + ".npy" for n in declared})
            missing = sorted(set(declared) - found)
            raise InvalidContent("payload members do not match the header: "
                                 + (f"unexpected {_short(extra)}" if extra else "")
                                 + (" " if extra and missing else "")
                                 + (f"missing {_short(missing)}" if missing else ""))
        arrays = {}
        for info in infos:
            name = info.filename[:-4]
            kind, shape = declared[name]
            if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
                raise InvalidContent(f"payload member {name!r}: expected an uncompressed member, "
                                     "as numpy.savez writes")
            if info.file_size > len(payload):
                raise InvalidContent(f"payload member {name!r}: declares {info.file_size} bytes, "
                                     f"more than the payload's {len(payload)}")
            try:
                with archive.open(info) as member:
                    version = npy.read_magic(member)
                    if version == (1, 0):
                        got_shape, fortran, dtype = npy.read_array_header_1_0(
                            member, max_header_size=_MAX_NPY_HEADER)
                    elif version == (2, 0):
                        got_shape, fortran, dtype = npy.read_array_header_2_0(
                            member, max_header_size=_MAX_NPY_HEADER)
                    else:
                        raise ValueError(f"unsupported .npy version {version}")
                    offset = member.tell()
                    if not all(type(n) is int and n >= 0 for n in got_shape):
                        raise ValueError(f"invalid shape {got_shape}")
                    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None \
                            or dtype.kind not in "biufc" or dtype.itemsize == 0:
                        raise ValueError(f"dtype {dtype} is not a plain number type")
                    want = net_dtype if kind == "net" else \
                        np.dtype(np.float64) if kind == "f8" else None
                    if want is not None and (dtype.kind != want.kind
                                             or dtype.itemsize != want.itemsize):
                        raise ValueError(f"expected dtype {want}; found {dtype}")
                    if shape is not None and tuple(got_shape) != tuple(shape):
                        raise ValueError(f"expected shape {tuple(shape)} (from the header); "
                                         f"found {tuple(got_shape)}")
                    if kind == "f8" and len(got_shape) != 1:
                        raise ValueError(f"expected a 1-D array; found shape {got_shape}")
                    nbytes = math.prod(got_shape) * dtype.itemsize
                    if offset + nbytes != info.file_size:
                        raise ValueError(f"shape {tuple(got_shape)} needs {nbytes} data bytes; "
                                         f"the member holds {info.file_size - offset}")
                    data = member.read(nbytes)
                    if len(data) != nbytes:
                        raise ValueError("truncated member")
            except InvalidContent:
                raise
            except Exception as exc:
                raise InvalidContent(f"payload member {name!r}: {exc}") from None
            array = np.frombuffer(data, dtype=dtype).reshape(got_shape,
                                                             order="F" if fortran else "C")
            arrays[name] = array.astype(want if want is not None else dtype.newbyteorder("="),
                                        order="C")
    return arrays


def _check_values(arrays, declared, optimizer):
    """The values ``set_weights`` and the optimizers would accept: finite, moments >= 0.

    Weights, optimizer state and ``EarlyStopping``'s best weights (the
    members of the network's dtype) must be finite; the second-moment
    averages (Adam's slot 1, RMSprop's slot 0) must not be negative, which
    training never makes them (a negative one puts a NaN square root into the
    first update).
    """
    from .optimizers import Adam, RMSprop

    for name, (kind, _) in declared.items():
        if kind == "net" and not np.isfinite(arrays[name]).all():
            raise InvalidContent(f"payload member {name!r}: expected finite numbers; found NaN or "
                                 "infinity")
    if optimizer is not None:
        slot = 1 if isinstance(optimizer, Adam) else 0 if isinstance(optimizer, RMSprop) else None
        if slot is not None and (arrays["optimizer_state"][slot] < 0).any():
            raise InvalidContent(f"payload member 'optimizer_state': expected the "
                                 f"second-moment averages of {type(optimizer).__name__} (slot "
                                 f"{slot}) >= 0; found negative values")


def _read_header_line(path, f):
    if f.read(len(MAGIC)) != MAGIC:
        raise corrupt(path, "missing the FASTBP-MODEL signature")
    line = f.readline(_MAX_HEADER_BYTES + 1)
    if not line.endswith(b"\n") or len(line) > _MAX_HEADER_BYTES:
        what = "truncated" if len(line) <= _MAX_HEADER_BYTES else \
            f"longer than {_MAX_HEADER_BYTES:,} bytes"
        raise corrupt(path, f"unreadable header: {what}")
    try:
        header = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise corrupt(path, "unreadable header") from None
    if not isinstance(header, dict) or header.get("format") != "fastbp-model":
        raise corrupt(path, "unknown header")
    version = header.get("version")
    if type(version) is not int or version not in _READABLE_VERSIONS:
        if type(version) is int and version > FORMAT_VERSION:
            raise ValueError(f"{path}: model file format version {version}; this fastbp reads "
                             f"versions {', '.join(map(str, _READABLE_VERSIONS))}. Use the "
                             "fastbp release that wrote it.")
        raise corrupt(path, f"unknown format version {_short(version)}")
    if version >= 2:
        claimed = header.pop("header_sha256", None)
        try:
            digest = hashlib.sha256(_canonical(header)).hexdigest()
        except (ValueError, TypeError, RecursionError):
            digest = None
        if type(claimed) is not str or claimed != digest:
            raise corrupt(path, "header checksum mismatch")
    elif "header_sha256" in header:  # version 1 never had one: a damaged version number
        raise corrupt(path, "header checksum mismatch")
    return header, version


def read_model_file(path):
    """Read and check all of the model file at ``path``; return ``(state, arrays)``.

    ``state`` holds the checked header fields that :func:`write_model_file`
    takes (``config``, ``optimizer``, ``step``, ``shuffle_rng``, ``extra``,
    ``training``) plus ``format`` and ``version``; a training position comes
    back as ``write_model_file`` took it, with its ``history`` (a dict of
    lists, whatever the version) and its ``arrays``.  ``arrays`` holds
    ``params`` and, with an optimizer, ``optimizer_state``.

    Raises
    ------
    ValueError
        The file is not a model file this fastbp reads (damaged, truncated,
        crafted or of another format).
    TypeError
        ``path`` is not a file path (an int would be taken by ``open`` as a
        file descriptor, and closed).
    OSError
        The file cannot be opened or read, or is not a regular file (a FIFO
        would block the read).
    """
    if isinstance(path, (bool, int)) or not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"path: expected a file path (str or os.PathLike); found "
                        f"{type(path).__name__} {path!r:.80}. Pass e.g. path='model.fbp'.")
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = None  # missing or unreadable: open() says so below
    if mode is not None and stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, f"{os.fsdecode(path)}: expected a model file; "
                                "found a directory. Pass the path of a file written by "
                                "Network.save().")
    if mode is not None and not stat.S_ISREG(mode):
        raise OSError(errno.EINVAL, f"{os.fsdecode(path)}: expected a model file; found "
                      f"{_files.file_kind(mode)}. Pass the path of a file written by "
                      "Network.save().")
    return _read(path)


def _rng_state_usable(state, field):
    """Refuse a PCG64 state numpy would not take (header field ``field``)."""
    try:
        np.random.PCG64().state = state
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidContent(f"header field {field!r}: {exc}") from None


def _read(path):
    with open(path, "rb") as f:
        header, version = _read_header_line(path, f)
        size = header.get("payload_bytes")
        if type(size) is not int or size < 0 or type(header.get("sha256")) is not str:
            raise corrupt(path, "checksum mismatch (no valid payload size or checksum)")
        remaining = os.fstat(f.fileno()).st_size - f.tell()
        if remaining != size:  # before reading any of it
            raise corrupt(path, f"checksum mismatch (payload of {remaining} bytes; the header "
                                f"declares {size})")
        payload = f.read(size + 1)
    if len(payload) != size or hashlib.sha256(payload).hexdigest() != header["sha256"]:
        raise corrupt(path, "checksum mismatch")
    try:
        checked, optimizer, declared = _check_header(header, version)
        net_dtype = np.dtype(checked["config"]["dtype"])
        arrays = _read_members(payload, declared, net_dtype)
        _check_values(arrays, declared, optimizer)
        _rng_state_usable(checked["shuffle_rng"], "shuffle_rng")
        if checked["training"] is not None:  # reported as the shuffle state, as ever
            _rng_state_usable(checked["training"]["epoch_rng"], "shuffle_rng")
    except InvalidContent as exc:
        raise corrupt(path, str(exc)) from None
    training = checked["training"]
    if training is not None:
        if version >= 2:
            keys = training["history"]
            training["history"] = {key: arrays.pop(f"{_HISTORY_PREFIX}{i}").tolist()
                                   for i, key in enumerate(keys)}
        training["arrays"] = {name[len(_TRAINING_PREFIX):]: arrays.pop(name)
                              for name in list(arrays) if name.startswith(_TRAINING_PREFIX)}
    return checked, arrays

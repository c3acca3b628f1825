"""Fuzzing fastbp.load with damaged and crafted model files.

Valid files (a plain model, one with Adam state, a checkpoint with a training
position and EarlyStopping state, and a format-1 file) are mutated: bit flips,
truncation, splices of two files, inserted and deleted bytes; header edits
with the checksums recomputed, so that the field checks (not only the
checksum) are exercised: every field set to wrong types, huge and negative
numbers, NaN, infinity, 100k-deep nesting; and payload edits with recomputed
checksums (bytes, zip sizes, .npy shapes).  For every case ``fastbp.load``
must either return a network (equal to the original's when the bytes are the
original's; one that predicts, and that save + load reproduces) or raise
ValueError/OSError with a message -- never another exception -- with a
bounded peak of traced memory and without unpickling anything.

CI runs ``FASTBP_FUZZ_CASES`` cases (default 500) from ``FASTBP_FUZZ_SEED``
(default 0); e.g. ``FASTBP_FUZZ_CASES=10000`` runs more.
"""

import hashlib
import io
import json
import os
import pickle
import random
import re
import struct
import time
import tracemalloc

import numpy as np
import pytest

import fastbp
from fastbp import _io
from .test_io_hardening import _save_version_1

CASES = int(os.environ.get("FASTBP_FUZZ_CASES", "500"))
SEED = int(os.environ.get("FASTBP_FUZZ_SEED", "0"))
PEAK_LIMIT = 50 << 20


class _Unpickled(BaseException):
    """Raised by the patched pickle functions: a BaseException, so no handler hides it."""


def _split(data):
    rest = data[len(_io.MAGIC):]
    line, payload = rest.split(b"\n", 1)
    return json.loads(line), payload


def _encode(header, payload, raw=None, version=None):
    """File bytes for ``header`` with a valid header checksum (format 2).

    ``raw`` maps placeholder strings to raw JSON text (huge ints, NaN,
    nesting); where the result does not parse, the checksum is a dummy.
    """
    header = dict(header)
    header.pop("header_sha256", None)
    text = json.dumps(header, sort_keys=True, separators=(",", ":"))
    for placeholder, value in (raw or {}).items():
        text = text.replace(json.dumps(placeholder), value)
    if version != 1:
        try:
            digest = hashlib.sha256(_io._canonical(json.loads(text))).hexdigest()
        except (ValueError, RecursionError):
            digest = "0" * 64
        text = text[:-1] + f',"header_sha256":"{digest}"}}'
    return _io.MAGIC + text.encode() + b"\n" + payload


def _with_payload(header, payload):
    return dict(header, payload_bytes=len(payload), sha256=hashlib.sha256(payload).hexdigest())


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    """``{name: file bytes}`` of valid files, and the networks they load as."""
    directory = tmp_path_factory.mktemp("seeds")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(24, 3))
    y = np.tanh(X).sum(axis=1)
    plain = fastbp.Network([3, 4, 2, 1], activations=["tanh", "relu"], backend="numpy", seed=4,
                           dtype="float32")
    plain.save(directory / "plain")
    adam = fastbp.Network([3, 5, 1], backend="numpy", seed=1)
    adam.fit(X, y, epochs=2, batch_size=4, optimizer=fastbp.Adam(0.01), verbose=0)
    adam._extra = {"note": "adam", "list": [1, 2.5, None]}
    adam.save(directory / "adam")
    ck = fastbp.Network([3, 4, 1], backend="numpy", seed=2)
    ck.fit(X, y, epochs=2, batch_size=4, validation_split=0.25, verbose=0,
           optimizer=fastbp.RMSprop(0.01, momentum=0.5), checkpoint=directory / "ck",
           callbacks=[fastbp.EarlyStopping(patience=3, restore_best_weights=True)])
    _save_version_1(fastbp.load(directory / "ck", backend="numpy"), directory / "v1",
                    extra={"train_options": {"epochs": 2}})
    files = {name: (directory / name).read_bytes() for name in ("plain", "adam", "ck", "v1")}
    loaded = {name: fastbp.load(directory / name, backend="numpy") for name in files}
    return files, loaded


# ------------------------------------------------------------------ mutations
BAD_VALUES = [None, [], {}, "", "x", "float16", True, False, 0, -1, 1.5, -2.5, 2 ** 64, 2 ** 200,
              [None], [1, 2], {"a": 1}, [[[]]], "NaN", 10 ** 18]
RAW_VALUES = [str(10 ** 400), "-" + str(10 ** 400), "1e400", "-1e400", "NaN", "Infinity",
              "-Infinity", "1" * 5000, "[" * 100_000 + "]" * 100_000, "1e-400", "-0", "0.0"]


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node[:6]):
            yield from _paths(value, prefix + (i,))


def _set_at(header, path, value):
    target = header
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


def _flip(rnd, data):
    data = bytearray(data)
    for _ in range(rnd.choice([1, 1, 2, 3, 8])):
        i = rnd.randrange(len(data))
        data[i] ^= 1 << rnd.randrange(8)
    return bytes(data), "bit flip"


def _truncate(rnd, data):
    return data[:rnd.randrange(len(data))], "truncation"


def _splice(rnd, data, other):
    return data[:rnd.randrange(len(data))] + other[rnd.randrange(len(other)):], "splice"


def _insert(rnd, data):
    i = rnd.randrange(len(data) + 1)
    blob = bytes(rnd.randrange(256) for _ in range(rnd.choice([1, 2, 7, 100])))
    return data[:i] + blob + data[i:], "insertion"


def _delete(rnd, data):
    i = rnd.randrange(len(data))
    return data[:i] + data[i + rnd.choice([1, 2, 16, 300]):], "deletion"


def _edit_header(rnd, data):
    """A header field changed to a wrong value, deleted or joined by another; valid checksum."""
    header, payload = _split(data)
    version = header.get("version")
    header.pop("header_sha256", None)
    paths = [p for p in _paths(header) if p]
    path = rnd.choice(paths)
    action = rnd.random()
    raw = None
    if action < 0.12 and isinstance(path[-1], str):
        target = header
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
        what = f"delete {path}"
    elif action < 0.2 and isinstance(path[-1], str):
        _set_at(header, path[:-1] + ("unknown_field",), rnd.choice(BAD_VALUES))
        what = f"add a field next to {path}"
    elif action < 0.55:
        value = rnd.choice(RAW_VALUES)
        _set_at(header, path, "@RAW@")
        raw = {"@RAW@": value}
        what = f"{path} = {value[:20]}"
    else:
        value = rnd.choice(BAD_VALUES)
        _set_at(header, path, value)
        what = f"{path} = {value!r}"[:80]
    return _encode(header, payload, raw, version), f"header edit: {what}"


def _huge_sizes(rnd, data):
    """Declared sizes far beyond the payload: layers, widths, payload_bytes."""
    header, payload = _split(data)
    version = header.get("version")
    choice = rnd.randrange(4)
    if choice == 0:
        header["config"]["layers"] = [rnd.choice([10 ** 6, 10 ** 9, 2 ** 40, 2 ** 63 - 1])
                                      for _ in header["config"]["layers"]]
    elif choice == 1:
        n = rnd.choice([3, 100, 10_000])
        header["config"]["layers"] = [1] * n
        header["config"]["activations"] = ["relu"] * (n - 2)
    elif choice == 2:
        header["payload_bytes"] = rnd.choice([2 ** 40, 2 ** 63, 10 ** 30, -5])
    else:
        header["config"]["layers"][0] = 2 ** 62
    return _encode(header, payload, None, version), f"huge declared size ({choice})"


def _edit_payload(rnd, data, other):
    """Payload bytes changed and both checksums recomputed: the zip and .npy parsers."""
    header, payload = _split(data)
    version = header.get("version")
    payload = bytearray(payload)
    choice = rnd.randrange(6)
    if choice == 0:
        for _ in range(rnd.choice([1, 2, 4])):
            payload[rnd.randrange(len(payload))] ^= 1 << rnd.randrange(8)
    elif choice == 1:
        payload = payload[:rnd.randrange(len(payload))]
    elif choice == 2:  # zip size fields of a central directory or local header
        spots = [m.start() for m in re.finditer(b"PK\x01\x02|PK\x03\x04", bytes(payload))]
        if spots:
            at = rnd.choice(spots)
            offset = at + (20 if payload[at + 2] == 1 else 18) + rnd.choice([0, 4])
            payload[offset:offset + 4] = struct.pack(
                "<I", rnd.choice([0, 1, 0xFFFFFFFF, 2 ** 31, len(payload) * 3]))
    elif choice == 3:  # the shape in a .npy header
        matches = list(re.finditer(rb"'shape': \(([0-9, ]*)\)", bytes(payload)))
        if matches:
            m = rnd.choice(matches)
            shape = rnd.choice([b"10000000000,", b"0,", b"-1,", b"3, -3", b"2**40,",
                                b"1, 1, 1, 1", b"", b"99999999999999999999,"])
            new = b"'shape': (" + shape + b")"
            new = new + b" " * max(0, len(m.group(0)) - len(new))
            payload[m.start():m.start() + len(new)] = new
    elif choice == 4:  # the dtype in a .npy header
        matches = list(re.finditer(rb"'descr': '[^']*'", bytes(payload)))
        if matches:
            m = rnd.choice(matches)
            new = rnd.choice([b"'descr': '|O'", b"'descr': '>f8'", b"'descr': '<f2'",
                              b"'descr': '<i8'", b"'descr': '<c16'", b"'descr': 'V8'"])
            payload[m.start():m.end()] = new
    else:
        _, other_payload = _split(other)
        payload = payload[:rnd.randrange(len(payload))] + \
            other_payload[rnd.randrange(len(other_payload)):]
    payload = bytes(payload)
    header = _with_payload(header, payload)
    return _encode(header, payload, None, version), f"payload edit ({choice}) with checksums"


def _mutate(rnd, files):
    name = rnd.choice(sorted(files))
    data = files[name]
    other = files[rnd.choice(sorted(files))]
    kind = rnd.random()
    if kind < 0.10:
        out = _flip(rnd, data)
    elif kind < 0.16:
        out = _truncate(rnd, data)
    elif kind < 0.22:
        out = _splice(rnd, data, other)
    elif kind < 0.28:
        out = _insert(rnd, data)
    elif kind < 0.34:
        out = _delete(rnd, data)
    elif kind < 0.72:
        out = _edit_header(rnd, data)
    elif kind < 0.80:
        out = _huge_sizes(rnd, data)
    else:
        out = _edit_payload(rnd, data, other)
    return name, out


# ------------------------------------------------------------------ the property
def _same(a, b):
    assert a.get_config() == b.get_config()
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a.get_weights(), b.get_weights()))
    assert a.optimizer == b.optimizer and a._step == b._step
    assert a._rng.bit_generator.state == b._rng.bit_generator.state
    assert a._extra == b._extra
    pa, pb = a._position, b._position
    assert (pa is None) == (pb is None)
    if pa is not None:
        assert {k: v for k, v in pa.items() if k != "arrays"} == \
            {k: v for k, v in pb.items() if k != "arrays"}
        assert sorted(pa["arrays"]) == sorted(pb["arrays"])
        for key in pa["arrays"]:
            assert pa["arrays"][key].tobytes() == pb["arrays"][key].tobytes()


def _check_case(path, data, original, tmp_path):
    """``(outcome, problem)``: outcome ``"refused"`` or ``"loaded"``; problem ``None`` if
    ``load`` (run once) behaved, else a description of what went wrong."""
    path.write_bytes(data)
    tracemalloc.reset_peak()
    try:
        network = fastbp.load(path, backend="numpy")
    except (ValueError, OSError) as exc:
        peak = tracemalloc.get_traced_memory()[1]
        if not str(exc).strip():
            return "refused", f"{type(exc).__name__} with an empty message"
        if peak > PEAK_LIMIT:
            return "refused", f"peak memory {peak / 2 ** 20:.0f} MiB before refusing: {exc}"[:300]
        return "refused", None
    except _Unpickled:
        return "failed", "load unpickled something"
    except BaseException as exc:  # noqa: BLE001 - the point of the test
        return "failed", f"{type(exc).__name__}: {exc}"[:300]
    return "loaded", _check_loaded(network, data, original, tmp_path)


def _check_loaded(network, data, original, tmp_path):
    peak = tracemalloc.get_traced_memory()[1]
    if peak > PEAK_LIMIT:
        return f"peak memory {peak / 2 ** 20:.0f} MiB for a file of {len(data)} bytes"
    try:
        if data == original[0]:
            _same(network, original[1])
        network.predict(np.zeros((2, network.layers[0])))
        again = tmp_path / "again"
        network.save(again)  # what load accepts, save writes and load reads back
        _same(fastbp.load(again, backend="numpy"), network)
    except BaseException as exc:  # noqa: BLE001
        return f"loaded, then {type(exc).__name__}: {exc}"[:300]
    return None


def test_load_survives_damaged_and_crafted_files(seeds, tmp_path, monkeypatch):
    files, loaded = seeds

    def refuse(*args, **kwargs):
        raise _Unpickled("unpickling attempted")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    rnd = random.Random(SEED)
    path = tmp_path / "case.fbp"
    failures, kinds = [], {}
    refused = accepted = 0
    start = time.perf_counter()
    tracemalloc.start()
    try:
        # the unmutated seeds first: they must load, equal to the originals
        for name, data in files.items():
            outcome, problem = _check_case(path, data, (data, loaded[name]), tmp_path)
            assert outcome == "loaded" and problem is None, f"{name}: {outcome}, {problem}"
        for case in range(CASES):
            name, (data, what) = _mutate(rnd, files)
            kind = what.split(":")[0].split(" (")[0]
            kinds[kind] = kinds.get(kind, 0) + 1
            outcome, problem = _check_case(path, data, (files[name], loaded[name]), tmp_path)
            if problem is not None:
                failures.append(f"case {case} ({name}, {what}): {problem}")
            elif outcome == "refused":
                refused += 1
            else:
                accepted += 1
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - start
    print(f"\nfuzz: {CASES} cases (seed {SEED}) in {elapsed:.1f} s: {refused} refused, "
          f"{accepted} loaded, {len(failures)} failures; by kind: {kinds}")
    assert not failures, "\n".join(failures[:20])

"""Model files: round trip, continued training, and rejection of damaged or foreign files."""

import os

import numpy as np
import pytest

import fastbp


def _trained(backend="numpy", dtype="float64"):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 3))
    y = np.tanh(X).sum(axis=1)
    net = fastbp.Network([3, 5, 1], activations="tanh", dtype=dtype, backend=backend, seed=2)
    net.fit(X, y, epochs=2, batch_size=4, optimizer=fastbp.Adam(0.01), verbose=0)
    return net, X, y


def test_round_trip(tmp_path, backend, dtype):
    net, X, _ = _trained(backend, dtype)
    path = tmp_path / "model.fbp"
    net.save(path)
    loaded = fastbp.load(path, backend=backend)
    assert loaded.layers == net.layers and loaded.dtype == net.dtype
    assert loaded.activations == net.activations and loaded.loss == net.loss
    for a, b in zip(net.get_weights(), loaded.get_weights()):
        assert a.tobytes() == b.tobytes()
    np.testing.assert_array_equal(loaded.predict(X), net.predict(X))
    assert [p.name for p in tmp_path.iterdir()] == ["model.fbp"]  # no temp file left


def test_loaded_model_continues_training_exactly(tmp_path):
    net, X, y = _trained()
    net.save(tmp_path / "m")
    loaded = fastbp.load(tmp_path / "m", backend="numpy")
    net.fit(X, y, epochs=2, batch_size=4, verbose=0)      # continues Adam and the shuffle
    loaded.fit(X, y, epochs=2, batch_size=4, verbose=0)
    assert loaded.optimizer == fastbp.Adam(0.01)
    for a, b in zip(net.get_weights(), loaded.get_weights()):
        assert a.tobytes() == b.tobytes()


def test_flipped_byte_is_rejected(tmp_path):
    net, _, _ = _trained()
    path = tmp_path / "m"
    net.save(path)
    data = bytearray(path.read_bytes())
    data[-40] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        fastbp.load(path)


@pytest.mark.parametrize("content", [b"", b"hello world\n", b"FASTBP-MODEL\n{not json\n",
                                     b"FASTBP-MODEL\n{\"format\": \"other\"}\n"])
def test_foreign_or_truncated_files_are_rejected(tmp_path, content):
    path = tmp_path / "m"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a valid fastbp model file"):
        fastbp.load(path)


def test_truncated_model_is_rejected(tmp_path):
    net, _, _ = _trained()
    path = tmp_path / "m"
    net.save(path)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="checksum"):
        fastbp.load(path)


def test_pickles_are_never_loaded(tmp_path):
    import io
    import json
    import hashlib
    from fastbp import _io

    payload = io.BytesIO()
    np.save(payload, np.array([object()], dtype=object), allow_pickle=True)
    raw = payload.getvalue()
    header = {"format": "fastbp-model", "version": 1, "payload_bytes": len(raw),
              "sha256": hashlib.sha256(raw).hexdigest()}
    path = tmp_path / "m"
    path.write_bytes(_io.MAGIC + json.dumps(header).encode() + b"\n" + raw)
    with pytest.raises(ValueError, match="not a valid fastbp model file"):
        fastbp.load(path)


def test_failed_save_leaves_existing_file(tmp_path, monkeypatch):
    net, _, _ = _trained()
    path = tmp_path / "m"
    path.write_bytes(b"previous")

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        net.save(path)
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


@pytest.mark.parametrize("loss", ["categorical_crossentropy", "sparse_categorical_crossentropy"])
def test_softmax_round_trip(tmp_path, backend, dtype, loss):
    rng = np.random.default_rng(1)
    X, labels = rng.normal(size=(20, 3)), rng.integers(0, 3, size=20)
    y = labels if loss.startswith("sparse") else np.eye(3)[labels]
    net = fastbp.Network([3, 4, 3], activations="relu", output_activation="softmax", loss=loss,
                         dtype=dtype, backend=backend, seed=3)
    net.fit(X, y, epochs=2, batch_size=5, optimizer=fastbp.Adam(0.01), verbose=0)
    net.save(tmp_path / "m.fbp")
    loaded = fastbp.load(tmp_path / "m.fbp", backend=backend)
    assert loaded.activations == ["relu", "softmax"] and loaded.loss == loss
    np.testing.assert_array_equal(loaded.predict(X), net.predict(X))
    net.fit(X, y, epochs=1, batch_size=5, verbose=0)      # continues Adam and the shuffle
    loaded.fit(X, y, epochs=1, batch_size=5, verbose=0)
    for a, b in zip(net.get_weights(), loaded.get_weights()):
        assert a.tobytes() == b.tobytes()

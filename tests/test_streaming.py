"""Out-of-core training: memory-maps stream in blocks, match in-memory training, stay unchanged."""

import hashlib

import numpy as np
import pytest

import fastbp
from fastbp._data import ArraySource, StreamSource
from fastbp.datasets import make_regression

CHUNK = 16


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setenv("FASTBP_CHUNK_ROWS", str(CHUNK))  # many chunks from little data


def _files(tmp_path, n=203, features=4, dtype="float64", outputs=1, seed=0):
    X, y = make_regression(n, features, n_outputs=outputs, seed=seed, dtype=dtype)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    return (X, y, np.load(tmp_path / "X.npy", mmap_mode="r"),
            np.load(tmp_path / "y.npy", mmap_mode="r"))


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _net(dtype="float64", outputs=1):
    return fastbp.Network([4, 6, outputs], activations="tanh", dtype=dtype, backend="numpy",
                          seed=1)


def _same(a, b):
    return all(x.tobytes() == y.tobytes() for x, y in zip(a.get_weights(), b.get_weights()))


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_memmap_training_equals_in_memory_without_shuffle(tmp_path, batch_size):
    X, y, Xm, ym = _files(tmp_path)
    kwargs = dict(epochs=2, batch_size=batch_size, shuffle=False, optimizer=fastbp.Adam(0.01),
                  validation_split=0.2, verbose=0)
    a, b = _net(), _net()
    ha = a.fit(X, y, **kwargs)
    hb = b.fit(Xm, ym, **kwargs)
    assert _same(a, b)
    assert ha.history == hb.history
    assert b.evaluate(Xm, ym) == a.evaluate(X, y)
    np.testing.assert_array_equal(b.predict(Xm), a.predict(X))


def test_float32_file_into_float64_network_equals_converted_arrays(tmp_path):
    X, y, Xm, ym = _files(tmp_path, dtype="float32", outputs=2)
    a, b = _net(outputs=2), _net(outputs=2)
    a.fit(X.astype(np.float64), y.astype(np.float64), epochs=1, batch_size=2, shuffle=False,
          verbose=0)
    b.fit(Xm, ym, epochs=1, batch_size=2, shuffle=False, verbose=0)
    assert _same(a, b)


def test_source_files_are_opened_read_only_and_never_written(tmp_path):
    _, _, Xm, ym = _files(tmp_path)
    before = {name: _digest(tmp_path / name) for name in ("X.npy", "y.npy")}
    mtimes = {name: (tmp_path / name).stat().st_mtime_ns for name in before}
    net = _net()
    net.fit(Xm, ym, epochs=2, batch_size=4, validation_split=0.25, verbose=0)
    net.evaluate(Xm, ym)
    net.predict(Xm)
    net.gradients(Xm, ym)
    assert not Xm.flags.writeable
    assert {name: _digest(tmp_path / name) for name in before} == before
    assert {name: (tmp_path / name).stat().st_mtime_ns for name in before} == mtimes


def test_shuffled_streaming_is_seeded_and_visits_every_row_once_per_epoch(tmp_path):
    n = 203
    ids = np.arange(n, dtype=np.float64).reshape(-1, 1)   # each row holds its own index
    np.save(tmp_path / "ids.npy", ids)
    source = StreamSource(np.load(tmp_path / "ids.npy", mmap_mode="r"), ids, np.float64)
    rng = np.random.default_rng(0)
    epochs = []
    for _ in range(2):
        seen = [X[order, 0] for X, _, order in source.chunks(rng, True, CHUNK)]
        rows = np.concatenate(seen).astype(int)
        assert sorted(rows) == list(range(n))
        epochs.append(rows)
    assert not np.array_equal(epochs[0], epochs[1])      # a fresh order each epoch
    rng2 = np.random.default_rng(0)
    again = np.concatenate([X[o, 0] for X, _, o in source.chunks(rng2, True, CHUNK)])
    assert np.array_equal(again.astype(int), epochs[0])  # same seed, same order


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("start_row", [0, 5, 16, 17, 100, 203])
def test_skipping_rows_continues_the_same_epoch(tmp_path, streamed, start_row):
    ids = np.arange(203, dtype=np.float64).reshape(-1, 1)
    np.save(tmp_path / "ids.npy", ids)
    source = (StreamSource(np.load(tmp_path / "ids.npy", mmap_mode="r"), ids, np.float64)
              if streamed else ArraySource(ids, ids))
    full_rng, part_rng = np.random.default_rng(3), np.random.default_rng(3)
    full = np.concatenate([X[o, 0] for X, _, o in source.chunks(full_rng, True, CHUNK)])
    part = [X[o, 0] for X, _, o in source.chunks(part_rng, True, CHUNK, start_row)]
    part = np.concatenate(part) if part else np.empty(0)
    assert np.array_equal(part, full[start_row:])
    # the generator ends the epoch in the same state, so later epochs agree too
    assert part_rng.bit_generator.state == full_rng.bit_generator.state


def test_bad_value_in_a_later_block_names_its_row_and_changes_nothing(tmp_path):
    X, y = make_regression(100, 4, seed=0)
    X[77, 2] = np.nan
    np.save(tmp_path / "X.npy", X)
    Xm = np.load(tmp_path / "X.npy", mmap_mode="r")
    net = _net()
    before = net.get_weights()
    with pytest.raises(ValueError, match="row 77, column 2"):
        net.fit(Xm, y, epochs=1, batch_size=1, shuffle=False, verbose=0)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(before, net.get_weights()))


def test_private_copy_on_write_map_keeps_in_memory_changes(tmp_path):
    # Pages of a mode="c" map are never released: that would drop the caller's edits.
    _, y, _, _ = _files(tmp_path)
    Xc = np.load(tmp_path / "X.npy", mmap_mode="c")
    Xc[5] = 0.25
    _net().fit(Xc, y, epochs=1, batch_size=8, verbose=0)
    assert np.all(Xc[5] == 0.25)
    assert not np.all(np.load(tmp_path / "X.npy")[5] == 0.25)


def test_writable_map_and_y_as_plain_array(tmp_path):
    X, y, _, _ = _files(tmp_path)
    Xw = np.load(tmp_path / "X.npy", mmap_mode="r+")
    a, b = _net(), _net()
    a.fit(X, y, epochs=1, batch_size=2, shuffle=False, verbose=0)
    b.fit(Xw, y, epochs=1, batch_size=2, shuffle=False, verbose=0)
    assert _same(a, b)
    assert np.array_equal(np.asarray(Xw), X)


def test_streamed_epochs_are_reproducible_with_shuffle(tmp_path):
    _, _, Xm, ym = _files(tmp_path)
    a, b = _net(), _net()
    ha = a.fit(Xm, ym, epochs=2, batch_size=2, verbose=0)
    hb = b.fit(Xm, ym, epochs=2, batch_size=2, verbose=0)
    assert _same(a, b) and ha.history == hb.history


@pytest.mark.parametrize("how", ["split", "validation_data"])
def test_bad_value_in_streamed_validation_rows_changes_nothing(tmp_path, how):
    """Validation blocks are read after the first epoch has trained: that epoch is undone."""
    X, y = make_regression(100, 4, seed=0)
    X[95, 1] = np.inf   # in the last 10%: a validation row
    np.save(tmp_path / "X.npy", X)
    Xm = np.load(tmp_path / "X.npy", mmap_mode="r")
    net = _net()
    net.fit(X[:50], y[:50], epochs=1, batch_size=4, optimizer=fastbp.Adam(0.01), verbose=0)
    before, state, step = net.get_weights(), net._state.copy(), net._step
    if how == "split":   # the error names the row of the array passed
        train, kwargs, name, row = (Xm, y), dict(validation_split=0.1), "X", 95
    else:
        train, kwargs = (Xm[:90], y[:90]), dict(validation_data=(Xm[90:], y[90:]))
        name, row = r"validation_data\[0\]", 5
    with pytest.raises(ValueError, match=fr"{name}: .* at row {row}, column 1"):
        net.fit(*train, epochs=2, batch_size=1, optimizer=fastbp.SGD(0.01), verbose=0,
                **kwargs)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(before, net.get_weights()))
    assert net.optimizer == fastbp.Adam(0.01) and net._step == step
    assert net._state.tobytes() == state.tobytes()
    # the shuffle generator is rewound too: the next fit is the one a twin makes
    twin = _net()
    twin.fit(X[:50], y[:50], epochs=1, batch_size=4, optimizer=fastbp.Adam(0.01), verbose=0)
    for model in (net, twin):
        model.fit(X[:90], y[:90], epochs=1, batch_size=1, verbose=0)
    assert _same(net, twin)

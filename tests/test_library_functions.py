"""What the command line uses, callable from Python: scores, the linear baseline, file loading,
and the accessors of a network's training position and metadata."""

import os
import re

import numpy as np
import pytest

import fastbp
from fastbp import datasets, metrics
from fastbp._data import ArraySource, StreamSource
from fastbp.datasets import make_regression


# ------------------------------------------------------------------ scores
def test_r2_and_rmse_of_a_known_prediction():
    # SSE = 0 + 0 + 1 = 1; mean 2, SST = 1 + 0 + 1 = 2: R² = 1 - 1/2
    assert metrics.r2_score([1.0, 2.0, 3.0], [1.0, 2.0, 4.0]) == pytest.approx(0.5)
    # squared errors 0, 0, 0, 4: mean 1
    assert metrics.rmse([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 6.0]) == pytest.approx(1.0)
    # a perfect prediction, and the mean as prediction
    y = np.array([3.0, -1.0, 4.0, 1.5])
    assert metrics.r2_score(y, y) == 1.0 and metrics.rmse(y, y) == 0.0
    assert metrics.r2_score(y, np.full(4, y.mean())) == pytest.approx(0.0)


def test_r2_of_several_outputs_is_the_mean_of_each_outputs():
    y = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])
    p = np.array([[1.0, 10.0], [2.0, 20.0], [4.0, 40.0]])
    # output 0: 1 - 1/2; output 1: SSE 100, SST 200: 1 - 1/2
    assert metrics.r2_score(y, p) == pytest.approx(0.5)
    # all 6 squared errors: 0, 0, 1, 0, 0, 100
    assert metrics.rmse(y, p) == pytest.approx(np.sqrt(101 / 6))
    # a constant output has no R²
    assert np.isnan(metrics.r2_score(np.ones(3), [1.0, 2.0, 3.0]))


def test_scores_added_block_by_block_equal_the_scores_of_all_rows():
    rng = np.random.default_rng(0)
    y = rng.normal(3.0, 2.0, size=(1000, 2))
    p = y + rng.normal(size=y.shape)
    scores = metrics.RegressionScores()
    for lo in range(0, 1000, 137):
        scores.add(y[lo:lo + 137], p[lo:lo + 137])
    sse = ((y - p) ** 2).sum(axis=0)
    sst = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    assert scores.n_rows == 1000
    assert scores.r2() == pytest.approx(np.mean(1 - sse / sst), rel=1e-12)
    assert scores.rmse() == pytest.approx(np.sqrt(((y - p) ** 2).mean()), rel=1e-12)
    assert np.isnan(metrics.RegressionScores().r2())


def test_scores_refuse_shapes_that_do_not_match():
    with pytest.raises(ValueError, match="shape of y_true"):
        metrics.r2_score([1.0, 2.0], [1.0, 2.0, 3.0])
    scores = metrics.RegressionScores().add(np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="2 output"):
        scores.add(np.ones(2), np.ones(2))


# ------------------------------------------------------------------ the linear baseline
def _lstsq(X, y):
    A = np.hstack([X, np.ones((len(X), 1))])
    return np.linalg.lstsq(A, y.reshape(len(X), -1), rcond=None)[0]


def test_linear_baseline_equals_numpy_lstsq(tmp_path):
    X, y = make_regression(5000, 6, n_outputs=2, seed=3)
    W = metrics.linear_baseline(X, y)
    assert W.shape == (7, 2)
    np.testing.assert_allclose(W, _lstsq(X, y), rtol=1e-9, atol=1e-12)
    # the first n_rows only, 1-D targets, memory-mapped inputs: the same fit
    np.save(tmp_path / "X.npy", X)
    mapped = np.load(tmp_path / "X.npy", mmap_mode="r")
    W = metrics.linear_baseline(mapped, y[:, 0], n_rows=3000)
    np.testing.assert_allclose(W, _lstsq(X[:3000], y[:3000, 0]), rtol=1e-9, atol=1e-12)


def test_linear_baseline_recovers_an_exact_line_and_subsamples_large_data(monkeypatch):
    X = np.arange(10.0).reshape(-1, 1)
    np.testing.assert_allclose(metrics.linear_baseline(X, 2 * X[:, 0] - 3), [[2.0], [-3.0]],
                               atol=1e-12)
    # above max_rows, evenly spread blocks: here blocks of 10 rows, 3 of the 10 blocks
    monkeypatch.setattr(metrics, "BLOCK_ROWS", 10)
    X, y = make_regression(100, 2, seed=1)
    W = metrics.linear_baseline(X, y, max_rows=30)
    rows = np.r_[0:10, 40:50, 90:100]  # np.linspace(0, 9, 3).round() -> blocks 0, 4 (4.5), 9
    np.testing.assert_allclose(W, _lstsq(X[rows], y[rows]), rtol=1e-9, atol=1e-12)


def test_linear_baseline_refuses_bad_input():
    X = np.ones((4, 2))
    with pytest.raises(ValueError, match="2-D"):
        metrics.linear_baseline(np.ones(4), np.ones(4))
    with pytest.raises(ValueError, match="to match the rows"):
        metrics.linear_baseline(X, np.ones(3))
    with pytest.raises(ValueError, match="n_rows"):
        metrics.linear_baseline(X, np.ones(4), n_rows=5)
    bad = X.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="finite"):
        metrics.linear_baseline(bad, np.ones(4))


# ------------------------------------------------------------------ loading files
def test_load_npy_memory_maps_read_only(tmp_path):
    X = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.save(tmp_path / "X.npy", X)
    loaded = datasets.load_npy(tmp_path / "X.npy")
    assert isinstance(loaded, np.memmap) and not loaded.flags.writeable
    assert loaded.dtype == np.float32 and loaded.tobytes() == X.tobytes()


def test_load_npy_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        datasets.load_npy(tmp_path / "missing.npy")
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(ValueError, match="expected a .npy file of numbers"):
        datasets.load_npy(tmp_path / "empty.npy")
    np.savez(tmp_path / "two.npz", a=np.ones(2), b=np.ones(2))
    with pytest.raises(ValueError, match="npz archive"):
        datasets.load_npy(tmp_path / "two.npz")
    np.save(tmp_path / "words.npy", np.array(["a", "b"]))
    with pytest.raises(ValueError, match="real numbers"):
        datasets.load_npy(tmp_path / "words.npy")


def test_load_csv_skips_a_header_and_splits_the_targets(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,b,c,d\n1,2,3,4\n5,6,7,8\n")
    X, y = datasets.load_csv(path, targets=2)
    assert X.tolist() == [[1, 2], [5, 6]] and y.tolist() == [[3, 4], [7, 8]]
    assert X.dtype == y.dtype == np.float64
    path.write_text("1,2\n3,4\n5,6\n")  # no header: every line is data
    X, y = datasets.load_csv(path)
    assert X.tolist() == [[1], [3], [5]] and y.tolist() == [[2], [4], [6]]


def test_load_csv_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        datasets.load_csv(tmp_path / "missing.csv")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(ValueError, match="binary data"):
        datasets.load_csv(tmp_path / "bin.csv")
    (tmp_path / "bad.csv").write_text("1,2,3\n4,oops,6\n")
    with pytest.raises(ValueError, match="comma-separated numbers in every row"):
        datasets.load_csv(tmp_path / "bad.csv")
    (tmp_path / "head.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="data rows"):
        datasets.load_csv(tmp_path / "head.csv")
    with pytest.raises(ValueError, match="more than 2 columns"):
        datasets.load_csv(_write(tmp_path / "two.csv", "1,2\n"), targets=2)


def _write(path, text):
    path.write_text(text)
    return path


def _write_bytes(path, data):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("data,X,y", [
    (b'"a","b","t"\n"1","2","3"\n4,5,6\n', [[1, 2], [4, 5]], [[3], [6]]),  # quoted cells
    (b"\xef\xbb\xbf1,2,3\n4,5,6\n", [[1, 2], [4, 5]], [[3], [6]]),  # a byte-order mark
    (b"\xef\xbb\xbfx,y,t\r\n1,2,3\r\n", [[1, 2]], [[3]]),  # a header after the mark, CRLF
])
def test_load_csv_reads_what_spreadsheets_write(tmp_path, data, X, y):
    got_X, got_y = datasets.load_csv(_write_bytes(tmp_path / "d.csv", data))
    assert got_X.tolist() == X and got_y.tolist() == y


@pytest.mark.parametrize("text,where", [
    ("1,,3\n4,5,6\n", "line 1, column 2: found ''"),  # data with a hole, not a header
    ("a,b,c\n1,2,3\n4,,6\n", "line 3, column 2: found ''"),
    ("a,b,c\n1,2,3\n4,5\n", "line 3 has 2 values where the first data row has 3"),
    ("1,2,3\n\n4,5,x\n", "line 3, column 3: found 'x'"),  # counted as an editor counts
])
def test_load_csv_names_the_line_and_column_of_a_bad_cell(tmp_path, text, where):
    with pytest.raises(ValueError, match=re.escape(where)):
        datasets.load_csv(_write(tmp_path / "d.csv", text))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
@pytest.mark.parametrize("load", [datasets.load_csv, datasets.load_npy])
def test_loaders_refuse_what_is_not_a_regular_file(tmp_path, load):
    """A FIFO would block the read forever and /dev/zero never ends: refused, not opened."""
    os.mkfifo(tmp_path / "pipe")
    for path, kind in [(tmp_path / "pipe", "a FIFO"), (tmp_path, "a directory")] + (
            [("/dev/zero", "a device")] if os.path.exists("/dev/zero") else []):
        with pytest.raises(ValueError, match=f"expected a regular file; found {kind}"):
            load(path)


# ------------------------------------------------------------------ sources
def test_rows_of_a_source(tmp_path):
    X, y = make_regression(50, 3, seed=0)
    memory = ArraySource(X, y.reshape(-1, 1))
    xb, yb = memory.rows(10, 20)
    assert xb.tobytes() == X[10:20].tobytes() and yb.ravel().tobytes() == y[10:20].tobytes()
    np.save(tmp_path / "X.npy", X.astype(np.float32))
    stream = StreamSource(np.load(tmp_path / "X.npy", mmap_mode="r"), y.reshape(-1, 1),
                          np.dtype(np.float64))
    xb, yb = stream.rows(10, 20)
    assert xb.dtype == np.float64 and xb.flags.c_contiguous and xb.flags.writeable
    assert xb.tobytes() == X[10:20].astype(np.float32).astype(np.float64).tobytes()


# ------------------------------------------------------------------ network accessors
def test_training_position_and_metadata_travel_with_the_model(tmp_path):
    X, y = make_regression(40, 3, seed=0)

    class StopAfterOne(fastbp.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt

    net = fastbp.Network([3, 4, 1], backend="numpy")
    assert net.training_position is None and net.metadata is None
    with pytest.raises(KeyboardInterrupt):
        net.fit(X, y, epochs=3, batch_size=4, callbacks=[StopAfterOne()], verbose=0)
    # a KeyboardInterrupt from a callback is not a Ctrl-C stop: no exact position is kept
    assert net.training_position is None
    net.fit(X, y, epochs=2, batch_size=4, checkpoint=tmp_path / "ck", verbose=0)
    assert net.training_position is None  # a finished fit holds none
    loaded = fastbp.load(tmp_path / "ck", backend="numpy")
    position = loaded.training_position
    assert position["epoch"] == 2 and position["rows"] == 0 and "arrays" not in position
    assert position["settings"]["batch_size"] == 4 and len(position["history"]["loss"]) == 2
    position["epoch"] = 99  # a copy
    assert loaded.training_position["epoch"] == 2

    loaded.metadata = {"note": "first run", "sizes": (1, 2)}
    assert loaded.metadata == {"note": "first run", "sizes": [1, 2]}  # as a file holds it
    loaded.metadata["note"] = "changed"  # a copy
    loaded.save(tmp_path / "m")
    again = fastbp.load(tmp_path / "m", backend="numpy")
    assert again.metadata == {"note": "first run", "sizes": [1, 2]}
    assert again.training_position == loaded.training_position
    again.metadata = None
    assert again.metadata is None
    with pytest.raises(TypeError, match="metadata"):
        again.metadata = ["not", "a", "dict"]
    with pytest.raises(ValueError, match="metadata"):
        again.metadata = {"weights": np.ones(2)}

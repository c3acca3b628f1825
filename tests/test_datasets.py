"""fastbp.datasets: deterministic, blockwise == one-shot, learnable but not linear, safe writes."""

import json
import os
import re
import threading

import numpy as np
import pytest

from fastbp import datasets
from fastbp.datasets import make_regression, write_regression


def test_same_seed_same_rows_other_seed_other_rows():
    X1, y1 = make_regression(500, 7, seed=3)
    X2, y2 = make_regression(500, 7, seed=3)
    X3, y3 = make_regression(500, 7, seed=4)
    assert X1.tobytes() == X2.tobytes() and y1.tobytes() == y2.tobytes()
    assert not np.array_equal(X1, X3) and not np.array_equal(y1, y3)
    assert X1.shape == (500, 7) and y1.shape == (500,)
    assert X1.min() >= -1 and X1.max() <= 1


def test_smaller_set_is_a_prefix_across_block_boundaries(monkeypatch):
    monkeypatch.setattr(datasets, "BLOCK_ROWS", 64)
    X_big, y_big = make_regression(1000, 5, n_outputs=2, seed=1)
    for n in (1, 63, 64, 65, 300):
        X, y = make_regression(n, 5, n_outputs=2, seed=1)
        assert X.tobytes() == X_big[:n].tobytes() and y.tobytes() == y_big[:n].tobytes()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_written_files_equal_the_one_shot_set(tmp_path, monkeypatch, dtype):
    monkeypatch.setattr(datasets, "BLOCK_ROWS", 100)   # many blocks, one of them short
    X, y = make_regression(1234, 6, noise=0.2, seed=9, dtype=dtype)
    x_path, y_path = write_regression(tmp_path, 1234, 6, noise=0.2, seed=9, dtype=dtype)
    Xf, yf = np.load(x_path), np.load(y_path)
    assert Xf.dtype == np.dtype(dtype) and Xf.shape == (1234, 6) and yf.shape == (1234,)
    assert Xf.tobytes() == X.tobytes() and yf.tobytes() == y.tobytes()
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["seed"] == 9 and meta["n_samples"] == 1234
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X.npy", "meta.json", "y.npy"]


def test_real_block_size_blockwise_equals_one_shot(tmp_path):
    n = datasets.BLOCK_ROWS + 17
    X, y = make_regression(n, 2, n_outputs=2, seed=5, dtype="float32")
    write_regression(tmp_path, n, 2, n_outputs=2, seed=5, dtype="float32")
    assert np.load(tmp_path / "X.npy").tobytes() == X.tobytes()
    assert np.load(tmp_path / "y.npy").tobytes() == y.tobytes()
    assert y.shape == (n, 2)


def test_float32_is_float64_rounded():
    X64, y64 = make_regression(300, 4, seed=2)
    X32, y32 = make_regression(300, 4, seed=2, dtype="float32")
    assert X32.tobytes() == X64.astype(np.float32).tobytes()
    assert y32.tobytes() == y64.astype(np.float32).tobytes()


def test_target_is_nonlinear_with_unit_scale():
    X, y = make_regression(20_000, 20, seed=0, noise=0.0)
    assert 0.6 < y.var() < 1.6
    A = np.c_[X, np.ones(len(X))]
    w = np.linalg.lstsq(A, y, rcond=None)[0]
    r2 = 1 - np.mean((A @ w - y) ** 2) / y.var()
    assert 0.02 < r2 < 0.35   # a linear fit explains little of it


def test_noise_has_the_requested_scale():
    X, clean = make_regression(5000, 3, seed=1, noise=0.0)
    _, noisy = make_regression(5000, 3, seed=1, noise=0.5)
    assert abs(np.std(noisy - clean) - 0.5) < 0.03


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_samples=0), "n_samples"), (dict(n_samples=10, n_features=0), "n_features"),
    (dict(n_samples=10, noise=-1.0), "noise"), (dict(n_samples=10, noise=float("nan")), "noise"),
    (dict(n_samples=10, seed=-1), "seed"), (dict(n_samples=10, seed=1.5), "seed"),
    (dict(n_samples=10, dtype="int32"), "dtype"), (dict(n_samples=10, n_outputs=0), "n_outputs"),
])
def test_bad_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_regression(**kwargs)


def test_existing_files_are_kept_unless_overwrite(tmp_path):
    write_regression(tmp_path, 50, 3, seed=0)
    before = (tmp_path / "X.npy").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        write_regression(tmp_path, 60, 3, seed=1)
    assert (tmp_path / "X.npy").read_bytes() == before
    write_regression(tmp_path, 60, 3, seed=1, overwrite=True)
    assert np.load(tmp_path / "X.npy").shape == (60, 3)


def test_interrupted_write_leaves_no_files(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "BLOCK_ROWS", 10)
    real = datasets._block
    calls = []

    def failing(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(datasets, "_block", failing)
    with pytest.raises(KeyboardInterrupt):
        write_regression(tmp_path / "d", 100, 3, progress=True)
    assert not (tmp_path / "d").exists()  # the folder it made goes too
    (tmp_path / "kept").mkdir()
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        write_regression(tmp_path / "kept", 100, 3)
    assert list((tmp_path / "kept").iterdir()) == []  # one that was there stays


def test_not_enough_disk_space_is_refused_before_writing(tmp_path, monkeypatch):
    import collections
    import shutil

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1, 1, 1000))
    with pytest.raises(OSError, match="free"):
        write_regression(tmp_path, 10_000_000, 20)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OSError, match="free"):  # checked before a new folder is made
        write_regression(tmp_path / "new" / "data", 10_000_000, 20)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dtype,limit", [("float32", 1.8446e19), ("float64", 1.3407e154)])
def test_noise_that_would_overflow_the_targets_is_refused(tmp_path, dtype, limit):
    """The square root of the dtype's largest value bounds the noise (noise * z never
    overflows below it); refused before anything is made or written."""
    _, y = make_regression(500, 3, noise=limit, seed=0, dtype=dtype)
    assert np.isfinite(y).all()
    for noise in (limit * 1.01, 1e308):
        expected = re.escape(f"expected at most {limit:.3g} for {dtype}")
        with pytest.raises(ValueError, match=expected):
            make_regression(10, 3, noise=noise, dtype=dtype)
        with pytest.raises(ValueError, match="overflows"):
            write_regression(tmp_path / "d", 10, 3, noise=noise, dtype=dtype)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_meta_json_is_kept_unless_overwrite(tmp_path):
    (tmp_path / "meta.json").write_text("mine")
    with pytest.raises(FileExistsError, match="meta.json"):
        write_regression(tmp_path, 50, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]
    assert (tmp_path / "meta.json").read_text() == "mine"


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_links_planted_at_temporary_names_are_not_followed(tmp_path):
    """Temporary files are created with O_EXCL | O_NOFOLLOW under random names: links at the
    old fixed names (.X.npy.partial, ...) are neither written through nor renamed into place."""
    out = tmp_path / "d"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    planted = [".X.npy.partial", ".y.npy.partial", ".meta.json.partial"]
    for name in planted:
        (out / name).symlink_to(victim)
    x_path, y_path = write_regression(out, 100, 3)
    assert victim.read_bytes() == b"precious"
    for path in (x_path, y_path, out / "meta.json"):
        assert not path.is_symlink() and path.is_file()
    assert np.array_equal(np.load(x_path), make_regression(100, 3, dtype="float32")[0])
    assert sorted(p.name for p in out.iterdir()) == sorted(["X.npy", "y.npy", "meta.json",
                                                            *planted])


def test_concurrent_runs_into_one_directory_do_not_clobber_each_other(tmp_path, monkeypatch):
    """A second run writing while the first is half-way: both complete, with whole files."""
    out = tmp_path / "d"
    first_block, go_on = threading.Event(), threading.Event()
    real_block = datasets._block
    first = threading.current_thread()

    def paused(*args, **kwargs):
        if threading.current_thread() is not first and not go_on.is_set():
            first_block.set()
            go_on.wait(30)
        return real_block(*args, **kwargs)

    monkeypatch.setattr(datasets, "_block", paused)
    errors = []

    def run():
        try:
            write_regression(out, 40_000, 3, overwrite=True)  # three blocks
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    assert first_block.wait(30)
    try:
        write_regression(out, 40_000, 3, overwrite=True)
    finally:
        go_on.set()
        thread.join(60)
    assert not errors, errors
    X_ref, y_ref = make_regression(40_000, 3, dtype="float32")
    assert np.array_equal(np.load(out / "X.npy"), X_ref)
    assert np.array_equal(np.load(out / "y.npy"), y_ref)
    assert sorted(p.name for p in out.iterdir()) == ["X.npy", "meta.json", "y.npy"]

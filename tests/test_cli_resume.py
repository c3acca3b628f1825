"""`fastbp train --resume`: what it reads back from a checkpoint, and what it refuses."""

import os
import signal
import sys

import numpy as np
import pytest

import fastbp
from fastbp import cli
from fastbp._data import ArraySource, StreamSource
from fastbp.datasets import make_regression

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # "auto chose numpy"

CHUNK = 256
FAST = ["--backend", "numpy", "--hidden", "8", "--quiet"]
SYNTHETIC = ["--synthetic", 2000, "--features", 5]
needs_sigint = pytest.mark.skipif(not hasattr(signal, "SIGINT") or sys.platform == "win32",
                                  reason="needs POSIX signals")


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setenv("FASTBP_CHUNK_ROWS", str(CHUNK))


def run(capsys, *argv):
    """``(exit status, stdout, stderr)`` of ``fastbp ARGV`` run in this process."""
    try:
        status = cli.main([str(a) for a in argv])
    except SystemExit as exc:        # argparse: --help, usage errors
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def _checkpoint(capsys, path, *extra, epochs=2, data=SYNTHETIC):
    """A checkpoint of a finished run on 2000 rows (its position: after the last epoch)."""
    status, _, err = run(capsys, "train", *data, *FAST, "--epochs", epochs,
                         "--checkpoint", path, *extra)
    assert status == 0, err
    return path


def _edit_options(path, **changes):
    """Rewrite checkpoint ``path`` with its stored train options changed (a crafted file)."""
    network = fastbp.load(path, backend="numpy")
    network._extra["train_options"].update(changes)
    network.save(path)


def _position(path):
    return fastbp.load(path, backend="numpy")._position


def _weights_equal(a, b):
    return all(x.tobytes() == y.tobytes() for x, y in zip(a.get_weights(), b.get_weights()))


# ---------------------------------------------------------------------------- 1: trust
def test_output_paths_stored_in_a_checkpoint_are_never_written(capsys, tmp_path):
    ckpt = _checkpoint(capsys, tmp_path / "run.ckpt")
    victims = {name: tmp_path / name for name in ("victim_save", "victim_plot.png",
                                                  "victim_ckpt")}
    for path in victims.values():
        path.write_text("precious")
    _edit_options(ckpt, save=str(victims["victim_save"]), plot=str(victims["victim_plot.png"]),
                  checkpoint=str(victims["victim_ckpt"]))
    status, out, err = run(capsys, "train", "--resume", ckpt, "--epochs", 3, "--quiet")
    assert status == 0, err
    assert all(path.read_text() == "precious" for path in victims.values())
    assert "pass --save again" in out and "pass --plot again" in out
    assert _position(ckpt)["epoch"] == 3            # the resumed file got the new checkpoint
    # typed again, --save is written
    status, out, err = run(capsys, "train", "--resume", ckpt, "--epochs", 4, "--quiet",
                           "--save", tmp_path / "m.fbp")
    assert status == 0, err
    assert fastbp.load(tmp_path / "m.fbp", backend="numpy").layers == (5, 8, 1)


def test_resume_writes_checkpoints_where_the_command_line_says(capsys, tmp_path):
    ckpt = _checkpoint(capsys, tmp_path / "run.ckpt")
    before = ckpt.read_bytes()
    status, _, err = run(capsys, "train", "--resume", ckpt, "--epochs", 3, "--quiet",
                         "--checkpoint", tmp_path / "next.ckpt")
    assert status == 0, err
    assert ckpt.read_bytes() == before and _position(tmp_path / "next.ckpt")["epoch"] == 3


@pytest.mark.parametrize("key, value", [
    ("epochs", -5), ("loss", "bogus"), ("batch_size", "x"), ("batch_size", 2.5),
    ("hidden", [0]), ("activation", ["nope"]), ("backend", "evil"), ("x", 5),
    ("shuffle", "yes"), ("validation_split", 1.5), ("learning_rate", -1), ("synthetic", 0),
    ("seed", True), ("_features_typed", "no"),
])
def test_invalid_stored_options_are_refused_naming_checkpoint_and_option(capsys, tmp_path,
                                                                          key, value):
    ckpt = _checkpoint(capsys, tmp_path / "run.ckpt", epochs=1)
    _edit_options(ckpt, **{key: value})
    status, out, err = run(capsys, "train", "--resume", ckpt, "--epochs", 2, "--quiet")
    assert status == 1, (out, err)
    option = key if key.startswith("_") else "--" + key.replace("_", "-")
    assert f"--resume {ckpt}" in err and f"invalid {option} " in err, err
    assert len(err.strip().splitlines()) == 1 and "loss per epoch" not in out


def test_stored_train_options_must_be_an_object(capsys, tmp_path):
    ckpt = _checkpoint(capsys, tmp_path / "run.ckpt", epochs=1)
    network = fastbp.load(ckpt, backend="numpy")
    network._extra = {"train_options": ["--save", "/etc/passwd"]}
    network.save(ckpt)
    status, _, err = run(capsys, "train", "--resume", ckpt, "--quiet")
    assert status == 1 and "JSON object" in err


def test_resume_reads_the_checkpoint_once(capsys, tmp_path, monkeypatch):
    """Options and network come from one read of the file: no second read that another
    process could have replaced in between (options of one file, weights of another)."""
    from fastbp import _io

    ckpt = _checkpoint(capsys, tmp_path / "ck.fbp")
    other = _checkpoint(capsys, tmp_path / "other.fbp", "--seed", 5, "--batch-size", 16)
    real_read, reads = _io.read_model_file, []

    def read(path):
        reads.append(str(path))
        result = real_read(path)
        os.replace(other, ckpt)  # the file changes right after it was read
        return result

    monkeypatch.setattr(_io, "read_model_file", read)
    status, out, err = run(capsys, "train", "--resume", ckpt, "--epochs", 3, "--quiet",
                           "--checkpoint", tmp_path / "next.fbp")
    assert status == 0, err
    assert reads == [str(ckpt)]
    monkeypatch.undo()
    resumed = fastbp.load(tmp_path / "next.fbp", backend="numpy")
    assert resumed._extra["train_options"]["seed"] == 0  # the first file's, throughout
    assert resumed._position["settings"]["batch_size"] != 16


# ---------------------------------------------------------------------------- 2: options
def test_resume_refuses_a_different_optimizer(capsys, tmp_path):
    ckpt = _checkpoint(capsys, tmp_path / "run.ckpt", "--learning-rate", 0.02, epochs=1)
    for extra in (["--learning-rate", 0.5], ["--optimizer", "adam"], ["--momentum", 0.9]):
        status, out, err = run(capsys, "train", "--resume", ckpt, "--epochs", 2, *extra)
        assert status == 2, (extra, err)
        assert "fresh optimizer state" in err and "usage: fastbp train" in err
        assert extra[0] in err and "loss per epoch" not in out
    # the same values are fine, and the banner shows the optimizer that trains
    status, out, err = run(capsys, "train", "--resume", ckpt, "--epochs", 2, "--quiet",
                           "--optimizer", "sgd", "--learning-rate", 0.02)
    assert status == 0, err
    assert "SGD(learning_rate=0.02" in out


def test_stored_optimizer_options_cannot_disagree_with_the_optimizer(capsys, tmp_path):
    ckpt = _checkpoint(capsys, tmp_path / "run.ckpt", epochs=1)
    _edit_options(ckpt, optimizer="adam", learning_rate=0.5)   # the file's optimizer is SGD
    status, out, err = run(capsys, "train", "--resume", ckpt, "--epochs", 2, "--quiet")
    assert status == 0, err
    assert "SGD(learning_rate=0.01" in out                     # what trains, and says so


@pytest.mark.parametrize("extra, shown", [
    (["--batch-size", 4], "--batch-size 4"), (["--no-shuffle"], "--no-shuffle"),
    (["--validation-split", 0.2], "--validation-split 0.2"),
    (["--synthetic", 3000], "--synthetic 3000"), (["--seed", 1], "--seed 1"),
    (["--noise", 0.5], "--noise 0.5"), (["--chunk-rows", 1000], "--chunk-rows 1000"),
])
def test_resume_refuses_options_that_must_match(capsys, tmp_path, extra, shown):
    ckpt = _checkpoint(capsys, tmp_path / "run.ckpt", epochs=1)
    status, out, err = run(capsys, "train", "--resume", ckpt, "--epochs", 2, "--quiet", *extra)
    assert status == 2, err
    assert shown in err and "usage: fastbp train" in err and "loss per epoch" not in out


def test_resume_accepts_options_that_match_or_may_change(capsys, tmp_path):
    ckpt = _checkpoint(capsys, tmp_path / "run.ckpt", epochs=1)
    status, _, err = run(capsys, "train", "--resume", ckpt, "--epochs", 3, "--quiet",
                         "--batch-size", 1, "--validation-split", 0.1, "--synthetic", 2000,
                         "--chunk-rows", CHUNK, "--patience", 2)
    assert status == 0, err


# ---------------------------------------------------------------------------- 3: epochs, dirs
class _CtrlCAt(fastbp.EarlyStopping):
    """EarlyStopping that also sends this process SIGINT after chunk number ``at``."""

    at = 0

    def on_chunk_end(self, epoch, logs=None):
        type(self).at -= 1
        if type(self).at == 0:
            os.kill(os.getpid(), signal.SIGINT)


_CtrlCAt.__name__ = "EarlyStopping"  # its saved state is restored into EarlyStopping


@needs_sigint
def test_epochs_below_the_checkpoints_epoch_are_refused(capsys, tmp_path, monkeypatch):
    common = [*SYNTHETIC, *FAST, "--patience", 5]
    status, _, err = run(capsys, "train", *common, "--epochs", 2, "--save", tmp_path / "ref")
    assert status == 0, err
    # 1800 training rows: 8 chunks per epoch; stop in the middle of epoch 2
    monkeypatch.setattr(fastbp, "EarlyStopping", _CtrlCAt)
    monkeypatch.setattr(_CtrlCAt, "at", 10)
    status, _, err = run(capsys, "train", *common, "--epochs", 2, "--checkpoint",
                         tmp_path / "run.ckpt")
    assert status == 130, err
    monkeypatch.undo()
    monkeypatch.setenv("FASTBP_CHUNK_ROWS", str(CHUNK))
    position = _position(tmp_path / "run.ckpt")
    assert position["epoch"] == 1 and position["rows"] == 2 * CHUNK

    status, out, err = run(capsys, "train", "--resume", tmp_path / "run.ckpt", "--epochs", 1)
    assert status == 2 and "loss per epoch" not in out
    assert ("the checkpoint is in epoch 2 (1 completed); --epochs must be >= 2 (it counts "
            "from the start of the original run)") in err
    status, out, err = run(capsys, "train", "--resume", tmp_path / "run.ckpt", "--quiet",
                           "--save", tmp_path / "out")
    assert status == 0, err
    timing = next(line for line in out.splitlines() if line.startswith("time:"))
    assert f"({1800 - 2 * CHUNK:,} rows," in timing and "-" not in timing
    assert _weights_equal(fastbp.load(tmp_path / "ref", backend="numpy"),
                          fastbp.load(tmp_path / "out", backend="numpy"))


def test_resume_from_another_directory_keeps_writing_the_resumed_file(capsys, tmp_path,
                                                                      monkeypatch):
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    X, y = make_regression(2000, 5, seed=3)
    np.save(a / "X.npy", X)
    np.save(a / "y.npy", y)
    monkeypatch.chdir(a)
    _checkpoint(capsys, "run.ckpt", data=["--x", "X.npy", "--y", "y.npy"], epochs=1)
    monkeypatch.chdir(b)
    status, out, err = run(capsys, "train", "--resume", "../A/run.ckpt", "--epochs", 2,
                           "--quiet")
    assert status == 0, err
    assert _position(a / "run.ckpt")["epoch"] == 2 and list(b.iterdir()) == []
    assert str(a / "X.npy") in out                  # stored absolute when written


def test_relative_data_paths_in_a_checkpoint_are_relative_to_its_directory(capsys, tmp_path,
                                                                           monkeypatch):
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    X, y = make_regression(2000, 5, seed=3)
    for where in (a, b):                            # B's files hold other data
        np.save(where / "X.npy", X if where == a else X[::-1].copy())
        np.save(where / "y.npy", y if where == a else y[::-1].copy())
    _checkpoint(capsys, a / "run.ckpt", data=["--x", a / "X.npy", "--y", a / "y.npy"],
                epochs=1)
    _edit_options(a / "run.ckpt", x="X.npy", y="y.npy")    # as an older or edited file
    monkeypatch.chdir(b)
    status, out, err = run(capsys, "train", "--resume", "../A/run.ckpt", "--epochs", 2,
                           "--quiet")
    assert status == 0, err
    assert str(a / "X.npy") in out
    # typed on the command line, a relative path is relative to the working directory
    status, _, err = run(capsys, "train", "--resume", "../A/run.ckpt", "--epochs", 3,
                         "--quiet", "--x", "X.npy", "--y", "y.npy")
    assert status == 1 and "fit(resume=True)" in err and "training data" in err


def test_resume_on_changed_data_fails_before_training(capsys, tmp_path):
    X, y = make_regression(2000, 5, seed=3)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    ckpt = _checkpoint(capsys, tmp_path / "run.ckpt", epochs=1,
                       data=["--x", tmp_path / "X.npy", "--y", tmp_path / "y.npy"])
    before = ckpt.read_bytes()
    X[899] += 1.0       # the middle row, (n - 1) // 2, of the 1800 training rows
    np.save(tmp_path / "X.npy", X)
    status, out, err = run(capsys, "train", "--resume", ckpt, "--epochs", 2, "--quiet")
    assert status == 1 and "training data" in err and "loss per epoch" not in out
    assert ckpt.read_bytes() == before


# ---------------------------------------------------------------------------- 4: outputs
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
@pytest.mark.parametrize("option", ["--save", "--checkpoint"])
def test_output_in_a_directory_without_file_creation_fails_before_training(capsys, option):
    # /proc refuses new files even to root, whom permission bits do not stop
    status, out, err = run(capsys, "train", *SYNTHETIC, *FAST, option,
                           "/proc/fastbp-test.fbp")
    assert status == 1 and option in err and "loss per epoch" not in out


@pytest.mark.parametrize("option", ["--save", "--checkpoint"])
def test_output_under_a_regular_file_fails_before_training(capsys, tmp_path, option):
    (tmp_path / "file").write_text("")
    status, out, err = run(capsys, "train", *SYNTHETIC, *FAST, option,
                           tmp_path / "file" / "m.fbp")
    assert status == 1 and option in err and "loss per epoch" not in out


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into a mode 0o500 directory regardless")
@pytest.mark.parametrize("option", ["--save", "--checkpoint"])
def test_output_in_a_read_only_directory_fails_before_training(capsys, tmp_path, option):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        status, out, err = run(capsys, "train", *SYNTHETIC, *FAST, option,
                               locked / "m.fbp")
    finally:
        locked.chmod(0o700)
    assert status == 1 and option in err and "loss per epoch" not in out


def test_resumed_checkpoint_in_a_directory_without_file_creation_fails(capsys, tmp_path):
    ckpt = _checkpoint(capsys, tmp_path / "run.ckpt", epochs=1)
    status, out, err = run(capsys, "train", "--resume", ckpt, "--epochs", 2, "--quiet",
                           "--checkpoint", tmp_path / "run.ckpt" / "next")
    assert status == 1 and "--checkpoint" in err and "loss per epoch" not in out


# ---------------------------------------------------------------------------- 5: fingerprint
@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("n", [10, 2000, 100_001])
def test_fingerprint_detects_a_change_in_the_middle_row(tmp_path, streamed, n):
    X = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    Y = np.ones((n, 1), dtype=np.float32)

    def source(X):
        if not streamed:
            return ArraySource(X.astype(np.float64), Y.astype(np.float64))
        np.save(tmp_path / "X.npy", X)
        return StreamSource(np.load(tmp_path / "X.npy", mmap_mode="r"), Y, np.float64)

    before = source(X).fingerprint()
    assert source(X.copy()).fingerprint() == before
    changed = X.copy()
    changed[(n - 1) // 2, 1] += 1
    assert source(changed).fingerprint() != before

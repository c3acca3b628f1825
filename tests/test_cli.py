"""The `fastbp` command line: each command works; bad arguments: one clear line, exit != 0."""

import hashlib
import subprocess
import sys

import numpy as np
import pytest

import fastbp
from fastbp import cli
from fastbp.datasets import make_regression

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # "auto chose numpy"


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setenv("FASTBP_CHUNK_ROWS", "256")


def run(capsys, *argv):
    """``(exit status, stdout, stderr)`` of ``fastbp ARGV`` run in this process."""
    try:
        status = cli.main([str(a) for a in argv])
    except SystemExit as exc:        # argparse: --help, usage errors
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


FAST = ["--backend", "numpy", "--hidden", "8", "--quiet"]


@pytest.mark.parametrize("command", [[], ["train"], ["sweep"], ["make-data"], ["demo"], ["info"],
                                     ["bench"]])
def test_help(capsys, command):
    status, out, _ = run(capsys, *command, "--help")
    assert status == 0 and "usage: fastbp" in out


def test_version_and_info(capsys):
    status, out, _ = run(capsys, "--version")
    assert status == 0 and fastbp.__version__ in out
    status, out, _ = run(capsys, "info")
    assert status == 0 and "numpy" in out and "active backend" in out


def test_train_synthetic_reports_r2_against_the_linear_baseline(capsys, tmp_path):
    status, out, err = run(capsys, "train", "--synthetic", 3000, "--epochs", 2, *FAST,
                           "--save", tmp_path / "m.fbp")
    assert status == 0, err
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    net_r2, lin_r2 = float(lines["network"][1]), float(lines["linear"][3])
    assert net_r2 > lin_r2 + 0.3          # a small net beats a linear fit by a wide margin
    assert "held-out" in out and "rows/s" in out and "time:" in out
    model = fastbp.load(tmp_path / "m.fbp", backend="numpy")
    assert model.layers == (20, 8, 1)


def test_train_on_npy_files_streams_them_and_leaves_them_unchanged(capsys, tmp_path):
    X, y = make_regression(1000, 5, n_outputs=2, seed=1, dtype="float32")
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    digest = {p: hashlib.sha256((tmp_path / p).read_bytes()).hexdigest()
              for p in ("X.npy", "y.npy")}
    status, out, err = run(capsys, "train", "--x", tmp_path / "X.npy", "--y", tmp_path / "y.npy",
                           *FAST, "--epochs", 1, "--optimizer", "adam", "--learning-rate", 0.01,
                           "--beta1", 0.8, "--validation-split", 0.2, "--dtype", "float32")
    assert status == 0, err
    assert "memory-mapped" in out and "200 held-out rows" in out
    assert digest == {p: hashlib.sha256((tmp_path / p).read_bytes()).hexdigest()
                      for p in digest}


def test_train_a_softmax_classifier_on_label_files(capsys, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 4))
    labels = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0)   # three classes
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", labels)
    status, out, err = run(capsys, "train", "--x", tmp_path / "X.npy", "--y", tmp_path / "y.npy",
                           "--backend", "numpy", "--hidden", "8", "--epochs", 3,
                           "--output-activation", "softmax",
                           "--loss", "sparse_categorical_crossentropy", "--save",
                           tmp_path / "m.fbp")
    assert status == 0, err
    assert "4-8-3 relu, sparse_categorical_crossentropy" in out
    accuracy = float(out.split("accuracy ")[1].split()[0])
    assert accuracy > 0.8   # the classes are quadrants of two features: easy to learn
    assert fastbp.load(tmp_path / "m.fbp").activations == ["relu", "softmax"]


def test_train_on_csv_with_header_and_two_targets(capsys, tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(300, 5))
    path = tmp_path / "d.csv"
    np.savetxt(path, data, delimiter=",", header="a,b,c,t1,t2", comments="")
    status, out, err = run(capsys, "train", "--csv", path, "--targets", 2, *FAST,
                           "--validation-split", 0, "--save", tmp_path / "m")
    assert status == 0, err
    assert "3 features, 2 target(s)" in out and "no validation split" in out
    assert fastbp.load(tmp_path / "m", backend="numpy").layers == (3, 8, 2)


def test_early_stopping_and_plot(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    status, out, err = run(capsys, "train", "--synthetic", 600, *FAST, "--epochs", 30,
                           "--learning-rate", 0.1, "--patience", 1, "--plot",
                           tmp_path / "loss.png")
    assert status == 0, err
    assert "early stopping after epoch" in out
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_without_matplotlib_fails_before_training(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)     # import matplotlib -> ImportError
    status, out, err = run(capsys, "train", "--synthetic", 500, *FAST, "--plot",
                           tmp_path / "p.png", "--save", tmp_path / "m")
    assert status == 1
    assert "pip install 'fastbp[plot]'" in err and len(err.strip().splitlines()) == 1
    assert out == "" and not (tmp_path / "m").exists()


@pytest.mark.parametrize("argv, message", [
    (["train", "--synthetic", "100", "--epochs", "0"], "--epochs: expected an integer >= 1"),
    (["train", "--synthetic", "100", "--bogus"], "unrecognized arguments"),
    (["train"], "exactly one data source"),
    (["train", "--synthetic", "10", "--csv", "a.csv"], "exactly one data source"),
    (["train", "--x", "X.npy"], "--x and --y go together"),
    (["train", "--synthetic", "10", "--beta1", "0.9"], "--beta1 applies to --optimizer adam"),
    (["train", "--synthetic", "10", "--optimizer", "adam", "--rho", "0.9"], "--rho applies"),
    (["train", "--synthetic", "10", "--nesterov"], "--nesterov needs --momentum"),
    (["train", "--synthetic", "10", "--layers", "20"], "at least two widths"),
    (["train", "--synthetic", "10", "--activation", "gelu"], "found 'gelu'"),
    (["train", "--synthetic", "10", "--loss", "hinge"], "invalid choice"),
    (["train", "--synthetic", "10", "--validation-split", "1.5"], "[0, 1)"),
    (["train", "--synthetic", "10", "--min-delta", "0.1"], "--min-delta needs --patience"),
    (["train", "--synthetic", "10", "--targets", "2"], "--targets applies to --csv"),
    (["train", "--synthetic", "10", "--layers", "20,1", "--hidden", "3"], "not both"),
    (["train", "--synthetic", "10", "--activation", "relu,tanh,relu"], "one per hidden layer"),
    (["make-data", "--samples", "10"], "required: --out"),
    (["frobnicate"], "invalid choice"),
])
def test_usage_errors_exit_2_with_a_clear_message(capsys, argv, message):
    status, out, err = run(capsys, *argv)
    assert status == 2
    assert message in err and "usage: fastbp" in err


def test_runtime_errors_exit_1_with_one_line(capsys, tmp_path):
    X, y = make_regression(100, 3, seed=0)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y[:50])
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("1,2,3\n4,oops,6\n")
    cases = [
        (["--x", tmp_path / "missing.npy", "--y", tmp_path / "y.npy"], "no such file"),
        (["--x", tmp_path / "X.npy", "--y", tmp_path / "y.npy"], "to match the 100 rows"),
        (["--csv", bad_csv], "expected comma-separated numbers"),
        (["--synthetic", 100, "--features", 7, "--layers", "5,4,1"], "expected 7 inputs"),
        (["--synthetic", 100, "--save", tmp_path / "nodir" / "m"], "does not exist"),
        (["--resume", tmp_path / "nothing.ckpt"], "no such file"),
        (["--x", tmp_path / "empty.npy", "--y", tmp_path / "y.npy"], "expected a .npy file"),
    ]
    (tmp_path / "empty.npy").write_bytes(b"")
    for args, message in cases:
        status, out, err = run(capsys, "train", *args, "--backend", "numpy", "--quiet")
        assert status == 1, (args, err)
        assert message in err and err.startswith("fastbp train: error:"), err
        assert len(err.strip().splitlines()) == 1


def test_resume_of_a_model_without_position_is_refused(capsys, tmp_path):
    status, _, err = run(capsys, "train", "--synthetic", 300, *FAST, "--epochs", 1,
                         "--save", tmp_path / "m")
    assert status == 0, err
    status, _, err = run(capsys, "train", "--resume", tmp_path / "m")
    assert status == 1 and "without a training position" in err
    status, _, err = run(capsys, "train", "--resume", tmp_path / "m", "--layers", "20,1")
    assert status == 2 and "drop --layers" in err


def test_make_data_writes_the_generator_rows(capsys, tmp_path):
    status, out, err = run(capsys, "make-data", "--samples", 1000, "--features", 3,
                           "--outputs", 2, "--seed", 4, "--out", tmp_path / "d", "--quiet")
    assert status == 0, err
    X, y = make_regression(1000, 3, n_outputs=2, seed=4, dtype="float32")
    assert np.load(tmp_path / "d" / "X.npy").tobytes() == X.tobytes()
    assert np.load(tmp_path / "d" / "y.npy").tobytes() == y.tobytes()
    assert "fastbp train --x" in out
    status, _, err = run(capsys, "make-data", "--samples", 10, "--out", tmp_path / "d")
    assert status == 1 and "--force" in err
    status, _, err = run(capsys, "make-data", "--samples", 10, "--out", tmp_path / "d",
                         "--force", "--quiet")
    assert status == 0, err


def test_demo_runs_small(capsys):
    status, out, err = run(capsys, "demo", "--samples", 3000, "--epochs", 1, "--backend",
                           "numpy", "--quiet")
    assert status == 0, err
    assert "network" in out and "linear least squares" in out and "demo finished" in out


def test_bench_passes_its_options_to_the_runner(capsys, monkeypatch):
    from fastbp import _bench

    calls = []
    monkeypatch.setattr(_bench, "run", lambda *args: calls.append(args) or [])
    status, _, _ = run(capsys, "bench", "--workloads", "W2", "--dtypes", "float32",
                       "--repeats", 2, "--backends", "numpy")
    assert status == 0 and calls == [(["numpy"], ["W2"], ("float32",), 2)]
    for bad in (["--repeats", 0], ["--workloads", "W9"], ["--x"]):
        status, _, err = run(capsys, "bench", *bad)
        assert status == 2 and "usage: fastbp bench" in err
    assert len(calls) == 1


def test_bench_dask_options_are_checked_before_anything_runs(capsys, monkeypatch):
    from fastbp import _bench_dask

    calls = []
    monkeypatch.setattr(_bench_dask, "run_dask", lambda *a, **k: calls.append((a, k)))
    status, _, err = run(capsys, "bench", "--dask", "1,2", "--dask-rows", 100, "--dask-chunks",
                         2, "--dask-rounds", 3, "--dask-widths", "8", "--backends", "numpy")
    assert status == 0, err
    assert calls == [(([1, 2],), {"rows": 100, "chunks": 2, "epochs": 1, "rounds": 3,
                                  "widths": [8], "backend": "numpy", "plot": None})]
    for bad, says in ((["--dask", "0"], "worker counts"), (["--dask", "1,x"], "worker counts"),
                      (["--dask-rows", "0"], ">= 1"), (["--plot", "p.png"], "--dask N,N"),
                      (["--dask", "1", "--workers", "1,2"], "not both")):
        status, _, err = run(capsys, "bench", *bad)
        assert status == 2 and "usage: fastbp bench" in err and says in err, err
    assert len(calls) == 1
    # the plot's folder and format are checked before the benchmark runs, not after it
    import importlib.util

    format_check = ("expected a file name" if importlib.util.find_spec("matplotlib")
                    else "needs matplotlib")
    for path, says in (("nodir/p.png", "nodir"), ("p.notaformat", format_check)):
        status, _, err = run(capsys, "bench", "--dask", "1", "--plot", path)
        assert status == 1 and says in err, err
    assert len(calls) == 1


def test_module_entry_point_exit_status():
    result = subprocess.run([sys.executable, "-m", "fastbp", "train", "--epochs", "-1"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--epochs" in result.stderr


def test_unwritable_plot_format_fails_before_training(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    status, out, err = run(capsys, "train", "--synthetic", 300, *FAST, "--save",
                           tmp_path / "m.fbp", "--plot", tmp_path / "loss.xyz")
    assert status == 1 and "expected a file name ending in one of" in err
    assert not (tmp_path / "m.fbp").exists() and "loss per epoch" not in out


def test_too_few_rows_to_hold_out_trains_on_all(capsys):
    status, out, err = run(capsys, "train", "--synthetic", 5, *FAST, "--epochs", 1)
    assert status == 0, err
    assert "no validation split" in out and "5 rows" in out


def test_batch_size_beyond_the_data_trains_one_batch_per_epoch(capsys):
    """A batch size far beyond int64 is one batch, as in fit (the warm-up used to allocate it)."""
    compiled = [b for b in fastbp.available_backends() if b in ("numba", "cython")]
    if not compiled:
        pytest.skip("no compiled CPU backend: the NumPy backend has no warm-up")
    status, out, err = run(capsys, "train", "--synthetic", 300, "--hidden", 4, "--epochs", 1,
                           "--batch-size", 2**63, "--backend", compiled[0], "--quiet")
    assert status == 0, err
    assert "270 rows" in out


@pytest.mark.skipif(not hasattr(__import__("os"), "symlink"), reason="needs symbolic links")
@pytest.mark.parametrize("option", ["--save", "--checkpoint", "--plot"])
def test_output_path_that_is_a_link_fails_before_training(capsys, tmp_path, option):
    """A link at an output path is refused, not written through (its target is untouched)."""
    if option == "--plot":
        pytest.importorskip("matplotlib")
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    link = tmp_path / ("loss.png" if option == "--plot" else "m.fbp")
    link.symlink_to(victim)
    status, out, err = run(capsys, "train", "--synthetic", 300, *FAST, option, link)
    assert status == 1 and option in err and "symbolic link" in err, err
    assert "loss per epoch" not in out and len(err.strip().splitlines()) == 1
    assert victim.read_bytes() == b"precious" and link.is_symlink()



def _npy_data(tmp_path):
    X, y = make_regression(300, 4, seed=0)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    return tmp_path / "X.npy", tmp_path / "y.npy"


@pytest.mark.parametrize("command,output,clash", [
    ("train", "--save", "x"), ("train", "--checkpoint", "y"), ("train", "--plot", "x"),
    ("train", "--checkpoint", "csv"), ("train", "--save", "checkpoint"),
    ("sweep", "--save-best", "x"), ("sweep", "--plot", "y"),
])
def test_an_output_naming_an_input_or_another_output_is_refused(capsys, tmp_path, command,
                                                                 output, clash):
    """Through another spelling of the path too; nothing trains and no file changes."""
    X, y = _npy_data(tmp_path)
    csv = tmp_path / "data.csv"
    csv.write_text("a,b,t\n1,2,3\n4,5,6\n7,8,9\n")
    data = ["--csv", csv] if clash == "csv" else ["--x", X, "--y", y]
    if command == "sweep":
        data = [*data, "--learning-rates", "0.01"]
    victim = {"x": X, "y": y, "csv": csv, "checkpoint": tmp_path / "run.ckpt"}[clash]
    other = [] if clash != "checkpoint" else ["--checkpoint", victim]
    before = {p: p.read_bytes() for p in (X, y, csv)}
    spelled = tmp_path / "sub" / ".." / victim.name
    (tmp_path / "sub").mkdir()
    status, out, err = run(capsys, command, *data, *FAST, *other, output, spelled)
    assert status == 2 and "name the same file" in err and output in err, err
    assert "loss per epoch" not in out
    assert {p: p.read_bytes() for p in (X, y, csv)} == before
    assert not (tmp_path / "run.ckpt").exists()


def test_a_resume_may_checkpoint_to_the_file_it_resumes(capsys, tmp_path):
    X, y = _npy_data(tmp_path)
    ckpt = tmp_path / "run.ckpt"
    status, _, err = run(capsys, "train", "--x", X, "--y", y, *FAST, "--checkpoint", ckpt)
    assert status == 0, err
    status, _, err = run(capsys, "train", "--resume", ckpt, "--epochs", 6, "--quiet",
                         "--checkpoint", ckpt)
    assert status == 0, err
    assert len(fastbp.load(ckpt).training_position["history"]["loss"]) == 6


def test_empty_or_featureless_arrays_and_odd_resume_paths_are_named(capsys, tmp_path):
    np.save(tmp_path / "y5.npy", np.zeros(5))
    for shape, y in (((0, 3), np.zeros(0)), ((5, 0), np.zeros(5))):
        np.save(tmp_path / "X.npy", np.zeros(shape))
        np.save(tmp_path / "y.npy", y)
        status, _, err = run(capsys, "train", "--x", tmp_path / "X.npy", "--y",
                             tmp_path / "y.npy", *FAST)
        assert status == 1 and f"at least one row and one feature; found shape {shape}" in err
    status, _, err = run(capsys, "train", "--resume", tmp_path)
    assert status == 1 and "expected a model file; found a directory" in err, err
    status, _, err = run(capsys, "train", "--synthetic", 10**20, *FAST)
    assert status == 1 and "cannot be allocated" in err and "Traceback" not in err, err


def test_dask_round_timeout_needs_a_cluster(capsys):
    status, _, err = run(capsys, "train", "--synthetic", 300, "--dask-round-timeout", 5)
    assert status == 2 and "--dask-round-timeout applies to --dask-scheduler" in err
    status, _, err = run(capsys, "train", "--synthetic", 300, "--dask-round-timeout", 0,
                         "--dask-local-workers", 1)
    assert status == 2 and "dask-round-timeout" in err

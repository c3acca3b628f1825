"""Smoke tests of the asv suite in ``benchmarks/``: every benchmark runs, tiny and untimed.

These call the benchmark classes the way asv does (setup_cache, setup,
benchmark, teardown) on a few rows, so a suite broken by an API change fails
here in seconds.  The timed run is ``asv run --quick`` (see benchmarks/README.md).
"""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastbp import _backends
from fastbp._bench import WORKLOADS

from .conftest import require_backend

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def suite():
    """The suite's modules, imported as asv imports them (package ``benchmarks``)."""
    sys.path.insert(0, str(BENCH_DIR))
    try:
        return {name: importlib.import_module(f"benchmarks.{name}")
                for name in ("common", "bench_training", "bench_startup")}
    finally:
        sys.path.remove(str(BENCH_DIR))


@pytest.fixture
def tiny(suite, monkeypatch, tmp_path):
    """Few rows and one repeat everywhere; the data files go to a temporary directory."""
    common = suite["common"]
    monkeypatch.setattr(common, "ROWS", {name: (96, 48) for name in WORKLOADS})
    monkeypatch.setattr(suite["bench_training"], "REPEATS", 1)
    monkeypatch.setattr(suite["bench_training"], "BASELINE_REPEATS", 1)
    monkeypatch.setattr(suite["bench_startup"], "FIRST_FIT_ROWS", 16)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FASTBP_BENCH_REQUIRE", raising=False)
    common._loaded.clear()
    return common.make_datasets()


def run_benchmark(cls, method, paths, *params, trains=True):
    """Run one benchmark as asv does; a training benchmark must change the weights."""
    bench = cls()
    bench.setup(paths, *params)
    try:
        if trains:
            assert bench.net.backend == params[0]
            before = bench.net.get_weights()
        result = getattr(bench, method)(paths, *params)
        if trains:
            after = bench.net.get_weights()
            assert any(not np.array_equal(a, b) for a, b in zip(before, after)), \
                f"{cls.__name__}.{method} did not train"
            assert all(np.isfinite(w).all() for w in after)
        return result
    finally:
        getattr(bench, "teardown", lambda *a: None)(paths, *params)


def test_parameters_follow_the_registry(suite):
    common = suite["common"]
    expected = [n for n in _backends.backend_names() if n != "cuda"]
    assert [n for n in common.BACKENDS if n != "cuda"] == expected
    assert common.WORKLOAD_NAMES == list(WORKLOADS)
    assert set(common.ROWS) == set(WORKLOADS)
    for compiled, baseline in common.ROWS.values():
        assert baseline <= compiled  # NumPy trains on a leading slice of the same rows
    training = suite["bench_training"]
    assert training.TrainEpoch.params == [common.BACKENDS, list(WORKLOADS),
                                          ["float64", "float32"]]
    assert "numpy" not in training.SpeedupOverNumpy.params[0]


@pytest.mark.parametrize("workload", ["W2", "W4"])
def test_training_benchmarks_run(suite, tiny, backend, workload):
    training = suite["bench_training"]
    paths = tiny
    # timing and memory benchmarks return nothing: run_benchmark checks that they trained
    assert run_benchmark(training.TrainEpoch, "time_epoch", paths, backend, workload,
                         "float64") is None
    assert run_benchmark(training.FitPeakMemory, "peakmem_fit", paths, backend, workload,
                         "float64") is None
    rate = run_benchmark(training.Throughput, "track_samples_per_second", paths, backend,
                         workload, "float64")
    assert rate > 0
    if backend == "numpy":
        with pytest.raises(NotImplementedError):
            training.SpeedupOverNumpy().setup(paths, backend, workload, "float64")
    else:
        speedup = run_benchmark(training.SpeedupOverNumpy, "track_speedup_vs_numpy", paths,
                                backend, workload, "float64", trains=False)
        # a number, not a judgement: under NUMBA_DISABLE_JIT or the CUDA simulator a
        # "compiled" backend is slower than NumPy and the reported ratio rounds to 0
        assert np.isfinite(speedup) and speedup >= 0


def test_missing_backend_is_skipped_or_required(suite, tiny, monkeypatch):
    training = suite["bench_training"]
    monkeypatch.setattr(_backends, "import_error", lambda name: "ImportError: gone")
    with pytest.raises(NotImplementedError, match="gone"):
        training.TrainEpoch().setup(tiny, "numba", "W1", "float64")
    monkeypatch.setenv("FASTBP_BENCH_REQUIRE", "numpy,numba")
    with pytest.raises(RuntimeError, match="FASTBP_BENCH_REQUIRE"):
        training.TrainEpoch().setup(tiny, "numba", "W1", "float64")


@pytest.mark.parametrize("cache", ["cold", "warm"])
def test_startup_benchmarks_run(suite, tiny, cache, monkeypatch):
    """The first-fit script runs in a fresh process on the cache the parameter names (a new
    empty directory for "cold", the one setup filled for "warm"), and teardown removes the
    cold ones; ImportTime imports fastbp in a fresh process."""
    startup = suite["bench_startup"]
    require_backend("numpy")
    runs = []
    real = startup.run_python

    def recording(code, *args, env=None):
        cache_dir = (env or {}).get("FASTBP_CACHE_DIR")
        runs.append((code, args, cache_dir, os.path.isdir(cache_dir or "") and
                     sorted(os.listdir(cache_dir))))
        return real(code, *args, env=env)

    monkeypatch.setattr(startup, "run_python", recording)
    monkeypatch.setattr(startup, "_warm_dirs", {})
    bench = startup.FirstFit()
    bench.setup("numpy", cache)
    assert len(runs) == (1 if cache == "warm" else 0)   # warm: setup fills the cache once
    bench.time_first_fit("numpy", cache)
    code, args, cache_dir, listing = runs[-1]
    assert code == startup.FIRST_FIT_SCRIPT and args[0] == "numpy"
    if cache == "cold":
        assert listing == [] and bench.cold_dirs == [cache_dir]
    else:
        assert cache_dir == startup._warm_dirs["numpy"] == runs[0][2]
    bench.teardown("numpy", cache)
    if cache == "cold":
        assert not os.path.exists(cache_dir)
    startup.ImportTime().time_import_fastbp()
    assert runs[-1][0] == "import fastbp"
    for path in startup._warm_dirs.values():
        __import__("shutil").rmtree(path, ignore_errors=True)


def test_asv_check_passes():
    """asv itself finds and accepts every benchmark (signatures, params, setup_cache)."""
    pytest.importorskip("asv", reason="asv is in the 'bench' and 'test' extras")
    proc = subprocess.run([sys.executable, "-m", "asv", "check", "--python=same"],
                          cwd=BENCH_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=dict(os.environ, FASTBP_BENCH_REQUIRE=""))
    assert proc.returncode == 0, proc.stdout
    assert "No problems found" in proc.stdout, proc.stdout


# ------------------------------------------------------------- the `fastbp bench` runner
def test_flops_per_sample_by_hand():
    from fastbp._bench import flops_per_sample

    # W1 2-2-1: weights 4 + 2 = 6, first layer 4, parameters 9, batch 1:
    # forward 12, weight gradients 12, error to the hidden layer 2 * 2 = 4, update 18
    assert flops_per_sample("W1") == 12 + 12 + 4 + 18
    # W4 20-64-64-1, batch 32: weights 1280 + 4096 + 64 = 5440, parameters 5569
    assert flops_per_sample("W4") == 4 * 5440 + 2 * (5440 - 1280) + 2 * 5569 / 32


def test_runner_prints_a_row_per_backend(monkeypatch):
    import io

    from fastbp import _bench

    monkeypatch.setattr(_bench, "WORKLOADS", {"W2": ((5, 4, 1), "relu", 1, 300)})
    monkeypatch.setattr(_bench, "NUMPY_ROWS", {"W2": 100})
    monkeypatch.setattr(_bench, "matmul_peak", lambda: {"float64": 10.0, "float32": 20.0})
    out = io.StringIO()
    backends = [b for b in ("numba", "cython") if b in _backends.available_backends()]
    rows = _bench.run(backends=backends, dtypes=("float64",), repeats=1, file=out)
    assert sorted(r["backend"] for r in rows) == sorted(["numpy", *backends])
    printed = [line.split()[5] for line in out.getvalue().splitlines() if line.startswith("W2 ")]
    assert sorted(printed) == sorted(["numpy", *backends])


def test_many_runner_prints_a_row_per_backend():
    import io

    from fastbp import _bench

    backends = [b for b in ("numba", "cython") if b in _backends.available_backends()]
    if not backends:
        pytest.skip("no compiled CPU backend here")
    out = io.StringIO()
    rows = _bench.run_many(2, backends=backends, dtypes=("float64",), repeats=1, out=out,
                           rows=300)
    assert [r["backend"] for r in rows] == backends
    for row in rows:
        assert set(row["rates"]) == {"sequential", 1, 2}
        assert all(rate > 0 for rate in row["rates"].values())
    printed = [line.split() for line in out.getvalue().splitlines()
               if line.startswith("float64 ")]
    assert [line[1] for line in printed] == backends
    assert all(line[-1].endswith("x") and line[-2].endswith("x") for line in printed)


def test_fit_many_benchmark_follows_the_registry():
    sys.path.insert(0, str(BENCH_DIR))
    try:
        bench_many = importlib.import_module("benchmarks.bench_many")
    finally:
        sys.path.remove(str(BENCH_DIR))
    backends, dtypes, workers = bench_many.FitMany.params
    assert set(backends) <= {"numba", "cython"} and dtypes == ["float64", "float32"]
    assert workers == [1, 2]
    assert bench_many.FitMany.track_speedup_many.unit == "x"

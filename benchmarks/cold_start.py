"""Cold and warm start of the first minibatch ``fit`` with the Numba backend.

Each repeat runs two fresh Python processes on one empty temporary kernel
cache (``FASTBP_CACHE_DIR``, and ``NUMBA_CACHE_DIR`` unset so that Numba
keeps its files beside fastbp's sources): the first compiles every kernel the
fit needs (cold), the second must load them from the cache (warm).  Inside
each process the time is split into

* ``import``: ``import fastbp`` and NumPy;
* ``kernels``: the entry points compiled or loaded, by name (through
  ``numba_._compile``; a per-sample fit of W1 first when ``--per-sample`` is
  given, so that the minibatch kernels are measured on top of it, as a
  session that trains both would see them);
* ``other``: the rest of the first ``fit`` (materialising the kernel
  sources, layout, the training itself on 2,000 rows).

Each is given in wall-clock seconds and, with ``_cpu``, in CPU seconds of
the process (compiling is single-threaded: on a busy machine the CPU time is
the steadier figure).  Prints the median of each over ``--repeats`` pairs of
processes.  Run from
the repository root::

    python benchmarks/cold_start.py --repeats 5
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
c0 = time.process_time()
import numpy as np
import fastbp
from fastbp._backends import numba_
t1 = time.perf_counter()
c1 = time.process_time()
compiled = {}
compiled_cpu = {}
real_compile = numba_._compile

def timed(fn, signature):
    start, cpu = time.perf_counter(), time.process_time()
    try:
        return real_compile(fn, signature)
    finally:
        name = fn.py_func.__name__
        compiled[name] = compiled.get(name, 0.0) + time.perf_counter() - start
        compiled_cpu[name] = compiled_cpu.get(name, 0.0) + time.process_time() - cpu

numba_._compile = timed
rng = np.random.default_rng(0)
per_sample = {}
if "--per-sample" in sys.argv:
    start = time.perf_counter()
    X1 = rng.uniform(-1, 1, (2000, 2)); y1 = X1.sum(axis=1)
    fastbp.Network([2, 2, 1], activations="linear", backend="numba").fit(
        X1, y1, batch_size=1, epochs=1, verbose=0)
    per_sample = {"per_sample_total": time.perf_counter() - start,
                  "per_sample_kernels": sum(compiled.values()),
                  "per_sample_kernels_cpu": sum(compiled_cpu.values())}
    compiled.clear()
    compiled_cpu.clear()
X = rng.uniform(-1, 1, (2000, 20)); y = X[:, :3].sum(axis=1)
start, cpu = time.perf_counter(), time.process_time()
fastbp.Network([20, 64, 64, 1], activations="relu", backend="numba").fit(
    X, y, batch_size=32, epochs=1, verbose=0)
fit = time.perf_counter() - start
fit_cpu = time.process_time() - cpu
kernels = sum(compiled.values())
kernels_cpu = sum(compiled_cpu.values())
print(json.dumps({"import": t1 - t0, "import_cpu": c1 - c0, "fit": fit, "fit_cpu": fit_cpu,
                  "kernels": kernels, "kernels_cpu": kernels_cpu, "other": fit - kernels,
                  "other_cpu": fit_cpu - kernels_cpu, "by_name": compiled, **per_sample}))
"""


def _run(cache, extra):
    import fastbp

    # the child imports the fastbp this script imported (not one in its working directory)
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastbp.__file__)))
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, FASTBP_CACHE_DIR=cache, PYTHONPATH=path)
    env.pop("NUMBA_CACHE_DIR", None)
    env.pop("FASTBP_NO_CACHE", None)
    out = subprocess.run([sys.executable, "-c", CHILD, *extra], env=env, check=True, cwd=cache,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--per-sample", action="store_true",
                        help="fit W1 per sample first; the minibatch fit is timed after it")
    args = parser.parse_args(argv)
    extra = ["--per-sample"] if args.per_sample else []
    runs = {"cold": [], "warm": []}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="fastbp-cold-") as cache:
            runs["cold"].append(_run(cache, extra))
            runs["warm"].append(_run(cache, extra))
    for label, results in runs.items():
        keys = [k for k in results[0] if k != "by_name"]
        medians = {k: statistics.median(r[k] for r in results) for k in keys}
        names = sorted({n for r in results for n in r["by_name"]})
        by_name = {n: statistics.median(r["by_name"].get(n, 0.0) for r in results)
                   for n in names}
        print(f"{label:5s} " + "  ".join(f"{k} {v:.3f}s" for k, v in medians.items()))
        print("      kernels: " + ", ".join(f"{n} {v:.3f}s" for n, v in by_name.items()))


if __name__ == "__main__":
    main()

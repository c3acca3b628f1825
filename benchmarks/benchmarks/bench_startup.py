"""What a user waits for before training starts: ``import fastbp`` and the first fit.

Both run a fresh ``python -c`` subprocess per timed call, so interpreter start
is included: compare them with each other and across commits, not with the
in-process epoch times.
"""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

from .common import BACKENDS, LEARNING_RATE, batch_size, require_backend

#: The first fit trains this workload on a few rows: enough to call every
#: training kernel, few enough that compiling dominates.
FIRST_FIT_WORKLOAD = "W2"
FIRST_FIT_DTYPE = "float64"
FIRST_FIT_ROWS = 1_000

FIRST_FIT_SCRIPT = """\
import sys
import fastbp
from fastbp._bench import workload_data, workload_network
backend, workload, dtype = sys.argv[1:4]
rows, batch, rate = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
X, y = workload_data(workload, dtype, rows=rows)
net = workload_network(workload, backend, dtype)
assert net.backend == backend, (net.backend, backend)
net.fit(X, y, epochs=1, batch_size=batch, optimizer=fastbp.SGD(rate), verbose=0)
"""


def run_python(code, *args, env=None):
    """Run ``python -c code args...`` with this interpreter; raise with its stderr on failure."""
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"subprocess failed with exit status {proc.returncode}:\n"
                           f"{proc.stderr[-4000:]}")
    return proc.stdout


def fresh_env(cache_dir):
    """This process's environment with the compiled-kernel caches pointed at ``cache_dir``."""
    env = dict(os.environ)
    for name in ("FASTBP_NO_CACHE", "FASTBP_BACKEND"):
        env.pop(name, None)  # caching on, as for a user; the backend is named explicitly
    env["FASTBP_CACHE_DIR"] = cache_dir
    # In case any kernel uses Numba's own cache: keep it out of the user's too.
    env["NUMBA_CACHE_DIR"] = os.path.join(cache_dir, "numba")
    return env


class ImportTime:
    """Wall time of ``python -c "import fastbp"`` in a fresh process (interpreter start included)."""

    number = 1
    repeat = (3, 10, 10.0)
    warmup_time = 0
    rounds = 1

    def time_import_fastbp(self):
        run_python("import fastbp")


class FirstFit:
    """Wall time of a fresh process that imports fastbp and runs its first fit (W2, float64).

    ``cache="cold"``: an empty kernel cache directory (``FASTBP_CACHE_DIR``),
    so a JIT backend compiles everything, as on the first run after install.
    ``cache="warm"``: a directory a previous process filled, as on every
    later run.  Backends without a JIT show the cost of import plus a small fit.
    """

    params = [BACKENDS, ["cold", "warm"]]
    param_names = ["backend", "cache"]
    number = 1
    repeat = (1, 3, 60.0)
    warmup_time = 0
    rounds = 1
    timeout = 600

    def setup(self, backend, cache):
        require_backend(backend)
        self.args = (backend, FIRST_FIT_WORKLOAD, FIRST_FIT_DTYPE, FIRST_FIT_ROWS,
                     batch_size(FIRST_FIT_WORKLOAD), LEARNING_RATE)
        self.cold_dirs = []
        if cache == "warm" and backend not in _warm_dirs:
            # asv re-runs setup before every sample: fill the cache once per process.
            path = _new_cache_dir()
            run_python(FIRST_FIT_SCRIPT, *self.args, env=fresh_env(path))
            _warm_dirs[backend] = path

    def teardown(self, backend, cache):
        for path in getattr(self, "cold_dirs", ()):  # teardown also runs after a skip
            shutil.rmtree(path, ignore_errors=True)

    def time_first_fit(self, backend, cache):
        if cache == "cold":
            cache_dir = _new_cache_dir()
            self.cold_dirs.append(cache_dir)
        else:
            cache_dir = _warm_dirs[backend]
        run_python(FIRST_FIT_SCRIPT, *self.args, env=fresh_env(cache_dir))


_warm_dirs = {}


def _new_cache_dir():
    # Under asv the working directory is a scratch directory that asv removes
    # after the benchmark, even when the process ends by os._exit (forkserver),
    # where atexit handlers never run.
    base = os.getcwd() if "asv_runner" in sys.modules else None
    return tempfile.mkdtemp(prefix="fastbp-bench-cache-", dir=base)


@atexit.register
def _remove_warm_dirs():
    for path in _warm_dirs.values():
        shutil.rmtree(path, ignore_errors=True)

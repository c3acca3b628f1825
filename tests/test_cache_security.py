"""The on-disk Numba kernel cache is trusted only when it is private, and never executes
anything fastbp did not generate itself.

What the cache holds (``fastbp._config.cache_dir()``, ``FASTBP_CACHE_DIR``): the generated
kernel sources (``*.py``), a lock file per module, and in ``__pycache__`` Numba's index
(``*.nbi``, pickles) and machine code (``*.nbc``).  Numba unpickles those files, so the
protection is that every directory is a real directory owned by the user and writable by
nobody else; fastbp creates them 0700, checks them before use and otherwise compiles in
memory with a warning.  Generated sources are compiled from the text fastbp generated
(never from ``__pycache__`` bytecode), lock files are opened without following symlinks,
and damaged cache files lead to a recompilation.

Every test runs the training in fresh interpreters (``FASTBP_CACHE_DIR=tmp_path``) and
compares with results computed without a cache.
"""

import json
import os
import pickle
import py_compile
import shutil
import stat
import subprocess
import sys
import textwrap

import pytest

from .conftest import require_backend

require_backend("numba")

import numba  # noqa: E402

from fastbp import __version__  # noqa: E402

pytestmark = [
    pytest.mark.skipif(bool(numba.config.DISABLE_JIT),
                       reason="needs compiled kernels (NUMBA_DISABLE_JIT=1)"),
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX owner and mode checks"),
]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Nets of the workload: two get the generated per-architecture kernel (per-sample
#: plain SGD on a tiny net), one the width-generic kernels.
SMALL = [(2, 2, 1)]
NETS = [(2, 2, 1), (3, 4, 2), (6, 17, 5, 1)]

# The workload, as source: run in subprocesses and (for the reference) in this process.
_WORKLOAD = r'''
import json, os, sys, warnings
import numpy as np

def run(nets):
    from fastbp._backends import numba_, _codes as C
    from fastbp._backends._layout import n_params
    result = {}
    for sizes in nets:
        sizes = tuple(sizes)
        rng = np.random.default_rng(sum(sizes))
        X = rng.normal(size=(64, sizes[0]))
        Y = np.tanh(X @ rng.normal(size=(sizes[0], sizes[-1])))
        p = rng.uniform(-0.5, 0.5, n_params(sizes))
        st = np.zeros((2, p.size))
        acts = np.array([C.TANH] * (len(sizes) - 2) + [C.LINEAR])
        total, done = numba_.train_chunk(p, np.array(sizes), acts, C.MSE, X, Y,
                                         np.arange(64)[::-1].copy(), 1, C.SGD,
                                         np.array([0.05, 0, 0, 0]), st, 0)
        out = np.empty((64, sizes[-1]))
        numba_.predict(p, np.array(sizes), acts, X, out)
        name = "train_scalar" if max(sizes) <= 16 else "train_sgd"
        fns = [numba_.kernel(name, "float64", sizes if name == "train_scalar" else None),
               numba_.kernel("predict", "float64")]
        hits = [sum(f.stats.cache_hits.values()) if hasattr(f, "stats") else 0 for f in fns]
        result["x".join(map(str, sizes))] = {
            "total": float(total).hex(), "done": int(done),
            "params": [float(v).hex() for v in p], "out": [float(v).hex() for v in out.ravel()],
            "hits": hits}
    return result
'''

_MAIN = _WORKLOAD + r'''
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    result = run(json.loads(sys.argv[1]))
print(json.dumps({"result": result,
                  "warnings": [str(w.message) for w in caught
                               if issubclass(w.category, RuntimeWarning)]}))
'''


def _env(cache_dir, **extra):
    env = dict(os.environ)
    env.pop("FASTBP_NO_CACHE", None)
    env.pop("NUMBA_CACHE_DIR", None)
    env["FASTBP_CACHE_DIR"] = str(cache_dir)
    env.update(extra)
    return env


def _popen(cache_dir, nets=SMALL, prelude="", **extra):
    code = textwrap.dedent(prelude) + _MAIN
    return subprocess.Popen([sys.executable, "-c", code, json.dumps(nets)], cwd=ROOT,
                            env=_env(cache_dir, **extra), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=300):
    stdout, stderr = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, stderr[-4000:]
    return json.loads(stdout.strip().splitlines()[-1])


def _run(cache_dir, nets=SMALL, prelude="", **extra):
    """Run the workload in a fresh interpreter; ``{"result": ..., "warnings": [...]}``."""
    return _finish(_popen(cache_dir, nets, prelude, **extra))


def _numbers(result):
    """The results without the cache-hit counts."""
    return {k: {f: v for f, v in r.items() if f != "hits"} for k, r in result.items()}


def _hits(result):
    return [h for r in result.values() for h in r["hits"]]


def _files(root, suffix=""):
    return sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files
                  if f.endswith(suffix))


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def reference():
    """The workload on every net, in this process, compiled in memory (no cache)."""
    saved = os.environ.get("FASTBP_NO_CACHE")
    os.environ["FASTBP_NO_CACHE"] = "1"
    try:
        ns = {}
        exec(compile(_WORKLOAD, "<workload>", "exec"), ns)  # noqa: S102 (the test's own code)
        return _numbers(ns["run"](NETS))
    finally:
        if saved is None:
            del os.environ["FASTBP_NO_CACHE"]
        else:
            os.environ["FASTBP_NO_CACHE"] = saved


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory):
    """A cache directory filled by one run of the small workload (copied by each test)."""
    root = tmp_path_factory.mktemp("warm") / "cache"
    first = _run(root)
    assert first["warnings"] == []
    assert _hits(first["result"]) == [0, 0]
    return root


def _copy(warm_cache, tmp_path):
    target = tmp_path / "cache"
    shutil.copytree(warm_cache, target, symlinks=True)
    return target


def _version_dir(root):
    return root / __version__


def _expect(reference, nets=SMALL):
    return {"x".join(map(str, s)): reference["x".join(map(str, s))] for s in nets}


# ----------------------------------------------------------------------------- tests
def test_planted_pyc_beside_a_generated_module_does_not_run(warm_cache, tmp_path, reference):
    """An ``unchecked-hash`` .pyc in __pycache__ would be run by importlib's
    SourceFileLoader without looking at the source: fastbp compiles its verified text."""
    root = _copy(warm_cache, tmp_path)
    marker = tmp_path / "pyc-ran"
    payload = tmp_path / "payload.py"
    payload.write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    sources = _files(_version_dir(root), ".py")
    assert len(sources) == 2  # the generic module and the 2-2-1 one
    tag = sys.implementation.cache_tag
    for src in sources:
        name = os.path.splitext(os.path.basename(src))[0]
        cfile = _version_dir(root) / "__pycache__" / f"{name}.{tag}.pyc"
        py_compile.compile(str(payload), cfile=str(cfile), doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    out = _run(root)
    assert not marker.exists(), "a planted .pyc ran"
    assert _numbers(out["result"]) == _expect(reference)
    assert out["warnings"] == []
    assert _hits(out["result"]) == [1, 1]  # the Numba cache is still used


def _foreign(path):
    if os.getuid() != 0:
        pytest.skip("a foreign-owned directory needs root (os.chown) to set up")
    os.chown(path, 65534, 65534)


@pytest.mark.parametrize("how", ["group-writable", "foreign-owner"])
def test_planted_nbi_in_an_unsafe_directory_is_not_unpickled(warm_cache, tmp_path, reference,
                                                             how):
    root = _copy(warm_cache, tmp_path)
    pycache = _version_dir(root) / "__pycache__"
    marker = tmp_path / "nbi-ran"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('pwned')",))

    index = _files(pycache, ".nbi")
    assert index
    for path in index:
        with open(path, "wb") as f:
            pickle.dump(Payload(), f)
    if how == "group-writable":
        os.chmod(pycache, 0o770)
    else:
        _foreign(pycache)
    out = _run(root)
    assert not marker.exists(), "a planted Numba index was unpickled"
    assert _numbers(out["result"]) == _expect(reference)
    assert _hits(out["result"]) == [0, 0]  # compiled in memory
    [message] = out["warnings"]
    assert str(pycache) in message
    if how == "group-writable":
        assert "0o770" in message and "writable" in message
    else:
        assert "65534" in message
    assert "rm -r" in message and "FASTBP_CACHE_DIR" in message


def test_created_directories_are_private_even_with_umask_0(tmp_path, reference):
    root = tmp_path / "new" / "nested"
    out = _run(root, prelude="import os; os.umask(0)\n")
    assert _numbers(out["result"]) == _expect(reference)
    assert out["warnings"] == []
    version = _version_dir(root)
    for d in (tmp_path / "new", root, version, version / "__pycache__"):
        assert stat.S_IMODE(os.lstat(d).st_mode) == 0o700, d
    written = _files(version, ".py") + _files(version, ".lock")
    assert written
    for f in written:
        assert stat.S_IMODE(os.lstat(f).st_mode) == 0o600, f
    assert not _files(root, ".pyc")


def test_world_writable_cache_dir_warns_and_still_trains(tmp_path, reference):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    out = _run(shared)
    assert _numbers(out["result"]) == _expect(reference)
    [message] = out["warnings"]
    assert str(shared) in message and "0o777" in message
    assert "rm -r" in message and "FASTBP_CACHE_DIR" in message
    assert _files(shared) == []  # compiled in memory: nothing written there


def test_symlinked_directory_is_refused(warm_cache, tmp_path, reference):
    root = _copy(warm_cache, tmp_path)
    pycache = _version_dir(root) / "__pycache__"
    elsewhere = tmp_path / "elsewhere"
    pycache.rename(elsewhere)
    pycache.symlink_to(elsewhere, target_is_directory=True)
    out = _run(root)
    assert _numbers(out["result"]) == _expect(reference)
    [message] = out["warnings"]
    assert str(pycache) in message and "symlink" in message


def test_lock_symlink_is_not_followed(warm_cache, tmp_path, reference):
    root = _copy(warm_cache, tmp_path)
    version = _version_dir(root)
    for f in _files(version / "__pycache__"):
        os.unlink(f)  # compile again, under the lock
    outside = tmp_path / "outside"
    outside.mkdir()
    keep = outside / "keep"
    keep.write_text("keep me")
    locks = _files(version, ".lock")
    assert len(locks) == 2
    targets = [outside / "created", keep]
    for lock, target in zip(locks, targets):
        os.unlink(lock)
        os.symlink(target, lock)
    out = _run(root)
    assert _numbers(out["result"]) == _expect(reference)
    assert not (outside / "created").exists(), "the lock symlink was followed"
    assert keep.read_text() == "keep me"
    assert sorted(os.listdir(outside)) == ["keep"]
    assert out["warnings"] and all("symlink" in m for m in out["warnings"])
    assert any(locks[0] in m for m in out["warnings"])


@pytest.mark.parametrize("what", ["py", "nbi", "nbc"])
def test_corrupted_cache_files_are_recompiled(warm_cache, tmp_path, reference, what):
    root = _copy(warm_cache, tmp_path)
    version = _version_dir(root)
    files = _files(version, "." + what)
    assert files
    originals = {f: open(f, "rb").read() for f in files}
    for i, f in enumerate(files):
        data = originals[f]
        with open(f, "wb") as handle:  # truncated, then garbage
            handle.write(data[:len(data) // 2] if i % 2 == 0 else b"\x80garbage\n" * 7)
    out = _run(root)
    assert _numbers(out["result"]) == _expect(reference)
    if what == "py":
        for f, data in originals.items():
            assert open(f, "rb").read() == data  # rewritten from the generated text
    again = _run(root)
    assert _numbers(again["result"]) == _expect(reference)
    assert _hits(again["result"]) == [1, 1]  # the repaired cache is used


def test_cache_race_at_scale(tmp_path, reference):
    """8 processes x 3 architectures start together on one empty cache directory."""
    root = tmp_path / "race"
    procs = [_popen(root, NETS) for _ in range(8)]
    outs = [_finish(p) for p in procs]
    expected = _expect(reference, NETS)
    for out in outs:
        assert out["warnings"] == []
        assert _numbers(out["result"]) == expected
    # every process compiled or loaded the same kernels; the cache is complete and private
    after = _run(root, NETS)
    assert _numbers(after["result"]) == expected
    assert all(h == 1 for h in _hits(after["result"]))
    for d, dirs, files in os.walk(root):
        for name in dirs:
            assert stat.S_IMODE(os.lstat(os.path.join(d, name)).st_mode) == 0o700
        for name in files:
            assert ".tmp" not in name
            if name.endswith((".py", ".lock")):
                assert stat.S_IMODE(os.lstat(os.path.join(d, name)).st_mode) == 0o600


def test_cache_root_given_as_the_users_own_symlink_is_used(tmp_path, reference):
    """FASTBP_CACHE_DIR may be a link the user made: the private directory it leads to is used."""
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    out = _run(link)
    assert _numbers(out["result"]) == _expect(reference)
    assert out["warnings"] == []
    assert _files(real, ".py")  # the kernels were cached in the real directory

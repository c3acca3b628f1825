"""make-data on a disk that fills up: a clear OSError and no partial files, never a SIGBUS.

These use real file systems: a size-limited tmpfs (needs root, as CI has) and
a file-size limit (RLIMIT_FSIZE) on a child process.
"""

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from fastbp.datasets import make_regression

ROWS, FEATURES = 400_000, 20  # 33.6 MB of float32 data


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 110 MB tmpfs: room for the data plus the 64 MiB margin, and little more."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=110m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _make_data(out, *extra, **popen):
    cmd = [sys.executable, "-m", "fastbp", "make-data", "--samples", str(ROWS), "--features",
           str(FEATURES), "--out", str(out), "--quiet", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **popen)


def test_disk_filled_by_another_writer_during_make_data(small_tmpfs):
    """Another process fills the disk once the data files exist: no crash, no partial files.

    A write through a memory map on a full disk is a SIGBUS (the process died
    with exit status 135 and left hidden .partial files).  Now the space is
    reserved before the rows are written, so the run completes, or else fails
    with a message; either way nothing half-written is left.
    """
    out = small_tmpfs / "data"
    proc = _make_data(out)
    filler_error = []

    def fill():
        deadline = time.monotonic() + 60
        while not (out.exists() and list(out.glob(".X.npy.*.partial"))) \
                and proc.poll() is None:
            if time.monotonic() > deadline:
                return
            time.sleep(0.001)
        try:  # take every free byte
            with open(small_tmpfs / "filler", "wb") as f:
                while True:
                    f.write(b"\0" * (1 << 20))
        except OSError as exc:
            filler_error.append(exc)

    filler = threading.Thread(target=fill)
    filler.start()
    stdout, stderr = proc.communicate(timeout=120)
    filler.join()
    assert proc.returncode in (0, 1), (proc.returncode, stderr)
    names = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert not [n for n in names if n.endswith(".partial")], names
    if proc.returncode == 0:
        assert names == ["X.npy", "meta.json", "y.npy"]
        X = np.load(out / "X.npy", mmap_mode="r")
        X_ref, _ = make_regression(ROWS, FEATURES, dtype="float32")
        assert np.array_equal(X[-100:], X_ref[-100:])
    else:
        assert "disk" in stderr and "partial files were removed" in stderr, stderr
        assert names == []


def _limit_file_size():
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # 1 MiB per file


def test_file_size_limit_is_a_clear_error_and_leaves_nothing(tmp_path):
    """A write refused by the OS (here EFBIG from RLIMIT_FSIZE) reads as a one-line error."""
    out = tmp_path / "data"
    proc = _make_data(out, preexec_fn=_limit_file_size)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, (proc.returncode, stderr)
    assert "the disk filled up while writing" in stderr and "Traceback" not in stderr, stderr
    assert not out.exists()  # nor the folder it made

"""Resident memory while streaming a memory-mapped file stays bounded, whatever the file size.

The training runs in a child process that reports its peak resident set (VmHWM, reset with
/proc/self/clear_refs after warm-up) and its rows/s.  The small case always runs; the large
one, which also compares memmap and in-memory throughput, runs only when asked for:

    FASTBP_BIG_STREAM_GB=8 python -m pytest tests/test_stream_memory.py -s

It writes a file of that many GB (deleted afterwards), evicts it from the page cache before
each streamed epoch (posix_fadvise DONTNEED, so the epoch reads from disk), trains one epoch
per-sample with the fastest backend, streamed and (on 4M rows) in memory, alternating for
FASTBP_BIG_STREAM_ROUNDS rounds (default 2), checks the memory bound and prints the numbers,
including the streamed / in-memory throughput ratio.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

BIG_BACKEND = os.environ.get("FASTBP_BIG_STREAM_BACKEND", "auto")
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc/self/status")

PROBE = textwrap.dedent("""
    import json, os, sys, time, warnings
    import numpy as np
    import fastbp
    warnings.simplefilter("ignore")
    x_path, y_path, backend, batch, mode, cold, rows_in_ram, hidden, workers = sys.argv[1:10]
    batch, rows_in_ram, workers = int(batch), int(rows_in_ram), int(workers)
    hidden = [int(w) for w in hidden.split(",") if w]

    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024

    X = np.load(x_path, mmap_mode="r")
    y = np.load(y_path, mmap_mode="r")
    net = fastbp.Network([X.shape[1], *hidden, 1], backend=backend, seed=0)
    net.fit(np.asarray(X[:2000]), np.asarray(y[:2000]), batch_size=batch, verbose=0)  # compile
    if mode == "ram":  # the same rows as arrays in memory, already in the network dtype
        X = np.ascontiguousarray(X[:rows_in_ram], dtype=np.float64)
        y = np.ascontiguousarray(y[:rows_in_ram], dtype=np.float64)
    if cold == "1":  # evict the file's pages so that the epoch reads them from disk
        for path in (x_path, y_path):
            fd = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident set to the current one
    except OSError:
        pass  # then the peak also covers the warm-up: the bound still holds, less tightly
    before = status("VmRSS")
    file_before = status("RssFile")
    start = time.perf_counter()
    net.fit(X, y, batch_size=batch, epochs=1, verbose=0, workers=workers)
    seconds = time.perf_counter() - start
    print(json.dumps({"rss_before": before, "hwm": status("VmHWM"), "rows": len(X),
                      "file_before": file_before, "file_after": status("RssFile"),
                      "anon_after": status("RssAnon"),
                      "seconds": seconds, "backend": net.backend}))
""")


def _probe(x_path, y_path, backend, batch, mode="stream", cold=False, rows_in_ram=0,
           hidden="64,64", workers=1):
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(x_path), str(y_path), backend, str(batch), mode,
         "1" if cold else "0", str(rows_in_ram), hidden, str(workers)],
        capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def _write(directory, rows, features=20):
    """A float32 X.npy/y.npy of ``rows`` rows, written block by block."""
    from fastbp.datasets import write_regression

    return write_regression(directory, rows, features, dtype="float32")


@linux_only
@pytest.mark.parametrize("backend,batch,workers", [
    ("numpy", 4096, 1),
    ("numpy", 4096, 2),  # big batches split across two workers
    ("auto", 1, 2),      # per-sample local SGD: two replicas on the compiled kernels
])
def test_streaming_a_file_keeps_resident_memory_bounded(tmp_path, backend, batch, workers):
    # 1.6M rows x 20 float32 = 128 MB; cached in the page cache right after writing, so
    # without releasing the pages every one of them would count in the resident set.
    x_path, y_path = _write(tmp_path, 1_600_000)
    size = x_path.stat().st_size + y_path.stat().st_size
    # a linear net: the file streams in a moment (NumPy in big batches; compiled per sample)
    stats = _probe(x_path, y_path, backend, batch, hidden="", workers=workers)
    grown = stats["hwm"] - stats["rss_before"]
    assert grown < 40e6 < size / 3, stats


@linux_only
@pytest.mark.skipif(not os.environ.get("FASTBP_BIG_STREAM_GB"),
                    reason="set FASTBP_BIG_STREAM_GB=4 to stream a 4 GB file (slow)")
def test_big_file_memory_and_throughput(tmp_path):
    gigabytes = float(os.environ["FASTBP_BIG_STREAM_GB"])
    rows = int(gigabytes * 1e9 / (21 * 4))
    x_path, y_path = _write(tmp_path, rows)
    try:
        size = x_path.stat().st_size + y_path.stat().st_size
        # alternate, and keep each one's best round: other processes on a shared machine
        # slow some rounds down, and the ratio should not depend on which
        streams, rams = [], []
        for _ in range(int(os.environ.get("FASTBP_BIG_STREAM_ROUNDS", "2"))):
            streams.append(_probe(x_path, y_path, BIG_BACKEND, 1, cold=True))
            rams.append(_probe(x_path, y_path, BIG_BACKEND, 1, mode="ram",
                               rows_in_ram=min(rows, 4_000_000)))
    finally:
        for path in (x_path, y_path):
            path.unlink()
    stream = max(streams, key=lambda r: r["rows"] / r["seconds"])
    ram = max(rams, key=lambda r: r["rows"] / r["seconds"])
    stream_rate = stream["rows"] / stream["seconds"]
    ram_rate = ram["rows"] / ram["seconds"]
    print("\nrounds (rows/s): streamed", [round(r["rows"] / r["seconds"]) for r in streams],
          "in memory", [round(r["rows"] / r["seconds"]) for r in rams])
    print(f"\nfile {size / 1e9:.2f} GB ({rows:,} rows x 20 float32), backend "
          f"{stream['backend']}, per-sample SGD 20-64-64-1 float64, page cache dropped:\n"
          f"  streamed: peak RSS growth {(stream['hwm'] - stream['rss_before']) / 1e6:.0f} MB "
          f"(peak RSS {stream['hwm'] / 1e6:.0f} MB), {stream_rate:,.0f} rows/s\n"
          f"  in memory ({ram['rows']:,} rows): {ram_rate:,.0f} rows/s\n"
          f"  streamed / in memory = {stream_rate / ram_rate:.2f}")
    # Memory is a bound; the throughput ratio is a measurement (printed above), not asserted:
    # timings on a shared machine are not a pass/fail criterion.
    assert max(r["hwm"] for r in streams) < 1e9

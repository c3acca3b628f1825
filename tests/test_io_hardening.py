"""Model files against damage and crafting: header checksum, long histories, output paths
(writability, devices, FIFOs, links, modes), field checks, and sizes checked before allocating."""

import hashlib
import io
import json
import os
import stat
import tracemalloc
import zipfile

import numpy as np
import pytest

import fastbp
from fastbp import _checkpoint, _files, _io

MB = 1 << 20


def _data(n=40):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 3))
    return X, np.tanh(X).sum(axis=1)


def _model(tmp_path, name="m.fbp"):
    X, y = _data()
    net = fastbp.Network([3, 4, 1], activations="tanh", backend="numpy", seed=1)
    net.fit(X, y, epochs=2, batch_size=4, optimizer=fastbp.Adam(0.01), verbose=0)
    path = tmp_path / name
    net.save(path)
    return net, path


def _checkpoint_file(tmp_path, name="ck.fbp"):
    X, y = _data()
    net = fastbp.Network([3, 4, 1], backend="numpy", seed=1)
    path = tmp_path / name
    net.fit(X, y, epochs=2, batch_size=4, validation_split=0.25, checkpoint=path, verbose=0,
            callbacks=[fastbp.EarlyStopping(patience=3, restore_best_weights=True)])
    return net, path


_canonical = _io._canonical  # what ``header_sha256`` covers (format 2)


def _split(data):
    rest = data[len(_io.MAGIC):]
    line, payload = rest.split(b"\n", 1)
    return json.loads(line), payload


def _write(path, header, payload, raw=None):
    """Write ``header`` with a valid header checksum; ``raw`` maps placeholder strings to raw
    JSON text put in their place (e.g. ``10**400`` or ``1e400``)."""
    header = dict(header)
    header.pop("header_sha256", None)
    text = json.dumps(header, sort_keys=True, separators=(",", ":"))
    for placeholder, value in (raw or {}).items():
        text = text.replace(json.dumps(placeholder), value)
    try:
        parsed = json.loads(text)
        digest = hashlib.sha256(_canonical(parsed)).hexdigest()
    except (ValueError, RecursionError):
        digest = "0" * 64
    text = text[:-1] + f',"header_sha256":"{digest}"}}'
    path.write_bytes(_io.MAGIC + text.encode() + b"\n" + payload)


def _with_payload(header, arrays, compressed=False):
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    payload = buffer.getvalue()
    header = dict(header, payload_bytes=len(payload), sha256=hashlib.sha256(payload).hexdigest())
    return header, payload


def _weights_equal(a, b):
    return all(x.tobytes() == y.tobytes() for x, y in zip(a.get_weights(), b.get_weights()))


# --------------------------------------------------------------------- A. header checksum
def test_edited_header_is_rejected(tmp_path):
    _, path = _model(tmp_path)
    data = path.read_bytes()
    assert b'"loss":"mse"' in data
    path.write_bytes(data.replace(b'"loss":"mse"', b'"loss":"mae"'))
    with pytest.raises(ValueError, match="header checksum mismatch"):
        fastbp.load(path)


def test_flipped_version_digit_is_rejected(tmp_path):
    _, path = _model(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data.replace(b'"version":2', b'"version":1'))
    with pytest.raises(ValueError, match="header checksum"):
        fastbp.load(path)


def test_format_version_2_is_written():
    assert _io.FORMAT_VERSION == 2


def _save_version_1(network, path, extra=None):
    """A model file as fastbp with format version 1 wrote it (``extra``: its metadata)."""
    arrays = {"params": network._params}
    if network._state is not None:
        arrays["optimizer_state"] = network._state
    training = None
    if network._position is not None:
        training = {k: v for k, v in network._position.items() if k != "arrays"}
        for name, array in network._position["arrays"].items():
            arrays["training." + name] = array
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    payload = buffer.getvalue()
    header = {"format": "fastbp-model", "version": 1, "config": network.get_config(),
              "optimizer": None if network.optimizer is None else network.optimizer.get_config(),
              "step": network._step, "shuffle_rng": network._rng.bit_generator.state,
              "extra": {"note": "v1"} if extra is None else extra, "training": training,
              "payload_bytes": len(payload),
              "sha256": hashlib.sha256(payload).hexdigest()}
    path.write_bytes(_io.MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + payload)


def test_version_1_files_are_still_read(tmp_path):
    _, path = _checkpoint_file(tmp_path)
    current = fastbp.load(path, backend="numpy")
    _save_version_1(current, tmp_path / "v1")
    old = fastbp.load(tmp_path / "v1", backend="numpy")
    assert _weights_equal(old, current) and old._step == current._step
    assert old._position["history"] == current._position["history"]
    assert old._position["callbacks"] == current._position["callbacks"]
    assert old._extra == {"note": "v1"}
    X, y = _data()
    kwargs = dict(epochs=3, batch_size=4, validation_split=0.25, resume=True, verbose=0)
    old.fit(X, y, callbacks=[fastbp.EarlyStopping(patience=3, restore_best_weights=True)],
            **kwargs)
    current.fit(X, y, callbacks=[fastbp.EarlyStopping(patience=3, restore_best_weights=True)],
                **kwargs)
    assert _weights_equal(old, current)


# --------------------------------------------------------------------- B. long histories
def test_checkpoint_with_30k_epoch_history_round_trips(tmp_path):
    _, path = _checkpoint_file(tmp_path)
    net = fastbp.load(path, backend="numpy")
    rng = np.random.default_rng(5)
    history = {"loss": rng.random(30_000).tolist(), "val_loss": rng.random(30_000).tolist()}
    net._position["history"] = history
    net._position["epoch"] = 30_000
    net._position["epochs"] = 40_000
    net.save(tmp_path / "long.fbp")
    loaded = fastbp.load(tmp_path / "long.fbp", backend="numpy")
    assert loaded._position["history"] == history
    assert all(type(v) is float for v in loaded._position["history"]["loss"][:10])
    assert loaded._position["epoch"] == 30_000
    header_line = (tmp_path / "long.fbp").read_bytes().split(b"\n", 2)[1]
    assert len(header_line) < 16_384  # the history is in the payload


def test_save_refuses_a_header_load_could_not_read(tmp_path):
    net, _ = _model(tmp_path)
    net._extra = {"blob": "x" * (_io._MAX_HEADER_BYTES + 10)}
    with pytest.raises(ValueError, match="header would take"):
        net.save(tmp_path / "big.fbp")
    assert not (tmp_path / "big.fbp").exists()


# --------------------------------------------------------------------- C. writability first
def _deny_writes_to(monkeypatch, denied):
    """``denied`` (a file or a directory) behaves as read-only, even to root."""
    real_access, real_create = os.access, _files.create_temp

    def access(path, mode, *args, **kwargs):
        if os.path.realpath(path) == os.path.realpath(denied) and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    def create_temp(directory, *args, **kwargs):
        if os.path.realpath(directory) == os.path.realpath(denied):
            raise PermissionError(13, "Permission denied")
        return real_create(directory, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(_files, "create_temp", create_temp)


def test_check_path_refuses_an_unwritable_directory(tmp_path, monkeypatch):
    directory = tmp_path / "ro"
    directory.mkdir()
    _deny_writes_to(monkeypatch, directory)
    with pytest.raises(PermissionError, match="not writable") as info:
        _checkpoint.check_path(directory / "run.ckpt")
    assert str(directory) in str(info.value) and ".tmp" not in str(info.value)


def test_fit_with_unwritable_checkpoint_fails_before_training(tmp_path, monkeypatch):
    directory = tmp_path / "ro"
    directory.mkdir()
    _deny_writes_to(monkeypatch, directory)
    X, y = _data()
    net = fastbp.Network([3, 4, 1], backend="numpy", seed=1)
    before = net.get_weights()
    with pytest.raises(PermissionError, match="checkpoint: expected a directory"):
        net.fit(X, y, epochs=2, checkpoint=directory / "run.ckpt", verbose=0)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(before, net.get_weights()))
    assert net._step == 0 and list(directory.iterdir()) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="needs POSIX permissions and a non-root user")
def test_check_path_refuses_a_read_only_directory_for_real(tmp_path):
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="not writable"):
            _checkpoint.check_path(directory / "run.ckpt")
    finally:
        directory.chmod(0o755)


def test_check_path_refuses_a_read_only_file(tmp_path, monkeypatch):
    path = tmp_path / "model.fbp"
    path.write_bytes(b"old")
    _deny_writes_to(monkeypatch, path)
    with pytest.raises(PermissionError, match="read-only"):
        _checkpoint.check_path(path, "path", "model.fbp")


# --------------------------------------------------------------------- D. what save replaces
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_save_refuses_a_fifo(tmp_path):
    net, _ = _model(tmp_path)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(FileExistsError, match="FIFO"):
        net.save(fifo)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    with pytest.raises(FileExistsError, match="FIFO"):
        _checkpoint.check_path(fifo)
    X, y = _data()
    with pytest.raises(FileExistsError, match="checkpoint: expected a regular file"):
        net.fit(X, y, checkpoint=fifo, verbose=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.fbp", "pipe"]


@pytest.mark.parametrize("bad", [True, 1, 2, None, 1.5])
def test_load_and_save_take_only_paths(tmp_path, bad):
    """An int is a file descriptor to open(): load(True) would read and then close stdout."""
    net, path = _model(tmp_path)
    with open(path, "rb") as f:
        fd = f.fileno()
        for call in (fastbp.load, net.save, lambda p: fastbp.load(fd)):
            with pytest.raises(TypeError, match="path: expected a file path"):
                call(bad)
        os.fstat(fd)  # still open
        assert f.read(1)
    os.fstat(1)
    os.fstat(2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.fbp"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_load_refuses_a_fifo_and_a_directory_without_opening_them(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(OSError, match="found a FIFO"):
        fastbp.load(tmp_path / "pipe")  # opening it would wait for a writer forever
    with pytest.raises(IsADirectoryError, match="found a directory"):
        fastbp.load(tmp_path)


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="needs /dev/null")
def test_check_path_refuses_a_device():
    with pytest.raises(FileExistsError, match="character device"):
        _checkpoint.check_path("/dev/null", "path", "model.fbp")
    with pytest.raises(FileExistsError, match="character device"):
        _files.atomic_write("/dev/null", [b"x"])
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_saving_where_no_file_can_be_created_is_a_clear_error(tmp_path):
    """/proc takes no new files, even from root, whom os.access lets through: tried for real."""
    net, _ = _model(tmp_path)
    for call in (lambda: net.save("/proc/m.fbp"),
                 lambda: _checkpoint.check_path("/proc/m.fbp"),
                 lambda: net.fit(*_data(), epochs=1, checkpoint="/proc/m.fbp", verbose=0)):
        with pytest.raises(PermissionError, match="not writable") as info:
            call()
        message = str(info.value)
        assert "/proc" in message and ".tmp" not in message and ".probe" not in message


def test_check_path_leaves_nothing_behind(tmp_path):
    assert _checkpoint.check_path(tmp_path / "run.ckpt") == tmp_path / "run.ckpt"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_file_mode_follows_the_umask(tmp_path, umask, mode):
    net, _ = _model(tmp_path)
    old = os.umask(umask)
    try:
        net.save(tmp_path / "new.fbp")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "new.fbp").st_mode) == mode


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_replacing_a_file_keeps_its_mode(tmp_path):
    net, path = _model(tmp_path)
    path.chmod(0o640)
    net.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    fastbp.load(path)


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_replacing_a_setuid_file_drops_the_special_bits(tmp_path):
    net, path = _model(tmp_path)
    path.chmod(0o6755 | stat.S_ISVTX)
    net.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o755
    fastbp.load(path)


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_saving_never_changes_the_umask(tmp_path, monkeypatch):
    """The new file's mode comes from the kernel (os.open with 0o666), not from reading the
    umask, which outside Linux means setting it (other threads would create mode-000 files)."""
    import builtins

    net, _ = _model(tmp_path)
    real_open = builtins.open

    def no_proc_status(file, *args, **kwargs):  # as on a system without /proc
        if str(file) == "/proc/self/status":
            raise OSError(2, "No such file or directory")
        return real_open(file, *args, **kwargs)

    def umask(mask):
        raise AssertionError(f"os.umask({mask:#o}) called while saving")

    old = os.umask(0o027)
    try:
        monkeypatch.setattr(builtins, "open", no_proc_status)
        monkeypatch.setattr(os, "umask", umask)
        net.save(tmp_path / "new.fbp")
        monkeypatch.undo()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "new.fbp").st_mode) == 0o640


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_saving_to_a_link_is_refused_and_its_target_untouched(tmp_path):
    """A link at an output path is refused, never followed: resolving it in user space would
    bypass fs.protected_symlinks (``ln -s ~/.bashrc /tmp/model.fbp`` would clobber it)."""
    net, path = _model(tmp_path)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    link = tmp_path / "latest.fbp"
    link.symlink_to(victim)
    dangling = tmp_path / "dangling.fbp"
    dangling.symlink_to(tmp_path / "target.fbp")
    X, y = _data()
    for target in (link, dangling, str(link)):
        for call in (lambda: net.save(target),
                     lambda: _checkpoint.check_path(target),
                     lambda: _files.atomic_write(target, [b"x"]),
                     lambda: net.fit(X, y, epochs=1, checkpoint=target, verbose=0)):
            with pytest.raises(FileExistsError, match="symbolic link") as info:
                call()
            assert "Pass the target path itself, or remove the link" in str(info.value)
    assert victim.read_bytes() == b"precious" and not (tmp_path / "target.fbp").exists()
    assert link.is_symlink() and dangling.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        ["dangling.fbp", "latest.fbp", "m.fbp", "victim"]
    net.save(victim)  # the target path itself is fine
    assert _weights_equal(fastbp.load(victim), net) and link.is_symlink()


# --------------------------------------------------------------------- E. field checks
def test_deeply_nested_header_is_a_value_error(tmp_path):
    path = tmp_path / "m"
    path.write_bytes(_io.MAGIC + b"[" * 100_000 + b"]" * 100_000 + b"\n")
    with pytest.raises(ValueError, match="not a valid fastbp model file"):
        fastbp.load(path)
    path.write_bytes(_io.MAGIC + b'{"format":"fastbp-model","extra":' + b"[" * 50_000
                     + b"]" * 50_000 + b"}\n")
    with pytest.raises(ValueError, match="not a valid fastbp model file"):
        fastbp.load(path)


@pytest.mark.parametrize("raw", ["1e400", "-1", "2.5", "null", '"3"', "true", "[]",
                                 str(10 ** 400), "NaN"])
def test_bad_step_is_a_value_error_naming_it(tmp_path, raw):
    _, path = _model(tmp_path)
    header, payload = _split(path.read_bytes())
    header["step"] = "@RAW@"
    _write(path, header, payload, raw={"@RAW@": raw})
    with pytest.raises(ValueError, match="'step'"):
        fastbp.load(path)


@pytest.mark.parametrize("dtype", ["garbage", "float16", "int64", None, 32, ["float64"]])
def test_crafted_dtype_is_a_value_error(tmp_path, dtype):
    _, path = _model(tmp_path)
    header, payload = _split(path.read_bytes())
    header["config"]["dtype"] = dtype
    _write(path, header, payload)
    with pytest.raises(ValueError, match="config.dtype"):
        fastbp.load(path)


FIELD_EDITS = [
    ("config", None), ("config", []), ("config.layers", None), ("config.layers", [3]),
    ("config.layers", [3, "4", 1]), ("config.layers", [3, 4.0, 1]), ("config.layers", [3, -4, 1]),
    ("config.layers", [3, True, 1]), ("config.activations", "tanh"),
    ("config.activations", [None]), ("config.activations", ["swish"]),
    ("config.loss", 3), ("config.loss", "hinge"), ("config.output_activation", {}),
    ("config.kernel_initializer", [1]), ("config.kernel_initializer", "ones"),
    ("config.bias_initializer", None), ("config.seed", -1), ("config.seed", 1.5),
    ("config.seed", "0"), ("optimizer", "Adam"), ("optimizer", []),
    ("optimizer.name", None), ("optimizer.name", "Nadam"), ("optimizer.learning_rate", "0.1"),
    ("optimizer.learning_rate", -1), ("optimizer.beta_1", None), ("optimizer.beta_1", 2),
    ("optimizer.momentum", 0.5),
    ("shuffle_rng", None), ("shuffle_rng", []), ("shuffle_rng.bit_generator", "MT19937"),
    ("shuffle_rng.state", 5), ("shuffle_rng.state.state", -1),
    ("shuffle_rng.state.state", 1 << 130), ("shuffle_rng.state.inc", "1"),
    ("shuffle_rng.has_uint32", 2), ("shuffle_rng.uinteger", None),
    ("extra", []), ("extra", "text"), ("extra", 5),
]


def _set(header, dotted, value):
    keys = dotted.split(".")
    target = header
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value


@pytest.mark.parametrize("field, value", FIELD_EDITS,
                         ids=[f"{f}={v!r}"[:40] for f, v in FIELD_EDITS])
def test_wrong_header_field_is_a_value_error_naming_it(tmp_path, field, value):
    _, path = _model(tmp_path)
    header, payload = _split(path.read_bytes())
    _set(header, field, value)
    _write(path, header, payload)
    with pytest.raises(ValueError, match="not a valid fastbp model file") as info:
        fastbp.load(path)
    top = field.split(".")[0]
    assert top in str(info.value)


TRAINING_EDITS = [
    ("training", []), ("training", "x"), ("training.epoch", -1), ("training.epoch", 1.0),
    ("training.epoch", None), ("training.rows", 10 ** 6), ("training.rows", "0"),
    ("training.loss_sum", None), ("training.loss_sum", "NaN"), ("training.loss_sum", 1e308 * 10),
    ("training.epoch_rng", None), ("training.epoch_rng.state", []), ("training.stopped", 0),
    ("training.stopped", None), ("training.epochs", 0), ("training.chunk_rows", 0),
    ("training.chunk_rows", 7), ("training.chunk_rows", 10 ** 30),
    ("training.settings", None), ("training.settings.n_rows", "30"),
    ("training.settings.n_val", -1), ("training.settings.source", "disk"),
    ("training.settings.fingerprint", 5), ("training.settings.batch_size", 0),
    ("training.settings.shuffle", "yes"), ("training.settings.validation_split", 1.0),
    ("training.history", {"loss": [1.0]}), ("training.history", [1]),
    ("training.history", ["loss", "loss"]), ("training.history", ["loss"]),
    ("training.callbacks", {}), ("training.callbacks", [None]), ("training.callbacks", [{}]),
]


@pytest.mark.parametrize("field, value", TRAINING_EDITS,
                         ids=[f"{f}={v!r}"[:40] for f, v in TRAINING_EDITS])
def test_wrong_training_field_is_a_value_error(tmp_path, field, value):
    _, path = _checkpoint_file(tmp_path)
    header, payload = _split(path.read_bytes())
    _set(header, field, value)
    _write(path, header, payload)
    with pytest.raises(ValueError, match="not a valid fastbp model file.*(training|payload)"):
        fastbp.load(path)


@pytest.mark.parametrize("source, dask", [
    ("memory", {"rounds": 1, "assignment": [[0]]}),  # only a cluster fit's position has it
    ("dask", None), ("dask", {"rounds": 1}), ("dask", {"rounds": 0, "assignment": [[0]]}),
    ("dask", {"rounds": "1", "assignment": [[0]]}), ("dask", {"rounds": 1, "assignment": []}),
    ("dask", {"rounds": 1, "assignment": [[0], []]}),
    ("dask", {"rounds": 1, "assignment": [[0, 1], [1]]}),
    ("dask", {"rounds": 1, "assignment": [[-1]]}), ("dask", {"rounds": 1, "assignment": [0]}),
    ("dask", {"rounds": 1, "assignment": [[0]], "more": 1}),
])
def test_wrong_cluster_position_is_a_value_error(tmp_path, source, dask):
    _, path = _checkpoint_file(tmp_path)
    header, payload = _split(path.read_bytes())
    header["training"]["settings"]["source"] = source
    header["training"]["dask"] = dask
    _write(path, header, payload)
    with pytest.raises(ValueError, match="not a valid fastbp model file.*training.dask"):
        fastbp.load(path)


def test_a_cluster_position_inside_an_epoch_loads(tmp_path):
    _, path = _checkpoint_file(tmp_path)
    header, payload = _split(path.read_bytes())
    header["training"]["settings"]["source"] = "dask"
    header["training"]["dask"] = {"rounds": 2, "assignment": [[0, 3], [1, 2]]}
    _write(path, header, payload)
    position = fastbp.load(path)._position
    assert position["dask"] == {"rounds": 2, "assignment": [[0, 3], [1, 2]]}


@pytest.mark.parametrize("edit", ["wait", "best", "best_epoch", "arrays", "missing", "class"])
def test_wrong_early_stopping_state_is_a_value_error(tmp_path, edit):
    _, path = _checkpoint_file(tmp_path)
    header, payload = _split(path.read_bytes())
    entry = header["training"]["callbacks"][0]
    if edit == "wait":
        entry["state"]["wait"] = "3"
    elif edit == "best":
        entry["state"]["best"] = [1.0]
    elif edit == "best_epoch":
        entry["state"]["best_epoch"] = -2
    elif edit == "arrays":
        entry["arrays"] = ["best_weights.0"]
    elif edit == "missing":
        del entry["state"]["wait"]
    else:  # a callback of another class declares the arrays: the payload still holds them
        entry["arrays"] = entry["arrays"] + ["extra"]
    _write(path, header, payload)
    with pytest.raises(ValueError, match="not a valid fastbp model file"):
        fastbp.load(path)


def test_bogus_backend_is_not_blamed_on_the_file(tmp_path):
    _, path = _model(tmp_path)
    with pytest.raises(ValueError, match="backend") as info:
        fastbp.load(path, backend="bogus")
    assert "not a valid fastbp model file" not in str(info.value)


def test_loaded_numbers_are_plain_python_types(tmp_path):
    _, path = _checkpoint_file(tmp_path)
    net = fastbp.load(path, backend="numpy")
    assert type(net._step) is int
    position = net._position
    for key in ("epoch", "rows", "epochs", "chunk_rows"):
        assert type(position[key]) is int, key
    assert type(position["loss_sum"]) is float
    assert all(type(v) is float for values in position["history"].values() for v in values)
    assert all(type(w) is int for w in net.get_config()["layers"])


# --------------------------------------------------------------------- F. sizes before allocating
def _peak(fn):
    tracemalloc.start()
    try:
        try:
            fn()
        except ValueError as exc:
            error = exc
        else:
            error = None
        return tracemalloc.get_traced_memory()[1], error
    finally:
        tracemalloc.stop()


def test_declared_layers_must_match_the_payload_before_allocating(tmp_path):
    _, path = _model(tmp_path)
    header, payload = _split(path.read_bytes())
    header["config"]["layers"] = [4000, 5000, 1]  # 20M parameters, 160 MB
    header["optimizer"] = None
    header["step"] = 0
    header, payload = _with_payload(header, {"params": np.zeros(3)})
    _write(path, header, payload)
    assert path.stat().st_size < 4000
    peak, error = _peak(lambda: fastbp.load(path, backend="numpy"))
    assert error is not None and "params" in str(error) and "shape" in str(error)
    assert peak < 10 * MB


def _deflate_bomb(member_bytes):
    """An npz whose one member, "params", is ``member_bytes`` of zeros, deflated."""
    n = member_bytes // 8
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("params.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(
                member, {"descr": "<f8", "fortran_order": False, "shape": (n,)})
            block = bytes(MB)
            for _ in range(member_bytes // MB):
                member.write(block)
    return buffer.getvalue(), n


def test_deflate_bomb_payload_is_refused_without_inflating(tmp_path):
    _, path = _model(tmp_path)
    header, _ = _split(path.read_bytes())
    payload, n = _deflate_bomb(120 * MB)
    assert len(payload) < 2 * MB
    # an architecture of exactly n parameters: [1, (n - 1) // 3, 1] has 3 * w + 1
    width = (n - 1) // 3
    header["config"]["layers"] = [1, width, 1]
    header["config"]["activations"] = ["tanh"]
    header["optimizer"], header["step"] = None, 0
    header = dict(header, payload_bytes=len(payload), sha256=hashlib.sha256(payload).hexdigest())
    _write(path, header, payload)
    peak, error = _peak(lambda: fastbp.load(path, backend="numpy"))
    assert error is not None and "uncompressed" in str(error)
    assert peak < 20 * MB


def test_compressed_payload_is_refused(tmp_path):
    net, path = _model(tmp_path)
    header, _ = _split(path.read_bytes())
    header, payload = _with_payload(header, {"params": net._params,
                                             "optimizer_state": net._state}, compressed=True)
    _write(path, header, payload)
    with pytest.raises(ValueError, match="uncompressed"):
        fastbp.load(path)


def test_unexpected_or_missing_payload_members_are_refused(tmp_path):
    net, path = _model(tmp_path)
    header, _ = _split(path.read_bytes())
    for arrays, what in (({"params": net._params}, "missing"),
                         ({"params": net._params, "optimizer_state": net._state,
                           "junk": np.zeros(2)}, "unexpected")):
        h, payload = _with_payload(header, arrays)
        _write(path, h, payload)
        with pytest.raises(ValueError, match=what):
            fastbp.load(path)


def test_object_arrays_are_refused_without_unpickling(tmp_path, monkeypatch):
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    net, path = _model(tmp_path)
    header, _ = _split(path.read_bytes())
    buffer = io.BytesIO()
    np.savez(buffer, params=np.array([object()] * net._params.size, dtype=object),
             optimizer_state=net._state, allow_pickle=True)
    payload = buffer.getvalue()
    header = dict(header, payload_bytes=len(payload), sha256=hashlib.sha256(payload).hexdigest())
    _write(path, header, payload)
    with pytest.raises(ValueError, match="not a plain number type"):
        fastbp.load(path)


def test_payload_size_is_checked_before_reading_it(tmp_path):
    _, path = _model(tmp_path)
    with open(path, "ab") as f:
        f.write(b"\0" * 1000)
    with pytest.raises(ValueError, match="checksum mismatch"):
        fastbp.load(path)


@pytest.mark.parametrize("training", [5, 1.5, True, [1, 2], "x"])
def test_version_1_file_with_a_wrong_training_field_is_a_value_error(tmp_path, training):
    # found by tests/test_fuzz_files.py: the format-1 defaults were applied before the type check
    _, path = _checkpoint_file(tmp_path)
    _save_version_1(fastbp.load(path, backend="numpy"), tmp_path / "v1")
    header, payload = _split((tmp_path / "v1").read_bytes())
    header["training"] = training
    (tmp_path / "v1").write_bytes(_io.MAGIC + json.dumps(header).encode() + b"\n" + payload)
    with pytest.raises(ValueError, match="'training'"):
        fastbp.load(tmp_path / "v1")


# --------------------------------------------------------------------- G. values and config
def _members(payload):
    with np.load(io.BytesIO(payload)) as archive:
        return {name: archive[name].copy() for name in archive.files}


def _edit_members(path, edit, header_edit=None):
    """Rewrite ``path`` with ``edit(arrays)`` applied to its payload, checksums recomputed."""
    header, payload = _split(path.read_bytes())
    arrays = _members(payload)
    edit(arrays)
    if header_edit is not None:
        header_edit(header)
    _write(path, *_with_payload(header, arrays))


def test_config_a_network_refuses_is_the_files_error(tmp_path):
    """A checksum-valid file whose config Network(...) refuses: the file is blamed, by path."""
    net = fastbp.Network([3, 4, 1], backend="numpy", dtype="float32")
    path = tmp_path / "m.fbp"
    net.save(path)

    def huge_initializer(header):
        header["config"]["kernel_initializer"] = 1e300  # finite, but overflows float32

    _edit_members(path, lambda arrays: None, huge_initializer)
    with pytest.raises(ValueError, match=r"not a valid fastbp model file \(config: "
                                         r"kernel_initializer") as info:
        fastbp.load(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("member", ["params", "optimizer_state"])
def test_non_finite_weights_or_optimizer_state_are_refused(tmp_path, member, value):
    _, path = _model(tmp_path)  # Adam

    def edit(arrays):
        arrays[member].flat[3] = value

    _edit_members(path, edit)
    with pytest.raises(ValueError, match=f"'{member}': expected finite numbers"):
        fastbp.load(path)


def test_non_finite_best_weights_are_refused(tmp_path):
    _, path = _checkpoint_file(tmp_path)
    name = "training.callback0.best_weights.0"
    assert name in _members(_split(path.read_bytes())[1])

    def edit(arrays):
        arrays[name].flat[0] = np.nan

    _edit_members(path, edit)
    with pytest.raises(ValueError, match="expected finite numbers"):
        fastbp.load(path)


@pytest.mark.parametrize("optimizer, slot, refused", [
    (fastbp.Adam(0.01), 1, True), (fastbp.Adam(0.01), 0, False),
    (fastbp.RMSprop(0.01), 0, True), (fastbp.RMSprop(0.01, momentum=0.5), 1, False),
    (fastbp.SGD(0.01, momentum=0.9), 0, False)])
def test_negative_second_moments_are_refused(tmp_path, optimizer, slot, refused):
    """Adam's v (slot 1) and RMSprop's average (slot 0) are never negative; first moments,
    momentum buffers and velocities may be."""
    X, y = _data()
    net = fastbp.Network([3, 4, 1], backend="numpy", seed=1)
    net.fit(X, y, epochs=1, batch_size=4, optimizer=optimizer, verbose=0)
    path = tmp_path / "m.fbp"
    net.save(path)

    def edit(arrays):
        arrays["optimizer_state"][slot, 2] = -1e-3

    _edit_members(path, edit)
    if refused:
        with pytest.raises(ValueError, match=f"slot {slot}.*>= 0"):
            fastbp.load(path)
    else:
        assert fastbp.load(path)._state[slot, 2] == -1e-3


def test_import_does_not_load_archive_modules():
    """zipfile (and shutil's bz2/lzma) load only when a model file or data set is read/written."""
    import subprocess
    import sys

    code = ("import sys, fastbp; "
            "print(sorted(m for m in ('zipfile', 'bz2', 'lzma') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]", out

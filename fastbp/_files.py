"""Output files: checked before anything is computed, written under a new name and renamed.

Every file fastbp writes (model files, checkpoints, ``make-data``'s arrays)
goes the same way:

- :func:`check_output_path` first, before training or generating anything:
  the path must be a regular file or a new path (``os.lstat``: a symbolic
  link there is refused, never followed -- resolving a link in user space
  would bypass the kernel's ``fs.protected_symlinks`` in sticky directories
  such as ``/tmp``), its directory must exist, and a file must really be
  creatable there (a probe file is created and removed: permission bits do
  not tell for root, ``/proc`` or a read-only mount);
- :func:`create_temp` makes the temporary file: a random name in the target
  directory, created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` (nothing planted
  there is opened or followed, and concurrent writers never share one) and
  mode ``0o666`` less the umask, which the kernel applies -- what a plain
  ``open(path, "w")`` gives;
- :func:`atomic_write` writes, fsyncs and renames it over the target.  A
  replaced regular file keeps its permission bits (``& 0o777``: never
  setuid, setgid or sticky).  ``os.replace`` replaces whatever is at the path
  itself (a link planted after the check included), never a link's target.

Only the standard library is used.
"""

import contextlib
import os
import secrets
import stat
from pathlib import Path

_CREATE_FLAGS = (os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0)
                 | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
# Room left in a 255-byte file name for the dot, the random part and the suffix.
_MAX_STEM = 200


def file_kind(mode):
    """What a non-regular file of ``mode`` is, in words."""
    for test, kind in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return kind
    return "not a regular file"


def create_temp(directory, name, suffix=".tmp"):
    """``(fd, path)`` of a new, empty file ``.<name>.<random><suffix>`` in ``directory``.

    Created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` and mode ``0o666`` (less the
    umask, applied by the kernel); ``fd`` is open for writing.  Raises the
    ``OSError`` of the creation when the directory does not take new files.
    """
    directory = Path(directory)
    stem = str(name)[:_MAX_STEM]
    for _ in range(100):
        path = directory / f".{stem}.{secrets.token_hex(8)}{suffix}"
        try:
            return os.open(path, _CREATE_FLAGS, 0o666), path
        except FileExistsError:  # a name already taken (or planted): draw another
            continue
    raise FileExistsError(f"{directory}: could not create a temporary file for {name} "
                          "(100 random names were taken). Remove the hidden "
                          f".{stem}.*{suffix} files there.")


def _existing(path, what):
    """``os.lstat`` of ``path``, or ``None`` for a new path; refuses anything but a regular file."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ENOTDIR, EACCES, ENAMETOOLONG, a link loop on the way
        raise type(exc)(exc.errno, f"{what}: cannot check {path}: {exc.strerror}. Pass "
                        "another path.") from None
    if stat.S_ISLNK(info.st_mode):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        raise FileExistsError(
            f"{what}: expected a regular file or a new path; found {path}, a symbolic link to "
            f"{target}. Pass the target path itself, or remove the link.")
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(f"{what}: expected a file path; found the directory {path}. "
                                "Pass a file name inside it.")
    if not stat.S_ISREG(info.st_mode):
        raise FileExistsError(
            f"{what}: expected a regular file or a new path; found {path}, which is "
            f"{file_kind(info.st_mode)}. fastbp writes a new file and renames it into place, "
            "which would replace it; pass the path of a regular file instead.")
    return info


def check_output_path(path, what, example):
    """``None`` (for ``None``) or ``Path(path)``, once it is known that it can be written.

    Refuses (``OSError`` subclasses with a message naming ``what``) a path
    that is a symbolic link, a directory, a device, FIFO or socket; a missing
    directory; a directory where no file can be created (tried for real); and
    an existing file that is read-only.  ``example`` is a file name to
    suggest.
    """
    if path is None:
        return None
    try:
        path = Path(os.fspath(path))
    except TypeError:
        raise TypeError(f"{what}: expected a file path (str or os.PathLike); found "
                        f"{type(path).__name__}. Pass e.g. {what}='{example}'.") from None
    parent = path.parent
    if not parent.is_dir():
        raise FileNotFoundError(f"{what}: the directory {parent} of {path} does not exist. "
                                "Create it first or pass another path.")
    try:
        info = _existing(path, what)
    except IsADirectoryError:
        raise IsADirectoryError(f"{what}: expected a file path; found the directory {path}. "
                                f"Pass a file name inside it, e.g. {path / example}.") from None
    try:
        fd, probe = create_temp(parent, path.name, ".probe")
    except OSError as exc:
        raise PermissionError(
            f"{what}: expected a directory this process can write to; found that {parent} "
            f"(the directory of {path}) is not writable ({exc.strerror or type(exc).__name__}): "
            f"no file can be created there. Change its permissions, or pass a path in a "
            f"writable directory, e.g. {what}='{example}' in your home or work "
            "directory.") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    if info is not None and not os.access(path, os.W_OK):
        raise PermissionError(
            f"{what}: expected a writable file; found that {path} is read-only. Make it "
            "writable (chmod u+w), remove it, or pass another path.")
    return path


def atomic_write(path, chunks, what="path"):
    """Write the byte strings ``chunks`` to ``path`` through a temporary file and a rename.

    ``path`` must be a regular file (whose permission bits, ``& 0o777``, the
    new file gets) or a new path (mode ``0o666`` less the umask); a link or
    anything else there is refused, not followed.  On any error the temporary
    file is removed and ``path`` is untouched.
    """
    path = Path(path)
    info = _existing(path, what)
    fd, tmp = create_temp(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            if info is not None and hasattr(os, "fchmod"):  # POSIX; Windows has no such modes
                os.fchmod(f.fileno(), stat.S_IMODE(info.st_mode) & 0o777)
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise

"""The one way a snapshot (or retired) file is opened for reading: as a checked regular file.

A store folder may be shared, so ``objects/ab/<id>.h5`` may have been planted by someone else as a
FIFO (libhdf5's ``open()`` would wait forever for a writer: ``Repo(path)``, log, reindex, verify and
gc all hung), a device, or a symbolic link to anywhere. So the file is opened here first, with
``O_NOFOLLOW | O_NONBLOCK`` (a FIFO opens without waiting, a symlink is refused), ``fstat`` must
say it is a regular file, and libhdf5 is then handed that very file: on Linux through
``/proc/self/fd/<fd>``, which reopens the checked inode (no window in which the name could be
swapped for a FIFO); elsewhere by name, with the inode libhdf5 opened compared to the checked one.
Once open, ``File.filename`` is that ``/proc`` path: code that names or re-reads the file uses the
path it opened, or the descriptor libhdf5 reads through (``file.id.get_vfd_handle()``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import h5py

from ...errors import UnsafeSnapshotError
from .safe_files import file_kind

# What h5py raises reading a damaged file (a bad object header is a KeyError): readers turn these
# into one-line errors naming the file or tensor.
H5_READ_ERRORS = (OSError, KeyError, ValueError, TypeError, RuntimeError)
_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_PROC_FD = "/proc/self/fd"


def refusal(path: Path, what: str) -> UnsafeSnapshotError:
    return UnsafeSnapshotError(f"snapshot {Path(path).name} is {what}, refused (store files must be regular "
                           "files inside the store)")


def open_checked(path: Path | str) -> int:
    """A read-only descriptor of ``path``, which must be a regular file and not a symbolic link
    (:class:`UnsafeSnapshotError` otherwise; ``FileNotFoundError`` when absent). The caller closes it."""
    path = Path(path)
    if path.parent.is_symlink():  # O_NOFOLLOW guards the last component; objects/<ab> is checked here
        raise refusal(path, "in a folder that is a symbolic link")
    try:
        fd = os.open(path, _FLAGS)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        if os.path.islink(path):
            raise refusal(path, "a symbolic link") from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise refusal(path, file_kind(mode))
    return fd


def open_hdf5(path: Path | str) -> h5py.File:
    """``h5py.File`` of ``path`` opened read-only, after :func:`open_checked` (one-line
    :class:`UnsafeSnapshotError` for a FIFO, device, socket or symbolic link; never a hang)."""
    fd = open_checked(path)
    try:
        if os.path.isdir(_PROC_FD):
            return h5py.File(f"{_PROC_FD}/{fd}", "r")  # the checked inode itself
        handle = h5py.File(path, "r")
        checked, opened = os.fstat(fd), os.fstat(handle.id.get_vfd_handle())
        if (checked.st_dev, checked.st_ino) != (opened.st_dev, opened.st_ino):
            handle.close()
            raise refusal(Path(path), "replaced while it was opened")
        return handle
    finally:
        os.close(fd)  # libhdf5 holds its own descriptor of the same file


def file_size(f: h5py.File) -> int:
    """The size of the file ``f`` reads, through libhdf5's own descriptor (not its name)."""
    try:
        handle = f.id.get_vfd_handle()
        if isinstance(handle, int):
            return os.fstat(handle).st_size
    except (OSError, ValueError, RuntimeError, TypeError):
        pass
    return os.path.getsize(f.filename)


def file_path(f: h5py.File) -> str:
    """A name that opens the very file ``f`` reads (``/proc/self/fd/<libhdf5's fd>`` on Linux: a new
    open of the same inode, with its own offset), for code that reads its bytes besides libhdf5."""
    try:
        handle = f.id.get_vfd_handle()
    except (OSError, ValueError, RuntimeError, TypeError):
        handle = None
    if isinstance(handle, int) and os.path.isdir(_PROC_FD):
        return f"{_PROC_FD}/{handle}"
    return f.filename


def display_name(f: h5py.File) -> str:
    """The base name of the file ``f`` reads, for messages (not the ``/proc`` path it was opened by)."""
    name = f.filename
    if name.startswith(_PROC_FD + "/"):
        try:
            name = os.readlink(file_path(f))
        except OSError:
            pass
    return os.path.basename(name)

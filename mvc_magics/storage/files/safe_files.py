"""The one way the store opens, reads and writes its fixed-name files (refs, HEAD, tags, notes,
FORMAT, signatures, tombstones, lock, lock owner, journal, temporaries).

A store folder may be shared, so anything in it may have been planted by someone else. Every path
is opened from the store root one folder at a time with ``O_NOFOLLOW`` (a symlinked folder or file
is refused, so nothing is read from or written outside the store), only regular files are accepted
(a FIFO would block forever, a device would never end), and every read is bounded by what the
format allows. Refusals are one-line :class:`~mvc_magics.errors.UnsafeFileError` naming the path.
Writes go to a temporary file in ``tmp/`` and are renamed into place (see :mod:`.atomic`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from ...errors import UnsafeFileError
from .atomic import TMP_PREFIX, temporary_path

# Size caps: what the format allows, with room to spare (a ref holds a 64-hex id).
CAP_REF = 4096
CAP_FORMAT = 256
CAP_OWNER = 4096
CAP_SIGNATURE = 64 * 1024
CAP_TOMBSTONE = 64 * 1024
CAP_JOURNAL = 16 * 1024 * 1024  # a gc plan lists every tensor it keeps
CAP_NOTE = 1024 * 1024
CAP_REMOTES = 1024 * 1024

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # opening a FIFO must not wait for a writer


def file_kind(mode: int) -> str:
    """What a stat mode says a path is, for a one-line refusal of anything but a regular file."""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def _refuse(path: Path, what: str) -> UnsafeFileError:
    return UnsafeFileError(f"refusing {path}: {what} (store files must be regular files inside the store)")


class SafeFiles:
    """Fixed-name files of one store folder ``root``; temporaries go to ``root/tmp``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp = self.root / "tmp"

    # -- folders ----------------------------------------------------------------------------

    def _parts(self, path: Path) -> tuple[str, ...]:
        try:
            rel = Path(path).relative_to(self.root)
        except ValueError:
            raise _refuse(Path(path), "it is outside the store folder") from None
        parts = rel.parts
        if any(p in ("..", "") for p in parts):
            raise _refuse(Path(path), "the path leaves the store folder")
        return parts

    @contextlib.contextmanager
    def folder(self, path: Path, create: bool = False) -> Iterator[int | None]:
        """An fd of folder ``path`` inside the store, reached without following any symlink below
        the root (None when it does not exist and ``create`` is false)."""
        fd = os.open(self.root, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
        try:
            walked = self.root
            for part in self._parts(path):
                walked = walked / part
                try:
                    child = os.open(part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        yield None
                        return
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, dir_fd=fd)
                    child = self._open_dir_entry(fd, part, walked)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        mode = os.lstat(part, dir_fd=fd).st_mode
                        raise _refuse(walked, f"it is {file_kind(mode)}") from None
                    raise
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    @staticmethod
    def _open_dir_entry(fd: int, part: str, walked: Path) -> int:
        try:
            return os.open(part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise _refuse(walked, f"it is {file_kind(os.lstat(part, dir_fd=fd).st_mode)}") from None
            raise

    # -- reads ------------------------------------------------------------------------------

    def read(self, path: Path, cap: int) -> bytes | None:
        """The bytes of the regular file ``path`` (None when it or its folder is absent).

        Raises :class:`UnsafeFileError` for a symlink, FIFO, device or folder, or a file over ``cap``.
        """
        path = Path(path)
        with self.folder(path.parent) as dfd:
            if dfd is None:
                return None
            try:
                fd = os.open(path.name, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC, dir_fd=dfd)
            except FileNotFoundError:
                return None
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                    raise _refuse(path, f"it is {file_kind(os.lstat(path.name, dir_fd=dfd).st_mode)}") from None
                raise
        try:
            return read_regular(fd, path, cap)
        finally:
            os.close(fd)

    def read_text(self, path: Path, cap: int) -> str | None:
        data = self.read(path, cap)
        return None if data is None else data.decode("utf-8")

    def exists(self, path: Path) -> bool:
        """True when ``path`` exists as anything (lstat: a dangling symlink counts)."""
        path = Path(path)
        try:
            with self.folder(path.parent) as dfd:
                if dfd is None:
                    return False
                os.lstat(path.name, dir_fd=dfd)
                return True
        except (FileNotFoundError, NotADirectoryError, UnsafeFileError):  # (a path under a file)
            return False

    # -- writes -----------------------------------------------------------------------------

    def write(self, path: Path, data: bytes, exclusive: bool = False, durable: bool = True) -> bool:
        """Write ``path`` atomically: a new temporary in ``tmp/``, fsync, rename over ``path``
        (a rename replaces a planted symlink itself, never its target), fsync the folder.

        With ``exclusive`` an existing ``path`` is kept and False returned (link, not rename).
        Without ``durable`` nothing is fsynced (a marker only a kill, not a power cut, must find).
        """
        path = Path(path)
        with self.folder(self.tmp, create=True) as tfd, self.folder(path.parent, create=True) as dfd:
            tmp_name = temporary_path(self.tmp).name
            fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o666, dir_fd=tfd)
            try:
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    if durable:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                if exclusive:
                    try:
                        os.link(tmp_name, path.name, src_dir_fd=tfd, dst_dir_fd=dfd, follow_symlinks=False)
                    except FileExistsError:
                        return False
                else:
                    os.replace(tmp_name, path.name, src_dir_fd=tfd, dst_dir_fd=dfd)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp_name, dir_fd=tfd)
            if durable:
                os.fsync(dfd)
        return True

    def prepare(self, data: bytes) -> Path:
        """A new temporary file in ``tmp/`` holding ``data``, fsynced, for :meth:`place` to rename
        later: its fsync can run beside another (a commit's HEAD beside its snapshot's) while the
        rename still comes after what it must follow."""
        with self.folder(self.tmp, create=True) as tfd:
            tmp_name = temporary_path(self.tmp).name
            fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o666, dir_fd=tfd)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp_name, dir_fd=tfd)
                raise
            finally:
                os.close(fd)
        return self.tmp / tmp_name

    def place(self, tmp: Path, final: Path, sync_folder: bool = True) -> None:
        """Rename the complete, fsynced file ``tmp`` (in ``tmp/``) to ``final`` inside the store.

        ``sync_folder`` False leaves the folder's fsync to the caller (:meth:`sync_folder`), who
        runs it beside another sync and waits for it before reporting the write done."""
        with self.folder(Path(tmp).parent) as tfd, self.folder(Path(final).parent, create=True) as dfd:
            if tfd is None:
                raise FileNotFoundError(tmp)
            mode = os.lstat(Path(tmp).name, dir_fd=tfd).st_mode
            if not stat.S_ISREG(mode):
                raise _refuse(Path(tmp), f"it is {file_kind(mode)}")
            os.replace(Path(tmp).name, Path(final).name, src_dir_fd=tfd, dst_dir_fd=dfd)
            if sync_folder:
                os.fsync(dfd)

    def sync_folder(self, folder: Path) -> None:
        """fsync ``folder`` (opened without following symlinks), so renames inside it survive a power cut."""
        with self.folder(Path(folder)) as dfd:
            if dfd is None:
                raise FileNotFoundError(folder)
            os.fsync(dfd)

    def unlink(self, path: Path) -> bool:
        """Remove ``path`` (a symlink itself, never its target); False when absent."""
        path = Path(path)
        try:
            with self.folder(path.parent) as dfd:
                if dfd is None:
                    return False
                os.unlink(path.name, dir_fd=dfd)
                return True
        except FileNotFoundError:
            return False

    def open_regular(self, path: Path, flags: int, create: bool = True) -> int:
        """An fd of the regular file ``path`` opened with ``flags`` (plus O_CREAT when ``create``)."""
        path = Path(path)
        with self.folder(path.parent, create=create) as dfd:
            if dfd is None:
                raise FileNotFoundError(path)
            extra = os.O_CREAT if create else 0
            try:
                fd = os.open(path.name, flags | extra | _NOFOLLOW | _NONBLOCK | _CLOEXEC, 0o666, dir_fd=dfd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                    raise _refuse(path, f"it is {file_kind(os.lstat(path.name, dir_fd=dfd).st_mode)}") from None
                raise
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise _refuse(path, f"it is {file_kind(mode)}")
        return fd

    # -- listings ---------------------------------------------------------------------------

    def list(self, path: Path) -> list[str]:
        """Names in folder ``path`` (sorted; empty when absent), temporaries excluded."""
        try:
            with self.folder(Path(path)) as dfd:
                if dfd is None:
                    return []
                return sorted(n for n in os.listdir(dfd) if not n.startswith(TMP_PREFIX))
        except UnsafeFileError:
            return []


# Descriptors of lock files this process has open: a forked child closes its copies at once.
_LOCK_FDS: set[int] = set()


def _close_lock_copies() -> None:
    """In a forked child (a DataLoader worker, ``os.fork``): close the copies of the parent's lock
    descriptors, without unlocking. An flock belongs to the open file description parent and child
    now share: ``LOCK_UN`` here would release the parent's lock under it, and a copy left open
    would keep the store locked after the parent died (``O_CLOEXEC`` only helps a child that runs
    a program)."""
    for fd in list(_LOCK_FDS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _LOCK_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_lock_copies)


class ExclusiveFileLock:
    """An OS lock (flock) on a store file: released by the kernel if the holder dies.

    Unlike a plain ``open``, the lock file is never truncated and a symlink in its place is refused
    (a planted ``lock`` -> your file must not empty your file). One per process and path; the
    caller handles re-entrancy and threads. A lock held when the process forks stays the parent's:
    the child neither holds nor releases it (:func:`_close_lock_copies`).
    """

    def __init__(self, files: SafeFiles, path: Path) -> None:
        self._files, self._path, self._fd, self._pid = files, Path(path), None, 0

    def acquire(self, timeout: float) -> None:
        """Take the lock, waiting up to ``timeout`` seconds (then :class:`TimeoutError`)."""
        fd = self._files.open_regular(self._path, os.O_RDWR)
        _LOCK_FDS.add(fd)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    self._fd, self._pid, fd = fd, os.getpid(), None
                    return
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise TimeoutError(f"{self._path} is locked") from None
                    time.sleep(0.02)
        finally:
            if fd is not None:
                _LOCK_FDS.discard(fd)
                os.close(fd)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None or self._pid != os.getpid():  # taken before a fork: the parent's, closed here at the fork
            return
        _LOCK_FDS.discard(fd)
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def read_regular(fd: int, path: Path | str, cap: int) -> bytes:
    """Read the whole regular file behind ``fd``, refusing other kinds and files over ``cap``."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise _refuse(Path(path), f"it is {file_kind(info.st_mode)}")
    if info.st_size > cap:
        raise _refuse(Path(path), f"it holds {info.st_size} bytes, more than the {cap} this file may hold")
    chunks, total = [], 0
    while True:
        chunk = os.read(fd, min(1 << 20, cap + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if total > cap:  # grew while read
            raise _refuse(Path(path), f"it holds more than the {cap} bytes this file may hold")
    return b"".join(chunks)

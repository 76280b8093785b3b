"""What a remote may make us read or write: bounded reads, capped downloads, paths kept inside a
folder remote's root.

A shared remote folder is written by others: a tag or FORMAT file may be a symlink to ``/dev/zero``,
``refs/<model>/tags`` may be a symlink out of the remote (a push would write through it), and an
object may be far larger than its listing says. So small files are read with a cap, objects are
copied in chunks and stopped at the size the listing declared (or at the free space of the local
disk), and every path of a ``file://`` remote is resolved and refused when it leaves the root.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ...errors import RefusedRemoteFileError
from ..files.safe_files import read_regular

# FORMAT, tags, notes and log segments are small; this bounds each read of one.
CAP_REMOTE_FILE = 64 * 1024 * 1024
# The largest object a pull downloads (env MVC_REMOTE_MAX_OBJECT_BYTES), besides the free space.
MAX_OBJECT_ENV = "MVC_REMOTE_MAX_OBJECT_BYTES"
DEFAULT_MAX_OBJECT = 1 << 40
_MARGIN = 1 << 20
_CHUNK = 1 << 20


def object_limit(local_folder: Path, listed: int | None = None) -> int:
    """Bytes one download may take: its ``listed`` size, the configured maximum, and what the local
    disk can hold."""
    try:
        limit = int(os.environ.get(MAX_OBJECT_ENV, DEFAULT_MAX_OBJECT))
    except ValueError:
        limit = DEFAULT_MAX_OBJECT
    if listed:
        limit = min(limit, int(listed))
    try:
        limit = min(limit, max(0, shutil.disk_usage(local_folder).free - _MARGIN))
    except OSError:
        pass
    return limit


def confine(root: str, key: str) -> str:
    """``key`` of a folder remote, refused (:class:`RemoteError`) when it leaves ``root``.

    The folder is resolved (symlinks followed) and must still be inside the resolved root, and the
    key itself must not be a symlink: a planted ``refs/m/tags`` -> elsewhere cannot redirect a push.
    """
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.dirname(key))
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise RefusedRemoteFileError(f"remote path {key} leads outside the remote {root} (to {real}); refused")
    if os.path.islink(key):
        raise RefusedRemoteFileError(f"remote path {key} is a symbolic link; refused")
    return key


def read_local(root: str, key: str, cap: int) -> bytes:
    """A small file of a folder remote: inside the root, a regular file, at most ``cap`` bytes."""
    confine(root, key)
    fd = os.open(key, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    try:
        return read_regular(fd, key, cap)
    finally:
        os.close(fd)


def open_local(root: str, key: str):
    """An object of a folder remote opened for reading: inside the root, a regular file (a FIFO
    or device is refused, never waited on or read forever)."""
    import stat

    fd = os.open(confine(root, key), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RefusedRemoteFileError(f"remote path {key} is not a regular file; refused")
    return os.fdopen(fd, "rb")


def copy_bounded(source, target: Path, limit: int, what: str) -> int:
    """Copy the open binary ``source`` to ``target`` (fsynced), stopping past ``limit`` bytes."""
    total = 0
    with open(target, "wb") as out:
        while True:
            chunk = source.read(_CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise RefusedRemoteFileError(f"{what} is larger than the {limit} bytes this pull accepts for it "
                                  f"(its listed size, or the free space); refused")
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return total


def check_size(size: int | None, limit: int, what: str) -> None:
    if size is not None and size > limit:
        raise RefusedRemoteFileError(f"{what} holds {size} bytes, more than the {limit} this pull accepts for it "
                          "(its listed size, or the free space); refused")


def s3_get(fs, key: str, cap: int) -> bytes:
    """One GET (s3fs's cat_file sends a HEAD first, and lists the prefix when the key is missing),
    refused before reading when the object is larger than ``cap``."""
    from fsspec.asyn import sync

    bucket, path, _ = fs.split_path(key)

    async def get() -> bytes:
        resp = await fs._call_s3("get_object", Bucket=bucket, Key=path)
        async with resp["Body"] as body:
            check_size(resp.get("ContentLength"), cap, key)
            return await body.read()

    return sync(fs.loop, get)


def s3_download(fs, key: str, target: Path, limit: int, what: str) -> int:
    """One streamed GET into ``target``, stopped past ``limit`` bytes (checked first on its length)."""
    from fsspec.asyn import sync

    bucket, path, _ = fs.split_path(key)

    async def get() -> int:
        resp = await fs._call_s3("get_object", Bucket=bucket, Key=path)
        async with resp["Body"] as body:
            check_size(resp.get("ContentLength"), limit, what)
            total = 0
            with open(target, "wb") as out:
                while chunk := await body.read(_CHUNK):
                    total += len(chunk)
                    check_size(total, limit, what)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            return total

    return sync(fs.loop, get)

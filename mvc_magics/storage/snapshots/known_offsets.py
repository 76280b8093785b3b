"""Where the loose tensors of a snapshot file start, remembered per file identity.

Finding them takes HDF5's low-level calls on the opened file (a PyTorch 100 MB checkout: 1.7 ms of
its ~26 beside the other work; ResNet50's 320 tensors: ~6 ms) on every checkout. A snapshot file is
never changed in place: a commit, a pack or a repack writes a new file and renames it over the name
(a new inode). So the offsets found once hold while the file's identity (device, inode, size,
modification and change times) is the same, and a later checkout maps the file and takes them from
here. Nothing is trusted for that: the bytes at an offset are hashed against the manifest as
always, and a view never reaches outside the file's map, so a stale offset could only make the
hash fail, never load other bytes.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

# Files remembered (a few integers per tensor each); the least recently used go first.
LIMIT = 256

_lock = threading.Lock()
_known: OrderedDict[tuple[int, ...], dict[str, int | None]] = OrderedDict()


def identity(fd: int) -> tuple[int, ...]:
    """The identity of the open file ``fd``: any rewrite or replacement changes it."""
    info = os.fstat(fd)
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


def known(file: tuple[int, ...], hashes: list[str]) -> dict[str, int | None] | None:
    """Tensor hash -> offset (None: not stored as it is) for every one of ``hashes`` in the file
    of identity ``file``, or None unless all of them are remembered."""
    with _lock:
        offsets = _known.get(file)
        if offsets is None or any(digest not in offsets for digest in hashes):
            return None
        _known.move_to_end(file)
        return {digest: offsets[digest] for digest in hashes}


def remember(file: tuple[int, ...], offsets: dict[str, int | None]) -> None:
    """Keep ``offsets`` (hash -> offset or None) found in the file of identity ``file``."""
    with _lock:
        _known.setdefault(file, {}).update(offsets)
        _known.move_to_end(file)
        while len(_known) > LIMIT:
            _known.popitem(last=False)


def forget() -> None:
    """Drop everything remembered (tests; a forked child keeps what its parent found: still true)."""
    with _lock:
        _known.clear()

"""The whole-file checksum of a snapshot file, in its HDF5 user block.

The HDF5 user block (ignored by HDF5 readers) holds a BLAKE3 checksum of every byte after its
first line, so verify detects a flipped byte anywhere in the file, not only inside a tensor.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import blake3

from ...errors import UnsafeSnapshotError
from .h5_open import open_checked

USERBLOCK_SIZE = 512
CHECKSUM_MAGIC = b"mvc-checksum blake3 "
CHECKSUM_LINE = len(CHECKSUM_MAGIC) + 64 + 1  # magic, hex digest, newline: every byte after it is covered
# The user block's second line on a loose snapshot (written by a commit, tensors stored as they are):
# packing (``gc --repack``, the automatic pack) codes such a file and writes it without this line.
LOOSE_MARK = b"mvc-loose\n"


# Bytes hashed per step of a map: each step's pages are given back once hashed (they stay in the
# page cache), so checksumming a snapshot does not count the whole file in this process's memory.
_DIGEST_STEP = 16 << 20


def body_digest(handle, size: int) -> str:
    # Hashing a memory map reads the file once, without copying it into Python memory.
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO if size >= 1 << 22 else 1)
    if size <= CHECKSUM_LINE:
        return hasher.hexdigest()
    with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)
        try:
            for start in range(CHECKSUM_LINE, size, _DIGEST_STEP):
                step = view[start:start + _DIGEST_STEP]
                hasher.update(step)
                step.release()
                if hasattr(mapped, "madvise"):  # not on every platform
                    mapped.madvise(mmap.MADV_DONTNEED)
        finally:
            view.release()
    return hasher.hexdigest()


def is_loose(path: Path) -> bool:
    """True when the snapshot file at ``path`` is loose (its user block's second line is
    :data:`LOOSE_MARK`): a commit wrote its tensors as they are and no pack has coded them yet."""
    try:  # a planted FIFO or symlink is not a loose file (and must not block the scan)
        fd = open_checked(path)
    except UnsafeSnapshotError:
        return False
    try:
        head = os.pread(fd, CHECKSUM_LINE + len(LOOSE_MARK), 0)
    finally:
        os.close(fd)
    return head.startswith(CHECKSUM_MAGIC) and head[CHECKSUM_LINE:] == LOOSE_MARK


def check_file_checksum(path: Path) -> bool | None:
    """True when the file's bytes match the checksum in its user block, False when they do not,
    None when the file has no checksum (written without one)."""
    with open(path, "rb") as handle:
        head = handle.read(USERBLOCK_SIZE)
        if not head.startswith(CHECKSUM_MAGIC):
            return None if head[:8] == b"\x89HDF\r\n\x1a\n" else False
        stored = head[len(CHECKSUM_MAGIC):len(CHECKSUM_MAGIC) + 64].decode("ascii", "replace")
        if head[CHECKSUM_LINE - 1:CHECKSUM_LINE] != b"\n":  # the line's own last byte is fixed: check it too
            return False
        return body_digest(handle, os.fstat(handle.fileno()).st_size) == stored

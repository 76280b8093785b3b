"""The whole-file checksum of a snapshot file, in its HDF5 user block.

The HDF5 user block (ignored by HDF5 readers) holds a checksum of every byte after its first
line, so verify detects a flipped byte anywhere in the file, not only inside a tensor. Two kinds
(docs/FORMAT.md): ``blake3``, the BLAKE3 hash of those bytes in one stream (packed files, and
every file written before block lists existed), and ``b3list`` (loose files, a commit's): the
BLAKE3 hash of the list of BLAKE3 hashes of the file's 1 MiB blocks. A block does not depend on
the bytes before it, so a commit hashes each block of a large tensor while it writes it (see
:mod:`.placed`) and only the few blocks that hold HDF5's metadata are hashed once the file is
closed: no second pass over the tensors on the commit's path.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import blake3

from ...core.hashing import hash_pool
from ...errors import UnsafeSnapshotError
from .h5_open import open_checked

USERBLOCK_SIZE = 512
CHECKSUM_MAGIC = b"mvc-checksum blake3 "
BLOCKS_MAGIC = b"mvc-checksum b3list "  # the same length: the line and what follows it keep their offsets
CHECKSUM_LINE = len(CHECKSUM_MAGIC) + 64 + 1  # magic, hex digest, newline: every byte after it is covered
# A b3list checksum's blocks: file offsets [k * BLOCK, (k + 1) * BLOCK), the first one starting
# after the checksum line and the last one ending at the end of the file.
BLOCK = 1 << 20
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


def block_span(index: int, size: int) -> tuple[int, int]:
    """The file offsets [start, end) that block ``index`` of a ``size``-byte file covers."""
    return max(index * BLOCK, CHECKSUM_LINE), min((index + 1) * BLOCK, size)


def block_count(size: int) -> int:
    """How many blocks a b3list checksum of a ``size``-byte file lists (0 when nothing follows the line)."""
    return -(-size // BLOCK) if size > CHECKSUM_LINE else 0


def blocks_digest(block_digests) -> str:
    """The b3list checksum (hex) of a file, from its blocks' 32-byte digests in file order."""
    hasher = blake3.blake3()
    for digest in block_digests:
        hasher.update(digest)
    return hasher.hexdigest()


def body_blocks_digest(handle, size: int) -> str:
    """The b3list checksum of the open file ``handle`` (``size`` bytes), every block read from it:
    a step of blocks at a time on the hashing threads (as fast as the one-stream kind with all
    cores), each step's pages given back once hashed (as in :func:`body_digest`)."""
    if size <= CHECKSUM_LINE:
        return blocks_digest([])
    pool = hash_pool()
    per_step = _DIGEST_STEP // BLOCK
    digests: list[bytes] = []
    with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)

        def block_digest(index: int) -> bytes:
            block = view[slice(*block_span(index, size))]
            try:
                return blake3.blake3(block).digest()
            finally:
                block.release()

        try:
            for first in range(0, block_count(size), per_step):
                digests += pool.map(block_digest, range(first, min(first + per_step, block_count(size))))
                if hasattr(mapped, "madvise"):  # not on every platform
                    mapped.madvise(mmap.MADV_DONTNEED)
        finally:
            view.release()
    return blocks_digest(digests)


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
    return head.startswith((CHECKSUM_MAGIC, BLOCKS_MAGIC)) and head[CHECKSUM_LINE:] == LOOSE_MARK


def check_file_checksum(path: Path) -> bool | None:
    """True when the file's bytes match the checksum in its user block, False when they do not,
    None when the file has no checksum (written without one)."""
    with open(path, "rb") as handle:
        head = handle.read(USERBLOCK_SIZE)
        if not head.startswith((CHECKSUM_MAGIC, BLOCKS_MAGIC)):
            return None if head[:8] == b"\x89HDF\r\n\x1a\n" else False
        stored = head[len(CHECKSUM_MAGIC):len(CHECKSUM_MAGIC) + 64].decode("ascii", "replace")
        if head[CHECKSUM_LINE - 1:CHECKSUM_LINE] != b"\n":  # the line's own last byte is fixed: check it too
            return False
        digest = body_blocks_digest if head.startswith(BLOCKS_MAGIC) else body_digest
        return digest(handle, os.fstat(handle.fileno()).st_size) == stored

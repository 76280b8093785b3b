"""Tensor bytes written straight to their place in a snapshot file, and its checksum as they are written.

A loose commit's large tensors are stored as they are: HDF5 allocates each one's contiguous
dataset when it is created (and writes nothing there), and :class:`PlacedWrites` writes the bytes
at that offset itself, from worker threads, while the next tensors are hashed. Where the file
system allows it the bytes go with ``O_DIRECT`` (through a small reused, aligned buffer): they do
not pass through the page cache, so a commit neither waits for fresh page-cache pages (on a VM
whose memory the host backs lazily, writing 100 MB into new pages took 300-700 ms against 30 ms
into reused ones) nor leaves dirty pages for the fsync; the fsync before the rename still
decides durability. Elsewhere (tmpfs, or ``MVC_DIRECT_IO=0``) they go through the page cache,
each piece of 1 MiB or more handed to the disk as soon as it is written
(:func:`.atomic.start_range_writeback` of just that range: 95 against 114 ms median for a 100 MB
first commit, kicking the whole file every 16 MB as before, alternating in one process).

Three things keep the ``O_DIRECT`` writes at the disk's pace (ext4 here; 100 MB, alternating in one
process: 103-106 ms per first commit before, 95-99 after):

- each region is allocated (:func:`.atomic.allocate`) before its writes are queued: a direct write
  past the end of the file or into a hole allocates blocks and moves the file's end in the
  journal, one write at a time (a full disk is also met there, before anything is queued);
- writes of 2 MiB, not 8: the copy into the aligned buffer stays in the core's cache
  (raw, 100 MB: 58-64 ms against 79-84);
- a region's unaligned edges (a few KiB, through the page cache) are written by :meth:`PlacedWrites.wait`
  after the direct writes: a buffered write takes the file's lock exclusively, so it waited for
  every direct write in flight (4-10 ms each) and the ones queued behind it waited too.

A loose file's checksum (:mod:`.checksum`, kind ``b3list``) lists the BLAKE3 hashes of the
file's 1 MiB blocks. Every block lying inside a placed array is hashed from that array on the
hashing threads while the disk writes it (behind the tensor hashes a commit queued first, which
decide what is written next; pieces end at multiples of the block size); once the file is closed
:func:`loose_digest` hashes only the blocks left: those
holding HDF5's metadata, the small tensors HDF5 wrote and a region's first and last bytes, from
the arrays still held where they cover them, else read back from the file. No second pass over
the tensor bytes, and the result is what :func:`.checksum.body_blocks_digest` computes from the
finished file (a test checks both on real commits).

A streamed commit (a merge) keeps no whole version in memory: with ``held="writing"`` an array
is kept only while its writes and block hashes run (one array at a time: :meth:`PlacedWrites.add`
returns once they are done, so the stream's count of the arrays in flight includes it), and
the first and last bytes of every array (what could not be hashed while written:
the blocks it shares with its neighbours) are asked back into the page cache as soon as its
``O_DIRECT`` writes are done (:meth:`PlacedWrites.read_ahead`), so the checksum reads them from
memory the kernel holds, not from the disk.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

import blake3
import numpy as np

from ...core.hashing import hash_pool
from ...core.threads import thread_pool
from .atomic import allocate, start_range_writeback
from .checksum import BLOCK, CHECKSUM_LINE, block_count, block_span, blocks_digest

# Tensors at least this large are written at their place; smaller ones go through HDF5 (a region
# costs a dataset with early allocation and a hand-off; below this HDF5's own write is as fast).
PLACED_MIN_BYTES = 256 << 10
_BLOCK = 4096  # O_DIRECT offsets, lengths and buffer addresses are multiples of this
_CHUNK = 2 << 20  # bytes per write call (O_DIRECT: copied into an aligned buffer); a multiple of BLOCK
# Writes in flight: the device keeps some queued while a writer waits for a core to copy its next
# chunk (a 100 MB first commit, alternating, two runs of 11: 88.9 and 91.9 ms with 4 writers,
# 96.5 and 103.9 ms with 2; 6 were no better).
_WRITERS = 4
_READ_STEP = 16 << 20
_READ_AHEAD_STEP = 1 << 20  # the kernel reads at most its read-ahead window (often 128 KiB-8 MiB) per call
_WRITEBACK_BYTES = 1 << 20  # through the page cache: a piece this large is handed to the disk once written


def direct_io_enabled() -> bool:
    """``MVC_DIRECT_IO=0`` writes placed tensors through the page cache (the default uses
    ``O_DIRECT`` where the file system accepts it)."""
    return os.environ.get("MVC_DIRECT_IO", "1").strip().lower() not in {"0", "off", "false", "no"}


_BUFFERS: list[mmap.mmap] = []  # aligned, already-touched buffers, reused by every commit
_BUFFERS_LOCK = threading.Lock()
_BUFFERS_PID = os.getpid()


def _submit(function, *args, pool: ThreadPoolExecutor | None = None) -> Future:
    """``function(*args)`` on the writer threads (or ``pool``; made again in a forked child); run
    here once the interpreter is shutting down (its thread pools take no new work then)."""
    try:
        return (pool or thread_pool("place", _WRITERS)).submit(function, *args)
    except RuntimeError:
        done: Future = Future()
        try:
            done.set_result(function(*args))
        except BaseException as exc:
            done.set_exception(exc)
        return done


@contextlib.contextmanager
def _aligned_buffer():
    global _BUFFERS, _BUFFERS_LOCK, _BUFFERS_PID
    if _BUFFERS_PID != os.getpid():  # a forked child: the lock may have been held by a parent's thread
        _BUFFERS, _BUFFERS_LOCK, _BUFFERS_PID = [], threading.Lock(), os.getpid()
    with _BUFFERS_LOCK:
        buffer = _BUFFERS.pop() if _BUFFERS else None
    if buffer is None:
        buffer = mmap.mmap(-1, _CHUNK)  # anonymous maps are page-aligned
    try:
        yield buffer
    finally:
        with _BUFFERS_LOCK:
            if len(_BUFFERS) < _WRITERS:
                _BUFFERS.append(buffer)


def _pieces(start: int, end: int):
    """[start, end) cut at the multiples of ``_CHUNK``: no block of the checksum straddles two pieces."""
    while start < end:
        cut = min(end, (start // _CHUNK + 1) * _CHUNK)
        yield start, cut
        start = cut


def _inner_blocks(offset: int, length: int) -> range:
    """The checksum blocks lying wholly inside file offsets [offset, offset + length)."""
    return range(-(-offset // BLOCK), (offset + length) // BLOCK)


class PlacedWrites:
    """Writes arrays at given offsets of the file at ``path`` (see the module docstring).

    :meth:`add` returns at once (held "all", below); :meth:`wait` raises the first error of a write. The arrays
    must stay unchanged until :meth:`wait` and :func:`loose_digest` are done. ``held``: "all"
    (the caller holds every array until the checksum) or "writing" (a streamed commit: this object
    keeps an array until its writes and block hashes are done, then drops it; :meth:`add` returns
    only then, so the caller's count of the arrays in flight includes the one being written).
    ``blocks`` holds, once :meth:`wait` returned, the checksum block hashes the writers computed.
    """

    def __init__(self, path: Path, direct: bool | None = None, held: str = "all") -> None:
        self.path = path
        # "all": the checksum takes the blocks not hashed while written (a region's first and
        # last bytes) from the arrays; "writing": from an array still being written, the others'
        # are read back from the page cache (see the module docstring). Holding the last array
        # until the checksum instead kept one more tensor alive while the next was computed
        # (peak RSS growth of a 5 x 100 MB merge 0.80 -> 0.94 of the model). Measured on a 5 x 100 MB merge (loaded
        # machine, when the checksum still read whole regions back): O_DIRECT writes plus that
        # read back took ~110 + 90 ms, writes into fresh page-cache pages ~220-280 ms plus a
        # 20 ms read back, so both go direct.
        if held not in ("all", "writing"):
            raise ValueError(f"held must be 'all' or 'writing', not {held!r}")
        self.held = held
        self.regions: list[tuple[int, memoryview]] = []
        self._regions_lock = threading.Lock()  # held='writing': the writers drop regions once written
        self.spans: list[tuple[int, int]] = []  # (offset, length) of every placed write, held or not
        self.blocks: dict[int, bytes] = {}  # checksum block index -> BLAKE3 digest, filled by the writers
        self.promised: set[int] = set()  # the blocks the writers will hash (see loose_digest)
        self._fd = os.open(path, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        self._direct_fd: int | None = None
        if (direct_io_enabled() if direct is None else direct) and hasattr(os, "O_DIRECT"):
            with contextlib.suppress(OSError):  # EINVAL where the file system has no O_DIRECT (tmpfs...)
                self._direct_fd = os.open(path, os.O_WRONLY | os.O_DIRECT | getattr(os, "O_NOFOLLOW", 0)
                                          | getattr(os, "O_CLOEXEC", 0))
        self._direct_fds = [] if self._direct_fd is None else [self._direct_fd]  # closed by close()
        self._futures: list[Future] = []
        self._edges: list[tuple[memoryview, int]] = []  # (bytes, offset) written by wait()

    @property
    def direct(self) -> bool:
        return self._direct_fd is not None

    def add(self, offset: int, array: np.ndarray) -> None:
        """Write ``array``'s bytes (C order) at ``offset`` of the file, in a worker thread."""
        view = memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
        allocate(self._fd, offset, len(view))  # (a full disk fails here, before any write is queued)
        region = (offset, view)
        with self._regions_lock:
            self.regions = [*self.regions, region]  # a new list: loose_digest reads it from another thread
        self.spans.append((offset, len(view)))
        if self._direct_fd is None:
            pieces = [(start, end, False) for start, end in _pieces(offset, offset + len(view))]
        else:
            start = min(-(-offset // _BLOCK) * _BLOCK, offset + len(view))  # the aligned middle goes direct
            end = max(start, (offset + len(view)) // _BLOCK * _BLOCK)
            pieces = [(a, b, True) for a, b in _pieces(start, end)]
            pieces += [(a, b, False) for a, b in ((offset, start), (end, offset + len(view))) if b > a]
        futures: list[Future] = []
        for start, end, direct in pieces:
            if self._direct_fd is not None and not direct:
                # A region's unaligned edges go through the page cache, which takes the file's lock
                # exclusively and so waits for every O_DIRECT write in flight while the ones queued
                # behind it wait too: written by wait(), after the direct writes.
                self._edges.append((view[start - offset:end - offset], start))
                continue
            futures.append(_submit(self._write_piece, view[start - offset:end - offset], start, direct))
        # The blocks inside the array are hashed from it on the hashing threads, queued behind the
        # tensor hashes a commit started first: those decide what is written next, so they go first.
        for start, end, _direct in pieces:
            if _inner_blocks(start, end - start):
                self.promised.update(_inner_blocks(start, end - start))
                futures.append(_submit(self._hash_blocks, view[start - offset:end - offset], start, pool=hash_pool()))
        self._futures.extend(futures)
        if self.held == "writing":
            # Returned only once written and let go: a streamed commit counts this array among
            # those in flight until add returns. (Waiting for the one before instead, with the
            # region dropped by a callback after its last write, kept a fourth 2 MiB average alive
            # in test_streaming_never_holds_the_whole_average when the writes were slow.)
            self.wait()
            with self._regions_lock:  # dropped: the checksum reads these bytes from the file now
                self.regions = [kept for kept in self.regions if kept is not region]
            inner = _inner_blocks(offset, len(view))
            edges = [(offset, inner.start * BLOCK), (inner.stop * BLOCK, offset + len(view))] if inner \
                else [(offset, offset + len(view))]
            if self.direct:  # the edges the checksum will read, back in the page cache
                for start, end in edges:
                    if end > start:
                        self.read_ahead(start, end - start)

    def _write_piece(self, piece: memoryview, offset: int, direct: bool) -> None:
        """Write ``piece`` at ``offset`` (``direct``: with O_DIRECT where it still works)."""
        if not (direct and self._write_direct(piece, offset)):
            self._write_buffered(offset, piece)

    def _hash_blocks(self, piece: memoryview, offset: int) -> None:
        """Hash the checksum blocks lying inside ``piece`` (the bytes written at ``offset``)."""
        for index in _inner_blocks(offset, len(piece)):
            start = index * BLOCK - offset
            self.blocks[index] = blake3.blake3(piece[start:start + BLOCK]).digest()

    def _write_direct(self, piece: memoryview, offset: int) -> bool:
        """Write ``piece`` with O_DIRECT; False when this file's writes must go through the page cache."""
        fd = self._direct_fd
        if fd is None:
            return False
        with _aligned_buffer() as buffer:
            staging = np.frombuffer(buffer, np.uint8, len(piece))
            staging[:] = np.frombuffer(piece, np.uint8)  # a copy that releases the GIL
            try:
                _write_all(fd, memoryview(buffer)[:len(piece)], offset)
                return True
            except OSError as exc:
                # A file system that opens with O_DIRECT but refuses these writes (alignment
                # rules of its own): this file's writes go through the page cache from here on.
                if exc.errno != errno.EINVAL:
                    raise
                self._direct_fd = None
                return False

    def _write_buffered(self, offset: int, view: memoryview) -> None:
        _write_all(self._fd, view, offset)
        if len(view) >= _WRITEBACK_BYTES:  # the disk starts on these pages now, not at the fsync
            start_range_writeback(self._fd, offset, len(view))

    def read_ahead(self, offset: int, length: int) -> None:
        """Ask the kernel to read ``length`` bytes at ``offset`` back into the page cache in the
        background (a region's edges written ``O_DIRECT`` that the checksum will read, once not held)."""
        fd = self._fd
        if fd is not None and hasattr(os, "posix_fadvise"):
            with contextlib.suppress(OSError):  # a descriptor closed meanwhile: nothing to read ahead
                for start in range(offset, offset + length, _READ_AHEAD_STEP):
                    os.posix_fadvise(fd, start, min(_READ_AHEAD_STEP, offset + length - start), os.POSIX_FADV_WILLNEED)

    def reserve(self, size: int) -> None:
        """Extend the file to ``size`` bytes (sparse) unless it is larger, and raise the error of a
        write that already failed: a file size limit is met here rather than by a later writer."""
        for future in self._futures:
            if future.done() and future.exception() is not None:
                self.wait()
        if os.fstat(self._fd).st_size < size:
            os.ftruncate(self._fd, size)

    def wait(self) -> None:
        """Wait for every write (and write the edges put off, see :meth:`add`); raise the first error."""
        futures, self._futures = self._futures, []
        wait(futures)
        for future in futures:
            future.result()
        edges, self._edges = self._edges, []
        for piece, offset in edges:
            self._write_buffered(offset, piece)

    def close(self) -> None:
        """Wait for the writes still running (their errors are dropped: the caller is failing) and
        close the descriptors."""
        with contextlib.suppress(BaseException):
            wait(self._futures)
        self._futures, self._edges = [], []
        for fd in {self._fd, *self._direct_fds}:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fd = self._direct_fd = None  # type: ignore[assignment]
        self._direct_fds = []


def _write_all(fd: int, view: memoryview, offset: int) -> None:
    while len(view):
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError(f"short write at offset {offset}")
        view, offset = view[written:], offset + written


def loose_digest(fd: int, size: int, writes: PlacedWrites | None) -> str:
    """The b3list checksum (hex) of the file open as ``fd`` (``size`` bytes, closed by HDF5).

    The blocks the writers of ``writes`` hash are taken as they computed them (this waits for
    those writes); the others are hashed here, from the regions ``writes`` still holds where they
    cover them (meanwhile: those writes need not be finished; a region it dropped was written
    first) and from ``fd`` elsewhere. Placed regions that overlap, start inside the checksum line
    or pass the end of the file (a bug) make every block read from ``fd`` once the writes are
    finished."""
    promised: set[int] = set()
    regions: list[tuple[int, memoryview]] = []
    if writes is not None:
        spans = sorted(writes.spans)
        ends = [offset + length for offset, length in spans]
        if all(offset >= CHECKSUM_LINE for offset, _ in spans) and all(end <= size for end in ends) \
                and all(ends[i] <= spans[i + 1][0] for i in range(len(spans) - 1)):
            promised, regions = writes.promised, sorted(writes.regions, key=lambda region: region[0])
        else:
            writes.wait()
    digests: dict[int, bytes] = {}
    first = 0
    for index in range(block_count(size)):
        if index not in promised:
            start, end = block_span(index, size)
            while first < len(regions) and regions[first][0] + len(regions[first][1]) <= start:
                first += 1
            digests[index] = _block_digest(fd, start, end, regions, first)
    if writes is not None:
        writes.wait()
        digests.update((index, writes.blocks[index]) for index in promised)
    return blocks_digest(digests[index] for index in range(block_count(size)))


def _block_digest(fd: int, start: int, end: int, regions: Sequence[tuple[int, memoryview]], first: int) -> bytes:
    """BLAKE3 of file offsets [start, end): bytes of ``regions`` (sorted, from index ``first``)
    taken from memory, the rest read from ``fd``."""
    hasher = blake3.blake3()
    position = start
    for offset, view in regions[first:]:
        if offset >= end:
            break
        low, high = max(offset, position), min(offset + len(view), end)
        if high > low:
            _hash_file(hasher, fd, position, low)
            hasher.update(view[low - offset:high - offset])
            position = high
    _hash_file(hasher, fd, position, end)
    return hasher.digest()


def _hash_file(hasher, fd: int, start: int, end: int) -> None:
    while start < end:
        data = os.pread(fd, min(_READ_STEP, end - start), start)
        if not data:
            raise OSError(f"the file ended at {start} of {end} bytes while its checksum was computed")
        hasher.update(data)
        start += len(data)

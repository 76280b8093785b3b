"""Tensor bytes written straight to their place in a snapshot file, and its checksum from memory.

A loose commit's large tensors are stored as they are: HDF5 allocates each one's contiguous
dataset when it is created (and writes nothing there), and :class:`PlacedWrites` writes the bytes
at that offset itself, from worker threads, while the next tensors are hashed. Where the file
system allows it the bytes go with ``O_DIRECT`` (through a small reused, aligned buffer): they do
not pass through the page cache, so a commit neither waits for fresh page-cache pages (on a VM
whose memory the host backs lazily, writing 100 MB into new pages took 300-700 ms against 30 ms
into reused ones) nor leaves dirty pages for the fsync; the fsync before the rename still
decides durability. Elsewhere (tmpfs, or ``MVC_DIRECT_IO=0``) they go through the page cache,
the disk asked to start writing them at once (:func:`.atomic.start_writeback`).

The whole-file checksum (:mod:`.checksum`) covers every byte after its line in file order. Since
the placed regions hold exactly the arrays still in memory, :func:`placed_digest` hashes those
from memory and reads only the rest of the file (HDF5's metadata and the small tensors HDF5
wrote): no second pass over the tensor bytes on disk. It gives the same digest as
:func:`.checksum.body_digest` over the finished file (a test checks both on real commits).

A streamed commit (a merge) keeps no whole version in memory: with ``held="last"`` only the
array placed last is kept for the checksum, each earlier one is dropped when the next is placed,
and every array is asked back into the page cache as soon as its ``O_DIRECT`` writes are done
(:meth:`PlacedWrites.read_ahead`), so the checksum reads the earlier regions from memory the
kernel holds, not from the disk, and hashes the last one (still being written) from the array.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, wait
from pathlib import Path

import blake3
import numpy as np

from ...core.threads import thread_pool
from .atomic import start_writeback
from .checksum import CHECKSUM_LINE

# Tensors at least this large are written at their place; smaller ones go through HDF5 (a region
# costs a dataset with early allocation and a hand-off; below this HDF5's own write is as fast).
PLACED_MIN_BYTES = 256 << 10
_BLOCK = 4096  # O_DIRECT offsets, lengths and buffer addresses are multiples of this
_CHUNK = 8 << 20  # bytes copied into an aligned buffer and written per O_DIRECT call
_WRITERS = 2  # one copies the next chunk while the other's write is in the device
_READ_STEP = 16 << 20
_READ_AHEAD_STEP = 1 << 20  # the kernel reads at most its read-ahead window (often 128 KiB-8 MiB) per call
_WRITEBACK_BYTES = 16 << 20  # buffered fallback: start the disk writing every this many bytes


def direct_io_enabled() -> bool:
    """``MVC_DIRECT_IO=0`` writes placed tensors through the page cache (the default uses
    ``O_DIRECT`` where the file system accepts it)."""
    return os.environ.get("MVC_DIRECT_IO", "1").strip().lower() not in {"0", "off", "false", "no"}


_BUFFERS: list[mmap.mmap] = []  # aligned, already-touched buffers, reused by every commit
_BUFFERS_LOCK = threading.Lock()
_BUFFERS_PID = os.getpid()


def _submit(function, *args) -> Future:
    """``function(*args)`` on the writer threads (made again in a forked child); run here once
    the interpreter is shutting down (its thread pools take no new work then)."""
    try:
        return thread_pool("place", _WRITERS).submit(function, *args)
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


class PlacedWrites:
    """Writes arrays at given offsets of the file at ``path`` (see the module docstring).

    :meth:`add` returns at once; :meth:`wait` raises the first error of a write. The arrays
    must stay unchanged until :meth:`wait` and :func:`placed_digest` are done. ``held``: "all"
    (the caller holds every array until the checksum) or "last" (a streamed commit: this object
    keeps the array added last, and drops each earlier one once its writes are done).
    """

    def __init__(self, path: Path, direct: bool | None = None, held: str = "all") -> None:
        self.path = path
        # "all": the checksum hashes every placed array from memory (:func:`placed_digest`);
        # "last": only the last one, the others are read back from the page cache (see the module
        # docstring). Measured on a 5 x 100 MB merge (loaded machine): O_DIRECT writes plus that
        # read back took ~110 + 90 ms, writes into fresh page-cache pages ~220-280 ms plus a
        # 20 ms read back, so both go direct.
        if held not in ("all", "last"):
            raise ValueError(f"held must be 'all' or 'last', not {held!r}")
        self.held = held
        self.regions: list[tuple[int, memoryview]] = []
        self._fd = os.open(path, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        self._direct_fd: int | None = None
        if (direct_io_enabled() if direct is None else direct) and hasattr(os, "O_DIRECT"):
            with contextlib.suppress(OSError):  # EINVAL where the file system has no O_DIRECT (tmpfs...)
                self._direct_fd = os.open(path, os.O_WRONLY | os.O_DIRECT | getattr(os, "O_NOFOLLOW", 0)
                                          | getattr(os, "O_CLOEXEC", 0))
        self._direct_fds = [] if self._direct_fd is None else [self._direct_fd]  # closed by close()
        self._futures: list[Future] = []
        self._buffered = self._kicked = 0

    @property
    def direct(self) -> bool:
        return self._direct_fd is not None

    def add(self, offset: int, array: np.ndarray) -> None:
        """Write ``array``'s bytes (C order) at ``offset`` of the file, in a worker thread."""
        view = memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
        if self.held == "last" and self.regions:
            # The earlier array is dropped (its writes end first: the caller no longer holds it).
            self.wait()
            self.regions.clear()
        self.regions.append((offset, view))
        futures: list[Future] = []
        if self._direct_fd is None:
            futures.append(_submit(self._write_buffered, offset, view))
        else:
            start = min(-(-offset // _BLOCK) * _BLOCK, offset + len(view))  # the aligned middle goes direct
            end = max(start, (offset + len(view)) // _BLOCK * _BLOCK)
            if start > offset:
                futures.append(_submit(_write_all, self._fd, view[:start - offset], offset))
            if end < offset + len(view):
                futures.append(_submit(_write_all, self._fd, view[end - offset:], end))
            for chunk in range(start, end, _CHUNK):
                piece = view[chunk - offset:min(end, chunk + _CHUNK) - offset]
                futures.append(_submit(self._write_direct, piece, chunk))
        self._futures.extend(futures)
        if self.held == "last" and self.direct:
            _when_done(futures, lambda: self.read_ahead(offset, len(view)))

    def _write_direct(self, piece: memoryview, offset: int) -> None:
        fd = self._direct_fd
        if fd is not None:
            with _aligned_buffer() as buffer:
                staging = np.frombuffer(buffer, np.uint8, len(piece))
                staging[:] = np.frombuffer(piece, np.uint8)  # a copy that releases the GIL
                try:
                    _write_all(fd, memoryview(buffer)[:len(piece)], offset)
                    return
                except OSError as exc:
                    # A file system that opens with O_DIRECT but refuses these writes (alignment
                    # rules of its own): this file's writes go through the page cache from here on.
                    if exc.errno != errno.EINVAL:
                        raise
                    self._direct_fd = None
        self._write_buffered(offset, piece)

    def _write_buffered(self, offset: int, view: memoryview) -> None:
        _write_all(self._fd, view, offset)
        self._buffered += len(view)
        if self._buffered - self._kicked >= _WRITEBACK_BYTES:
            self._kicked = self._buffered
            start_writeback(self.path)

    def read_ahead(self, offset: int, length: int) -> None:
        """Ask the kernel to read ``length`` bytes at ``offset`` back into the page cache in the
        background (a region written ``O_DIRECT`` that the checksum may read, once not held)."""
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
        """Wait for every write; raise the first error."""
        futures, self._futures = self._futures, []
        wait(futures)
        for future in futures:
            future.result()

    def close(self) -> None:
        """Wait for the writes still running (their errors are dropped: the caller is failing) and
        close the descriptors."""
        with contextlib.suppress(BaseException):
            wait(self._futures)
        self._futures = []
        for fd in {self._fd, *self._direct_fds}:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fd = self._direct_fd = None  # type: ignore[assignment]
        self._direct_fds = []


def _when_done(futures: Sequence[Future], then: Callable[[], None]) -> None:
    """Call ``then()`` (on the thread that finishes the last of ``futures``) once every one of
    them has succeeded; not at all if one failed or was cancelled."""
    state = {"left": len(futures), "failed": False}
    lock = threading.Lock()

    def one_done(future: Future) -> None:
        with lock:
            state["left"] -= 1
            state["failed"] = state["failed"] or future.cancelled() or future.exception() is not None
            run = state["left"] == 0 and not state["failed"]
        if run:
            then()

    for future in futures:
        future.add_done_callback(one_done)


def _write_all(fd: int, view: memoryview, offset: int) -> None:
    while len(view):
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError(f"short write at offset {offset}")
        view, offset = view[written:], offset + written


def placed_digest(fd: int, size: int, regions: Sequence[tuple[int, memoryview]]) -> str | None:
    """BLAKE3 of the file's bytes after the checksum line (``size`` bytes in all), the ``regions``
    (offset, bytes written there) taken from memory, the rest read from ``fd``. None when the
    regions do not lie apart inside the body (the caller then reads the whole file)."""
    placed = sorted(regions, key=lambda region: region[0])
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO if size >= 1 << 22 else 1)
    position = CHECKSUM_LINE
    for offset, view in placed:
        if offset < position or offset + len(view) > size:
            return None
        position = offset + len(view)
    if size <= CHECKSUM_LINE:
        return hasher.hexdigest()
    # The rest is read through a map of the file (no copy into Python memory), its pages given back
    # step by step (they stay in the page cache) so a large read-back does not count in this
    # process's memory.
    with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as mapped:
        position = CHECKSUM_LINE
        for offset, view in placed:
            _hash_mapped(hasher, mapped, position, offset)
            if len(view):
                hasher.update(view)
            position = offset + len(view)
        _hash_mapped(hasher, mapped, position, size)
    return hasher.hexdigest()


def _hash_mapped(hasher, mapped: mmap.mmap, start: int, end: int) -> None:
    whole = memoryview(mapped)
    try:
        for begin in range(start, end, _READ_STEP):
            stop = min(begin + _READ_STEP, end)
            step = whole[begin:stop]
            hasher.update(step)
            step.release()
            if hasattr(mapped, "madvise"):  # not on every platform
                first = begin // mmap.PAGESIZE * mmap.PAGESIZE
                with contextlib.suppress(OSError, ValueError):
                    mapped.madvise(mmap.MADV_DONTNEED, first, stop - first)
    finally:
        whole.release()

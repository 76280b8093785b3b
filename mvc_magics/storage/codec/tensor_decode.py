"""Reading coded tensors out of open snapshot files: the chain walk and the bytes it decodes.

The coded bytes of a dataset are read through a read-only memory map of the file HDF5 already has
open (the same descriptor, so the same file even if a repack renamed a new one over it since):
raw planes are interleaved and zstd frames decompressed straight from the page cache, without
first copying the whole dataset into memory (one pass over the bytes instead of two). The map
covers only what HDF5 says the contiguous dataset occupies, checked against the file's size; when
HDF5 gives no offset (or a driver without a descriptor) the bytes are read with ``read_direct``.
Files in a store are written once and replaced by rename, never truncated, so a mapped file keeps
its bytes while it is read.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
import time
from collections.abc import Callable

import h5py
import numpy as np

from ...core.hashing import tensor_hash
from ...core.manifest import ManifestEntry, dtype_from_name, is_hash
from ...core.threads import thread_pool
from ...errors import IntegrityError
from ..files.h5_values import read_attr, read_text_attr
from . import coding
from .budget import check_read
from .coding import aligned_empty

CODING_ATTR = "mvc_coding"
PLANES_ATTR = "mvc_planes"
BASE_ATTR = "mvc_base"
BASE2_ATTR = "mvc_base2"  # a second-order delta's second base: must be its base's own base
SLOPE_ATTR = "mvc_slope"  # a lin+planes+zstd delta's slope, in quarters (coding.SLOPES)
DEPTH_ATTR = "mvc_depth"
# The most deltas one chain may hold: writers never make more (MVC_DELTA_DEPTH is capped at it,
# storage/snapshots/deltas.max_depth), readers refuse more (a cycle, or a file crafted to make a
# small read decode many levels).
MAX_CHAIN = 16
# Mapped pages read are given back to the page cache after this many bytes (see FileMaps._release).
_RELEASE_BYTES = 32 << 20
# Longest a map closed later waits for the views of it to be dropped (seconds).
_CLOSE_WAIT = 1.0

Level = coding.Level


def _prefer_huge_pages(mapped: mmap.mmap | None) -> None:
    """Ask for the file's pages read through this map to be cached in 2 MB folios where they are
    not cached yet (a loose file written with ``O_DIRECT`` is not): mapped that way, every later
    checkout of it takes ~40% fewer page faults (610 against 1,013 for 100 MB). Only advice: a
    kernel without it, or a file already cached, reads as before."""
    if mapped is not None and hasattr(mmap, "MADV_HUGEPAGE"):
        with contextlib.suppress(OSError, ValueError):
            mapped.madvise(mmap.MADV_HUGEPAGE)


class FileMaps:
    """Read-only memory maps of open HDF5 files, one per file, closed together."""

    def __init__(self) -> None:
        self._maps: dict[object, mmap.mmap | None] = {}  # by HDF5's descriptor (or a caller's key)
        self._lock = threading.Lock()  # readers decode from worker threads
        self._handed = 0  # bytes of views handed out since the mapped pages were last given back
        self._bases: dict[object, int] = {}  # the address of each map, by key (release of a span)

    def stored_bytes(self, dataset: h5py.Dataset, stored: int) -> np.ndarray:
        """The ``stored`` bytes of a contiguous uint8 dataset: a view of the file's map when it can
        be mapped, else a copy read by HDF5."""
        view = self.view(dataset, stored)
        if view is not None:
            return view
        data = np.empty(stored, dtype=np.uint8)
        if stored:
            dataset.read_direct(data)
        return data

    def view(self, dataset: h5py.Dataset, stored: int) -> np.ndarray | None:
        """The ``stored`` bytes of a contiguous dataset as a read-only view of its file's map, or
        None when it cannot be mapped (no offset, no descriptor, outside the file)."""
        try:
            offset = dataset.id.get_offset()
        except (OSError, ValueError, RuntimeError, TypeError):
            return None
        if offset is None:
            return None
        self.handed(stored)
        mapped = self.whole(dataset.file)
        if mapped is None or offset < 0 or offset + stored > len(mapped):
            return None  # HDF5's offset points outside the file: read through HDF5, which checks
        return np.frombuffer(mapped, dtype=np.uint8, count=stored, offset=offset)

    def handed(self, nbytes: int) -> None:
        """Count ``nbytes`` of mapped pages read; past :data:`_RELEASE_BYTES` they are given back."""
        with self._lock:
            self._handed += nbytes
            if self._handed > _RELEASE_BYTES:
                self._release()

    def whole(self, file: h5py.File) -> mmap.mmap | None:
        """The read-only map of the whole of ``file`` (through the descriptor HDF5 reads it with),
        made on first use; None when it cannot be mapped (no descriptor, an empty file)."""
        try:
            handle = file.id.get_vfd_handle()
        except (OSError, ValueError, RuntimeError, TypeError):
            return None
        if not isinstance(handle, int):
            return None
        return self.map_descriptor(handle, handle)

    def map_descriptor(self, key: object, fd: int) -> mmap.mmap | None:
        """The read-only map of the whole file open as ``fd``, kept under ``key`` (made on first
        use: the map holds a descriptor of its own, so ``fd`` may be closed); None when it cannot
        be mapped (an empty file)."""
        with self._lock:
            if key not in self._maps:
                try:
                    size = os.fstat(fd).st_size
                    self._maps[key] = mmap.mmap(fd, size, access=mmap.ACCESS_READ) if size else None
                except (OSError, ValueError):
                    self._maps[key] = None
                _prefer_huge_pages(self._maps[key])
                if self._maps[key] is not None:
                    self._bases[key] = np.frombuffer(self._maps[key], np.uint8, count=1).ctypes.data
            return self._maps[key]

    def release(self, span: np.ndarray | None = None) -> None:
        """Give back every mapped page read so far, now (see :meth:`_release`); with ``span`` (a part
        of a view of one of these maps: a reader done with the start of a tensor), only the whole
        pages inside it."""
        with self._lock:
            if span is None:
                self._release()
            else:
                self._release_span(span)

    def _release_span(self, span: np.ndarray) -> None:
        start, page = span.ctypes.data, mmap.PAGESIZE
        for handle, mapped in self._maps.items():
            base = self._bases.get(handle, -1)
            if mapped is None or not base <= start < base + len(mapped):
                continue
            first = -(-(start - base) // page) * page
            last = min(start + span.nbytes - base, len(mapped)) // page * page
            if last > first and hasattr(mapped, "madvise"):
                with contextlib.suppress(OSError, ValueError):
                    mapped.madvise(mmap.MADV_DONTNEED, first, last - first)
            return

    def _release(self) -> None:
        """Give the pages read so far back (they stay in the page cache): a page of a map, once
        read, counts in this process's memory until the map is closed, so a reader that goes
        through several files (a merge reads every input) would otherwise hold all of them. A view
        still being decoded only faults its pages in again from the cache."""
        self._handed = 0
        for mapped in self._maps.values():
            if mapped is not None and hasattr(mapped, "madvise"):
                try:
                    mapped.madvise(mmap.MADV_DONTNEED)
                except (OSError, ValueError):
                    pass

    def close(self, later: bool = False) -> None:
        """Unmap every file (a map a view still references is unmapped when the view is freed).
        ``later``: on a worker thread, once the views handed out are dropped: unmapping 100 MB costs
        ~2 ms of page-table work the caller (a checkout) need not wait for. The maps are kept
        referenced until they are closed there, so the caller dropping its views never unmaps."""
        maps = FileMaps()
        maps._maps = dict(self._maps)
        self._maps.clear()
        self._bases.clear()
        if not later:
            maps._close_free()
        elif maps._maps:
            thread_pool("unmap", 1).submit(maps._close_when_free)

    def _close_free(self) -> bool:
        """Close every map no view references any more; True when none is left open."""
        left = False
        for mapped in self._maps.values():
            if mapped is not None and not mapped.closed:
                try:
                    mapped.close()
                except BufferError:  # a view is still referenced (an error's traceback): unmapped when freed
                    left = True
        return not left

    def _close_when_free(self) -> None:
        deadline = time.monotonic() + _CLOSE_WAIT
        while not self._close_free() and time.monotonic() < deadline:
            time.sleep(0.002)
        self._maps.clear()  # a view kept longer (a traceback) unmaps its map when it is freed


def delta_base(dataset: h5py.Dataset) -> tuple[str | None, int]:
    """(``<object>/<hash>`` of a delta-coded tensor's base, its chain depth), or (None, 0) for a
    tensor stored whole or coded alone."""
    if CODING_ATTR not in dataset.attrs or BASE_ATTR not in dataset.attrs:
        return None, 0
    return read_text_attr(dataset, BASE_ATTR), int(read_attr(dataset, DEPTH_ATTR, 1))


def _text(dataset: h5py.Dataset, name: str) -> str:
    return str(read_text_attr(dataset, name))  # "None" when absent: never a valid coding or reference


def slope_of(dataset: h5py.Dataset, where: str) -> int:
    """The slope of a ``lin+planes+zstd`` dataset (untrusted: an integer in ``coding.SLOPES``)."""
    value = read_attr(dataset, SLOPE_ATTR, None)
    try:
        slope = int(np.asarray(value).item()) if value is not None and np.asarray(value).dtype.kind in "iu" else None
    except (ValueError, TypeError):
        slope = None
    if slope not in coding.SLOPES:
        raise IntegrityError(f"{where}: a second-order delta without a valid slope, refused")
    return slope


def coded_level(entry: ManifestEntry, dataset: h5py.Dataset, where: str, maps: FileMaps
                ) -> tuple[str, np.ndarray, np.ndarray]:
    """(coding, coded bytes, validated plane table) of one coded dataset (untrusted)."""
    name = _text(dataset, CODING_ATTR)
    if name not in coding.CODINGS:
        raise IntegrityError(f"{where}: unknown coding {name[:40]!r} (written by a newer mvc_magics?)")
    if dataset.dtype != np.uint8 or dataset.ndim != 1:
        raise IntegrityError(f"{where}: coded bytes are not a 1-D uint8 dataset")
    stored = int(dataset.shape[0])
    if dataset.id.get_storage_size() != stored:
        raise IntegrityError(f"{where}: stored bytes do not match the coded length")
    itemsize = dtype_from_name(entry.dtype).itemsize
    if name in (coding.CODING_SUB, *coding.SECOND_ORDER) and coding.delta_coding(itemsize) != coding.CODING_SUB:
        raise IntegrityError(f"{where}: an integer-difference delta of {itemsize}-byte elements, refused")
    table = coding.check_table(read_attr(dataset, PLANES_ATTR), itemsize, stored, entry.nbytes)
    return name, maps.stored_bytes(dataset, stored), table


def read_coded(entry: ManifestEntry, dataset: h5py.Dataset, where: str, maps: FileMaps,
               find: Callable[[ManifestEntry, str], h5py.Dataset],
               read_whole: Callable[[ManifestEntry, h5py.Dataset, str], np.ndarray]) -> np.ndarray:
    """Decode a coded tensor, a delta with every base down to the tensor stored whole (``find``
    gives a base's checked dataset, ``read_whole`` reads a tensor stored as it is).

    The chain is walked first (attributes and mapped bytes only: nothing decoded), at most
    ``MAX_CHAIN`` deltas; then decoded level by level in one buffer, each base's hash checked
    before the delta above it is applied (:func:`.coding.decode_chain`)."""
    levels: list[Level] = []
    bases: list[ManifestEntry] = [entry]  # the entry of each level, top down
    current = entry
    expected_base: str | None = None  # what the next level's base must be (a second-order delta's)
    while True:
        if CODING_ATTR not in dataset.attrs:  # the chain ends on a tensor stored as it is
            if expected_base is not None:
                raise IntegrityError(f"{where}: a second-order delta on a tensor stored whole, refused")
            whole = read_whole(current, dataset, where).reshape(-1).view(np.uint8)
            levels.append((whole, None, None, coding.SLOPE_ONE))
            break
        name, data, table = coded_level(current, dataset, where, maps)
        if not levels:  # the top level checked: its declared size against the memory there is, before decoding
            check_read(entry.nbytes, where, coded=True)
        levels.append((data, table, name,
                       slope_of(dataset, where) if name == coding.CODING_LIN else coding.SLOPE_ONE))
        if expected_base is not None and _text(dataset, BASE_ATTR) != expected_base:
            raise IntegrityError(f"{where}: a second-order delta's second base is not its base's base, refused")
        if name == coding.CODING_PLANES:
            break
        if len(levels) > MAX_CHAIN:
            raise IntegrityError(f"{where}: delta chain longer than {MAX_CHAIN} (the most any writer makes; "
                                 "a cycle?), refused")
        reference = _text(dataset, BASE_ATTR)
        expected_base = _text(dataset, BASE2_ATTR) if name in coding.SECOND_ORDER else None
        object_id, _, digest = reference.partition("/")
        if not is_hash(object_id) or not is_hash(digest):
            raise IntegrityError(f"{where}: malformed delta base reference")
        current = ManifestEntry(entry.name, entry.dtype, entry.shape, digest, object_id, entry.nbytes)
        bases.append(current)
        try:
            dataset = find(current, where)
        except IntegrityError as exc:
            raise IntegrityError(f"{where}: its delta base {object_id[:12]}/{digest[:12]} is damaged "
                                 f"({str(exc).split(': ', 1)[-1]})") from exc
    dtype = dtype_from_name(entry.dtype)
    if len(levels) == 1:
        out = aligned_empty((entry.nbytes,), np.dtype(np.uint8))
        coding.decode_into(out, levels[0][0], levels[0][1])
        return out.view(dtype).reshape(entry.shape)
    # A base stored whole is read into the buffer the chain is decoded in: no second copy.
    out = levels[-1][0] if levels[-1][1] is None else aligned_empty((entry.nbytes,), np.dtype(np.uint8))

    def check(level: int, value: np.ndarray) -> None:
        base = bases[level]
        if tensor_hash(value.view(dtype).reshape(entry.shape)) != base.hash:
            raise IntegrityError(f"{where}: its delta base {base.object[:12]}/{base.hash[:12]} is damaged "
                                 "(content does not match its hash)")

    coding.decode_chain(out, levels, dtype.itemsize, check)
    return out.view(dtype).reshape(entry.shape)

"""Tensors stored as they are, read straight from the file's map: a checkout's fast path.

A commit writes each new tensor loose (uncoded, one contiguous dataset), so reading it back needs
only where its bytes start. HDF5's low-level calls answer that in ~10 µs a tensor (a link lookup,
an open, an attribute test, the storage size and offset), against ~120 µs for the checked,
high-level path: for ResNet50's 320 tensors, 4 ms instead of 40. Nothing here decides what is
loaded: the bytes at that offset are hashed against the manifest (which the version id covers), so
a crafted offset, size or layout can only make the hash fail or the tensor go to the checked path
(:meth:`.snapshot.TensorReader.read`), never load other bytes. The view never reaches outside the
map of the file itself (external or virtual storage has no offset in it: those go to the checked
path, which refuses them).

Several tensors are hashed a piece at a time by the caller's thread and one hashing thread per
other core (:mod:`.pieces`: they end together); a model whose one tensor holds most of the bytes
is hashed in batches, BLAKE3 running on every core for that tensor.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import h5py
import numpy as np

from ...core.hashing import hash_pool, shared_by_every_core, tensor_hash, tensor_hasher
from ...core.manifest import ManifestEntry, dtype_from_name
from ...core.threads import Task
from ...errors import IntegrityError, MVCError
from ..codec.budget import check_read
from ..codec.coding import aligned_empty
from ..codec.tensor_decode import CODING_ATTR, FileMaps
from ..files.h5_open import H5_READ_ERRORS, open_checked
from . import known_offsets
from .pieces import Pieces
from .recycled import RECYCLED

_CODING_NAME = CODING_ATTR.encode()
# Bytes of tensors hashed by one task: enough to make a task's cost (~20 µs) negligible, small
# enough that the hashing threads share the work of a model of a few large tensors evenly.
BATCH_BYTES = 8 << 20
# Bytes copied then hashed at a time when a tensor is copied out of the map: inside a core's L2
# (2 MiB here), and few enough pieces that the two hashing threads, which take the GIL back
# between each copy and each hash, rarely wait for it (Dense 31 MB checkout, alternating on a
# quiet machine: 256 KiB 25.7-27.4 ms, 1 MiB 22.4-24.5 ms; Dense 109 MB 35.8 against 33.1 ms).
COPY_PIECE = 1 << 20


def loose_offset(group: h5py.Group, entry: ManifestEntry) -> int | None:
    """Where the bytes of ``entry``'s tensor start in its file when it is stored as it is (a hard
    link to an uncoded dataset whose storage is exactly the manifest's size), else None (coded,
    linked, missing, chunked, compact, external: the checked path reads or refuses it)."""
    if not entry.nbytes:
        return None
    name = entry.hash.encode()
    gid = group.id
    try:
        if gid.links.get_info(name).type != h5py.h5l.TYPE_HARD:
            return None
        dsid = h5py.h5d.open(gid, name)
        if h5py.h5a.exists(dsid, _CODING_NAME) or dsid.get_storage_size() != entry.nbytes:
            return None
        return dsid.get_offset()
    except (KeyError, OSError, ValueError, TypeError, RuntimeError, AttributeError):
        return None


def mapped_tensor(mapped: memoryview | None, offset: int | None, entry: ManifestEntry) -> np.ndarray | None:
    """A read-only view of ``entry``'s bytes at ``offset`` in the file's map, as the manifest's
    dtype and shape (as bytes when not aligned for the dtype: :func:`hashed` copies those); None
    when the bytes would reach outside the map."""
    if mapped is None or offset is None or offset < 0 or offset + entry.nbytes > len(mapped):
        return None
    dtype = dtype_from_name(entry.dtype)
    view = np.frombuffer(mapped, dtype=np.uint8, count=entry.nbytes, offset=offset)
    return view if view.ctypes.data % dtype.itemsize else view.view(dtype).reshape(entry.shape)


Remembered = Callable[[str, list[str]], tuple[dict[str, int | None], object] | None]


def loose_views(entries: Sequence[ManifestEntry], file_of: Callable[[str], tuple[h5py.Group, object]],
                remembered: Remembered | None = None) -> dict[int, np.ndarray]:
    """Index in ``entries`` -> :func:`mapped_tensor` for every tensor stored as it is; ``file_of``
    gives an object's checked ``/tensors`` group and its file's map (an object whose file cannot
    be opened is left to the checked path, which says what is wrong). ``remembered`` (object id,
    tensor hashes) gives their offsets and the file's map without HDF5 when every one is remembered
    for the file as it is now (:func:`remembered_maps`), else None."""
    found: dict[int, np.ndarray] = {}
    by_object: dict[str, list[int]] = {}
    for index, entry in enumerate(entries):
        if entry.nbytes:  # an empty tensor has no bytes to map
            by_object.setdefault(entry.object, []).append(index)
    for object_id, indices in by_object.items():
        hashes = [entries[index].hash for index in indices]
        known = None
        if remembered is not None:
            with contextlib.suppress(MVCError, OSError):  # refused or gone: the path below says why
                known = remembered(object_id, hashes)
        if known is None:
            try:
                group, mapped = file_of(object_id)
            except (IntegrityError, *H5_READ_ERRORS):
                continue  # damaged (HDF5 raises KeyError for a bad object header): the checked read says so
            offsets = {digest: loose_offset(group, entries[index]) for digest, index in zip(hashes, indices)}
            with contextlib.suppress(OSError, ValueError, RuntimeError, TypeError):
                known_offsets.remember(known_offsets.identity(group.file.id.get_vfd_handle()), offsets)
        else:
            offsets, mapped = known
        for index in indices:
            view = mapped_tensor(mapped, offsets[entries[index].hash], entries[index])
            if view is not None:
                found[index] = view
    return found


def remembered_maps(locate: Callable[[str], Path], maps: FileMaps) -> Remembered:
    """For :func:`loose_views`: the object's snapshot file opened as a checked regular file
    (:func:`~mvc_magics.storage.files.h5_open.open_checked`) without HDF5 and, when every offset
    asked for is remembered for its identity (:mod:`.known_offsets`), those offsets and the file's
    map (kept in ``maps``); None otherwise, the file not mapped (HDF5 maps it)."""
    def remembered(object_id: str, hashes: list[str]) -> tuple[dict[str, int | None], object] | None:
        path = locate(object_id)
        fd = open_checked(path)
        try:
            offsets = known_offsets.known(known_offsets.identity(fd), hashes)
            return None if offsets is None else (offsets, maps.map_descriptor(("file", str(path)), fd))
        finally:
            os.close(fd)
    return remembered


def _needs_copy(view: np.ndarray, entry: ManifestEntry, copy: bool) -> bool:
    return copy or view.dtype.name != entry.dtype or view.shape != entry.shape


def _allocate(entry: ManifestEntry, where: str, recycle: bool = False) -> np.ndarray:
    check_read(entry.nbytes, where)  # the declared size against the memory there is, before allocating
    return (RECYCLED.empty if recycle else aligned_empty)(entry.shape, dtype_from_name(entry.dtype))


def hashed(view: np.ndarray, entry: ManifestEntry, copy: bool, verify: bool, where: str,
           out: np.ndarray | None = None, threaded: bool = True) -> tuple[np.ndarray, str | None]:
    """(the tensor, its hash or None): ``view`` itself, or with ``copy`` (or a view of bytes not
    aligned for the dtype) a copy in aligned memory of its own (``out`` when given), hashed as copied
    (``threaded``: see :func:`~mvc_magics.core.hashing.tensor_hash`)."""
    if not _needs_copy(view, entry, copy):
        return view, tensor_hash(view, threaded) if verify else None
    array = out if out is not None else _allocate(entry, where)
    target, source = array.reshape(-1).view(np.uint8), view.reshape(-1).view(np.uint8)
    if not verify or threaded:
        np.copyto(target, source)
        return array, tensor_hash(array, threaded) if verify else None
    # Hashed piece by piece as copied, each piece still in this core's cache: the tensor is read
    # from memory once, not twice (the digest is the same: the bytes are fed in order).
    hasher = tensor_hasher(array.dtype, array.shape)
    for start in range(0, source.size, COPY_PIECE):
        piece = target[start:start + COPY_PIECE]
        np.copyto(piece, source[start:start + COPY_PIECE])
        hasher.update(piece)
    return array, hasher.hexdigest()


def _hash_batch(items: Sequence[tuple[int, np.ndarray, np.ndarray | None]], entries: Sequence[ManifestEntry],
                copy: bool, verify: bool, where: Callable[[int], str], release: Callable[[int], None] | None,
                threaded: bool) -> list[tuple[int, np.ndarray, str | None]]:
    done = [(index, *hashed(view, entries[index], copy, verify, where(index), out, threaded))
            for index, view, out in items]
    if release is not None:
        release(sum(view.nbytes for _index, view, _out in items))
    return done


def hash_mapped(views: dict[int, np.ndarray], entries: Sequence[ManifestEntry], copy: bool,
                where: Callable[[int], str], verify: bool = True, release: Callable[[int], None] | None = None,
                recycle: bool = False) -> list[Task]:
    """Start hashing ``views`` (index in ``entries`` -> mapped tensor) on the hashing threads:
    :class:`~mvc_magics.core.threads.Task` s for :func:`~mvc_magics.core.threads.run_waiting`, each
    giving ``[(index, array, digest or None)]`` (the last one is the caller's share, see :mod:`.pieces`).
    ``copy``: see :func:`hashed`; ``release(nbytes)`` is told the mapped bytes each task has read;
    ``recycle``: copies go in memory earlier checkouts' models let go (:mod:`.recycled`)."""
    pool = hash_pool()
    # When no tensor holds half the bytes, the tasks alone keep every core busy: each hashes on its
    # own thread (BLAKE3's threads on top of the pool's only contend for the same cores).
    total = sum(view.nbytes for view in views.values())
    threaded = bool(views) and 2 * max(view.nbytes for view in views.values()) > total
    if not threaded:  # several tensors: shared out a piece at a time (see .pieces)
        items = []
        for index, view in views.items():
            out = _allocate(entries[index], where(index), recycle) if _needs_copy(view, entries[index], copy) else None
            items.append((index, view if out is None else out, view, out))
        pieces = Pieces(items, verify, release)
        return shared_by_every_core(pieces.work)
    batches: list[list[tuple[int, np.ndarray, np.ndarray | None]]] = [[]]
    size = 0
    for index, view in views.items():
        entry = entries[index]
        # Copies go into memory allocated here, on the caller's thread: malloc then reuses what the
        # last checkout freed (a worker thread's arena gave fresh pages, ~2x the CPU in page faults).
        out = _allocate(entry, where(index), recycle) if _needs_copy(view, entry, copy) else None
        batches[-1].append((index, view, out))
        size += view.nbytes
        if size >= BATCH_BYTES:
            batches.append([])
            size = 0
    # Every task is handed out at once, after the allocations: a hashing thread started on the
    # first one takes the GIL between its pieces, and the caller's thread, still allocating,
    # then waited for it to hand out the second (Dense 31 MB: the second thread started 3-4 ms late).
    return [Task(pool, _hash_batch, batch, entries, copy, verify, where, release, threaded)
            for batch in batches if batch]

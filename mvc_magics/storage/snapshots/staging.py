"""Staging a commit: hash the tensors and write the ones the store lacks, in one overlapped pass.

A commit only learns its version id once every tensor is hashed, but it need not wait for that to
start writing: tensors are hashed ahead in worker threads (BLAKE3 releases the GIL) while the
calling thread writes each new tensor into a temporary snapshot file. Once the id is known the
metadata is added and the file is fsynced and renamed into place (:func:`publish`), or discarded
when the store already holds that version. Integrity is the same as writing in two passes: the
file is only ever visible under its final name complete and fsynced.

:meth:`StagedCommit.stream` stages tensors one at a time as they are computed and keeps none of
them (a merge streams its average this way, so the whole result is never held in memory).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np

from ...core.hashing import HashedArray, HashesAhead, canonical_json, dtype_name, tensor_hash
from ...core.progress import progress_bar
from ...core.threads import thread_pool
from ..files.atomic import publish, temporary_path
from ..files.placed import PLACED_MIN_BYTES
from .deltas import remember_committed
from .snapshot import FORMAT_VERSION, ManifestEntry, TensorReader
from .snapshot_writer import DeltaBase, SnapshotWriter

# How far the writer of a streamed commit may lag behind the tensors computed (bytes of tensors
# handed over and not yet written, besides the one it is writing): small tensors go in batches, a
# large one waits for the writer.
STREAM_AHEAD_BYTES = 4 << 20
# Worker threads coding new tensors during stage(), and how much may wait coded but unwritten.
ENCODERS = max(2, min(4, os.cpu_count() or 1))
PENDING_BYTES = 64 << 20
PARALLEL_MIN_BYTES = 64 << 10  # smaller tensors are coded in the writing thread (a hand-off costs more)


def _no_pause() -> None:
    return None


def write_order(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``arrays`` in the order a commit hashes and writes them best: the large tensors first (their
    bytes go to the disk from worker threads as soon as each is hashed), the small ones HDF5
    writes after them. In the mapping's order, a model's first small tensors (a norm's 8 KB
    vectors) were written through HDF5 while both cores hashed, and a 100 MB first commit's
    disk only started at 14 ms. The version's listing keeps the mapping's order (see :meth:`StagedCommit.stage`)."""
    return {**{k: a for k, a in arrays.items() if a.nbytes >= PLACED_MIN_BYTES},
            **{k: a for k, a in arrays.items() if a.nbytes < PLACED_MIN_BYTES}}


def commit_hashes(arrays: Mapping[str, np.ndarray], known: Mapping[str, str] | None = None,
                  before: Callable[[], None] | None = None) -> HashesAhead:
    """The hashes a commit stages ``arrays`` with, started now: in :func:`write_order`, the large
    ones in order, each with every core (``HashesAhead(writing=True)``)."""
    return HashesAhead(write_order(arrays), known, before, writing=True)


class StagedCommit:
    """The tensors of one commit, hashed, with the new ones written to a temporary snapshot.

    Args:
        tmp_folder: where the temporary snapshot file is written.
        stored_object: hash -> id of the snapshot holding those bytes, or None when not stored.
        progress: see :func:`mvc_magics.progress.progress_bar`.
    """

    def __init__(self, tmp_folder: Path, stored_object: Callable[[str], str | None],
                 progress: bool | None = None, check_space: Callable[[int], None] | None = None,
                 bases: Callable[[str, np.ndarray, str], DeltaBase | None] | None = None,
                 code: bool = True, place: Callable[[Path, Path], None] | None = None,
                 locate: Callable[[str], Path] | None = None, loose: bool = False) -> None:
        self._stored_object = stored_object
        # object id -> its snapshot path: streamed tensors are not kept, so the few a publish must
        # write again (see claim_own) or a stored tensor found nowhere are read back from there.
        self._locate = locate
        # name, array, hash -> the stored tensor to code a delta against (see storage.snapshots.deltas).
        self._bases = bases or (lambda name, array, digest: None)
        self._code = code and not loose  # a loose commit writes every tensor as it is (packing codes it)
        self._place = place  # renames the complete file into the store without following symlinks
        # Called with a tensor's size before it is written: HDF5 must never meet a full disk.
        self._check_space = check_space or (lambda nbytes: None)
        self._progress = progress
        self._writer = SnapshotWriter(temporary_path(tmp_folder, ".h5"), FORMAT_VERSION if code else 1, loose=loose)
        self.arrays: dict[str, np.ndarray] = {}  # held by stage(); stream() keeps none
        self.specs: dict[str, tuple[str, tuple[int, ...], int]] = {}  # name -> (dtype, shape, nbytes)
        self.hashes: dict[str, str] = {}
        self.located: dict[str, str | None] = {}  # hash -> object id holding it (None: new here)
        self.bytes_written = 0  # logical bytes of the tensors written
        self.bytes_stored = 0  # what they took in the file (coded)
        self.tensors_written = 0
        self.structure_ref: ManifestEntry | None = None  # where publish stored the structure (format 3)
        self._pending: deque | None = None  # (hash, array, coding future) waiting to be written (stage)
        self._encoder: ThreadPoolExecutor | None = None
        self._blob: tuple[object, np.ndarray] | None = None
        #: Called before each tensor is written (a commit written in the background pauses there
        #: while a training loop copies its weights, see storage.local.background).
        self.pause: Callable[[], None] = _no_pause
        #: Set once the first tensor is handed to the disk, or :meth:`stage` ended (done or failed).
        self.writing = threading.Event()

    def stage(self, arrays: Mapping[str, np.ndarray], description: str = "commit",
              hashes: HashesAhead | None = None) -> None:
        """Hash every array (or take ``hashes`` already under way, in any order: :func:`commit_hashes`
        is the fastest), writing each one whose hash the store (and this commit) lacks. The
        version lists the tensors in the order of ``arrays``.

        New tensors are coded in worker threads, several at a time (both cores: zstd, BLAKE3 and
        numpy's copies release the GIL), while this thread writes the coded ones into the file in
        the order they were staged; at most ``PENDING_BYTES`` of them wait to be written.
        """
        self.arrays = dict(arrays)
        total = sum(int(a.nbytes) for a in self.arrays.values())
        self._pending, self._encoder = deque(), thread_pool("encode", ENCODERS)
        try:
            with progress_bar(total, description, self._progress) as bar:
                for key, digest in hashes if hashes is not None else commit_hashes(self.arrays):
                    array = self.arrays[key]
                    self._stage_one(key, array, digest)
                    bar.update(int(array.nbytes))
                while self._pending:
                    self._write_next()
            self.specs = {key: self.specs[key] for key in self.arrays}  # hashed in write order
        finally:
            self.writing.set()
            for *_, future in self._pending:  # stopped by an error: nothing more is coded
                future.cancel()
            self._pending = self._encoder = None

    def stream(self, tensors: Iterable[tuple[str, np.ndarray | HashedArray | ManifestEntry]],
               description: str = "commit", total_bytes: int = 0) -> None:
        """Stage ``(name, tensor)`` pairs one at a time, keeping none of the arrays.

        Each array is hashed and written (when the store lacks it) in a worker thread while
        ``tensors`` computes the next ones. The worker may lag behind by the tensor it is writing
        (of any size) plus :data:`STREAM_AHEAD_BYTES` of the ones after it, so memory holds that
        much besides the tensor being computed, never the whole version; many small tensors do not
        wait for the worker one by one, nor does a small one wait for the large one before it (the
        next large tensor is computed while that one is written). A
        :class:`ManifestEntry` names a tensor already stored (its bytes are not read unless the
        store cannot place them); a :class:`~mvc_magics.core.hashing.HashedArray` is stored under the hash
        its maker computed. The caller must not change a yielded array.
        """
        # Placed writes (a loose commit's) take a region's edge blocks (those not hashed while it
        # was written) from memory at the end: a stream keeps an array only while it is written,
        # the checksum reads the edges of the ones written back from the page cache.
        self._writer.placed_held = "writing"
        pending: deque[tuple[Future, int]] = deque()
        in_flight = 0
        pool = thread_pool("stream", 1)  # one writer: tensors are staged in the order they come
        try:
            with progress_bar(total_bytes, description, self._progress) as bar:
                for key, item in tensors:
                    size = 0 if isinstance(item, ManifestEntry) else int(item.nbytes)
                    while pending and in_flight - pending[0][1] + size > STREAM_AHEAD_BYTES:
                        done, nbytes = pending.popleft()
                        done.result()  # staged and dropped by the worker
                        in_flight -= nbytes
                    pending.append((pool.submit(self._stream_one, key, item), size))
                    in_flight += size
                    bar.update(int(item.nbytes))
                    del item  # the worker holds the only reference left
                while pending:
                    pending.popleft()[0].result()
        finally:  # stopped by an error or Ctrl-C: nothing more is staged, and the file is not
            for future, _ in pending:  # discarded under a write still running
                future.cancel()
            wait([future for future, _ in pending])

    def _stream_one(self, key: str, item: np.ndarray | HashedArray | ManifestEntry) -> None:
        if isinstance(item, ManifestEntry):  # listed but not placeable here: its bytes are read and written
            self._record(key, (item.dtype, tuple(item.shape), int(item.nbytes)), item.hash,
                         lambda: self._read_stored(item))
        elif isinstance(item, HashedArray):  # hashed by its maker
            self._stage_one(key, item.array, item.digest)
        else:
            self._stage_one(key, item, tensor_hash(item))

    def _stage_one(self, key: str, array: np.ndarray, digest: str) -> None:
        self._record(key, (dtype_name(array.dtype), tuple(array.shape), int(array.nbytes)), digest, lambda: array)

    def _record(self, key: str, spec: tuple[str, tuple[int, ...], int], digest: str,
                array_of: Callable[[], np.ndarray]) -> None:
        """Note ``key``'s tensor and write its bytes (``array_of()``) when no stored file holds them."""
        self.specs[key] = spec
        self.hashes[key] = digest
        if digest not in self.located:
            self.located[digest] = self._stored_object(digest)
            if self.located[digest] is None:
                self._write(key, digest, array_of())

    def _read_stored(self, entry: ManifestEntry) -> np.ndarray:
        """The bytes of a stored tensor, read and verified (a streamed tensor that must be written)."""
        if self._locate is None:
            raise ValueError(f"tensor {entry.name!r} is not held and this staged commit cannot read the store")
        with TensorReader(self._locate) as reader:
            return reader.read(entry)

    def _write(self, key: str, digest: str, array: np.ndarray, delta: bool = True) -> None:
        self.pause()
        self._check_space(int(array.nbytes))
        base = self._bases(key, array, digest) if self._code and delta else None
        if self._pending is None or array.nbytes < PARALLEL_MIN_BYTES or not self._code:  # nothing to code
            # (or small: a hand-off costs more than coding it here)
            self._written(array, self._writer.add_tensor(digest, array, base=base, code=self._code))
            return
        self._pending.append((digest, array, self._encoder.submit(self._writer.prepare, array, base, self._code)))
        while sum(int(a.nbytes) for _, a, _ in self._pending) > PENDING_BYTES and len(self._pending) > ENCODERS:
            self._write_next()

    def _write_next(self) -> None:
        digest, array, future = self._pending[0]
        stored = self._writer.write_prepared(digest, future.result())
        self._pending.popleft()
        self._written(array, stored)

    def _written(self, array: np.ndarray, stored: int) -> None:
        self.writing.set()
        self.bytes_stored += stored
        self.bytes_written += int(array.nbytes)
        self.tensors_written += 1

    def claim_own(self, version_id: str) -> None:
        """Write the tensors the index places in ``version_id``'s own file: that file is being
        (re)written, so bytes it held before (a removed version committed again) must be in it.
        """
        for key, (dtype, shape, nbytes) in self.specs.items():
            digest = self.hashes[key]
            if self.located.get(digest) == version_id:
                array = self.arrays.get(key)
                if array is None:  # streamed: the file being replaced holds the bytes, read them first
                    array = self._read_stored(ManifestEntry(key, dtype, shape, digest, version_id, nbytes))
                self.located[digest] = None
                # Whole, never a delta: other stored tensors may be deltas against these very bytes,
                # and a base of a base must never come back to the file being rewritten (a cycle).
                self._write(key, digest, array, delta=False)

    def entries(self) -> list[tuple[str, str, tuple[int, ...], str]]:
        """(name, dtype, shape, hash) of every tensor: the input of :func:`hashing.version_id`."""
        return [(k, dtype, shape, self.hashes[k]) for k, (dtype, shape, _) in self.specs.items()]

    def manifest(self, version_id: str) -> list[ManifestEntry]:
        """The manifest of the version: new tensors live in its own file, the rest where they are."""
        return [
            ManifestEntry(k, dtype, shape, self.hashes[k], self.located[self.hashes[k]] or version_id, nbytes)
            for k, (dtype, shape, nbytes) in self.specs.items()
        ]

    def structure_blob(self, structure: object) -> np.ndarray:
        """The structure as the bytes format 3 stores once per store: its canonical JSON (the text
        the version id hashes), as a 1-D uint8 array (kept: publish stores these same bytes)."""
        if self._blob is None or self._blob[0] is not structure:
            self._blob = (structure, np.frombuffer(canonical_json(structure).encode(), dtype=np.uint8))
        return self._blob[1]

    def _store_structure(self, version_id: str, structure: object) -> ManifestEntry | None:
        """Where this version's structure is stored: an older file holding the same bytes (found
        by hash, like a tensor), else this file (the blob is added to it). None: kept inline (format 1)."""
        if structure is None or self._writer.format_version < FORMAT_VERSION:  # coding off: format 1, what
            # older versions read
            return None
        blob = self.structure_blob(structure)
        digest = tensor_hash(blob)
        holder = self.located[digest] if digest in self.located else self._stored_object(digest)
        if holder is None or holder == version_id:  # new here, or this very file is being rewritten
            if self.located.get(digest, "") is not None:  # not already written among the tensors
                self._writer.add_tensor(digest, blob, code=False)  # plain: readable with h5py alone
                self.located[digest] = None
            holder = version_id
        return ManifestEntry("/structure", "uint8", (blob.size,), digest, holder, int(blob.size))

    def publish(self, final: Path, version_id: str, meta: Mapping, structure: object,
                manifest: list[ManifestEntry]) -> None:
        """Complete the snapshot file and move it to ``final`` (fsync, rename, fsync folder)."""
        self._close_bases()
        try:
            self.structure_ref = self._store_structure(version_id, structure)
            self._writer.finish(version_id, meta, structure, manifest, self.structure_ref)
        except BaseException:
            self.discard()
            raise
        publish(self._writer.path, final, self._place)
        remember_committed((self.hashes[key], array) for key, array in self.arrays.items())

    def _close_bases(self) -> None:
        close = getattr(self._bases, "close", None)
        if close is not None:
            close()

    def discard(self) -> None:
        """Drop the temporary file (the store already holds the version, or an error happened)."""
        self._close_bases()
        with contextlib.suppress(OSError, RuntimeError):  # closing after a failed write must not hide it
            self._writer.close()
        with contextlib.suppress(OSError):
            self._writer.path.unlink()

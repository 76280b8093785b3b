"""Writing snapshot files: tensors (coded when that saves) as they are hashed, then the metadata.

The layout is described in :mod:`.snapshot` and docs/FORMAT.md; the coding in :mod:`.coding`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ...core.hashing import canonical_array
from ...core.manifest import ManifestEntry
from ..codec import coding
from ..codec.tensor_decode import BASE2_ATTR, DEPTH_ATTR, SLOPE_ATTR
from ..files.atomic import start_writeback
from ..files.checksum import BLOCKS_MAGIC, CHECKSUM_LINE, LOOSE_MARK
from ..files.h5_values import write_string_dataset, write_text_attr
from ..files.placed import PLACED_MIN_BYTES, PlacedWrites, loose_digest
from .snapshot import (
    BASE_ATTR,
    CHECKSUM_MAGIC,
    CODING_ATTR,
    FORMAT_NAME,
    FORMAT_VERSION,
    NATIVE_KINDS,
    NATIVE_NAMES,
    PLANES_ATTR,
    RAW_DTYPE_ATTR,
    STRUCTURE_ATTR,
    USERBLOCK_SIZE,
    body_digest,
)


@dataclass(frozen=True)
class DeltaBase:
    """A tensor a new tensor may be stored against: where it is stored, its bytes, its chain depth
    (0 for a tensor stored whole)."""

    object: str
    hash: str
    array: np.ndarray
    depth: int
    # The base's own base (its delta base): given, the tensor is coded against an extrapolation
    # from both (a second-order delta, see coding.CODING_SUB2 and CODING_LIN) when that is smaller.
    second: DeltaBase | None = None
    # The slopes (quarters) a second-order delta tries (coding.SLOPE_CANDIDATES, FORWARD_SLOPES).
    slopes: tuple[int, ...] = coding.SLOPE_CANDIDATES


def _code(array: np.ndarray, base: DeltaBase | None) -> tuple[coding.Coded | None, DeltaBase | None]:
    """The smaller of the delta against ``base`` and the plain coding (None: store raw)."""
    raw = coding.raw_bytes(array) if array.size else np.empty(0, np.uint8)
    itemsize = array.dtype.itemsize
    if base is not None and base.array.dtype == array.dtype and base.array.shape == array.shape:
        second = base.second.array if base.second is not None and base.second.array.shape == array.shape \
            and base.second.array.dtype == array.dtype else None
        delta = coding.encode(raw, itemsize, coding.raw_bytes(canonical_array(base.array)),
                              second=None if second is None else coding.raw_bytes(canonical_array(second)),
                              slopes=base.slopes)
        # A delta that is clearly small is kept without also trying the plain coding (half the time).
        if delta is not None and delta.nbytes < 0.6 * array.nbytes:
            return delta, base
        plain = coding.encode(raw, itemsize)
        if delta is not None and (plain is None or delta.nbytes < plain.nbytes) and delta.nbytes < array.nbytes:
            return delta, base
        return plain, None
    return coding.encode(raw, itemsize), None


# (canonical array, coded bytes or None for raw, the delta base used or None): see SnapshotWriter.prepare.
Prepared = tuple[np.ndarray, "coding.Coded | None", "DeltaBase | None"]
# Start the disk writing a snapshot's tensors every this many bytes (see SnapshotWriter._start_writeback).
WRITEBACK_BYTES = 16 << 20


def write_snapshot(
    path: Path,
    version_id: str,
    meta: Mapping,
    structure: object,
    manifest: list[ManifestEntry],
    new_tensors: Mapping[str, np.ndarray],
) -> None:
    """Write a complete snapshot file at ``path`` (a temporary name; the caller renames it)."""
    writer = SnapshotWriter(path)
    try:
        for digest, array in new_tensors.items():
            writer.add_tensor(digest, array)
        writer.finish(version_id, meta, structure, manifest)
    except BaseException:
        writer.close()
        raise


class SnapshotWriter:
    """Writes one snapshot file at a temporary ``path``: tensors first, as they are hashed, then
    the metadata once the version id is known (a commit overlaps hashing with writing this way).

    The file is created on the first :meth:`add_tensor` or at :meth:`finish`; the caller fsyncs
    and renames it into place (see :func:`mvc_magics.storage.files.atomic.publish`).
    """

    def __init__(self, path: Path, format_version: int = FORMAT_VERSION, loose: bool = False) -> None:
        self.path = path
        # 1 with coding off: such a file is exactly what an older mvc_magics writes and reads.
        self.format_version = format_version
        # A loose file (a commit's): every tensor stored as it is, the user block says so, and
        # packing codes it later (see storage.files.checksum.LOOSE_MARK).
        self.loose = loose
        # A loose file's large tensors are written by PlacedWrites at the offsets HDF5 allocated
        # (see storage.files.placed), not by HDF5 (which holds the GIL while it writes).
        self.place_directly = loose
        # "writing" for a streamed commit, which keeps no whole version until the checksum: a
        # placed tensor is kept only while it is written (see storage.files.placed).
        self.placed_held = "all"
        self._placed: PlacedWrites | None = None
        self._file: h5py.File | None = None
        self._tensors: h5py.Group | None = None
        self._written = self._kicked = 0  # bytes of tensor data written / handed to the disk so far

    def _start_writeback(self) -> None:
        """Start the disk writing the tensors written so far (see :func:`.atomic.start_writeback`):
        it works while the next tensors are coded, so the fsync before the rename finds little left."""
        self._kicked = self._written
        start_writeback(self.path)

    def _group(self) -> h5py.Group:
        if self._file is None:
            self._file = h5py.File(self.path, "w", libver=("earliest", "v110"), userblock_size=USERBLOCK_SIZE)
            self._tensors = self._file.create_group("tensors")
        assert self._tensors is not None
        return self._tensors

    def add_tensor(self, digest: str, array: np.ndarray, base: DeltaBase | None = None,
                   code: bool = True) -> int:
        """Store ``array`` under ``/tensors/<digest>`` (one contiguous, unfiltered dataset):
        coded (byte planes + zstd, an XOR delta against ``base`` when that is smaller) when coding
        saves, as it is otherwise. Returns the bytes stored."""
        return self.write_prepared(digest, self.prepare(array, base, code))

    def prepare(self, array: np.ndarray, base: DeltaBase | None = None, code: bool = True) -> Prepared:
        """The coding step of :meth:`add_tensor` alone: no HDF5 call, so worker threads run it for
        several tensors at once (zstd and numpy release the GIL) while :meth:`write_prepared` writes."""
        array = canonical_array(array)
        coded = code and self.format_version >= 2 and not self.loose
        return (array, *(_code(array, base) if coded else (None, None)))

    def write_prepared(self, digest: str, prepared: Prepared) -> int:
        """Write a tensor :meth:`prepare` coded; returns the bytes stored."""
        tensors = self._group()
        array, coded, used = prepared
        self._written += coded.nbytes if coded is not None else int(array.nbytes)
        if self._written - self._kicked >= WRITEBACK_BYTES:
            self._start_writeback()
        if coded is not None:
            dataset = tensors.create_dataset(digest, data=coded.data)
            write_text_attr(dataset, CODING_ATTR, coded.coding)
            dataset.attrs[PLANES_ATTR] = coded.planes
            if used is not None:
                write_text_attr(dataset, BASE_ATTR, f"{used.object}/{used.hash}")
                if coded.coding in coding.SECOND_ORDER and used.second is not None:
                    write_text_attr(dataset, BASE2_ATTR, f"{used.second.object}/{used.second.hash}")
                if coded.coding == coding.CODING_LIN:
                    dataset.attrs[SLOPE_ATTR] = np.int64(coded.slope)
                dataset.attrs[DEPTH_ATTR] = used.depth + 1
            return coded.nbytes
        native = array.dtype.kind in NATIVE_KINDS and array.dtype.name in NATIVE_NAMES
        data = array if native else array.reshape(-1).view(np.uint8)
        if self.place_directly and array.nbytes >= PLACED_MIN_BYTES:
            dataset = self._place(tensors, digest, data)
        else:
            dataset = tensors.create_dataset(digest, data=data)
        if not native:
            write_text_attr(dataset, RAW_DTYPE_ATTR, array.dtype.name)
        return int(array.nbytes)

    def _place(self, tensors: h5py.Group, digest: str, data: np.ndarray) -> h5py.Dataset:
        """A contiguous dataset allocated now (HDF5 writes nothing into it), its bytes written at
        its offset by :class:`PlacedWrites` while the caller goes on."""
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        dataset = tensors.create_dataset(digest, shape=data.shape, dtype=data.dtype, dcpl=dcpl, fill_time="never")
        offset = dataset.id.get_offset()
        if offset is None:  # not allocated after all: HDF5 writes it
            dataset[...] = data
            return dataset
        if self._placed is None:
            self._placed = PlacedWrites(self.path, held=self.placed_held)
        self._placed.add(offset, data)  # written meanwhile (os.pwrite releases the GIL)
        return dataset

    def copy_dataset(self, dataset: h5py.Dataset, digest: str, attrs: Mapping | None = None) -> None:
        """Copy a stored tensor's dataset (coded bytes and attributes) as it is under ``digest``,
        with ``attrs`` set on the copy (a repack updates a delta's depth this way)."""
        tensors = self._group()
        dataset.file.copy(dataset, tensors, name=digest)
        for key, value in (attrs or {}).items():
            if isinstance(value, str):
                write_text_attr(tensors[digest], key, value)
            else:
                tensors[digest].attrs[key] = value

    def finish(self, version_id: str, meta: Mapping, structure: object, manifest: list[ManifestEntry],
               structure_ref: ManifestEntry | None = None) -> None:
        """Write the root attributes, meta, structure and manifest, and close the file.

        With ``structure_ref`` (format 3) the file names where the structure's blob is stored (in
        this file, added with :meth:`add_tensor`, or in an older one) instead of holding it.
        """
        self._group()
        f = self._file
        assert f is not None
        if self._placed is not None:
            # The file is extended now to the space HDF5 allocated (every placed region lies
            # inside), so a file size limit is met here, before HDF5 writes its metadata: HDF5 must
            # not meet it at close (see discard). A write that already failed is raised too.
            self._placed.reserve(f.id.get_filesize())
        write_text_attr(f, "mvc_format", FORMAT_NAME)
        # 3 only when the file uses a structure reference: any other file stays readable by older versions.
        f.attrs["mvc_format_version"] = FORMAT_VERSION if structure_ref is not None else min(self.format_version, 2)
        write_text_attr(f, "version_id", version_id)
        write_string_dataset(f, "meta", json.dumps(meta, sort_keys=True))
        if structure_ref is not None:
            write_text_attr(f, STRUCTURE_ATTR, f"{structure_ref.object}/{structure_ref.hash}/{structure_ref.nbytes}")
        elif structure is not None:
            write_string_dataset(f, "structure", json.dumps(structure, sort_keys=True))
        write_string_dataset(f, "manifest", json.dumps([e.to_json() for e in manifest]))
        placed, self._placed = self._placed, None
        try:
            self.close()
            # The tail HDF5 wrote on close goes to the disk while the checksum reads the file back from
            # the page cache, so the fsync before the rename finds only the user block's page left.
            start_writeback(self.path)
            # The blocks inside placed tensors were hashed while written; the others are hashed
            # now (a region's edges from memory, if still held, while the last writes finish).
            _stamp_checksum(self.path, self.loose, placed)
        finally:
            if placed is not None:
                placed.close()

    def close(self) -> None:
        """Close the file (idempotent); an unfinished file is left for the caller to remove."""
        if self._placed is not None:  # a failed commit: its writes end before the file is removed
            placed, self._placed = self._placed, None
            placed.close()
        if self._file is not None:
            handle, self._file, self._tensors = self._file, None, None
            handle.close()


def _stamp_checksum(path: Path, loose: bool = False, placed: PlacedWrites | None = None) -> None:
    """Write the checksum of everything after the checksum line into the user block (before the
    rename); a loose file's user block says so on its second line (covered by the checksum).

    A loose file gets a block-list checksum (``b3list``, see :mod:`..files.checksum`): the blocks
    inside the ``placed`` tensors are hashed while written (waited for here), the other blocks
    now, from the arrays still held where they cover them (:func:`..files.placed.loose_digest`).
    Any other file (a pack's) gets the one-stream ``blake3`` checksum, read back from the file."""
    with open(path, "r+b") as handle:
        if loose:
            handle.seek(CHECKSUM_LINE)
            handle.write(LOOSE_MARK)
            handle.flush()  # the checksum reads the file through a map or pread
        size = os.fstat(handle.fileno()).st_size
        if loose:
            line = BLOCKS_MAGIC + loose_digest(handle.fileno(), size, placed).encode()
        else:
            if placed is not None:  # (placed tensors are a loose file's: not reached today)
                placed.wait()
            line = CHECKSUM_MAGIC + body_digest(handle, size).encode()
        handle.seek(0)
        handle.write(line + b"\n")

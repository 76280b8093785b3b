"""Snapshot files: one immutable HDF5 file per version.

Layout (documented for plain h5py readers in docs/FORMAT.md)::

    /                       attrs: mvc_format="mvc-snapshot", mvc_format_version=3, version_id,
                            mvc_structure="<object>/<hash>/<nbytes>" (3: a blob in /tensors, :func:`read_structure`)
    /meta                   scalar UTF-8 string: JSON metadata (name, message, parents, metrics...)
    /structure              formats 1, 2: scalar UTF-8 string: JSON model structure (absent when not serializable)
    /manifest               scalar UTF-8 string: JSON list of tensor entries
    /tensors/<hash>         the tensors this version introduced, one contiguous dataset each

Each manifest entry is ``{"name", "dtype", "shape", "hash", "object", "nbytes"}`` where ``object``
is the id of the version whose file holds the bytes under ``/tensors/<hash>``.
Files are untrusted on read: only hard links to contiguous, unfiltered datasets whose storage
matches the declared shape are accepted, and every tensor is re-hashed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
from pathlib import Path

import h5py
import numpy as np

from ...core.hashing import THREADED_HASH_BYTES, hash_pool, tensor_hash
from ...core.hashing import version_id as compute_version_id
from ...core.manifest import ManifestEntry, SnapshotContent, dtype_from_name, is_hash
from ...core.progress import progress_bar
from ...core.threads import run_waiting
from ...errors import IntegrityError, StoreFormatError
from ..codec import tensor_decode
from ..codec.budget import check_read
from ..codec.coding import aligned_empty
from ..codec.tensor_decode import BASE_ATTR, CODING_ATTR, MAX_CHAIN, delta_base
from ..codec.tensor_decode import PLANES_ATTR as PLANES_ATTR  # the writer's and readers' one name for it
from ..files.checksum import CHECKSUM_MAGIC, USERBLOCK_SIZE, body_digest, check_file_checksum  # noqa: F401
from ..files.h5_open import H5_READ_ERRORS, display_name, file_size, open_hdf5
from ..files.h5_values import read_attr, read_string_dataset, read_text_attr
from . import mapped_read

FORMAT_NAME = "mvc-snapshot"
# Version 2 adds coded tensors (byte planes + zstd, XOR deltas); version 3 stores each distinct
# structure once, referenced by hash (``STRUCTURE_ATTR``). Versions 1 and 2 stay readable.
FORMAT_VERSION = 3
READABLE_VERSIONS = frozenset({1, 2, 3})
STRUCTURE_ATTR = "mvc_structure"
# dtypes h5py stores natively; anything else (bfloat16, float8...) is stored as raw bytes.
NATIVE_KINDS = frozenset("biuf")
RAW_DTYPE_ATTR = "mvc_dtype"
# The longest /meta, /structure or /manifest string read (a manifest entry is ~200 bytes).
MAX_STRING_BYTES = 512 * 1024 * 1024


NATIVE_NAMES = frozenset(
    {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
     "float16", "float32", "float64"}
)


def _read_string(f: h5py.File, name: str, required: bool = True, where: str = "") -> str | None:
    where = where or display_name(f)
    link = f.get(name, getlink=True)
    if link is None:
        if required:
            raise IntegrityError(f"snapshot {where}: missing /{name}")
        return None
    if not isinstance(link, h5py.HardLink):
        raise IntegrityError(f"snapshot {where}: /{name} is a link, refused")
    dataset = f[name]
    if not isinstance(dataset, h5py.Dataset) or dataset.shape != ():
        raise IntegrityError(f"snapshot {where}: /{name} is not a scalar string")
    # External or virtual storage would read another file's bytes (a local secret) into the index.
    if dataset.external or dataset.is_virtual:
        raise IntegrityError(f"snapshot {where}: /{name} is stored outside the file, refused")
    # A fixed-length string is allocated at its declared size before a byte is read: bound it by
    # the file itself (an 11 KB file must not make us allocate the 1 GiB its header claims).
    declared = max(int(dataset.dtype.itemsize), int(dataset.id.get_storage_size()))
    limit = min(MAX_STRING_BYTES, file_size(f))
    if declared > limit:
        raise IntegrityError(f"snapshot {where}: /{name} declares {declared} bytes, more than the "
                             f"{limit} the file can hold")
    return read_string_dataset(dataset)


def unreadable(path: Path, exc: BaseException) -> IntegrityError:
    """The one-line error for a snapshot file that is not a readable HDF5 snapshot (the first
    line of the cause: h5py's messages run over several)."""
    reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
    return IntegrityError(f"snapshot {path.name} is not a readable HDF5 file ({reason})")


def _open(path: Path) -> h5py.File:
    # A snapshot is a regular file inside the store: a symlink could point anywhere, a FIFO would
    # block libhdf5's open forever (UnsafeFileError, one line, from open_hdf5).
    try:
        return open_hdf5(path)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise unreadable(path, exc) from exc


def read_content(path: Path, locate=None, resolve: bool = True) -> SnapshotContent:
    """Read and validate everything but the tensor bytes. A format-3 structure is read from the
    file its reference names (``locate``: object id -> path; default: beside ``path``), unless
    ``resolve`` is False (the content's ``structure`` is then None and ``structure_ref`` says where)."""
    with _open(path) as f:
        try:
            if read_text_attr(f, "mvc_format") != FORMAT_NAME:
                raise StoreFormatError(f"{path.name} is not an mvc snapshot file")
            fmt_version = int(read_attr(f, "mvc_format_version", -1))
            if fmt_version not in READABLE_VERSIONS:
                raise StoreFormatError(
                    f"{path.name} has snapshot format version {fmt_version}; this mvc_magics "
                    f"reads version {FORMAT_VERSION} (upgrade mvc_magics)"
                )
            version_id = read_text_attr(f, "version_id", "")
            meta = json.loads(_read_string(f, "meta") or "{}")
            structure_text = _read_string(f, "structure", required=False)
            structure = json.loads(structure_text) if structure_text is not None else None
            raw_manifest = json.loads(_read_string(f, "manifest") or "[]")
            reference = read_text_attr(f, STRUCTURE_ATTR)
        except (ValueError, KeyError, TypeError, OSError, RuntimeError) as exc:
            raise IntegrityError(f"snapshot {path.name} is damaged: {exc}") from exc
    if not isinstance(meta, dict) or not isinstance(raw_manifest, list) or not is_hash(version_id):
        raise IntegrityError(f"snapshot {path.name} has malformed metadata")
    manifest = tuple(ManifestEntry.from_json(item) for item in raw_manifest)
    ref = None if reference is None else structure_reference(reference, path.name, structure_text)
    content = SnapshotContent(version_id, meta, structure, manifest, ref)
    return content if ref is None or not resolve else dataclasses.replace(
        content, structure=read_structure(ref, locate or _beside(path, version_id)))


def structure_reference(text: str, where: str, inline: str | None = None) -> ManifestEntry:
    """The ``mvc_structure`` attribute (``<object id>/<blob hash>/<nbytes>``, as
    :func:`~.h5_values.read_text_attr` reads it) as the entry of a 1-D uint8 blob;
    :class:`IntegrityError` when malformed (or beside a ``/structure`` of its own)."""
    object_id, digest, size = ([*text.split("/", 2), "", ""])[:3]
    if inline is not None or not (is_hash(object_id) and is_hash(digest) and size.isdigit() and
                                  int(size) <= MAX_STRING_BYTES):
        raise IntegrityError(f"snapshot {where}: malformed structure reference {text[:160]!r}")
    return ManifestEntry("/structure", "uint8", (int(size),), digest, object_id, int(size))


def read_structure(ref: ManifestEntry, locate) -> object:
    """The structure a format-3 file references, re-hashed; one line naming its file when not readable."""
    where = f"structure stored in {ref.object[:12]}"
    try:
        with TensorReader(locate) as reader:
            blob = reader.read(ref, verify=True)
        return json.loads(blob.tobytes().decode("utf-8"))
    except IntegrityError as exc:
        raise IntegrityError(f"{where}: {str(exc).removeprefix(f'tensor {ref.name!r}: ')}") from exc
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"{where}: unreadable ({str(exc)[:200]})") from exc


def _beside(path: Path, own_id: str):
    # Object files beside ``path`` in objects/<ab>/; ``path`` itself for its own id (a download not yet in place).
    return lambda oid: path if oid == own_id else path.parent.parent / oid[:2] / f"{oid}.h5"


def read_verified(path: Path, vid: str, locate=None) -> SnapshotContent:
    """:func:`read_content` of version ``vid``'s file, with its structure and manifest checked
    against the id (recomputed: the id covers them, so nothing that decides what is loaded is
    taken on trust). :class:`IntegrityError` when they do not hash to ``vid``."""
    try:
        content = read_content(path, locate)
    except FileNotFoundError as exc:
        raise IntegrityError(f"the snapshot file of version {vid[:12]} is missing") from exc
    entries = ((e.name, e.dtype, e.shape, e.hash) for e in content.manifest)
    names = {e.name for e in content.manifest}
    if (content.version_id != vid or len(names) != len(content.manifest)
            or compute_version_id(content.structure, entries) != vid):
        raise IntegrityError(f"version {vid[:12]}: its snapshot's structure or manifest does not hash to "
                             "the version id (the file was changed); run verify")
    return content


class TensorReader:
    """Reads tensors out of snapshot files, keeping files open while it lives.

    Every tensor is checked before allocation (hard link, contiguous, storage size equal to the
    declared shape) and re-hashed after reading.
    """

    def __init__(self, locate: callable, unmap_later: bool = False) -> None:
        self._locate = locate  # object id -> Path of its snapshot file
        self._unmap_later = unmap_later  # closing unmaps on a worker thread (FileMaps.close)
        self._files: dict[str, h5py.File] = {}
        self._maps = tensor_decode.FileMaps()
        self._groups: dict[str, h5py.Group] = {}  # object id -> its checked /tensors group
        self._lock = threading.Lock()

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._maps.close(later=self._unmap_later)
        self._groups.clear()
        for handle in self._files.values():
            with contextlib.suppress(Exception):
                handle.close()
        self._files.clear()

    def release_pages(self, span: np.ndarray | None = None) -> None:
        """Give back the pages of the views read so far (they stay in the page cache, and a view
        still used faults them in again): a merge, done with one tensor of an input, holds at
        most one input tensor's pages this way. ``span`` (a part of a view): its whole pages only."""
        self._maps.release(span)

    def _file(self, object_id: str) -> h5py.File:
        with self._lock:  # read_all reads from worker threads
            return self._open_file(object_id)

    def _open_file(self, object_id: str) -> h5py.File:
        if object_id not in self._files:
            path = self._locate(object_id)
            try:
                self._files[object_id] = _open(path)
            except FileNotFoundError as exc:
                raise IntegrityError(f"snapshot file of {object_id[:12]} is missing") from exc
        return self._files[object_id]

    def chain_depth(self, entry: ManifestEntry) -> int:
        """How many deltas deep the stored tensor of ``entry`` is (0: stored whole)."""
        return delta_base(self._file(entry.object)["tensors"][entry.hash])[1]

    def read(self, entry: ManifestEntry, verify: bool = True, owner: str = "", view: bool = False) -> np.ndarray:
        """Return the tensor of ``entry``; raise :class:`IntegrityError` when it is damaged.

        A delta-coded tensor is decoded with its whole chain of bases. Its hash covers the decoded
        bytes, so checking it checks every base too; only when it fails is each base checked on its
        own, to name the damaged one.
        """
        where = self._where(entry, owner)
        try:
            array = self._read_checked(entry, where, view)
        except IntegrityError:
            raise
        except H5_READ_ERRORS as exc:
            raise IntegrityError(f"{where}: unreadable ({exc})") from exc
        if verify:
            self.check(entry, tensor_hash(array), owner)
        return array

    def read_all(self, entries: list[ManifestEntry] | tuple[ManifestEntry, ...], verify: bool = True,
                 owner: str = "", progress: bool | None = None, views: bool = False,
                 recycle: bool = False) -> dict[str, np.ndarray]:
        """Every tensor of ``entries`` by name, each re-hashed; :class:`IntegrityError` names the
        first damaged one.

        Tensors stored as they are (a commit's loose files) are found with HDF5's low-level calls
        and hashed straight from the file's map in batches on the hashing threads
        (:mod:`.mapped_read`); the others (coded, deltas) are read, decoded (zstd and numpy release
        the GIL) and hashed in worker threads, several at a time.

        ``views``: a tensor stored as it is comes back as a read-only view of the file's map (hashed,
        not copied) while this reader is open, for a caller copying it into a model (one copy, not
        two); ``recycle``: copied ones go in memory earlier checkouts' models let go (:mod:`.recycled`).
        """
        entries = list(entries)
        arrays: dict[str, np.ndarray] = {}
        total = sum(e.nbytes for e in entries)
        mapped = self.mapped_views(entries)
        with progress_bar(total, f"checkout {owner[:8]}".strip(), progress) as bar:
            if total < THREADED_HASH_BYTES:  # small: threads cost more than they save
                for index, entry in enumerate(entries):
                    if index in mapped:
                        array, digest = mapped_read.hashed(mapped[index], entry, not views, verify,
                                                           self._where(entry, owner))
                        if verify:
                            self.check(entry, digest, owner)
                    else:
                        array = self.read(entry, verify=verify, owner=owner, view=views)
                    arrays[entry.name] = array
                    bar.update(entry.nbytes)
                return arrays
            release = None if views else self._maps.handed
            batches = mapped_read.hash_mapped(mapped, entries, not views, lambda i: self._where(entries[i], owner),
                                              verify, release, recycle)
            futures = {index: hash_pool().submit(self._read_hashed, entry, owner, verify, views)
                       for index, entry in enumerate(entries) if index not in mapped}
            try:
                run_waiting(batches)  # this thread takes the batches no hashing thread has started
                done = {index: (array, digest) for batch in batches for index, array, digest in batch.result()}
                for index, entry in enumerate(entries):
                    array, digest = done[index] if index in done else futures[index].result()
                    if verify:
                        self.check(entry, digest, owner)
                    arrays[entry.name] = array
                    bar.update(entry.nbytes)
            except BaseException:
                for future in [*batches, *futures.values()]:
                    future.cancel()
                raise
        return arrays

    def mapped_views(self, entries: list[ManifestEntry]) -> dict[int, np.ndarray]:
        """Entry index -> read-only view of its mapped bytes, for the tensors stored as they are
        (:mod:`.mapped_read`; unverified: the caller hashes them and calls :meth:`check`)."""
        def file_of(object_id: str) -> tuple[h5py.Group, object]:
            return self._tensors_group(object_id, ""), self._maps.whole(self._file(object_id))
        return mapped_read.loose_views(entries, file_of, mapped_read.remembered_maps(self._locate, self._maps))

    @staticmethod
    def _where(entry: ManifestEntry, owner: str) -> str:
        return f"version {owner[:12]} tensor {entry.name!r}" if owner else f"tensor {entry.name!r}"

    def _read_hashed(self, entry: ManifestEntry, owner: str, verify: bool,
                     view: bool = False) -> tuple[np.ndarray, str | None]:
        array = self.read(entry, verify=False, owner=owner, view=view)
        return array, tensor_hash(array) if verify else None

    def check(self, entry: ManifestEntry, digest: str, owner: str = "") -> None:
        """:class:`IntegrityError` when ``digest`` (of a tensor read with ``verify=False``) is not ``entry.hash``."""
        if digest != entry.hash:
            raise IntegrityError(f"{self._where(entry, owner)}: {self._damage(entry)}")

    def _damage(self, entry: ManifestEntry, chain: int = 0) -> str:
        """What is wrong with a tensor whose decoded bytes do not match its hash: its own bytes, or
        (checked one by one, down the chain) the delta base that is damaged."""
        try:
            reference = read_text_attr(self._file(entry.object)["tensors"][entry.hash], BASE_ATTR)
        except (*H5_READ_ERRORS, IntegrityError):
            reference = None
        if reference is not None and chain < MAX_CHAIN:
            object_id, _, digest = reference.partition("/")
            if is_hash(object_id) and is_hash(digest):
                base = ManifestEntry(entry.name, entry.dtype, entry.shape, digest, object_id, entry.nbytes)
                try:
                    damaged = tensor_hash(self._read_checked(base, "base")) != digest
                except (IntegrityError, *H5_READ_ERRORS):
                    damaged = True
                if damaged:
                    return f"its delta base {object_id[:12]}/{digest[:12]} is damaged ({self._damage(base, chain + 1)})"
        return "content does not match its hash (data is damaged)"

    def _read_coded(self, entry: ManifestEntry, dataset: h5py.Dataset, where: str) -> np.ndarray:
        """Decode a coded tensor, a delta with every base down to the tensor stored whole."""
        return tensor_decode.read_coded(entry, dataset, where, self._maps, self._dataset, self._read_whole)

    def _tensors_group(self, object_id: str, where: str) -> h5py.Group:
        group = self._groups.get(object_id)
        if group is None:  # checked once per file: 320 tensors need not look /tensors up 320 times
            f = self._file(object_id)
            if not isinstance(f.get("tensors", getlink=True), h5py.HardLink):
                raise IntegrityError(f"{where}: /tensors is missing or a link")
            group = self._groups[object_id] = f["tensors"]
        return group

    def _dataset(self, entry: ManifestEntry, where: str) -> h5py.Dataset:
        """The dataset of ``entry``: a hard link to contiguous, non-virtual, non-external storage."""
        group = self._tensors_group(entry.object, where)
        link = group.get(entry.hash, getlink=True)
        if link is None:
            raise IntegrityError(f"{where}: bytes missing from snapshot {entry.object[:12]}")
        if not isinstance(link, h5py.HardLink):
            raise IntegrityError(f"{where}: stored as a soft or external link, refused")
        dataset = group[entry.hash]
        if not isinstance(dataset, h5py.Dataset):
            raise IntegrityError(f"{where}: not a dataset")
        if dataset.is_virtual or dataset.external or dataset.chunks is not None:
            raise IntegrityError(f"{where}: virtual, external or chunked storage is refused")
        return dataset

    def _read_checked(self, entry: ManifestEntry, where: str, view: bool = False) -> np.ndarray:
        dataset = self._dataset(entry, where)
        if CODING_ATTR in dataset.attrs:
            return self._read_coded(entry, dataset, where)
        return self._read_whole(entry, dataset, where, view)

    def _read_whole(self, entry: ManifestEntry, dataset: h5py.Dataset, where: str, view: bool = False) -> np.ndarray:
        dtype = dtype_from_name(entry.dtype)
        raw_name = read_text_attr(dataset, RAW_DTYPE_ATTR)
        if raw_name is not None:
            if raw_name != entry.dtype or dataset.dtype != np.uint8 or dataset.shape != (entry.nbytes,):
                raise IntegrityError(f"{where}: stored dtype or shape differs from the manifest")
        elif dataset.dtype != dtype or tuple(dataset.shape) != entry.shape:
            raise IntegrityError(f"{where}: stored dtype or shape differs from the manifest")
        if entry.nbytes and dataset.id.get_storage_size() != entry.nbytes:
            raise IntegrityError(f"{where}: stored bytes do not match the declared shape")
        mapped = self._maps.view(dataset, entry.nbytes) if entry.nbytes else None
        if view and mapped is not None and mapped.ctypes.data % dtype.itemsize == 0:
            return mapped.view(dtype).reshape(entry.shape)  # read-only, valid while the reader is open
        check_read(entry.nbytes, where)  # the declared size against the memory there is, before allocating
        array = aligned_empty(entry.shape, dtype)
        if entry.nbytes:  # little-endian bytes (the dtype was checked): copied from the file's map
            if mapped is not None:
                np.copyto(array.reshape(-1).view(np.uint8), mapped)
            else:
                dataset.read_direct(array.reshape(-1).view(np.uint8) if raw_name is not None else array)
        return array

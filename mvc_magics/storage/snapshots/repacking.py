"""Re-coding a snapshot file in place: the same version, the same tensors, smaller bytes.

:func:`recode_snapshot` writes a new file holding exactly what the old one held (meta, structure,
manifest, every tensor under the same hash), each tensor as its :class:`TensorPlan` says: copied as
it is (a delta whose chain grew gets its new depth), or decoded, verified and coded again, as a
delta against a given base or alone. The new file is fsynced and renamed over the old one, so a
kill at any point leaves either the old file or the new one, both complete; a reader holding the
old file open keeps reading it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ...core.manifest import ManifestEntry
from ...errors import IntegrityError
from ..codec.tensor_decode import BASE2_ATTR, DEPTH_ATTR
from ..files.atomic import fsync_path, temporary_path
from ..files.h5_open import H5_READ_ERRORS, open_hdf5
from ..files.h5_values import read_attr, read_text_attr
from .snapshot import BASE_ATTR, CODING_ATTR, TensorReader, read_content, unreadable
from .snapshot_writer import DeltaBase, SnapshotWriter


@dataclass(frozen=True)
class StoredCoding:
    """How one tensor is stored: its coding (None: as it is), base reference and chain depth."""

    coding: str | None
    base: str | None
    depth: int
    second: str | None = None  # a second-order delta's second base


@dataclass(frozen=True)
class TensorPlan:
    """What a repack does with one tensor: ``keep`` it as stored (with ``depth`` as its new
    depth attribute when given), or code it again against ``base()`` (None: alone)."""

    keep: bool = False
    depth: int | None = None
    base: Callable[[], DeltaBase | None] | None = None


class RepackPlan(Protocol):
    def __call__(self, entry: ManifestEntry) -> TensorPlan: ...

    def decoded(self, digest: str, array: np.ndarray) -> None: ...


def stored_codings(path: Path) -> tuple[int, dict[str, StoredCoding]]:
    """(format version, hash -> :class:`StoredCoding`) of every tensor a snapshot file holds
    (attributes only; :class:`IntegrityError` when the file is not a readable snapshot)."""
    try:
        with open_hdf5(path) as f:
            found = {}
            for digest, dataset in f["tensors"].items():
                coding, base, second = (read_text_attr(dataset, name) for name in (CODING_ATTR, BASE_ATTR, BASE2_ATTR))
                depth = int(read_attr(dataset, DEPTH_ATTR, 1 if base is not None else 0))
                found[digest] = StoredCoding(coding, base, depth, second)
            return int(read_attr(f, "mvc_format_version", 1)), found
    except H5_READ_ERRORS as exc:
        raise unreadable(path, exc) from exc


def stored_sizes(path: Path) -> dict[str, tuple[int, str | None]]:
    """hash -> (bytes its dataset takes in the file, its coding or None) of every tensor the
    snapshot file holds (for ``du``; :class:`IntegrityError` when the file is not readable)."""
    try:
        with open_hdf5(path) as f:
            return {digest: (int(dataset.id.get_storage_size()), read_text_attr(dataset, CODING_ATTR))
                    for digest, dataset in f["tensors"].items()}
    except H5_READ_ERRORS as exc:
        raise unreadable(path, exc) from exc


def recode_snapshot(path: Path, vid: str, locate: Callable[[str], Path], tmp_folder: Path,
                    plan: RepackPlan) -> tuple[int, int]:
    """Re-code the full snapshot file ``path`` of version ``vid``; return (bytes before, after).

    ``plan(entry)`` says what to do with each tensor the file holds; ``plan.decoded(hash, array)``
    is told each tensor decoded on the way (the next version's bases). Every tensor coded again is
    read and verified first; nothing changes when one is damaged.
    """
    content = read_content(path)
    if content.version_id != vid:
        raise IntegrityError(f"snapshot {path.name} holds version {content.version_id[:12]}")
    own = {e.hash: e for e in content.manifest if e.object == vid}
    tmp = temporary_path(tmp_folder, ".h5")
    writer = SnapshotWriter(tmp)
    before = path.stat().st_size
    try:
        with TensorReader(locate) as reader, open_hdf5(path) as source:
            held = source["tensors"]
            ref = content.structure_ref  # format 3: the structure's blob, kept as it is (same reference)
            blob = {ref.hash} if ref is not None and ref.object == vid else set()
            if set(held) != set(own) | blob:
                raise IntegrityError(f"snapshot {vid[:12]} holds other tensors than its manifest names")
            for digest in blob - set(own):
                writer.copy_dataset(held[digest], digest)
            for digest, entry in own.items():
                todo = plan(entry)
                if todo.keep:
                    writer.copy_dataset(held[digest], digest,
                                        {DEPTH_ATTR: todo.depth} if todo.depth is not None else None)
                    continue
                array = reader.read(entry, verify=True, owner=vid)
                plan.decoded(digest, array)
                writer.add_tensor(digest, array, base=todo.base() if todo.base is not None else None)
        writer.finish(vid, content.meta, content.structure, list(content.manifest), content.structure_ref)
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return before, path.stat().st_size

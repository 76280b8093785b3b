"""Re-coding a snapshot file in place: the same version, the same tensors, smaller bytes.

:func:`recode_snapshot` writes a new file holding exactly what the old one held (meta, structure,
manifest, every tensor under the same hash), each tensor re-coded: as an XOR delta against the
base a caller offers when that is smaller, plane-coded otherwise; tensors that already are deltas
are copied as they are (their chains stay as they were written). The new file is fsynced and
renamed over the old one, so a kill at any point leaves either the old file or the new one, both
complete; a reader holding the old file open keeps reading it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from ..core.manifest import ManifestEntry
from ..errors import IntegrityError
from .atomic import fsync_path, temporary_path
from .snapshot import BASE_ATTR, CODING_ATTR, TensorReader, read_content
from .snapshot_writer import DeltaBase, SnapshotWriter


def recode_snapshot(path: Path, vid: str, locate: Callable[[str], Path], tmp_folder: Path,
                    base_for: Callable[[ManifestEntry, np.ndarray], DeltaBase | None]) -> tuple[int, int]:
    """Re-code the full snapshot file ``path`` of version ``vid``; return (bytes before, after).

    ``base_for(entry, array)`` offers a delta base for a tensor the file holds (or None). Every
    tensor is read and verified before it is written again; nothing changes when one is damaged.
    """
    content = read_content(path)
    if content.version_id != vid:
        raise IntegrityError(f"snapshot {path.name} holds version {content.version_id[:12]}")
    own = {e.hash: e for e in content.manifest if e.object == vid}
    tmp = temporary_path(tmp_folder, ".h5")
    writer = SnapshotWriter(tmp)
    before = path.stat().st_size
    try:
        with TensorReader(locate) as reader, h5py.File(path, "r") as source:
            held = source["tensors"]
            if set(held) != set(own):
                raise IntegrityError(f"snapshot {vid[:12]} holds other tensors than its manifest names")
            for digest, entry in own.items():
                dataset = held[digest]
                if CODING_ATTR in dataset.attrs and BASE_ATTR in dataset.attrs:
                    writer.copy_dataset(dataset, digest)  # a delta stays the delta it is
                    continue
                array = reader.read(entry, verify=True, owner=vid)
                writer.add_tensor(digest, array, base=base_for(entry, array))
        writer.finish(vid, content.meta, content.structure, list(content.manifest))
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return before, path.stat().st_size

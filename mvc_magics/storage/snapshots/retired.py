"""Retired files: what gc leaves of a removed version's snapshot when other versions still read
tensors from it (a new immutable file holding only those tensors, renamed over the old one).

See docs/FORMAT.md ("Removed versions and gc").
"""

from __future__ import annotations

from pathlib import Path

import h5py

from ...errors import IntegrityError
from ..files.atomic import write_atomically
from ..files.h5_open import open_hdf5
from ..files.h5_values import read_attr, write_text_attr
from .snapshot import FORMAT_NAME, FORMAT_VERSION

RETIRED_ATTR = "mvc_retired"


def is_retired(path: Path) -> bool:
    """True when ``path`` is a retired file (tensors of a removed version still in use)."""
    with open_hdf5(path) as f:
        return bool(read_attr(f, RETIRED_ATTR, False))


def held_hashes(path: Path) -> set[str]:
    """The tensor hashes a snapshot or retired file holds bytes for."""
    with open_hdf5(path) as f:
        group = f.get("tensors")
        return set(group.keys()) if isinstance(group, h5py.Group) else set()


def garbage_hashes(path: Path) -> set[str]:
    """:func:`held_hashes` of a file gc deletes as garbage: empty when it is not even HDF5 (a
    damaged file no version needs is deleted all the same, not a reason to stop gc)."""
    try:
        return held_hashes(path)
    except OSError:
        return set()


def write_retired(final: Path, version_id: str, source: Path, keep: set[str], tmp_folder: Path) -> None:
    """Atomically replace ``final`` by a retired file holding only the tensors ``keep`` from ``source``."""

    def write(tmp: Path) -> None:
        with open_hdf5(source) as src, h5py.File(tmp, "w", libver=("earliest", "v110")) as dst:
            write_text_attr(dst, "mvc_format", FORMAT_NAME)
            # Coded datasets are copied as they are: the file keeps its source's format version.
            dst.attrs["mvc_format_version"] = int(read_attr(src, "mvc_format_version", FORMAT_VERSION))
            write_text_attr(dst, "version_id", version_id)
            dst.attrs[RETIRED_ATTR] = True
            tensors = dst.create_group("tensors")
            for digest in sorted(keep):
                link = src["tensors"].get(digest, getlink=True)
                if not isinstance(link, h5py.HardLink):
                    raise IntegrityError(f"retired file {version_id[:12]}: tensor {digest[:12]} missing or a link")
                src.copy(src["tensors"][digest], tensors, name=digest)

    write_atomically(final, write, tmp_folder)

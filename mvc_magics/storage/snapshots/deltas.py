"""Delta bases: which stored tensor a new tensor may be coded against, and what a delta depends on.

A new tensor is coded as an XOR delta against the tensor of the same name, dtype and shape in a
related version: the parent for a commit, the first input that has it for a merge. Chains are
bounded like git bounds delta depth: a base already ``max_depth`` deltas deep is not used, so the
tensor is stored whole (a keyframe) and reading any version decodes at most ``max_depth + 1``
tensors per name. Deltas are made by ``gc --repack``; a commit makes them only when
``MVC_DELTA_DEPTH`` is set (it sets the bound; 0 turns deltas off). ``MVC_CODING=off`` turns all
coding off (tensors stored raw, as in format version 1).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import h5py
import numpy as np

from ...core.hashing import tensor_hash
from ...core.manifest import ManifestEntry
from ...errors import IntegrityError
from ..codec.tensor_decode import MAX_CHAIN, delta_base
from ..files.h5_open import H5_READ_ERRORS, open_hdf5
from ..files.h5_values import read_text_attr
from .snapshot import STRUCTURE_ATTR, TensorReader, structure_reference, unreadable
from .snapshot_writer import DeltaBase

DEPTH_ENV = "MVC_DELTA_DEPTH"
CODING_ENV = "MVC_CODING"
DEFAULT_MAX_DEPTH = 4


def coding_enabled() -> bool:
    """False when ``MVC_CODING=off``: tensors are stored raw."""
    return os.environ.get(CODING_ENV, "on").strip().lower() not in ("off", "0", "no", "false")


def max_depth() -> int:
    """The longest delta chain a repacked tensor may extend (``MVC_DELTA_DEPTH``, default 4, at
    most ``MAX_CHAIN``: readers refuse longer chains)."""
    try:
        return min(MAX_CHAIN, max(0, int(os.environ.get(DEPTH_ENV, DEFAULT_MAX_DEPTH))))
    except ValueError:
        return DEFAULT_MAX_DEPTH


def commit_depth() -> int:
    """The longest delta chain a *commit* may extend: 0 (no deltas) unless ``MVC_DELTA_DEPTH`` is set.

    Like git, which writes loose objects and makes deltas when it packs: a delta at commit time
    decodes the parent's tensors (a 100 MB commit went from 0.26 s to 0.43 s) and every checkout
    then decodes the chain (0.16 s to 0.82 s, 9.5x safetensors), where a version coded alone
    checks out at 1.3x. Deltas are made by ``gc --repack`` (depth 4), or at commit when asked.
    """
    return max_depth() if os.environ.get(DEPTH_ENV) else 0


def stored_coding(f: h5py.File, digest: str) -> tuple[str | None, int]:
    """(``<object>/<hash>`` of the base or None, chain depth) of the tensor ``digest`` in ``f``."""
    return delta_base(f["tensors"][digest])


def base_references(path: Path) -> dict[str, tuple[str, str]]:
    """hash -> (base object id, base hash) of every delta-coded tensor a snapshot file holds, and
    of its structure when another file stores it (format 3): what must travel and stay with it.

    :class:`IntegrityError` (one line, naming the file) when the file is not a readable snapshot:
    callers (pull, gc, repack) handle such a file on its own instead of stopping at a raw ``OSError``.
    """
    key = str(path)
    stat = os.stat(path)  # FileNotFoundError for a missing file, as before
    identity = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    cached = _REFERENCES.get(key)
    if cached is not None and cached[0] == identity:
        return dict(cached[1])
    try:
        found = _base_references(path)
    except FileNotFoundError:
        raise
    except H5_READ_ERRORS as exc:
        raise unreadable(path, exc) from exc
    if len(_REFERENCES) >= _REFERENCES_KEPT:
        _REFERENCES.pop(next(iter(_REFERENCES)))
    _REFERENCES[key] = (identity, dict(found))
    return found


# What base_references found, per file, while the file is the same one (device, inode, size and
# modification time): snapshot files are written once and replaced by rename (a new inode), so a
# gc run by a long training loop's retention policy does not re-read every file's attributes.
_REFERENCES: dict[str, tuple[tuple[int, int, int, int], dict[str, tuple[str, str]]]] = {}
_REFERENCES_KEPT = 65536


def _base_references(path: Path) -> dict[str, tuple[str, str]]:
    found: dict[str, tuple[str, str]] = {}
    with open_hdf5(path) as f:
        reference = read_text_attr(f, STRUCTURE_ATTR)  # format 3: the structure stored in another file
        if reference is not None:
            ref = structure_reference(reference, path.name)
            if ref.object != read_text_attr(f, "version_id"):
                found[ref.hash] = (ref.object, ref.hash)
        group = f.get("tensors")
        if not isinstance(group, h5py.Group):
            return found
        for digest in group:
            reference, _ = stored_coding(f, digest)
            if reference is not None:
                base_object, _, base_hash = reference.partition("/")
                found[digest] = (base_object, base_hash)
    return found


def needed_with_bases(used: dict[str, set[str]], locate: Callable[[str], Path]) -> dict[str, set[str]]:
    """``used`` (object id -> hashes read from it) grown with every delta base those tensors need,
    transitively: what gc must keep and push/pull must move."""
    needed = {oid: set(hashes) for oid, hashes in used.items()}
    todo = list(needed)
    scanned: dict[str, dict[str, tuple[str, str]]] = {}
    while todo:
        oid = todo.pop()
        if oid not in scanned:
            path = locate(oid)
            try:
                scanned[oid] = base_references(path) if path.exists() else {}
            except IntegrityError as exc:  # its bases are unknown: deleting anything could lose them
                raise IntegrityError(f"{exc}; versions still read from it, so gc deleted nothing "
                                     "(run verify)") from exc
        for digest in list(needed[oid]):
            if digest in scanned[oid]:
                base_object, base_hash = scanned[oid][digest]
                if base_hash not in needed.setdefault(base_object, set()):
                    needed[base_object].add(base_hash)
                    todo.append(base_object)
    return needed


# The tensors of this process's latest commit, by hash: the next commit of a training loop finds
# its delta bases here instead of decoding the parent's chain from disk. Each is re-hashed before
# use (an array may share memory with a live model that has trained since), so a stale entry is
# only a miss. ``MVC_BASE_CACHE_MB`` bounds it (0: off).
_RECENT: dict[str, np.ndarray] = {}
CACHE_ENV = "MVC_BASE_CACHE_MB"


def base_cache_bytes() -> int:
    """How many bytes of decoded tensors may be kept as delta bases (``MVC_BASE_CACHE_MB``, default 512)."""
    try:
        return max(0, int(float(os.environ.get(CACHE_ENV, 512)) * (1 << 20)))
    except ValueError:
        return 512 << 20


def remember_committed(arrays: Iterable[tuple[str, np.ndarray]]) -> None:
    """Keep (hash, array) of the tensors just committed as the next commit's candidate bases."""
    limit = base_cache_bytes()
    _RECENT.clear()
    total = 0
    for digest, array in arrays:
        if total + array.nbytes <= limit:
            _RECENT[digest] = array
            total += array.nbytes


def _recent(entry: ManifestEntry) -> np.ndarray | None:
    array = _RECENT.get(entry.hash)
    if array is None or array.dtype.name != entry.dtype or tuple(array.shape) != entry.shape:
        return None
    return array if tensor_hash(array) == entry.hash else None


class ParentBases:
    """Finds, for each new tensor of a commit, its base in the parents' stored tensors.

    Reading a base decodes and verifies it (a damaged parent simply gives no base: the tensor is
    stored whole). Call :meth:`close` when done.
    """

    def __init__(self, locate: Callable[[str], Path], parents: Iterable[list[ManifestEntry]],
                 depth_limit: int | None = None) -> None:
        self._limit = max_depth() if depth_limit is None else depth_limit
        self._candidates: dict[str, list[ManifestEntry]] = {}
        for manifest in parents:
            for entry in manifest:
                self._candidates.setdefault(entry.name, []).append(entry)
        self._reader = TensorReader(locate)

    def __call__(self, name: str, array: np.ndarray, digest: str) -> DeltaBase | None:
        if self._limit <= 0:
            return None
        for entry in self._candidates.get(name, ()):
            if entry.dtype != array.dtype.name or entry.shape != tuple(array.shape) or entry.hash == digest:
                continue
            try:
                depth = self._reader.chain_depth(entry)
                if depth >= self._limit:
                    return None  # a keyframe: the chain ends here
                base = _recent(entry)
                if base is None:
                    base = self._reader.read(entry, verify=True)
            except (IntegrityError, OSError, KeyError, ValueError, RuntimeError):
                continue
            return DeltaBase(entry.object, entry.hash, base, depth)
        return None

    def close(self) -> None:
        self._reader.close()

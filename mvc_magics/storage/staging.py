"""Staging a commit: hash the tensors and write the ones the store lacks, in one overlapped pass.

A commit only learns its version id once every tensor is hashed, but it need not wait for that to
start writing: tensors are hashed ahead in worker threads (BLAKE3 releases the GIL) while the
calling thread writes each new tensor into a temporary snapshot file. Once the id is known the
metadata is added and the file is fsynced and renamed into place (:func:`publish`), or discarded
when the store already holds that version. Integrity is the same as writing in two passes: the
file is only ever visible under its final name complete and fsynced.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from ..core.hashing import HashesAhead, dtype_name
from ..core.progress import progress_bar
from .atomic import publish, temporary_path
from .deltas import remember_committed
from .snapshot import FORMAT_VERSION, ManifestEntry
from .snapshot_writer import DeltaBase, SnapshotWriter


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
                 code: bool = True, place: Callable[[Path, Path], None] | None = None) -> None:
        self._stored_object = stored_object
        # name, array, hash -> the stored tensor to code a delta against (see storage.deltas).
        self._bases = bases or (lambda name, array, digest: None)
        self._code = code
        self._place = place  # renames the complete file into the store without following symlinks
        # Called with a tensor's size before it is written: HDF5 must never meet a full disk.
        self._check_space = check_space or (lambda nbytes: None)
        self._progress = progress
        self._writer = SnapshotWriter(temporary_path(tmp_folder, ".h5"), FORMAT_VERSION if code else 1)
        self.arrays: dict[str, np.ndarray] = {}
        self.hashes: dict[str, str] = {}
        self.located: dict[str, str | None] = {}  # hash -> object id holding it (None: new here)
        self.bytes_written = 0  # logical bytes of the tensors written
        self.bytes_stored = 0  # what they took in the file (coded)
        self.tensors_written = 0

    def stage(self, arrays: Mapping[str, np.ndarray], description: str = "commit",
              hashes: HashesAhead | None = None) -> None:
        """Hash every array (or take ``hashes`` already under way), writing each one whose hash
        the store (and this commit) lacks."""
        self.arrays = dict(arrays)
        total = sum(int(a.nbytes) for a in self.arrays.values())
        with progress_bar(total, description, self._progress) as bar:
            for key, digest in hashes if hashes is not None else HashesAhead(self.arrays):
                self.hashes[key] = digest
                array = self.arrays[key]
                if digest not in self.located:
                    self.located[digest] = self._stored_object(digest)
                    if self.located[digest] is None:
                        self._write(key, digest, array)
                bar.update(int(array.nbytes))

    def _write(self, key: str, digest: str, array: np.ndarray, delta: bool = True) -> None:
        self._check_space(int(array.nbytes))
        base = self._bases(key, array, digest) if self._code and delta else None
        self.bytes_stored += self._writer.add_tensor(digest, array, base=base, code=self._code)
        self.bytes_written += int(array.nbytes)
        self.tensors_written += 1

    def claim_own(self, version_id: str) -> None:
        """Write the tensors the index places in ``version_id``'s own file: that file is being
        (re)written, so bytes it held before (a removed version committed again) must be in it.
        """
        for key, array in self.arrays.items():
            digest = self.hashes[key]
            if self.located.get(digest) == version_id:
                self.located[digest] = None
                # Whole, never a delta: other stored tensors may be deltas against these very bytes,
                # and a base of a base must never come back to the file being rewritten (a cycle).
                self._write(key, digest, array, delta=False)

    def entries(self) -> list[tuple[str, str, tuple[int, ...], str]]:
        """(name, dtype, shape, hash) of every tensor: the input of :func:`hashing.version_id`."""
        return [(k, dtype_name(a.dtype), tuple(a.shape), self.hashes[k]) for k, a in self.arrays.items()]

    def manifest(self, version_id: str) -> list[ManifestEntry]:
        """The manifest of the version: new tensors live in its own file, the rest where they are."""
        return [
            ManifestEntry(k, dtype_name(a.dtype), tuple(a.shape), self.hashes[k],
                          self.located[self.hashes[k]] or version_id, int(a.nbytes))
            for k, a in self.arrays.items()
        ]

    def publish(self, final: Path, version_id: str, meta: Mapping, structure: object,
                manifest: list[ManifestEntry]) -> None:
        """Complete the snapshot file and move it to ``final`` (fsync, rename, fsync folder)."""
        self._close_bases()
        try:
            self._writer.finish(version_id, meta, structure, manifest)
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

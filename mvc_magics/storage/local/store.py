"""The opened store: its folder, index and audit log, and the reads every operation shares.

Operations take a :class:`Store` (never ``Repo``). Every write goes through :attr:`Store.writes`
(:mod:`.writes`), which owns the order of each write; opening a store, or taking its lock after a
holder died, finishes what a killed process left (:mod:`.recovery`).
"""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ...core.names import head_key, workspace_key, workspace_name
from ...errors import IntegrityError, MVCError, StoreError, UnknownRefError
from ..files.checksum import is_loose
from ..snapshots.retired import held_hashes
from ..snapshots.snapshot import ManifestEntry, SnapshotContent, read_verified
from . import recovery
from .audit import AuditLog
from .background import Background
from .index import Index
from .journal import Journal
from .layout import StoreLayout
from .writes import StoreWrites

# Verified snapshot contents kept per store (structures can be large: a bounded cache).
_CONTENTS_KEPT = 256


class Store:
    """One store folder, opened: layout, index (rebuilt when missing or damaged) and audit log.

    Args:
        path: the store folder.
        create: create the store when it does not exist yet.
        workspace: the notebook whose HEADs this store object reads and moves (None: the shared HEAD).
    """

    def __init__(self, path: Path, create: bool = True, workspace: str | None = None) -> None:
        self.path = Path(path)
        self.layout = StoreLayout(self.path)
        self.layout.open(create=create)
        self._audit = AuditLog(self.layout.audit_path, self.layout.files)
        self._audit.anchor = self._audit_anchor
        self._audit.on_write = self._record_audit_head
        self.journal = Journal(self.layout)
        #: Progress bars on long reads and writes: None after about a second, True at once, False never.
        self.progress: bool | None = None
        #: The notebook whose HEADs this store object reads and moves (None: the shared HEAD of the API/CLI).
        self._workspace: str | None = None
        self.legacy_workspace: str | None = None
        self.workspace = workspace
        self._contents: dict[str, tuple[tuple, SnapshotContent]] = {}
        self._loose: dict[str, tuple[tuple, int]] = {}  # id -> (file identity, loose bytes or 0)
        #: Jobs finished after their call returned (the automatic pack, commits handed off by loops),
        #: run on a store object of their own (its own index connection and lock) opened by the worker.
        self.background = Background(f"bg{id(self):x}", lambda: Store(self.path, create=False),
                                     store_key=os.path.realpath(self.path))
        self._lock_holder: int | None = None  # the thread inside locked() (nested calls see it)
        self.writes = StoreWrites(self)
        if self.layout.readonly:
            if not self.layout.index_path.exists():
                raise StoreError(f"the store {self.path} is read-only and has no index to read (it cannot "
                                 "be rebuilt without write access)")
            self.index = Index(self.layout.index_path, readonly=True)
            return
        rebuild = not self.layout.index_path.exists()
        try:
            self.index = Index(self.layout.index_path)
            self.index.query("SELECT count(*) FROM versions")
        except IntegrityError:  # a damaged index is rebuilt from the snapshots
            self._fresh_index()
            rebuild = True
        self.layout.on_stale_lock = self._recover_after_crash
        if rebuild:
            self.reindex()
        else:
            self._recover_unindexed()
            self.layout.recover_if_stale()

    @property
    def index(self) -> Index:
        """The SQLite index. On the user's thread, the work handed off to the background is finished
        first (:meth:`_settled`), so every read sees it (a read never waits for a pack)."""
        self._settled()
        return self._index

    @index.setter
    def index(self, value: Index) -> None:
        self._index = value

    @property
    def audit(self) -> AuditLog:
        """The hash-chained audit log, read once the work handed off is finished (:meth:`_settled`)."""
        self._settled()
        return self._audit

    def _settled(self) -> None:
        """On the user's thread: wait for the commits and HEAD moves handed off to the background,
        this store object's and this process's other store objects' on the same store. Not for
        those of others while this thread holds the lock: they were waited for when it was taken,
        and any given since need the lock, so they come after this thread's work anyway."""
        if not self.background.in_worker():
            self.background.settle()
            if self._lock_holder != threading.get_ident():
                self.background.settle_others()

    def close(self) -> None:
        """Finish the background jobs (a pack in flight stops at its next file), close the index."""
        self.background.close()
        self.index.close()

    @property
    def readonly(self) -> bool:
        """True when the folder cannot be written (nothing is recorded, not even a HEAD)."""
        return self.layout.readonly

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store lock (re-entrant); a dead holder's half-done work is finished first.

        The user's thread first waits for the commits it handed off (they come before this write)
        and asks a pack in flight to stop at its next file."""
        if not self.background.in_worker():
            self.background.wait(packs=False)
            self.background.raise_error()  # what a commit handed off hit is said before anything else
            self._settled()  # the other store objects' handed-off work (when first taken)
        with self.layout.locked():
            outer, self._lock_holder = self._lock_holder, threading.get_ident()
            try:
                yield
            finally:
                self._lock_holder = outer

    def loose_objects(self) -> dict[str, int]:
        """id -> size of every loose snapshot file (written by a commit, not packed yet); each
        file's user block is read once per change of the file (kept by inode, size and time)."""
        found: dict[str, int] = {}
        for vid, path in self.layout.snapshot_files():
            try:
                info = path.stat()
                key = (info.st_ino, info.st_size, info.st_mtime_ns)
                cached = self._loose.get(vid)
                if cached is None or cached[0] != key:
                    cached = self._loose[vid] = (key, info.st_size if is_loose(path) else 0)
            except OSError:  # removed or replaced meanwhile: counted on the next look
                continue
            if cached[1]:
                found[vid] = cached[1]
        return found

    # -- reads of the index (a cache of the files) ------------------------------------------

    def has_version(self, vid: str) -> bool:
        return bool(self.index.query("SELECT 1 FROM versions WHERE id = ?", (vid,)))

    def head_key(self, name: str) -> str:
        """The key of model ``name``'s HEAD here: its own in this store object's notebook (:attr:`workspace`)."""
        return head_key(name, self.workspace)

    @property
    def workspace(self) -> str | None:
        """The key of this store object's notebook's HEADs (:func:`~mvc_magics.core.names.workspace_key`:
        its path relative to the store's folder, with a digest), or None for the shared HEAD."""
        return self._workspace

    @workspace.setter
    def workspace(self, notebook: str | None) -> None:
        """Set from a notebook path (or a key). HEADs a store written before keys were paths holds
        under the notebook's bare file name (``legacy_workspace``) are read until this notebook
        moves its own."""
        key = workspace_key(notebook, os.path.abspath(self.path.parent))
        legacy = workspace_name(notebook) if key is not None and key != notebook else None
        self._workspace, self.legacy_workspace = key, legacy if legacy != key else None

    def head_id(self, name: str) -> str | None:
        keys = [self.head_key(name)] + ([head_key(name, self.legacy_workspace)] if self.legacy_workspace else [])
        for key in keys:
            rows = self.index.query("SELECT id FROM heads WHERE name = ?", (key,))
            if rows:
                return rows[0][0]
        return None

    def head_file(self, name: str) -> str | None:
        """The id in the HEAD ref file of ``name`` (the truth the index caches), if readable."""
        return self.layout.read_head(self.head_key(name))

    def tag(self, name: str, tag: str) -> tuple[str, bool] | None:
        """(version id, protected) of tag ``tag`` of model ``name``, or None."""
        rows = self.index.query("SELECT id, protected FROM tags WHERE name = ? AND tag = ?", (name, tag))
        return (rows[0][0], bool(rows[0][1])) if rows else None

    def stored_object(self, digest: str) -> str | None:
        """The id of the snapshot file holding the tensor ``digest``, or None when it is not stored.

        The index is a cache: a commit reuses bytes only after seeing that the file is there (and,
        for a removed version's file, which gc may have rewritten, that it still holds them).
        """
        return self.tensor_locator()(digest)

    def tensor_locator(self) -> Callable[[str], str | None]:
        """:meth:`stored_object` for one commit (under the lock): each file is checked once."""
        files: dict[str, set[str] | bool] = {}  # object id -> usable (True), held hashes (removed), or False

        def locate(digest: str) -> str | None:
            obj = self.index.has_tensors([digest]).get(digest)
            if obj is None:
                return None
            if obj not in files:
                files[obj] = self._usable_file(obj)
            usable = files[obj]
            return obj if usable is True or (isinstance(usable, set) and digest in usable) else None

        return locate

    def _usable_file(self, obj: str) -> set[str] | bool:
        path = self.layout.snapshot_path(obj)
        if not path.is_file() or path.is_symlink():
            return False
        if not self.layout.is_removed(obj):
            return True
        try:
            return held_hashes(path)
        except (OSError, MVCError):
            return False

    def content(self, vid: str) -> SnapshotContent:
        """What version ``vid`` is made of (structure, manifest, metadata), read from its snapshot
        file and checked against the id: the index row is never what decides what is loaded.

        Kept per file (by inode, size and change time), so repeated reads cost one ``stat``.
        """
        if not self.has_version(vid):
            raise UnknownRefError(f"no version {vid[:12]} in this store")
        path = self.layout.snapshot_path(vid)
        try:
            info = path.stat()
        except OSError as exc:
            raise IntegrityError(f"the snapshot file of version {vid[:12]} is missing or unreadable") from exc
        key = (vid, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        cached = self._contents.get(vid)
        if cached is not None and cached[0] == key:
            return cached[1]
        content = read_verified(path, vid)
        if len(self._contents) >= _CONTENTS_KEPT:
            self._contents.clear()
        self._contents[vid] = (key, content)
        return content

    def manifest(self, vid: str) -> list[ManifestEntry]:
        """The tensor entries of a version, checked against its id (no tensor bytes read)."""
        return list(self.content(vid).manifest)

    def structure(self, vid: str) -> object:
        """The model structure of a version, checked against its id (None when not serializable).

        A copy: the verified content is cached, and rebuilding consumes its config (Keras pops keys
        while deserializing), so a second checkout of the same version would see a gutted structure.
        """
        return copy.deepcopy(self.content(vid).structure)

    # -- the index rebuilt from the files ---------------------------------------------------

    def reindex(self) -> int:
        """Rebuild the index from the snapshot, ref and note files; return the versions indexed."""
        with self.locked():
            try:
                return recovery.rebuild_index(self)
            except IntegrityError:  # the index file itself is damaged: start it afresh
                self._fresh_index()
                return recovery.rebuild_index(self)

    def _audit_anchor(self) -> tuple[int, str] | None:
        """The audit chain head the index recorded (see :mod:`.audit`), or None."""
        try:
            seq, digest = (self.index.get_info("audit_head") or "").split()
            return int(seq), digest
        except (ValueError, MVCError):
            return None

    def _record_audit_head(self, entry: dict) -> None:
        self.index.set_info("audit_head", f"{int(entry['seq'])} {entry['hash']}")

    def _recover_unindexed(self) -> None:
        """Index snapshot files a killed process renamed into place but did not index."""
        on_disk = sum(1 for _ in self.layout.snapshot_files())
        if on_disk != self.index.count():
            with self.locked():
                recovery.index_missing_snapshots(self)

    def _recover_after_crash(self, dead_holder: str) -> None:
        recovery.recover_after_crash(self, dead_holder)

    def _fresh_index(self) -> None:
        """Close and delete a damaged index (with its WAL files) and open an empty one."""
        if getattr(self, "index", None) is not None:
            self.index.close()
        for suffix in ("", "-wal", "-shm"):
            path = Path(str(self.layout.index_path) + suffix)
            if path.exists():
                try:
                    path.unlink()
                except OSError as exc:
                    raise IntegrityError(f"cannot remove the damaged index {path}: {exc}") from exc
        self.index = Index(self.layout.index_path)

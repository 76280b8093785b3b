"""Every write to a store, each in the one order that crash recovery counts on.

A new version: snapshot file (the point of no return) -> signature -> tag and HEAD ref files ->
index rows -> audit entry. A ref change: ref file -> index -> audit entry. A removal: tombstone ->
refs -> index -> audit entry. The files come first because they are the truth the index caches: a
process killed after them leaves work that :mod:`.recovery` completes; one killed before them
changed nothing. Operations call these methods and never write store files themselves.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.metadata import author
from ..core.reports import GcReport
from ..errors import IntegrityError, StoreError
from .atomic import atomic_write_bytes, fsync_path
from .deltas import ParentBases, coding_enabled, needed_with_bases
from .faults import ensure_space, write_failure
from .index import Index
from .recovery import index_content
from .retired import held_hashes, is_retired, write_retired
from .signatures import Signer, signature_path, signer_from_env, write_signature
from .snapshot import ManifestEntry, SnapshotContent
from .staging import StagedCommit

if TYPE_CHECKING:
    from .store import Store


class StoreWrites:
    """The writes of one :class:`~mvc_magics.storage.store.Store`.

    Each takes the store lock (it is re-entrant). A commit and a pull also hold it around their
    whole operation, so what they checked before writing still holds when they write.
    """

    def __init__(self, store: Store) -> None:
        self._store = store

    @property
    def _layout(self):
        return self._store.layout

    def _audit(self, op: str, name: str | None, ids: Sequence[str], detail: Mapping | None = None,
               who: str | None = None) -> None:
        self._store.audit.append(who or author(), op, name, list(ids), dict(detail or {}))

    def record(self, op: str, name: str | None, ids: Sequence[str], detail: Mapping | None = None) -> None:
        """An audit entry for an operation that changed no store file (export, push...)."""
        with self._store.locked():
            self._audit(op, name, ids, detail)

    # -- a new version ----------------------------------------------------------------------

    def stage(self, parents: Sequence[str] = ()) -> StagedCommit:
        """A staged commit writing new tensors into this store's tmp/ (call under the lock), coded
        (and as deltas against the ``parents``' tensors where that is smaller) unless coding is off."""
        layout, store = self._layout, self._store
        code = coding_enabled()
        manifests = [store.manifest(p) for p in parents if code and store.has_version(p)]
        return StagedCommit(layout.tmp, store.stored_object, store.progress,
                            check_space=lambda nbytes: ensure_space(layout.tmp, nbytes, 1, store.path),
                            bases=ParentBases(layout.snapshot_path, manifests) if manifests else None, code=code)

    def publish_version(self, staged: StagedCommit, vid: str, meta: dict, structure: object,
                        manifest: list[ManifestEntry]) -> None:
        """Make a staged version visible: snapshot, signature, tags, HEAD, index rows, audit entry.

        The caller holds the store lock since the tensors were staged. Anything failing after the
        snapshot is placed is taken back (:meth:`_undo_publish`); the error is raised as a one-line
        :class:`StoreError` when the environment caused it.
        """
        with self._store.locked():
            self._publish(staged, vid, meta, structure, manifest)

    def _publish(self, staged: StagedCommit, vid: str, meta: dict, structure: object,
                 manifest: list[ManifestEntry]) -> None:
        layout, index = self._layout, self._store.index
        name, tags = meta["name"], list(meta.get("tags", []))
        final = layout.snapshot_path(vid)
        old_head = layout.read_head(name)
        placed, replaced = False, final.exists()  # a removed version's retired file it replaces
        try:
            signer = signer_from_env()  # a bad key configuration fails before the snapshot is placed
            text_bytes = len(json.dumps(meta, default=str)) + len(json.dumps(structure)) + 200 * len(manifest)
            ensure_space(layout.tmp, text_bytes, 4, self._store.path)
            staged.publish(final, vid, meta, structure, manifest)
            placed = True
            self._sign(vid, signer)
            for tag in tags:
                layout.write_tag(name, tag, vid)
            layout.write_head(name, vid)
            with index.transaction() as conn:
                Index.insert_version(conn, vid, name, meta["created"], meta, [e.to_json() for e in manifest],
                                     staged.bytes_written)
                Index.set_metrics(conn, vid, meta["metrics"])
                conn.executemany("INSERT OR REPLACE INTO tags(name, tag, id, protected) VALUES(?, ?, ?, 0)",
                                 [(name, tag, vid) for tag in tags])
                conn.execute("INSERT OR REPLACE INTO heads(name, id) VALUES(?, ?)", (name, vid))
                self._audit("commit", name, [vid], {"message": meta["message"], "tags": tags,
                                                    "bytes_written": staged.bytes_written}, who=meta["author"])
        except BaseException as exc:
            if placed:
                self._undo_publish(vid, name, tags, old_head, keep_file=replaced)
            else:
                staged.discard()
            if isinstance(exc, OSError | RuntimeError | StoreError):
                raise StoreError(write_failure(exc, self._store.path)) from exc
            raise
        layout.delete_tombstone(vid)  # content of a removed version committed again is live again

    def _undo_publish(self, vid: str, name: str, tags: list[str], old_head: str | None, keep_file: bool) -> None:
        """Take back a version whose snapshot was placed but whose later steps failed."""
        layout = self._layout
        # The snapshot first: without it, leftover refs point at nothing and are ignored on reindex.
        # A file that replaced a removed version's retired file stays: other versions use its tensors.
        steps: list[Callable[[], object]] = [] if keep_file else [layout.snapshot_path(vid).unlink]
        steps.append(signature_path(layout.signatures, vid).unlink)
        steps += [lambda tag=tag: layout.delete_tag(name, tag) for tag in tags]
        steps.append((lambda: layout.write_head(name, old_head)) if old_head else layout.head_path(name).unlink)
        for step in steps:
            try:
                step()
            except FileNotFoundError:
                pass
            except BaseException:  # undo as much as possible; the original error is raised
                continue

    def attach(self, vid: str, name: str, metrics: dict[str, float], tags: list[str],
               explicit: dict[str, float]) -> None:
        """A commit of content already stored: attach metrics/tags and make it ``name``'s HEAD."""
        layout, store = self._layout, self._store
        with store.locked():
            if metrics:
                layout.write_note(vid, {"metrics": metrics})
            self._sign(vid)
            for tag in tags:
                layout.write_tag(name, tag, vid)
            # Re-committing an unchanged model is frequent: rewrite HEAD (two fsyncs) only if it moves.
            head_moves = store.head_file(name) != vid or store.head_id(name) != vid
            if head_moves:
                layout.write_head(name, vid)
            if metrics or tags or head_moves:
                with store.index.transaction() as conn:
                    Index.set_metrics(conn, vid, metrics)
                    conn.executemany("INSERT OR REPLACE INTO tags(name, tag, id, protected) VALUES(?, ?, ?, 0)",
                                     [(name, tag, vid) for tag in tags])
                    conn.execute("INSERT OR REPLACE INTO heads(name, id) VALUES(?, ?)", (name, vid))
            self._audit("commit-existing", name, [vid], {"metrics": explicit})

    # -- refs -------------------------------------------------------------------------------

    def move_head(self, name: str, vid: str, op: str | None = None, detail: Mapping | None = None) -> None:
        """Point ``name``'s HEAD at ``vid`` (audited as ``op`` when given)."""
        with self._store.locked():
            self._layout.write_head(name, vid)
            with self._store.index.transaction() as conn:
                conn.execute("INSERT OR REPLACE INTO heads(name, id) VALUES(?, ?)", (name, vid))
            if op:
                self._audit(op, name, [vid], detail)

    def set_tag(self, name: str, tag: str, vid: str, protected: bool, detail: Mapping | None = None) -> None:
        """Put ``tag`` of model ``name`` on ``vid`` (audited as ``tag`` with ``detail`` when given)."""
        with self._store.locked():
            self._layout.write_tag(name, tag, vid, protected)
            with self._store.index.transaction() as conn:
                conn.execute("INSERT OR REPLACE INTO tags(name, tag, id, protected) VALUES(?, ?, ?, ?)",
                             (name, tag, vid, int(protected)))
            if detail is not None:
                self._audit("tag", name, [vid], detail)

    def delete_tag(self, name: str, tag: str, vid: str) -> None:
        with self._store.locked():
            self._layout.delete_tag(name, tag)
            with self._store.index.transaction() as conn:
                conn.execute("DELETE FROM tags WHERE name = ? AND tag = ?", (name, tag))
            self._audit("untag", name, [vid], {"tag": tag})

    def set_remotes(self, remotes: dict[str, str], op: str, detail: Mapping) -> None:
        """Replace the configured remotes (``remotes.json``), audited as ``op``."""
        with self._store.locked():
            self._layout.write_remotes(remotes)
            self._audit(op, None, [], detail)

    # -- signatures -------------------------------------------------------------------------

    def _sign(self, vid: str, signer: Signer | None = None) -> None:
        signer = signer or signer_from_env()
        if signer is not None and signer.can_sign:
            write_signature(self._layout.signatures, self._layout.tmp, signer, vid)

    def sign_all(self, signer: Signer) -> list[str]:
        """Sign every unsigned version; return the ids signed."""
        signed = []
        with self._store.locked():
            for vid in self._store.index.version_ids():
                if write_signature(self._layout.signatures, self._layout.tmp, signer, vid):
                    signed.append(vid)
            self._audit("sign", None, signed, {"key": signer.key_id, "algorithm": signer.algorithm})
        return signed

    # -- removal ----------------------------------------------------------------------------

    def remove_version(self, vid: str, name: str, tags: list[tuple[str, str]], heads: list[str],
                       new_head: str | None, detail: Mapping) -> None:
        """Tombstone, then its tags go and HEADs on it move to ``new_head`` (or are cleared)."""
        layout = self._layout
        with self._store.locked():
            layout.write_tombstone(vid, {"id": vid, "name": name, "by": author(), **detail["tombstone"]})
            for model, tag in tags:
                layout.delete_tag(model, tag)
            for model in heads:
                if new_head:
                    layout.write_head(model, new_head)
                else:
                    layout.delete_head(model)
            with self._store.index.transaction() as conn:
                for table in ("versions", "metrics", "tags"):
                    conn.execute(f"DELETE FROM {table} WHERE id = ?", (vid,))
                conn.execute("DELETE FROM heads WHERE id = ?", (vid,))
                if new_head:
                    conn.executemany("INSERT OR REPLACE INTO heads(name, id) VALUES(?, ?)",
                                     [(model, new_head) for model in heads])
            self._audit("remove", name, [vid], detail["audit"])

    # -- versions pulled from a remote ------------------------------------------------------

    def import_snapshots(self, order: list[str], contents: dict[str, SnapshotContent],
                         staged: dict[str, Path]) -> list[str]:
        """Rename verified downloaded files into place (``order``: dependencies first) and index them.

        A file in ``staged`` without ``contents`` is a retired file (tensors only): it gets a
        tombstone first, so it never shows as a version. Returns the ids of the versions indexed.
        """
        with self._store.locked():
            return self._place(order, contents, staged)

    def _place(self, order: list[str], contents: dict[str, SnapshotContent], staged: dict[str, Path]) -> list[str]:
        layout, store = self._layout, self._store
        imported = []
        for oid in order:
            final = layout.snapshot_path(oid)
            if oid not in contents and (not final.exists() or layout.is_removed(oid)):
                layout.write_tombstone(oid, {"id": oid, "retired": True, "pulled": True})
            final.parent.mkdir(parents=True, exist_ok=True)
            fsync_path(staged[oid])
            os.replace(staged[oid], final)
            fsync_path(final.parent)
            del staged[oid]
            if oid in contents and not layout.is_removed(oid) and not store.has_version(oid):
                with store.index.transaction() as conn:
                    index_content(conn, contents[oid])
                imported.append(oid)
        return imported

    def import_note(self, vid: str, filename: str, note: dict, metrics: dict[str, float]) -> None:
        """A note pulled from a remote, under its remote file name (so it is imported once)."""
        local = self._layout.notes / vid[:2] / vid / filename
        with self._store.locked():
            if local.exists():
                return
            atomic_write_bytes(local, json.dumps(note, sort_keys=True).encode(), self._layout.tmp)
            with self._store.index.transaction() as conn:
                Index.set_metrics(conn, vid, metrics)

    # -- gc ---------------------------------------------------------------------------------

    def collect_garbage(self) -> GcReport:
        """Delete or shrink the files of removed versions; never drop a tensor a version still uses.

        Files first (each deletion or rewrite is atomic), then the index's tensor locations are
        rebuilt from the live manifests, then the audit entry.
        """
        layout, store = self._layout, self._store
        counts = {"bytes_freed": 0, "files_deleted": 0, "files_rewritten": 0, "tensors_dropped": 0,
                  "tensors_kept": 0}
        with store.locked():
            used: dict[str, set[str]] = {}  # object id -> hashes live versions read from it
            # From the snapshot files, checked against their ids: an edited index row must not
            # keep foreign bytes alive, nor let gc drop bytes a version needs.
            manifests = [[e.to_json() for e in store.manifest(vid)] for vid in store.index.version_ids()]
            for manifest in manifests:
                for entry in manifest:
                    used.setdefault(entry["object"], set()).add(entry["hash"])
            # A delta-coded tensor needs its base (and the base's base...) wherever it is stored.
            used = needed_with_bases(used, layout.snapshot_path)
            for rid in layout.removed_ids():
                path = layout.snapshot_path(rid)
                if not path.exists():
                    continue
                before = path.stat().st_size
                needed = used.get(rid, set())
                held = held_hashes(path)
                if not needed:
                    path.unlink()
                    counts["files_deleted"] += 1
                    counts["tensors_dropped"] += len(held)
                    counts["bytes_freed"] += before
                    continue
                missing = needed - held
                if missing:
                    raise IntegrityError(f"removed version {rid[:12]} lacks {len(missing)} tensor(s) other "
                                         "versions use; run verify (nothing was deleted from it)")
                if held == needed and is_retired(path):
                    counts["tensors_kept"] += len(needed)
                    continue
                write_retired(path, rid, path, needed, layout.tmp)
                counts["files_rewritten"] += 1
                counts["tensors_dropped"] += len(held - needed)
                counts["tensors_kept"] += len(needed)
                counts["bytes_freed"] += max(0, before - path.stat().st_size)
            with store.index.transaction() as conn:
                # Tensor locations must only name files that still hold the bytes: rebuild from live manifests.
                conn.execute("DELETE FROM tensors")
                conn.executemany("INSERT OR IGNORE INTO tensors(hash, object, nbytes) VALUES(?, ?, ?)",
                                 [(e["hash"], e["object"], int(e["nbytes"])) for m in manifests for e in m])
            self._audit("gc", None, [], dict(counts))
        return GcReport(**counts)

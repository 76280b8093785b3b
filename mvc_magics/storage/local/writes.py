"""Every write to a store, each in the one order that crash recovery counts on.

A new version: snapshot file (the point of no return) -> signature -> tag and HEAD files -> index
rows -> audit entry. A ref change: journal (with its prepared audit entry) -> ref file -> index ->
audit entry -> journal deleted; a removal: the same with a tombstone first; gc: journal -> index
tensor locations (only live ones) -> file deletions and rewrites -> audit entry (:mod:`.journal`, :mod:`.collection`).
Files come first: they are the truth the index caches. A process killed after them leaves work that
:mod:`.recovery` completes. Operations call these methods and never write store files themselves.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ...core.metadata import author
from ...core.reports import GcReport
from ...core.threads import thread_pool
from ...errors import StoreError
from ..files.faults import ensure_space, write_failure
from ..snapshots.deltas import ParentBases, coding_enabled, commit_depth
from ..snapshots.snapshot import ManifestEntry, SnapshotContent
from ..snapshots.staging import StagedCommit
from . import collection, histories, journal
from .index import Index
from .recovery import add_note, index_content
from .ref_writes import RefWrites
from .signatures import Signer, signature_path, signer_from_env, write_signature

if TYPE_CHECKING:
    from .store import Store


class StoreWrites(RefWrites):
    """The writes of one :class:`~mvc_magics.storage.local.store.Store`.

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
        """A staged commit writing new tensors into tmp/ (under the lock): loose (as they are, for
        packing to code later) unless deltas at commit are asked for (``MVC_DELTA_DEPTH``) or
        coding is off (format 1, never packed)."""
        layout, store = self._layout, self._store
        code = coding_enabled()
        depth = commit_depth()  # deltas against the parents only when asked (deltas.commit_depth)
        manifests = [store.manifest(p) for p in parents if code and depth and store.has_version(p)]
        return StagedCommit(layout.tmp, store.tensor_locator(), store.progress,
                            check_space=lambda nbytes: ensure_space(layout.tmp, nbytes, 1, store.path),
                            bases=ParentBases(layout.snapshot_path, manifests, depth) if manifests else None, code=code,
                            place=layout.files.place, locate=layout.snapshot_path, loose=code and not depth)

    def publish_version(self, staged: StagedCommit, vid: str, meta: dict, structure: object,
                        manifest: list[ManifestEntry], move_head: bool = True) -> None:
        """Make a staged version visible: snapshot, signature, tags, HEAD, index rows, audit entry.

        The caller holds the store lock since the tensors were staged. Anything failing after the
        snapshot is placed is taken back (:meth:`_undo_publish`); the error is raised as a one-line
        :class:`StoreError` when the environment caused it.
        """
        if not move_head:
            meta["moves_head"] = False  # so crash recovery does not move it either
        with self._store.locked():
            self._publish(staged, vid, meta, structure, manifest, move_head)

    def _publish(self, staged: StagedCommit, vid: str, meta: dict, structure: object,
                 manifest: list[ManifestEntry], move_head: bool) -> None:
        layout, index = self._layout, self._store.index
        name, tags, head = meta["name"], list(meta.get("tags", [])), self._store.head_key(meta["name"])
        final = layout.snapshot_path(vid)
        old_head = layout.read_head(head)
        placed, replaced = False, final.exists()  # a removed version's retired file it replaces
        revived = layout.is_removed(vid)  # its notes (metrics, histories joined) count again, as on reindex
        new_folder = not final.parent.exists()  # objects/<ab>/: removed again if this commit is refused
        # HEAD's new file (the same bytes write_head writes) is written and fsynced in a worker
        # while the snapshot is fsynced, so the file system commits both at once; it is renamed
        # into place only after the snapshot, as before.
        head_file = thread_pool("refs", 1).submit(layout.files.prepare, (vid + "\n").encode()) if move_head else None
        try:
            signer = signer_from_env()  # a bad key configuration fails before the snapshot is placed
            text_bytes = (len(json.dumps(meta, default=str)) + 200 * len(manifest)
                          + (staged.structure_blob(structure).nbytes if structure is not None else 0))
            ensure_space(layout.tmp, text_bytes, 4, self._store.path)
            staged.publish(final, vid, meta, structure, manifest)
            placed = True
            self._sign(vid, signer)
            for tag in tags:
                layout.write_tag(name, tag, vid)
            head_synced = None
            if head_file is not None:
                layout.files.place(head_file.result(), layout.head_path(head), sync_folder=False)
                # HEAD's folder is fsynced in a worker while the audit entry is fsynced: one wait for
                # both, and both are durable before the index commits and the commit returns.
                head_synced = thread_pool("refs", 1).submit(layout.files.sync_folder, layout.head_path(head).parent)
            # Not synced: the rows are rebuilt from the files (snapshot, tag and HEAD files, audit
            # entry, all fsynced first) when a power cut loses them (docs/reliability.md, section 1).
            with index.transaction(durable=False) as conn:
                Index.insert_version(conn, vid, name, meta["created"], meta, [e.to_json() for e in manifest],
                                     staged.bytes_written, staged.structure_ref)
                Index.set_metrics(conn, vid, meta["metrics"])
                for _, note in layout.read_notes(vid) if revived else ():
                    add_note(conn, vid, note)
                conn.executemany("INSERT OR REPLACE INTO tags(name, tag, id, protected) VALUES(?, ?, ?, 0)",
                                 [(name, tag, vid) for tag in tags])
                if move_head:
                    conn.execute("INSERT OR REPLACE INTO heads(name, id) VALUES(?, ?)", (head, vid))
                self._audit("commit", name, [vid], {"message": meta["message"], "tags": tags,
                                                    "bytes_written": staged.bytes_written}, who=meta["author"])
                if head_synced is not None:
                    head_synced.result()
        except BaseException as exc:
            if head_file is not None:  # its temporary, unless it was placed
                with contextlib.suppress(BaseException):
                    head_file.result().unlink(missing_ok=True)
            if placed:
                self._undo_publish(vid, name, tags, old_head, keep_file=replaced, head=head if move_head else None)
            else:
                staged.discard()
            if new_folder:  # a refused commit (no write access to refs/<model>, say) leaves no empty folder
                with contextlib.suppress(OSError):
                    final.parent.rmdir()  # only when empty: nothing else was placed there meanwhile
            if isinstance(exc, OSError | RuntimeError | StoreError):
                raise StoreError(write_failure(exc, self._store.path)) from exc
            raise
        layout.delete_tombstone(vid)  # content of a removed version committed again is live again

    def _undo_publish(self, vid: str, name: str, tags: list[str], old_head: str | None, keep_file: bool,
                      head: str | None) -> None:
        """Take back a version whose snapshot was placed but whose later steps failed."""
        layout = self._layout
        # The snapshot first: without it, leftover refs point at nothing and are ignored on reindex.
        # A file that replaced a removed version's retired file stays: other versions use its tensors.
        unlink = layout.files.unlink
        steps: list[Callable[[], object]] = [] if keep_file else [lambda: unlink(layout.snapshot_path(vid))]
        steps.append(lambda: unlink(signature_path(layout.signatures, vid)))
        steps += [lambda tag=tag: layout.delete_tag(name, tag) for tag in tags]
        if head:
            steps.append((lambda: layout.write_head(head, old_head)) if old_head else lambda: layout.delete_head(head))
        for step in steps:
            try:
                step()
            except FileNotFoundError:
                pass
            except BaseException:  # undo as much as possible; the original error is raised
                continue

    def attach(self, vid: str, name: str, metrics: dict[str, float], tags: list[str],
               detail: Mapping, move_head: bool = True, join: bool = False) -> None:
        """A commit of content already stored: add metrics it lacks (a write-once note saying when and
        where they were measured), put tags on it, make it ``name``'s HEAD (unless ``move_head`` is False).
        With ``join`` the version also joins ``name``'s history: the note names it (a name record,
        see :mod:`.histories`), so reindex, push and pull keep the membership as they keep metrics.

        The caller decided which metrics are new to the version; the index never replaces a value.
        """
        layout, store, head = self._layout, self._store, self._store.head_key(name)
        with store.locked():
            if metrics or join:
                note = {"metrics": metrics, "measured": dict(detail.get("measured") or {})}
                layout.write_note(vid, {**note, "name": name} if join else note)
            self._sign(vid)
            for tag in tags:
                layout.write_tag(name, tag, vid)
            # Re-committing an unchanged model is frequent: rewrite HEAD (two fsyncs) only if it moves.
            head_moves = move_head and (store.head_file(name) != vid or store.head_id(name) != vid)
            if head_moves:
                layout.write_head(head, vid)
            if metrics or tags or head_moves or join:
                with store.index.transaction() as conn:
                    Index.add_metrics(conn, vid, metrics)
                    if join:
                        histories.add_member(conn, vid, name)
                    conn.executemany("INSERT OR REPLACE INTO tags(name, tag, id, protected) VALUES(?, ?, ?, 0)",
                                     [(name, tag, vid) for tag in tags])
                    if head_moves:
                        conn.execute("INSERT OR REPLACE INTO heads(name, id) VALUES(?, ?)", (head, vid))
            self._audit("commit-existing", name, [vid], dict(detail))

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
        changes = [{"kind": "untag", "name": model, "tag": tag} for model, tag in tags]
        changes += [{"kind": "head", "name": model, "id": new_head} if new_head else {"kind": "unhead", "name": model}
                    for model in heads]
        with self._store.locked(), self._ref_change("remove", name, [vid], detail["audit"], changes, tombstone=vid):
            layout.write_tombstone(vid, {"id": vid, "name": name, "by": author(), **detail["tombstone"]})
            for change in changes:
                journal.apply_change(layout, change)
            with self._store.index.transaction() as conn:
                for table in ("versions", "metrics", "tags"):
                    conn.execute(f"DELETE FROM {table} WHERE id = ?", (vid,))
                conn.execute("DELETE FROM heads WHERE id = ?", (vid,))
                if new_head:
                    conn.executemany("INSERT OR REPLACE INTO heads(name, id) VALUES(?, ?)",
                                     [(model, new_head) for model in heads])

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
            layout.files.place(staged[oid], final)  # fsynced when downloaded
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
            if not self._layout.files.write(local, json.dumps(note, sort_keys=True).encode(), exclusive=True):
                return
            with self._store.index.transaction() as conn:
                Index.add_metrics(conn, vid, metrics)
                histories.add_member(conn, vid, histories.note_name(note))

    # -- repack and gc (their steps live in :mod:`.collection`) -----------------------------

    def recode_version(self, vid: str, base_for: Callable) -> tuple[int, int]:
        """Re-code version ``vid``'s snapshot file in place (see :func:`.collection.recode_version`)."""
        with self._store.locked():
            return collection.recode_version(self._store, vid, base_for)

    def collect_garbage(self) -> GcReport:
        """Delete or shrink the files of removed versions; never drop a tensor a version still uses
        (journaled and crash-safe: see :func:`.collection.collect_garbage`)."""
        with self._store.locked():
            self._store.journal.begin({"op": "gc"})
            try:
                return self._gc()
            finally:  # stopped by an error (not a kill): safe to leave, the index was narrowed first
                self._store.journal.end()

    def _gc(self, recovered: bool = False) -> GcReport:
        return collection.collect_garbage(self._store, self._audit, recovered)

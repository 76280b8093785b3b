"""Rebuilding the index from the store's files, and finishing what a killed process left.

The snapshot, ref and note files are the truth; the index is a cache of them. A lock holder killed
mid-write leaves at most a placed snapshot whose refs, index rows or audit entry are missing: the
next holder completes it here (see :meth:`Store.locked <mvc_magics.storage.local.layout.StoreLayout.locked>`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ...core.meta_check import metadata_problem
from ...core.metadata import author
from ...core.names import head_key, is_valid_name
from ...errors import MVCError, UnsafeFileError
from ..snapshots.snapshot import SnapshotContent, read_verified
from . import histories
from .index import Index

_log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .store import Store


def _indexable(content: SnapshotContent) -> bool:
    """Metadata sane enough to index (snapshot files are untrusted input; see core.meta_check)."""
    return metadata_problem(content.meta) is None


def index_content(conn, content: SnapshotContent) -> None:
    meta = content.meta
    manifest = [e.to_json() for e in content.manifest]
    written = sum({e.hash: e.nbytes for e in content.manifest if e.object == content.version_id}.values())
    Index.insert_version(conn, content.version_id, str(meta.get("name", "")), str(meta.get("created", "")),
                         meta, manifest, written, content.structure_ref)
    metrics = meta.get("metrics")
    Index.set_metrics(conn, content.version_id, _float_metrics(metrics) if isinstance(metrics, dict) else {})


def indexable_contents(store: Store) -> list[SnapshotContent]:
    """Every live snapshot whose structure and manifest hash to its id, oldest first."""
    contents = []
    for vid, path in store.layout.snapshot_files():
        try:
            content = read_verified(path, vid)
        except UnsafeFileError as exc:  # a FIFO, device or symlink planted in objects/: skipped, named
            _log.warning("%s", exc)
            continue
        except (MVCError, OSError):
            continue  # verify reports unreadable or altered snapshots; the index holds what the ids name
        if _indexable(content):
            contents.append(content)
    contents.sort(key=lambda c: (str(c.meta.get("created", "")), c.version_id))
    return contents


def fill_index(store: Store, conn, contents: list[SnapshotContent]) -> None:
    """Write into ``conn`` (an empty index, or one inside a transaction) the rows the files give."""
    heads, tags = store.layout.read_refs()
    known = {c.version_id for c in contents}
    for table in ("versions", "members", "metrics", "tags", "heads", "tensors"):
        conn.execute(f"DELETE FROM {table}")
    for content in contents:
        index_content(conn, content)
    for vid, note in store.layout.read_notes():
        if vid in known:
            add_note(conn, vid, note)
    conn.executemany("INSERT OR REPLACE INTO tags(name, tag, id, protected) VALUES(?, ?, ?, ?)",
                     [(m, t, vid, int(p)) for m, t, vid, p in tags if vid in known])
    conn.executemany("INSERT OR REPLACE INTO heads(name, id) VALUES(?, ?)",
                     [(m, vid) for m, vid in heads.items() if vid in known])


def rebuild_index(store: Store) -> int:
    """Drop and rebuild the index from snapshot, ref and note files (caller holds the lock)."""
    contents = indexable_contents(store)
    with store.index.transaction() as conn:
        fill_index(store, conn, contents)
    return len(contents)


def index_missing_snapshots(store: Store, complete: bool = False) -> list[str]:
    """Add snapshot files that are on disk but not in the index (a commit killed mid-way).

    With ``complete`` (the previous lock holder died, so these are its interrupted commits), the
    ref updates the commit did not get to are finished: its tags where no tag file exists yet (a
    commit never moves a tag) and the model's HEAD when it is still at the version's parent.
    Returns the ids indexed.
    Also drops indexed versions that have a tombstone (a removal killed after its commit point).
    """
    indexed = set(store.index.version_ids())
    removed = [vid for vid in indexed if store.layout.is_removed(vid)]
    if removed:
        with store.index.transaction() as conn:
            for table in ("versions", "metrics", "tags", "heads"):
                conn.executemany(f"DELETE FROM {table} WHERE id = ?", [(vid,) for vid in removed])
        indexed -= set(removed)
    missing = []
    for vid, path in store.layout.snapshot_files():
        if vid in indexed:
            continue
        try:
            content = read_verified(path, vid)
        except UnsafeFileError as exc:
            _log.warning("%s", exc)
            continue
        except (MVCError, OSError):
            continue
        if _indexable(content):
            missing.append(content)
    missing.sort(key=lambda c: (str(c.meta.get("created", "")), c.version_id))
    if complete:
        for content in missing:
            _complete_refs(store, content)
    heads, tags = store.layout.read_refs()
    ids = {c.version_id for c in missing}
    with store.index.transaction() as conn:
        for content in missing:
            index_content(conn, content)
        conn.executemany("INSERT OR REPLACE INTO tags(name, tag, id, protected) VALUES(?, ?, ?, ?)",
                         [(m, t, vid, int(p)) for m, t, vid, p in tags if vid in ids])
        conn.executemany("INSERT OR REPLACE INTO heads(name, id) VALUES(?, ?)",
                         [(m, vid) for m, vid in heads.items() if vid in ids])
        if ids:
            for vid, note in store.layout.read_notes():
                if vid in ids:
                    add_note(conn, vid, note)
    return [c.version_id for c in missing]


def _complete_refs(store: Store, content: SnapshotContent) -> None:
    name, meta, vid = str(content.meta["name"]), content.meta, content.version_id
    heads, tags = store.layout.read_refs()
    existing = {t for m, t, _, _ in tags if m == name}
    requested = meta.get("tags") if isinstance(meta.get("tags"), list) else []
    for tag in requested:
        if is_valid_name(tag) and tag not in existing:
            store.layout.write_tag(name, tag, vid)
    parents = meta.get("parents") if isinstance(meta.get("parents"), list) else []
    if meta.get("moves_head") is False:  # a merge without ``into`` never moves HEAD
        return
    key = head_key(name, meta["workspace"] if is_valid_name(meta.get("workspace")) else None)  # whose HEAD moved
    if heads.get(key) is None or heads.get(key) in parents:
        store.layout.write_head(key, vid)


def sync_refs_and_notes(store: Store) -> None:
    """Make the index's tags, HEADs, attached metrics and name records equal to the ref and note files."""
    heads, tags = store.layout.read_refs()
    known = set(store.index.version_ids())
    notes = [(vid, note) for vid, note in store.layout.read_notes() if vid in known]
    with store.index.transaction() as conn:
        conn.execute("DELETE FROM tags")
        conn.execute("DELETE FROM heads")
        conn.executemany("INSERT OR REPLACE INTO tags(name, tag, id, protected) VALUES(?, ?, ?, ?)",
                         [(m, t, vid, int(p)) for m, t, vid, p in tags if vid in known])
        conn.executemany("INSERT OR REPLACE INTO heads(name, id) VALUES(?, ?)",
                         [(m, vid) for m, vid in heads.items() if vid in known])
        for vid, note in notes:
            add_note(conn, vid, note)


def recover_after_crash(store: Store, dead_holder: str) -> None:
    """Repair what a lock holder killed mid-operation left (the caller now holds the lock).

    Index its renamed-but-unindexed snapshots and finish their ref updates, resolve its journaled
    ref change or gc (:mod:`.journal`), bring the index's refs
    and metrics in line with the ref and note files, and record the recovery in the audit log,
    naming any version the dead process indexed without recording it.
    """
    indexed = index_missing_snapshots(store, complete=True)
    pending = store.journal.pending()
    if pending is not None:  # a ref change or gc in flight: audit it or drop it, finish gc
        store.writes.resolve(pending)
    sync_refs_and_notes(store)
    recorded = store.audit.check().ids
    unrecorded = [vid for vid in store.index.version_ids() if vid not in recorded and vid not in indexed]
    store.audit.append(author(), "recover", None, sorted(set(indexed) | set(unrecorded)),
                      {"dead_holder": dead_holder, "indexed": indexed, "unrecorded": unrecorded})


def add_note(conn, vid: str, note: dict) -> None:
    """What a note file adds to the index: metrics the version lacks, and (a name record) the
    history it joins; both read from an untrusted file, so only what a commit could write counts."""
    if isinstance(note.get("metrics"), dict):
        Index.add_metrics(conn, vid, _float_metrics(note["metrics"]))
    histories.add_member(conn, vid, histories.note_name(note))


def _float_metrics(raw: dict) -> dict[str, float]:
    result = {}
    for key, value in raw.items():
        try:
            result[str(key)] = float(value)
        except (TypeError, ValueError):
            continue
    return result

"""The writes of gc and repack, in the order their crash safety counts on.

Called by :class:`~mvc_magics.storage.local.writes.StoreWrites` (which takes the store lock and the gc
journal around them); split out so that the commit and ref writes stay readable on their own.
gc: index tensor locations narrowed to what live versions use -> file deletions and rewrites ->
audit entry. Repack: one file re-coded under a temporary name and renamed over the old one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ...core.reports import GcReport
from ...errors import IntegrityError, StoreError
from ..files.faults import ensure_space, write_failure
from ..snapshots.deltas import needed_with_bases
from ..snapshots.repacking import recode_snapshot
from ..snapshots.retired import garbage_hashes, held_hashes, is_retired, write_retired

if TYPE_CHECKING:
    from .store import Store


def recode_version(store: Store, vid: str, base_for: Callable) -> tuple[int, int]:
    """Re-code version ``vid``'s snapshot file in place (same content, see :mod:`.repacking`);
    return its size before and after. Only the file changes: its id, manifest and index rows
    stay, so nothing else needs writing and a kill leaves the old or the new file, both whole."""
    layout = store.layout
    return recode_snapshot(layout.snapshot_path(vid), vid, layout.snapshot_path, layout.tmp, base_for)


def collect_garbage(store: Store, audit: Callable, recovered: bool = False) -> GcReport:
    """Delete or shrink the files of removed versions; never drop a tensor a version still uses.

    Crash-safe: the caller's journal says gc is under way (the next lock holder runs it again to
    the end), and the index's tensor locations are narrowed to what live versions use *before*
    any byte is deleted, so no commit can count on bytes gc is about to remove.
    """
    layout = store.layout
    counts = {"bytes_freed": 0, "files_deleted": 0, "files_rewritten": 0, "tensors_dropped": 0,
              "tensors_kept": 0}
    used: dict[str, set[str]] = {}  # object id -> hashes live versions read from it
    # From the snapshot files, checked against their ids: an edited index row must not
    # keep foreign bytes alive, nor let gc drop bytes a version needs.
    # Tensors and (format 3) the stored structure each live version reads, wherever they are.
    locations = [row for vid in store.index.version_ids() for row in store.content(vid).locations()]
    for digest, obj, _ in locations:
        used.setdefault(obj, set()).add(digest)
    # A delta-coded tensor needs its base (and the base's base...) wherever it is stored.
    used = needed_with_bases(used, layout.snapshot_path)
    # Narrowed before any byte is deleted: a commit never reuses bytes gc is about to remove.
    with store.index.transaction() as conn:
        conn.execute("DELETE FROM tensors")
        conn.executemany("INSERT OR IGNORE INTO tensors(hash, object, nbytes) VALUES(?, ?, ?)",
                         [(digest, obj, int(nbytes)) for digest, obj, nbytes in locations])
    for rid in layout.removed_ids():
        path = layout.snapshot_path(rid)
        if not path.is_file() or path.is_symlink() or path.parent.is_symlink():
            continue
        before = path.stat().st_size
        needed = used.get(rid, set())
        held = held_hashes(path) if needed else garbage_hashes(path)
        if not needed:
            layout.files.unlink(path)
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
        try:
            ensure_space(layout.tmp, before, len(needed), store.path)
            write_retired(path, rid, path, needed, layout.tmp)
        except (OSError, RuntimeError, StoreError) as exc:
            raise StoreError(write_failure(exc, store.path, outcome="gc stopped before rewriting "
                                           f"{rid[:12]}; no version lost, run gc again when there is room")
                             ) from exc
        counts["files_rewritten"] += 1
        counts["tensors_dropped"] += len(held - needed)
        counts["tensors_kept"] += len(needed)
        counts["bytes_freed"] += max(0, before - path.stat().st_size)
    audit("gc", None, [], {**counts, "recovered": True} if recovered else dict(counts))
    return GcReport(**counts)

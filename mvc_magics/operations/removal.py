"""Removing versions and reclaiming the space of tensors no remaining version uses.

A version's snapshot file may hold tensor bytes that later versions use (their manifest entries
name it in ``object``), so removal is two steps: :func:`remove_version` writes a tombstone and
drops the version from the index, its tags and HEADs (the file stays); gc
(:meth:`~mvc_magics.storage.local.writes.StoreWrites.collect_garbage`) then deletes the files no
version uses and shrinks the others to *retired* files. See docs/FORMAT.md ("Removed versions and gc").
"""

from __future__ import annotations

from datetime import datetime, timezone

from ..core.reports import GcReport
from ..core.version import Version
from ..errors import ProtectedRefError
from ..storage.local.store import Store
from . import versions


def remove_version(store: Store, ref: str, name: str | None = None, force: bool = False,
                   every_history: bool = False) -> Version:
    """Remove the version ``ref`` names (see :meth:`mvc_magics.Repo.remove`); ``every_history``: the
    caller (a retention policy) already decided no history keeps it."""
    version = versions.resolve(store, ref, name=name)
    vid = version.id
    with store.locked():
        tags = store.index.query("SELECT name, tag, protected FROM tags WHERE id = ?", (vid,))
        protected = sorted(tag for _, tag, flag in tags if flag)
        if protected and not force:
            raise ProtectedRefError(
                f"{version.short_id} carries protected tag(s) {', '.join(protected)}; use --force to remove it"
            )
        histories = sorted({row[0] for row in store.index.query("SELECT name FROM members WHERE id = ?", (vid,))})
        # One version in several models' histories leaves them all: only on purpose.
        if len(histories) > 1 and not (force or every_history):
            raise ProtectedRefError(
                f"{version.short_id} is in the histories of {', '.join(map(repr, histories))}: removing it takes it "
                "out of every one; use --force to remove it"
            )
        live_parents = [p for p in version.parents if store.has_version(p)]
        new_head = live_parents[0] if live_parents else None
        heads = [row[0] for row in store.index.query("SELECT name FROM heads WHERE id = ?", (vid,))]
        tag_names = sorted(tag for _, tag, _ in tags)
        store.writes.remove_version(vid, version.name, [(m, t) for m, t, _ in tags], heads, new_head, {
            "tombstone": {"removed": datetime.now(timezone.utc).isoformat(), "tags": tag_names},
            "audit": {"tags": tag_names, "protected": protected, "force": force, "heads_moved_to": new_head,
                      "heads": heads},
        })
    return version


def collect_garbage(store: Store) -> GcReport:
    """Reclaim the tensors no remaining version uses (see :meth:`mvc_magics.Repo.gc`)."""
    return store.writes.collect_garbage()


"""The automatic pack: loose snapshots are coded once their bytes pass a threshold, as ``git gc --auto``.

A commit writes its new tensors loose (as they are, durable in one pass, checked out by a plain
copy); coding and deltas are made by packing (:func:`~.repack.repack`). After a commit that adds a
loose file, the store's background worker (:mod:`mvc_magics.storage.local.background`) adds up
the loose files and, past ``MVC_PACK_MB`` (default 512 MB; ``0`` or ``off``: never automatically,
``gc --repack`` still packs), runs the same repack under the store lock, off the user's path: the
commit has already returned. Each file is re-coded under a temporary name and renamed over the
old one, so a kill leaves every file old or new and whole. When the user's thread needs the lock
(the next commit, a checkout that moves HEAD...) the pack stops after the file it is writing and
the next automatic pack continues.

A training loop that hands commits off densely (less than ``DENSE_HAND_OFFS`` seconds apart) would
find each of its commits queued behind a pack's file, and wait: packs wait for the loop's end
(:func:`after_loop`), or for a commit that comes after a pause.
"""

from __future__ import annotations

import os

from ..storage.local.background import Background
from ..storage.local.store import Store
from . import repack

PACK_ENV = "MVC_PACK_MB"
DEFAULT_PACK_MB = 512
# Hand-offs closer together than this (seconds) are a loop committing densely: no pack starts then.
DENSE_HAND_OFFS = 10.0


def pack_threshold() -> int | None:
    """Loose bytes past which a pack starts (``MVC_PACK_MB``), or None when automatic packing is off."""
    value = os.environ.get(PACK_ENV, str(DEFAULT_PACK_MB)).strip().lower()
    if value in ("off", "no", "false", "never"):
        return None
    try:
        megabytes = float(value)
    except ValueError:
        megabytes = DEFAULT_PACK_MB
    return None if megabytes <= 0 else int(megabytes * 1e6)


def loose_summary(store: Store) -> tuple[int, int]:
    """(loose snapshot files, their bytes): what the next pack codes."""
    loose = store.loose_objects()
    return len(loose), sum(loose.values())


def after_commit(store: Store, vid: str) -> None:
    """Count version ``vid``'s new file as loose; past the threshold, queue a pack on the store's
    background worker. The count is the process's own (commits of other processes are found by the
    scan each pack starts with), so a commit costs one ``stat``, whatever the size of the store
    (the first commit of a process counts every file once)."""
    limit = pack_threshold()
    background = store.background
    if limit is None or store.readonly or "pack" in background.pending():
        return
    if background.loose_bytes is None:  # once per process: one look at every file's first line
        background.loose_bytes = loose_summary(store)[1]
    else:
        try:
            background.loose_bytes += store.layout.snapshot_path(vid).stat().st_size
        except OSError:
            return
    if background.loose_bytes < limit or background.dense_hand_offs(DENSE_HAND_OFFS):
        return
    _submit(background, limit)


def after_loop(store: Store) -> None:
    """A training loop's commits are written: the pack its dense hand-offs put off starts now,
    off the user's path, when the loose files pass the threshold."""
    background = store.background
    background.hand_offs_ended()
    limit = pack_threshold()
    if limit is None or store.readonly or "pack" in background.pending():
        return
    if background.loose_bytes is None:
        background.loose_bytes = loose_summary(store)[1]
    if background.loose_bytes >= limit:
        _submit(background, limit)


def _submit(background: Background, limit: int) -> None:
    stop = background.stop
    background.submit("pack", lambda own: _pack_if_needed(own, limit, stop))


def _pack_if_needed(store: Store, limit: int, stop) -> object:
    """The pack job: scan the store's loose files, pack when they pass ``limit``, count again."""
    try:
        report = None
        for _ in range(3):  # files committed while it packed (their check found it queued) go too
            if stop.is_set() or loose_summary(store)[1] < limit:
                break
            report = repack.repack(store, stop=stop)
        return report
    finally:
        store.background.loose_bytes = loose_summary(store)[1]

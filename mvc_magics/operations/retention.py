"""Retention: remove the versions a policy does not keep, then reclaim their space.

Each removal is the ordinary crash-safe removal (tombstone first), oldest first, and gc runs after
them all; a run killed midway leaves a store where some of the versions are removed, and running
the same policy again finishes the job. Tagged and protected versions and HEADs are never removed.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..core.retention import RetentionPolicy, RetentionReport
from ..errors import InvalidPolicyError
from ..storage.local.store import Store
from . import removal, repack, versions


def gc(store: Store, keep=None, name: str | None = None, dry_run: bool = False, repack_versions: bool = False):
    """Plain gc, or a retention policy then gc, and/or a repack (see :meth:`mvc_magics.Repo.gc`).

    Returns a ``GcReport`` for a plain gc, a :class:`RetentionReport` with ``keep``, a
    ``RepackReport`` with ``repack_versions`` (both: the two, as a tuple).
    """
    if dry_run and not keep:
        raise InvalidPolicyError("--dry-run lists what a --keep policy would remove: give --keep")
    report = apply_retention(store, keep, name, dry_run) if keep else None
    if repack_versions and not dry_run:
        packed = repack.repack(store, name)
        return packed if report is None else (report, packed)
    return report if report is not None else removal.collect_garbage(store)


def apply_retention(store: Store, keep: Iterable[str] | str | RetentionPolicy, name: str | None = None,
                    dry_run: bool = False) -> RetentionReport:
    """Apply ``keep`` to model ``name`` (every model when None); ``dry_run`` only lists."""
    policy = RetentionPolicy.parse(keep)
    with store.locked():
        models = [name] if name else [row[0] for row in store.index.query(
            "SELECT DISTINCT name FROM members ORDER BY name")]
        keep_ids = {row[0] for row in store.index.query("SELECT id FROM heads")}
        if name:  # a version also in another history is that history's too: this policy does not remove it
            keep_ids |= {row[0] for row in store.index.query("SELECT id FROM members WHERE name != ?", (name,))}
        histories = {model: list(versions.log(store, model)) for model in models}
        for history in histories.values():  # in several histories: kept when one of them keeps it
            keep_ids |= policy.keep(history)
        kept, dropped, seen = [], [], set()
        for history in histories.values():
            kept += [v for v in history if v.id in keep_ids]
            dropped += [v for v in reversed(history) if v.id not in keep_ids and v.id not in seen]  # oldest first
            seen |= {v.id for v in history}
        report = RetentionReport(policy, kept, dropped, dry_run)
        if dry_run:
            return report
        for version in dropped:
            removal.remove_version(store, version.id, name=version.name, every_history=True)
        report.gc = store.writes.collect_garbage()
    return report

"""Repack: re-code stored versions as deltas against their parents, as ``git gc`` packs objects.

For stores written before coding existed or with coding off: oldest version first, each version's
own tensors are re-coded (XOR delta against the first parent's tensor when smaller, byte planes +
zstd otherwise), one file at a time, each replaced atomically. A tensor that other tensors already
use as a delta base is never turned into a delta itself, so no chain grows past its recorded depth
and no chain can loop; tensors that already are deltas are copied as they are. Interrupting it
(Ctrl-C, a kill) leaves every file old or new and whole; running it again continues.
"""

from __future__ import annotations

import contextlib
import json

from ..core.manifest import ManifestEntry
from ..core.reports import RepackReport
from ..errors import IntegrityError
from ..storage.deltas import ParentBases, base_references
from ..storage.store import Store


def repack(store: Store, name: str | None = None) -> RepackReport:
    """Re-code the versions of ``name`` (all when None) as deltas; see the module docstring."""
    report = RepackReport()
    layout = store.layout
    with store.locked():
        rows = store.index.query("SELECT id, name, meta FROM versions ORDER BY seq")
        referenced: set[tuple[str, str]] = set()  # (object, hash) some delta uses as its base
        for oid, path in layout.snapshot_files(include_removed=True):
            try:
                referenced.update(base_references(path).values())
            except IntegrityError as exc:  # named in the report; every other file is still repacked
                report.damaged[oid] = str(exc)
        for vid, model, meta in rows:
            if name is not None and model != name:
                continue
            if vid in report.damaged:
                continue
            manifests = []
            for parent in json.loads(meta).get("parents", []):
                with contextlib.suppress(IntegrityError):  # a damaged parent offers no bases
                    if store.has_version(parent) and parent not in report.damaged:
                        manifests.append(store.manifest(parent))
            bases = ParentBases(layout.snapshot_path, manifests)

            def base_for(entry: ManifestEntry, array, vid=vid, bases=bases):
                if (vid, entry.hash) in referenced:
                    return None  # a base of others stays whole: their chains keep their depth
                return bases(entry.name, array, entry.hash)

            try:
                before, after = store.writes.recode_version(vid, base_for)
            except IntegrityError as exc:  # this version's file is damaged: named, the rest go on
                report.damaged[vid] = str(exc)
                continue
            finally:
                bases.close()
            referenced.update(base_references(layout.snapshot_path(vid)).values())
            report.bytes_before += before
            report.bytes_after += after
            if after < before:
                report.versions_recoded += 1
            else:
                report.versions_skipped += 1
        store.writes.record("repack", name, [], {"versions": report.versions_recoded,
                                                 "bytes_before": report.bytes_before,
                                                 "bytes_after": report.bytes_after,
                                                 "damaged": sorted(report.damaged)})
    return report

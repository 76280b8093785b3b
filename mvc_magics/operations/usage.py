"""``du``: per model, how many versions, their logical size, the bytes stored, and what
deduplication, coding and deltas saved (read from the index and the snapshot files' datasets)."""

from __future__ import annotations

import json
import os

from ..core.usage import ModelUsage, UsageReport
from ..errors import IntegrityError
from ..storage.local.store import Store
from ..storage.snapshots.repacking import stored_sizes

_DELTAS = ("sub+", "sub2+", "xor+")


def disk_usage(store: Store) -> UsageReport:
    """What the store's versions take, per model and in total (see :class:`~mvc_magics.core.usage.ModelUsage`)."""
    report = UsageReport()
    used: dict[str, dict[str, int]] = {}  # model -> tensor hash -> decoded bytes
    with store.index.reading():
        # A version in several histories counts in each (and once in the total).
        rows = store.index.query("SELECT n.name, v.id, v.manifest, v.nbytes FROM members n "
                                 "JOIN versions v ON v.id = n.id ORDER BY n.ord, n.id, n.name")
    by_name: dict[str, ModelUsage] = {}
    counted: set[str] = set()
    for name, vid, manifest, nbytes in rows:
        usage = by_name.setdefault(name, ModelUsage(name))
        usage.versions += 1
        usage.logical += int(nbytes)
        if vid not in counted:
            counted.add(vid)
            report.total.versions += 1
            report.total.logical += int(nbytes)
        for entry in json.loads(manifest):
            used.setdefault(name, {})[entry["hash"]] = int(entry["nbytes"])
    sizes: dict[str, tuple[int, str | None]] = {}
    for _vid, path in store.layout.snapshot_files(include_removed=True):
        try:
            sizes.update(stored_sizes(path))
        except IntegrityError:  # a damaged file: verify names it; du counts what it can read
            continue
    everything: dict[str, int] = {}
    for name, usage in by_name.items():
        _add(usage, used[name], sizes)
        everything.update(used[name])
    report.models = list(by_name.values())
    _add(report.total, everything, sizes)
    report.files_bytes = sum(os.path.getsize(os.path.join(folder, f)) for folder, _, files in os.walk(store.path)
                             for f in files if not os.path.islink(os.path.join(folder, f)))
    loose = store.loose_objects()
    report.loose_files, report.loose_bytes = len(loose), sum(loose.values())
    return report


def _add(usage: ModelUsage, tensors: dict[str, int], sizes: dict[str, tuple[int, str | None]]) -> None:
    for digest, nbytes in tensors.items():
        stored, coding = sizes.get(digest, (nbytes, None))
        usage.unique += nbytes
        usage.stored += stored
        if coding and coding.startswith(_DELTAS):
            usage.delta_saved += nbytes - stored
        elif coding:
            usage.coding_saved += nbytes - stored

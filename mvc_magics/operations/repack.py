"""Repack: re-code stored versions as deltas toward keyframes, as ``git gc`` packs objects.

Like git, the newest version of a line (a version without children) is kept whole, so the
versions users check out most decode at plain speed. Along each line (first parents, positions
counted from the root) a keyframe (a version stored whole) sits every ``2 * MVC_DELTA_DEPTH + 1``
positions, from the root on: the ``MVC_DELTA_DEPTH`` versions after a keyframe are forward deltas
against their parent, the ``MVC_DELTA_DEPTH`` before the next keyframe (or the line's newest
version) reverse deltas against their child, so no chain is longer than ``MVC_DELTA_DEPTH`` and the
first version of a history checks out as fast as the newest (issue 24: 10 Adam epochs, the oldest
within 2x safetensors' load). A line that has not yet grown past ``MVC_DELTA_DEPTH + 1`` versions
keeps only its newest whole, every older version a reverse delta (one keyframe instead of two for a
short history). A new commit changes little: the version it follows becomes a delta (its reverse
predecessors only get their depth attribute raised: copied, not re-coded); forward deltas never
change once written (except once, when the line first grows past ``MVC_DELTA_DEPTH + 1`` versions
and its root becomes a keyframe).

Versions are processed keyframes first, then along each chain away from them, and a delta only
ever points at a tensor whose file was already written by this run (whose own deltas point at
files written before it), so no chain can loop, even halfway through a run. A file whose tensors
are already stored as planned is left as it is. Interrupting it (Ctrl-C, a kill) leaves every file
old or new and whole; running it again continues. A damaged file is named in the report and left
as it is.
"""

from __future__ import annotations

import json
import threading

import numpy as np

from ..core.manifest import ManifestEntry
from ..core.reports import RepackReport
from ..errors import IntegrityError
from ..storage.codec.coding import FORWARD_SLOPES, MIN_CODED_BYTES, SLOPE_CANDIDATES
from ..storage.files.checksum import is_loose
from ..storage.local.store import Store
from ..storage.snapshots.deltas import base_cache_bytes, max_depth
from ..storage.snapshots.repacking import StoredCoding, TensorPlan, stored_codings
from ..storage.snapshots.snapshot import TensorReader
from ..storage.snapshots.snapshot_writer import DeltaBase


def repack(store: Store, name: str | None = None, stop: threading.Event | None = None) -> RepackReport:
    """Re-code the versions of ``name`` (all when None) as reverse deltas; see the module docstring.

    ``stop``: when set, the run ends after the file it is writing (each file is complete, old or
    new; the next run continues), as the automatic pack does when the user needs the store."""
    report = RepackReport()
    limit = max_depth()
    limit_bytes = base_cache_bytes()  # decoded bases kept between versions (MVC_BASE_CACHE_MB)
    with store.locked():
        rows = store.index.query("SELECT id, name, meta FROM versions ORDER BY ord, id")
        # ``name``'s versions include those that joined its history with a later commit (histories).
        joined = {r[0] for r in store.index.query("SELECT id FROM members WHERE name = ?", (name,))} if name else set()
        target, forward = stored_against(rows, limit)
        done: dict[str, dict[str, StoredCoding]] = {}  # files written (or found as planned) by this run
        recent: dict[str, np.ndarray] = {}  # tensors decoded for the last two versions: bases of the next
        previous: set[str] = set()
        models = {r[0]: r[1] for r in rows}
        for vid in _order(rows, target):
            model = models[vid]
            if name is not None and model != name and vid not in joined:
                continue
            if stop is not None and stop.is_set():
                report.stopped = True
                break
            plan = None
            try:
                plan = _Plan(store, vid, target.get(vid), done, recent, limit, vid in forward)
                if plan.changes:
                    before, after = store.writes.recode_version(vid, plan)
                    report.bytes_before += before
                    report.bytes_after += after
                    report.versions_recoded += 1
                else:
                    size = store.layout.snapshot_path(vid).stat().st_size
                    report.bytes_before += size
                    report.bytes_after += size
                    report.versions_skipped += 1
                # The bases of the next version along the chain: this one's tensors and its base's.
                for digest in [d for d in recent if d not in previous]:
                    del recent[digest]
                previous = set(plan.arrays)
                recent.update(plan.arrays)
                _bound(recent, limit_bytes)
                done[vid] = stored_codings(store.layout.snapshot_path(vid))[1]
            except IntegrityError as exc:  # this version's file is damaged: named, the rest go on
                report.damaged[vid] = str(exc)
            finally:
                if plan is not None:
                    plan.close()
        store.writes.record("repack", name, [], {"versions": report.versions_recoded,
                                                 "bytes_before": report.bytes_before,
                                                 "bytes_after": report.bytes_after,
                                                 "damaged": sorted(report.damaged)})
    return report


def _bound(recent: dict[str, np.ndarray], limit: int) -> None:
    """Drop the oldest kept bases until ``recent`` holds at most ``limit`` bytes (a dropped base is
    decoded from the store again when needed)."""
    total = sum(a.nbytes for a in recent.values())
    for digest in list(recent):
        if total <= limit:
            break
        total -= recent.pop(digest).nbytes


def stored_against(rows: list[tuple[str, str, str]], limit: int) -> tuple[dict[str, str], set[str]]:
    """(version -> the version it is stored as a delta against (absent: stored whole), the versions
    stored against their parent (forward deltas)) for ``rows`` (id, name, meta) in creation order;
    see the module docstring."""
    if limit < 1:
        return {}, set()
    period = 2 * limit + 1
    position: dict[str, int] = {}
    parent: dict[str, str] = {}
    child: dict[str, str] = {}
    root: dict[str, str] = {}
    reach: dict[str, int] = {}  # root -> the largest position in its tree
    for vid, _, meta in rows:  # parents come before their children in creation order
        parents = [str(p) for p in json.loads(meta).get("parents", []) if str(p) in position]
        first = parents[0] if parents else None
        position[vid] = position[first] + 1 if first is not None else 0
        root[vid] = root[first] if first is not None else vid
        reach[root[vid]] = max(reach.get(root[vid], 0), position[vid])
        if first is not None:
            parent[vid] = first
            child[first] = vid  # later rows overwrite: the newest child wins
    target: dict[str, str] = {}
    forward: set[str] = set()
    for vid, p in position.items():
        if vid not in child:  # a line's newest version: whole
            continue
        if reach[root[vid]] <= limit:  # a short line: reverse deltas toward its newest version
            target[vid] = child[vid]
        elif 1 <= p % period <= limit:  # after a keyframe: forward, against the parent
            target[vid] = parent[vid]
            forward.add(vid)
        elif p % period:  # before the next keyframe: reverse, against the child
            target[vid] = child[vid]
    return target, forward


def _order(rows: list[tuple[str, str, str]], target: dict[str, str]) -> list[str]:
    """Every version, each after the version it is stored against: keyframes newest first, each
    followed by the chains built on it (walked away from it, so the last two versions decoded are
    the next one's bases)."""
    built_on: dict[str, list[str]] = {}
    for vid, _, _ in reversed(rows):
        if vid in target:
            built_on.setdefault(target[vid], []).append(vid)
    order: list[str] = []
    for vid, _, _ in reversed(rows):
        if vid in target:
            continue
        todo = [vid]
        while todo:
            current = todo.pop()
            order.append(current)
            todo.extend(reversed(built_on.get(current, [])))
    return order


class _Plan:
    """The plan for one version's own tensors (see :class:`~mvc_magics.storage.snapshots.repacking.TensorPlan`)."""

    def __init__(self, store: Store, vid: str, against: str | None, done: dict[str, dict[str, StoredCoding]],
                 recent: dict[str, np.ndarray], limit: int, forward: bool = False) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        self._recent = recent
        self._slopes = FORWARD_SLOPES if forward else SLOPE_CANDIDATES
        self._reader = TensorReader(store.layout.snapshot_path)
        fmt, stored = stored_codings(store.layout.snapshot_path(vid))
        loose = is_loose(store.layout.snapshot_path(vid))  # a commit's file: every tensor is coded now
        own = [e for e in store.manifest(vid) if e.object == vid]
        bases = {e.name: e for e in store.manifest(against)} if against in done else {}
        self._plans: dict[str, TensorPlan] = {}
        for entry in own:
            current = stored.get(entry.hash, StoredCoding(None, None, 0))
            base = bases.get(entry.name)
            target = None
            if (base is not None and base.hash != entry.hash and base.object in done and entry.nbytes >= MIN_CODED_BYTES
                    and base.dtype == entry.dtype and base.shape == entry.shape and base.hash in done[base.object]):
                stored_base = done[base.object][base.hash]
                target = (base, stored_base) if stored_base.depth < limit else None
            self._plans[entry.hash] = self._plan(entry, current, fmt, target, done, loose)
        self.changes = loose or any(not p.keep or p.depth is not None for p in self._plans.values())

    def _plan(self, entry: ManifestEntry, current: StoredCoding, fmt: int,
              target: tuple[ManifestEntry, StoredCoding] | None, done: dict[str, dict[str, StoredCoding]],
              loose: bool = False) -> TensorPlan:
        if target is None:  # stored whole: as it is when it already is (coded, or raw in a packed coding file)
            whole = current.base is None and (current.coding or (fmt >= 2 and not loose))
            return TensorPlan(keep=True) if whole else TensorPlan()
        base, stored_base = target
        depth = stored_base.depth
        # The base's own base, when this run wrote it too: a second-order delta extrapolates from both.
        second = stored_base.base if stored_base.base and stored_base.base.split("/")[0] in done else None
        if current.base == f"{base.object}/{base.hash}" and current.second == second:
            return TensorPlan(keep=True, depth=depth + 1 if current.depth != depth + 1 else None)
        return TensorPlan(base=lambda: self._base(base, depth, second))

    def _base(self, base: ManifestEntry, depth: int, second: str | None) -> DeltaBase | None:
        further = None
        if second is not None:
            object_id, _, digest = second.partition("/")
            entry = ManifestEntry(base.name, base.dtype, base.shape, digest, object_id, base.nbytes)
            further = DeltaBase(object_id, digest, self._array(entry), depth - 1)
        return DeltaBase(base.object, base.hash, self._array(base), depth, further, self._slopes)

    def _array(self, entry: ManifestEntry) -> np.ndarray:
        array = self._recent.get(entry.hash)
        return array if array is not None else self._reader.read(entry, verify=True)

    def __call__(self, entry: ManifestEntry) -> TensorPlan:
        return self._plans[entry.hash]

    def decoded(self, digest: str, array: np.ndarray) -> None:
        self.arrays[digest] = array

    def close(self) -> None:
        self._reader.close()

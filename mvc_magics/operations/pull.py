"""Pull: fetch versions (all, or refs with their ancestors), their notes and tags from a remote.

Downloads go to the store's ``tmp/``; a version's file is renamed into ``objects/`` and indexed only
after every one of its tensors was re-hashed, so a failed or killed pull never shows a half version.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from ..core.hashing import version_id
from ..core.meta_check import metadata_problem
from ..core.names import validate_tag
from ..core.reports import TransferReport
from ..errors import (
    IntegrityError,
    InvalidNameError,
    MVCError,
    RefusedObjectsError,
    RefusedRemoteFileError,
    RemoteError,
    ResourceLimitError,
    SignatureError,
)
from ..storage.files.atomic import temporary_path
from ..storage.local.signatures import import_signature, signer_from_env
from ..storage.local.store import Store
from ..storage.remote.log import RemoteState
from ..storage.remote.store import RemoteStore
from ..storage.snapshots.deltas import base_references
from ..storage.snapshots.retired import held_hashes, is_retired
from ..storage.snapshots.snapshot import SnapshotContent, TensorReader, read_content, read_structure
from . import versions
from .pull_refusals import refusal_summary
from .pull_refusals import refuse as _refuse
from .remotes import (
    conflict_error,
    dependencies,
    in_parallel,
    progress_bar,
    remote_errors,
    remote_url,
    resolve_remote_ref,
    state_cache,
    topological,
)
from .tags import tags_deleted_here


def pull(store: Store, remote: str | None = None, refs: Iterable[str] | None = None, force: bool = False,
         progress: bool | None = None) -> TransferReport:
    """Fetch versions (all, or ``refs`` with their ancestors) and tags from a remote, verified."""
    label, url = remote_url(store, remote)
    with remote_errors(url):
        return _pull(store, label, url, refs, force, progress)


def _pull(store: Store, label: str, url: str, refs, force: bool, progress: bool | None) -> TransferReport:
    source = RemoteStore(url)
    if not source.check_format():
        raise RemoteError(f"no mvc remote at {url} (push to it first)")
    state = source.state(state_cache(store, url))
    objects, remote_tags = state.objects, state.tags
    if refs is None:
        start = sorted(objects)
    else:
        start = [resolve_remote_ref(ref, objects, remote_tags) for ref in refs]
    report = TransferReport("pull", label)
    staged: dict[str, Path] = {}
    try:
        contents = stage(store, source, start, state, staged, report, progress)
        with store.locked():
            for oid in report.rejected:  # refused objects are not imported, nor read as holders of tensors
                with contextlib.suppress(KeyError, OSError):
                    staged.pop(oid).unlink()
            imported = import_staged(store, contents, staged, report.rejected)
            report.versions = imported
            # Notes of versions already here come too: metrics measured later, histories joined later.
            noted = set(contents) | (set(state.notes) if refs is None else set(start))
            pull_notes(store, source, state.notes, sorted(vid for vid in noted if store.has_version(vid)))
            wanted = set(contents) | set(start) if refs is not None else None
            # The state holds only tag entries that count: a protected tag's entry without an allowed
            # signer's signature for its position was refused while reading the log (state.fresh).
            refused = list(state.fresh)
            conflicts = pull_tags(store, remote_tags, wanted, force, report)
            set_missing_heads(store, imported)
            pull_signatures(store, state.signatures)
            store.writes.record("pull", None, imported, {
                "remote": label, "url": url, "objects": report.objects_sent, "bytes": report.bytes,
                "tags": report.tags, "conflicts": [f"{m}/{t}" for m, t, _, _ in conflicts],
            })
    finally:
        for path in staged.values():
            with contextlib.suppress(OSError):
                path.unlink()
    report.requests = source.requests
    if report.rejected:
        raise RefusedObjectsError(refusal_summary(report), report.rejected, report)
    if refused:
        raise SignatureError(f"remote {url}: {len(refused)} tag entr{'y' if len(refused) == 1 else 'ies'} of its log "
                             f"refused, not pulled (everything else was): {'; '.join(refused)}"[:600])
    if conflicts:
        raise conflict_error("pull", conflicts)
    return report


def _local_has(store: Store, oid: str) -> bool:
    return store.layout.snapshot_path(oid).exists()


def stage(store: Store, source: RemoteStore, start, state: RemoteState, staged, report,
          progress) -> dict[str, SnapshotContent]:
    """Download every needed object into tmp/ and read it; return the full snapshots to import.

    The state's ``objects`` are the remote's snapshot files; its retired files are fetched only as the
    holders of tensors a pulled version reads from them (a full snapshot is preferred: it holds them all).
    """
    objects, retired_objects = state.objects, state.retired
    contents: dict[str, SnapshotContent] = {}
    need_hashes: dict[str, set[str]] = {}
    # Two folder listings instead of two look-ups per remote version: a pull with nothing new stays fast
    # at any history size.
    here = {vid for vid, _ in store.layout.snapshot_files(include_removed=True)}
    removed = set(store.layout.removed_ids())
    queue = [oid for oid in start if oid not in here and oid not in removed]
    total = sum(objects.get(oid, 0) for oid in queue)

    def fetch(oid: str) -> Path | None:
        """The downloaded object in tmp/, or None when it was refused (named in the report): a
        missing, oversized, symlinked or non-regular object costs only the versions that need it."""
        tmp = temporary_path(store.layout.tmp, ".h5")
        staged[oid] = tmp  # before the download: a failed one is removed with the others
        try:
            # A version removed on the remote keeps its file there, fetched only as a holder of tensors.
            if oid not in objects and oid not in retired_objects and oid not in state.removed:
                raise RefusedRemoteFileError("not on the remote")
            source.get_object(oid, tmp, retired=oid not in objects and oid not in state.removed,
                              size=objects.get(oid) or retired_objects.get(oid) or None)
        except (RefusedRemoteFileError, IntegrityError, FileNotFoundError) as exc:
            # The object itself is at fault; a failing remote (network, credentials) stops the pull.
            _refuse(report, staged, oid, exc)
            return None
        return tmp

    with progress_bar(total, f"pull {report.remote}", progress) as bar:
        # What is known up front downloads in parallel; dependencies found in the files follow one by one.
        prefetched = dict(in_parallel(dict.fromkeys(queue), fetch))
        seen: set[str] = set()
        while queue:
            oid = queue.pop(0)
            if oid in seen:
                continue
            seen.add(oid)
            tmp = prefetched[oid] if oid in prefetched else fetch(oid)
            if tmp is None:
                continue
            report.objects_sent += 1
            report.bytes += tmp.stat().st_size
            bar.update(tmp.stat().st_size)
            try:
                references = base_references(tmp)
            except IntegrityError as exc:  # not a snapshot at all: named, and the rest still comes
                _refuse(report, staged, oid, exc)
                continue
            for base_object, base_hash in references.values():  # delta bases come along
                if base_object != oid:
                    need_hashes.setdefault(base_object, set()).add(base_hash)
                    if not _local_has(store, base_object) and base_object not in seen:
                        queue.append(base_object)
            if oid not in objects or is_retired(tmp):
                continue
            try:
                content = _check_snapshot(tmp, oid)
            except IntegrityError as exc:  # one bad object is reported; the rest are still pulled
                _refuse(report, staged, oid, exc)
                continue
            contents[oid] = content
            for entry in content.manifest:
                if entry.object != oid:
                    need_hashes.setdefault(entry.object, set()).add(entry.hash)
            for dep in dependencies(content):
                parent_only = dep not in need_hashes
                if parent_only and (dep not in objects or store.layout.is_removed(dep)):
                    continue  # a parent the remote lacks or we removed: history stops there
                if not _local_has(store, dep) and dep not in seen:
                    queue.append(dep)
                    bar.total = (bar.total or 0) + objects.get(dep, retired_objects.get(dep, 0))
        # A local retired file may lack tensors the pulled versions read from it: take the remote's.
        # Whatever cannot be had is named; the versions reading from it are then refused on their own
        # when their tensors are verified (import_staged).
        for oid, hashes in need_hashes.items():
            if oid in staged or oid in report.rejected or not _local_has(store, oid):
                continue
            local = store.layout.snapshot_path(oid)
            try:
                have = held_hashes(local)
                if hashes <= have:
                    continue
                if not store.layout.is_removed(oid):  # a live file lacking them: the remote's manifest lies
                    report.rejected[oid] = f"a pulled version names tensors {oid[:12]} does not hold (refused)"
                    continue
                tmp = fetch(oid)
                if tmp is not None and not (hashes | have) <= held_hashes(tmp):
                    raise IntegrityError("it lacks tensors this store needs")
            except (RefusedRemoteFileError, IntegrityError, FileNotFoundError) as exc:
                _refuse(report, staged, oid, exc)
    report.objects_skipped = len([oid for oid in start if oid in here])
    return contents


def _check_snapshot(path: Path, oid: str) -> SnapshotContent:
    """Read a downloaded snapshot; its id must be the key it came from and match its content."""
    # A structure stored in another object (format 3) is checked in import_staged, once that is here.
    content = read_content(path, resolve=False)
    if content.version_id != oid or (content.structure_ref is None and _recomputed(content) != oid):
        raise IntegrityError(f"remote object {oid[:12]} does not hold the version its name says (refused)")
    problem = metadata_problem(content.meta)
    if problem:
        raise IntegrityError(f"remote object {oid[:12]}: {problem} (refused)")
    return content


def _recomputed(content: SnapshotContent) -> str:
    return version_id(content.structure, ((e.name, e.dtype, e.shape, e.hash) for e in content.manifest))


def import_staged(store: Store, contents: dict[str, SnapshotContent], staged: dict[str, Path],
                  rejected: dict[str, str] | None = None) -> list[str]:
    """Verify every tensor of every pulled version, then have the store place the sound ones, deps
    first; a version with a damaged tensor is left out and named in ``rejected``."""
    rejected = {} if rejected is None else rejected

    def locate(oid: str) -> Path:
        return staged.get(oid) or store.layout.snapshot_path(oid)

    with TensorReader(locate) as reader:
        for vid, content in list(contents.items()):
            try:
                if content.structure_ref is not None:  # its structure, wherever stored, must hash to the id
                    content = contents[vid] = replace(content, structure=read_structure(content.structure_ref, locate))
                    if _recomputed(content) != vid:
                        raise IntegrityError(f"remote object {vid[:12]} does not hold the version its name says "
                                             "(refused)")
                for entry in content.manifest:
                    reader.read(entry, verify=True, owner=vid)  # before anything is visible
            except (IntegrityError, ResourceLimitError, MemoryError) as exc:  # this version only
                rejected[vid] = str(exc) if isinstance(exc, MVCError) else \
                    f"remote object {vid[:12]}: not enough memory to verify it ({type(exc).__name__}); refused"
                del contents[vid]
                staged.pop(vid).unlink(missing_ok=True)

    bases = {oid: {b for b, _ in base_references(path).values() if b != oid} for oid, path in staged.items()}
    _refuse_dependents(store, contents, staged, bases, rejected)

    def deps_of(oid: str) -> list[str]:
        content = contents.get(oid)
        found = list(dependencies(content)) if content else []
        return [d for d in dict.fromkeys(found + sorted(bases[oid])) if d in staged]

    created = {oid: str(c.meta.get("created", "")) for oid, c in contents.items()}
    order = topological(sorted(staged, key=lambda o: (created.get(o, ""), o)), deps_of)
    return store.writes.import_snapshots(order, contents, staged)


def _refuse_dependents(store: Store, contents: dict[str, SnapshotContent], staged: dict[str, Path],
                       bases: dict[str, set[str]], rejected: dict[str, str]) -> None:
    """Refuse every version reading bytes (a tensor, a delta base, its structure) from an object
    that was refused, transitively: it was checked through the refused file, which is not placed."""
    refused = True
    while refused:
        refused = False
        for vid, content in list(contents.items()):
            needs = {obj for _, obj, _ in content.locations()} | bases.get(vid, set())
            gone = sorted(o for o in needs - {vid} if o not in staged and not store.layout.snapshot_path(o).exists())
            if gone:
                rejected[vid] = f"remote object {vid[:12]} reads bytes from {gone[0][:12]}, which was refused"
                del contents[vid]
                staged.pop(vid).unlink(missing_ok=True)
                refused = True


def pull_notes(store: Store, source: RemoteStore, remote_notes: dict[str, list[str]], vids: list[str]) -> None:
    for vid in vids:
        for filename in sorted(remote_notes.get(vid, [])):
            if (store.layout.notes / vid[:2] / vid / filename).exists():
                continue
            try:
                note = json.loads(source.read_bytes(source.note_key(vid, filename)))
                metrics = {str(k): float(v) for k, v in note.get("metrics", {}).items()}
            except (ValueError, TypeError, AttributeError, MVCError):
                continue  # a malformed note is not imported
            store.writes.import_note(vid, filename, note, metrics)


def pull_tags(store: Store, remote_tags: dict, wanted: set[str] | None, force: bool, report) -> list:
    conflicts = []
    deleted = tags_deleted_here(store)
    for (model, tag), (vid, protected) in sorted(remote_tags.items()):
        if (wanted is not None and vid not in wanted) or not store.has_version(vid):
            continue
        current = store.tag(model, tag)
        if current and current[0] == vid:
            continue
        if current is None and not force and deleted.get((model, tag)) == vid:
            report.kept_deleted.append(tag)  # deleted here on purpose: not brought back (force restores it)
            continue
        if current and not force:
            conflicts.append((model, tag, current[0], vid))
            continue
        if current is None:  # a new name here: the rules for tags made here hold for pulled ones too
            try:
                validate_tag(tag, versions.tag_names(store))
            except InvalidNameError as exc:
                report.rejected[f"tag {model}/{tag}"] = str(exc)
                continue
        store.writes.set_tag(model, tag, vid, protected)
        report.tags.append(tag)
    return conflicts


def pull_signatures(store: Store, remote_signatures: dict[str, list[dict]]) -> int:
    """Keep the remote's signatures of versions this store has and has no signature for: with a key
    configured, the first record that key finds valid (others pushed first cannot shadow it)."""
    try:
        signer = signer_from_env()
    except MVCError:  # a broken key configuration: keep none rather than unchecked ones (say so on sign)
        return 0
    kept = 0
    for vid, record in sorted(remote_signatures.items()):
        if store.has_version(vid):
            # Several records: one the key finds valid is kept beside a first one by another key.
            kept += any(import_signature(store.layout.signatures, store.layout.tmp, vid, one, signer,
                                         beside=len(record) > 1) for one in record)
    return kept


def set_missing_heads(store: Store, imported: list[str]) -> None:
    """A model that has no HEAD here yet gets its newest pulled version as HEAD."""
    if not imported:
        return
    marks = ",".join("?" * len(imported))
    # Every history the pulled versions are in (their own names and the name records pulled with them).
    rows = store.index.query(f"SELECT name, id FROM members WHERE id IN ({marks}) ORDER BY ord, id", imported)
    newest = dict(rows)
    heads = dict(store.index.query("SELECT name, id FROM heads"))
    for model, vid in newest.items():
        if model not in heads:
            store.writes.move_head(model, vid)

"""Push: send versions (all, or refs with their ancestors), their notes and tags to a remote.

Objects go first, each after the objects it depends on; notes next; tags last, with conditional
writes, so a tag on the remote never names a version whose bytes are not all there.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..core.reports import TransferReport
from ..errors import IntegrityError, InvalidNameError, MVCError, RefError, RemotePermissionError
from ..storage.files.atomic import temporary_path
from ..storage.files.safe_files import CAP_NOTE
from ..storage.local.signatures import Signer, read_signature, signer_from_env
from ..storage.local.store import Store
from ..storage.remote.log import RemoteLog, RemoteState
from ..storage.remote.state import tag_entries
from ..storage.remote.store import RemoteStore
from ..storage.remote.trust import is_protected, sign, tag_message
from ..storage.snapshots.deltas import base_references
from ..storage.snapshots.retired import held_hashes, is_retired, write_retired
from . import lookup, versions
from .remotes import conflict_error, in_parallel, progress_bar, remote_errors, remote_url, state_cache, topological


def push(store: Store, remote: str | None = None, refs: Iterable[str] | None = None, force: bool = False,
         progress: bool | None = None) -> TransferReport:
    """Send versions (all, or ``refs`` with their ancestors) and their tags to a remote."""
    label, url = remote_url(store, remote)
    with remote_errors(url):
        return _push(store, label, url, refs, force, progress)


def _push(store: Store, label: str, url: str, refs, force: bool, progress: bool | None) -> TransferReport:
    target = RemoteStore(url)
    target.require_exclusive_create()
    target.check_format(create=True)
    log = RemoteLog(target, state_cache(store, url), _signer())
    state = _log_state(target, log)
    versions_here = [row[0] for row in store.index.query("SELECT id FROM versions ORDER BY ord, id")]
    if refs is None:
        start = versions_here
    else:
        start = [_resolve_local(store, ref) for ref in refs]
    live: dict[str, bool] = {}  # object id -> is a version here (else only a holder of tensors)

    def deps_of(oid: str) -> list[str]:
        # From the index: no file is opened. A removed version's file travels only as a holder of tensors.
        if oid in state.objects and oid in versions_here:
            live[oid] = True
            return []  # the log names only complete versions: its dependencies are there too
        rows = store.index.query("SELECT manifest, meta FROM versions WHERE id = ?", (oid,))
        live[oid] = bool(rows)
        # Delta-coded tensors travel with their bases (read from the file's dataset attributes).
        path = store.layout.snapshot_path(oid)
        bases = sorted({b for b, _ in base_references(path).values() if b != oid}) if path.exists() else []
        if not rows:
            return bases
        tensor_files = [e["object"] for e in json.loads(rows[0][0]) if e["object"] != oid]
        parents = [str(p) for p in json.loads(rows[0][1]).get("parents", []) if store.has_version(str(p))]
        return list(dict.fromkeys(tensor_files + bases + parents))

    versions_here = set(versions_here)
    order = topological(start, deps_of)
    target.clean_stale_uploads()
    for oid in order:
        if oid not in state.objects and not store.layout.snapshot_path(oid).exists():
            raise IntegrityError(f"object {oid[:12]} is missing from the local store (run verify)")

    # A full snapshot on the remote also serves as the holder of its tensors.
    report = TransferReport("push", label)
    todo = [oid for oid in order
            if oid not in state.objects and not (not live[oid] and oid in state.retired)]
    unlogged = _already_uploaded(target, todo, live)  # by a push killed before it wrote the log
    report.objects_skipped = len(order) - len(todo) + len(unlogged)
    sizes = {oid: store.layout.snapshot_path(oid).stat().st_size for oid in todo}
    total = sum(size for oid, size in sizes.items() if oid not in unlogged)

    def upload(oid: str) -> int:
        with _as_uploaded(store, oid, store.layout.snapshot_path(oid)) as path:
            size = path.stat().st_size
            target.put_object(path, oid, retired=not live[oid])
        return size

    with progress_bar(total, f"push {label}", progress) as bar:
        for oid, size in in_parallel([oid for oid in todo if oid not in unlogged], upload):
            sizes[oid] = size
            bar.update(size)
            report.objects_sent += 1
            report.bytes += size
    report.versions = [oid for oid in todo if live[oid] and oid not in unlogged]
    notes: dict[str, list[str]] = {}
    # Which versions have notes at all: two folder listings levels, not one look-up per version.
    with_notes = {vid for prefix in store.layout.files.list(store.layout.notes)
                  for vid in store.layout.files.list(store.layout.notes / prefix)}
    for oid in (oid for oid in order if oid in with_notes):
        folder = store.layout.notes / oid[:2] / oid
        for name in store.layout.files.list(folder):  # regular files only, never through a symlink
            if name.endswith(".json") and name not in state.notes.get(oid, []):
                target.put_note(oid, name, store.layout.files.read(folder / name, CAP_NOTE) or b"")
                notes.setdefault(oid, []).append(name)
    pushed = set(order)
    local_tags = [row for row in store.index.query("SELECT name, tag, id, protected FROM tags ORDER BY name, tag")
                  if row[2] in pushed]
    conflicts: list[tuple[str, str, str, str]] = []
    trust = _TagTrust(log)
    # Version signatures travel with the versions (the remote keeps every distinct record).
    local_signatures = {oid: record for oid in order if live.get(oid)
                        and (record := read_signature(store.layout.signatures, oid)) is not None
                        and record not in state.signatures.get(oid, [])}

    def segment(current: RemoteState) -> dict | None:
        conflicts.clear()
        report.tags = []
        tags = []
        for model, tag, vid, protected in local_tags:
            if vid in current.removed:
                continue  # removed on the remote: a tag must not name it there again
            remote = current.tags.get((model, tag))
            if remote is not None and remote[0] == vid:
                continue
            if remote is not None and not force:
                conflicts.append((model, tag, vid, remote[0]))
                continue
            entry = trust.entry(current, model, tag, vid, bool(protected))
            if entry is not None:
                tags.append(entry)
                report.tags.append(tag)
        # A version removed on the remote stays removed: its file is there, only as a holder of tensors.
        objects = {oid: sizes[oid] for oid in todo
                   if live[oid] and oid not in current.objects and oid not in current.removed}
        retired = {oid: sizes[oid] for oid in todo if not live[oid] and oid not in current.retired}
        new_notes = {oid: [n for n in names if n not in current.notes.get(oid, [])] for oid, names in notes.items()}
        new_notes = {oid: names for oid, names in new_notes.items() if names}
        signatures = {oid: record for oid, record in local_signatures.items()
                      if record not in current.signatures.get(oid, [])}
        if not (objects or retired or new_notes or tags or signatures):
            return None
        return {"objects": objects, "retired": retired, "notes": new_notes, "tags": tags,
                **({"signatures": signatures} if signatures else {})}

    log.append(segment, state)
    store.writes.record("push", None, report.versions, {
        "remote": label, "url": url, "objects": report.objects_sent, "bytes": report.bytes,
        "tags": report.tags, "conflicts": [f"{m}/{t}" for m, t, _, _ in conflicts],
    })
    report.requests = target.requests
    if trust.denied:
        raise RemotePermissionError(
            f"permission denied: remote {url} lets only its allowed signers move protected tags "
            f"({', '.join(sorted(set(trust.denied)))} not pushed; everything else was); sign with an allowed key "
            "(MVC_SIGNING_KEY_FILE)")
    if conflicts:
        raise conflict_error("push", conflicts)
    return report


class _TagTrust:
    """Signs the entries of protected tags, and holds back those the remote's allowed signers would refuse.

    A tag is protected when its entry in force on the remote is (or its name is ``production*``), or
    the new entry is: moving, unprotecting and deleting one all need an allowed signer.
    """

    def __init__(self, log: RemoteLog) -> None:
        self.log = log
        self.denied: list[str] = []

    def entry(self, current: RemoteState, model: str, tag: str, vid: str | None, protected: bool) -> dict | None:
        prev = current.heads.get((model, tag))
        entry = {"model": model, "tag": tag, "id": vid, "protected": protected, "prev": prev}
        in_force = current.tags.get((model, tag))
        if not (is_protected(tag, protected) or (in_force is not None and is_protected(tag, in_force[1]))):
            return entry
        signer = signer_from_env()
        if signer is not None and signer.can_sign:
            entry["signature"] = sign(signer, tag_message(current.identity, model, tag, vid, protected, prev))
        if self.log.signers is not None and not self.log.signers.allows(signer):
            self.denied.append(tag)
            return None
        return entry


def _signer() -> Signer | None:
    """The pusher's key (it signs checkpoints when the remote allows it); a broken configuration is
    reported where a signature is needed."""
    try:
        return signer_from_env()
    except MVCError:
        return None


def _log_state(target: RemoteStore, log: RemoteLog) -> RemoteState:
    """The remote's state from its log; a version 1 remote (no log) gets its listing as segment 0."""
    if target.format_version() >= 2 or log.exists():
        return log.read()
    listed = target.listed_state()
    first = {"objects": listed.objects, "retired": listed.retired, "notes": listed.notes,
             "tags": tag_entries(listed.tags)}
    state = log.append(lambda current: first if current.seq == 0 else None)
    target.upgrade_format()
    return state


def _already_uploaded(target: RemoteStore, todo: list[str], live: dict[str, bool]) -> set[str]:
    """Objects of ``todo`` already under their final key (complete: keys are only ever whole objects)."""
    if len(todo) > 64:  # one listing is cheaper than a request per object
        listed, listed_retired = target.list_objects(), target.list_objects(retired=True)
        return {oid for oid in todo if oid in (listed if live[oid] else listed_retired)}
    return {oid for oid in todo if target.exists(target.object_key(oid, retired=not live[oid]))}


@contextlib.contextmanager
def _as_uploaded(store: Store, oid: str, path: Path) -> Iterator[Path]:
    """The file to upload for ``oid``: a removed version not yet gc'd goes as a retired copy, so it never
    shows as a version on the remote."""
    if path.is_symlink() or not path.is_file():  # a planted link would upload whatever it points at
        raise IntegrityError(f"the snapshot file of {oid[:12]} is not a regular file in the store; refused")
    if not store.layout.is_removed(oid) or is_retired(path):
        yield path
        return
    tmp = temporary_path(store.layout.tmp, ".h5")
    try:
        write_retired(tmp, oid, path, held_hashes(path), store.layout.tmp)
        yield tmp
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _resolve_local(store: Store, ref: str) -> str:
    """A ref for push: any ref of a one-model store, an id prefix, or a tag only one model has."""
    try:
        return versions.resolve(store, ref).id
    except RefError as exc:
        try:
            return lookup.find_tag(store.index, ref, None)[1]
        except (RefError, InvalidNameError):
            raise exc from None

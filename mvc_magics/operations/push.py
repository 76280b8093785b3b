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
from ..errors import IntegrityError, InvalidNameError, RefError
from ..storage.atomic import temporary_path
from ..storage.deltas import base_references
from ..storage.remote_store import RemoteStore
from ..storage.retired import held_hashes, is_retired, write_retired
from ..storage.store import Store
from . import lookup, versions
from .remotes import conflict_error, progress_bar, remote_errors, remote_url, topological


def push(store: Store, remote: str | None = None, refs: Iterable[str] | None = None, force: bool = False,
         progress: bool | None = None) -> TransferReport:
    """Send versions (all, or ``refs`` with their ancestors) and their tags to a remote."""
    label, url = remote_url(store, remote)
    with remote_errors(url):
        return _push(store, label, url, refs, force, progress)


def _push(store: Store, label: str, url: str, refs, force: bool, progress: bool | None) -> TransferReport:
    target = RemoteStore(url)
    target.check_format(create=True)
    if refs is None:
        start = [row[0] for row in store.index.query("SELECT id FROM versions ORDER BY seq")]
    else:
        start = [_resolve_local(store, ref) for ref in refs]
    live: dict[str, bool] = {}  # object id -> is a version here (else only a holder of tensors)

    def deps_of(oid: str) -> list[str]:
        # From the index: no file is opened. A removed version's file travels only as a holder of tensors.
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

    order = topological(start, deps_of)
    target.clean_stale_uploads()
    for oid in order:
        if not store.layout.snapshot_path(oid).exists():
            raise IntegrityError(f"object {oid[:12]} is missing from the local store (run verify)")
    present, present_retired = target.objects(), target.objects(retired=True)

    def as_retired(oid: str) -> bool:
        return not live[oid]

    # A full snapshot on the remote also serves as the holder of its tensors.
    report = TransferReport("push", label)
    todo = [oid for oid in order
            if oid not in present and not (as_retired(oid) and oid in present_retired)]
    report.objects_skipped = len(order) - len(todo)
    total = sum(store.layout.snapshot_path(oid).stat().st_size for oid in todo)
    with progress_bar(total, f"push {label}", progress) as bar:
        for oid in todo:
            path = store.layout.snapshot_path(oid)
            size = path.stat().st_size
            with _as_uploaded(store, oid, path) as upload:
                target.put_object(upload, oid, retired=as_retired(oid))
            bar.update(size)
            report.objects_sent += 1
            report.bytes += size
            if live[oid]:
                report.versions.append(oid)
    remote_notes = target.notes()
    for oid in order:
        folder = store.layout.notes / oid[:2] / oid
        for note in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            if note.name not in remote_notes.get(oid, {}):
                target.put_note(oid, note.name, note.read_bytes())
    pushed = set(order)
    remote_tags = target.tags()
    conflicts = []
    for model, tag, vid, protected in store.index.query("SELECT name, tag, id, protected FROM tags ORDER BY name, tag"):
        if vid not in pushed:
            continue
        current = remote_tags.get((model, tag))
        if current is not None and current[0] == vid:
            continue
        if current is not None and not force:
            conflicts.append((model, tag, vid, current[0]))
            continue
        if target.write_tag(model, tag, vid, bool(protected), expected=current[0] if current else None):
            report.tags.append(tag)
        else:
            latest = target.tags().get((model, tag), ("?", False))[0]
            conflicts.append((model, tag, vid, latest))
    store.writes.record("push", None, report.versions, {
        "remote": label, "url": url, "objects": report.objects_sent, "bytes": report.bytes,
        "tags": report.tags, "conflicts": [f"{m}/{t}" for m, t, _, _ in conflicts],
    })
    if conflicts:
        raise conflict_error("push", conflicts)
    return report


@contextlib.contextmanager
def _as_uploaded(store: Store, oid: str, path: Path) -> Iterator[Path]:
    """The file to upload for ``oid``: a removed version not yet gc'd goes as a retired copy, so it never
    shows as a version on the remote."""
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

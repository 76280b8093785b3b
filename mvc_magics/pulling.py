"""The receiving side of a pull: stage, verify, then make versions visible (deps first).

Downloads go to the store's ``tmp/``; a version's file is renamed into ``objects/`` and indexed only
after every one of its tensors was re-hashed, so a failed or killed pull never shows a half version.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import IntegrityError, MVCError, RemoteError
from .hashing import version_id
from .remote import dependencies, progress_bar, topological
from .removal import held_hashes, is_retired
from .storage.atomic import atomic_write_bytes, fsync_path, temporary_path
from .storage.index import Index
from .storage.remote_store import RemoteStore
from .storage.snapshot import SnapshotContent, TensorReader, read_content

if TYPE_CHECKING:
    from .repo import Repo



def _local_has(repo: Repo, oid: str) -> bool:
    return repo.layout.snapshot_path(oid).exists()


def stage(repo, store, start, objects, staged, report, progress) -> dict[str, SnapshotContent]:
    """Download every needed object into tmp/ and read it; return the full snapshots to import.

    ``objects`` are the remote's snapshot files; its retired files are fetched only as the holders of
    tensors a pulled version reads from them (a full snapshot is preferred: it holds them all).
    """
    retired_objects = store.objects(retired=True)
    contents: dict[str, SnapshotContent] = {}
    need_hashes: dict[str, set[str]] = {}
    queue = [oid for oid in start if not _local_has(repo, oid) and not repo.layout.is_removed(oid)]
    total = sum(objects.get(oid, 0) for oid in queue)
    with progress_bar(total, f"pull {report.remote}", progress) as bar:
        seen: set[str] = set()
        while queue:
            oid = queue.pop(0)
            if oid in seen:
                continue
            seen.add(oid)
            if oid not in objects and oid not in retired_objects:
                raise RemoteError(f"object {oid[:12]} is not on the remote {store.url}")
            tmp = temporary_path(repo.layout.tmp, ".h5")
            staged[oid] = tmp
            store.get_object(oid, tmp, retired=oid not in objects)
            report.objects_sent += 1
            report.bytes += tmp.stat().st_size
            bar.update(tmp.stat().st_size)
            if oid not in objects or is_retired(tmp):
                continue
            content = _check_snapshot(tmp, oid)
            contents[oid] = content
            for entry in content.manifest:
                if entry.object != oid:
                    need_hashes.setdefault(entry.object, set()).add(entry.hash)
            for dep in dependencies(content):
                parent_only = dep not in need_hashes
                if parent_only and (dep not in objects or repo.layout.is_removed(dep)):
                    continue  # a parent the remote lacks or we removed: history stops there
                if not _local_has(repo, dep) and dep not in seen:
                    queue.append(dep)
                    bar.total = (bar.total or 0) + objects.get(dep, retired_objects.get(dep, 0))
        # A local retired file may lack tensors the pulled versions read from it: take the remote's.
        for oid, hashes in need_hashes.items():
            if oid in staged or not _local_has(repo, oid):
                continue
            local = repo.layout.snapshot_path(oid)
            have = held_hashes(local)
            if hashes <= have:
                continue
            if not repo.layout.is_removed(oid):  # a live file lacking them: the remote's manifest lies
                raise IntegrityError(f"a pulled version names tensors {oid[:12]} does not hold (refused)")
            if oid not in objects and oid not in retired_objects:
                raise IntegrityError(f"object {oid[:12]} lacks tensors and is not on the remote")
            tmp = temporary_path(repo.layout.tmp, ".h5")
            staged[oid] = tmp
            store.get_object(oid, tmp, retired=oid not in objects)
            if not (hashes | have) <= held_hashes(tmp):
                raise IntegrityError(f"object {oid[:12]} on the remote lacks tensors this store needs")
    report.objects_skipped = len([oid for oid in start if _local_has(repo, oid)])
    return contents


def _check_snapshot(path: Path, oid: str) -> SnapshotContent:
    """Read a downloaded snapshot; its id must be the key it came from and match its content."""
    content = read_content(path)
    recomputed = version_id(content.structure, ((e.name, e.dtype, e.shape, e.hash) for e in content.manifest))
    if content.version_id != oid or recomputed != oid:
        raise IntegrityError(f"remote object {oid[:12]} does not hold the version its name says (refused)")
    return content


def import_staged(repo: Repo, contents: dict[str, SnapshotContent], staged: dict[str, Path]) -> list[str]:
    """Verify every tensor of every pulled version, then rename files into place, deps first."""

    def locate(oid: str) -> Path:
        return staged.get(oid) or repo.layout.snapshot_path(oid)

    with TensorReader(locate) as reader:
        for vid, content in contents.items():
            for entry in content.manifest:
                reader.read(entry, verify=True, owner=vid)  # IntegrityError before anything is visible

    def deps_of(oid: str) -> list[str]:
        content = contents.get(oid)
        return [d for d in dependencies(content) if d in staged] if content else []

    created = {oid: str(c.meta.get("created", "")) for oid, c in contents.items()}
    order = topological(sorted(staged, key=lambda o: (created.get(o, ""), o)), deps_of)
    imported = []
    for oid in order:
        final = repo.layout.snapshot_path(oid)
        if oid not in contents:  # a retired file: a tombstone first, so it never shows as a version
            if not final.exists() or repo.layout.is_removed(oid):
                repo.layout.write_tombstone(oid, {"id": oid, "retired": True, "pulled": True})
        final.parent.mkdir(parents=True, exist_ok=True)
        fsync_path(staged[oid])
        os.replace(staged[oid], final)
        fsync_path(final.parent)
        del staged[oid]
        if oid in contents and not repo.layout.is_removed(oid) and not repo._find(oid):
            from .maintenance import _index_content

            with repo.index.transaction() as conn:
                _index_content(conn, contents[oid])
            imported.append(oid)
    return imported


def pull_notes(repo: Repo, store: RemoteStore, vids: list[str]) -> None:
    remote_notes = store.notes()
    for vid in vids:
        for filename, key in sorted(remote_notes.get(vid, {}).items()):
            local = repo.layout.notes / vid[:2] / vid / filename
            if local.exists():
                continue
            try:
                note = json.loads(store.read_bytes(key))
                metrics = {str(k): float(v) for k, v in note.get("metrics", {}).items()}
            except (ValueError, TypeError, AttributeError, MVCError):
                continue  # a malformed note is not imported
            atomic_write_bytes(local, json.dumps(note, sort_keys=True).encode(), repo.layout.tmp)
            with repo.index.transaction() as conn:
                Index.set_metrics(conn, vid, metrics)


def pull_tags(repo: Repo, remote_tags: dict, wanted: set[str] | None, force: bool, report) -> list:
    conflicts = []
    for (model, tag), (vid, protected) in sorted(remote_tags.items()):
        if (wanted is not None and vid not in wanted) or not repo._find(vid):
            continue
        rows = repo.index.query("SELECT id, protected FROM tags WHERE name = ? AND tag = ?", (model, tag))
        if rows and rows[0][0] == vid:
            continue
        if rows and not force:
            conflicts.append((model, tag, rows[0][0], vid))
            continue
        repo.layout.write_tag(model, tag, vid, protected)
        with repo.index.transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO tags(name, tag, id, protected) VALUES(?, ?, ?, ?)",
                         (model, tag, vid, int(protected)))
        report.tags.append(tag)
    return conflicts


def set_missing_heads(repo: Repo, imported: list[str]) -> None:
    """A model that has no HEAD here yet gets its newest pulled version as HEAD."""
    if not imported:
        return
    marks = ",".join("?" * len(imported))
    rows = repo.index.query(f"SELECT name, id FROM versions WHERE id IN ({marks}) ORDER BY seq", imported)
    newest = dict(rows)
    heads = dict(repo.index.query("SELECT name, id FROM heads"))
    for model, vid in newest.items():
        if model not in heads:
            repo.layout.write_head(model, vid)
            with repo.index.transaction() as conn:
                conn.execute("INSERT OR REPLACE INTO heads(name, id) VALUES(?, ?)", (model, vid))

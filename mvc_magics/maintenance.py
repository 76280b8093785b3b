"""Store maintenance: verify (re-hash everything) and rebuilding the index from the files."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import IntegrityError, MVCError
from .storage.index import Index
from .storage.snapshot import SnapshotContent, TensorReader, read_content
from .version import Problem, VerifyReport

if TYPE_CHECKING:
    from .repo import Repo


def verify_store(repo: Repo) -> VerifyReport:
    """Check every snapshot file and tensor; a damaged tensor is reported for every version using it."""
    report = VerifyReport()
    contents: dict[str, SnapshotContent] = {}
    for vid, path in repo.layout.snapshot_files():
        try:
            content = read_content(path)
        except (MVCError, OSError) as exc:
            report.problems.append(Problem(vid, None, f"snapshot file unreadable: {exc}"))
            continue
        if content.version_id != vid:
            report.problems.append(Problem(vid, None, f"file holds version {content.version_id[:12]}"))
            continue
        contents[vid] = content
    indexed = set(repo.index.version_ids())
    for vid in sorted(indexed - set(contents) - report.damaged_versions):
        report.problems.append(Problem(vid, None, "indexed but its snapshot file is missing"))
    unindexed = set(contents) - indexed
    if unindexed:
        report.notes.append(f"{len(unindexed)} snapshot(s) not in the index (run reindex)")
    damaged: dict[str, str] = {}  # tensor hash -> what is wrong with it
    checked: set[str] = set()
    with TensorReader(repo.layout.snapshot_path) as reader:
        for vid, content in sorted(contents.items()):
            report.versions_checked += 1
            for entry in content.manifest:
                if entry.hash not in checked:
                    checked.add(entry.hash)
                    try:
                        reader.read(entry, verify=True, owner=vid)
                        report.bytes_checked += entry.nbytes
                    except IntegrityError as exc:
                        damaged[entry.hash] = str(exc).split(": ", 1)[-1]
                    report.tensors_checked += 1
                if entry.hash in damaged:
                    where = "" if entry.object == vid else f" (bytes stored in {entry.object[:12]})"
                    report.problems.append(Problem(vid, entry.name, damaged[entry.hash] + where))
    return report


def _index_content(conn, content: SnapshotContent) -> None:
    meta = content.meta
    manifest = [e.to_json() for e in content.manifest]
    written = sum(e.nbytes for e in content.manifest if e.object == content.version_id)
    Index.insert_version(conn, content.version_id, str(meta.get("name", "")), str(meta.get("created", "")),
                         meta, manifest, written)
    Index.set_metrics(conn, content.version_id, {k: float(v) for k, v in meta.get("metrics", {}).items()})


def rebuild_index(repo: Repo) -> int:
    """Drop and rebuild the index from snapshot, ref and note files (caller holds the lock)."""
    contents = []
    for vid, path in repo.layout.snapshot_files():
        try:
            content = read_content(path)
        except (MVCError, OSError):
            continue  # verify reports unreadable snapshots; the index holds what can be read
        if content.version_id == vid:
            contents.append(content)
    contents.sort(key=lambda c: (str(c.meta.get("created", "")), c.version_id))
    heads, tags = repo.layout.read_refs()
    known = {c.version_id for c in contents}
    with repo.index.transaction() as conn:
        for table in ("versions", "metrics", "tags", "heads", "tensors"):
            conn.execute(f"DELETE FROM {table}")
        for content in contents:
            _index_content(conn, content)
        for vid, note in repo.layout.read_notes():
            if vid in known and isinstance(note.get("metrics"), dict):
                Index.set_metrics(conn, vid, {k: float(v) for k, v in note["metrics"].items()})
        conn.executemany("INSERT OR REPLACE INTO tags(name, tag, id, protected) VALUES(?, ?, ?, ?)",
                         [(m, t, vid, int(p)) for m, t, vid, p in tags if vid in known])
        conn.executemany("INSERT OR REPLACE INTO heads(name, id) VALUES(?, ?)",
                         [(m, vid) for m, vid in heads.items() if vid in known])
    return len(contents)


def index_missing_snapshots(repo: Repo) -> int:
    """Add snapshot files that are on disk but not in the index (a commit killed mid-way), and drop
    indexed versions that have a tombstone (a removal killed after its commit point)."""
    indexed = set(repo.index.version_ids())
    removed = [vid for vid in indexed if repo.layout.is_removed(vid)]
    if removed:
        with repo.index.transaction() as conn:
            for table in ("versions", "metrics", "tags", "heads"):
                conn.executemany(f"DELETE FROM {table} WHERE id = ?", [(vid,) for vid in removed])
        indexed -= set(removed)
    missing = []
    for vid, path in repo.layout.snapshot_files():
        if vid in indexed:
            continue
        try:
            content = read_content(path)
        except (MVCError, OSError):
            continue
        if content.version_id == vid:
            missing.append(content)
    missing.sort(key=lambda c: (str(c.meta.get("created", "")), c.version_id))
    heads, tags = repo.layout.read_refs()
    ids = {c.version_id for c in missing}
    with repo.index.transaction() as conn:
        for content in missing:
            _index_content(conn, content)
        conn.executemany("INSERT OR REPLACE INTO tags(name, tag, id, protected) VALUES(?, ?, ?, ?)",
                         [(m, t, vid, int(p)) for m, t, vid, p in tags if vid in ids])
        conn.executemany("INSERT OR REPLACE INTO heads(name, id) VALUES(?, ?)",
                         [(m, vid) for m, vid in heads.items() if vid in ids])
    return len(missing)



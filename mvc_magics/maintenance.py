"""Store maintenance: verify (re-hash everything) and rebuilding the index from the files."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from .errors import IntegrityError, MVCError
from .hashing import version_id
from .metadata import author
from .names import validate_name
from .signing import check_signature, signer_from_env
from .storage.index import Index
from .storage.snapshot import SnapshotContent, TensorReader, check_file_checksum, read_content
from .version import Problem, VerifyReport

if TYPE_CHECKING:
    from .repo import Repo


def verify_store(repo: Repo) -> VerifyReport:
    """Check every snapshot file and tensor; a damaged tensor is reported for every version using it.

    Also checks each file's checksum (any flipped byte), that structure and manifest still hash to
    the version id, the index file, the audit chain (and that every version is recorded in it) and,
    when a signing key is configured, every version's signature.
    """
    report = VerifyReport()
    contents: dict[str, SnapshotContent] = {}
    file_damaged: set[str] = set()
    for vid, path in repo.layout.snapshot_files():
        try:
            content = read_content(path)
        except (MVCError, OSError) as exc:
            report.problems.append(Problem(vid, None, f"snapshot file unreadable: {exc}"))
            continue
        if content.version_id != vid:
            report.problems.append(Problem(vid, None, f"file holds version {content.version_id[:12]}"))
            continue
        entries = ((e.name, e.dtype, e.shape, e.hash) for e in content.manifest)
        if version_id(content.structure, entries) != vid:
            report.problems.append(Problem(vid, None, "structure or manifest does not hash to the version id"))
        try:
            if check_file_checksum(path) is False:
                file_damaged.add(vid)
        except OSError as exc:
            report.problems.append(Problem(vid, None, f"snapshot file unreadable: {exc}"))
        if not _valid_name(content.meta.get("name")):
            report.problems.append(Problem(vid, None, f"invalid model name {str(content.meta.get('name'))[:40]!r}"))
        contents[vid] = content
    for problem in repo.index.integrity_problems()[:5]:
        report.problems.append(Problem("index", None, f"{problem} (run reindex)"))
    try:
        indexed = set(repo.index.version_ids())
    except IntegrityError as exc:  # the files are still checked; reindex rebuilds the index from them
        report.problems.append(Problem("index", None, str(exc)))
        indexed = set(contents)
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
    # A damaged tensor already explains its own file's checksum; report the rest (metadata, HDF5 structure).
    explained = {c.version_id for c in contents.values() for e in c.manifest
                 if e.object == c.version_id and e.hash in damaged}
    for vid in sorted(file_damaged - explained):
        report.problems.append(Problem(vid, None, "file checksum mismatch: bytes of the snapshot file changed "
                                                  "since it was written"))
    _verify_audit(repo, report, sorted(indexed | set(contents)))
    _verify_signatures(repo, report, sorted(indexed | set(contents)))
    return report


def _verify_audit(repo: Repo, report: VerifyReport, versions: list[str]) -> None:
    check = repo.audit.check()
    report.problems.extend(Problem("audit.log", None, text) for text in check.problems)
    report.notes.extend(check.notes)
    unrecorded = [vid for vid in versions if vid not in check.ids]
    for vid in unrecorded:
        report.problems.append(Problem(vid, None, "no audit entry records this version (audit log edited or "
                                                  "truncated)"))


def _verify_signatures(repo: Repo, report: VerifyReport, versions: list[str]) -> None:
    try:
        signer = signer_from_env()
    except MVCError as exc:
        report.problems.append(Problem("signing", None, str(exc)))
        return
    unchecked = 0
    for vid in versions:
        status = check_signature(repo.layout.signatures, signer, vid)
        if status.state == "bad" or (status.state == "unsigned" and signer is not None):
            report.problems.append(Problem(vid, None, f"signature: {status.detail}"))
        unchecked += status.state == "unchecked"
    if unchecked:
        report.notes.append(f"{unchecked} signed version(s) not checked: set MVC_SIGNING_KEY or "
                            "MVC_SIGNING_KEY_FILE to check them")


def _valid_name(name: object) -> bool:
    try:
        validate_name(name, "model name")
    except MVCError:
        return False
    return True


def _indexable(content: SnapshotContent) -> bool:
    """Metadata sane enough to index (snapshot files are untrusted input)."""
    meta = content.meta
    try:
        datetime.fromisoformat(str(meta.get("created")))
    except ValueError:
        return False
    parents = meta.get("parents", [])
    return (_valid_name(meta.get("name")) and isinstance(parents, list)
            and all(isinstance(p, str) for p in parents))


def _index_content(conn, content: SnapshotContent) -> None:
    meta = content.meta
    manifest = [e.to_json() for e in content.manifest]
    written = sum(e.nbytes for e in content.manifest if e.object == content.version_id)
    Index.insert_version(conn, content.version_id, str(meta.get("name", "")), str(meta.get("created", "")),
                         meta, manifest, written)
    metrics = meta.get("metrics")
    Index.set_metrics(conn, content.version_id, _float_metrics(metrics) if isinstance(metrics, dict) else {})


def rebuild_index(repo: Repo) -> int:
    """Drop and rebuild the index from snapshot, ref and note files (caller holds the lock)."""
    contents = []
    for vid, path in repo.layout.snapshot_files():
        try:
            content = read_content(path)
        except (MVCError, OSError):
            continue  # verify reports unreadable snapshots; the index holds what can be read
        if content.version_id == vid and _indexable(content):
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
                Index.set_metrics(conn, vid, _float_metrics(note["metrics"]))
        conn.executemany("INSERT OR REPLACE INTO tags(name, tag, id, protected) VALUES(?, ?, ?, ?)",
                         [(m, t, vid, int(p)) for m, t, vid, p in tags if vid in known])
        conn.executemany("INSERT OR REPLACE INTO heads(name, id) VALUES(?, ?)",
                         [(m, vid) for m, vid in heads.items() if vid in known])
    return len(contents)


def index_missing_snapshots(repo: Repo, complete: bool = False) -> list[str]:
    """Add snapshot files that are on disk but not in the index (a commit killed mid-way).

    With ``complete`` (the previous lock holder died, so these are its interrupted commits), the
    ref updates the commit did not get to are finished: its tags where no tag file exists yet (a
    commit never moves a tag) and the model's HEAD when it is still at the version's parent.
    Returns the ids indexed.
    Also drops indexed versions that have a tombstone (a removal killed after its commit point).
    """
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
        if content.version_id == vid and _indexable(content):
            missing.append(content)
    missing.sort(key=lambda c: (str(c.meta.get("created", "")), c.version_id))
    if complete:
        for content in missing:
            _complete_refs(repo, content)
    heads, tags = repo.layout.read_refs()
    ids = {c.version_id for c in missing}
    with repo.index.transaction() as conn:
        for content in missing:
            _index_content(conn, content)
        conn.executemany("INSERT OR REPLACE INTO tags(name, tag, id, protected) VALUES(?, ?, ?, ?)",
                         [(m, t, vid, int(p)) for m, t, vid, p in tags if vid in ids])
        conn.executemany("INSERT OR REPLACE INTO heads(name, id) VALUES(?, ?)",
                         [(m, vid) for m, vid in heads.items() if vid in ids])
        if ids:
            for vid, note in repo.layout.read_notes():
                if vid in ids and isinstance(note.get("metrics"), dict):
                    Index.set_metrics(conn, vid, _float_metrics(note["metrics"]))
    return [c.version_id for c in missing]


def _complete_refs(repo: Repo, content: SnapshotContent) -> None:
    name, meta, vid = str(content.meta["name"]), content.meta, content.version_id
    heads, tags = repo.layout.read_refs()
    existing = {t for m, t, _, _ in tags if m == name}
    requested = meta.get("tags") if isinstance(meta.get("tags"), list) else []
    for tag in requested:
        if _valid_name(tag) and tag not in existing:
            repo.layout.write_tag(name, tag, vid)
    parents = meta.get("parents") if isinstance(meta.get("parents"), list) else []
    if heads.get(name) is None or heads.get(name) in parents:
        repo.layout.write_head(name, vid)


def sync_refs_and_notes(repo: Repo) -> None:
    """Make the index's tags, HEADs and attached metrics equal to the ref and note files."""
    heads, tags = repo.layout.read_refs()
    known = set(repo.index.version_ids())
    notes = [(vid, note) for vid, note in repo.layout.read_notes() if vid in known]
    with repo.index.transaction() as conn:
        conn.execute("DELETE FROM tags")
        conn.execute("DELETE FROM heads")
        conn.executemany("INSERT OR REPLACE INTO tags(name, tag, id, protected) VALUES(?, ?, ?, ?)",
                         [(m, t, vid, int(p)) for m, t, vid, p in tags if vid in known])
        conn.executemany("INSERT OR REPLACE INTO heads(name, id) VALUES(?, ?)",
                         [(m, vid) for m, vid in heads.items() if vid in known])
        for vid, note in notes:
            if isinstance(note.get("metrics"), dict):
                Index.set_metrics(conn, vid, _float_metrics(note["metrics"]))


def recover_after_crash(repo: Repo, dead_holder: str) -> None:
    """Repair what a lock holder killed mid-operation left (the caller now holds the lock).

    Index its renamed-but-unindexed snapshots and finish their ref updates, bring the index's refs
    and metrics in line with the ref and note files, and record the recovery in the audit log,
    naming any version the dead process indexed without recording it.
    """
    indexed = index_missing_snapshots(repo, complete=True)
    sync_refs_and_notes(repo)
    recorded = repo.audit.check().ids
    unrecorded = [vid for vid in repo.index.version_ids() if vid not in recorded and vid not in indexed]
    repo.audit.append(author(), "recover", None, sorted(set(indexed) | set(unrecorded)),
                      {"dead_holder": dead_holder, "indexed": indexed, "unrecorded": unrecorded})


def _float_metrics(raw: dict) -> dict[str, float]:
    result = {}
    for key, value in raw.items():
        try:
            result[str(key)] = float(value)
        except (TypeError, ValueError):
            continue
    return result

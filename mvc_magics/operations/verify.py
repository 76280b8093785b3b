"""Verify: re-hash every tensor and check every file, chain and signature against the version ids."""

from __future__ import annotations

from ..core.hashing import version_id
from ..core.names import is_valid_name
from ..core.reports import Problem, VerifyReport
from ..errors import IntegrityError, MVCError, ResourceLimitError
from ..storage.local.index_check import index_differences
from ..storage.local.signatures import check_signature, signer_from_env
from ..storage.local.store import Store
from ..storage.snapshots.snapshot import SnapshotContent, TensorReader, check_file_checksum, read_content


def verify_store(store: Store) -> VerifyReport:
    """Check every snapshot file and tensor; a damaged tensor is reported for every version using it.

    Also checks each file's checksum (any flipped byte), that structure and manifest still hash to
    the version id, the index file and every index row against the files, the audit chain (and
    that every version is recorded in it) and, when a signing key is configured, every signature.
    """
    report = VerifyReport()
    contents: dict[str, SnapshotContent] = {}
    file_damaged: set[str] = set()
    for vid, path in store.layout.snapshot_files():
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
        if not is_valid_name(content.meta.get("name")):
            report.problems.append(Problem(vid, None, f"invalid model name {str(content.meta.get('name'))[:40]!r}"))
        contents[vid] = content
    for problem in store.index.integrity_problems()[:5]:
        report.problems.append(Problem("index", None, f"{problem} (run reindex)"))
    try:
        indexed = set(store.index.version_ids())
    except IntegrityError as exc:  # the files are still checked; reindex rebuilds the index from them
        report.problems.append(Problem("index", None, str(exc)))
        indexed = set(contents)
    for vid in sorted(indexed - set(contents) - report.damaged_versions):
        report.problems.append(Problem(vid, None, "indexed but its snapshot file is missing"))
    try:  # the index is a cache: every row must say what the files say (damage reported above aside)
        for subject, difference in index_differences(store, {p.version for p in report.problems}):
            report.problems.append(Problem(subject, None, f"{difference} (run reindex)"))
    except IntegrityError as exc:
        report.problems.append(Problem("index", None, str(exc)))
    unindexed = set(contents) - indexed
    if unindexed:
        report.notes.append(f"{len(unindexed)} snapshot(s) not in the index (run reindex)")
    damaged: dict[str, str] = {}  # tensor hash -> what is wrong with it
    checked: set[str] = set()
    with TensorReader(store.layout.snapshot_path) as reader:
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
                    except ResourceLimitError as exc:  # too large to read here: not damage, but not checked
                        report.notes.append(str(exc).replace("refused before reading", "not checked"))
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
    _verify_audit(store, report, sorted(indexed | set(contents)))
    _verify_signatures(store, report, sorted(indexed | set(contents)))
    return report


def _verify_audit(store: Store, report: VerifyReport, versions: list[str]) -> None:
    check = store.audit.check()
    report.problems.extend(Problem("audit.log", None, text) for text in check.problems)
    report.notes.extend(check.notes)
    unrecorded = [vid for vid in versions if vid not in check.ids]
    for vid in unrecorded:
        report.problems.append(Problem(vid, None, "no audit entry records this version (audit log edited or "
                                                  "truncated)"))


def _verify_signatures(store: Store, report: VerifyReport, versions: list[str]) -> None:
    try:
        signer = signer_from_env()
    except MVCError as exc:
        report.problems.append(Problem("signing", None, str(exc)))
        return
    unchecked = 0
    for vid in versions:
        status = check_signature(store.layout.signatures, signer, vid)
        if status.state == "bad" or (status.state == "unsigned" and signer is not None):
            report.problems.append(Problem(vid, None, f"signature: {status.detail}"))
        unchecked += status.state == "unchecked"
    if unchecked:
        report.notes.append(f"{unchecked} signed version(s) not checked: set MVC_SIGNING_KEY or "
                            "MVC_SIGNING_KEY_FILE to check them")



"""Removing versions and reclaiming the space of tensors no remaining version uses.

A version's snapshot file may hold tensor bytes that later versions use (their manifest entries
name it in ``object``), so removal is two steps:

* :func:`remove_version` writes a tombstone ``removed/<ab>/<id>`` and drops the version from the
  index, its tags and HEADs. The file stays: other versions may read tensors from it.
* :func:`collect_garbage` deletes the files of removed versions no remaining version uses, and
  rewrites the others as *retired* files holding only the tensors still used (a new immutable file
  written under a temporary name and renamed over the old one, so readers never see a half file).

See docs/FORMAT.md ("Removed versions and gc").
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import h5py

from .errors import IntegrityError, ProtectedRefError
from .metadata import author
from .storage.atomic import write_atomically
from .storage.snapshot import FORMAT_NAME, FORMAT_VERSION
from .tables import format_bytes

if TYPE_CHECKING:
    from .repo import Repo
    from .version import Version

RETIRED_ATTR = "mvc_retired"


class GcReport(int):
    """Bytes freed by :func:`collect_garbage` (an ``int``), with what was deleted and rewritten."""

    files_deleted: int
    files_rewritten: int
    tensors_dropped: int
    tensors_kept: int

    def __new__(cls, bytes_freed: int = 0, files_deleted: int = 0, files_rewritten: int = 0,
                tensors_dropped: int = 0, tensors_kept: int = 0) -> GcReport:
        report = super().__new__(cls, bytes_freed)
        report.files_deleted, report.files_rewritten = files_deleted, files_rewritten
        report.tensors_dropped, report.tensors_kept = tensors_dropped, tensors_kept
        return report

    @property
    def bytes_freed(self) -> int:
        return int(self)

    def __str__(self) -> str:
        return (f"gc: freed {format_bytes(self.bytes_freed)} ({self.files_deleted} file(s) deleted, "
                f"{self.files_rewritten} rewritten; {self.tensors_dropped} tensor(s) dropped, "
                f"{self.tensors_kept} still used by other versions kept)")

    __repr__ = __str__

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        printer.text(str(self))


def is_retired(path: Path) -> bool:
    """True when ``path`` is a retired file (tensors of a removed version still in use)."""
    with h5py.File(path, "r") as f:
        return bool(f.attrs.get(RETIRED_ATTR, False))


def held_hashes(path: Path) -> set[str]:
    """The tensor hashes a snapshot or retired file holds bytes for."""
    with h5py.File(path, "r") as f:
        group = f.get("tensors")
        return set(group.keys()) if isinstance(group, h5py.Group) else set()


def write_retired(final: Path, version_id: str, source: Path, keep: set[str], tmp_folder: Path) -> None:
    """Atomically replace ``final`` by a retired file holding only the tensors ``keep`` from ``source``."""

    def write(tmp: Path) -> None:
        with h5py.File(source, "r") as src, h5py.File(tmp, "w", libver=("earliest", "v110")) as dst:
            dst.attrs["mvc_format"] = FORMAT_NAME
            dst.attrs["mvc_format_version"] = FORMAT_VERSION
            dst.attrs["version_id"] = version_id
            dst.attrs[RETIRED_ATTR] = True
            tensors = dst.create_group("tensors")
            for digest in sorted(keep):
                link = src["tensors"].get(digest, getlink=True)
                if not isinstance(link, h5py.HardLink):
                    raise IntegrityError(f"retired file {version_id[:12]}: tensor {digest[:12]} missing or a link")
                src.copy(src["tensors"][digest], tensors, name=digest)

    write_atomically(final, write, tmp_folder)


def remove_version(repo: Repo, ref: str, name: str | None = None, force: bool = False) -> Version:
    """Remove the version ``ref`` names (see :meth:`Repo.remove`)."""
    version = repo.resolve(ref, name=name)
    vid = version.id
    with repo.layout.locked():
        tags = repo.index.query("SELECT name, tag, protected FROM tags WHERE id = ?", (vid,))
        protected = sorted(tag for _, tag, flag in tags if flag)
        if protected and not force:
            raise ProtectedRefError(
                f"{version.short_id} carries protected tag(s) {', '.join(protected)}; use --force to remove it"
            )
        live_parents = [p for p in version.parents if repo._find(p)]
        new_head = live_parents[0] if live_parents else None
        heads = [row[0] for row in repo.index.query("SELECT name FROM heads WHERE id = ?", (vid,))]
        repo.layout.write_tombstone(vid, {
            "id": vid, "name": version.name, "removed": datetime.now(timezone.utc).isoformat(),
            "by": author(), "tags": sorted(tag for _, tag, _ in tags),
        })
        for model, tag, _ in tags:
            repo.layout.delete_tag(model, tag)
        for model in heads:
            if new_head:
                repo.layout.write_head(model, new_head)
            else:
                repo.layout.delete_head(model)
        with repo.index.transaction() as conn:
            for table in ("versions", "metrics", "tags"):
                conn.execute(f"DELETE FROM {table} WHERE id = ?", (vid,))
            conn.execute("DELETE FROM heads WHERE id = ?", (vid,))
            if new_head:
                conn.executemany("INSERT OR REPLACE INTO heads(name, id) VALUES(?, ?)",
                                 [(model, new_head) for model in heads])
        repo.audit.append(author(), "remove", version.name, [vid], {
            "tags": sorted(tag for _, tag, _ in tags), "protected": protected, "force": force,
            "heads_moved_to": new_head, "heads": heads,
        })
    return version


def collect_garbage(repo: Repo) -> GcReport:
    """Delete or shrink the files of removed versions; never drop a tensor a version still uses."""
    counts = {"bytes_freed": 0, "files_deleted": 0, "files_rewritten": 0, "tensors_dropped": 0,
              "tensors_kept": 0}
    with repo.layout.locked():
        used: dict[str, set[str]] = {}  # object id -> hashes live versions read from it
        manifests = [json.loads(row[0]) for row in repo.index.query("SELECT manifest FROM versions")]
        for manifest in manifests:
            for entry in manifest:
                used.setdefault(entry["object"], set()).add(entry["hash"])
        for rid in repo.layout.removed_ids():
            path = repo.layout.snapshot_path(rid)
            if not path.exists():
                continue
            before = path.stat().st_size
            needed = used.get(rid, set())
            held = held_hashes(path)
            if not needed:
                path.unlink()
                counts["files_deleted"] += 1
                counts["tensors_dropped"] += len(held)
                counts["bytes_freed"] += before
                continue
            missing = needed - held
            if missing:
                raise IntegrityError(f"removed version {rid[:12]} lacks {len(missing)} tensor(s) other versions "
                                     "use; run verify (nothing was deleted from it)")
            if held == needed and is_retired(path):
                counts["tensors_kept"] += len(needed)
                continue
            write_retired(path, rid, path, needed, repo.layout.tmp)
            counts["files_rewritten"] += 1
            counts["tensors_dropped"] += len(held - needed)
            counts["tensors_kept"] += len(needed)
            counts["bytes_freed"] += max(0, before - path.stat().st_size)
        with repo.index.transaction() as conn:
            # Tensor locations must only name files that still hold the bytes: rebuild from live manifests.
            conn.execute("DELETE FROM tensors")
            conn.executemany("INSERT OR IGNORE INTO tensors(hash, object, nbytes) VALUES(?, ?, ?)",
                             [(e["hash"], e["object"], int(e["nbytes"])) for m in manifests for e in m])
        repo.audit.append(author(), "gc", None, [], dict(counts))
    return GcReport(**counts)

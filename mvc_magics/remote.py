"""Push, pull and clone through remotes on any fsspec URL (see docs/remotes.md).

Objects (snapshot files) are immutable and named by content id, so transfers skip what the other
side already holds and an interrupted transfer is completed by running it again. Objects go first,
each after the objects it depends on; notes next; tags last, with conditional writes, so a tag on
the remote never names a version whose bytes are not all there. Pull verifies every tensor hash of
a version before renaming its file into the local store and indexing it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import (
    IntegrityError,
    InvalidNameError,
    InvalidRemoteError,
    MVCError,
    RefError,
    RemoteConflictError,
    RemoteError,
)
from .metadata import author
from .names import validate_name
from .removal import held_hashes, is_retired, write_retired
from .storage.atomic import atomic_write_bytes, temporary_path
from .storage.remote_store import RemoteStore, check_url
from .storage.snapshot import SnapshotContent
from .tables import format_bytes

if TYPE_CHECKING:
    from .repo import Repo

# Transfers smaller than this show no progress bar.
PROGRESS_MIN_BYTES = 1 << 20


@dataclass
class TransferReport:
    """What a push or pull did."""

    direction: str
    remote: str
    versions: list[str] = field(default_factory=list)
    objects_sent: int = 0
    objects_skipped: int = 0
    bytes: int = 0
    tags: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        verb = "pushed to" if self.direction == "push" else "pulled from"
        tags = f", tags {', '.join(self.tags)}" if self.tags else ""
        return (f"{verb} {self.remote}: {len(self.versions)} new version(s), {self.objects_sent} object(s) "
                f"({format_bytes(self.bytes)}) transferred, {self.objects_skipped} already there{tags}")

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        printer.text(str(self))


# -- remote configuration --------------------------------------------------------------------

def load_remotes(repo: Repo) -> dict[str, str]:
    """Configured remotes, name -> URL."""
    path = repo.layout.remotes_path
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {str(k): str(v["url"]) for k, v in data.get("remotes", {}).items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RemoteError(f"cannot read {path}: {exc}") from exc


def save_remotes(repo: Repo, remotes: dict[str, str]) -> None:
    payload = {"remotes": {name: {"url": url} for name, url in sorted(remotes.items())}}
    atomic_write_bytes(repo.layout.remotes_path, (json.dumps(payload, indent=2) + "\n").encode(), repo.layout.tmp)


def add_remote(repo: Repo, name: str, url: str) -> str:
    name = validate_name(name, "remote name")
    url = check_url(url)
    with repo.layout.locked():
        remotes = load_remotes(repo)
        if name in remotes and remotes[name] != url:
            raise InvalidRemoteError(f"remote {name!r} already exists ({remotes[name]}); remove it first")
        remotes[name] = url
        save_remotes(repo, remotes)
        repo.audit.append(author(), "remote-add", None, [], {"remote": name, "url": url})
    return url


def remove_remote(repo: Repo, name: str) -> None:
    with repo.layout.locked():
        remotes = load_remotes(repo)
        if name not in remotes:
            raise InvalidRemoteError(f"no remote {name!r}" + (f" (remotes: {', '.join(remotes)})" if remotes else ""))
        del remotes[name]
        save_remotes(repo, remotes)
        repo.audit.append(author(), "remote-remove", None, [], {"remote": name})


def remote_url(repo: Repo, remote: str | None) -> tuple[str, str]:
    """(display name, URL) of a configured remote, the only/``origin`` one when None, or a URL."""
    remotes = load_remotes(repo)
    if remote is None:
        if "origin" in remotes or len(remotes) == 1:
            remote = "origin" if "origin" in remotes else next(iter(remotes))
        else:
            raise InvalidRemoteError("name the remote" + (f" ({', '.join(remotes)})" if remotes
                                                          else ": none configured (%mvc_remote add NAME URL)"))
    if remote in remotes:
        return remote, remotes[remote]
    if "://" in remote or remote.startswith(("/", ".", "~")):
        url = check_url(remote)
        return url, url
    raise InvalidRemoteError(f"no remote {remote!r}" + (f" (remotes: {', '.join(remotes)})" if remotes else ""))


def split_remote_and_refs(repo: Repo, words: list[str]) -> tuple[str | None, list[str] | None]:
    """``[REMOTE] [REF ...]`` from a command line: the first word is the remote when it names one
    (or is a URL), else every word is a ref and the default remote is meant."""
    if not words:
        return None, None
    first = words[0]
    if first in load_remotes(repo) or "://" in first or first.startswith(("/", ".", "~")):
        return first, words[1:] or None
    return None, words


# -- helpers ---------------------------------------------------------------------------------

def progress_bar(total: int, desc: str, enabled: bool | None):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress is a nicety: transfers work without tqdm
        return contextlib.nullcontext(_NoBar())
    show = total >= PROGRESS_MIN_BYTES if enabled is None else enabled
    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not show, leave=False)


class _NoBar:
    total = 0

    def update(self, n: int) -> None:
        pass


def dependencies(content: SnapshotContent) -> list[str]:
    """Objects a version needs: the files holding its tensors, then its parents."""
    deps = [e.object for e in content.manifest if e.object != content.version_id]
    return list(dict.fromkeys(deps + [str(p) for p in content.meta.get("parents", [])]))


def topological(start: Iterable[str], deps_of) -> list[str]:
    """Every object reachable from ``start``, each after the objects it depends on."""
    order: list[str] = []
    seen: set[str] = set()
    for root in start:
        stack = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
                continue
            if node in seen:
                continue
            seen.add(node)
            stack.append((node, True))
            stack.extend((d, False) for d in reversed(deps_of(node)) if d not in seen)
    return order


def _resolve_local(repo: Repo, ref: str) -> str:
    """A ref for push: any ref of a one-model store, an id prefix, or a tag only one model has."""
    from . import resolver

    try:
        return repo.resolve(ref).id
    except RefError as exc:
        try:
            return resolver.find_tag(repo.index, ref, None)[1]
        except (RefError, InvalidNameError):
            raise exc from None


_BACKEND_MODULES = ("botocore", "aiobotocore", "s3fs", "gcsfs", "google", "adlfs", "azure", "aiohttp", "fsspec")


@contextlib.contextmanager
def remote_errors(url: str) -> Iterator[None]:
    """Backend failures (missing bucket, denied access, no credentials, network) as one-line RemoteError."""
    try:
        yield
    except MVCError:
        raise
    except Exception as exc:  # only OS errors and the storage SDKs' own errors are translated
        if not isinstance(exc, OSError) and not type(exc).__module__.startswith(_BACKEND_MODULES):
            raise
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RemoteError(f"remote {url}: {type(exc).__name__}: {detail[:200]}") from exc


# -- push ------------------------------------------------------------------------------------

def push(repo: Repo, remote: str | None = None, refs: Iterable[str] | None = None, force: bool = False,
         progress: bool | None = None) -> TransferReport:
    """Send versions (all, or ``refs`` with their ancestors) and their tags to a remote."""
    label, url = remote_url(repo, remote)
    with remote_errors(url):
        return _push(repo, label, url, refs, force, progress)


def _push(repo: Repo, label: str, url: str, refs, force: bool, progress: bool | None) -> TransferReport:
    store = RemoteStore(url)
    store.check_format(create=True)
    if refs is None:
        start = [row[0] for row in repo.index.query("SELECT id FROM versions ORDER BY seq")]
    else:
        start = [_resolve_local(repo, ref) for ref in refs]
    live: dict[str, bool] = {}  # object id -> is a version here (else only a holder of tensors)

    def deps_of(oid: str) -> list[str]:
        # From the index: no file is opened. A removed version's file travels only as a holder of tensors.
        rows = repo.index.query("SELECT manifest, meta FROM versions WHERE id = ?", (oid,))
        live[oid] = bool(rows)
        if not rows:
            return []
        tensor_files = [e["object"] for e in json.loads(rows[0][0]) if e["object"] != oid]
        parents = [str(p) for p in json.loads(rows[0][1]).get("parents", []) if repo._find(str(p))]
        return list(dict.fromkeys(tensor_files + parents))

    order = topological(start, deps_of)
    store.clean_stale_uploads()
    for oid in order:
        if not repo.layout.snapshot_path(oid).exists():
            raise IntegrityError(f"object {oid[:12]} is missing from the local store (run verify)")
    present, present_retired = store.objects(), store.objects(retired=True)

    def as_retired(oid: str) -> bool:
        return not live[oid]

    # A full snapshot on the remote also serves as the holder of its tensors.
    report = TransferReport("push", label)
    todo = [oid for oid in order
            if oid not in present and not (as_retired(oid) and oid in present_retired)]
    report.objects_skipped = len(order) - len(todo)
    total = sum(repo.layout.snapshot_path(oid).stat().st_size for oid in todo)
    with progress_bar(total, f"push {label}", progress) as bar:
        for oid in todo:
            path = repo.layout.snapshot_path(oid)
            size = path.stat().st_size
            with _as_uploaded(repo, oid, path) as upload:
                store.put_object(upload, oid, retired=as_retired(oid))
            bar.update(size)
            report.objects_sent += 1
            report.bytes += size
            if live[oid]:
                report.versions.append(oid)
    remote_notes = store.notes()
    for oid in order:
        folder = repo.layout.notes / oid[:2] / oid
        for note in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            if note.name not in remote_notes.get(oid, {}):
                store.put_note(oid, note.name, note.read_bytes())
    pushed = set(order)
    remote_tags = store.tags()
    conflicts = []
    for model, tag, vid, protected in repo.index.query("SELECT name, tag, id, protected FROM tags ORDER BY name, tag"):
        if vid not in pushed:
            continue
        current = remote_tags.get((model, tag))
        if current is not None and current[0] == vid:
            continue
        if current is not None and not force:
            conflicts.append((model, tag, vid, current[0]))
            continue
        if store.write_tag(model, tag, vid, bool(protected), expected=current[0] if current else None):
            report.tags.append(tag)
        else:
            latest = store.tags().get((model, tag), ("?", False))[0]
            conflicts.append((model, tag, vid, latest))
    with repo.layout.locked():
        repo.audit.append(author(), "push", None, report.versions, {
            "remote": label, "url": url, "objects": report.objects_sent, "bytes": report.bytes,
            "tags": report.tags, "conflicts": [f"{m}/{t}" for m, t, _, _ in conflicts],
        })
    if conflicts:
        raise _conflict_error("push", conflicts)
    return report


@contextlib.contextmanager
def _as_uploaded(repo: Repo, oid: str, path: Path) -> Iterator[Path]:
    """The file to upload for ``oid``: a removed version not yet gc'd goes as a retired copy, so it never
    shows as a version on the remote."""
    if not repo.layout.is_removed(oid) or is_retired(path):
        yield path
        return
    tmp = temporary_path(repo.layout.tmp, ".h5")
    try:
        write_retired(tmp, oid, path, held_hashes(path), repo.layout.tmp)
        yield tmp
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _conflict_error(direction: str, conflicts: list[tuple[str, str, str, str]]) -> RemoteConflictError:
    first = ", ".join(f"{t} ({m}: here {a[:8]}, remote {b[:8]})" for m, t, a, b in conflicts[:3])
    more = f" and {len(conflicts) - 3} more" if len(conflicts) > 3 else ""
    hint = "pull and decide, or use --force to overwrite" if direction == "push" else "use --force to take the remote's"
    return RemoteConflictError(f"tag conflict, not overwritten: {first}{more}; everything else was "
                               f"{'pushed' if direction == 'push' else 'pulled'} ({hint})", conflicts)


# -- pull ------------------------------------------------------------------------------------

def _resolve_remote_ref(ref: str, objects: dict[str, int], tags: dict) -> str:
    matches = sorted({vid for (_, tag), (vid, _) in tags.items() if tag == ref})
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise InvalidRemoteError(f"tag {ref!r} is on several models on the remote; pull by id prefix")
    lowered = ref.lower()
    if len(lowered) >= 4 and all(c in "0123456789abcdef" for c in lowered):
        ids = [vid for vid in objects if vid.startswith(lowered)]
        if len(ids) == 1:
            return ids[0]
        if len(ids) > 1:
            raise InvalidRemoteError(f"{ref!r} matches {len(ids)} versions on the remote; give more digits")
    tag_names = sorted({t for _, t in tags})
    raise InvalidRemoteError(f"no tag or version {ref!r} on the remote" +
                             (f" (tags: {', '.join(tag_names[:10])})" if tag_names else ""))


def pull(repo: Repo, remote: str | None = None, refs: Iterable[str] | None = None, force: bool = False,
         progress: bool | None = None) -> TransferReport:
    """Fetch versions (all, or ``refs`` with their ancestors) and tags from a remote, verified."""
    label, url = remote_url(repo, remote)
    with remote_errors(url):
        return _pull(repo, label, url, refs, force, progress)


def _pull(repo: Repo, label: str, url: str, refs, force: bool, progress: bool | None) -> TransferReport:
    from .pulling import import_staged, pull_notes, pull_tags, set_missing_heads, stage

    store = RemoteStore(url)
    if not store.check_format():
        raise RemoteError(f"no mvc remote at {url} (push to it first)")
    objects = store.objects()
    remote_tags = store.tags()
    if refs is None:
        start = sorted(objects)
    else:
        start = [_resolve_remote_ref(ref, objects, remote_tags) for ref in refs]
    report = TransferReport("pull", label)
    staged: dict[str, Path] = {}
    try:
        contents = stage(repo, store, start, objects, staged, report, progress)
        with repo.layout.locked():
            imported = import_staged(repo, contents, staged)
            report.versions = imported
            pull_notes(repo, store, [vid for vid in contents if repo._find(vid)])
            wanted = set(contents) | set(start) if refs is not None else None
            conflicts = pull_tags(repo, remote_tags, wanted, force, report)
            set_missing_heads(repo, imported)
            repo.audit.append(author(), "pull", None, imported, {
                "remote": label, "url": url, "objects": report.objects_sent, "bytes": report.bytes,
                "tags": report.tags, "conflicts": [f"{m}/{t}" for m, t, _, _ in conflicts],
            })
    finally:
        for path in staged.values():
            with contextlib.suppress(OSError):
                path.unlink()
    if conflicts:
        raise _conflict_error("pull", conflicts)
    return report

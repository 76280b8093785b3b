"""Remotes: their configuration, and what push and pull share (see docs/remotes.md).

Objects (snapshot files) are immutable and named by content id, so transfers skip what the other
side already holds and an interrupted transfer is completed by running it again. Objects go first,
each after the objects it depends on; notes next; tags last, with conditional writes, so a tag on
the remote never names a version whose bytes are not all there.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..core.names import validate_name
from ..core.progress import interactive
from ..errors import InvalidRemoteError, MVCError, RemoteConflictError, RemoteError
from ..storage.local.store import Store
from ..storage.remote.failures import BACKEND_MODULES, unreachable_error
from ..storage.remote.store import check_url
from ..storage.snapshots.snapshot import SnapshotContent

# Objects transferred at once: objects become visible only through the log segment written after all
# of them, so their order does not matter and several uploads/downloads keep the link busy.
TRANSFER_THREADS = 4
# Transfers smaller than this show no progress bar.
PROGRESS_MIN_BYTES = 1 << 20


# -- remote configuration --------------------------------------------------------------------

def load_remotes(store: Store) -> dict[str, str]:
    """Configured remotes, name -> URL."""
    return store.layout.read_remotes()


def add_remote(store: Store, name: str, url: str) -> str:
    """Configure remote ``name`` at ``url`` (see :meth:`mvc_magics.Repo.add_remote`)."""
    name = validate_name(name, "remote name")
    url = check_url(url)
    with store.locked():
        remotes = load_remotes(store)
        if name in remotes and remotes[name] != url:
            raise InvalidRemoteError(f"remote {name!r} already exists ({remotes[name]}); remove it first")
        remotes[name] = url
        store.writes.set_remotes(remotes, "remote-add", {"remote": name, "url": url})
    return url


def remove_remote(store: Store, name: str) -> None:
    """Forget remote ``name`` and what this store read of it (nothing on the remote is touched)."""
    with store.locked():
        remotes = load_remotes(store)
        if name not in remotes:
            raise InvalidRemoteError(f"no remote {name!r}" + (f" (remotes: {', '.join(remotes)})" if remotes else ""))
        url = remotes.pop(name)
        store.writes.set_remotes(remotes, "remote-remove", {"remote": name})
        # What this store read of the remote goes too: adding it again accepts its history as it is now.
        store.layout.files.unlink(state_cache(store, url))


def remote_url(store: Store, remote: str | None) -> tuple[str, str]:
    """(display name, URL) of a configured remote, the only/``origin`` one when None, or a URL."""
    remotes = load_remotes(store)
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


def in_parallel(items: Iterable, func) -> Iterator[tuple[object, object]]:
    """``(item, func(item))`` as each finishes, TRANSFER_THREADS at a time; the first error stops the rest."""
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    items = list(items)
    if len(items) <= 1:
        yield from ((item, func(item)) for item in items)
        return
    pool = ThreadPoolExecutor(TRANSFER_THREADS, thread_name_prefix="mvc-transfer")
    try:
        pending = {pool.submit(func, item): item for item in items}
        while pending:
            done, _ = wait(pending, return_when=FIRST_EXCEPTION)
            for future in done:
                item = pending.pop(future)
                yield item, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def state_cache(store: Store, url: str) -> Path:
    """Where this store keeps what it last read of the remote at ``url`` (a cache: deleting it is safe)."""
    return store.layout.root / "remote-state" / f"{hashlib.sha256(url.encode()).hexdigest()[:24]}.json"


def progress_bar(total: int, desc: str, enabled: bool | None):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress is a nicety: transfers work without tqdm
        return contextlib.nullcontext(_NoBar())
    show = total >= PROGRESS_MIN_BYTES and interactive() if enabled is None else enabled
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


@contextlib.contextmanager
def remote_errors(url: str) -> Iterator[None]:
    """Backend failures (missing bucket, denied access, no credentials, network) as one-line RemoteError."""
    try:
        yield
    except MVCError:
        raise
    except Exception as exc:  # only OS errors and the storage SDKs' own errors are translated
        unreachable = unreachable_error(url, exc)
        if unreachable is not None:  # the same line as a RemoteStore call's
            raise unreachable from exc
        if not isinstance(exc, OSError) and not type(exc).__module__.startswith(BACKEND_MODULES):
            raise
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RemoteError(f"remote {url}: {type(exc).__name__}: {detail[:200]}") from exc


def conflict_error(direction: str, conflicts: list[tuple[str, str, str, str]]) -> RemoteConflictError:
    first = ", ".join(f"{t} ({m}: here {a[:8]}, remote {b[:8]})" for m, t, a, b in conflicts[:3])
    more = f" and {len(conflicts) - 3} more" if len(conflicts) > 3 else ""
    hint = "pull and decide, or use --force to overwrite" if direction == "push" else "use --force to take the remote's"
    return RemoteConflictError(f"tag conflict, not overwritten: {first}{more}; everything else was "
                               f"{'pushed' if direction == 'push' else 'pulled'} ({hint})", conflicts)


def resolve_remote_ref(ref: str, objects: dict[str, int], tags: dict) -> str:
    """The version id a tag or id prefix names on a remote (from its listed objects and tags)."""
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

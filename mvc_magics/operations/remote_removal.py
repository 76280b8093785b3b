"""Removing versions on a remote: a ``removed`` segment appended to its log (see docs/remotes.md).

The object file stays on the remote: other versions may read tensors from it (shared tensors, delta
bases), and only the log decides what a remote *holds as a version*. After the removal, pulls and clones
no longer bring the version (its file is fetched only as the holder of tensors others need), and pushes
do not bring it back. A store that already has the version keeps its local copy.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import ProtectedRefError, RemoteError
from ..storage.local.store import Store
from ..storage.remote.log import RemoteLog, RemoteState
from ..storage.remote.store import RemoteStore
from ..storage.remote.trust import is_protected
from .remotes import remote_errors, remote_url, resolve_remote_ref, state_cache


def remove_remote_versions(store: Store, remote: str | None, refs: Iterable[str], force: bool = False) -> list[str]:
    """Remove the versions ``refs`` (tags or id prefixes on the remote) from ``remote``; return their ids.

    A tag on the remote naming one of them blocks the removal unless ``force`` (the tags are then
    deleted in the same segment); a protected tag (``production*`` or flagged) blocks it always.
    """
    label, url = remote_url(store, remote)
    with remote_errors(url):
        target = RemoteStore(url)
        if not target.check_format():
            raise RemoteError(f"no mvc remote at {url}")
        target.require_exclusive_create()
        log = RemoteLog(target, state_cache(store, url))
        state = log.read()
        ids = list(dict.fromkeys(resolve_remote_ref(ref, state.objects, state.tags) for ref in refs))
        deleted_tags: list[str] = []

        def segment(current: RemoteState) -> dict | None:
            # Checked again against every newer state: a tag put on the version meanwhile blocks too.
            deleted_tags.clear()
            todo = [vid for vid in ids if vid in current.objects]
            entries = []
            for (model, tag), (vid, protected) in sorted(current.tags.items()):
                if vid not in todo:
                    continue
                if is_protected(tag, protected):
                    raise ProtectedRefError(f"protected tag {tag} ({model}) on remote {label} names {vid[:12]}: "
                                            "move it first (release role), then remove")
                if not force:
                    raise ProtectedRefError(f"tag {tag} ({model}) on remote {label} names {vid[:12]}: "
                                            "delete or move it first, or use --force to delete it with the version")
                entries.append({"model": model, "tag": tag, "id": None, "protected": False,
                                "prev": current.heads.get((model, tag))})
                deleted_tags.append(f"{model}/{tag}")
            if not todo:
                return None
            return {"removed": todo, **({"tags": entries} if entries else {})}

        log.append(segment, state)
    store.writes.record("remote-remove", None, ids, {"remote": label, "url": url, "tags_deleted": deleted_tags})
    return ids

"""Tags: names on versions (``baseline``, ``production``); protected tags need ``force`` to move."""

from __future__ import annotations

from ..core.names import validate_name, validate_tag
from ..core.version import Version
from ..errors import ProtectedRefError, TagExistsError
from ..storage.local.store import Store
from . import lookup, versions


def check_tag_free(store: Store, name: str, tag: str, vid: str, force: bool) -> None:
    """Raise unless ``tag`` of ``name`` is free, already on ``vid``, or may be moved (``force``)."""
    current = store.tag(name, tag)
    if current is None or current[0] == vid or force:
        return
    where, protected = current[0][:8], current[1]
    if protected:
        raise ProtectedRefError(f"tag {tag!r} is protected (on {where}); use --force to move it")
    raise TagExistsError(f"tag {tag!r} is already on {where}; use --force to move it")


def tag(store: Store, ref: str, tag: str, name: str | None = None, force: bool = False,
        protect: bool | None = None) -> Version:
    """Put ``tag`` on the version ``ref`` names; moving an existing tag needs ``force``."""
    tag = validate_tag(tag, versions.tag_names(store))
    version = versions.resolve(store, ref, name=name)
    with store.locked():
        check_tag_free(store, version.name, tag, version.id, force)
        current = store.tag(version.name, tag)
        previous = current[0] if current else None
        protected = current[1] if current and protect is None else bool(protect)
        store.writes.set_tag(version.name, tag, version.id, protected, detail={
            "tag": tag, "previous": previous, "force": force, "protected": protected})
    return versions.get(store, version.id, name=version.name)


def untag(store: Store, tag: str, name: str | None = None, force: bool = False) -> None:
    """Remove ``tag`` (protected tags need ``force``)."""
    tag = validate_name(tag, "tag")
    model, vid, protected = lookup.find_tag(store.index, tag, name)
    if protected and not force:
        raise ProtectedRefError(f"tag {tag!r} is protected; use --force to delete it")
    store.writes.delete_tag(model, tag, vid)


def tags_deleted_here(store: Store) -> dict[tuple[str, str], str]:
    """(model, tag) -> the version id of every tag deleted in this store and not set again since.

    Read from the audit log (the record of every ref change): a pull does not bring such a tag
    back while the remote still has it on the version it was deleted from.
    """
    deleted: dict[tuple[str, str], str] = {}
    for entry in store.audit.entries():
        detail = entry.detail if isinstance(entry.detail, dict) else {}
        if entry.op == "untag" and entry.ids and isinstance(detail.get("tag"), str):
            deleted[(str(entry.name), detail["tag"])] = entry.ids[0]
        elif entry.op == "tag" and isinstance(detail.get("tag"), str):
            deleted.pop((str(entry.name), detail["tag"]), None)
        elif entry.op in ("commit", "commit-existing") and isinstance(detail.get("tags"), list):
            for tag in detail["tags"]:
                deleted.pop((str(entry.name), str(tag)), None)
    return deleted

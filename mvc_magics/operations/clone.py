"""Clone: a new store with remote ``origin`` and everything pulled from it, keeping what arrived."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import MVCError, RefusedObjectsError, StoreError
from ..storage.local.store import Store
from .pull import pull
from .remotes import add_remote


def clone(url: str, path: Path, progress: bool | None = None) -> Store:
    """A new store at ``path`` with remote ``origin`` = ``url`` and everything pulled from it.

    ``path`` must not exist or be an empty folder. Remote objects that are refused (missing,
    oversized, not a regular file, not a snapshot, damaged) cost only the versions that need them:
    the store is kept with every other version and :class:`RefusedObjectsError` (``.path``) names
    them. When no version arrived, ``path`` is removed again.
    """
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise StoreError(f"{path} already exists and is not empty; clone into a new folder")
    store = Store(path)
    try:
        add_remote(store, "origin", url)
        pull(store, "origin", progress=progress)
    except RefusedObjectsError as exc:  # what arrived is verified and kept
        kept = _has_versions(store)
        store.close()
        if kept:
            raise RefusedObjectsError(f"cloned into {path}: {exc}", exc.refused, exc.report, path) from None
        shutil.rmtree(path, ignore_errors=True)  # nothing arrived: nothing to keep
        raise
    except BaseException as exc:
        kept = isinstance(exc, MVCError) and _has_versions(store)  # e.g. an unsigned protected tag
        store.close()
        if not kept:
            shutil.rmtree(path, ignore_errors=True)
        raise
    return store


def _has_versions(store: Store) -> bool:
    try:
        return store.index.count() > 0
    except Exception:  # a broken index: nothing to keep
        return False

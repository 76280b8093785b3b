"""Commit: a live model's content becomes a version (or the version that already holds it).

The adapter reads the variables; hashing runs in worker threads while the new tensors are staged
into a temporary snapshot (:class:`~mvc_magics.storage.staging.StagedCommit`); once the version id
is known, the store publishes the version in its crash-safe order
(:meth:`~mvc_magics.storage.writes.StoreWrites.publish_version`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from ..adapters import Adapter, adapter_for
from ..adapters.base import known_hashes, remember_hashes
from ..core.hashing import HashesAhead, canonical_array, version_id
from ..core.manifest import storable_dtype_name
from ..core.metadata import author, base_library_versions, validate_metrics, validate_params
from ..core.names import validate_name, validate_tag
from ..core.provenance import complete_provenance
from ..core.version import CommitStats, Version
from ..errors import StoreError, UnsupportedModelError
from ..storage.faults import write_failure
from ..storage.staging import StagedCommit
from ..storage.store import Store
from . import versions
from .tags import check_tag_free


def commit(
    store: Store,
    model: Any,
    name: str,
    message: str | None = None,
    metrics: Mapping[str, float] | None = None,
    params: Mapping[str, object] | None = None,
    tags: Iterable[str] = (),
    provenance: Mapping[str, object] | None = None,
    parents: Iterable[str] | None = None,
    extra: Mapping[str, object] | None = None,
) -> Version:
    """Store ``model``'s content as a version of ``name`` (see :meth:`mvc_magics.Repo.commit`)."""
    name = validate_name(name, "model name")
    tags = [validate_tag(t, versions.tag_names(store)) for t in tags]
    adapter = adapter_for(model)
    check_same_framework(store, name, adapter.framework)
    explicit = validate_metrics(metrics)
    params = validate_params(params)
    state = adapter.get_state(model)
    if not state:
        raise UnsupportedModelError(f"{name!r} has no variables to version")
    all_metrics = {**validate_metrics(adapter.fit_metrics(model)), **explicit}
    arrays = {key: canonical_array(value) for key, value in state.items()}
    for key, array in arrays.items():  # refused before any write: what the store could not read back
        storable_dtype_name(array.dtype, key)
    # Hashing runs in worker threads from here on, overlapping the structure serialization
    # below and the writes of new tensors (see storage.staging); unchanged buffers are skipped.
    hashes = HashesAhead(arrays, known_hashes(adapter, model, arrays))
    try:
        structure = adapter.structure(model)
    except BaseException:
        hashes.cancel()
        raise
    with store.locked():
        if parents is None:
            head = store.head_id(name)
            parents = [head] if head and store.has_version(head) else []
        parents = list(parents)
        # New tensors are coded as deltas against the parents' (the first parent that has them).
        staged = store.writes.stage(parents)
        try:
            staged.stage(arrays, description=f"commit {name}", hashes=hashes)
            vid = version_id(structure, staged.entries())
            for tag in tags:
                check_tag_free(store, name, tag, vid, force=False)
            existing = store.has_version(vid)
        except BaseException as exc:
            staged.discard()
            if isinstance(exc, OSError | RuntimeError):  # HDF5 could not write the staged tensors
                raise StoreError(write_failure(exc, store.path)) from exc
            raise
        if existing:
            staged.discard()
            store.writes.attach(vid, name, all_metrics if metrics is None else explicit, tags, explicit)
            stats = CommitStats(False, 0, len(arrays), 0)
        else:
            stats = _publish(store, vid, name, adapter, staged, structure, model, tags, parents, {
                "message": message, "metrics": all_metrics, "params": params, "provenance": provenance,
                "extra": extra,
            })
    remember_hashes(adapter, model, arrays, staged.hashes)
    getattr(adapter, "mark_committed", lambda _model: None)(model)
    version = versions.get(store, vid, name=name)
    version.stats = stats
    return version


def check_same_framework(store: Store, name: str, framework: str) -> None:
    """Refuse a model of another framework in ``name``'s history: its versions could never be
    checked out into each other, merged or compared tensor by tensor."""
    latest = versions.log(store, name, limit=1)
    if latest and latest[0].framework and latest[0].framework != framework:
        raise UnsupportedModelError(
            f"{name!r} is a history of {latest[0].framework} models; a {framework} model cannot be committed "
            f"to it (commit it under another name)"
        )


def _publish(store: Store, vid: str, name: str, adapter: Adapter, staged: StagedCommit, structure: object,
             model: Any, tags: list[str], parents: list[str], given: dict) -> CommitStats:
    """The metadata of a new version, then the store publishes it."""
    # Bytes in this version's own path may belong to a retired file that the new file replaces.
    staged.claim_own(vid)
    manifest = staged.manifest(vid)
    extra_meta = adapter.extra_metadata(model)
    meta = {
        "name": name, "message": given["message"] or "", "parents": list(parents),
        "created": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        "author": author(), "metrics": given["metrics"], "params": given["params"], "framework": adapter.framework,
        "libraries": {**base_library_versions(), **adapter.library_versions()},
        "provenance": complete_provenance(given["provenance"], extra_meta),
        "extra": {**extra_meta, **(given["extra"] or {})},
        # The tags asked for, so crash recovery can finish a commit killed before its ref files.
        "tags": list(tags),
    }
    store.writes.publish_version(staged, vid, meta, structure, manifest)
    return CommitStats(True, staged.tensors_written, len(manifest) - staged.tensors_written, staged.bytes_written)

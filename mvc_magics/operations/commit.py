"""Commit: a live model's content becomes a version (or the version that already holds it).

The adapter reads the variables; hashing runs in worker threads while the new tensors are staged
into a temporary snapshot (:class:`~mvc_magics.storage.snapshots.staging.StagedCommit`); once the version id
is known, the store publishes the version in its crash-safe order
(:meth:`~mvc_magics.storage.local.writes.StoreWrites.publish_version`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, wait
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ..adapters import Adapter, adapter_for, adapter_named
from ..adapters.base import known_hashes, remember_hashes
from ..core.hashing import HashedArray, canonical_array, version_id
from ..core.manifest import ManifestEntry, storable_dtype_name
from ..core.meta_check import validate_message
from ..core.metadata import author, base_library_versions, validate_metrics, validate_params
from ..core.names import validate_name, validate_tag
from ..core.provenance import complete_provenance
from ..core.tables import format_number
from ..core.threads import thread_pool
from ..core.version import CommitStats, Version
from ..errors import StoreError, UnsupportedModelError
from ..storage.files.faults import write_failure
from ..storage.local.store import Store
from ..storage.snapshots.staging import StagedCommit, commit_hashes
from . import autopack, lookup, versions
from .git_state import GitStateAhead
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
    move_head: bool = True,
    attach: bool = True,
) -> Version:
    """Store ``model``'s content as a version of ``name`` (see :meth:`mvc_magics.Repo.commit`).

    ``move_head`` False leaves ``name``'s HEAD where it is (a merge without ``into``); ``attach``
    False records nothing on a version that already holds this content (a merge never changes its
    inputs: a result equal to one of them gets neither its score nor its tags).
    """
    adapter = adapter_for(model)
    name, message, tags, explicit = _checked_inputs(store, name, adapter, message, tags, metrics)
    params = validate_params(params)
    # git runs from the first write on (see fill): started first, its processes (7-12 ms of CPU
    # here) took a core from the first tensor's hash, and a 100 MB commit's disk started 4-6 ms later.
    git = GitStateAhead(provenance, store.path, start=False)
    state = adapter.get_state(model)
    if not state:
        raise UnsupportedModelError(f"{name!r} has no variables to version")
    fit = validate_metrics(adapter.fit_metrics(model))
    all_metrics = {**fit, **explicit}
    arrays = _storable(state)
    # Hashing runs in worker threads from here on (see storage.snapshots.staging); unchanged buffers are skipped.
    hashes = commit_hashes(arrays, known_hashes(adapter, model, arrays))
    given = {"message": message, "metrics": all_metrics, "params": params, "provenance": provenance,
             "extra": extra, "fit": fit if metrics is None else {}, "explicit": explicit, "git": git}

    def fill(staged: StagedCommit) -> object:
        # The tensors are staged (hashed, coded, written) in a worker thread while this thread
        # serializes the structure: coding releases the GIL and serializing does not, so the two
        # overlap on two cores. The framework's own code stays on the caller's thread.
        staging = thread_pool("stage", 1).submit(staged.stage, arrays, f"commit {name}", hashes)
        try:
            staged.writing.wait()
            git.start()
            structure = adapter.structure(model)
            staging.result()
        except BaseException:  # an error or Ctrl-C: staging stops at its next hash, then the file is discarded
            hashes.cancel()
            wait([staging])
            raise
        return structure

    vid, stats, staged_hashes = _store_arrays(store, name, adapter, fill, lambda: adapter.extra_metadata(model),
                                              tags, parents, given, move_head, attach)
    remember_hashes(adapter, model, arrays, staged_hashes)
    getattr(adapter, "mark_committed", lambda _model: None)(model)
    version = versions.get(store, vid, name=name)
    version.stats = stats
    return version


# Commits handed off (each holding a copy of the weights) that may wait for the background at once.
MAX_HANDED_OFF = 2


def commit_later(store: Store, model: Any, name: str, message: str | None = None,
                 metrics: Mapping[str, float] | None = None, params: Mapping[str, object] | None = None,
                 provenance: Mapping[str, object] | None = None, run_cache: dict | None = None) -> Future:
    """Commit ``model`` without making the caller wait for the disk: a training loop's commit.

    The weights are copied now (a consistent copy: the loop goes on changing them), with the
    structure and metadata the framework gives; hashing, writing and syncing run on the store's
    background worker (:mod:`mvc_magics.storage.local.background`), which gives the
    :class:`~mvc_magics.core.version.Version`. The next write to the store, any magic and the
    end of the process wait for it; its error is raised by the next magic or write, in one line.
    ``run_cache``: a dict the caller keeps for one run in which the model's architecture cannot
    change (a ``fit``): its structure is described at the first commit and reused.
    """
    adapter = adapter_for(model)
    # Checked here without the index (reading it would wait for the commits still being written);
    # the history's framework is checked by the background commit itself.
    name, message, explicit = validate_name(name, "model name"), validate_message(message), validate_metrics(metrics)
    params = validate_params(params)
    # At most MAX_HANDED_OFF copies wait for the disk: a loop faster than the disk waits here.
    store.background.throttle("commit ", MAX_HANDED_OFF)
    state = adapter.get_state(model)
    if not state:
        raise UnsupportedModelError(f"{name!r} has no variables to version")
    fit = validate_metrics(adapter.fit_metrics(model))
    # The copy is the only pass over the bytes on the caller's thread: into buffers a finished
    # handed-off commit gave back (already in memory: no page faults), at memcpy speed, while the
    # commits still being written wait at their next tensor (they would take a core and the GIL).
    arrays = _storable(state)
    with store.background.handing_off():
        arrays = _copy_into_spare(store, arrays)
    if run_cache is not None and "structure" in run_cache:
        structure = run_cache["structure"]
    else:
        structure = adapter.structure(model)
        if run_cache is not None:
            run_cache["structure"] = structure
    extra_meta = adapter.extra_metadata(model)
    getattr(adapter, "mark_committed", lambda _model: None)(model)
    given = {"message": message, "metrics": {**fit, **explicit}, "params": params, "provenance": provenance,
             "extra": None, "fit": fit if metrics is None else {}, "explicit": explicit}
    workspace = store.workspace

    def run(own: Store) -> Version:
        own.workspace, own.progress = workspace, False
        given["git"] = GitStateAhead(provenance, own.path)

        def fill(staged: StagedCommit) -> object:
            staged.pause = store.background.pause_point  # a hand-off's copy goes first
            staged.stage(arrays, f"commit {name}", commit_hashes(arrays, before=store.background.pause_point))
            return structure

        check_same_framework(own, name, adapter.framework)
        try:
            vid, stats, _ = _store_arrays(own, name, adapter, fill, lambda: extra_meta, [], None, given, True, True)
        finally:
            store.background.give_spare(arrays, MAX_HANDED_OFF)  # for the next hand-off to reuse
        version = versions.get(own, vid, name=name)
        version.stats = stats
        return version

    return store.background.submit(f"commit {name}", run)



def hand_offs_done(store: Store) -> None:
    """The end of a training loop that handed its commits off (:func:`commit_later`): wait until
    they are written, drop the buffers kept for the next step's copy, and start the automatic
    pack the loop's dense commits put off (:func:`.autopack.after_loop`)."""
    store.background.settle()
    store.background.spare.clear()
    autopack.after_loop(store)


def _copy_into_spare(store: Store, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A copy of ``arrays``, into a spare set of buffers of the same layout when there is one."""
    layout = {key: (a.shape, a.dtype) for key, a in arrays.items()}
    spare = store.background.take_spare(lambda s: {key: (a.shape, a.dtype) for key, a in s.items()} == layout)
    if spare is None:
        return {key: np.array(array, copy=True) for key, array in arrays.items()}
    for key, array in arrays.items():
        np.copyto(spare[key], array)
    return spare


def commit_state(store: Store, framework: str, structure: object, state: Mapping[str, Any], name: str,
                 **options: Any) -> Version:
    """Store ``state`` (held in memory) with a stored ``structure`` as a version of ``name``, no live
    model involved (the options of :func:`commit_stream`): hashed ahead and coded on both cores, as
    a model's commit is (:meth:`~mvc_magics.storage.snapshots.staging.StagedCommit.stage`)."""
    arrays = _storable(state)

    def stage(staged: StagedCommit, checked_name: str) -> None:
        staged.stage(arrays, f"commit {checked_name}", commit_hashes(arrays))

    return _commit_without_model(store, framework, structure, name, stage, **options)


def commit_stream(store: Store, framework: str, structure: object,
                  tensors: Iterable[tuple[str, np.ndarray | HashedArray | ManifestEntry]], name: str,
                  total_bytes: int = 0, **options: Any) -> Version:
    """Store the ``(name, tensor)`` pairs ``tensors`` yields, with a stored ``structure``, as a version
    of ``name``: no live model involved, and no tensor kept once it is staged (see
    :meth:`~mvc_magics.storage.snapshots.staging.StagedCommit.stream`). A :class:`ManifestEntry` is a tensor
    already stored, referenced without reading it; a :class:`HashedArray` is stored under the hash it
    carries (computed by its maker: not hashed again). ``options``: ``message``, ``metrics``, ``tags``,
    ``provenance``, ``parents``, ``extra``, ``move_head`` and ``attach``, as for :func:`commit`.

    The version id is the one :func:`commit` gives a model of that structure holding these tensors
    (both hash the structure and the manifest). Used by merges, so a soup is neither rebuilt into a
    model only to be read back nor held whole: the model has no fit history and no compile setup
    of its own (``extra`` carries what the caller knows).
    """

    def checked() -> Iterator[tuple[str, np.ndarray | HashedArray | ManifestEntry]]:
        for key, value in tensors:
            if isinstance(value, ManifestEntry):
                yield key, value
                continue
            hashed = value if isinstance(value, HashedArray) else None
            array = canonical_array(value if hashed is None else hashed.array)
            storable_dtype_name(array.dtype, key)  # refused before it is written
            del value
            # Its hash holds for these bytes only if canonical_array gave the array itself back.
            yield key, hashed if hashed is not None and array is hashed.array else array
            del array, hashed  # the writer holds the only reference left: freed once written

    def stage(staged: StagedCommit, checked_name: str) -> None:
        staged.stream(checked(), description=f"commit {checked_name}", total_bytes=total_bytes)

    return _commit_without_model(store, framework, structure, name, stage, **options)


def _commit_without_model(store: Store, framework: str, structure: object, name: str,
                          stage: Callable[[StagedCommit, str], None], message: str | None = None,
                          metrics: Mapping[str, float] | None = None, tags: Iterable[str] = (),
                          provenance: Mapping[str, object] | None = None, parents: Iterable[str] | None = None,
                          extra: Mapping[str, object] | None = None, move_head: bool = True,
                          attach: bool = True) -> Version:
    adapter = adapter_named(framework)
    name, message, tags, explicit = _checked_inputs(store, name, adapter, message, tags, metrics)
    given = {"message": message, "metrics": explicit, "params": validate_params(None), "provenance": provenance,
             "extra": extra, "fit": {}, "explicit": explicit, "git": GitStateAhead(provenance, store.path)}

    def fill(staged: StagedCommit) -> object:
        stage(staged, name)
        if not staged.specs:
            raise UnsupportedModelError(f"{name!r} has no variables to version")
        return structure

    vid, stats, _ = _store_arrays(store, name, adapter, fill, dict, tags, parents, given, move_head, attach)
    version = versions.get(store, vid, name=name)
    version.stats = stats
    return version


def _store_arrays(store: Store, name: str, adapter: Adapter, fill: Callable[[StagedCommit], object],
                  extra_metadata: Callable[[], dict], tags: list[str], parents: Iterable[str] | None, given: dict,
                  move_head: bool, attach: bool) -> tuple[str, CommitStats, Any]:
    """Stage the tensors (``fill`` hands them to the staged commit and returns the structure),
    compute the version id, then publish a new version or attach to the existing one."""
    fit, explicit = given["fit"], given["explicit"]
    with store.locked():
        if parents is None:
            head = store.head_id(name)
            parents = [head] if head and store.has_version(head) else []
        parents = list(parents)
        # New tensors are coded as deltas against the parents' (the first parent that has them).
        staged = store.writes.stage(parents)
        try:
            structure = fill(staged)
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
            notes = _attach_existing(store, vid, name, fit, explicit,
                                     tags if attach else [], given, move_head, attach)
            stats = CommitStats(False, 0, len(staged.specs), 0, notes)
        else:
            stats = _publish(store, vid, name, adapter, staged, structure, extra_metadata, tags, parents, given,
                             move_head)
    if stats.new_version:
        autopack.after_commit(store, vid)  # loose files are coded off the user's path, past a threshold
    return vid, stats, staged.hashes


def _storable(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``state`` as canonical arrays, refused (before any write) where the store could not read a dtype back."""
    arrays = {key: canonical_array(value) for key, value in state.items()}
    for key, array in arrays.items():
        storable_dtype_name(array.dtype, key)
    return arrays


def _checked_inputs(store: Store, name: str, adapter: Adapter, message: str | None, tags: Iterable[str],
                    metrics: Mapping[str, float] | None) -> tuple[str, str, list[str], dict[str, float]]:
    """The name, message, tags and metrics of a commit, each validated, and the framework checked
    against the history's (one place for :func:`commit` and :func:`commit_state`)."""
    name = validate_name(name, "model name")
    message = validate_message(message)
    tags = [validate_tag(t, versions.tag_names(store)) for t in tags]
    check_same_framework(store, name, adapter.framework)
    return name, message, tags, validate_metrics(metrics)


def check_same_framework(store: Store, name: str, framework: str) -> None:
    """Refuse a model of another framework in ``name``'s history: its versions could never be
    checked out into each other, merged or compared tensor by tensor."""
    latest = lookup.load_versions(store.index, "1 = 1", (), limit=1, history=name)  # none yet: a new history
    if latest and latest[0].framework and latest[0].framework != framework:
        raise UnsupportedModelError(
            f"{name!r} is a history of {latest[0].framework} models; a {framework} model cannot be committed "
            f"to it (commit it under another name)"
        )


def _attach_existing(store: Store, vid: str, name: str, fit: dict[str, float], explicit: dict[str, float],
                     tags: list[str], given: dict, move_head: bool, attach: bool) -> tuple[str, ...]:
    """A commit of content already stored: what is attached to that version, and what is not (notes).

    Metrics are facts of the version they were measured on, so an existing value is never
    replaced: a metric the version lacks is added (a note file saying when and where it was
    measured), a different value for one it has is refused and named. Fit metrics are never
    attached here: weights equal to a stored version did not come from the last fit (a checkout or
    an assignment replaced them), so that fit's history describes other weights. Message, params
    and data fingerprints belong to the version's immutable metadata and are not recorded.

    Content stored as a version of another model joins ``name``'s history too (a name record: see
    :mod:`~mvc_magics.storage.local.histories`); ``name``'s log, ``latest`` and ``best:`` then find
    it, and the other model's history is unchanged.
    """
    if not attach:
        store.writes.attach(vid, name, {}, [], {"merge": True}, move_head=move_head)
        return ()
    stored = versions.get(store, vid).metrics
    notes = []
    join = not store.index.query("SELECT 1 FROM members WHERE name = ? AND id = ?", (name, vid))
    if join:
        owners = [r[0] for r in store.index.query("SELECT name FROM members WHERE id = ? ORDER BY ord, name", (vid,))]
        notes.append(f"the same content as a version of {', '.join(map(repr, owners))}: now in the history of "
                     f"{name!r} too")
    new = {k: v for k, v in explicit.items() if k not in stored}
    refused = {k: v for k, v in explicit.items() if k in stored and not _same(stored[k], v)}
    if refused:
        notes.append("kept the metrics measured earlier on this version, not replaced: " + ", ".join(
            f"{k}={format_number(stored[k])} (given {format_number(v)})" for k, v in sorted(refused.items())))
    stale = {k: v for k, v in fit.items() if k not in explicit and not (k in stored and _same(stored[k], v))}
    if stale:
        notes.append(f"fit metrics not attached ({', '.join(sorted(stale))}): these weights are already stored, "
                     "so they are not what the last fit produced")
    dropped = [what for what, present in (("message", given["message"]), ("params", given["params"]),
                                          ("data fingerprints", (given["provenance"] or {}).get("data")))
               if present]
    if dropped:
        notes.append(f"{', '.join(dropped)} not recorded: the version already exists and its metadata does not "
                     "change (commit changed weights, or put a tag on it)")
    measured = {"created": datetime.now(timezone.utc).isoformat(timespec="microseconds"), "author": author(),
                "notebook": (given["provenance"] or {}).get("notebook")}
    detail = {"metrics": new, "refused": refused, "measured": measured, "tags": tags,
              **({"joined": name} if join else {})}
    store.writes.attach(vid, name, new, tags, detail, move_head=move_head, join=join)
    return tuple(notes)


def _same(a: float, b: float) -> bool:
    return a == b or (a != a and b != b)  # NaN equals NaN here: the same measurement


def _publish(store: Store, vid: str, name: str, adapter: Adapter, staged: StagedCommit, structure: object,
             extra_metadata: Callable[[], dict], tags: list[str], parents: list[str], given: dict,
             move_head: bool = True) -> CommitStats:
    """The metadata of a new version, then the store publishes it."""
    # Bytes in this version's own path may belong to a retired file that the new file replaces.
    staged.claim_own(vid)
    manifest = staged.manifest(vid)
    extra_meta = extra_metadata()
    meta = {
        "name": name, "message": given["message"] or "", "parents": list(parents),
        "created": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        "author": author(), "metrics": given["metrics"], "params": given["params"], "framework": adapter.framework,
        "libraries": {**base_library_versions(), **adapter.library_versions()},
        "provenance": complete_provenance(given["git"].provenance(), extra_meta),
        "extra": {**extra_meta, **(given["extra"] or {})},
        # The tags asked for, so crash recovery can finish a commit killed before its ref files.
        "tags": list(tags),
    }
    if store.workspace:  # whose HEAD the commit moves, for the same recovery
        meta["workspace"] = store.workspace
    store.writes.publish_version(staged, vid, meta, structure, manifest, move_head=move_head)
    return CommitStats(True, staged.tensors_written, len(manifest) - staged.tensors_written, staged.bytes_written)

"""Checkout: a version loaded into a live model in place (all or nothing), or rebuilt as a new one."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

import numpy as np

from ..adapters import Adapter, adapter_for, adapter_to_build
from ..adapters.base import load_version, match_state
from ..core.interrupts import interrupts_held
from ..core.manifest import ManifestEntry
from ..core.names import validate_name
from ..core.version import Version
from ..errors import StoreError, UnsupportedModelError
from ..storage.local.store import Store
from ..storage.snapshots.snapshot import TensorReader
from . import versions
from .signing import require_valid_signature


def checkout(store: Store, ref: str, model: Any = None, name: str | None = None, unsafe: bool = False,
             require_signature: bool = False, classes: Mapping[str, type] | None = None,
             move_head: bool = True) -> Any:
    """Load version ``ref`` into ``model`` in place, or build a new model when ``model`` is None
    (see :meth:`mvc_magics.Repo.checkout`); records the model's new HEAD unless the store is read-only
    or ``move_head`` is False (a copy loaded into another variable moves no model's HEAD).

    Building a model whose class is user code needs ``classes`` or ``unsafe`` (see
    :mod:`mvc_magics.adapters.trust`)."""
    version = versions.resolve(store, ref, name=name)
    target = name or version.name
    validate_name(target, "model name")
    if require_signature:
        require_valid_signature(store, version.id)
    if not move_head or store.readonly:
        return _load(store, version, model, unsafe, classes)
    move = HeadMove(store, target, version.id, {"ref": ref, "rebuilt": model is None})
    try:
        result = _load(store, version, model, unsafe, classes, move.accepted)
    except BaseException:
        with contextlib.suppress(Exception):  # the load's error is the one said
            move.settle()  # refused before the model accepted it: nothing moves
        raise
    move.finish()
    return result


class HeadMove:
    """A checkout's audited HEAD move, made by the store's background worker
    (:mod:`mvc_magics.storage.local.background`) once the model holds the version, so the
    checkout returns when the copy is done instead of after the move's five syncs (which, beside
    the copy, took 7-11 ms of a PyTorch 100 MB checkout's 27 ms: the copy's threads held both
    cores). Whoever reads or writes the store next waits for it, and so do closing the store and
    the end of the process; its error is raised by the next call into the store, in one line.

    The model says when it accepted the version (every tensor verified, every name, shape and dtype
    checked: :meth:`accepted`); after that point nothing refuses the load, so the move is handed
    off even when the copy is interrupted (Ctrl-C waits for the whole copy). A checkout refused
    before that point moves nothing."""

    def __init__(self, store: Store, name: str, vid: str, detail: Mapping[str, object]) -> None:
        self._store, self._name, self._vid, self._detail = store, name, vid, detail
        self._accepted = False
        self._handed: Future | None = None

    def accepted(self) -> None:
        """The model accepted the version: the move will be made whatever happens next."""
        self._accepted = True

    def finish(self) -> None:
        """The model holds the version: hand the move to the store's background worker (once)."""
        if self._handed is not None:
            return
        name, vid, detail, workspace = self._name, self._vid, self._detail, self._store.workspace

        def move(own: Store) -> None:
            own.workspace = workspace  # HEAD of this notebook, as the caller's store object names it
            with own.locked():
                if not own.has_version(vid):  # another process removed it after the checkout returned
                    raise StoreError(f"HEAD of {name!r} was not moved to {vid[:12]}: that version was "
                                     "removed meanwhile by another process")
                own.writes.move_head(name, vid, "checkout", detail)

        self._handed = self._store.background.submit(f"checkout {name}", move)

    def settle(self) -> None:
        """After an error: hand the move off if the model had accepted the version (the copy was
        completed), else nothing moves."""
        if self._accepted:
            self.finish()


def _load(store: Store, version: Version, model: Any, unsafe: bool, classes: Mapping[str, type] | None,
          checked: Callable[[], None] | None = None) -> Any:
    """``version`` loaded into ``model`` in place, or built as a new model when ``model`` is None."""
    if model is None:
        state = versions.load_state(store, version)
        adapter = adapter_to_build(version.framework)
        result = adapter.build(versions.structure(store, version.id), state, unsafe=unsafe, classes=classes)
        getattr(adapter, "restore_training_setup", lambda _m, _e: False)(result, version.extra)
        return result
    adapter = adapter_for(model)
    if version.framework and adapter.framework != version.framework:
        raise UnsupportedModelError(f"{version.short_id} is a {version.framework} model; it cannot be "
                                    f"checked out into a {adapter.framework} model")
    # Only adapters that rebuild from the structure get it: a copy of ResNet50's costs ~50 ms.
    needs_structure = getattr(adapter, "load_version", None) is not None
    # An adapter that copies into the model's own buffers (PyTorch's copy_) reads the tensors
    # stored as they are straight from the mapped file, hashed there: one copy, not two.
    views = getattr(adapter, "copies_in", False) and not needs_structure
    manifest = store.manifest(version.id)
    with TensorReader(store.layout.snapshot_path, unmap_later=True) as reader:
        # Copies a model adopts go in memory earlier checkouts' models let go: no page faults.
        state = reader.read_all(manifest, owner=version.id, progress=store.progress, views=views,
                                recycle=not views)
        # Otherwise state was read for this call; a JAX pytree comes back as a new pytree.
        # Every tensor is verified now: an interrupt while the model is overwritten waits for the
        # whole version to be in it (a refusal at the model's checks still changes nothing).
        with interrupts_held():
            result = load_version(adapter, model, versions.structure(store, version.id) if needs_structure else None,
                                  state, {e.name: e.hash for e in manifest}, checked)
        # The last fit's metrics describe the weights the fit left, which are gone now.
        getattr(adapter, "mark_committed", lambda _model: None)(result)
        if not getattr(adapter, "remembers_loaded", False):
            _remember_loaded(adapter, result, state, manifest)
    return result


def _remember_loaded(adapter: Adapter, model: Any, state: dict[str, np.ndarray],
                     manifest: list[ManifestEntry]) -> None:
    """After a checkout each variable holds exactly the verified bytes of its stored tensor (same
    dtype: assignment is exact), so their hashes are known: the next status need not rehash."""
    if getattr(adapter, "remember_hashes", None) is None:
        return
    live = adapter.get_state(model)
    pairs = match_state({k: (tuple(a.shape), a.dtype.name) for k, a in live.items()}, state)  # as set_state
    stored = {e.name: e.hash for e in manifest}
    hashes = {k: stored[s] for k, s in pairs.items() if live[k].dtype == state[s].dtype and s in stored}
    adapter.remember_hashes(model, {k: live[k] for k in hashes}, hashes)

"""Status: for each tracked model, is its variable here, and did its weights change since HEAD?"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..adapters import adapter_for
from ..adapters.base import known_hashes, remember_hashes
from ..core.hashing import hashes_ahead
from ..core.names import pair_names
from ..core.reports import StatusEntry, StatusReport
from ..core.version import Version
from ..errors import IntegrityError, UnknownRefError, UnsupportedModelError
from ..storage.local.store import Store
from . import versions
from .autopack import loose_summary
from .optimizer_state import optimizer_history


def status(store: Store, namespace: Mapping[str, Any] | None = None) -> StatusReport:
    """One entry per model with a HEAD: present in ``namespace``, and modified since HEAD?"""
    namespace = namespace or {}
    report = StatusReport()
    # Commits handed off by a loop still being written: named, then waited for by the first read.
    report.pending = tuple(store.background.pending())
    names = versions.models(store)
    # An optimizer's history (``net.optimizer``) belongs to its model's entry: it is no variable.
    for name in [n for n in names if n not in {optimizer_history(m) for m in names}]:
        head = versions.head(store, name)
        obj = namespace.get(name)
        if obj is None:
            report.append(StatusEntry(name, head, None, present=False))
            continue
        report.append(StatusEntry(name, head, is_modified(store, obj, head)))
    report.loose_files, report.loose_bytes = loose_summary(store)
    return report


def is_modified(store: Store, model: Any, head: Version | None) -> bool:
    """True when ``model``'s tensors differ from those of ``head`` (hash comparison)."""
    if head is None:
        return True
    try:
        adapter = adapter_for(model)
        state = adapter.get_state(model)
    except UnsupportedModelError:
        return True
    try:
        stored = {e.name: e.hash for e in store.manifest(head.id)}  # checked against the id
    except (IntegrityError, UnknownRefError):
        return True
    # Names that differ (a re-run cell renumbered the layers) are paired as a checkout pairs them.
    paired = pair_names(state, stored)
    if paired is None:
        return True
    expected = {key: stored[paired[key]] for key in state}
    computed = {}
    for key, digest in hashes_ahead(state, known_hashes(adapter, model, state)):
        if digest != expected[key]:
            return True  # stops hashing at the first difference
        computed[key] = digest
    remember_hashes(adapter, model, state, computed)
    return False

"""An optimizer's state kept with a model version, so training resumes exactly where it stopped.

The optimizer is committed as a version of its own history, ``<model>.optimizer``, with the model
version it belongs to as its parent and as the ``for_version`` param: the model version's id (its
content) does not change, and the same model version committed again with a newer optimizer state
simply gets a newer optimizer version. Restoring finds the newest optimizer version made for the
model version and loads it into the live optimizer (all or nothing, by the optimizer itself).
"""

from __future__ import annotations

from typing import Any

from ..core.version import Version
from ..errors import UnknownRefError
from ..storage.local.store import Store
from . import versions
from .checkout import checkout
from .commit import commit


def optimizer_history(model_name: str) -> str:
    """The history the optimizer versions of ``model_name`` are filed under."""
    return f"{model_name}.optimizer"


def commit_optimizer(store: Store, optimizer: Any, model_version: Version) -> Version:
    """Commit ``optimizer``'s state as belonging to ``model_version``."""
    return commit(store, optimizer, optimizer_history(model_version.name),
                  message=f"optimizer state for {model_version.short_id}", parents=[model_version.id],
                  params={"for_version": model_version.id})


def optimizer_version_for(store: Store, model_version: Version) -> Version:
    """The newest optimizer version committed with ``model_version``; UnknownRefError if none."""
    history = optimizer_history(model_version.name)
    try:
        candidates = versions.log(store, history)
    except UnknownRefError:  # no optimizer was ever committed for this model
        candidates = []
    for candidate in candidates:
        if candidate.params.get("for_version") == model_version.id:
            return candidate
    raise UnknownRefError(f"no optimizer state was committed with {model_version.short_id} "
                          f"(commit with --optimizer VAR to keep it)")


def restore_optimizer(store: Store, optimizer: Any, model_version: Version) -> Version:
    """Load the optimizer state committed with ``model_version`` into ``optimizer``; return its version."""
    found = optimizer_version_for(store, model_version)
    checkout(store, found.id, optimizer, name=found.name)
    return found

"""Optimizer state with a model version (``--optimizer VAR`` on the magics), for the Python API.

>>> v = repo.commit(net, "net")                                   # doctest: +SKIP
>>> commit_optimizer(repo, opt, v)          # opt's state, kept with v
>>> repo.checkout(v.id, net); restore_optimizer(repo, opt, v)     # doctest: +SKIP

Functions rather than ``Repo`` methods: ``Repo`` stays a thin table of contents (see
:mod:`mvc_magics.operations.optimizer_state` for how the state is filed).
"""

from __future__ import annotations

from typing import Any

from ..core.version import Version
from ..operations import optimizer_state, versions
from .repo import Repo

__all__ = ["commit_optimizer", "restore_optimizer"]


def commit_optimizer(repo: Repo, optimizer: Any, version: Version | str) -> Version:
    """Commit ``optimizer``'s state (``torch.optim`` or Keras 3) as belonging to model ``version``."""
    model_version = version if isinstance(version, Version) else versions.resolve(repo.store, version)
    return optimizer_state.commit_optimizer(repo.store, optimizer, model_version)


def restore_optimizer(repo: Repo, optimizer: Any, version: Version | str) -> Version:
    """Load the optimizer state committed with model ``version`` into ``optimizer`` (all or nothing)."""
    model_version = version if isinstance(version, Version) else versions.resolve(repo.store, version)
    return optimizer_state.restore_optimizer(repo.store, optimizer, model_version)

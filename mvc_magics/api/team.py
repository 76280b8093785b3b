"""What ``Repo`` does with a team: remotes (add, push, pull, clone), version signatures, and publishing
versions to the systems a team deploys from (MLflow, DVC).

A mixin of :class:`~mvc_magics.api.repo.Repo`, so ``repo.push(...)`` reads as before while ``repo.py``
stays a short table of contents. Like every ``Repo`` method, each binds one operation to ``self.store``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..core.publication import Publication
from ..core.reports import TransferReport
from ..operations import clone, publish, pull, push, remotes, signing
from ..storage.local.signatures import SignatureStatus

if TYPE_CHECKING:
    from ..storage.local.store import Store

__all__ = ["TeamMethods"]

R = TypeVar("R", bound="TeamMethods")


class TeamMethods:
    """Remote and signature methods of :class:`~mvc_magics.api.repo.Repo` (``self.store`` is its store)."""

    store: Store

    def add_remote(self, name: str, url: str) -> str:
        """Configure remote ``name`` at an fsspec ``url``; URLs with credentials are refused."""
        return remotes.add_remote(self.store, name, url)

    def remotes(self) -> dict[str, str]:
        """Configured remotes, name -> URL."""
        return remotes.load_remotes(self.store)

    def remove_remote(self, name: str) -> None:
        """Forget remote ``name`` (nothing on the remote is touched)."""
        remotes.remove_remote(self.store, name)

    def push(self, remote: str | None = None, refs: Iterable[str] | None = None, force: bool = False,
             progress: bool | None = None) -> TransferReport:
        """Send all versions (or ``refs`` and their ancestors) and their tags to ``remote``; idempotent."""
        return push.push(self.store, remote, refs, force=force, progress=progress)

    def pull(self, remote: str | None = None, refs: Iterable[str] | None = None, force: bool = False,
             progress: bool | None = None) -> TransferReport:
        """Fetch all versions (or ``refs`` with ancestors) and tags; every tensor is re-hashed first."""
        return pull.pull(self.store, remote, refs, force=force, progress=progress)

    @classmethod
    def clone(cls: type[R], url: str, path: str | os.PathLike, progress: bool | None = None) -> R:
        """A new store at ``path`` with remote ``origin`` = ``url`` and everything pulled from it."""
        repo = cls.__new__(cls)
        repo.store = clone.clone(url, Path(path).expanduser(), progress)
        return repo

    # -- signatures ---------------------------------------------------------------------------

    def sign_versions(self) -> list[str]:
        """Sign every unsigned version with the configured key; return the ids signed."""
        return signing.sign_versions(self.store)

    def signature_status(self, ref: str, name: str | None = None) -> SignatureStatus:
        """``valid``, ``unsigned``, ``bad`` or ``unchecked`` (no key configured) for version ``ref``."""
        return signing.signature_status(self.store, ref, name)

    def require_valid_signature(self, vid: str) -> None:
        """Raise :class:`SignatureError` unless version ``vid`` has a valid signature."""
        signing.require_valid_signature(self.store, vid)

    # -- publishing ---------------------------------------------------------------------------

    def publish(self, ref: str, target: str, name: str | None = None, *, registered_model_name: str | None = None,
                alias: str | None = None, path: str | os.PathLike | None = None, artifact: str | None = None,
                model: Any = None, unsafe: bool = False, classes: Mapping[str, type] | None = None) -> Publication:
        """Publish version ``ref`` where a team deploys from; returns where it went and how to load it there.

        ``target="mlflow"``: logged with its framework's MLflow flavor (keras, pytorch, sklearn, lightgbm, plus
        python_function) and registered as a version of ``registered_model_name`` in the registry of the
        configured tracking URI (``MLFLOW_TRACKING_URI``), tagged with the mvc id, ``alias`` pointed at it.
        ``target="dvc"``: exported under the folder ``path`` of a git + DVC repository, tracked with DVC and
        declared in ``dvc.yaml`` as model ``artifact``; nothing is committed to git. Publishing an id again
        finds what the first publish made. ``model``/``unsafe``/``classes`` as in ``Repo.export``.

        >>> repo.publish("best:val_acc", "mlflow", registered_model_name="digits", alias="champion")  # doctest: +SKIP
        """
        options = {key: value for key, value in (("registered_model_name", registered_model_name), ("alias", alias),
                                                 ("path", path), ("artifact", artifact)) if value is not None}
        return publish.publish(self.store, ref, target, name, model, unsafe, classes, **options)

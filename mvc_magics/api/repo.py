"""``Repo``: the plain Python API over one store, a table of contents of the operations.

Each method binds one function of :mod:`mvc_magics.operations` to this store and returns its
result; the rules live there and in the storage layer. It never imports IPython.

>>> from mvc_magics import Repo
>>> repo = Repo(".mvc")                                        # doctest: +SKIP
>>> v = repo.commit(model, "model", message="10 epochs", metrics={"val_mse": 0.9})  # doctest: +SKIP
>>> repo.checkout("best:val_mse", model)                       # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..core.audit_trail import AuditTrail
from ..core.compare import Comparison
from ..core.diff import Diff
from ..core.manifest import ManifestEntry
from ..core.merge_report import MergedVersion, MergePreview
from ..core.reports import GcReport, RepackReport, StatusReport, VerifyReport
from ..core.retention import RetentionReport
from ..core.usage import UsageReport
from ..core.version import Version, VersionLog
from ..operations import (
    checkout,
    commit,
    compare,
    export,
    merge,
    removal,
    retention,
    status,
    tags,
    usage,
    verify,
    versions,
)
from ..storage.local.layout import default_store_path
from ..storage.local.store import Store
from .team import TeamMethods

__all__ = ["Repo", "default_store_path"]


# What gc takes and returns: a retention policy's rules; a plain, retention and/or repack report.
KeepPolicy = Iterable[str] | str | None
GcResult = GcReport | RetentionReport | RepackReport | tuple


class Repo(TeamMethods):
    """A model version store in one folder (by default ``.mvc`` beside the notebook).

    Remotes (push, pull, clone) and signatures are :class:`~mvc_magics.api.team.TeamMethods`.

    Args:
        path: the store folder; None means :func:`default_store_path`.
        create: create the store when it does not exist yet.
        workspace: the notebook whose HEADs this object moves: its path (relative paths are taken from the
            store's folder; the magics pass it), keyed by core.names.workspace_key; None: the shared HEAD.
    """

    def __init__(self, path: str | os.PathLike | None = None, create: bool = True, workspace: str | None = None):
        self.store = Store(Path(path).expanduser() if path is not None else default_store_path(), create, workspace)

    # The store's parts, for tools and tests that look inside (the operations take ``store``).
    path = property(lambda self: self.store.path, doc="The store folder.")
    layout = property(lambda self: self.store.layout, doc="The folder layout, lock and ref files.")
    index = property(lambda self: self.store.index, doc="The SQLite index (a cache of the files).")
    audit = property(lambda self: self.store.audit, doc="The hash-chained audit log.")

    progress = property(lambda self: self.store.progress, lambda self, value: setattr(self.store, "progress", value),
                        doc="Progress bars on long commits/checkouts: None after ~1 s, True at once, False never.")

    def __repr__(self) -> str:
        return f"Repo({str(self.path)!r})"

    def close(self) -> None:
        """Close the index connection."""
        self.store.close()

    def __enter__(self) -> Repo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- versions ---------------------------------------------------------------------------

    def commit(self, model: Any, name: str, message: str | None = None, metrics: Mapping[str, float] | None = None,
               params: Mapping[str, object] | None = None, tags: Iterable[str] = (),
               provenance: Mapping[str, object] | None = None, parents: Iterable[str] | None = None,
               extra: Mapping[str, object] | None = None) -> Version:
        """Store the model's current content as a version of ``name`` and return it.

        Only new tensors are written. Content already stored is that version: tags and metrics it lacks are
        added, a value it has is never replaced (``stats.notes`` says what was not recorded). The last fit's
        final epoch gives metrics (explicit ones win), never to content already stored.
        """
        return commit.commit(self.store, model, name, message, metrics, params, tags, provenance, parents, extra)

    def checkout(self, ref: str, model: Any = None, name: str | None = None, unsafe: bool = False,
                 require_signature: bool = False, classes: Mapping[str, type] | None = None, move_head: bool = True
                 ) -> Any:
        """Load version ``ref`` into ``model`` in place, or build a new model when ``model`` is None.

        All or nothing: every shape is checked before the first assignment, every tensor is re-hashed.
        ``require_signature`` refuses an unsigned version. A user class (notebook or package) is rebuilt
        only with ``classes={"Net": Net}`` (the classes you trust) or ``unsafe=True`` (found by name).
        Returns ``model`` (a JAX pytree: a new pytree). In place or rebuilt, the checkout moves
        ``name``'s HEAD (this Repo's: the shared one unless ``workspace`` was given) to the version,
        so the next commit of ``name`` descends from it; ``move_head=False``: a copy, every HEAD stays."""
        return checkout.checkout(self.store, ref, model, name, unsafe, require_signature, classes, move_head)

    def get(self, vid: str, name: str | None = None) -> Version:
        """The :class:`Version` with full id ``vid``."""
        return versions.get(self.store, vid, name)

    def resolve(self, ref: str, name: str | None = None) -> Version:
        """The one version ``ref`` names (see :mod:`mvc_magics.core.refs`); errors list candidates."""
        return versions.resolve(self.store, ref, name)

    def models(self) -> list[str]:
        """Names of the models that have versions, in order of their first commit."""
        return versions.models(self.store)

    def head(self, name: str) -> Version | None:
        """The version the model variable ``name`` is at (last commit or checkout), if any."""
        return versions.head(self.store, name)

    def log(self, name: str | None = None, limit: int | None = None) -> VersionLog:
        """Versions of ``name`` (all models when None), newest first."""
        return versions.log(self.store, name, limit)

    def load_state(self, version: Version | str, verify: bool = True) -> dict[str, np.ndarray]:
        """Every tensor of a version, re-hashed; :class:`IntegrityError` on any damage."""
        return versions.load_state(self.store, version, verify)

    def manifest(self, vid: str) -> list[ManifestEntry]:
        """The tensor entries of a version (from the index; no tensor bytes read)."""
        return self.store.manifest(vid)

    def structure(self, vid: str) -> object:
        """The stored model structure of a version (None when the model was not serializable)."""
        return versions.structure(self.store, vid)

    def tag_names(self, name: str | None = None) -> list[str]:
        """Tags of model ``name`` (of every model when None), sorted."""
        return versions.tag_names(self.store, name)

    def ref_names(self, name: str | None = None) -> list[str]:
        """Refs worth offering for ``name``: tags, HEAD, latest, best:METRIC and short ids."""
        return versions.ref_names(self.store, name)

    def status(self, namespace: Mapping[str, Any] | None = None) -> StatusReport:
        """For each model with a HEAD: is the variable in ``namespace``, and did its weights change?"""
        return status.status(self.store, namespace)

    def is_modified(self, model: Any, head: Version | None) -> bool:
        """True when ``model``'s tensors differ from those of ``head`` (hash comparison)."""
        return status.is_modified(self.store, model, head)

    # -- tags -------------------------------------------------------------------------------

    def tag(self, ref: str, tag: str, name: str | None = None, force: bool = False,
            protect: bool | None = None) -> Version:
        """Put ``tag`` on the version ``ref`` names; moving an existing tag needs ``force``."""
        return tags.tag(self.store, ref, tag, name, force, protect)

    def untag(self, tag: str, name: str | None = None, force: bool = False) -> None:
        """Remove ``tag`` (protected tags need ``force``)."""
        tags.untag(self.store, tag, name, force)

    # -- compare, diff and merge ------------------------------------------------------------

    def compare(self, refs: Iterable[str] | str | None = None, name: str | None = None,
                weights: Mapping[str, float] | None = None, baseline: str | None = None,
                directions: Mapping[str, str] | None = None, limit: int | None = 20,
                allow_mixed: bool = False) -> Comparison:
        """Compare versions by their metrics: a :class:`~mvc_magics.core.compare.Comparison`.

        ``refs`` None means every version of ``name`` (the most recent ``limit``). ``weights``
        maps metric -> weight (default: every metric 1; when given, unnamed metrics weigh 0);
        ``directions`` overrides the inferred ``"min"``/``"max"``; ``baseline`` (a ref, default the
        oldest compared version) is what "D vs base" is measured against.
        """
        return compare.compare_in(self.store, refs, name, weights, baseline, directions, limit, allow_mixed)

    def diff(self, a: str, b: str, name: str | None = None, allow_mixed: bool = False) -> Diff:
        """Parameter diff of versions ``a`` -> ``b``; tensors with equal hashes are never read."""
        return compare.diff_versions(self.store, a, b, name, allow_mixed)

    def compare_panel(self, refs: Iterable[str] | None = None, name: str | None = None,
                      weights: Mapping[str, float] | None = None, baseline: str | None = None,
                      directions: Mapping[str, str] | None = None, namespace: dict | None = None,
                      limit: int | None = 20):
        """An ipywidgets :class:`~mvc_magics.widgets.ComparePanel` over this store (needs ipywidgets)."""
        from ..widgets.compare_panel import ComparePanel  # ipywidgets is optional: imported on use

        return ComparePanel(self, refs=refs, name=name, weights=weights, baseline=baseline,
                            directions=directions, namespace=namespace, limit=limit)

    def merge(self, refs: Iterable[str | Version], weights: Iterable[float] | None = None,
              method: str = "average", eval_fn: Any = None, name: str | None = None,
              message: str | None = None, into: Any = None, base: str | Version | None = None,
              **options: Any) -> MergedVersion:
        """Merge versions into a new version whose parents are all the inputs (and the base).

        ``method``: ``"average"`` (weighted mean of the float tensors; default uniform: a soup),
        ``"greedy"`` (greedy soup scored by ``eval_fn(model)``, higher is better, or ranked by
        ``metric="val_accuracy"``), ``"ensemble"`` (mean of the members' outputs) or ``"vote"``;
        over task vectors (each input minus ``base``): ``"task_arithmetic"`` (``scale``), ``"ties"``
        (``density``, ``scale``), ``"dare_linear"`` / ``"dare_ties"`` (``density``, ``scale``,
        ``seed``), ``"model_stock"``, and ``"slerp"`` of two versions (``t``, no base). ``base``
        defaults to the inputs' merge base (nearest common ancestor in the history).
        ``into`` loads the result into a live model, all or nothing. Other options: ``metric``, ``model``,
        ``result_name``, ``tags``, ``score_name``, ``provenance``, ``unsafe``/``classes`` (see
        :func:`mvc_magics.operations.merge.merge_versions`). Conflicts raise
        :class:`~mvc_magics.errors.MergeConflictError` before anything is written.

        >>> soup = repo.merge(["ft1", "ft2", "ft3"], name="model", into=model)   # doctest: +SKIP
        >>> ties = repo.merge(["ft1", "ft2", "ft3"], method="ties", density=0.2)  # doctest: +SKIP
        """
        return merge.merge_versions(self.store, refs, weights, method, eval_fn, name, message, into, base=base,
                                    **options)

    def merge_preview(self, refs: Iterable[str | Version], weights: Iterable[float] | None = None,
                      method: str = "average", eval_fn: Any = None, name: str | None = None,
                      base: str | Version | None = None, **options: Any) -> MergePreview:
        """The merge computed (and scored with ``eval_fn``) but not committed: ``.model``, ``.score``, ``.report``."""
        return merge.merge_preview(self.store, refs, weights, method, eval_fn, name, base=base, **options)

    def merge_panel(self, refs: Iterable[str | Version], name: str | None = None,
                    namespace: Mapping[str, Any] | None = None, **options: Any) -> Any:
        """An ipywidgets panel to weigh, preview and commit a merge of ``refs``."""
        from ..widgets.merge_panel import MergePanel  # ipywidgets is optional: imported on use

        return MergePanel(self, list(refs), name=name, namespace=namespace, **options)

    # -- lifecycle, integrity and audit -----------------------------------------------------

    def export(self, ref: str, path: str | os.PathLike, format: str | None = None, name: str | None = None,
               model: Any = None, unsafe: bool = False, classes: Mapping[str, type] | None = None) -> Path:
        """Write version ``ref`` for serving in ``format`` (default: from the framework and ``path``'s suffix; see
        ``operations.export.FORMATS``; ``tfserving``: the next ``path/<n>`` SavedModel, or the one already holding
        it); ``model``: this live model (holding exactly the version), else a rebuild (``classes``/``unsafe``)."""
        return export.export_version(self.store, ref, path, format, name, model, unsafe, classes)

    def remove(self, ref: str, name: str | None = None, force: bool = False) -> Version:
        """Remove version ``ref`` (protected: ``force``); HEADs on it move to its first parent."""
        return removal.remove_version(self.store, ref, name=name, force=force)

    def gc(self, keep: KeepPolicy = None, name: str | None = None, dry_run: bool = False, repack=False) -> GcResult:
        """Reclaim unused tensors, after the retention policy ``keep`` / a ``repack`` (operations.retention.gc)."""
        return retention.gc(self.store, keep, name, dry_run, repack)

    def du(self) -> UsageReport:
        """Per model: versions, logical size, bytes stored, what dedup, coding and deltas saved."""
        return usage.disk_usage(self.store)

    def verify(self) -> VerifyReport:
        """Re-hash every tensor of every version; report each damaged version and tensor."""
        return verify.verify_store(self.store)

    def reindex(self) -> int:
        """Rebuild the index from the snapshot, ref and note files; return the versions indexed."""
        return self.store.reindex()

    def audit_log(self, limit: int | None = None) -> AuditTrail:
        """The recorded operations, newest first (``limit``: only the last ``limit``)."""
        entries = list(self.audit.entries())
        entries.reverse()
        return AuditTrail(entries[:limit] if limit else entries)

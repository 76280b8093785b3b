"""``Repo``: the plain Python API over one store. It never imports IPython.

>>> from mvc_magics import Repo
>>> repo = Repo(".mvc")                                        # doctest: +SKIP
>>> v = repo.commit(model, "model", message="10 epochs", metrics={"val_mse": 0.9})  # doctest: +SKIP
>>> repo.checkout("best:val_mse", model)                       # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from . import resolver
from .adapters import adapter_for, adapter_named
from .adapters.base import match_state
from .audit_trail import AuditTrail
from .errors import (
    IntegrityError,
    ProtectedRefError,
    SignatureError,
    StoreError,
    TagExistsError,
    UnsupportedModelError,
)
from .faults import ensure_space, write_failure
from .hashing import HashesAhead, canonical_array, hashes_ahead, version_id
from .metadata import author, base_library_versions, validate_metrics, validate_params
from .names import validate_name
from .provenance import complete_provenance
from .signing import SignatureStatus, Signer, check_signature, signature_path, signer_from_env, write_signature
from .storage.audit import AuditLog
from .storage.index import Index
from .storage.snapshot import ManifestEntry, TensorReader, read_content
from .storage.staging import StagedCommit
from .storage.store import StoreLayout
from .version import CommitStats, StatusEntry, StatusReport, VerifyReport, Version, VersionLog

DEFAULT_DIRNAME = ".mvc"


def _known_hashes(adapter: Any, model: Any, state: Mapping[str, np.ndarray]) -> dict[str, str]:
    """Hashes the adapter can vouch for without rehashing (see ``KerasAdapter.known_hashes``)."""
    known = getattr(adapter, "known_hashes", None)
    return known(model, state) if known is not None else {}


def _remember_hashes(adapter: Any, model: Any, state: Mapping[str, np.ndarray], hashes: Mapping[str, str]) -> None:
    remember = getattr(adapter, "remember_hashes", None)
    if remember is not None:
        remember(model, state, hashes)


def _remember_loaded(adapter: Any, model: Any, state: Mapping[str, np.ndarray],
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


def default_store_path(notebook_path: str | os.PathLike | None = None) -> Path:
    """Where the store lives: ``$MVC_DIR``, else ``.mvc`` beside the notebook, else in the cwd."""
    env = os.environ.get("MVC_DIR")
    if env:
        return Path(env).expanduser()
    notebook = notebook_path or os.environ.get("JPY_SESSION_NAME")
    if notebook:
        folder = Path(notebook).expanduser().parent
        if folder.is_dir():
            return folder / DEFAULT_DIRNAME
    return Path.cwd() / DEFAULT_DIRNAME


class Repo:
    """A model version store in one folder (by default ``.mvc`` beside the notebook).

    Args:
        path: the store folder; None means :func:`default_store_path`.
        create: create the store when it does not exist yet.
    """

    #: Progress bars on long commits/checkouts: None shows one after about a second, True at
    #: once, False never (see :mod:`mvc_magics.progress`).
    progress: bool | None = None

    def __init__(self, path: str | os.PathLike | None = None, create: bool = True) -> None:
        self.path = Path(path).expanduser() if path is not None else default_store_path()
        self.layout = StoreLayout(self.path)
        self.layout.open(create=create)
        self.audit = AuditLog(self.layout.audit_path)
        if self.layout.readonly:
            self._open_readonly()
            return
        rebuild = not self.layout.index_path.exists()
        try:
            self.index = Index(self.layout.index_path)
            self.index.query("SELECT count(*) FROM versions")
        except IntegrityError:  # a damaged index is rebuilt from the snapshots
            if getattr(self, "index", None) is not None:
                self.index.close()
            self._discard_index()
            self.index = Index(self.layout.index_path)
            rebuild = True
        self.layout.on_stale_lock = self._recover_after_crash
        if rebuild:
            self.reindex()
        else:
            self._recover_unindexed()
            self.layout.recover_if_stale()

    def __repr__(self) -> str:
        return f"Repo({str(self.path)!r})"

    def close(self) -> None:
        """Close the index connection."""
        self.index.close()

    def __enter__(self) -> Repo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- commit -----------------------------------------------------------------------------

    def commit(
        self,
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
        """Store the model's current content as a version of ``name`` and return it.

        Only tensors the store does not have yet are written. Committing content that is already
        stored creates no new version: the existing one is returned, and ``metrics``/``tags`` are
        attached to it. The fit history's last epoch is captured as metrics (explicit ones win).
        """
        name = validate_name(name, "model name")
        tags = [validate_name(t, "tag") for t in tags]
        adapter = adapter_for(model)
        explicit = validate_metrics(metrics)
        params = validate_params(params)
        state = adapter.get_state(model)
        if not state:
            raise UnsupportedModelError(f"{name!r} has no variables to version")
        all_metrics = {**validate_metrics(adapter.fit_metrics(model)), **explicit}
        arrays = {key: canonical_array(value) for key, value in state.items()}
        # Hashing runs in worker threads from here on, overlapping the structure serialization
        # below and the writes of new tensors (see storage.staging); unchanged buffers are skipped.
        hashes = HashesAhead(arrays, _known_hashes(adapter, model, arrays))
        try:
            structure = adapter.structure(model)
        except BaseException:
            hashes.cancel()
            raise
        with self.layout.locked():
            staged = StagedCommit(self.layout.tmp, self._stored_object, self.progress,
                                  check_space=lambda nbytes: ensure_space(self.layout.tmp, nbytes, 1, self.path))
            try:
                staged.stage(arrays, description=f"commit {name}", hashes=hashes)
                vid = version_id(structure, staged.entries())
                for tag in tags:
                    self._check_tag_free(name, tag, vid, force=False)
                revived = self.layout.is_removed(vid)  # content of a removed version committed again
                existing = self._find(vid)
            except BaseException as exc:
                staged.discard()
                if isinstance(exc, OSError | RuntimeError):  # HDF5 could not write the staged tensors
                    raise StoreError(write_failure(exc, self.path)) from exc
                raise
            if existing is not None:
                staged.discard()
                self._attach(vid, name, all_metrics if metrics is None else explicit, tags)
                stats = CommitStats(False, 0, len(arrays), 0)
                self.audit.append(author(), "commit-existing", name, [vid], {"metrics": explicit})
            else:
                stats = self._write_version(
                    vid, name, adapter, staged, structure, message, all_metrics, params,
                    tags, provenance, parents, extra, model,
                )
                if revived:
                    self.layout.delete_tombstone(vid)
        _remember_hashes(adapter, model, arrays, staged.hashes)
        getattr(adapter, "mark_committed", lambda _model: None)(model)
        version = self.get(vid, name=name)
        version.stats = stats
        return version

    def _stored_object(self, digest: str) -> str | None:
        """The id of the snapshot file holding the tensor ``digest``, or None when it is not stored."""
        return self.index.has_tensors([digest]).get(digest)

    def _write_version(self, vid, name, adapter, staged, structure, message, metrics,
                       params, tags, provenance, parents, extra, model) -> CommitStats:
        # Bytes in this version's own path may belong to a retired file that the new file replaces.
        staged.claim_own(vid)
        manifest = staged.manifest(vid)
        if parents is None:
            head = self._head_id(name)
            parents = [head] if head and self._find(head) else []
        created = datetime.now(timezone.utc).isoformat(timespec="microseconds")
        extra_meta = adapter.extra_metadata(model)
        meta = {
            "name": name, "message": message or "", "parents": list(parents), "created": created,
            "author": author(), "metrics": metrics, "params": params, "framework": adapter.framework,
            "libraries": {**base_library_versions(), **adapter.library_versions()},
            "provenance": complete_provenance(provenance, extra_meta), "extra": {**extra_meta, **(extra or {})},
            # The tags asked for, so crash recovery can finish a commit killed before its ref files.
            "tags": list(tags),
        }
        written = staged.bytes_written
        # Order matters for crash safety: the snapshot is the point of no return; refs, index and
        # audit entry follow, and a holder killed anywhere after it is completed by the next one.
        final = self.layout.snapshot_path(vid)
        old_head = self.layout.read_head(name)
        placed, replaced = False, final.exists()  # a removed version's retired file it replaces
        try:
            signer = signer_from_env()  # a bad key configuration fails before the snapshot is placed
            text_bytes = len(json.dumps(meta, default=str)) + len(json.dumps(structure)) + 200 * len(manifest)
            ensure_space(self.layout.tmp, text_bytes, 4, self.path)
            staged.publish(final, vid, meta, structure, manifest)
            placed = True
            self._sign(vid, signer)
            for tag in tags:
                self.layout.write_tag(name, tag, vid)
            self.layout.write_head(name, vid)
            with self.index.transaction() as conn:
                Index.insert_version(conn, vid, name, created, meta, [e.to_json() for e in manifest], written)
                Index.set_metrics(conn, vid, metrics)
                conn.executemany("INSERT OR REPLACE INTO tags(name, tag, id, protected) VALUES(?, ?, ?, 0)",
                                 [(name, tag, vid) for tag in tags])
                conn.execute("INSERT OR REPLACE INTO heads(name, id) VALUES(?, ?)", (name, vid))
                self.audit.append(meta["author"], "commit", name, [vid],
                                  {"message": meta["message"], "tags": list(tags), "bytes_written": written})
        except BaseException as exc:
            if placed:
                self._undo_commit(vid, name, tags, old_head, keep_file=replaced)
            else:
                staged.discard()
            if isinstance(exc, OSError | RuntimeError | StoreError):
                raise StoreError(write_failure(exc, self.path)) from exc
            raise
        return CommitStats(True, staged.tensors_written, len(manifest) - staged.tensors_written, written)

    def _undo_commit(self, vid: str, name: str, tags: list[str], old_head: str | None, keep_file: bool) -> None:
        """Take back a commit that failed after its snapshot was placed (disk full, interrupt...)."""
        # The snapshot first: without it, leftover refs point at nothing and are ignored on reindex.
        # A file that replaced a removed version's retired file stays: other versions use its tensors.
        steps = [] if keep_file else [self.layout.snapshot_path(vid).unlink]
        steps.append(signature_path(self.layout.signatures, vid).unlink)
        steps += [lambda tag=tag: self.layout.delete_tag(name, tag) for tag in tags]
        if old_head:
            steps.append(lambda: self.layout.write_head(name, old_head))
        else:
            steps.append(self.layout.head_path(name).unlink)
        for step in steps:
            try:
                step()
            except FileNotFoundError:
                pass
            except BaseException:  # undo as much as possible; the original error is raised
                continue

    def _attach(self, vid: str, name: str, metrics: dict[str, float], tags: list[str]) -> None:
        """Attach metrics/tags to an existing version and make it the HEAD of ``name``."""
        if metrics:
            self.layout.write_note(vid, {"metrics": metrics})
        self._sign(vid)
        for tag in tags:
            self.layout.write_tag(name, tag, vid)
        # Re-committing an unchanged model is frequent: rewrite HEAD (two fsyncs) only if it moves.
        head_moves = self._head_file(name) != vid or self._head_id(name) != vid
        if head_moves:
            self.layout.write_head(name, vid)
        if not (metrics or tags or head_moves):
            return
        with self.index.transaction() as conn:
            Index.set_metrics(conn, vid, metrics)
            conn.executemany("INSERT OR REPLACE INTO tags(name, tag, id, protected) VALUES(?, ?, ?, 0)",
                             [(name, tag, vid) for tag in tags])
            conn.execute("INSERT OR REPLACE INTO heads(name, id) VALUES(?, ?)", (name, vid))

    # -- reading versions -------------------------------------------------------------------

    def _find(self, vid: str) -> tuple | None:
        rows = self.index.query("SELECT id FROM versions WHERE id = ?", (vid,))
        return rows[0] if rows else None

    def _head_file(self, name: str) -> str | None:
        """The id in the HEAD ref file of ``name`` (the truth the index caches), if readable."""
        try:
            return self.layout.head_path(name).read_text().strip() or None
        except (OSError, UnicodeDecodeError):
            return None

    def _head_id(self, name: str) -> str | None:
        rows = self.index.query("SELECT id FROM heads WHERE name = ?", (name,))
        return rows[0][0] if rows else None

    def get(self, vid: str, name: str | None = None) -> Version:
        """The :class:`Version` with full id ``vid``."""
        versions = resolver.load_versions(self.index, "v.id = ?", (vid,), head_name=name)
        if not versions:
            raise resolver.UnknownRefError(f"no version {vid[:12]} in this store")
        return versions[0]

    def models(self) -> list[str]:
        """Names of the models that have versions, in order of their first commit."""
        rows = self.index.query("SELECT name, min(seq) FROM versions GROUP BY name ORDER BY 2")
        heads = {r[0] for r in self.index.query("SELECT name FROM heads")}
        names = [r[0] for r in rows]
        return names + sorted(heads - set(names))

    def head(self, name: str) -> Version | None:
        """The version the model variable ``name`` is at (last commit or checkout), if any."""
        head = self._head_id(validate_name(name, "model name"))
        return self.get(head, name=name) if head and self._find(head) else None

    def log(self, name: str | None = None, limit: int | None = None) -> VersionLog:
        """Versions of ``name`` (all models when None), newest first."""
        if name is not None:
            validate_name(name, "model name")
            versions = resolver.load_versions(self.index, "v.name = ?", (name,), limit=limit, head_name=name)
        else:
            versions = resolver.load_versions(self.index, "1 = 1", (), limit=limit)
        return VersionLog(versions)

    def resolve(self, ref: str, name: str | None = None) -> Version:
        """The one version ``ref`` names (see :mod:`mvc_magics.refs`); errors list candidates."""
        if name is not None:
            validate_name(name, "model name")
        vid, model = resolver.resolve(self.index, ref, name)
        return self.get(vid, name=model)

    def load_state(self, version: Version | str, verify: bool = True) -> dict[str, np.ndarray]:
        """Every tensor of a version, re-hashed; :class:`IntegrityError` on any damage."""
        vid = version.id if isinstance(version, Version) else version
        manifest = self.manifest(vid)
        with TensorReader(self.layout.snapshot_path) as reader:
            return reader.read_all(manifest, verify=verify, owner=vid, progress=self.progress)

    def manifest(self, vid: str) -> list[ManifestEntry]:
        """The tensor entries of a version (from the index; no tensor bytes read)."""
        rows = self.index.query("SELECT manifest FROM versions WHERE id = ?", (vid,))
        if not rows:
            raise resolver.UnknownRefError(f"no version {vid[:12]} in this store")
        return [ManifestEntry.from_json(e) for e in json.loads(rows[0][0])]

    def structure(self, vid: str) -> object:
        """The stored model structure of a version (None when the model was not serializable)."""
        return read_content(self.layout.snapshot_path(vid)).structure

    # -- checkout ---------------------------------------------------------------------------

    def checkout(self, ref: str, model: Any = None, name: str | None = None, unsafe: bool = False,
                 require_signature: bool = False) -> Any:
        """Load version ``ref`` into ``model`` in place, or build a new model when ``model`` is None.

        In place, every shape is checked before the first assignment, so an error leaves the
        model exactly as it was. Every tensor is re-hashed; damaged data is refused. With
        ``require_signature`` a version without a valid signature is refused (see
        :mod:`mvc_magics.signing`). On a read-only store the HEAD is not recorded.
        """
        version = self.resolve(ref, name=name)
        target = name or version.name
        validate_name(target, "model name")
        if require_signature:
            self.require_valid_signature(version.id)
        state = self.load_state(version)
        if model is None:
            adapter = adapter_named(version.framework)
            result = adapter.build(self.structure(version.id), state, unsafe=unsafe)
            getattr(adapter, "restore_training_setup", lambda _m, _e: False)(result, version.extra)
        else:
            adapter = adapter_for(model)
            adapter.set_state(model, state, owned=True)  # state was read for this call
            _remember_loaded(adapter, model, state, self.manifest(version.id))
            result = model
        if self.layout.readonly:
            return result
        with self.layout.locked():
            self.layout.write_head(target, version.id)
            with self.index.transaction() as conn:
                conn.execute("INSERT OR REPLACE INTO heads(name, id) VALUES(?, ?)", (target, version.id))
            self.audit.append(author(), "checkout", target, [version.id], {"ref": ref, "rebuilt": model is None})
        return result

    # -- tags -------------------------------------------------------------------------------

    def _check_tag_free(self, name: str, tag: str, vid: str, force: bool) -> None:
        rows = self.index.query("SELECT id, protected FROM tags WHERE name = ? AND tag = ?", (name, tag))
        if rows and rows[0][0] != vid:
            if rows[0][1] and not force:
                raise ProtectedRefError(f"tag {tag!r} is protected (on {rows[0][0][:8]}); use --force to move it")
            if not force:
                raise TagExistsError(f"tag {tag!r} is already on {rows[0][0][:8]}; use --force to move it")

    def tag(self, ref: str, tag: str, name: str | None = None, force: bool = False,
            protect: bool | None = None) -> Version:
        """Put ``tag`` on the version ``ref`` names; moving an existing tag needs ``force``."""
        tag = validate_name(tag, "tag")
        version = self.resolve(ref, name=name)
        with self.layout.locked():
            self._check_tag_free(version.name, tag, version.id, force)
            rows = self.index.query("SELECT id, protected FROM tags WHERE name = ? AND tag = ?", (version.name, tag))
            previous = rows[0][0] if rows else None
            protected = bool(rows[0][1]) if rows and protect is None else bool(protect)
            self.layout.write_tag(version.name, tag, version.id, protected)
            with self.index.transaction() as conn:
                conn.execute("INSERT OR REPLACE INTO tags(name, tag, id, protected) VALUES(?, ?, ?, ?)",
                             (version.name, tag, version.id, int(protected)))
            self.audit.append(author(), "tag", version.name, [version.id],
                              {"tag": tag, "previous": previous, "force": force, "protected": protected})
        return self.get(version.id, name=version.name)

    def untag(self, tag: str, name: str | None = None, force: bool = False) -> None:
        """Remove ``tag`` (protected tags need ``force``)."""
        tag = validate_name(tag, "tag")
        model, vid, protected = resolver.find_tag(self.index, tag, name)
        if protected and not force:
            raise ProtectedRefError(f"tag {tag!r} is protected; use --force to delete it")
        with self.layout.locked():
            self.layout.delete_tag(model, tag)
            with self.index.transaction() as conn:
                conn.execute("DELETE FROM tags WHERE name = ? AND tag = ?", (model, tag))
            self.audit.append(author(), "untag", model, [vid], {"tag": tag})

    # -- status -----------------------------------------------------------------------------

    def status(self, namespace: Mapping[str, Any] | None = None) -> StatusReport:
        """For each model with a HEAD: is the variable in ``namespace``, and did its weights change?"""
        namespace = namespace or {}
        report = StatusReport()
        for name in self.models():
            head = self.head(name)
            obj = namespace.get(name)
            if obj is None:
                report.append(StatusEntry(name, head, None, present=False))
                continue
            report.append(StatusEntry(name, head, self.is_modified(obj, head)))
        return report

    def is_modified(self, model: Any, head: Version | None) -> bool:
        """True when ``model``'s tensors differ from those of ``head`` (hash comparison)."""
        if head is None:
            return True
        try:
            adapter = adapter_for(model)
            state = adapter.get_state(model)
        except UnsupportedModelError:
            return True
        rows = self.index.query("SELECT manifest FROM versions WHERE id = ?", (head.id,))
        if not rows:
            return True
        stored = {e.get("name"): e.get("hash") for e in json.loads(rows[0][0])}  # only compared
        if len(state) != len(stored):
            return True
        # Names that differ (a re-run cell renumbered the layers) are matched by position.
        expected = stored if set(state) == set(stored) else dict(zip(state, stored.values(), strict=True))
        computed = {}
        for key, digest in hashes_ahead(state, _known_hashes(adapter, model, state)):
            if digest != expected[key]:
                return True  # stops hashing at the first difference
            computed[key] = digest
        _remember_hashes(adapter, model, state, computed)
        return False

    # -- maintenance ------------------------------------------------------------------------

    def verify(self) -> VerifyReport:
        """Re-hash every tensor of every version; report each damaged version and tensor."""
        from .maintenance import verify_store

        return verify_store(self)

    def reindex(self) -> int:
        """Rebuild the index from the snapshot, ref and note files; return the versions indexed."""
        from .maintenance import rebuild_index

        with self.layout.locked():
            try:
                count = rebuild_index(self)
            except IntegrityError:  # the index file itself is damaged: start it afresh
                self.index.close()
                self._discard_index()
                self.index = Index(self.layout.index_path)
                count = rebuild_index(self)
            return count

    def _recover_unindexed(self) -> None:
        """Index snapshot files a killed process renamed into place but did not index."""
        from .maintenance import index_missing_snapshots

        on_disk = sum(1 for _ in self.layout.snapshot_files())
        if on_disk != self.index.count():
            with self.layout.locked():
                index_missing_snapshots(self)

    def _discard_index(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            path = Path(str(self.layout.index_path) + suffix)
            if path.exists():
                try:
                    path.unlink()
                except OSError as exc:
                    raise IntegrityError(f"cannot remove the damaged index {path}: {exc}") from exc

    # -- compare and diff -------------------------------------------------------------------

    def compare(self, refs: Iterable[str] | str | None = None, name: str | None = None,
                weights: Mapping[str, float] | None = None, baseline: str | None = None,
                directions: Mapping[str, str] | None = None, limit: int | None = 20,
                allow_mixed: bool = False):
        """Compare versions by their metrics: a :class:`~mvc_magics.compare.Comparison`.

        ``refs`` None means every version of ``name`` (the most recent ``limit``). ``weights``
        maps metric -> weight (default: every metric 1; when given, unnamed metrics weigh 0);
        ``directions`` overrides the inferred ``"min"``/``"max"``; ``baseline`` (a ref, default the
        oldest compared version) is what "D vs base" is measured against.
        """
        from .selection import compare_in

        if name is not None:
            validate_name(name, "model name")
        refs = list(refs) if refs is not None and not isinstance(refs, str) else refs
        return compare_in(self, refs, name, weights, baseline, directions, limit, allow_mixed)

    def diff(self, a: str, b: str, name: str | None = None, allow_mixed: bool = False):
        """Parameter diff of versions ``a`` -> ``b``: a :class:`~mvc_magics.diff.Diff`.

        Tensors with equal hashes are unchanged and their bytes are never read.
        """
        from .diff import diff_versions

        if name is not None:
            validate_name(name, "model name")
        return diff_versions(self, a, b, name, allow_mixed)

    def compare_panel(self, refs: Iterable[str] | None = None, name: str | None = None,
                      weights: Mapping[str, float] | None = None, baseline: str | None = None,
                      directions: Mapping[str, str] | None = None, namespace: dict | None = None,
                      limit: int | None = 20):
        """An ipywidgets :class:`~mvc_magics.widgets.ComparePanel` over this store (needs ipywidgets)."""
        from .widgets.compare_panel import ComparePanel

        return ComparePanel(self, refs=refs, name=name, weights=weights, baseline=baseline,
                            directions=directions, namespace=namespace, limit=limit)

    # -- remotes, export, removal and gc (issue 8) ------------------------------------------

    def add_remote(self, name: str, url: str) -> str:
        """Configure remote ``name`` at an fsspec ``url`` (``s3://bucket/prefix``, ``file:///path``...).

        The URL is stored in ``remotes.json``; a URL with credentials in it is refused (they come
        from the environment or the fsspec/cloud SDK configuration). Returns the normalized URL.
        """
        from .remote import add_remote

        return add_remote(self, name, url)

    def remotes(self) -> dict[str, str]:
        """Configured remotes, name -> URL."""
        from .remote import load_remotes

        return load_remotes(self)

    def remove_remote(self, name: str) -> None:
        """Forget remote ``name`` (nothing on the remote is touched)."""
        from .remote import remove_remote

        remove_remote(self, name)

    def push(self, remote: str | None = None, refs: Iterable[str] | None = None, force: bool = False,
             progress: bool | None = None):
        """Send all versions (or ``refs`` and their ancestors) and their tags to ``remote``.

        Idempotent and resumable; a tag the remote has on another version raises
        :class:`~mvc_magics.errors.RemoteConflictError` after everything else was sent (``force``
        overwrites it). Returns a :class:`~mvc_magics.remote.TransferReport`.
        """
        from .remote import push

        return push(self, remote, refs, force=force, progress=progress)

    def pull(self, remote: str | None = None, refs: Iterable[str] | None = None, force: bool = False,
             progress: bool | None = None):
        """Fetch all versions (or ``refs``: remote tags or id prefixes, with ancestors) and tags.

        Every tensor is re-hashed before a version becomes visible here. A local tag on another
        version raises :class:`~mvc_magics.errors.RemoteConflictError` (``force`` takes the remote's).
        """
        from .remote import pull

        return pull(self, remote, refs, force=force, progress=progress)

    @classmethod
    def clone(cls, url: str, path: str | os.PathLike, progress: bool | None = None) -> Repo:
        """A new store at ``path`` with remote ``origin`` = ``url`` and everything pulled from it."""
        from .errors import StoreError

        target = Path(path).expanduser()
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise StoreError(f"{target} already exists and is not empty; clone into a new folder")
        repo = cls(target)
        try:
            repo.add_remote("origin", url)
            repo.pull("origin", progress=progress)
        except BaseException:
            repo.close()
            import shutil

            shutil.rmtree(target, ignore_errors=True)
            raise
        return repo

    def export(self, ref: str, path: str | os.PathLike, format: str = "keras", name: str | None = None) -> Path:
        """Write version ``ref`` for serving: ``keras`` (.keras file), ``savedmodel`` (TF SavedModel
        folder via ``model.export``) or ``weights-h5`` (.weights.h5 for ``load_weights``)."""
        from .export import export_version

        return export_version(self, ref, path, format, name=name)

    def remove(self, ref: str, name: str | None = None, force: bool = False) -> Version:
        """Remove version ``ref``: its tags go, HEADs on it move to its first parent (or are cleared).

        A version with a protected tag needs ``force``. The space is reclaimed by :meth:`gc`.
        """
        from .removal import remove_version

        return remove_version(self, ref, name=name, force=force)

    def gc(self):
        """Reclaim the tensors no remaining version uses; returns a report (``int(report)``: bytes freed)."""
        from .removal import collect_garbage

        return collect_garbage(self)

    # -- merge ------------------------------------------------------------------------------

    def merge(self, refs: Iterable[str | Version], weights: Iterable[float] | None = None,
              method: str = "average", eval_fn: Any = None, name: str | None = None,
              message: str | None = None, into: Any = None, **options: Any) -> Version:
        """Merge versions into a new version whose parents are all the inputs.

        ``method``: ``"average"`` (weighted mean of the float tensors; weights normalized, default
        uniform: a uniform soup), ``"greedy"`` (greedy soup ranked and scored by ``eval_fn(model)``,
        higher is better; ``metric="val_accuracy"`` ranks by a stored metric instead), ``"ensemble"``
        (a Keras model averaging the members' outputs) or ``"vote"`` (their majority class).
        Refs are resolved in ``name``'s history; the result is committed as ``name`` (default: the
        first input's model; ``<model>_ensemble``/``<model>_vote`` for ensembles, or
        ``result_name=``). ``into`` loads the result into a live model, all or nothing. Other
        options: ``metric``, ``model`` (a live model to hold the merge when the structure cannot
        be rebuilt), ``result_name``, ``tags``, ``score_name``, ``provenance``. Conflicts raise
        :class:`~mvc_magics.errors.MergeConflictError` before anything is written.

        >>> soup = repo.merge(["ft1", "ft2", "ft3"], name="model", into=model)   # doctest: +SKIP
        >>> soup.report.weights                                                   # doctest: +SKIP
        """
        from .merge import merge_versions

        refs = refs if isinstance(refs, str) else list(refs)
        weights = weights if weights is None or isinstance(weights, str) else list(weights)
        return merge_versions(self, refs, weights, method, eval_fn, name, message, into, **options)

    def merge_preview(self, refs: Iterable[str | Version], weights: Iterable[float] | None = None,
                      method: str = "average", eval_fn: Any = None, name: str | None = None,
                      **options: Any) -> Any:
        """The merge computed (and scored with ``eval_fn``) but not committed: a ``MergePreview``
        with ``.model`` (a live model holding the result), ``.score`` and ``.report``."""
        from .merge import merge_preview

        refs = refs if isinstance(refs, str) else list(refs)
        weights = weights if weights is None or isinstance(weights, str) else list(weights)
        return merge_preview(self, refs, weights, method, eval_fn, name, **options)

    def merge_panel(self, refs: Iterable[str | Version], name: str | None = None,
                    namespace: Mapping[str, Any] | None = None, **options: Any) -> Any:
        """An ipywidgets panel to weigh, preview and commit a merge of ``refs``."""
        from .widgets.merge_panel import MergePanel

        return MergePanel(self, list(refs), name=name, namespace=namespace, **options)

    # -- reliability and security --

    def _open_readonly(self) -> None:
        if not self.layout.index_path.exists():
            raise StoreError(f"the store {self.path} is read-only and has no index to read (it cannot be "
                             "rebuilt without write access)")
        self.index = Index(self.layout.index_path, readonly=True)

    def _recover_after_crash(self, dead_holder: str) -> None:
        from .maintenance import recover_after_crash

        recover_after_crash(self, dead_holder)

    def audit_log(self, limit: int | None = None) -> AuditTrail:
        """The recorded operations, newest first (``limit``: only the last ``limit``)."""
        entries = list(self.audit.entries())
        entries.reverse()
        return AuditTrail(entries[:limit] if limit else entries)

    def _sign(self, vid: str, signer: Signer | None = None) -> None:
        signer = signer or signer_from_env()
        if signer is not None and signer.can_sign:
            write_signature(self.layout.signatures, self.layout.tmp, signer, vid)

    def sign_versions(self) -> list[str]:
        """Sign every unsigned version with the configured key; return the ids signed."""
        signer = signer_from_env()
        if signer is None:
            raise SignatureError("no signing key: set MVC_SIGNING_KEY or MVC_SIGNING_KEY_FILE (a private key)")
        if not signer.can_sign:
            raise SignatureError("the configured key is a public key: it checks signatures but cannot sign")
        signed = []
        with self.layout.locked():
            for vid in self.index.version_ids():
                if write_signature(self.layout.signatures, self.layout.tmp, signer, vid):
                    signed.append(vid)
            self.audit.append(author(), "sign", None, signed, {"key": signer.key_id, "algorithm": signer.algorithm})
        return signed

    def signature_status(self, ref: str, name: str | None = None) -> SignatureStatus:
        """``valid``, ``unsigned``, ``bad`` or ``unchecked`` (no key configured) for version ``ref``."""
        version = self.resolve(ref, name=name)
        return check_signature(self.layout.signatures, signer_from_env(), version.id)

    def require_valid_signature(self, vid: str) -> None:
        """Raise :class:`SignatureError` unless version ``vid`` has a valid signature."""
        signer = signer_from_env()
        if signer is None:
            raise SignatureError("a valid signature is required but no key is configured to check it "
                                 "(set MVC_SIGNING_KEY or MVC_SIGNING_KEY_FILE)")
        status = check_signature(self.layout.signatures, signer, vid)
        if status.state != "valid":
            raise SignatureError(f"version {vid[:12]} refused: {status.detail}")

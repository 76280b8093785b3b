"""Reading versions: by id or ref, the log, the models and their HEADs, and a version's tensors."""

from __future__ import annotations

import itertools

import numpy as np

from ..core.names import head_owner, validate_name
from ..core.version import Version, VersionLog
from ..errors import UnknownRefError
from ..storage.local.store import Store
from ..storage.snapshots.snapshot import TensorReader
from . import lookup


def get(store: Store, vid: str, name: str | None = None) -> Version:
    """The :class:`Version` with full id ``vid`` (``name``: whose HEAD marks ``is_head``; a version in
    ``name``'s history is named by it, with its tags there)."""
    versions = lookup.load_versions(store.index, "v.id = ?", (vid,), head_name=name, workspace=store.workspace,
                                     legacy=store.legacy_workspace, history=name) if name else []
    if not versions:
        versions = lookup.load_versions(store.index, "v.id = ?", (vid,), head_name=name,
                                         workspace=store.workspace, legacy=store.legacy_workspace)
    if not versions:
        raise UnknownRefError(f"no version {vid[:12]} in this store")
    return versions[0]


def resolve(store: Store, ref: str, name: str | None = None) -> Version:
    """The one version ``ref`` names within ``name``'s history (see :mod:`mvc_magics.core.refs`)."""
    if name is not None:
        validate_name(name, "model name")
    vid, model = lookup.resolve(store.index, ref, name, store.workspace, store.legacy_workspace)
    return get(store, vid, name=model)


def models(store: Store) -> list[str]:
    """Names of the models that have versions (their histories), in order of their first version
    (then HEAD-only ones)."""
    rows = store.index.query("SELECT name, min(ord) FROM members GROUP BY name ORDER BY 2, 1")
    names: list[str] = []
    for _, group in itertools.groupby(rows, key=lambda row: row[1]):
        tied = list(group)
        if len(tied) > 1:  # histories starting at one version: the one committed as it first, then those it joined
            tied.sort(key=lambda row: not store.index.query(
                "SELECT 1 FROM versions WHERE name = ? AND ord IS ? LIMIT 1", row))
        names += [row[0] for row in tied]
    heads = {head_owner(r[0])[0] for r in store.index.query("SELECT name FROM heads")}
    return names + sorted(heads - set(names))


def head(store: Store, name: str) -> Version | None:
    """The version the model variable ``name`` is at (last commit or checkout), if any."""
    vid = store.head_id(validate_name(name, "model name"))
    return get(store, vid, name=name) if vid and store.has_version(vid) else None


def log(store: Store, name: str | None = None, limit: int | None = None) -> VersionLog:
    """Versions of ``name`` (all models when None), newest first."""
    if name is None:
        return VersionLog(lookup.load_versions(store.index, "1 = 1", (), limit=limit, workspace=store.workspace,
                                               legacy=store.legacy_workspace))
    validate_name(name, "model name")
    return VersionLog(lookup.load_versions(store.index, "1 = 1", (), limit=limit, head_name=name,
                                           workspace=store.workspace, legacy=store.legacy_workspace, history=name))


def load_state(store: Store, version: Version | str, verify: bool = True) -> dict[str, np.ndarray]:
    """Every tensor of a version, re-hashed; :class:`IntegrityError` on any damage."""
    vid = version.id if isinstance(version, Version) else version
    manifest = store.manifest(vid)
    with TensorReader(store.layout.snapshot_path) as reader:
        return reader.read_all(manifest, verify=verify, owner=vid, progress=store.progress)


def structure(store: Store, vid: str) -> object:
    """The stored model structure of a version, checked against its id (None when not serializable)."""
    return store.structure(vid)


def tag_names(store: Store, name: str | None = None) -> list[str]:
    """Tags of model ``name`` (of every model when None), sorted."""
    where, params = ("WHERE name = ?", (name,)) if name else ("", ())
    return [r[0] for r in store.index.query(f"SELECT DISTINCT tag FROM tags {where} ORDER BY tag", params)]


def ref_names(store: Store, name: str | None = None) -> list[str]:
    """Refs worth offering for ``name`` (all models when None): tags, HEAD, latest, best:METRIC, ids."""
    where, params = ("WHERE name = ?", (name,)) if name else ("", ())
    tags = tag_names(store, name)
    count = store.index.query(f"SELECT count(*) FROM members {where}", params)[0][0]
    if not count:
        return tags
    special = ["HEAD", "latest"] + (["HEAD~1", "latest~1"] if count > 1 else [])
    metric_sql = ("SELECT DISTINCT m.key FROM metrics m JOIN members n ON n.id = m.id "
                  + ("WHERE n.name = ? " if name else "") + "ORDER BY 1")
    best = [f"best:{r[0]}" for r in store.index.query(metric_sql, params)]
    ids = [v.short_id for v in log(store, name, limit=50)]
    return list(dict.fromkeys(tags + special + best + ids))

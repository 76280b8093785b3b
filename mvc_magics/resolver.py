"""Turning refs into versions, and index rows into :class:`Version` objects."""

from __future__ import annotations

import json
from datetime import datetime

from .errors import AmbiguousRefError, UnknownRefError
from .hashing import SHORT_ID_LENGTH
from .refs import parse_ref
from .storage.index import Index
from .version import Version

__all__ = ["UnknownRefError", "find_tag", "load_versions", "resolve", "short_ids"]


def short_ids(index: Index, ids: list[str]) -> dict[str, str]:
    """Shortest unique prefix (at least 8 hex digits) of each id among all ids in the store."""
    result: dict[str, str] = {}
    for vid in ids:
        length = SHORT_ID_LENGTH
        prefix = vid[:length]
        rows = index.query("SELECT id FROM versions WHERE id >= ? AND id < ? LIMIT 50", (prefix, prefix + "g"))
        others = [r[0] for r in rows if r[0] != vid]
        while others and length < len(vid):
            length += 1
            others = [o for o in others if o[:length] == vid[:length]]
        result[vid] = vid[:length]
    return result


def load_versions(index: Index, where: str, params: tuple, limit: int | None = None,
                  head_name: str | None = None) -> list[Version]:
    """Versions matching a SQL condition on ``versions v``, newest first, with tags and metrics."""
    sql = (f"SELECT v.id, v.name, v.meta, v.nbytes, v.manifest FROM versions v WHERE {where} "
           "ORDER BY v.seq DESC")
    if limit:
        sql += f" LIMIT {int(limit)}"
    rows = index.query(sql, params)
    if not rows:
        return []
    ids = [r[0] for r in rows]
    metrics: dict[str, dict[str, float]] = {vid: {} for vid in ids}
    tags: dict[str, list[str]] = {vid: [] for vid in ids}
    protected: dict[str, list[str]] = {vid: [] for vid in ids}
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        marks = ",".join("?" * len(chunk))
        for vid, key, text in index.query(f"SELECT id, key, text FROM metrics WHERE id IN ({marks})", chunk):
            metrics[vid][key] = float(text)
        for vid, tag, flag in index.query(f"SELECT id, tag, protected FROM tags WHERE id IN ({marks}) ORDER BY tag",
                                          chunk):
            tags[vid].append(tag)
            if flag:
                protected[vid].append(tag)
    heads = dict(index.query("SELECT name, id FROM heads"))
    shorts = short_ids(index, ids)
    versions = []
    for vid, name, meta_text, nbytes, manifest_text in rows:
        meta = json.loads(meta_text)
        owner = head_name or name
        versions.append(Version(
            id=vid, name=name, parents=tuple(meta.get("parents", [])), message=meta.get("message", ""),
            created=datetime.fromisoformat(meta["created"]), author=meta.get("author", ""),
            metrics=metrics[vid], params=dict(meta.get("params", {})), tags=tuple(tags[vid]),
            protected_tags=tuple(protected[vid]), short_id=shorts[vid], framework=meta.get("framework", ""),
            libraries=dict(meta.get("libraries", {})), provenance=dict(meta.get("provenance", {})),
            extra=dict(meta.get("extra", {})), nbytes=int(nbytes),
            n_tensors=manifest_text.count('"hash"'), is_head=heads.get(owner) == vid,
        ))
    return versions


def _only_model(index: Index) -> str | None:
    names = [r[0] for r in index.query("SELECT DISTINCT name FROM versions LIMIT 2")]
    return names[0] if len(names) == 1 else None


def _need_model(index: Index, ref: str) -> str:
    name = _only_model(index)
    if name is not None:
        return name
    names = [r[0] for r in index.query("SELECT DISTINCT name FROM versions ORDER BY name")]
    if not names:
        raise UnknownRefError(f"no versions yet: nothing matches {ref!r} (commit a model first)")
    raise UnknownRefError(
        f"{ref!r} is ambiguous: the store holds several models ({', '.join(names[:8])}); say which",
        names,
    )


def resolve(index: Index, text: str, name: str | None) -> tuple[str, str]:
    """(version id, model name) for a ref within ``name``'s history."""
    ref = parse_ref(text)
    if ref.kind == "name" and ref.looks_like_id and name is None:
        vid = _resolve_name(index, ref.value, None, text)  # an id prefix needs no model
        model = index.query("SELECT name FROM versions WHERE id = ?", (vid,))[0][0]
    else:
        model = name or _need_model(index, text)
        if ref.kind == "head":
            rows = index.query("SELECT id FROM heads WHERE name = ?", (model,))
            if not rows:
                raise UnknownRefError(f"{model!r} has no HEAD yet (commit or check out a version first)")
            vid = rows[0][0]
        elif ref.kind == "latest":
            rows = index.query("SELECT id FROM versions WHERE name = ? ORDER BY seq DESC LIMIT 1", (model,))
            if not rows:
                raise UnknownRefError(f"{model!r} has no versions yet")
            vid = rows[0][0]
        elif ref.kind == "best":
            vid = _resolve_best(index, model, ref.metric, ref.direction or "max", text)
        else:
            vid = _resolve_name(index, ref.value, model, text)
    for step in range(ref.ancestor):
        rows = index.query("SELECT meta FROM versions WHERE id = ?", (vid,))
        parents = json.loads(rows[0][0]).get("parents", []) if rows else []
        if not parents:
            raise UnknownRefError(f"{text!r}: history of {model!r} has only {step + 1} version(s) on that line")
        vid = parents[0]
    return vid, model


def _resolve_best(index: Index, model: str, metric: str, direction: str, text: str) -> str:
    order = "ASC" if direction == "min" else "DESC"
    rows = index.query(
        f"SELECT v.id FROM versions v JOIN metrics m ON m.id = v.id WHERE v.name = ? AND m.key = ? "
        f"AND m.value IS NOT NULL ORDER BY m.value {order}, v.seq DESC LIMIT 1",
        (model, metric),
    )
    if rows:
        return rows[0][0]
    known = [r[0] for r in index.query(
        "SELECT DISTINCT m.key FROM metrics m JOIN versions v ON v.id = m.id WHERE v.name = ? ORDER BY 1",
        (model,))]
    hint = f"known metrics: {', '.join(known)}" if known else "no version of it has metrics"
    raise UnknownRefError(f"{text!r}: no version of {model!r} has a finite {metric!r} ({hint})", known)


def _resolve_name(index: Index, value: str, model: str | None, text: str) -> str:
    if model is not None:
        rows = index.query("SELECT id FROM tags WHERE name = ? AND tag = ?", (model, value))
        if rows:
            return rows[0][0]
    else:
        rows = index.query("SELECT id FROM tags WHERE tag = ?", (value,))
        if len(rows) == 1:
            return rows[0][0]
    if value.lower() == value and all(c in "0123456789abcdef" for c in value) and len(value) >= 4:
        cond, params = "id >= ? AND id < ?", [value, value + "g"]
        if model is not None and len(value) < 64:  # a full id names one version in any history
            cond += " AND name = ?"
            params.append(model)
        rows = index.query(f"SELECT id FROM versions WHERE {cond} LIMIT 20", params)
        if len(rows) == 1:
            return rows[0][0]
        if len(rows) > 1:
            ids = [r[0] for r in rows]
            raise AmbiguousRefError(
                f"{text!r} matches {len(ids)} versions: {', '.join(i[:12] for i in ids[:8])}; give more digits",
                ids,
            )
    where = f" of {model!r}" if model else ""
    tags = [r[0] for r in index.query(
        "SELECT tag FROM tags" + (" WHERE name = ?" if model else "") + " ORDER BY tag",
        (model,) if model else ())]
    hint = f"; tags{where}: {', '.join(tags[:10])}" if tags else ""
    raise UnknownRefError(
        f"no version{where} matches {text!r} (not a tag, id prefix, latest, HEAD~N or best:METRIC){hint}",
        tags,
    )


def find_tag(index: Index, tag: str, name: str | None) -> tuple[str, str, bool]:
    """(model, version id, protected) of ``tag``; the model must be given if several have it."""
    if name is not None:
        rows = index.query("SELECT name, id, protected FROM tags WHERE name = ? AND tag = ?", (name, tag))
    else:
        rows = index.query("SELECT name, id, protected FROM tags WHERE tag = ?", (tag,))
    if not rows:
        raise UnknownRefError(f"no tag {tag!r}" + (f" on {name!r}" if name else ""))
    if len(rows) > 1:
        names = [r[0] for r in rows]
        raise AmbiguousRefError(f"tag {tag!r} exists on several models ({', '.join(names)}); say which", names)
    return rows[0][0], rows[0][1], bool(rows[0][2])

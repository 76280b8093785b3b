"""Turning refs into versions, and index rows into :class:`Version` objects."""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from ..core.hashing import SHORT_ID_LENGTH
from ..core.meta_check import neutralise
from ..core.names import DEFAULT_WORKSPACE, head_key, head_owner
from ..core.refs import parse_ref
from ..core.version import Version
from ..errors import AmbiguousRefError, IntegrityError, MVCError, UnknownRefError
from ..storage.local.index import Index

__all__ = ["UnknownRefError", "find_tag", "load_versions", "resolve", "short_ids"]


def short_ids(index: Index, ids: list[str]) -> dict[str, str]:
    """Shortest unique prefix (at least 8 hex digits) of each id among all ids in the store.

    An id's shortest unique prefix only depends on its neighbours in sorted order, so a long
    list reads every id once (one query) instead of querying per id.
    """
    if not ids:
        return {}
    if len(ids) <= _PER_ID_QUERIES:
        neighbours = {}
        for vid in ids:
            before = index.query("SELECT max(id) FROM versions WHERE id < ?", (vid,))[0][0]
            after = index.query("SELECT min(id) FROM versions WHERE id > ?", (vid,))[0][0]
            neighbours[vid] = (before, after)
    else:
        every = [row[0] for row in index.query("SELECT id FROM versions ORDER BY id")]
        neighbours = {}
        for vid in ids:
            i = bisect.bisect_left(every, vid)
            j = i + 1 if i < len(every) and every[i] == vid else i
            neighbours[vid] = (every[i - 1] if i else None, every[j] if j < len(every) else None)
    return {vid: vid[:_unique_length(vid, *neighbours[vid])] for vid in ids}


# Up to this many ids, two indexed lookups per id beat reading every id of a large store.
_PER_ID_QUERIES = 64


def _common_prefix(a: str, b: str | None) -> int:
    if not b:
        return 0
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _unique_length(vid: str, before: str | None, after: str | None) -> int:
    head = vid[:SHORT_ID_LENGTH]
    if (before is None or before[:SHORT_ID_LENGTH] != head) and (after is None or after[:SHORT_ID_LENGTH] != head):
        return SHORT_ID_LENGTH  # the common case: no neighbour shares the first 8 digits
    shared = max(_common_prefix(vid, before), _common_prefix(vid, after))
    return min(len(vid), max(SHORT_ID_LENGTH, shared + 1))


def load_versions(index: Index, where: str, params: tuple, limit: int | None = None,
                  head_name: str | None = None, workspace: str | None = None,
                  legacy: str | None = None, history: str | None = None) -> list[Version]:
    """Versions matching a SQL condition on ``versions v``, newest first, with tags and metrics,
    all read in one read transaction (one consistent snapshot while another process commits).
    ``history``: only the versions in that model's history (see
    :mod:`~mvc_magics.storage.local.histories`), each named by it, with its tags.
    ``is_head``: the HEAD of ``head_name`` (default: the version's model) in notebook ``workspace``
    (or, for a model that has none under it, under the notebook's ``legacy`` key)."""
    with index.reading(), _damaged_rows(index):
        return _load_versions(index, where, params, limit, head_name, workspace, legacy, history)


def in_history(name: str) -> tuple[str, tuple]:
    """The SQL condition (on ``versions v``) and its parameters for "in ``name``'s history"."""
    return "v.id IN (SELECT id FROM members WHERE name = ?)", (name,)


def _load_versions(index: Index, where: str, params: tuple, limit: int | None,
                   head_name: str | None, workspace: str | None = None,
                   legacy: str | None = None, history: str | None = None) -> list[Version]:
    """A handful of queries whatever the number of versions. A version's row never changes once
    inserted (rows are only added and deleted, and ``seq`` is never reused), so its parsed
    metadata is kept per index connection and a repeated ``log`` reads only ids, metrics and tags.
    """
    whole = where == "1 = 1"
    if history is None:
        source, order, named = "versions v", "v.ord DESC, v.id DESC", "v.name"
    else:  # read in the history's order from its own SQL index (members_ord)
        source, order, named = "members n JOIN versions v ON v.id = n.id", "n.ord DESC, n.id DESC", "n.name"
        where, params = f"n.name = ? AND ({where})", (history, *params)
    selection = f"SELECT v.id FROM {source} WHERE {where} ORDER BY {order}"
    if limit:
        selection += f" LIMIT {int(limit)}"
    rows = index.query(f"SELECT v.seq, v.id, {named} FROM {source} WHERE {where} ORDER BY {order}"
                       + (f" LIMIT {int(limit)}" if limit else ""), params)
    if not rows:
        return []
    parsed = _parsed_rows(index, [r[0] for r in rows])
    ids = [r[1] for r in rows]
    metrics: dict[str, dict[str, float]] = {vid: {} for vid in ids}
    tags: dict[str, list[str]] = {vid: [] for vid in ids}
    protected: dict[str, list[str]] = {vid: [] for vid in ids}
    # In one history, a version shows that history's tags (the ones its refs resolve).
    tag_params = params if history is None else (*params, history)
    own_tags = "" if history is None else " AND t.name = ?"
    if limit:
        metric_sql = f"SELECT id, key, text FROM metrics WHERE id IN ({selection})"
        tag_sql = f"SELECT t.id, t.tag, t.protected FROM tags t WHERE t.id IN ({selection}){own_tags} ORDER BY t.tag"
    else:  # every matching version: a join reads the index directly, no list of ids is built
        # A whole history needs no versions row to find its metrics: its members name them.
        joined = ("members n JOIN metrics m ON m.id = n.id" if history and whole
                  else f"{source} JOIN metrics m ON m.id = v.id")
        metric_sql = f"SELECT m.id, m.key, m.text FROM {joined} WHERE {where}"
        tag_sql = (f"SELECT t.id, t.tag, t.protected FROM {source} JOIN tags t ON t.id = v.id WHERE {where}"
                   f"{own_tags} ORDER BY t.tag")
    for vid, key, text in index.query(metric_sql, params):
        metrics[vid][key] = float(text)
    for vid, tag, flag in index.query(tag_sql, tag_params):
        tags[vid].append(tag)
        if flag:
            protected[vid].append(tag)
    heads: dict[str, list[tuple[str, str | None]]] = {}  # version id -> (model, notebook) of HEADs on it
    mine: set[str] = set()  # models with a HEAD under this notebook's own key
    for key, head_id in index.query("SELECT name, id FROM heads"):
        owner_key = head_owner(key)
        heads.setdefault(head_id, []).append(owner_key)
        if owner_key[1] == workspace:
            mine.add(owner_key[0])
    shorts = short_ids(index, ids)
    versions = []
    for seq, vid, name in rows:
        parents, message, created, author, run_params, framework, libraries, provenance, extra, nbytes, count = \
            parsed[seq]
        owner = head_name or name
        versions.append(Version(  # fresh top-level dicts: callers may edit a Version's fields
            id=vid, name=name, parents=parents, message=message, created=created, author=author,
            metrics=metrics[vid], params=dict(run_params), tags=tuple(tags[vid]),
            protected_tags=tuple(protected[vid]), short_id=shorts[vid], framework=framework,
            libraries=dict(libraries), provenance=dict(provenance), extra=dict(extra), nbytes=nbytes,
            n_tensors=count, is_head=(owner, workspace) in heads.get(vid, ()) or (
                legacy is not None and owner not in mine and (owner, legacy) in heads.get(vid, ())),
            heads=tuple(sorted(ws or DEFAULT_WORKSPACE for m, ws in heads.get(vid, ())
                               if m == name and (m, ws) != (owner, workspace))),
        ))
    return versions


# Parsed rows kept per index connection (a bounded cache: cleared when it grows past this).
_PARSED_LIMIT = 50_000


def _parsed_rows(index: Index, seqs: list[int]) -> dict[int, tuple]:
    """seq -> the immutable fields of that version row, parsing only rows not seen before."""
    cache: dict[int, tuple] = index.__dict__.setdefault("_parsed_versions", {})
    missing = [seq for seq in seqs if seq not in cache]
    if len(cache) + len(missing) > _PARSED_LIMIT:
        cache.clear()
        missing = list(seqs)
    loads, fromisoformat = json.loads, datetime.fromisoformat
    for start in range(0, len(missing), 500):
        chunk = missing[start:start + 500]
        marks = ",".join("?" * len(chunk))
        # The tensor count is computed inside SQLite: long manifests are never copied into Python.
        for seq, meta_text, nbytes, count in index.query(
                "SELECT seq, meta, nbytes, (length(manifest) - length(replace(manifest, '\"hash\"', ''))) / 6 "
                f"FROM versions WHERE seq IN ({marks})", chunk):
            meta = loads(meta_text)
            cache[seq] = (
                # Shown by log and show: terminal control sequences are escaped, never interpreted.
                tuple(meta.get("parents", ())), neutralise(meta.get("message", "")), fromisoformat(meta["created"]),
                neutralise(meta.get("author", "")), meta.get("params") or {}, meta.get("framework", ""),
                meta.get("libraries") or {}, meta.get("provenance") or {}, meta.get("extra") or {},
                int(nbytes), int(count),
            )
    return {seq: cache[seq] for seq in seqs}


def _only_model(index: Index) -> str | None:
    names = [r[0] for r in index.query("SELECT DISTINCT name FROM members LIMIT 2")]
    return names[0] if len(names) == 1 else None


def _need_model(index: Index, ref: str) -> str:
    name = _only_model(index)
    if name is not None:
        return name
    names = [r[0] for r in index.query("SELECT DISTINCT name FROM members ORDER BY name")]
    if not names:
        raise UnknownRefError(f"no versions yet: nothing matches {ref!r} (commit a model first)")
    raise UnknownRefError(
        f"{ref!r} is ambiguous: the store holds several models ({', '.join(names[:8])}); say which",
        names,
    )


def resolve(index: Index, text: str, name: str | None, workspace: str | None = None,
            legacy: str | None = None) -> tuple[str, str]:
    """(version id, model name) for a ref within ``name``'s history (one consistent read); ``HEAD``
    is the model's HEAD in notebook ``workspace`` (None: the shared HEAD of the API and CLI)."""
    with index.reading(), _damaged_rows(index):
        return _resolve(index, text, name, workspace, legacy)


@contextmanager
def _damaged_rows(index: Index) -> Iterator[None]:
    """A row the index cannot have written (unparsable metadata, a missing key: a damaged file)
    is an :class:`IntegrityError` naming the cure, never a raw ``JSONDecodeError``/``KeyError``."""
    try:
        yield
    except MVCError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        index.__dict__.pop("_parsed_versions", None)  # nothing parsed from a damaged row is kept
        raise IntegrityError(f"the index {index.path.name} holds a damaged row ({type(exc).__name__}: "
                             f"{str(exc)[:80]}); run verify, then reindex") from exc


def _resolve(index: Index, text: str, name: str | None, workspace: str | None = None,
             legacy: str | None = None) -> tuple[str, str]:
    ref = parse_ref(text)
    if ref.kind == "name" and name is None:
        # A tag or an id prefix names its version whatever the number of models: resolve it across
        # every history, and only a tag on several models is ambiguous.
        vid, model = _resolve_anywhere(index, ref.value, text)
    else:
        model = name or _need_model(index, text)
        if ref.kind == "head":
            rows = index.query("SELECT id FROM heads WHERE name = ?", (head_key(model, workspace),))
            if not rows and legacy is not None:  # a HEAD written before keys were notebook paths
                rows = index.query("SELECT id FROM heads WHERE name = ?", (head_key(model, legacy),))
            if not rows:
                newest = "latest" + text.strip()[len("HEAD"):] if text.strip().startswith("HEAD") else "latest"
                hint = (f"; {newest} names from its newest version" if index.query(
                    "SELECT 1 FROM members WHERE name = ? LIMIT 1", (model,)) else "")
                raise UnknownRefError(f"{model!r} has no HEAD here yet (commit or check out a version first){hint}")
            vid = rows[0][0]
        elif ref.kind == "latest":
            rows = index.query("SELECT id FROM members WHERE name = ? ORDER BY ord DESC, id DESC LIMIT 1", (model,))
            if not rows:
                raise UnknownRefError(f"{model!r} has no versions yet")
            vid = rows[0][0]
        elif ref.kind == "best":
            explicit = text.split("~")[0].count(":") >= 2  # best:METRIC:min|max
            direction = (None if explicit else _stated_direction(index, model, ref.metric)) or ref.direction
            vid = _resolve_best(index, model, ref.metric, direction or "max", text)
        else:
            vid = _resolve_name(index, ref.value, model, text)
    if not isinstance(vid, str):  # a damaged page read back as NULL despite NOT NULL
        raise IntegrityError(f"the index {index.path.name} holds a version row without an id; run verify, "
                             "then reindex")
    for step in range(ref.ancestor):
        rows = index.query("SELECT meta FROM versions WHERE id = ?", (vid,))
        parents = json.loads(rows[0][0]).get("parents", []) if rows else []
        if not parents:
            raise UnknownRefError(f"{text!r}: history of {model!r} has only {step + 1} version(s) on that line")
        if not index.query("SELECT 1 FROM versions WHERE id = ?", (parents[0],)):
            raise UnknownRefError(f"{text!r}: the parent {parents[0][:12]} of {vid[:12]} is not in this store "
                                  "(removed, or not pulled)")
        vid = parents[0]
    return vid, model


def _stated_direction(index: Index, model: str, metric: str) -> str | None:
    """The direction a version of ``model`` states for ``metric`` (a merge's score is higher-is-better),
    which wins over the guess from the metric's name."""
    # CROSS JOIN: the few statements first (SQLite would otherwise walk every member of the model).
    rows = index.query("SELECT d.direction FROM directions d CROSS JOIN members n ON n.id = d.id AND n.name = ? "
                       "WHERE d.key = ? ORDER BY n.ord DESC, n.id DESC LIMIT 1", (model, metric))
    return rows[0][0] if rows else None


# best: ties go to the newest version; the newest this many versions of the model are probed first.
_TIE_PROBE = 256


def _resolve_best(index: Index, model: str, metric: str, direction: str, text: str) -> str:
    """The version of ``model`` with the best finite ``metric``; among equal values the newest (ord, id).

    One query ordering by value then ``ord`` sorts every tie (SQLite's index gives the value order,
    not the order within a value): with thousands of versions at one value (an accuracy of 1.0) that
    was a scan. So the best value is found first (the metric's SQL index, stopping at the model's
    first row); then, when more than :data:`_TIE_PROBE` versions share it, the newest tie among the
    model's newest versions (its history's SQL index), and otherwise (or when none of those ties)
    the newest among the ties themselves.
    """
    order = "ASC" if direction == "min" else "DESC"
    best = index.query(
        f"SELECT m.value FROM metrics m CROSS JOIN members n ON n.id = m.id AND n.name = ? "
        f"WHERE m.key = ? AND m.value IS NOT NULL ORDER BY m.value {order} LIMIT 1", (model, metric))
    if best:
        value = best[0][0]
        # Counted in the metric's SQL index alone (no row read), and only up to the probe's size.
        many = index.query("SELECT count(*) FROM (SELECT 1 FROM metrics WHERE key = ? AND value = ? LIMIT ?)",
                           (metric, value, _TIE_PROBE + 1))[0][0] > _TIE_PROBE
        rows = index.query(
            "SELECT n.id FROM (SELECT id, ord FROM members WHERE name = ? ORDER BY ord DESC, id DESC "
            f"LIMIT {_TIE_PROBE}) n JOIN metrics m ON m.id = n.id AND m.key = ? WHERE m.value = ? "
            "ORDER BY n.ord DESC, n.id DESC LIMIT 1", (model, metric, value)) if many else []
        rows = rows or index.query(
            "SELECT n.id FROM metrics m CROSS JOIN members n ON n.id = m.id AND n.name = ? "
            "WHERE m.key = ? AND m.value = ? ORDER BY n.ord DESC, n.id DESC LIMIT 1", (model, metric, value))
        if rows:
            return rows[0][0]
    known = [r[0] for r in index.query(
        "SELECT DISTINCT m.key FROM metrics m JOIN members n ON n.id = m.id WHERE n.name = ? ORDER BY 1",
        (model,))]
    hint = f"known metrics: {', '.join(known)}" if known else "no version of it has metrics"
    raise UnknownRefError(f"{text!r}: no version of {model!r} has a finite {metric!r} ({hint})", known)


def _resolve_anywhere(index: Index, value: str, text: str) -> tuple[str, str]:
    """(version id, model) of a tag or id prefix searched in every model's history."""
    rows = index.query("SELECT name, id FROM tags WHERE tag = ? ORDER BY name", (value,))
    if len(rows) > 1 and not _looks_like_id(value):
        names = [r[0] for r in rows]
        raise AmbiguousRefError(f"tag {value!r} exists on several models ({', '.join(names)}); say which "
                                "(--model NAME)", names)
    if len(rows) == 1 and not _looks_like_id(value):
        return rows[0][1], rows[0][0]
    vid = _resolve_name(index, value, None, text)
    return vid, index.query("SELECT name FROM versions WHERE id = ?", (vid,))[0][0]


def _looks_like_id(value: str) -> bool:
    return len(value) >= 4 and all(c in "0123456789abcdef" for c in value)


def _resolve_name(index: Index, value: str, model: str | None, text: str) -> str:
    # Ids win over tags: a tag named like an id (refused today, but pulled or written before that
    # rule) must never make an id, or a unique id prefix, load another version.
    if value.lower() == value and all(c in "0123456789abcdef" for c in value) and len(value) >= 4:
        cond, params = "id >= ? AND id < ?", [value, value + "g"]
        table = "versions"
        if model is not None and len(value) < 64:  # a full id names one version in any history
            table, cond = "members", cond + " AND name = ?"
            params.append(model)
        rows = index.query(f"SELECT id FROM {table} WHERE {cond} LIMIT 20", params)
        if len(rows) == 1:
            return rows[0][0]
        if len(rows) > 1:
            ids = [r[0] for r in rows]
            raise AmbiguousRefError(
                f"{text!r} matches {len(ids)} versions: {', '.join(i[:12] for i in ids[:8])}; give more digits",
                ids,
            )
    if model is not None:
        rows = index.query("SELECT id FROM tags WHERE name = ? AND tag = ?", (model, value))
        if rows:
            return rows[0][0]
    else:
        rows = index.query("SELECT id FROM tags WHERE tag = ?", (value,))
        if len(rows) == 1:
            return rows[0][0]
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

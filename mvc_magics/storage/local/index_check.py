"""The index compared row by row with the files it caches: what verify reports about the index.

The expected rows are built by the same code that rebuilds the index (:func:`.recovery.fill_index`)
into a private in-memory database, so "what the files say" has one definition. Every table is
compared: versions (name, created, metadata, manifest, sizes), metrics, tags, HEADs, the histories
each version belongs to, and tensor locations. Each difference is named, so a damaged or edited
index never passes as sound.
"""

from __future__ import annotations

import json
import sqlite3
from typing import TYPE_CHECKING

from ..snapshots.retired import held_hashes
from . import recovery
from .index import SCHEMA_SQL, upgrade_schema

if TYPE_CHECKING:
    from .store import Store

# (table, key columns, compared columns); tensors are compared on their own (see below).
_TABLES = (
    ("versions", ("id",), ("name", "created", "meta", "manifest", "nbytes", "written")),
    ("metrics", ("id", "key"), ("value", "text")),
    ("tags", ("name", "tag"), ("id", "protected")),
    ("heads", ("name",), ("id",)),
    ("members", ("name", "id"), ()),
    ("directions", ("key", "id"), ("direction",)),
)
_JSON_COLUMNS = {"meta", "manifest"}
_REPORTED = 20  # differences named per table; the rest are counted


def index_differences(store: Store, reported: set[str] = frozenset()) -> list[tuple[str, str]]:
    """(subject, what differs) for every index row that does not match the files; empty when equal.

    Rows naming a version in ``reported`` (its snapshot file is missing or damaged, which the
    caller already reports) are left out.

    Raises :class:`~mvc_magics.errors.IntegrityError` when the index cannot be read at all.
    """
    expected = sqlite3.connect(":memory:", isolation_level=None)
    try:
        expected.executescript(SCHEMA_SQL)
        upgrade_schema(expected)
        recovery.fill_index(store, expected, recovery.indexable_contents(store))
        found: list[tuple[str, str]] = []
        with store.index.reading():
            for table, keys, columns in _TABLES:
                actual = _rows(store.index.query, table, keys, columns)
                actual = {k: v for k, v in actual.items() if not reported & {*k, *v}}
                found += _table_differences(table, keys, columns, actual,
                                            _rows(_query(expected), table, keys, columns))
            found += _tensor_differences(store, expected, reported)
        return found
    finally:
        expected.close()


def _query(conn: sqlite3.Connection):
    return lambda sql, params=(): conn.execute(sql, tuple(params)).fetchall()


def _rows(query, table: str, keys: tuple, columns: tuple) -> dict[tuple, tuple]:
    rows = {}
    for row in query(f"SELECT {', '.join(keys + columns)} FROM {table}"):
        key, values = tuple(row[:len(keys)]), list(row[len(keys):])
        for i, column in enumerate(columns):
            if column in _JSON_COLUMNS:
                values[i] = _canonical(values[i])
        rows[key] = tuple(values)
    return rows


def _canonical(text: object) -> str:
    """JSON text compared by value (key order and spacing differ between writers)."""
    try:
        return json.dumps(json.loads(text), sort_keys=True)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return f"<not JSON: {str(text)[:40]!r}>"


def _label(table: str, key: tuple) -> str:
    return f"index {table} " + "/".join(str(k)[:16] if len(str(k)) == 64 else str(k)[:40] for k in key)


def _table_differences(table: str, keys: tuple, columns: tuple, actual: dict, expected: dict) -> list:
    found = []
    for key in sorted(set(actual) | set(expected), key=repr):
        if key not in expected:
            found.append((_label(table, key), "row not backed by any file (edited or damaged index)"))
        elif key not in actual:
            found.append((_label(table, key), "missing from the index (the files have it)"))
        elif actual[key] != expected[key]:
            differing = [c for c, a, e in zip(columns, actual[key], expected[key], strict=True) if a != e]
            found.append((_label(table, key), f"{', '.join(differing)} differ(s) from the files"))
    return _capped(table, found)


def _tensor_differences(store: Store, expected: sqlite3.Connection, reported: set[str]) -> list:
    """Each tensor location must be one a verified manifest names, and each named hash located.

    A tensor stored by two versions may be located in either file, so the rows are checked
    against the set of valid locations rather than against one expected row.
    """
    valid: dict[str, set[tuple[str, int]]] = {}
    for manifest_text, in expected.execute("SELECT manifest FROM versions"):
        for entry in json.loads(manifest_text):
            valid.setdefault(entry["hash"], set()).add((entry["object"], int(entry["nbytes"])))
    for digest, obj, nbytes in expected.execute("SELECT hash, object, nbytes FROM tensors"):  # + structures
        valid.setdefault(digest, set()).add((obj, int(nbytes)))
    found, located = [], set()
    removed: dict[str, set[str]] = {}  # a removed version's file keeps its bytes until gc: reusable
    for rid in store.layout.removed_ids():
        path = store.layout.snapshot_path(rid)
        removed[rid] = held_hashes(path) if path.exists() else set()
    for digest, obj, nbytes in store.index.query("SELECT hash, object, nbytes FROM tensors"):
        located.add(digest)
        if obj in reported:
            continue
        if (obj, nbytes) not in valid.get(digest, set()) and digest not in removed.get(obj, ()):
            found.append((_label("tensors", (digest,)), f"location {str(obj)[:12]} ({nbytes} bytes) is not "
                                                        "one a verified manifest names"))
    for digest in sorted(set(valid) - located):
        found.append((_label("tensors", (digest,)), "missing from the index (the files have it)"))
    return _capped("tensors", found)


def _capped(table: str, found: list) -> list:
    if len(found) <= _REPORTED:
        return found
    return [*found[:_REPORTED], (f"index {table}", f"{len(found) - _REPORTED} more difference(s)")]

"""The order of versions: by creation and ancestry, never by arrival.

A store receives versions in any order (a pull brings a repacked history newest first, because an
older version is a delta against its child; a reindex lists files as the disk does), so the index's
row number says only when a row arrived. Each version gets an order key instead (``versions.ord``):
its creation time in microseconds, raised above every parent's key, so a child committed on a
machine whose clock is behind still comes after its parent. ``latest``, the log, ``best:`` ties and
the order of models sort by ``(ord, id)``: the same in every store that holds the same versions.
``version_parents`` lists each version's parents, so a parent that arrives after its children
raises their keys without reading every row.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)


def created_key(created: str) -> int:
    """Microseconds since the epoch of an ISO time (naive: UTC); 0 when it is not one."""
    try:
        when = datetime.fromisoformat(str(created))
    except ValueError:
        return 0
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return (when - _EPOCH) // _MICROSECOND


def place(conn: sqlite3.Connection, vid: str, created: str, parents: Iterable[str]) -> None:
    """Give the new row ``vid`` its key, then raise the keys of descendants that arrived before it."""
    parents = [p for p in parents if isinstance(p, str)] if isinstance(parents, list | tuple) else []
    conn.executemany("INSERT OR IGNORE INTO version_parents(parent, child) VALUES(?, ?)", [(p, vid) for p in parents])
    marks = ",".join("?" * len(parents))
    above = conn.execute(f"SELECT max(ord) FROM versions WHERE id IN ({marks})", parents).fetchone()[0] \
        if parents else None
    key = max(created_key(created), above + 1 if above is not None else 0)
    conn.execute("UPDATE versions SET ord = ? WHERE id = ?", (key, vid))
    # A history is a graph without cycles, but the parent records are data: a removed version committed
    # again under a descendant of its own, or a crafted note, closes one, and raising keys around it
    # would never end. No key in a graph without cycles needs to pass the newest creation time plus the
    # number of versions (one step per ancestor), so propagation stops there.
    newest, count = conn.execute("SELECT max(ord), count(*) FROM versions").fetchone()
    ceiling = max(key, newest or 0) + count
    pending = [(vid, key)]
    while pending:  # children here already (pulled before their parent) must stay after it
        parent, floor = pending.pop()
        if floor >= ceiling:
            continue
        for (child,) in conn.execute(
                "SELECT v.id FROM version_parents e JOIN versions v ON v.id = e.child WHERE e.parent = ? "
                "AND (v.ord IS NULL OR v.ord <= ?)", (parent, floor)).fetchall():
            conn.execute("UPDATE versions SET ord = ? WHERE id = ?", (floor + 1, child))
            pending.append((child, floor + 1))


def _parents(meta: str) -> list[str]:
    try:
        found = json.loads(meta).get("parents") or []
    except (ValueError, AttributeError):
        return []
    return [p for p in found if isinstance(p, str)] if isinstance(found, list) else []


def upgrade(conn: sqlite3.Connection) -> None:
    """An index written before order keys: add the column and key every row, in one pass and one
    transaction (row by row, each update would be a transaction of its own: an fsync each)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        _upgrade(conn)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _upgrade(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS version_parents(parent TEXT NOT NULL, child TEXT NOT NULL, "
                 "PRIMARY KEY(parent, child))")
    if "ord" not in {row[1] for row in conn.execute("PRAGMA table_info(versions)")}:
        conn.execute("ALTER TABLE versions ADD COLUMN ord INTEGER")
    conn.execute("CREATE INDEX IF NOT EXISTS versions_ord ON versions(name, ord, id)")
    conn.execute("CREATE INDEX IF NOT EXISTS versions_ord_all ON versions(ord, id)")
    if not conn.execute("SELECT 1 FROM versions WHERE ord IS NULL LIMIT 1").fetchall():
        return
    rows = {vid: (created, _parents(meta)) for vid, created, meta in
            conn.execute("SELECT id, created, meta FROM versions").fetchall()}
    keys: dict[str, int] = {}
    for start in rows:
        stack = [start]
        while stack:  # parents first, without recursion (a history can be long)
            vid = stack[-1]
            todo = [p for p in rows[vid][1] if p in rows and p not in keys and p not in stack]
            if todo:
                stack.extend(todo)
                continue
            stack.pop()
            keys[vid] = max([created_key(rows[vid][0])] + [keys[p] + 1 for p in rows[vid][1] if p in keys])
    conn.executemany("INSERT OR IGNORE INTO version_parents(parent, child) VALUES(?, ?)",
                     [(p, vid) for vid, (_, parents) in rows.items() for p in parents])
    conn.executemany("UPDATE versions SET ord = ? WHERE id = ?", [(k, vid) for vid, k in keys.items()])

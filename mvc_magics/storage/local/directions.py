"""Directions versions state for their metrics, indexed so ``best:`` never reads every version's metadata.

A merge's score is higher-is-better whatever its name says (``extra["metric_directions"]`` in its
metadata), and that statement wins over the guess from the metric's name. Finding it by scanning
the metadata of every version of a model cost ``best:`` tens of milliseconds at 10,000 versions;
``directions(key, id, direction)`` holds each statement, written with the version's row
(:meth:`.index.Index.insert_version`) and dropped with it by a trigger.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping

DIRECTIONS_SQL = """
CREATE TABLE IF NOT EXISTS directions(key TEXT NOT NULL, id TEXT NOT NULL, direction TEXT NOT NULL,
    PRIMARY KEY(key, id));
CREATE INDEX IF NOT EXISTS directions_id ON directions(id);
CREATE TRIGGER IF NOT EXISTS directions_gone AFTER DELETE ON versions BEGIN
    DELETE FROM directions WHERE id = OLD.id;
END;
"""


def stated(meta: object) -> dict[str, str]:
    """metric -> "min"/"max" that a version's metadata states (anything else in it is ignored)."""
    extra = meta.get("extra") if isinstance(meta, Mapping) else None
    given = extra.get("metric_directions") if isinstance(extra, Mapping) else None
    if not isinstance(given, Mapping):
        return {}
    return {key: value for key, value in given.items() if isinstance(key, str) and value in ("min", "max")}


def record(conn: sqlite3.Connection, vid: str, meta: object) -> None:
    """The statements of a version's metadata, for its new index row."""
    conn.executemany("INSERT OR REPLACE INTO directions(key, id, direction) VALUES(?, ?, ?)",
                     [(key, vid, value) for key, value in stated(meta).items()])


def upgrade(conn: sqlite3.Connection) -> None:
    """Create the table; an index written before it gets the statements of its versions, once."""
    new = not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'directions'").fetchall()
    conn.executescript(DIRECTIONS_SQL)
    if new:
        rows = conn.execute("SELECT id, meta FROM versions WHERE meta LIKE '%metric_directions%'").fetchall()
        for vid, meta in rows:
            try:
                record(conn, vid, json.loads(meta))
            except (TypeError, ValueError):
                continue  # a damaged row: verify names it, reindex rebuilds it

"""Which model histories a version belongs to: like one git commit reachable from several branches.

A version's id is its content, so committing model ``other`` with the content of a version of
``model`` finds that version instead of making a new one. The version then belongs to both
histories: to ``model``'s through the ``name`` in its (immutable) metadata, and to ``other``'s
through a *name record*, a write-once note (``notes/<ab>/<id>/<n>.json`` with a ``"name"`` key)
written by that commit. Notes travel with push, pull and clone, and the index is rebuilt from them.

The index keeps every membership in ``members(name, id, ord)``: the version's own name is added
by a trigger when its row is inserted, a name record by :func:`add_member`. Every query of one
model's history (log, ``latest``, ``HEAD~N``, ``best:``, status, du, compare, retention) reads
``members``. ``ord`` is the version's order key (:mod:`.version_order`: creation and ancestry,
never arrival), copied by a trigger whenever the version's key changes, so a history is read in
order from one SQL index; a version removed leaves every history through a third trigger.
"""

from __future__ import annotations

import sqlite3

from ...core.names import is_valid_name

MEMBERS_SQL = """
CREATE TABLE IF NOT EXISTS members(name TEXT NOT NULL, id TEXT NOT NULL, ord INTEGER, PRIMARY KEY(name, id));
CREATE INDEX IF NOT EXISTS members_ord ON members(name, ord, id);
CREATE INDEX IF NOT EXISTS members_id ON members(id);
CREATE TRIGGER IF NOT EXISTS members_new AFTER INSERT ON versions BEGIN
    INSERT OR IGNORE INTO members(name, id, ord) VALUES(NEW.name, NEW.id, NEW.ord);
END;
CREATE TRIGGER IF NOT EXISTS members_ord AFTER UPDATE OF ord ON versions BEGIN
    UPDATE members SET ord = NEW.ord WHERE id = NEW.id;
END;
CREATE TRIGGER IF NOT EXISTS members_gone AFTER DELETE ON versions BEGIN
    DELETE FROM members WHERE id = OLD.id;
END;
"""


def upgrade(conn: sqlite3.Connection) -> None:
    """Create the table and its triggers; an index written before them gets each version's own
    name (a store written then has no name records: its notes never carried a name)."""
    new = not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'members'").fetchall()
    conn.executescript(MEMBERS_SQL)
    if new:
        conn.execute("INSERT OR IGNORE INTO members(name, id, ord) SELECT name, id, ord FROM versions")


def add_member(conn: sqlite3.Connection, vid: str, name: object) -> None:
    """Version ``vid`` (if indexed) joins history ``name`` (read from an untrusted note: a name a
    user could not have given is ignored)."""
    if isinstance(name, str) and is_valid_name(name):
        conn.execute("INSERT OR IGNORE INTO members(name, id, ord) SELECT ?, id, ord FROM versions WHERE id = ?",
                     (name, vid))


def note_name(note: dict) -> str | None:
    """The history a note's version joins, when the note is a valid name record."""
    name = note.get("name")
    return name if isinstance(name, str) and is_valid_name(name) else None

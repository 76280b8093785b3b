"""The journal: the one ref change or gc in flight, so a killed process leaves nothing unaudited.

A ref change (tag, untag, HEAD move, removal) first writes ``journal.json`` holding the audit entry
it will append (prepared, chained to the current last entry) and the ref files it will change. Then
the ref files, the index, the audit entry, and the journal is deleted. Whoever finds the journal
(the next lock holder after a kill, or the same process after an error) resolves it: if the change
was made (every ref file says so, or, for a removal, the tombstone exists and the rest is redone)
the prepared entry is appended unless already there; if it was not made nothing happened and the
journal is dropped. So every ref change is audited or not made.

gc writes ``{"op": "gc"}`` first; finding it, the next holder runs gc again to completion (gc only
ever deletes bytes no live version uses, so running it twice is safe).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import UnsafeFileError
from ..files.safe_files import CAP_JOURNAL

if TYPE_CHECKING:
    from .layout import StoreLayout


class Journal:
    """``journal.json`` of one store (every method is called holding the store lock)."""

    def __init__(self, layout: StoreLayout) -> None:
        self._layout = layout
        self.path: Path = layout.journal_path

    def begin(self, record: dict) -> None:
        self._layout.files.write(self.path, json.dumps(record, sort_keys=True).encode())

    def pending(self) -> dict | None:
        """The record of an operation that did not finish, or None."""
        try:
            data = self._layout.files.read(self.path, CAP_JOURNAL)
        except UnsafeFileError:
            self._layout.files.unlink(self.path)  # not ours: a planted file is dropped, never followed
            return None
        if data is None:
            return None
        try:
            record = json.loads(data)
        except ValueError:  # torn by a kill while written: the operation had not started
            self.end()
            return None
        return record if isinstance(record, dict) else None

    def end(self) -> None:
        self._layout.files.unlink(self.path)


# -- ref changes ------------------------------------------------------------------------------------


def apply_change(layout: StoreLayout, change: dict) -> None:
    """Make one ref change of a journal record (idempotent)."""
    kind, name = change["kind"], change["name"]
    if kind == "tag":
        layout.write_tag(name, change["tag"], change["id"], bool(change.get("protected")))
    elif kind == "untag":
        layout.delete_tag(name, change["tag"])
    elif kind == "head":
        layout.write_head(name, change["id"])
    elif kind == "unhead":
        layout.delete_head(name)


def change_made(layout: StoreLayout, change: dict) -> bool:
    """True when the ref files show ``change``."""
    kind, name = change["kind"], change["name"]
    if kind == "tag":
        return layout.read_tag(name, change["tag"]) == (change["id"], bool(change.get("protected")))
    if kind == "untag":
        return layout.read_tag(name, change["tag"]) is None
    if kind == "head":
        return layout.read_head(name) == change["id"]
    return layout.read_head(name) is None


def made(layout: StoreLayout, record: dict) -> bool:
    """Was the ref change of ``record`` made? A removal past its tombstone is finished here."""
    changes = record.get("changes", [])
    commit_point = record.get("tombstone")
    if commit_point:
        if not layout.is_removed(commit_point):
            return False
        for change in changes:  # the tombstone is the commit point: finish the ref changes
            apply_change(layout, change)
        return True
    return bool(changes) and all(change_made(layout, c) for c in changes)

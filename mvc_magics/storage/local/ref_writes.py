"""The ref changes of a store (HEAD moves, tags), each journaled with its audit entry.

The order on disk: journal (with the prepared audit entry) -> ref file -> index -> audit entry ->
journal deleted (:mod:`.journal`); whoever finds a journal left by a kill finishes or drops it
(:meth:`RefWrites.resolve`). A mixin of :class:`~.writes.StoreWrites`, which owns every other write.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...core.metadata import author
from ...core.threads import thread_pool
from . import journal
from .recovery import sync_refs_and_notes

if TYPE_CHECKING:
    from .store import Store


class RefWrites:
    """HEAD and tag changes of one store (see the module docstring)."""

    _store: Store
    _layout: Any

    def _gc(self, recovered: bool = False) -> Any:  # StoreWrites runs gc (a journaled gc is resumed)
        raise NotImplementedError

    @contextlib.contextmanager
    def _ref_change(self, op: str, name: str | None, ids: Sequence[str], detail: Mapping | None,
                    changes: list[dict], tombstone: str | None = None) -> Iterator[None]:
        """Journal a ref change with its prepared audit entry, make it, then record the entry."""
        entry = self._store.audit.prepare(author(), op, name, list(ids), dict(detail or {}))
        record = {"op": op, "audit": entry, "changes": changes, "tombstone": tombstone}
        self._store.journal.begin(record)
        try:
            with self._store.index.transaction():  # the change's rows and the chain head: one commit
                yield
                self._store.audit.write(entry)
        except BaseException:
            with contextlib.suppress(Exception):  # audit what was made; the original error is raised
                self.resolve(record)
            raise
        self._store.journal.end()

    def resolve(self, record: Mapping) -> None:
        """Finish a journaled operation found pending (see :mod:`.journal`); call holding the lock."""
        store = self._store
        if record.get("op") == "gc":
            self._gc(recovered=True)
        elif isinstance(record.get("audit"), dict) and journal.made(self._layout, dict(record)):
            entry = record["audit"]
            if not store.audit.contains(str(entry.get("hash"))):
                if store.audit.last_hash() != entry.get("prev"):  # the log moved on: chain it anew
                    entry = store.audit.prepare(str(entry["who"]), str(entry["op"]), entry.get("name"),
                                                list(entry.get("ids", [])),
                                                {**dict(entry.get("detail", {})), "recovered": True})
                store.audit.write(dict(entry))
            sync_refs_and_notes(store)
        store.journal.end()

    def move_head(self, name: str, vid: str, op: str | None = None, detail: Mapping | None = None) -> None:
        """Point ``name``'s HEAD (in this store object's notebook) at ``vid`` (audited as ``op`` when given)."""
        key = self._store.head_key(name)
        with self._store.locked():
            if not op:
                self._head(key, vid)
                return
            # HEAD's new file is written and fsynced in a worker while the journal is made durable
            # (two syncs at once instead of one after the other); it is renamed into place only
            # after the journal, as before, so a kill leaves the move journaled or not begun.
            prepared = thread_pool("refs", 1).submit(self._layout.files.prepare, (vid + "\n").encode())
            try:
                with self._ref_change(op, name, [vid], detail, [{"kind": "head", "name": key, "id": vid}]):
                    self._head(key, vid, prepared.result())
            except BaseException:
                with contextlib.suppress(BaseException):
                    prepared.result().unlink(missing_ok=True)  # its temporary, unless it was placed
                raise

    def _head(self, name: str, vid: str, prepared: Path | None = None) -> None:
        if prepared is not None:
            self._layout.files.place(prepared, self._layout.head_path(name))
        else:
            self._layout.write_head(name, vid)
        with self._store.index.transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO heads(name, id) VALUES(?, ?)", (name, vid))

    def set_tag(self, name: str, tag: str, vid: str, protected: bool, detail: Mapping | None = None) -> None:
        """Put ``tag`` of model ``name`` on ``vid`` (audited as ``tag`` with ``detail`` when given)."""
        with self._store.locked():
            if detail is None:
                self._tag(name, tag, vid, protected)
                return
            change = {"kind": "tag", "name": name, "tag": tag, "id": vid, "protected": bool(protected)}
            with self._ref_change("tag", name, [vid], detail, [change]):
                self._tag(name, tag, vid, protected)

    def _tag(self, name: str, tag: str, vid: str, protected: bool) -> None:
        self._layout.write_tag(name, tag, vid, protected)
        with self._store.index.transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO tags(name, tag, id, protected) VALUES(?, ?, ?, ?)",
                         (name, tag, vid, int(protected)))

    def delete_tag(self, name: str, tag: str, vid: str) -> None:
        with self._store.locked(), self._ref_change("untag", name, [vid], {"tag": tag},
                                                    [{"kind": "untag", "name": name, "tag": tag}]):
            self._layout.delete_tag(name, tag)
            with self._store.index.transaction() as conn:
                conn.execute("DELETE FROM tags WHERE name = ? AND tag = ?", (name, tag))

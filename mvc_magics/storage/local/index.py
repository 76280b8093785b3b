"""The SQLite index: versions, metrics, tags and tensor locations, for fast queries.

The index is a cache. Snapshot files, ref files and note files are the truth, and
:meth:`Index.rebuild` (through ``Repo.reindex``) recreates it from them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sqlite3
import tempfile
import urllib.parse
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ...errors import IntegrityError, StoreError, UnsafeFileError
from . import directions, histories, version_order

SCHEMA_VERSION = 1

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS info(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS versions(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    name TEXT NOT NULL,
    created TEXT NOT NULL,
    meta TEXT NOT NULL,
    manifest TEXT NOT NULL,
    nbytes INTEGER NOT NULL,
    written INTEGER NOT NULL DEFAULT 0,
    ord INTEGER
);
CREATE INDEX IF NOT EXISTS versions_name ON versions(name, seq);
CREATE TABLE IF NOT EXISTS metrics(
    id TEXT NOT NULL, key TEXT NOT NULL, value REAL, text TEXT NOT NULL,
    PRIMARY KEY(id, key)
);
CREATE INDEX IF NOT EXISTS metrics_key ON metrics(key, value);
CREATE TABLE IF NOT EXISTS tags(
    name TEXT NOT NULL, tag TEXT NOT NULL, id TEXT NOT NULL, protected INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY(name, tag)
);
CREATE INDEX IF NOT EXISTS tags_id ON tags(id);
CREATE TABLE IF NOT EXISTS heads(name TEXT PRIMARY KEY, id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS version_parents(parent TEXT NOT NULL, child TEXT NOT NULL, PRIMARY KEY(parent, child));
CREATE TABLE IF NOT EXISTS tensors(hash TEXT PRIMARY KEY, object TEXT NOT NULL, nbytes INTEGER NOT NULL);
"""


def metric_row(value: float) -> tuple[float | None, str]:
    """(number for queries, exact text): NaN and inf are kept as text and never sort as best."""
    number = float(value)
    return (number if math.isfinite(number) else None), repr(number)


class Index:
    """Thin wrapper over the SQLite file; every write goes through :meth:`transaction`."""

    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self._open()

    @property
    def _conn(self) -> sqlite3.Connection:
        """The connection, opened again in a process forked since (a DataLoader worker, ``os.fork``):
        SQLite's connections must not cross a fork, or the child uses the parent's locks and
        shared memory as its own. The inherited one is left as it is (closing it could release
        what the parent holds)."""
        if self._opened_in != os.getpid():
            self._open()
        return self._connection

    def _open(self) -> None:
        path = self.path
        self._opened_in = os.getpid()
        # A reader's private copy of a WAL-mode index (see _open_readonly); in a forked child, the
        # parent's, which the parent removes.
        self._private: str | None = None
        for name in (Path(path), Path(f"{path}-wal"), Path(f"{path}-shm")):
            # SQLite follows symlinks: a planted index.sqlite-wal -> a file of yours would be written.
            if name.is_symlink() or (name.exists() and not name.is_file()):
                raise UnsafeFileError(f"refusing {name}: it is a symbolic link or not a regular file "
                                      "(store files must be regular files inside the store)")
        with _index_errors(path):
            if self.readonly:
                self._open_readonly(Path(path))
                return
            if not path.exists():
                # Created here with 0666 & ~umask (SQLite would use 0644): in a group-writable shared
                # folder the team can then write the index, and SQLite gives -wal/-shm the same mode.
                with contextlib.suppress(FileExistsError):
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666))
            conn = self._connection = sqlite3.connect(str(path), timeout=60.0, isolation_level=None,
                                                      check_same_thread=False)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.executescript(SCHEMA_SQL)
                upgrade_schema(conn)
                conn.execute(
                    "INSERT OR IGNORE INTO info(key, value) VALUES('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
            except BaseException:
                conn.close()
                raise

    def _open_readonly(self, path: Path) -> None:
        """Open for reading without creating or changing any file in the store folder.

        A process that may not write the index (a teammate with read access, a read-only mount) must
        not let SQLite create ``-wal``/``-shm`` files others then cannot open. With no pending WAL the
        file is opened ``immutable`` (no locks, no side files); with one, the index and its WAL are
        copied to a private temporary folder and read there (SQLite replays the WAL into the copy).
        """
        wal = Path(f"{path}-wal")
        try:  # looked at once: a writer may checkpoint it meanwhile, and every step below follows this look
            pending = wal.stat().st_size > 0
        except OSError:
            pending = False
        if not pending:
            uri = "file:" + urllib.parse.quote(str(Path(path).resolve())) + "?immutable=1"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            try:
                old = _before_upgrades(conn)
            except BaseException:
                conn.close()
                raise
            if not old:  # the common case: this one connection reads it in place
                self._connection = conn
                conn.execute("SELECT count(*) FROM versions")
                return
            conn.close()  # an index written before order keys: keyed in a private copy
        self._private = tempfile.mkdtemp(prefix="mvc-index-")
        copy = Path(self._private) / "index.sqlite"
        shutil.copyfile(path, copy)
        if pending:
            with contextlib.suppress(FileNotFoundError):  # checkpointed and removed since the look: the copy has it
                shutil.copyfile(wal, f"{copy}-wal")
        self._connection = sqlite3.connect(str(copy), isolation_level=None, check_same_thread=False)
        upgrade_schema(self._connection)
        self._connection.execute("SELECT count(*) FROM versions")

    def close(self) -> None:
        if self._opened_in != os.getpid():  # a forked child that never used it: nothing here is its own
            return
        self._connection.close()
        if self._private is not None:
            shutil.rmtree(self._private, ignore_errors=True)
            self._private = None

    def get_info(self, key: str) -> str | None:
        rows = self.query("SELECT value FROM info WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def set_info(self, key: str, value: str) -> None:
        with self.transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO info(key, value) VALUES(?, ?)", (key, value))

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """An IMMEDIATE transaction: all writes inside it commit together or not at all (a nested
        call joins the outer transaction).

        ``durable`` False commits without syncing the WAL (SQLite's ``synchronous=NORMAL``): a
        process killed after the commit keeps it, a power cut may lose it (the next durable
        transaction syncs it with its own). Only for rows the store's files rebuild when opened
        (a commit's: see docs/reliability.md)."""
        if self._conn.in_transaction:
            yield self._conn
            return
        with _index_errors(self.path):
            if not durable:
                self._conn.execute("PRAGMA synchronous=NORMAL")
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            finally:
                if not durable:
                    self._conn.execute("PRAGMA synchronous=FULL")

    @contextmanager
    def reading(self) -> Iterator[None]:
        """One read transaction: every query inside sees the same snapshot of the index, whatever
        another process commits meanwhile (WAL readers never block writers). Re-entrant; inside a
        write transaction it is that transaction."""
        if self._conn.in_transaction:
            yield
            return
        with _index_errors(self.path):
            self._conn.execute("BEGIN")
        try:
            yield
        finally:
            if self._conn.in_transaction:
                with _index_errors(self.path):
                    self._conn.execute("COMMIT")

    def query(self, sql: str, params: Iterable = ()) -> list[tuple]:
        with _index_errors(self.path):
            return self._conn.execute(sql, tuple(params)).fetchall()

    def integrity_problems(self) -> list[str]:
        """What SQLite's own ``PRAGMA integrity_check`` finds wrong (empty when the file is sound).

        The full check, not ``quick_check``: it also compares every SQL index with its table, and a
        damaged index entry (``metrics_key``) could otherwise change which version ``best:`` picks.
        """
        try:
            rows = self._conn.execute("PRAGMA integrity_check").fetchall()
        except sqlite3.DatabaseError as exc:
            return [str(exc)]
        return [str(r[0]) for r in rows if r[0] != "ok"]

    # -- writes (call inside transaction) ---------------------------------------------------

    @staticmethod
    def insert_version(conn: sqlite3.Connection, version_id: str, name: str, created: str,
                       meta: dict, manifest: list[dict], written: int, structure_ref=None) -> None:
        """A version's row and the locations of what it reads: its tensors and (format 3) the blob
        of its structure, so the next commit of the same structure finds it stored, as a tensor."""
        nbytes = sum(int(e["nbytes"]) for e in manifest)
        added = conn.execute(
            "INSERT OR IGNORE INTO versions(id, name, created, meta, manifest, nbytes, written) "
            "VALUES(?, ?, ?, ?, ?, ?, ?)",
            (version_id, name, created, json.dumps(meta), json.dumps(manifest), nbytes, written),
        ).rowcount
        if added:
            version_order.place(conn, version_id, created, meta.get("parents") or ())
            directions.record(conn, version_id, meta)
        rows = [(e["hash"], e["object"], int(e["nbytes"])) for e in manifest]
        if structure_ref is not None:
            rows.append((structure_ref.hash, structure_ref.object, int(structure_ref.nbytes)))
        conn.executemany("INSERT OR IGNORE INTO tensors(hash, object, nbytes) VALUES(?, ?, ?)", rows)

    @staticmethod
    def set_metrics(conn: sqlite3.Connection, version_id: str, metrics: dict[str, float]) -> None:
        conn.executemany(
            "INSERT OR REPLACE INTO metrics(id, key, value, text) VALUES(?, ?, ?, ?)",
            [(version_id, key, *metric_row(value)) for key, value in metrics.items()],
        )

    @staticmethod
    def add_metrics(conn: sqlite3.Connection, version_id: str, metrics: dict[str, float]) -> None:
        """Metrics measured later (notes): a value the version already has is never replaced."""
        conn.executemany(
            "INSERT OR IGNORE INTO metrics(id, key, value, text) VALUES(?, ?, ?, ?)",
            [(version_id, key, *metric_row(value)) for key, value in metrics.items()],
        )

    # -- reads ------------------------------------------------------------------------------

    def has_tensors(self, hashes: Iterable[str]) -> dict[str, str]:
        """Map each stored hash among ``hashes`` to the object id holding its bytes."""
        found: dict[str, str] = {}
        hashes = list(hashes)
        for start in range(0, len(hashes), 500):
            chunk = hashes[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for digest, obj in self.query(f"SELECT hash, object FROM tensors WHERE hash IN ({marks})", chunk):
                found[digest] = obj
        return found

    def version_ids(self) -> list[str]:
        ids = [row[0] for row in self.query("SELECT id FROM versions ORDER BY id")]
        # Damaged pages SQLite cannot see can read back as NULL or numbers despite NOT NULL: refuse, so
        # callers (verify) report the index and reindex rebuilds it, instead of failing on the value.
        if not all(isinstance(vid, str) for vid in ids):
            raise IntegrityError(f"the index {self.path.name} holds version rows without an id (run reindex)")
        return ids

    def count(self) -> int:
        return int(self.query("SELECT count(*) FROM versions")[0][0])


def upgrade_schema(conn: sqlite3.Connection) -> None:
    """What later versions added to the schema (order keys, history memberships, stated directions),
    each filled from the rows an older index holds."""
    version_order.upgrade(conn)
    histories.upgrade(conn)
    directions.upgrade(conn)


def _before_upgrades(conn: sqlite3.Connection) -> bool:
    """True for an index written before order keys, history memberships or stated directions
    (upgraded in a private copy)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(versions)")}
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return "ord" not in columns or not {"members", "directions"} <= tables


@contextmanager
def _index_errors(path: Path) -> Iterator[None]:
    """SQLite failures as the project's errors: a damaged file, a full disk, a read-only store."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        text = str(exc)
        if "locked" in text or "busy" in text:
            raise StoreError(f"the index {path.name} is busy (another process holds it): {text}") from exc
        if "Could not decode" in text:  # a damaged row: its text is not UTF-8 (Python reports it this way)
            raise _not_utf8(path) from exc
        raise StoreError(f"cannot update the index {path}: {text}") from exc
    except sqlite3.DatabaseError as exc:  # "file is not a database", "database disk image is malformed"
        raise IntegrityError(f"the index {path.name} is damaged ({exc}); run reindex to rebuild it") from exc
    except UnicodeDecodeError as exc:  # a damaged schema or row: SQLite's text is not even UTF-8
        raise _not_utf8(path) from exc


def _not_utf8(path: Path) -> IntegrityError:
    return IntegrityError(f"the index {path.name} is damaged (text that is not UTF-8); run reindex to rebuild it")

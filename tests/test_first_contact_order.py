"""Order follows creation and ancestry, never arrival (issue 25, item 3): ``latest``, ``HEAD~N``,
``best:`` and the log agree in the source store and in every clone and pull, after a plain push,
after gc, after a repack and after a removal; a child committed on a machine whose clock is behind
still comes after its parent."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

import mvc_magics.operations.commit as commit_module
from mvc_magics import Repo


def _history(repo: Repo, n: int = 10) -> list[str]:
    rng = np.random.default_rng(0)
    w = {"k": rng.standard_normal((64, 32)).astype(np.float32), "b": np.zeros(32, np.float32)}
    ids = []
    for epoch in range(n):
        w = {"k": w["k"] + rng.standard_normal((64, 32)).astype(np.float32) * 1e-3, "b": w["b"] + 1}
        # every version scores the same: best: falls back to the newest, as latest does
        ids.append(repo.commit(w, "m", message=f"epoch {epoch}", metrics={"acc": 0.5}).id)
    return ids


def _seen(repo: Repo) -> dict:
    return {"log": [v.id for v in repo.log("m")], "latest": repo.resolve("latest", name="m").id,
            "latest~3": repo.resolve("latest~3", name="m").id, "best": repo.resolve("best:acc", name="m").id,
            "HEAD~2": repo.resolve("HEAD~2", name="m").id, "models": repo.models()}


@pytest.mark.parametrize("before_push", ["plain", "gc", "repack", "removal"])
def test_clone_and_pull_see_the_order_the_source_sees(tmp_path, before_push):
    with Repo(tmp_path / "src") as src:
        ids = _history(src)
        if before_push == "removal":
            src.remove(ids[4], name="m")
            ids.remove(ids[4])
        if before_push in ("gc", "removal"):
            src.gc()
        if before_push == "repack":
            src.gc(repack=True)
        expected = _seen(src)
        assert expected["log"] == ids[::-1] and expected["latest"] == ids[-1] == expected["best"]
        assert expected["latest~3"] == ids[-4] and expected["HEAD~2"] == ids[-3]
        src.push(f"file://{tmp_path / 'remote'}")
    with Repo.clone(f"file://{tmp_path / 'remote'}", tmp_path / "clone") as clone:
        assert _seen(clone) == expected
        clone.reindex()  # the index rebuilt from the files, in whatever order they are listed
        assert _seen(clone) == expected
    with Repo(tmp_path / "puller") as puller:
        puller.add_remote("origin", f"file://{tmp_path / 'remote'}")
        puller.pull("origin")
        assert _seen(puller) == expected


def test_a_child_from_a_clock_behind_still_comes_after_its_parent(tmp_path, monkeypatch):
    with Repo(tmp_path / "src") as src:
        ids = _history(src, 3)
        real = datetime.now(timezone.utc)

        class Behind(datetime):  # this machine's clock is an hour behind the one that made ids
            @classmethod
            def now(cls, tz=None):
                return real - timedelta(hours=1)

        monkeypatch.setattr(commit_module, "datetime", Behind)
        child = src.commit({"k": np.zeros((64, 32), np.float32), "b": np.ones(32, np.float32)}, "m",
                           metrics={"acc": 0.5}).id
        monkeypatch.undo()
        assert src.get(child).created < src.get(ids[-1]).created
        expected = _seen(src)
        assert expected["latest"] == child and expected["log"][:2] == [child, ids[-1]]
        src.gc(repack=True)
        src.push(f"file://{tmp_path / 'remote'}")
    with Repo.clone(f"file://{tmp_path / 'remote'}", tmp_path / "clone") as clone:
        assert _seen(clone) == expected


# An index written before order keys also predates history memberships (storage.local.histories).
BEFORE_HISTORIES = ("DROP TRIGGER members_new", "DROP TRIGGER members_ord", "DROP TRIGGER members_gone",
                    "DROP TABLE members")


def test_an_index_written_before_order_keys_is_upgraded_on_open(tmp_path):
    import sqlite3

    with Repo(tmp_path / "src") as src:
        ids = _history(src, 4)
        expected = _seen(src)
    conn = sqlite3.connect(tmp_path / "src" / "index.sqlite")
    for statement in BEFORE_HISTORIES:
        conn.execute(statement)
    conn.execute("DROP INDEX versions_ord")
    conn.execute("DROP INDEX versions_ord_all")
    conn.execute("ALTER TABLE versions DROP COLUMN ord")
    conn.execute("DROP TABLE version_parents")
    # what an old index may hold: rows in another order than their creation
    conn.execute("UPDATE versions SET seq = seq + 100 WHERE id = ?", (ids[0],))
    conn.commit()
    conn.close()
    with Repo(tmp_path / "src") as src:
        assert _seen(src) == expected



def test_a_read_only_index_before_order_keys_is_read_in_order(tmp_path):
    import sqlite3

    from mvc_magics.operations.lookup import load_versions
    from mvc_magics.storage.local.index import Index

    with Repo(tmp_path / "src") as src:
        ids = _history(src, 4)
    path = tmp_path / "src" / "index.sqlite"
    conn = sqlite3.connect(path)
    for statement in (*BEFORE_HISTORIES, "DROP INDEX versions_ord", "DROP INDEX versions_ord_all",
                      "ALTER TABLE versions DROP COLUMN ord",
                      "DROP TABLE version_parents", f"UPDATE versions SET seq = seq + 100 WHERE id = '{ids[0]}'"):
        conn.execute(statement)
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    before = path.read_bytes()
    index = Index(path, readonly=True)  # a teammate who may not write the store
    try:
        assert [v.id for v in load_versions(index, "v.name = ?", ("m",))] == ids[::-1]
    finally:
        index.close()
    assert path.read_bytes() == before  # keyed in a private copy, the store's file untouched


def test_parent_records_that_close_a_cycle_do_not_hang_the_ordering():
    """A removed version committed again under its own descendant (or a crafted note) closes a cycle in
    the parent records: placing it ends, and every other version still comes after its parents."""
    import sqlite3

    from mvc_magics.storage.local import version_order
    from mvc_magics.storage.local.index import SCHEMA_SQL

    conn = sqlite3.connect(":memory:")
    conn.executescript(SCHEMA_SQL)
    version_order.upgrade(conn)

    def add(vid, created, parents):
        conn.execute("INSERT INTO versions(id, name, created, meta, manifest, nbytes) VALUES(?, 'm', ?, '{}', '[]', 0)",
                     (vid, created))
        version_order.place(conn, vid, created, parents)

    add("a", "2026-01-01T00:00:00", [])
    add("b", "2026-01-01T00:00:01", ["a"])
    add("c", "2026-01-01T00:00:02", ["b"])
    conn.execute("DELETE FROM versions WHERE id = 'a'")  # removed, then committed again under c
    add("a", "2026-01-01T00:00:03", ["c"])
    add("d", "2026-01-01T00:00:04", ["a"])
    ords = dict(conn.execute("SELECT id, ord FROM versions"))
    assert ords["b"] < ords["c"] < ords["a"] < ords["d"]


@pytest.mark.parametrize("look", range(1, 7))
def test_a_read_only_index_read_while_its_writer_checkpoints_the_wal(tmp_path, monkeypatch, look):
    """A teammate opens the index read-only while the owner's process checkpoints the WAL (here the
    old schema is only in the WAL until then). Whichever of the reader's looks at the WAL the
    checkpoint follows, the reader decides from one look and reads the whole history in order (it
    decided from two: a pending WAL, then none, and read the old schema in place, unkeyed)."""
    import pathlib
    import sqlite3

    from mvc_magics.operations.lookup import load_versions
    from mvc_magics.storage.local.index import Index

    with Repo(tmp_path / "src") as src:
        ids = _history(src, 4)
    path = tmp_path / "src" / "index.sqlite"
    writer = sqlite3.connect(path)  # the owner's process, still open: its WAL is not checkpointed on close
    writer.execute("PRAGMA wal_autocheckpoint=0")
    for statement in (*BEFORE_HISTORIES, "DROP INDEX versions_ord", "DROP INDEX versions_ord_all",
                      "ALTER TABLE versions DROP COLUMN ord",
                      "DROP TABLE version_parents", f"UPDATE versions SET seq = seq + 100 WHERE id = '{ids[0]}'"):
        writer.execute(statement)
    writer.commit()
    wal = pathlib.Path(f"{path}-wal")
    assert wal.stat().st_size > 0
    looks, real_stat = [], pathlib.Path.stat

    def stat(self, *args, **kwargs):
        result = real_stat(self, *args, **kwargs)
        if self == wal:
            looks.append(result.st_size)
            if len(looks) == look:  # the writer checkpoints (and empties the WAL) right after this look
                writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return result

    monkeypatch.setattr(pathlib.Path, "stat", stat)
    try:
        index = Index(path, readonly=True)
    finally:
        monkeypatch.undo()
    try:
        assert [v.id for v in load_versions(index, "v.name = ?", ("m",))] == ids[::-1]
    finally:
        index.close()
        writer.close()

"""The syncs of a commit: its index rows are committed without a WAL sync (the files rebuild them
after a power cut), and HEAD's folder is synced beside the audit entry, before the commit returns."""

from __future__ import annotations

import shutil

import numpy as np

from mvc_magics import Repo
from mvc_magics.storage.files.safe_files import SafeFiles
from mvc_magics.storage.local.audit import AuditLog


def test_a_commit_whose_index_rows_a_power_cut_lost_is_indexed_again_when_the_store_opens(tmp_path):
    """A power cut can drop the commit's unsynced SQLite transaction (the WAL frames never reached
    the disk); everything else was fsynced first. Simulated by putting back the index files as
    they were before the commit: opening the store indexes the version again, with its tags, HEAD
    and metrics, and verify is clean."""
    store = tmp_path / ".mvc"
    with Repo(store) as repo:
        first = repo.commit({"w": np.arange(6, dtype=np.float32)}, "m", tags=["first"])
    saved = tmp_path / "index-before"
    saved.mkdir()
    for path in store.glob("index.sqlite*"):
        shutil.copy2(path, saved / path.name)
    with Repo(store) as repo:
        second = repo.commit({"w": np.arange(6, dtype=np.float32) + 1}, "m", tags=["second"], metrics={"loss": 0.5})
    for path in store.glob("index.sqlite*"):
        path.unlink()
    for path in saved.iterdir():
        shutil.copy2(path, store / path.name)
    with Repo(store) as repo:
        assert [v.id for v in repo.log("m")] == [second.id, first.id]
        assert repo.head("m").id == second.id
        assert repo.resolve("second", name="m").id == second.id
        assert repo.get(second.id).metrics == {"loss": 0.5}
        assert np.array_equal(repo.load_state(second.id)["w"], np.arange(6, dtype=np.float32) + 1)
        report = repo.verify()
        assert report.ok, str(report)


def test_the_commit_transaction_skips_the_wal_sync_and_head_is_synced_before_it_commits(tmp_path, monkeypatch):
    seen = {}
    write, sync_folder = AuditLog.write, SafeFiles.sync_folder

    def audit_write(self, entry):
        if entry["op"] == "commit":
            seen["synchronous"] = repo.store.index.query("PRAGMA synchronous")[0][0]
        write(self, entry)

    def synced(self, folder):
        sync_folder(self, folder)
        seen.setdefault("folders", []).append(folder.name)

    monkeypatch.setattr(AuditLog, "write", audit_write)
    monkeypatch.setattr(SafeFiles, "sync_folder", synced)
    with Repo(tmp_path / ".mvc") as repo:
        repo.commit({"w": np.ones(4, np.float32)}, "m")
        assert seen["synchronous"] == 1  # NORMAL inside the commit's transaction
        assert repo.store.index.query("PRAGMA synchronous")[0][0] == 2  # FULL again for every other write
        assert seen["folders"] == ["m"]  # refs/m, holding the HEAD file just renamed

"""Files that are not what they seem: planted symlinks, FIFOs, devices and oversized files under the
fixed names a store reads and writes (lock, lock.owner, refs, HEAD, tags, notes, FORMAT, signatures)."""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from reliability_helpers import child_env

from mvc_magics import Repo
from mvc_magics.errors import IntegrityError, StoreError, UnsafeFileError
from mvc_magics.storage.files.safe_files import CAP_REF, SafeFiles
from mvc_magics.storage.snapshots.snapshot import check_file_checksum, read_content

SECRET = b"aws_secret_access_key = AKIAFAKEFAKEFAKE1234\n"


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "credentials"
    path.write_bytes(SECRET)
    return path


def test_planted_lock_owner_symlink_is_never_followed(tmp_path, secret, weights):
    store = tmp_path / ".mvc"
    Repo(store).close()
    (store / "lock.owner").symlink_to(secret)  # a teammate's plant: "the last holder died"
    with Repo(store) as repo:
        repo.commit(weights, "model")
        assert secret.read_bytes() == SECRET  # not overwritten
        assert b"AKIA" not in repo.audit.path.read_bytes()  # not copied into the shared log
        recover = [e for e in repo.audit.entries() if e.op == "recover"]
        assert recover and recover[-1].detail["dead_holder"].startswith("unknown")
    assert not (store / "lock.owner").exists() and secret.read_bytes() == SECRET


def test_planted_lock_symlink_is_refused_and_its_target_kept(tmp_path, secret, weights):
    store = tmp_path / ".mvc"
    Repo(store).close()
    (store / "lock").unlink()
    (store / "lock").symlink_to(secret)
    with Repo(store) as repo, pytest.raises(UnsafeFileError, match=r"refusing .*lock: it is a symbolic link"):
        repo.commit(weights, "model")
    assert secret.read_bytes() == SECRET  # a lock library would have truncated it


def test_head_symlinked_to_dev_zero_is_refused_with_one_line(repo, weights):
    repo.commit(weights, "model")
    head = repo.layout.head_path("model")
    head.unlink()
    head.symlink_to("/dev/zero")
    with pytest.raises(UnsafeFileError) as err:
        repo.layout.read_head("model")
    assert str(head) in str(err.value) and "\n" not in str(err.value)


def test_oversized_ref_is_refused(repo, weights):
    version = repo.commit(weights, "model", tags=["big"])
    path = repo.layout.tag_path("model", "big")
    path.write_bytes(b'{"id": "' + version.id.encode() + b'", "pad": "' + b"x" * CAP_REF + b'"}')
    with pytest.raises(UnsafeFileError, match="more than the 4096"):
        repo.layout.files.read(path, CAP_REF)
    assert repo.reindex() == 1  # a scan skips it instead of failing or reading it whole
    assert "big" not in repo.get(version.id).tags


_FIFO_REINDEX = r"""
import os, sys
from mvc_magics import Repo
import numpy as np
store = sys.argv[1]
with Repo(store) as repo:
    v = repo.commit({"w": np.ones(3, np.float32)}, "m", tags=["keep"])
os.mkfifo(os.path.join(store, "refs", "m", "tags", "fifo"))
os.makedirs(os.path.join(store, "notes", v.id[:2], v.id), exist_ok=True)
os.mkfifo(os.path.join(store, "notes", v.id[:2], v.id, "0001.json"))
os.unlink(os.path.join(store, "refs", "m", "HEAD"))
os.mkfifo(os.path.join(store, "refs", "m", "HEAD"))
with open(os.path.join(store, "lock.owner"), "w") as f:
    f.write("999999@elsewhere 1\n")          # a dead holder: crash recovery runs on open
with Repo(store) as repo:
    print("REINDEXED", repo.reindex(), sorted(repo.get(v.id).tags), flush=True)
"""


def test_fifos_in_refs_and_notes_never_hang_recovery_or_reindex(tmp_path):
    result = subprocess.run([sys.executable, "-c", _FIFO_REINDEX, str(tmp_path / ".mvc")], env=child_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "REINDEXED 1 ['keep']" in result.stdout
    assert "refusing" in result.stderr and "FIFO" in result.stderr  # named, one line each


def test_symlinked_ref_folder_is_never_written_through(tmp_path, weights):
    store, outside = tmp_path / ".mvc", tmp_path / "elsewhere"
    outside.mkdir()
    with Repo(store) as repo:
        version = repo.commit(weights, "model")
    (store / "refs" / "other").symlink_to(outside, target_is_directory=True)
    with Repo(store) as repo:
        with pytest.raises(StoreError, match="refs/other: it is a symbolic link"):
            repo.commit({**weights, "step": np.array(9)}, "other", tags=["x"])
        assert [v.id for v in repo.log()] == [version.id]  # taken back, nothing half-committed
    assert list(outside.iterdir()) == []


def test_format_symlink_and_device_are_refused(tmp_path):
    store = tmp_path / ".mvc"
    Repo(store).close()
    (store / "FORMAT").unlink()
    (store / "FORMAT").symlink_to("/dev/zero")
    with pytest.raises(StoreError, match="FORMAT"):
        Repo(store)


def test_signature_file_that_is_a_fifo_is_bad_not_a_hang(repo, weights, monkeypatch):
    monkeypatch.setenv("MVC_SIGNING_KEY", "team-secret")
    version = repo.commit(weights, "model")
    path = repo.layout.signatures / version.id[:2] / f"{version.id}.json"
    path.unlink()
    os.mkfifo(path)
    from mvc_magics.storage.local.signatures import check_signature, signer_from_env

    status = check_signature(repo.layout.signatures, signer_from_env(), version.id)
    assert status.state == "bad" and "FIFO" in status.detail


def test_reads_stay_inside_the_store(tmp_path, secret):
    files = SafeFiles(tmp_path / "store")
    (tmp_path / "store").mkdir()
    with pytest.raises(UnsafeFileError, match="outside the store"):
        files.read(secret, 100)
    with pytest.raises(UnsafeFileError, match="leaves the store"):
        files.read(tmp_path / "store" / ".." / "credentials", 100)


def test_checksum_line_newline_is_covered(repo, weights):
    version = repo.commit(weights, "model")
    path = repo.layout.snapshot_path(version.id)
    assert check_file_checksum(path) is True
    data = bytearray(path.read_bytes())
    assert data[84:85] == b"\n"
    data[84:85] = b" "
    path.write_bytes(bytes(data))
    assert check_file_checksum(path) is False
    assert version.id in repo.verify().damaged_versions


def test_a_declared_huge_meta_string_is_refused_before_allocating(repo, weights):
    version = repo.commit(weights, "model")
    path = repo.layout.snapshot_path(version.id)
    with h5py.File(path, "r+") as f:
        del f["meta"]
        # 1 GiB declared, nothing written: an 11 KB file would make h5py allocate all of it.
        f.create_dataset("meta", shape=(), dtype=h5py.string_dtype("utf-8", length=1 << 30))
    assert path.stat().st_size < 1 << 20
    with pytest.raises(IntegrityError, match="declares 1073741824 bytes"):
        read_content(path)


def test_audit_records_the_os_user_id(repo, weights, monkeypatch):
    monkeypatch.setenv("USER", "alice")
    repo.commit(weights, "model")
    entry = list(repo.audit.entries())[-1]
    assert entry.who.startswith("alice") and entry.uid == os.geteuid()  # the name is a claim, the uid a fact


def test_stale_temporaries_of_a_dead_process_are_cleaned_on_open(tmp_path, weights):
    store = tmp_path / ".mvc"
    Repo(store).close()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stray = store / "tmp" / f".tmp-{dead.stdout.strip()}-0123456789abcdef.h5"
    stray.write_bytes(b"half a download")
    with Repo(store) as repo:
        assert not stray.exists()
        assert repo.verify().ok


def test_gc_never_follows_a_symlinked_object(repo, weights, tmp_path, secret):
    version = repo.commit(weights, "model")
    repo.commit({k: v + 1 for k, v in weights.items()}, "model")  # shares no tensor with it
    repo.remove(version.id)
    path = repo.layout.snapshot_path(version.id)
    path.unlink()
    path.symlink_to(secret)
    repo.gc()
    assert secret.read_bytes() == SECRET


def test_a_symlinked_store_folder_is_refused_on_open(tmp_path):
    store, outside = tmp_path / ".mvc", tmp_path / "elsewhere"
    Repo(store).close()
    outside.mkdir()
    (store / "tmp").rmdir()
    (store / "tmp").symlink_to(outside, target_is_directory=True)  # HDF5 temporaries would land there
    with pytest.raises(UnsafeFileError, match="tmp: it is a symbolic link"):
        Repo(store)


def test_the_remote_state_cache_is_a_store_file_too(tmp_path):
    remote = (tmp_path / "remote").as_uri()
    with Repo(tmp_path / "a" / ".mvc") as a:
        a.commit({"w": np.ones(3, np.float32)}, "m")
        a.push(remote)
    with Repo(tmp_path / "b" / ".mvc") as b:
        b.pull(remote)
        (cache,) = (b.layout.root / "remote-state").iterdir()
        cache.unlink()
        cache.symlink_to("/dev/zero")  # read whole, this would never end
        a_version = b.log()[0].id
        assert b.pull(remote).versions == [] and b.log()[0].id == a_version


@pytest.mark.parametrize("name", ["index.sqlite-wal", "index.sqlite-shm"])
def test_sqlite_side_files_linked_elsewhere_are_refused(tmp_path, secret, name):
    store = tmp_path / ".mvc"
    Repo(store).close()
    (store / name).unlink(missing_ok=True)
    (store / name).symlink_to(secret)
    with pytest.raises(UnsafeFileError, match=name):
        Repo(store)
    assert secret.read_bytes() == SECRET

"""Corruption: flipped and truncated snapshots, a deleted or damaged index."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from mvc_magics import Repo
from mvc_magics.errors import IntegrityError, MVCError


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def _tensor_offset(repo, vid, name):
    entry = next(e for e in repo.manifest(vid) if e.name == name)
    with h5py.File(repo.layout.snapshot_path(entry.object), "r") as f:
        return f["tensors"][entry.hash].id.get_offset() + 5


@pytest.fixture
def family(repo, weights):
    """v1, and v2 fine-tuned from it (v2's unchanged tensors live in v1's file)."""
    v1 = repo.commit(weights, "model", tags=["base"], metrics={"loss": 0.9})
    tuned = dict(weights, **{"out/kernel": weights["out/kernel"] * 2})
    v2 = repo.commit(tuned, "model", metrics={"loss": 0.4})
    return repo, v1, v2, tuned


def test_flipped_tensor_byte_is_named_for_every_version_sharing_it(family, weights):
    repo, v1, v2, _ = family
    _flip(repo.layout.snapshot_path(v1.id), _tensor_offset(repo, v1.id, "dense/kernel"))
    report = repo.verify()
    damaged = {(p.version, p.tensor) for p in report.problems if p.tensor}
    assert damaged == {(v1.id, "dense/kernel"), (v2.id, "dense/kernel")}
    shared = next(p for p in report.problems if p.version == v2.id and p.tensor)
    assert f"bytes stored in {v1.id[:12]}" in shared.message
    live = {k: np.zeros_like(v) for k, v in weights.items()}
    for ref in ("base", "latest"):
        with pytest.raises(IntegrityError, match=r"dense/kernel.*damaged"):
            repo.checkout(ref, live, name="model")
    assert not any(v.any() for v in live.values())  # nothing was assigned
    with pytest.raises(IntegrityError):
        repo.checkout("latest", name="model")  # nor built


def test_any_flipped_byte_outside_the_tensors_is_reported(family):
    repo, v1, v2, tuned = family
    path = repo.layout.snapshot_path(v2.id)
    original = path.read_bytes()
    size = len(original)
    offsets = sorted({0, 100, 511, 512, 513, size - 1, *range(600, size, max(1, size // 40))})
    for offset in offsets:
        _flip(path, offset)
        report = repo.verify()
        assert v2.id in report.damaged_versions, f"flip at byte {offset} of {size} went unnoticed"
        assert v1.id not in report.damaged_versions
        try:  # checkout either refuses or, when the flip missed every tensor, loads the right weights
            state = repo.load_state(v2.id)
            assert all(np.array_equal(state[k], tuned[k]) for k in tuned)
        except MVCError:
            pass
        path.write_bytes(original)
    assert repo.verify().ok


@pytest.mark.parametrize("known_offsets", [False, True])
def test_a_damaged_object_header_of_the_tensors_group_is_an_integrity_error(family, known_offsets):
    """HDF5 answers a damaged object header with a KeyError: a read names the damage in one line,
    and checks out nothing, whether its offsets were remembered from an earlier read or not."""
    repo, _, v2, tuned = family
    if known_offsets:
        repo.load_state(v2.id)  # its files' offsets are remembered (storage.snapshots.known_offsets)
    path = repo.layout.snapshot_path(v2.id)
    with h5py.File(path, "r") as f:
        header = h5py.h5o.get_info(f["tensors"].id).addr + f.userblock_size
    _flip(path, header)  # the version byte of the group's object header
    with pytest.raises(IntegrityError, match=v2.id[:12]):
        repo.load_state(v2.id)
    live = {k: np.zeros_like(v) for k, v in tuned.items()}
    with pytest.raises(IntegrityError):
        repo.checkout(v2.id, live, name="model")
    assert not any(v.any() for v in live.values())
    assert v2.id in repo.verify().damaged_versions


def test_truncated_snapshot(family):
    repo, v1, v2, _ = family
    path = repo.layout.snapshot_path(v1.id)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    report = repo.verify()
    assert v1.id in report.damaged_versions and v2.id in report.damaged_versions
    with pytest.raises(IntegrityError, match=v1.id[:12]):
        repo.load_state(v2.id)


def test_missing_snapshot_file(family):
    repo, _, v2, _ = family
    repo.layout.snapshot_path(v2.id).unlink()
    report = repo.verify()
    assert [(p.version, p.message) for p in report.problems] == [
        (v2.id, "indexed but its snapshot file is missing")]
    with pytest.raises(IntegrityError, match="missing"):
        repo.checkout("latest", name="model")


def _assert_everything_back(repo, v1, v2):
    log = repo.log("model")
    assert [v.id for v in log] == [v2.id, v1.id]
    assert log[1].tags == ("base", "stable")
    assert repo.resolve("stable", name="model").id == v1.id
    assert repo.head("model").id == v1.id  # the checkout, not the last commit
    assert log[0].metrics == {"loss": 0.4}
    assert log[1].metrics == {"loss": 0.9, "val_loss": 0.7}  # attached later, from notes/
    assert repo.resolve("best:val_loss", name="model").id == v1.id
    assert repo.verify().ok


# Flipped pages at several places in each page: where the damage lands (a header, a NULL id, text that is
# not UTF-8) decides which error SQLite gives, and every one must end in a rebuilt index.
@pytest.mark.parametrize("damage", ["delete", "garbage", "flip-pages-10", "flip-pages-700", "flip-pages-2000",
                                    "flip-pages-3500", "empty"])
def test_index_is_rebuilt_with_nothing_lost(family, weights, damage):
    repo, v1, v2, _ = family
    repo.tag("base", "stable", name="model", protect=True)
    repo.commit(weights, "model", metrics={"val_loss": 0.7})  # same content as v1: metrics attached
    repo.checkout("base", weights, name="model")
    path = repo.layout.index_path
    repo.close()
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    if damage == "delete":
        path.unlink()
    elif damage == "garbage":
        path.write_bytes(b"this is not a database" * 100)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        data = bytearray(path.read_bytes())
        start = int(damage.rsplit("-", 1)[1])
        for offset in range(4096, len(data), 4096):  # every page after the header
            data[offset + start: offset + start + 50] = b"\xff" * 50
        path.write_bytes(bytes(data))
    try:
        repo = Repo(repo.path)
    except MVCError:
        pytest.fail("a damaged index must be rebuilt on open, not refused")
    try:
        if not repo.verify().ok:  # damage SQLite could not see on open is found by verify...
            repo.reindex()  # ...and reindex rebuilds from the files
        _assert_everything_back(repo, v1, v2)
    finally:
        repo.close()


def test_an_index_row_without_an_id_is_reported_and_rebuilt(family):
    """Damaged pages can read back as a NULL id despite NOT NULL (CI once saw verify fail sorting one)."""
    import sqlite3

    repo, v1, v2, _ = family
    path = repo.layout.index_path
    repo.close()
    db = sqlite3.connect(path)
    with db:  # NOT NULL is not checked on read: write the row as damage would leave it
        db.execute("PRAGMA writable_schema=ON")
        db.execute("UPDATE sqlite_schema SET sql=replace(sql, 'id TEXT UNIQUE NOT NULL', 'id TEXT UNIQUE') "
                   "WHERE name='versions'")
    db.close()
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE versions SET id=NULL WHERE id=?", (v2.id,))
    db.close()
    repo = Repo(repo.path)
    try:
        report = repo.verify()
        assert any(p.version == "index" and "without an id" in p.message for p in report.problems)
        repo.reindex()
        assert [v.id for v in repo.log("model")] == [v2.id, v1.id]
        assert repo.verify().ok
    finally:
        repo.close()


def test_reindex_rebuilds_the_same_index(family, weights):
    repo, v1, v2, _ = family
    repo.tag("base", "stable", name="model", protect=True)
    repo.commit(weights, "model", metrics={"val_loss": 0.7})
    repo.checkout("base", weights, name="model")
    assert repo.reindex() == 2
    _assert_everything_back(repo, v1, v2)
    assert repo.resolve("stable", name="model").tags == ("base", "stable")
    with pytest.raises(MVCError, match="protected"):
        repo.untag("stable", name="model")

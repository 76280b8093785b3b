"""A snapshot file that is not HDF5 at all (a truncated upload, a teammate's stray file, bit rot
in the header): pull, gc and repack name it and handle it on its own instead of stopping at a raw
OSError from h5py."""

from __future__ import annotations

import os

import numpy as np
import pytest

from mvc_magics import Repo
from mvc_magics.errors import IntegrityError
from mvc_magics.storage.snapshots.deltas import base_references


def _plant_garbage(path):
    """Replace a file by as many bytes of text, keeping its size (remotes check listed sizes)."""
    size = path.stat().st_size
    os.chmod(path, 0o644)
    path.write_bytes((b"not an hdf5 file\n" * (size // 17 + 1))[:size])


def _versions(repo, name, steps, seed):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((64, 64)) * 0.05).astype(np.float32)
    out = []
    for _ in range(steps):
        out.append((repo.commit({"w": w}, name), w.copy()))
        w = w - np.float32(1e-4) * rng.standard_normal(w.shape).astype(np.float32)
    return out


def _file(repo, vid):
    return repo.path / "objects" / vid[:2] / f"{vid}.h5"


def test_base_references_of_a_file_that_is_not_hdf5_is_one_typed_line(tmp_path):
    path = tmp_path / "x.h5"
    path.write_bytes(b"hello" * 100)
    with pytest.raises(IntegrityError, match=r"^snapshot x\.h5 is not a readable HDF5 file \([^\n]*\)$"):
        base_references(path)


def test_pull_imports_the_rest_and_names_the_object_that_is_not_hdf5(tmp_path):
    remote = tmp_path / "remote"
    with Repo(tmp_path / "a" / ".mvc") as a:
        (good, good_w), = _versions(a, "good", 1, 0)
        (bad, _), = _versions(a, "bad", 1, 1)
        a.push(remote.as_uri())
    _plant_garbage(next(remote.rglob(f"{bad.id}.h5")))
    with Repo(tmp_path / "b" / ".mvc") as b:
        with pytest.raises(IntegrityError, match=f"{bad.id[:12]}.*not a readable HDF5 file"):
            b.pull(remote.as_uri())
        assert b.load_state(good.id)["w"].tobytes() == good_w.tobytes()
        assert not b.store.has_version(bad.id)
        assert b.verify().ok


def test_gc_deletes_a_garbage_file_no_version_needs_and_refuses_one_versions_need(repo):
    (old, _), = _versions(repo, "old", 1, 0)
    chain = _versions(repo, "net", 3, 1)
    repo.remove(old.id, force=True)
    _plant_garbage(_file(repo, old.id))
    report = repo.gc()  # nothing needs the removed, unreadable file: it is garbage all the same
    assert report.files_deleted == 1 and not _file(repo, old.id).exists()

    repo.gc(repack=True)  # the older versions become deltas against the newest, kept whole
    newest = chain[-1][0].id
    repo.remove(newest, force=True)
    repo.gc()  # the removed newest version's file stays: it holds the bases
    holder = _file(repo, newest)
    assert holder.exists()
    _plant_garbage(holder)
    files_before = sorted(p.name for p in (repo.path / "objects").rglob("*.h5"))
    with pytest.raises(IntegrityError, match=f"{newest}.h5 is not a readable HDF5 file.*gc deleted nothing"):
        repo.gc()
    assert sorted(p.name for p in (repo.path / "objects").rglob("*.h5")) == files_before


def test_repack_names_a_file_that_is_not_hdf5_and_repacks_every_other(repo, monkeypatch):
    monkeypatch.setenv("MVC_CODING", "off")
    net = _versions(repo, "net", 3, 0)
    (bad, _), = _versions(repo, "bad", 1, 1)
    monkeypatch.delenv("MVC_CODING")
    _plant_garbage(_file(repo, bad.id))
    report = repo.gc(repack=True)
    assert list(report.damaged) == [bad.id] and "not a readable HDF5 file" in report.damaged[bad.id]
    assert "1 damaged file(s)" in str(report)
    assert report.versions_recoded == 3 and report.bytes_after < report.bytes_before
    for version, expected in net:
        assert repo.load_state(version.id)["w"].tobytes() == expected.tobytes()

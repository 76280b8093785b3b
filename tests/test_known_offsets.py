"""Where loose tensors start, remembered per snapshot file identity (storage/snapshots/known_offsets):
a second checkout of a file maps it without HDF5, a rewritten file is looked up again, and a
remembered offset is never trusted: the bytes there are hashed like any others."""

from __future__ import annotations

import os

import numpy as np
import pytest
from reliability_helpers import flip_tensor_byte

from mvc_magics import Repo
from mvc_magics.errors import IntegrityError
from mvc_magics.storage.codec.tensor_decode import FileMaps
from mvc_magics.storage.snapshots import known_offsets
from mvc_magics.storage.snapshots.snapshot import TensorReader


def _weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"w{i}": rng.standard_normal(300_000).astype(np.float32) for i in range(3)}  # 3.6 MB: threaded


def _hdf5_opens(monkeypatch) -> list[str]:
    """The snapshot files a checkout's reader opens with HDF5 from here on (object ids)."""
    opened: list[str] = []
    original = TensorReader._open_file

    def counted(self, object_id):
        if object_id not in self._files:
            opened.append(object_id)
        return original(self, object_id)

    monkeypatch.setattr(TensorReader, "_open_file", counted)
    return opened


def test_a_second_checkout_maps_the_file_without_hdf5_and_loads_the_same(repo: Repo, monkeypatch):
    known_offsets.forget()
    weights = _weights(1)
    version = repo.commit(weights, "m")
    opened = _hdf5_opens(monkeypatch)
    mapped: list[object] = []
    map_descriptor = FileMaps.map_descriptor

    def recorded(self, key, fd):
        mapped.append(key)
        return map_descriptor(self, key, fd)

    monkeypatch.setattr(FileMaps, "map_descriptor", recorded)
    first = {k: np.zeros_like(v) for k, v in weights.items()}
    repo.checkout(version.id, first, name="m")
    assert opened == [version.id]  # looked up once, through HDF5
    assert len(mapped) == 1 and isinstance(mapped[0], int)  # mapped once: through HDF5's descriptor
    second = {k: np.zeros_like(v) for k, v in weights.items()}
    repo.checkout(version.id, second, name="m")
    assert opened == [version.id]  # remembered: HDF5 not opened again
    assert len(mapped) == 2 and mapped[1] == ("file", str(repo.layout.snapshot_path(version.id)))
    assert all(np.array_equal(first[k], weights[k]) and np.array_equal(second[k], weights[k]) for k in weights)


def test_a_rewritten_file_is_looked_up_again_and_its_damage_found(repo: Repo, monkeypatch):
    known_offsets.forget()
    weights = _weights(2)
    version = repo.commit(weights, "m")
    repo.checkout(version.id, {k: np.zeros_like(v) for k, v in weights.items()}, name="m")
    flip_tensor_byte(repo, version.id, repo.manifest(version.id)[1].hash, 7)  # rewritten: another identity
    opened = _hdf5_opens(monkeypatch)
    live = {k: np.zeros_like(v) for k, v in weights.items()}
    with pytest.raises(IntegrityError, match="w1"):
        repo.checkout(version.id, live, name="m")
    assert opened == [version.id] and all(not v.any() for v in live.values())  # untouched


def test_a_wrong_remembered_offset_only_fails_the_hash(repo: Repo):
    known_offsets.forget()
    weights = _weights(3)
    version = repo.commit(weights, "m")
    repo.checkout(version.id, {k: np.zeros_like(v) for k, v in weights.items()}, name="m")
    path = repo.layout.snapshot_path(version.id)
    fd = os.open(path, os.O_RDONLY)
    try:
        identity = known_offsets.identity(fd)
    finally:
        os.close(fd)
    entries = repo.manifest(version.id)
    offsets = known_offsets.known(identity, [e.hash for e in entries])
    assert offsets is not None and all(isinstance(v, int) for v in offsets.values())
    known_offsets.remember(identity, {entries[0].hash: offsets[entries[0].hash] + 4})  # as if it were stale
    live = {k: np.ones_like(v) for k, v in weights.items()}
    with pytest.raises(IntegrityError, match="w0"):
        repo.checkout(version.id, live, name="m")
    assert all((v == 1).all() for v in live.values())
    known_offsets.remember(identity, {entries[0].hash: os.path.getsize(path)})  # past the end: the checked path
    repo.checkout(version.id, live, name="m")
    assert all(np.array_equal(live[k], weights[k]) for k in weights)


def test_the_least_recently_used_files_are_forgotten_first(monkeypatch):
    known_offsets.forget()
    monkeypatch.setattr(known_offsets, "LIMIT", 2)
    for file in ((1,), (2,), (3,)):
        known_offsets.remember(file, {"a": 10})
        if file == (2,):
            assert known_offsets.known((1,), ["a"]) == {"a": 10}  # (1,) used again: (2,) is the oldest
    assert known_offsets.known((2,), ["a"]) is None
    assert known_offsets.known((1,), ["a"]) == {"a": 10} and known_offsets.known((3,), ["a"]) == {"a": 10}
    assert known_offsets.known((3,), ["a", "b"]) is None  # one hash not remembered: looked up again

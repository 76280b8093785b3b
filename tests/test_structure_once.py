"""Each distinct structure is stored once (snapshot format 3): later versions reference it by hash.

Real Keras models, real stores and HDF5 files. The structure's blob lives under /tensors/<hash> of
the first file that needed it; every read re-hashes it and checks the version id against it.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from keras_models import conv_bn_model, dense_model

from mvc_magics import Repo
from mvc_magics.core.hashing import canonical_json, tensor_hash
from mvc_magics.errors import IntegrityError, StoreFormatError
from mvc_magics.storage.snapshots import snapshot
from mvc_magics.storage.snapshots.snapshot_writer import _stamp_checksum


def _file(repo, vid):
    return repo.layout.snapshot_path(vid)


def _attrs(repo, vid) -> dict:
    with h5py.File(_file(repo, vid), "r") as f:
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()} | {
            "has_structure_dataset": "structure" in f, "tensors": set(f["tensors"])}


def _nudge(model, step: float) -> None:
    for variable in model.trainable_variables:
        variable.assign(variable.numpy() + np.float32(step))


def _two_versions(repo, model):
    """Commit ``model``, change every weight a little, commit again: (first, second)."""
    first = repo.commit(model, "m")
    _nudge(model, 1e-3)
    return first, repo.commit(model, "m")


def test_a_second_version_references_the_stored_structure_and_reads_it_back_verified(repo):
    model = conv_bn_model()
    first, second = _two_versions(repo, model)
    a, b = _attrs(repo, first.id), _attrs(repo, second.id)
    assert int(a["mvc_format_version"]) == 3 and int(b["mvc_format_version"]) == 3
    assert not a["has_structure_dataset"] and not b["has_structure_dataset"]
    holder, digest, size = b["mvc_structure"].split("/")
    assert a["mvc_structure"] == b["mvc_structure"] and holder == first.id
    assert digest in a["tensors"] and digest not in b["tensors"]  # stored once, in the first file
    structure = repo.store.structure(second.id)
    assert canonical_json(structure).encode().__len__() == int(size)
    with h5py.File(_file(repo, first.id), "r") as f:  # plain h5py reads it: raw canonical JSON bytes
        blob = f["tensors"][digest][()]
    assert json.loads(blob.tobytes()) == structure
    assert tensor_hash(blob) == digest
    # The structure's bytes are in the first file only (HDF5's own overhead makes file sizes a poor measure).
    assert blob.tobytes() in _file(repo, first.id).read_bytes()
    assert blob.tobytes() not in _file(repo, second.id).read_bytes()
    rebuilt = repo.checkout(second.id, name="rebuilt")  # rebuilt from the referenced structure
    assert [w.shape for w in rebuilt.weights] == [w.shape for w in model.weights]
    assert repo.verify().ok


def test_a_different_structure_is_stored_in_its_own_file(repo):
    first = repo.commit(dense_model(), "m")
    other = repo.commit(conv_bn_model(), "m")
    assert _attrs(repo, other.id)["mvc_structure"].split("/")[0] == other.id
    assert repo.store.structure(other.id) != repo.store.structure(first.id)


def _flip_blob(repo, holder: str, digest: str) -> None:
    path = _file(repo, holder)
    with h5py.File(path, "r") as f:
        offset = f["tensors"][digest].id.get_offset() + 10
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))
    _stamp_checksum(path)  # an edit, not an accident: only the hashes can tell


def test_a_damaged_or_missing_structure_holder_is_named_by_verify_and_refused_on_read(repo):
    first, second = _two_versions(repo, dense_model())
    holder, digest, _ = _attrs(repo, second.id)["mvc_structure"].split("/")
    _flip_blob(repo, holder, digest)
    repo.store._contents.clear()  # the verified content is cached per file; the holder changed
    with pytest.raises(IntegrityError, match=f"structure stored in {first.id[:12]}: content does not match"):
        repo.checkout(second.id, name="again")
    problems = {p.version: p.message for p in repo.verify().problems}
    assert f"structure stored in {first.id[:12]}" in problems[second.id]
    assert f"structure stored in {first.id[:12]}" in problems[first.id]
    _file(repo, first.id).unlink()
    repo.store._contents.clear()
    problems = {p.version: p.message for p in repo.verify().problems}
    assert f"structure stored in {first.id[:12]}: snapshot file of {first.id[:12]} is missing" in problems[second.id]


def test_gc_keeps_the_structure_a_remaining_version_reads_from_a_removed_one(repo):
    model = dense_model()
    first, second = _two_versions(repo, model)
    _, digest, _ = _attrs(repo, second.id)["mvc_structure"].split("/")
    repo.remove(first.id, force=True)
    report = repo.gc()
    assert report.files_rewritten == 1 and report.files_deleted == 0
    kept = _attrs(repo, first.id)
    assert kept.get("mvc_retired") and kept["tensors"] == {digest}  # only the structure: the tensors all changed
    assert repo.store.structure(second.id) == repo.store.structure(second.id)
    repo.checkout(second.id, name="after_gc")
    assert repo.verify().ok
    # Committed again, the removed content gets a complete file back, structure included.
    _nudge(model, -1e-3)
    again = repo.commit(model, "m")
    assert again.id == first.id and digest in _attrs(repo, first.id)["tensors"]
    assert repo.verify().ok


def test_gc_deletes_a_structure_no_remaining_version_reads(repo):
    first = repo.commit(dense_model(), "m")
    second = repo.commit(conv_bn_model(), "m")
    repo.remove(first.id, force=True)
    assert repo.gc().files_deleted == 1
    assert not _file(repo, first.id).exists()
    _nudge_model = dense_model()  # the same structure again: stored anew, in the new version's file
    third = repo.commit(_nudge_model, "m")
    assert _attrs(repo, third.id)["mvc_structure"].split("/")[0] == third.id
    assert repo.verify().ok and second.id in {v.id for v in repo.log("m")}


def test_push_pull_and_clone_move_the_structure_holder(tmp_path):
    model = conv_bn_model()
    with Repo(tmp_path / "a" / ".mvc") as a:
        first, second = _two_versions(a, model)
        a.add_remote("origin", (tmp_path / "remote").as_uri())
        a.push(refs=[second.id])  # the holder travels as a dependency of the version pushed
        expected = a.store.structure(second.id)
    with Repo(tmp_path / "b" / ".mvc") as b:
        b.add_remote("origin", (tmp_path / "remote").as_uri())
        b.pull()
        assert b.store.structure(second.id) == expected
        assert (b.path / "objects" / first.id[:2] / f"{first.id}.h5").exists()
        b.checkout(second.id, name="pulled")
        assert b.verify().ok
    clone = Repo.clone((tmp_path / "remote").as_uri(), tmp_path / "c" / ".mvc")
    with clone:
        assert clone.store.structure(second.id) == expected and clone.verify().ok


def test_stores_written_before_format_3_stay_readable_and_dedup_starts_afresh(repo, monkeypatch):
    monkeypatch.setenv("MVC_CODING", "off")  # what older mvc_magics wrote: /structure inside each file
    model = dense_model()
    old = repo.commit(model, "m")
    old_attrs = _attrs(repo, old.id)
    assert int(old_attrs["mvc_format_version"]) == 1 and old_attrs["has_structure_dataset"]
    assert "mvc_structure" not in old_attrs
    monkeypatch.delenv("MVC_CODING")
    _nudge(model, 1e-3)
    new = repo.commit(model, "m")
    assert _attrs(repo, new.id)["mvc_structure"].split("/")[0] == new.id
    assert repo.store.structure(old.id) == repo.store.structure(new.id)
    repo.checkout(old.id, name="old")
    assert repo.reindex() == 2 and repo.verify().ok


def test_a_reader_of_version_2_refuses_a_format_3_file_with_a_clear_message(repo, monkeypatch):
    version = repo.commit(dense_model(), "m")
    monkeypatch.setattr(snapshot, "READABLE_VERSIONS", frozenset({1, 2}))
    monkeypatch.setattr(snapshot, "FORMAT_VERSION", 2)
    with pytest.raises(StoreFormatError, match=r"snapshot format version 3; this mvc_magics reads version 2 "
                                               r"\(upgrade mvc_magics\)"):
        snapshot.read_content(_file(repo, version.id))


def _point_reference(repo, vid: str, value: str) -> None:
    path = _file(repo, vid)
    with h5py.File(path, "r+") as f:
        f.attrs["mvc_structure"] = value
    _stamp_checksum(path)
    repo.store._contents.clear()


@pytest.mark.parametrize("case", ["missing", "not-hdf5", "foreign", "reference-only", "malformed"])
def test_a_hostile_structure_reference_is_one_typed_line(repo, case, tmp_path):
    first, second = _two_versions(repo, dense_model())
    third = repo.commit({"w": np.ones(3, np.float32)}, "plain")  # a file without the blob
    _, digest, size = _attrs(repo, second.id)["mvc_structure"].split("/")
    if case == "missing":
        value, expected = f"{'e' * 64}/{digest}/{size}", f"snapshot file of {'e' * 12} is missing"
    elif case == "not-hdf5":
        junk = "f" * 64
        path = repo.layout.snapshot_path(junk)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not an HDF5 file at all" * 40)
        value, expected = f"{junk}/{digest}/{size}", "not a readable HDF5 file"
    elif case == "foreign":  # a real snapshot that does not hold those bytes
        value, expected = f"{third.id}/{digest}/{size}", f"bytes missing from snapshot {third.id[:12]}"
    elif case == "reference-only":  # a file that itself only references the blob: never followed further
        value, expected = f"{second.id}/{digest}/{size}", f"bytes missing from snapshot {second.id[:12]}"
    else:
        value, expected = f"{first.id}/{digest}", "malformed structure reference"
    _point_reference(repo, second.id, value)
    with pytest.raises(IntegrityError, match=expected) as caught:
        repo.checkout(second.id, name="hostile")
    assert "\n" not in str(caught.value)
    problems = {p.version: p.message for p in repo.verify().problems}
    assert expected in problems[second.id]


def test_an_edited_reference_to_another_structure_fails_the_version_id(repo):
    """Pointing a version at a different (intact) structure: the blob hashes fine, the id does not."""
    first = repo.commit(dense_model(), "m")
    other = repo.commit(conv_bn_model(), "n")
    _point_reference(repo, first.id, _attrs(repo, other.id)["mvc_structure"])
    with pytest.raises(IntegrityError, match="does not hash to the version id"):
        repo.checkout(first.id, name="edited")


def test_a_pull_refuses_a_version_whose_structure_holder_it_refused(tmp_path):
    """The holder's tensor is damaged on the remote (its structure blob is intact): the holder is
    refused, and so is the version that reads its structure from it (checked through the holder's
    download, which is not placed): nothing half-readable is imported."""
    model = dense_model()
    with Repo(tmp_path / "a" / ".mvc") as a:
        first = a.commit(model, "m")
        _nudge(model, 1e-3)
        second = a.commit(model, "m")  # every tensor changed: only the structure comes from `first`
        a.add_remote("origin", (tmp_path / "remote").as_uri())
        a.push()
    remote_file = tmp_path / "remote" / "objects" / first.id[:2] / f"{first.id}.h5"
    with h5py.File(remote_file, "r") as f:
        kernel = next(e for e in json.loads(f["manifest"][()]) if e["name"].endswith("kernel"))
        offset = f["tensors"][kernel["hash"]].id.get_offset() + 4
    with open(remote_file, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with Repo(tmp_path / "b" / ".mvc") as b:
        b.add_remote("origin", (tmp_path / "remote").as_uri())
        with pytest.raises(IntegrityError) as refused:
            b.pull(refs=[second.id])  # `second` is checked first, through the holder's download
        assert "2 object(s)" in str(refused.value)
        assert f"{second.id[:12]} reads bytes from {first.id[:12]}, which was refused" in str(refused.value)
        assert not b.log("m") and b.verify().ok


def test_the_version_id_does_not_depend_on_where_the_structure_is_stored(tmp_path, monkeypatch):
    """The same model committed as format 1 (structure inside the file) and as format 3 (stored
    once, referenced) gets the same id: the id is over the structure, not over its storage."""
    model = conv_bn_model()
    with Repo(tmp_path / "three" / ".mvc") as repo:
        referenced = repo.commit(model, "m")
        assert int(_attrs(repo, referenced.id)["mvc_format_version"]) == 3
    monkeypatch.setenv("MVC_CODING", "off")
    with Repo(tmp_path / "one" / ".mvc") as repo:
        inline = repo.commit(model, "m")
        assert _attrs(repo, inline.id)["has_structure_dataset"]
    assert inline.id == referenced.id

"""Hostile files and names: links out of the store, shape bombs, code in structures, pickles, paths."""

from __future__ import annotations

import json
import pickle
import tracemalloc

import h5py
import numpy as np
import pytest
from IPython.core.error import UsageError

from mvc_magics import Repo
from mvc_magics.core.hashing import tensor_hash, version_id
from mvc_magics.core.names import validate_name
from mvc_magics.errors import IntegrityError, InvalidNameError, MVCError, UnsupportedModelError


@pytest.fixture
def stored(repo):
    model = {"w": np.arange(12, dtype=np.float32).reshape(3, 4)}
    version = repo.commit(model, "model")
    entry = repo.manifest(version.id)[0]
    return repo, version, entry, model


def _replace_tensor(repo, vid, digest, make):
    with h5py.File(repo.layout.snapshot_path(vid), "r+") as f:
        del f["tensors"][digest]
        make(f, f["tensors"], digest)


def _outside(tmp_path, data):
    path = tmp_path / "outside.h5"
    with h5py.File(path, "w") as f:
        f["data"] = data
    return path


def _assert_refused(repo, version, model, match):
    live = {"w": np.zeros_like(model["w"])}
    with pytest.raises(IntegrityError, match=match):
        repo.checkout(version.id, live, name="model")
    assert not live["w"].any()
    assert version.id in repo.verify().damaged_versions


def test_external_link_is_refused_even_with_the_right_bytes(stored, tmp_path):
    repo, version, entry, model = stored
    outside = _outside(tmp_path, model["w"])
    link = h5py.ExternalLink(str(outside), "data")
    _replace_tensor(repo, version.id, entry.hash, lambda f, g, d: g.__setitem__(d, link))
    _assert_refused(repo, version, model, "soft or external link")


def test_soft_link_is_refused(stored):
    repo, version, entry, model = stored

    def make(f, group, digest):
        f["elsewhere"] = model["w"]
        group[digest] = h5py.SoftLink("/elsewhere")

    _replace_tensor(repo, version.id, entry.hash, make)
    _assert_refused(repo, version, model, "soft or external link")


def test_virtual_dataset_pointing_outside_is_refused(stored, tmp_path):
    repo, version, entry, model = stored
    outside = _outside(tmp_path, model["w"])

    def make(f, group, digest):
        layout = h5py.VirtualLayout(shape=(3, 4), dtype=np.float32)
        layout[:] = h5py.VirtualSource(str(outside), "data", shape=(3, 4))
        group.create_virtual_dataset(digest, layout)

    _replace_tensor(repo, version.id, entry.hash, make)
    _assert_refused(repo, version, model, "virtual, external or chunked")


def test_external_raw_storage_is_refused(stored, tmp_path):
    repo, version, entry, model = stored
    raw = tmp_path / "raw.bin"
    raw.write_bytes(model["w"].tobytes())
    _replace_tensor(repo, version.id, entry.hash, lambda f, g, d: g.create_dataset(
        d, shape=(3, 4), dtype=np.float32, external=[(str(raw), 0, 48)]))
    _assert_refused(repo, version, model, "virtual, external or chunked")


def test_metadata_link_is_refused(stored, tmp_path):
    repo, version, _, _ = stored
    outside = tmp_path / "meta.h5"
    with h5py.File(outside, "w") as f:
        f.create_dataset("manifest", data="[]", dtype=h5py.string_dtype())
    with h5py.File(repo.layout.snapshot_path(version.id), "r+") as f:
        del f["manifest"]
        f["manifest"] = h5py.ExternalLink(str(outside), "manifest")
    report = repo.verify()
    assert any(p.version == version.id and "link, refused" in p.message for p in report.problems)


def test_symlinked_snapshot_file_is_refused(stored, tmp_path):
    repo, version, _, model = stored
    path = repo.layout.snapshot_path(version.id)
    copy = tmp_path / "elsewhere.h5"
    copy.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(copy)
    _assert_refused(repo, version, model, "symbolic link")


def _hostile_snapshot(repo, entries, fill, name="model"):
    """A snapshot with a consistent id whose manifest and datasets say what the test wants."""
    vid = version_id(None, [(e["name"], e["dtype"], e["shape"], e["hash"]) for e in entries])
    for e in entries:
        e["object"] = vid
    path = repo.layout.snapshot_path(vid)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"name": name, "created": "2026-11-26T00:00:00+00:00", "parents": [], "framework": "numpy"}
    with h5py.File(path, "w") as f:
        f.attrs.update({"mvc_format": "mvc-snapshot", "mvc_format_version": 1, "version_id": vid})
        f.create_dataset("meta", data=json.dumps(meta), dtype=h5py.string_dtype())
        f.create_dataset("manifest", data=json.dumps(entries), dtype=h5py.string_dtype())
        fill(f.create_group("tensors"))
    return vid


def test_shape_bomb_is_refused_before_allocating(repo):
    digest = "ab" * 32
    shape = [1 << 20, 1 << 20]  # 8 TiB of float64 declared, nothing stored
    entries = [{"name": "w", "dtype": "float64", "shape": shape, "hash": digest, "nbytes": 8 << 40}]
    vid = _hostile_snapshot(repo, entries, lambda g: g.create_dataset(digest, shape=tuple(shape), dtype=np.float64))
    repo.close()
    with Repo(repo.path) as reopened:  # indexed on open like any snapshot a killed commit left
        tracemalloc.start()
        with pytest.raises(IntegrityError, match="stored bytes do not match the declared shape"):
            reopened.load_state(vid)
        assert tracemalloc.get_traced_memory()[1] < 16 << 20
        tracemalloc.stop()
        assert vid in reopened.verify().damaged_versions


def test_declared_shape_larger_than_the_dataset_is_refused(repo):
    digest = "cd" * 32
    entries = [{"name": "w", "dtype": "float32", "shape": [4096, 4096], "hash": digest, "nbytes": 4 << 24}]
    vid = _hostile_snapshot(repo, entries, lambda g: g.create_dataset(digest, data=np.zeros(4, np.float32)))
    repo.close()
    with Repo(repo.path) as reopened, pytest.raises(IntegrityError, match="differs from the manifest"):
        reopened.load_state(vid)


def test_overflowing_shape_is_malformed(repo):
    digest = "ef" * 32
    entries = [{"name": "w", "dtype": "float64", "shape": [1 << 62, 1 << 62, 4], "hash": digest, "nbytes": 0}]
    vid = _hostile_snapshot(repo, entries, lambda g: None)
    report = repo.verify()
    assert any(p.version == vid and "declared size" in p.message for p in report.problems)


def test_hostile_model_name_in_a_snapshot_is_never_used_as_a_path(repo, tmp_path):
    data = np.ones(3, np.float32)
    digest = tensor_hash(data)
    entries = [{"name": "w", "dtype": "float32", "shape": [3], "hash": digest, "nbytes": 12}]
    vid = _hostile_snapshot(repo, entries, lambda g: g.create_dataset(digest, data=data), name="../../escape")
    repo.close()
    with Repo(repo.path) as reopened:
        assert reopened.log() == []  # not indexed
        assert any(p.version == vid and "invalid model name" in p.message for p in reopened.verify().problems)
        reopened.reindex()
        assert reopened.log() == []
    assert not (tmp_path / "escape").exists() and not (repo.path / "escape").exists()


def test_hostile_ref_file_names_are_ignored(repo, weights):
    version = repo.commit(weights, "model", tags=["good"])
    tags = repo.layout.refs / "model" / "tags"
    (tags / "..sneaky").write_text(json.dumps({"id": version.id}))
    (tags / "bell\x07").write_text(json.dumps({"id": version.id}))
    (repo.layout.refs / "bad model").mkdir()
    (repo.layout.refs / "bad model" / "HEAD").write_text(version.id)
    repo.reindex()
    assert repo.log()[0].tags == ("good",)
    assert repo.models() == ["model"]


@pytest.mark.parametrize("name", ["../x", "a/b", "a\\b", "..", ".hidden", "/abs", "C:", "x\x00y", "tab\tname",
                                  "a\uff0fb", "\u2025", "\ufe52\ufe52x", "HEAD", "latest", "x~1", "", "a" * 200])
def test_unsafe_names_are_refused(repo, weights, name):
    with pytest.raises(InvalidNameError):
        validate_name(name)
    with pytest.raises(InvalidNameError):
        repo.commit(weights, name)
    with pytest.raises(MVCError):
        repo.commit(weights, "model", tags=[name])
    assert repo.log() == []


def _lambda_model(marker):
    import keras

    keras.utils.set_random_seed(0)
    # The Lambda's code leaves a mark when it runs (Keras runs it whenever it builds the model).
    double = eval(f"lambda x: __import__('pathlib').Path({str(marker)!r}).touch() or x * 2")
    return keras.Sequential([keras.Input((2,)), keras.layers.Lambda(double), keras.layers.Dense(1)])


def test_lambda_code_never_runs_unless_unsafe(repo, tmp_path):
    marker = tmp_path / "lambda-ran"
    model = _lambda_model(marker)
    x = np.ones((1, 2), np.float32)
    expected = model.predict(x, verbose=0)
    repo.commit(model, "model")
    marker.unlink()
    with pytest.raises(UnsupportedModelError, match="cannot rebuild"):
        repo.checkout("latest", name="model")
    assert not marker.exists()
    rebuilt = repo.checkout("latest", name="model", unsafe=True)
    assert marker.exists()
    assert np.allclose(rebuilt.predict(x, verbose=0), expected)


def test_lambda_magic_needs_unsafe(ip, tmp_path):
    marker = tmp_path / "lambda-ran"
    ip.user_ns["model"] = _lambda_model(marker)
    ip.run_line_magic("mvc_commit", "model")
    marker.unlink()
    with pytest.raises(UsageError, match="cannot rebuild"):
        ip.run_line_magic("mvc_checkout", "latest --as copy")
    assert "copy" not in ip.user_ns and not marker.exists()
    ip.run_line_magic("mvc_checkout", "latest --as copy --unsafe")
    assert marker.exists()


def test_structure_naming_foreign_code_is_refused(repo, monkeypatch):
    from keras_models import dense_model

    from mvc_magics.adapters.keras import KerasAdapter

    model = dense_model()
    original = KerasAdapter.structure

    def poisoned(self, m):
        config = original(self, m)
        config["config"]["layers"][1]["module"] = "os"
        return config

    monkeypatch.setattr(KerasAdapter, "structure", poisoned)
    repo.commit(model, "model")
    monkeypatch.undo()
    with pytest.raises(UnsupportedModelError, match="runs that class's code"):
        repo.checkout("latest", name="model")


def test_nothing_is_ever_unpickled(repo, weights, monkeypatch):
    from keras_models import dense_model

    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    class Refusing:
        def __init__(self, *args, **kwargs):
            refuse()

    model = dense_model()
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", Refusing)
    repo.commit(weights, "weights")
    repo.commit(model, "model")
    repo.checkout("latest", weights, name="weights")
    rebuilt = repo.checkout("latest", name="model")
    repo.checkout("latest", model, name="model")
    assert repo.verify().ok
    repo.reindex()
    assert len(rebuilt.weights) == len(model.weights)

"""What checkout loads is what the version id names: the index is a cache, never the authority."""

from __future__ import annotations

import json
import sqlite3

import h5py
import numpy as np
import pytest

from mvc_magics.adapters.base import match_state
from mvc_magics.errors import IntegrityError, InvalidNameError
from mvc_magics.storage.snapshots.snapshot_writer import _stamp_checksum


@pytest.fixture
def hmac_key(monkeypatch):
    monkeypatch.delenv("MVC_SIGNING_KEY_FILE", raising=False)
    monkeypatch.setenv("MVC_SIGNING_KEY", "correct horse battery staple")


def _two_versions(repo):
    rng = np.random.default_rng(1)
    first = {"dense/kernel": rng.standard_normal((8, 4)).astype(np.float32),
             "dense/bias": rng.standard_normal(4).astype(np.float32)}
    second = {k: v + 1 for k, v in first.items()}
    v1 = repo.commit(first, "model", tags=["old"])
    v2 = repo.commit(second, "model", tags=["production"])
    return v1, v2, first, second


def _edit_index(repo, sql, params=()):
    conn = sqlite3.connect(repo.layout.index_path)
    with conn:
        conn.execute(sql, params)
    conn.close()


def _rewrite_file(path, old: bytes, new: bytes) -> None:
    """Replace bytes inside a snapshot file and restamp its checksum (what an attacker with write
    access can do: the checksum only catches accidents)."""
    assert len(old) == len(new)
    data = path.read_bytes()
    assert data.count(old) == 1, data.count(old)
    path.write_bytes(data.replace(old, new))
    _stamp_checksum(path)


def test_edited_manifest_row_does_not_change_what_checkout_loads(repo, hmac_key):
    v1, v2, first, second = _two_versions(repo)
    row = repo.index.query("SELECT manifest FROM versions WHERE id = ?", (v1.id,))[0][0]
    _edit_index(repo, "UPDATE versions SET manifest = ? WHERE id = ?", (row, v2.id))
    loaded = repo.checkout("production", name="model", require_signature=True)
    assert {k: v.tolist() for k, v in loaded.items()} == {k: v.tolist() for k, v in second.items()}
    live = {k: np.zeros_like(v) for k, v in first.items()}
    repo.checkout("production", live, name="model", require_signature=True)
    assert all(np.array_equal(live[k], second[k]) for k in second)
    problems = [(p.version, p.message) for p in repo.verify().problems]
    assert (f"index versions {v2.id[:16]}", "manifest differ(s) from the files (run reindex)") \
        in problems, problems


def test_gc_does_not_trust_an_edited_manifest_row(repo):
    v1, v2, _, _ = _two_versions(repo)
    row = repo.index.query("SELECT manifest FROM versions WHERE id = ?", (v1.id,))[0][0]
    _edit_index(repo, "UPDATE versions SET manifest = ? WHERE id = ?", (row, v2.id))
    repo.remove(v1.id)
    repo.gc()
    assert not repo.layout.snapshot_path(v1.id).exists()  # nothing that v2 really uses was in it


def test_edited_snapshot_manifest_is_refused_on_checkout(repo):
    v1, v2, _first, _ = _two_versions(repo)
    path = repo.layout.snapshot_path(v2.id)
    # Point v2's first tensor at v1's bytes (same dtype and shape), restamp the checksum.
    old_entry, new_entry = repo.manifest(v2.id)[0], repo.manifest(v1.id)[0]
    old = json.dumps(old_entry.hash).encode()
    _rewrite_file(path, old, json.dumps(new_entry.hash).encode())
    with pytest.raises(IntegrityError, match="does not hash to the version id"):
        repo.checkout("production", name="model")


def test_flipped_structure_bit_is_caught_on_rebuild(repo):
    from keras_models import dense_model

    model = dense_model()
    version = repo.commit(model, "m")
    path = repo.layout.snapshot_path(version.id)
    # Format 3 stores the structure once, as its canonical JSON bytes under /tensors/<hash>.
    _rewrite_file(path, b'"activation":"relu"', b'"activation":"selu"')
    with pytest.raises(IntegrityError, match=r"structure stored in .*does not match its hash"):
        repo.checkout(version.id, name="m2")


def test_manifest_order_does_not_decide_which_variable_gets_which_tensor(repo):
    a, b = np.full((3, 3), 1.0, np.float32), np.full((3, 3), 2.0, np.float32)
    version = repo.commit({"dense_1/kernel": a, "dense_2/kernel": b}, "model")
    path = repo.layout.snapshot_path(version.id)
    with h5py.File(path, "r") as f:
        text = f["manifest"][()].decode()
    entries = json.loads(text)
    swapped = json.dumps(list(reversed(entries)))
    assert len(swapped) == len(text) and swapped != text
    _rewrite_file(path, text.encode(), swapped.encode())  # same id: the id covers the sorted list
    _edit_index(repo, "UPDATE versions SET manifest = ? WHERE id = ?", (swapped, version.id))
    renumbered = {"dense_3/kernel": np.zeros((3, 3), np.float32), "dense_4/kernel": np.zeros((3, 3), np.float32)}
    repo.checkout(version.id, renumbered, name="model")
    assert renumbered["dense_3/kernel"][0, 0] == 1.0 and renumbered["dense_4/kernel"][0, 0] == 2.0


def test_positional_matching_never_pairs_names_present_on_both_sides():
    shape = ((2,), "float32")
    live = {"dense_3/kernel": shape, "a": shape}
    stored = {"a": np.zeros(2, np.float32), "dense_1/kernel": np.ones(2, np.float32)}
    assert match_state(live, stored) == {"a": "a", "dense_3/kernel": "dense_1/kernel"}
    # A name of another kind is never paired, whatever the order.
    with pytest.raises(Exception, match="does not fit"):
        match_state({"dense_3/bias": shape, "a": shape}, stored)


# -- ids win over tags; tags must not look like ids, refs or other tags ---------------------------

def test_ids_win_over_a_tag_named_like_an_id(repo):
    v1, v2, _, _ = _two_versions(repo)
    # A tag written before the rule existed (or by an older version): it must not shadow v2's id.
    repo.layout.write_tag("model", v2.id[:8], v1.id)
    repo.reindex()
    assert repo.resolve(v2.id[:8], name="model").id == v2.id
    assert repo.resolve(v2.id, name="model").id == v2.id


@pytest.mark.parametrize("tag", ["21c6bc78", "a" * 64, "CAFE1234", "ＨＥＡＤ", "latest", "Latest", "НЕАD", "head"])
def test_tags_that_look_like_ids_or_refs_are_refused(repo, tag):
    _two_versions(repo)
    with pytest.raises(InvalidNameError) as info:
        repo.tag("latest", tag, name="model")
    assert "\n" not in str(info.value)


def test_confusable_look_alike_of_an_existing_tag_is_refused(repo):
    v1, _v2, _, _ = _two_versions(repo)
    with pytest.raises(InvalidNameError, match="looks like the existing tag 'production'"):
        repo.tag(v1.id, "prоduction", name="model")  # Cyrillic о
    with pytest.raises(InvalidNameError, match="looks like a version id"):
        repo.commit({"x": np.zeros(2, np.float32)}, "model", tags=["deadbeef"])
    repo.tag(v1.id, "staging", name="model")


# -- verify compares every index row with the files ----------------------------------------------

_DAMAGE = {
    "versions name": ("UPDATE versions SET name = 'other' WHERE id = :v2", "versions", "name differ"),
    "versions created": ("UPDATE versions SET created = '1999-01-01T00:00:00+00:00' WHERE id = :v2",
                         "versions", "created differ"),
    "versions meta": ("UPDATE versions SET meta = replace(meta, :v1, :v2) WHERE id = :v2", "versions",
                      "meta differ"),
    "versions row missing": ("DELETE FROM versions WHERE id = :v1", "versions", "missing from the index"),
    "versions row added": ("INSERT INTO versions(id, name, created, meta, manifest, nbytes) "
                           "SELECT :fake, name, created, meta, manifest, nbytes FROM versions WHERE id = :v1",
                           "f" * 64, "indexed but its snapshot file is missing"),
    "metric value": ("UPDATE metrics SET value = 0.0001, text = '0.0001' WHERE key = 'loss'", "metrics",
                     "value, text differ"),
    "metric added": ("INSERT INTO metrics VALUES(:v1, 'acc', 1.0, '1.0')", "metrics", "not backed"),
    "tag moved": ("UPDATE tags SET id = :v1 WHERE tag = 'production'", "tags", "id differ"),
    "tag protected": ("UPDATE tags SET protected = 1 WHERE tag = 'old'", "tags", "protected differ"),
    "tag missing": ("DELETE FROM tags WHERE tag = 'old'", "tags", "missing from the index"),
    "head moved": ("UPDATE heads SET id = :v1", "heads", "id differ"),
    "tensor location": ("UPDATE tensors SET object = :v2 WHERE object = :v1", "tensors", "is not one"),
    "tensor missing": ("DELETE FROM tensors WHERE object = :v1", "tensors", "missing from the index"),
}


@pytest.mark.parametrize("kind", sorted(_DAMAGE))
def test_verify_names_each_kind_of_index_damage(repo, kind):
    v1, v2, _, _ = _two_versions(repo)
    repo.commit({"dense/kernel": np.zeros((8, 4), np.float32), "dense/bias": np.zeros(4, np.float32)},
                "model", metrics={"loss": 0.5})  # v3 and HEAD: the damage below is elsewhere
    repo.checkout(v2.id, name="model")
    sql, table, words = _DAMAGE[kind]
    assert repo.verify().ok, repo.verify().problems
    _edit_index(repo, sql, {"v1": v1.id, "v2": v2.id, "fake": "f" * 64})
    report = repo.verify()
    found = [f"{p.version}: {p.message}" for p in report.problems]
    subject = table if table.startswith("f") else f"index {table}"
    assert any(p.startswith(subject) and words in p for p in found), found
    repo.reindex()
    assert repo.verify().ok


# -- readers see one consistent snapshot while another process commits ----------------------------

_WRITER = """
import sys, numpy as np
from mvc_magics import Repo
with Repo(sys.argv[1]) as repo:
    for i in range(int(sys.argv[2])):
        repo.commit({"w": np.full(3, i, np.float32)}, "model", metrics={"loss": 1.0 / (i + 1)}, tags=[f"t{i}"])
"""


def test_log_is_one_consistent_snapshot_while_another_process_commits(repo, store_path):
    import subprocess
    import sys

    repo.commit({"w": np.full(3, -1, np.float32)}, "model", metrics={"loss": 2.0})
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(store_path), "40"])
    reads = 0
    try:
        while writer.poll() is None or reads < 5:
            for limit in (None, 3):
                log = list(repo.log("model", limit=limit))
                assert log and all("loss" in v.metrics for v in log)  # a version and its rows, together
                assert all(v.tags == (f"t{round(1 / v.metrics['loss']) - 1}",) for v in log[:-1] if v.tags)
                reads += 1
    finally:
        writer.wait(timeout=120)
    assert writer.returncode == 0
    assert len(repo.log("model")) == 41


# -- a flipped bit in the index is detected, or changes nothing a ref names -----------------------

def test_sampled_index_bit_flips_are_detected_or_harmless(tmp_path):
    from reliability_helpers import load_script

    soak = load_script("index_bitflip_soak")
    outcomes = soak.run(tmp_path, flips=120, seed=13)  # scripts/index_bitflip_soak.py runs thousands
    failures = [o for o in outcomes if o.split()[0] in {"RAW", "SILENT"}]
    assert not failures, failures
    assert outcomes["detected"] + outcomes["refused"] > 10  # the sample did hit rows that matter


# -- signatures travel with push, pull and clone -----------------------------------------------------

def test_signatures_travel_with_push_pull_and_clone(tmp_path, hmac_key, monkeypatch):
    from mvc_magics import Repo
    from mvc_magics.storage.local.signatures import signature_path

    url = (tmp_path / "remote").as_uri()
    with Repo(tmp_path / "trainer") as trainer:
        signed = trainer.commit({"w": np.ones(3, np.float32)}, "model", tags=["approved"])
        trainer.add_remote("origin", url)
        trainer.push("origin")
    monkeypatch.delenv("MVC_SIGNING_KEY")  # the teammate pulls before configuring the key
    with Repo(tmp_path / "teammate") as mate:
        mate.add_remote("origin", url)
        own = mate.commit({"w": np.zeros(3, np.float32)}, "model")  # their own, unsigned
        mate.pull("origin")
        monkeypatch.setenv("MVC_SIGNING_KEY", "correct horse battery staple")
        loaded = mate.checkout("approved", name="model", require_signature=True)
        assert loaded["w"].tolist() == [1, 1, 1]
        with pytest.raises(IntegrityError, match="not signed"):
            mate.checkout(own.id, name="model", require_signature=True)
    with Repo.clone(url, tmp_path / "clone") as clone:
        assert clone.checkout(signed.id, name="model", require_signature=True)["w"].tolist() == [1, 1, 1]
    # A remote's signature the configured key finds invalid is not kept (it would block a valid one).
    with Repo(tmp_path / "other") as other:
        monkeypatch.setenv("MVC_SIGNING_KEY", "another secret")
        other.add_remote("origin", url)
        other.pull("origin")
        assert not signature_path(other.layout.signatures, signed.id).exists()


# -- the Keras structure guard looks at the registered name too ---------------------------------------

def test_registered_name_under_keras_module_is_not_instantiated_without_unsafe(repo):
    import keras
    from keras.src.saving import object_registration

    made = []

    @keras.saving.register_keras_serializable(package="thirdparty")
    class Planted(keras.layers.Dense):
        def __init__(self, *args, **kwargs):
            made.append(self)
            super().__init__(*args, **kwargs)

    try:
        _planted_registered_name_is_refused(repo, keras, made)
    finally:  # the registry is process-wide: leave it as other tests expect it
        object_registration.GLOBAL_CUSTOM_OBJECTS.pop("thirdparty>Planted", None)
        object_registration.GLOBAL_CUSTOM_NAMES.pop(Planted, None)


def _planted_registered_name_is_refused(repo, keras, made):
    from keras_models import dense_model

    version = repo.commit(dense_model(), "m")
    structure = repo.store.structure(version.id)
    layer = next(la for la in structure["config"]["layers"] if la["class_name"] == "Dense")
    assert layer["module"].startswith("keras") and layer["registered_name"] in (None, "Dense")
    layer["registered_name"] = "thirdparty>Planted"
    from mvc_magics.adapters.keras_structure import rebuild

    with pytest.raises(Exception, match="thirdparty>Planted"):
        rebuild(keras, structure, unsafe=False, classes=None)
    assert not made
    rebuild(keras, structure, unsafe=True, classes=None)  # the opt-in still works
    assert made


# -- metadata from files and remotes is validated before it is indexed --------------------------------

def test_meta_stored_outside_the_file_is_refused(tmp_path):
    from mvc_magics.storage.snapshots.snapshot import read_content

    secret = tmp_path / "secret.txt"
    secret.write_bytes(b'{"name": "SECRET"}'.ljust(64))
    path = tmp_path / "planted.h5"
    with h5py.File(path, "w") as f:
        f.attrs["mvc_format"], f.attrs["mvc_format_version"], f.attrs["version_id"] = "mvc-snapshot", 2, "a" * 64
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.CONTIGUOUS)
        dcpl.set_external(str(secret).encode(), 0, 64)
        h5py.h5d.create(f.id, b"meta", h5py.h5t.py_create(np.dtype("S64")), h5py.h5s.create(h5py.h5s.SCALAR),
                        dcpl=dcpl)
        f.create_dataset("manifest", data="[]", dtype=h5py.string_dtype("utf-8"))
    with pytest.raises(IntegrityError, match="stored outside the file"):
        read_content(path)


def test_one_bad_object_in_a_pull_is_reported_and_the_rest_imported(tmp_path):
    from mvc_magics import Repo

    url = (tmp_path / "remote").as_uri()
    with Repo(tmp_path / "trainer") as trainer:
        made = [trainer.commit({f"w{i}": np.full(3, i, np.float32)}, "model") for i in range(3)]
        trainer.add_remote("origin", url)
        trainer.push("origin")
    bad = made[1].id
    remote_file = tmp_path / "remote" / "objects" / bad[:2] / f"{bad}.h5"
    _rewrite_file(remote_file, b'"created": "20', b'"created": "XX')  # same id: meta is not in it
    with Repo(tmp_path / "mate") as mate:
        mate.add_remote("origin", url)
        with pytest.raises(IntegrityError, match=rf"1 object\(s\).*{bad[:12]}: 'created' is not a date"):
            mate.pull("origin")
        assert [mate.store.has_version(v.id) for v in made] == [True, False, True]
        assert mate.verify().ok


def test_control_sequences_in_messages_are_shown_escaped(repo):
    repo.commit({"w": np.ones(2, np.float32)}, "model", message="fine\n\x1b[2J\x1b[31mFAKE OUTPUT\x07")
    shown = repo.log("model")[0].message
    assert "\x1b" not in shown and "\x07" not in shown and shown.startswith("fine\n\\x1b[2J")
    with pytest.raises(Exception, match="at most 100,000"):
        repo.commit({"w": np.zeros(2, np.float32)}, "model", message="x" * 100_001)


def test_snapshot_with_malformed_metadata_is_not_indexed(repo):
    version = repo.commit({"w": np.ones(2, np.float32)}, "model")
    _rewrite_file(repo.layout.snapshot_path(version.id), b'"created": "20', b'"created": "XX')
    repo.reindex()
    assert not repo.store.has_version(version.id)


def test_index_schema_text_that_is_not_utf8_is_a_damaged_index(repo, store_path):
    from mvc_magics import Repo

    version = repo.commit({"w": np.ones(2, np.float32)}, "model")
    repo.close()
    conn = sqlite3.connect(store_path / "index.sqlite")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    path = store_path / "index.sqlite"
    data = bytearray(path.read_bytes())
    at = data.index(b"CREATE TABLE versions") + 8
    data[at] |= 0x80  # the stored schema is no longer UTF-8 (SQLite's error message is not either)
    path.write_bytes(bytes(data))
    with Repo(store_path) as again:  # a damaged index is rebuilt from the files
        assert again.resolve("latest", name="model").id == version.id


def test_pulled_tag_that_looks_like_an_existing_one_is_refused(tmp_path):
    from mvc_magics import Repo

    url = (tmp_path / "remote").as_uri()
    with Repo(tmp_path / "trainer") as trainer:
        trainer.commit({"w": np.ones(2, np.float32)}, "model", tags=["production"])
        trainer.add_remote("origin", url)
        trainer.push("origin")
    with Repo(tmp_path / "intruder") as intruder:  # a store without "production" may name this tag
        intruder.commit({"w": np.zeros(2, np.float32)}, "model", tags=["prоduction"])  # Cyrillic о
        intruder.add_remote("origin", url)
        intruder.push("origin")
    with Repo(tmp_path / "mate") as mate:
        mate.add_remote("origin", url)
        with pytest.raises(IntegrityError, match="looks like the existing tag 'production'"):
            mate.pull("origin")
        assert mate.tag_names("model") == ["production"]
        assert len(mate.log("model")) == 2  # the versions themselves came

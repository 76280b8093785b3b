"""The Repo API on dict-of-numpy models: no IPython, no Keras."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
from conftest import store_state

from mvc_magics import Repo
from mvc_magics.core.hashing import tensor_hash
from mvc_magics.errors import (
    AmbiguousRefError,
    IntegrityError,
    InvalidMetricError,
    InvalidNameError,
    ShapeMismatchError,
    StoreFormatError,
    TagExistsError,
    UnknownRefError,
    UnsupportedModelError,
)


def test_commit_returns_a_version_with_metadata(repo, weights):
    v = repo.commit(weights, "net", message="first", metrics={"val_loss": 0.5}, params={"lr": 0.01}, tags=["base"])
    assert len(v.id) == 64 and v.short_id == v.id[:8]
    assert (v.name, v.message, v.parents, v.tags) == ("net", "first", (), ("base",))
    assert v.metrics == {"val_loss": 0.5} and v.params == {"lr": 0.01}
    assert "@" in v.author and v.created.tzinfo is not None
    assert v.libraries["numpy"] == np.__version__ and v.framework == "numpy"
    assert v.stats.new_version and v.stats.tensors_written == 4
    assert v.stats.bytes_written == sum(a.nbytes for a in weights.values())
    assert v.short_id in repr(v) and "val_loss=0.5" in repr(v)
    assert "first" in v._repr_html_()


def test_only_changed_tensors_are_written(repo, weights):
    first = repo.commit(weights, "net")
    weights["out/kernel"] = weights["out/kernel"] + 1
    second = repo.commit(weights, "net")
    assert second.stats.tensors_written == 1 and second.stats.tensors_reused == 3
    assert second.stats.bytes_written == weights["out/kernel"].nbytes
    assert second.parents == (first.id,)
    # the snapshot file of the second version holds only the changed tensor's bytes
    with h5py.File(repo.layout.snapshot_path(second.id), "r") as f:
        assert list(f["tensors"]) == [tensor_hash(weights["out/kernel"])]


def test_unchanged_content_is_the_same_version_and_metrics_attach(repo, weights):
    first = repo.commit(weights, "net", metrics={"acc": 0.8})
    again = repo.commit({k: v.copy() for k, v in weights.items()}, "net", metrics={"f1": 0.7}, tags=["same"])
    assert again.id == first.id and not again.stats.new_version and again.stats.bytes_written == 0
    assert again.metrics == {"acc": 0.8, "f1": 0.7} and again.tags == ("same",)
    assert len(repo.log("net")) == 1
    repo.reindex()  # attached metrics and tags survive a rebuild of the index
    assert repo.resolve("same").metrics == {"acc": 0.8, "f1": 0.7}


def test_same_content_same_id_in_another_store(tmp_path, weights):
    a = Repo(tmp_path / "a").commit(weights, "net", message="x")
    b = Repo(tmp_path / "b").commit(dict(reversed(list(weights.items()))), "other", message="y")
    assert a.id == b.id


def test_log_is_newest_first_and_marks_head(repo, weights):
    ids = []
    for step in range(3):
        weights["dense/bias"] = weights["dense/bias"] + 1
        ids.append(repo.commit(weights, "net", message=f"step {step}").id)
    log = repo.log("net")
    assert [v.id for v in log] == ids[::-1]
    assert [v.is_head for v in log] == [True, False, False]
    repo.checkout(ids[0], weights)
    assert [v.is_head for v in repo.log("net")] == [False, False, True]
    text = str(repo.log("net"))
    assert "HEAD" in text and "step 0" in text
    assert "<table" in repo.log("net")._repr_html_()
    assert len(repo.log("net", limit=2)) == 2


def test_refs_resolve_within_the_model_history(repo, weights):
    versions = []
    for loss in (0.9, 0.1, float("nan"), 0.5):
        weights["dense/bias"] = weights["dense/bias"] + 1
        versions.append(repo.commit(weights, "net", metrics={"val_loss": loss, "acc": 1 - loss}))
    assert repo.resolve("latest").id == versions[-1].id
    assert repo.resolve("HEAD").id == versions[-1].id
    assert repo.resolve("HEAD~1").id == versions[2].id
    assert repo.resolve("HEAD~3").id == versions[0].id
    assert repo.resolve("best:val_loss").id == versions[1].id  # NaN never chosen as best
    assert repo.resolve("best:acc").id == versions[1].id
    assert repo.resolve("best:val_loss:max").id == versions[0].id
    assert repo.resolve(versions[0].short_id).id == versions[0].id
    assert repo.resolve(versions[0].id).id == versions[0].id
    assert math.isnan(versions[2].metrics["val_loss"])
    with pytest.raises(UnknownRefError, match="HEAD~4"):
        repo.resolve("HEAD~4")
    with pytest.raises(UnknownRefError, match="known metrics: acc, val_loss"):
        repo.resolve("best:f1")
    with pytest.raises(UnknownRefError, match="nothing"):
        repo.resolve("nothing")


def test_ambiguous_prefix_lists_the_candidates(repo):
    seen: dict[str, str] = {}
    for i in range(5000):  # commit until two ids share their first 4 hex digits (~300 on average)
        vid = repo.commit({"w": np.array([i], np.float32)}, "net").id
        if vid[:4] in seen:
            break
        seen[vid[:4]] = vid
    else:
        pytest.fail("no shared 4-digit prefix in 5000 versions")
    with pytest.raises(AmbiguousRefError) as err:
        repo.resolve(vid[:4])
    assert set(err.value.candidates) == {vid, seen[vid[:4]]}
    assert vid[:12] in str(err.value) and seen[vid[:4]][:12] in str(err.value)
    assert repo.resolve(vid[:8]).id == vid


def test_short_ids_grow_to_stay_unique(repo):
    versions = [repo.commit({"w": np.array([i], np.float32)}, "net") for i in range(50)]
    shorts = {v.short_id for v in repo.log("net")}
    assert len(shorts) == 50 and all(len(s) >= 8 for s in shorts)
    assert {v.id[:8] for v in versions} == shorts


def test_tags_need_force_to_move(repo, weights):
    a = repo.commit(weights, "net")
    weights["step"] = weights["step"] + 1
    b = repo.commit(weights, "net")
    repo.tag(a.id, "baseline")
    with pytest.raises(TagExistsError, match="--force"):
        repo.tag(b.id, "baseline")
    assert repo.resolve("baseline").id == a.id
    repo.tag(b.id, "baseline", force=True)
    assert repo.resolve("baseline").id == b.id
    repo.untag("baseline")
    with pytest.raises(UnknownRefError):
        repo.resolve("baseline")


def test_several_models_keep_their_own_history(repo, weights):
    repo.commit(weights, "a", metrics={"acc": 0.1})
    repo.commit({"x": np.ones(3)}, "b", metrics={"acc": 0.9})
    assert repo.models() == ["a", "b"]
    assert [v.name for v in repo.log("a")] == ["a"]
    assert repo.resolve("best:acc", name="a").name == "a"
    with pytest.raises(UnknownRefError, match="several models"):
        repo.resolve("latest")


def test_checkout_in_place_and_rebuilt(repo, weights):
    original = {k: v.copy() for k, v in weights.items()}
    first = repo.commit(weights, "net")
    weights["dense/kernel"] = weights["dense/kernel"] * 3
    repo.commit(weights, "net")
    same_object = repo.checkout(first.short_id, weights)
    assert same_object is weights
    for key in original:
        np.testing.assert_array_equal(weights[key], original[key])
        assert weights[key].dtype == original[key].dtype
    rebuilt = repo.checkout("HEAD", name="net")
    assert rebuilt is not weights and set(rebuilt) == set(original)


def test_checkout_into_a_model_of_another_shape_changes_nothing(repo, weights):
    repo.commit(weights, "net")
    other = {"dense/kernel": np.zeros((2, 2), np.float32), "dense/bias": np.zeros(4, np.float32),
             "out/kernel": np.zeros((4, 1), np.float32), "step": np.array(0)}
    before = {k: v.copy() for k, v in other.items()}
    with pytest.raises(ShapeMismatchError, match="dense/kernel"):
        repo.checkout("latest", other, name="net")
    assert all(np.array_equal(other[k], before[k]) for k in before)
    assert set(other) == set(before)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda r, w: r.commit(object(), "net"), UnsupportedModelError),
        (lambda r, w: r.commit({}, "net"), UnsupportedModelError),
        (lambda r, w: r.commit(w, "net", metrics={"acc": "high"}), InvalidMetricError),
        (lambda r, w: r.commit(w, "net", metrics={"a:b": 1.0}), InvalidMetricError),
        (lambda r, w: r.commit(w, "../evil"), InvalidNameError),
        (lambda r, w: r.commit(w, ".hidden"), InvalidNameError),
        (lambda r, w: r.commit(w, "net", tags=["a/b"]), InvalidNameError),
        (lambda r, w: r.commit(w, "net", tags=["ctrl\x07"]), InvalidNameError),
        (lambda r, w: r.commit(w, "net", tags=["base"]), TagExistsError),
        (lambda r, w: r.tag("latest", "base", name="net"), TagExistsError),
        (lambda r, w: r.checkout("nope", w, name="net"), UnknownRefError),
        (lambda r, w: r.resolve("best:acc", name="net"), UnknownRefError),
    ],
)
def test_bad_input_raises_and_leaves_the_store_as_it_was(repo, weights, call, error):
    base = repo.commit({"other": np.ones(2)}, "net", tags=["base"])
    weights["dense/bias"] = weights["dense/bias"] + 1
    repo.commit(weights, "net")
    assert base.tags == ("base",)
    before = store_state(repo.path)
    live = {k: v.copy() for k, v in weights.items()}
    with pytest.raises(error):
        call(repo, weights)
    assert store_state(repo.path) == before
    assert all(np.array_equal(weights[k], live[k]) for k in live)


def test_nan_and_inf_metrics_are_recorded_not_best(repo):
    repo.commit({"w": np.ones(1)}, "net", metrics={"loss": float("inf")})
    good = repo.commit({"w": np.zeros(1)}, "net", metrics={"loss": 3.0})
    repo.commit({"w": np.full(1, 2.0)}, "net", metrics={"loss": float("nan")})
    assert repo.resolve("best:loss").id == good.id
    assert math.isinf(repo.log("net")[-1].metrics["loss"])


def test_verify_and_checkout_refuse_a_corrupted_tensor(repo, weights):
    first = repo.commit(weights, "net")
    weights["out/kernel"] = weights["out/kernel"] + 1
    second = repo.commit(weights, "net")
    assert repo.verify().ok
    path = repo.layout.snapshot_path(first.id)
    with h5py.File(path, "r") as f:
        offset = f["tensors"][tensor_hash(weights["dense/kernel"])].id.get_offset()
    raw = bytearray(path.read_bytes())
    raw[offset + 5] ^= 0xFF
    path.write_bytes(bytes(raw))
    report = repo.verify()
    assert not report.ok
    damaged = {(p.version, p.tensor) for p in report.problems}
    # the damaged tensor is reported for both versions that use it
    assert damaged == {(first.id, "dense/kernel"), (second.id, "dense/kernel")}
    assert "dense/kernel" in str(report)
    live = {k: v.copy() for k, v in weights.items()}
    with pytest.raises(IntegrityError, match="dense/kernel"):
        repo.checkout(first.id, weights)
    assert all(np.array_equal(weights[k], live[k]) for k in live)


def test_reindex_rebuilds_everything_from_the_files(store_path, weights):
    repo = Repo(store_path)
    a = repo.commit(weights, "net", metrics={"acc": 0.5}, tags=["base"])
    weights["step"] = weights["step"] + 1
    b = repo.commit(weights, "net", metrics={"acc": 0.7})
    repo.checkout(a.id, weights)
    expected = [(v.id, v.tags, v.metrics, v.is_head, v.parents) for v in repo.log("net")]
    repo.close()
    (store_path / "index.sqlite").unlink()
    for side in ("index.sqlite-wal", "index.sqlite-shm"):
        (store_path / side).unlink(missing_ok=True)
    reopened = Repo(store_path)
    assert [(v.id, v.tags, v.metrics, v.is_head, v.parents) for v in reopened.log("net")] == expected
    assert reopened.resolve("best:acc").id == b.id
    assert reopened.reindex() == 2


def test_garbage_index_is_rebuilt(store_path, weights):
    repo = Repo(store_path)
    v = repo.commit(weights, "net")
    repo.close()
    for side in ("index.sqlite-wal", "index.sqlite-shm"):
        (store_path / side).unlink(missing_ok=True)
    (store_path / "index.sqlite").write_bytes(b"this is not sqlite" * 100)
    assert Repo(store_path).resolve("latest").id == v.id


def test_unknown_store_format_is_refused(store_path):
    Repo(store_path).close()
    (store_path / "FORMAT").write_text("mvc-store 99\n")
    with pytest.raises(StoreFormatError, match="version 99"):
        Repo(store_path)


def test_status_reports_changes_since_head(repo, weights):
    repo.commit(weights, "net")
    report = repo.status({"net": weights})
    assert [(e.name, e.changed) for e in report] == [("net", False)]
    weights["dense/bias"] = weights["dense/bias"] + 0.5
    assert repo.status({"net": weights})[0].changed
    assert "modified" in str(repo.status({"net": weights}))
    assert not repo.status({})[0].present


def test_default_store_path_follows_env_and_notebook(tmp_path, monkeypatch):
    from mvc_magics.api import default_store_path

    monkeypatch.delenv("MVC_DIR", raising=False)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_store_path() == tmp_path / ".mvc"
    nb_dir = tmp_path / "project"
    nb_dir.mkdir()
    assert default_store_path(str(nb_dir / "train.ipynb")) == nb_dir / ".mvc"
    monkeypatch.setenv("JPY_SESSION_NAME", str(nb_dir / "other.ipynb"))
    assert default_store_path() == nb_dir / ".mvc"
    monkeypatch.setenv("MVC_DIR", str(tmp_path / "elsewhere"))
    assert default_store_path(str(nb_dir / "train.ipynb")) == tmp_path / "elsewhere"


def test_api_checkout_moves_the_shared_head_unless_a_copy_is_asked_for(repo, weights):
    """As the README says: a rebuilt checkout is the model's new state (HEAD moves, the next commit
    descends from it); move_head=False is a copy, so HEAD~1 keeps naming the same version."""
    first = repo.commit(weights, "model")
    second = repo.commit({k: v + 1 for k, v in weights.items()}, "model")
    for _ in range(2):
        copy = repo.checkout("HEAD~1", name="model", move_head=False)
        assert np.array_equal(copy["dense/kernel"], weights["dense/kernel"])
        assert repo.head("model").id == second.id
    built = repo.checkout("HEAD~1", name="model")
    assert repo.head("model").id == first.id
    third = repo.commit({k: v * 2 for k, v in built.items()}, "model")
    assert third.parents == (first.id,)

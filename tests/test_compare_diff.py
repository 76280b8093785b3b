"""repo.diff(): hash-first tensor comparison, statistics, per-layer summary, and no needless reads."""

from __future__ import annotations

import math

import numpy as np
import pytest
from compare_data import model, store_files

from mvc_magics.core.diff import tensor_statistics
from mvc_magics.errors import CompareError, UnknownRefError
from mvc_magics.storage.snapshots.snapshot import TensorReader


@pytest.fixture
def reads(monkeypatch):
    """Every tensor hash TensorReader.read is asked for (the real read still happens)."""
    seen: list[str] = []
    original = TensorReader.read

    def spy(self, entry, *args, **kwargs):
        seen.append(entry.hash)
        return original(self, entry, *args, **kwargs)

    monkeypatch.setattr(TensorReader, "read", spy)
    return seen


def test_one_changed_layer_is_reported_and_only_its_bytes_are_read(repo, reads):
    weights = model(0)
    a = repo.commit(weights, "model", message="start")
    tuned = dict(weights)
    tuned["out/kernel"] = weights["out/kernel"] + 0.5
    tuned["out/bias"] = weights["out/bias"] - 1.0
    b = repo.commit(tuned, "model", message="fine-tune the head")
    reads.clear()
    diff = repo.diff(a.id, b.id)
    assert diff.changed_layers == ["out"]
    assert sorted(diff.changed) == ["out/bias", "out/kernel"]
    assert sorted(diff.unchanged) == ["dense/bias", "dense/kernel"]
    hashes = {e.name: e.hash for e in repo.manifest(a.id)} | {f"b:{e.name}": e.hash for e in repo.manifest(b.id)}
    assert sorted(reads) == sorted([hashes["out/kernel"], hashes["out/bias"],
                                    hashes["b:out/kernel"], hashes["b:out/bias"]])
    assert diff.tensors_read == 4 and diff.bytes_read == 2 * (4 * 2 * 4 + 2 * 4)
    kernel = diff.tensor("out/kernel")
    delta = np.full((4, 2), 0.5)
    assert kernel.relative_l2 == pytest.approx(np.linalg.norm(delta) / np.linalg.norm(weights["out/kernel"]), rel=1e-5)
    assert kernel.max_abs == pytest.approx(0.5)
    x, y = weights["out/kernel"].ravel().astype(float), tuned["out/kernel"].ravel().astype(float)
    assert kernel.cosine == pytest.approx(x @ y / np.linalg.norm(x) / np.linalg.norm(y), rel=1e-5)
    assert math.isnan(diff.tensor("out/bias").cosine)  # from all zeros: no angle
    assert diff.tensor("out/bias").relative_l2 == math.inf
    layers = {s.layer: s for s in diff.layers()}
    assert layers["dense"].status == "unchanged" and layers["dense"].relative_l2 is None
    assert layers["out"].params_changed == 10 and layers["out"].params == 10
    assert layers["out"].max_abs == pytest.approx(1.0)


def test_keras_models_differing_in_one_layer(repo, reads):
    from keras_models import dense_model

    net = dense_model()
    a = repo.commit(net, "net", message="start")
    head = net.layers[-1]
    head.kernel.assign(np.asarray(head.kernel) * 2)
    b = repo.commit(net, "net", message="head x2")
    reads.clear()
    diff = repo.diff("HEAD~1", "HEAD", name="net")
    assert (diff.a.id, diff.b.id) == (a.id, b.id)
    assert diff.changed_layers == [head.name]
    assert diff.changed == [f"{head.name}/kernel"]
    changed_hashes = {e.hash for e in repo.manifest(a.id) + repo.manifest(b.id) if e.name == f"{head.name}/kernel"}
    # The structure (stored once, format 3) is read to check each version's id; no other tensor is.
    structure = repo.store.content(a.id).structure_ref
    assert structure is not None and structure == repo.store.content(b.id).structure_ref
    tensor_reads = [digest for digest in reads if digest != structure.hash]
    assert set(tensor_reads) == changed_hashes and len(tensor_reads) == 2
    assert diff.tensor(f"{head.name}/kernel").relative_l2 == pytest.approx(1.0, rel=1e-6)
    assert diff.tensor(f"{head.name}/kernel").cosine == pytest.approx(1.0, rel=1e-6)
    text = str(diff)
    assert f"{head.name}/kernel" in text and "1 changed" in text
    assert "mvc-diff" in diff._repr_html_()


def test_added_removed_and_reshaped_tensors_read_nothing(repo, reads):
    weights = model(0)
    a = repo.commit(weights, "model")
    other = {k: v for k, v in weights.items() if k != "out/bias"}
    other["dense/bias"] = np.zeros(5, np.float32)
    other["extra/scale"] = np.ones(3, np.float32)
    b = repo.commit(other, "model")
    reads.clear()
    diff = repo.diff(a.id, b.id)
    assert diff.removed == ["out/bias"] and diff.added == ["extra/scale"] and diff.reshaped == ["dense/bias"]
    assert diff.changed == [] and reads == []
    assert diff.tensor("dense/bias").shape_text() == "(4,) -> (5,)"
    assert {s.layer: s.status for s in diff.layers()} == {"dense": "changed", "out": "changed", "extra": "added"}
    data = diff.to_dict()
    assert {t["name"]: t["status"] for t in data["tensors"]}["out/bias"] == "removed"


def test_renumbered_layers_are_matched_by_position(repo):
    weights = model(0)
    a = repo.commit(weights, "model")
    renamed = {k.replace("dense/", "dense_1/").replace("out/", "out_1/"): v.copy() for k, v in weights.items()}
    renamed["out_1/kernel"] = renamed["out_1/kernel"] * 3
    b = repo.commit(renamed, "model")
    diff = repo.diff(a.id, b.id)
    assert diff.changed == ["out_1/kernel"] and diff.added == [] and diff.removed == []
    assert any("matched by position" in n for n in diff.notes)


def test_statistics_definitions():
    stats = tensor_statistics(np.array([3.0, 4.0]), np.array([3.0, 5.0]))
    assert stats["relative_l2"] == pytest.approx(1 / 5)
    assert stats["max_abs"] == pytest.approx(1.0)
    assert stats["cosine"] == pytest.approx((9 + 20) / (5 * math.sqrt(34)))


def test_bad_diffs_are_clear_errors_and_change_nothing(repo, store_path):
    first = repo.commit(model(0), "model")
    other = repo.commit(model(1), "other")
    before = store_files(store_path)
    with pytest.raises(CompareError, match="same version"):
        repo.diff(first.id, first.id[:10])
    with pytest.raises(CompareError, match="different models"):
        repo.diff(first.id, other.id)
    with pytest.raises(UnknownRefError):
        repo.diff(first.id, "nosuchtag", name="model")
    assert store_files(store_path) == before
    assert repo.diff(first.id, other.id, allow_mixed=True).headline().startswith(
        f"diff {first.short_id} -> {other.short_id} (model -> other)")

"""Every merge conflict raises MergeConflictError naming the problem, writes nothing, changes no model."""

from __future__ import annotations

import numpy as np
import pytest
from keras_models import dense_model

from mvc_magics.core.compare import validate_weights
from mvc_magics.core.merge_plan import check_weights
from mvc_magics.errors import CompareError, MergeConflictError


def snapshot_of_store(repo) -> tuple:
    """Everything a merge could change: versions, files, refs, audit log."""
    files = sorted(str(p.relative_to(repo.path)) for p in repo.path.rglob("*") if p.is_file()
                   and not p.name.startswith("index.sqlite") and p.name != "lock.owner")
    refs = {str(p.relative_to(repo.path)): p.read_bytes() for p in repo.layout.refs.rglob("*") if p.is_file()}
    return repo.index.count(), files, refs, repo.layout.audit_path.read_bytes()


@pytest.fixture
def dict_versions(repo, weights):
    rng = np.random.default_rng(0)
    models = []
    for _ in range(2):
        model = {k: v.copy() for k, v in weights.items()}
        model["dense/kernel"] = rng.standard_normal((8, 4)).astype(np.float32)
        models.append(model)
    return [(repo.commit(m, "model"), m) for m in models]


def assert_conflict(repo, refs, match, **kwargs):
    live = {"dense/kernel": np.ones((8, 4), np.float32), "dense/bias": np.zeros(4, np.float32),
            "out/kernel": np.ones((4, 1), np.float32), "step": np.array(3, np.int64)}
    live_before = {k: v.copy() for k, v in live.items()}
    before = snapshot_of_store(repo)
    with pytest.raises(MergeConflictError, match=match):
        repo.merge(refs, into=live, **kwargs)
    assert snapshot_of_store(repo) == before
    for key, value in live_before.items():
        np.testing.assert_array_equal(live[key], value)
    assert set(live) == set(live_before)


def test_missing_tensor(repo, dict_versions):
    (a, _), (_, model_b) = dict_versions
    del model_b["out/kernel"]
    c = repo.commit(model_b, "model")
    assert_conflict(repo, [a.id, c.id], r"missing tensor.*out/kernel")


def test_extra_tensor(repo, dict_versions):
    (a, _), (_, model_b) = dict_versions
    model_b["new/bias"] = np.zeros(2, np.float32)
    c = repo.commit(model_b, "model")
    assert_conflict(repo, [a.id, c.id], r"only in .*new/bias")


def test_shape_mismatch(repo, dict_versions):
    (a, _), (_, model_b) = dict_versions
    model_b["dense/bias"] = np.zeros(5, np.float32)
    c = repo.commit(model_b, "model")
    assert_conflict(repo, [a.id, c.id], r"shape/dtype mismatch: dense/bias: float32\[4\].*float32\[5\]")


def test_dtype_mismatch(repo, dict_versions):
    (a, _), (_, model_b) = dict_versions
    model_b["dense/bias"] = model_b["dense/bias"].astype(np.float64)
    c = repo.commit(model_b, "model")
    assert_conflict(repo, [a.id, c.id], r"dense/bias: float32\[4\].*float64\[4\]")


def test_differing_integer_tensors(repo, dict_versions):
    (a, _), (_, model_b) = dict_versions
    model_b["step"] = np.array(4, np.int64)
    c = repo.commit(model_b, "model")
    assert_conflict(repo, [a.id, c.id], r"non-float tensors differ.*step")


def test_differing_bool_tensors(repo, dict_versions):
    (_, model_a), (_, model_b) = dict_versions
    model_a, model_b = dict(model_a), dict(model_b)
    model_a["mask"] = np.array([True, False])
    model_b["mask"] = np.array([True, True])
    assert_conflict(repo, [repo.commit(model_a, "model").id, repo.commit(model_b, "model").id],
                    r"non-float tensors differ.*mask")


@pytest.mark.parametrize(("bad", "match"), [
    ([1.0], r"1 weights for 2 versions"),
    ([1.0, 2.0, 3.0], r"3 weights for 2 versions"),
    ([1.0, -0.5], r"weight 2 is negative"),
    ([0.0, 0.0], r"all weights are zero"),
    ([float("nan"), 1.0], r"weight 1 is nan"),
    (["a", 1.0], r"weight 1 is not a number"),
])
def test_bad_weights(repo, dict_versions, bad, match):
    (a, _), (b, _) = dict_versions
    assert_conflict(repo, [a.id, b.id], match, weights=bad)


def test_fewer_than_two_inputs(repo, dict_versions):
    (a, _), _ = dict_versions
    assert_conflict(repo, [a.id], r"at least two versions, got 1")
    assert_conflict(repo, [], r"at least two versions, got 0")
    assert_conflict(repo, a.id, r"a list of at least two refs")


def test_the_same_version_twice(repo, dict_versions):
    (a, _), _ = dict_versions
    assert_conflict(repo, [a.id, a.short_id], r"given twice")


def test_different_frameworks(repo, dict_versions):
    (a, _), _ = dict_versions
    model = dense_model(0)
    k = repo.commit(model, "keras_model")  # one history holds one framework
    assert_conflict(repo, [a.id, k.id], r"different frameworks")


def test_different_keras_structures(repo):
    import keras

    small = dense_model(0)
    keras.utils.set_random_seed(1)
    wide = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)])
    a, b = repo.commit(small, "net"), repo.commit(wide, "net")
    before = snapshot_of_store(repo)
    live_before = [w.copy() for w in small.get_weights()]
    with pytest.raises(MergeConflictError, match=r"different structures.*units: 8 vs 16"):
        repo.merge([a.id, b.id], into=small)
    assert snapshot_of_store(repo) == before
    for got, expected in zip(small.get_weights(), live_before, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_ensemble_of_models_with_different_inputs(repo):
    import keras

    a = repo.commit(dense_model(0), "net")
    keras.utils.set_random_seed(1)
    other = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    b = repo.commit(other, "net")
    before = snapshot_of_store(repo)
    with pytest.raises(MergeConflictError, match=r"different inputs"):
        repo.merge([a.id, b.id], method="ensemble")
    assert snapshot_of_store(repo) == before


def test_ensemble_of_different_architectures_with_one_interface_is_allowed(repo):
    import keras

    a = repo.commit(dense_model(0), "net")
    keras.utils.set_random_seed(1)
    wide = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)])
    b = repo.commit(wide, "net")
    ensemble = repo.merge([a.id, b.id], method="ensemble", result_name="net_mix")
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    members = [repo.checkout(v.id, name="net") for v in (a, b)]
    expected = np.mean([np.asarray(m(x)) for m in members], axis=0)
    np.testing.assert_allclose(np.asarray(repo.checkout(ensemble.id, name="net_mix")(x)), expected, rtol=1e-5)
    assert ensemble.stats.bytes_written == 0


def test_vote_needs_class_scores(repo):
    import keras

    from mvc_magics.errors import MergeError

    models = []
    for seed in range(2):
        keras.utils.set_random_seed(seed)
        models.append(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
    versions = [repo.commit(m, "reg") for m in models]
    before = snapshot_of_store(repo)
    with pytest.raises(MergeError, match="a vote needs class scores"):
        repo.merge([v.id for v in versions], method="vote")
    assert snapshot_of_store(repo) == before


@pytest.mark.parametrize(("bad", "reason"), [
    (-0.5, "is negative (-0.5): weights must be >= 0"),
    (np.float32(-2), "is negative (-2): weights must be >= 0"),
    (float("nan"), "is nan: weights must be finite"),
    (float("inf"), "is inf: weights must be finite"),
    ("a", "is not a number: 'a'"),
    (True, "is not a number: True"),
])
def test_merge_and_compare_weights_follow_one_rule(bad, reason):
    with pytest.raises(MergeConflictError) as merged:
        check_weights([bad, 1.0], 2)
    with pytest.raises(CompareError) as compared:
        validate_weights({"acc": bad}, ["acc", "loss"])
    assert str(merged.value) == f"weight 1 {reason}"
    assert str(compared.value) == f"weight of 'acc' {reason}"
    # numpy scalars and 0-d arrays are numbers on both sides
    assert check_weights([np.float64(2.0), np.array(1)], 2)[0] == [2.0, 1.0]
    assert validate_weights({"acc": np.float64(2.0), "loss": np.array(1)}, ["acc", "loss"]) == {"acc": 2.0, "loss": 1.0}
    for zeros in (lambda: check_weights([0, 0.0], 2), lambda: validate_weights({"acc": 0}, ["acc"])):
        with pytest.raises((MergeConflictError, CompareError), match=r"^all weights are zero: at least one"):
            zeros()

"""repo.merge: weighted averages of stored versions (dict and Keras models), metadata, ``into``."""

from __future__ import annotations

import json
import tracemalloc

import h5py
import numpy as np
import pytest
from keras_models import conv_bn_model, dense_model, sample_input

from mvc_magics.core.merge_plan import anonymized
from mvc_magics.errors import MergeError, ShapeMismatchError


def variants(base: dict, count: int, seed: int = 1) -> list[dict]:
    """``count`` copies of ``base`` whose float tensors differ (the integer counter does not)."""
    rng = np.random.default_rng(seed)
    models = []
    for _ in range(count):
        model = {k: v.copy() for k, v in base.items()}
        for key, value in model.items():
            if value.dtype.kind == "f":
                model[key] = (value + rng.standard_normal(value.shape)).astype(value.dtype)
        models.append(model)
    return models


def commit_all(repo, models, name="model"):
    return [repo.commit(m, name, message=f"variant {i}") for i, m in enumerate(models)]


def test_uniform_average_of_dict_models_equals_the_manual_mean(repo, weights):
    models = variants(weights, 3)
    versions = commit_all(repo, models)
    merged = repo.merge([v.id for v in versions])
    state = repo.load_state(merged)
    for key in ("dense/kernel", "dense/bias", "out/kernel"):
        expected = np.mean([m[key].astype(np.float64) for m in models], axis=0).astype(np.float32)
        np.testing.assert_allclose(state[key], expected, rtol=1e-6, atol=1e-7)
        assert state[key].dtype == np.float32
    assert state["step"] == 3 and state["step"].dtype == np.int64 and state["step"].shape == ()
    assert merged.parents == tuple(v.id for v in versions)
    meta = merged.extra["merge"]
    assert meta["method"] == "average"
    assert meta["inputs"] == [v.id for v in versions]
    assert meta["weights"] == pytest.approx([1 / 3] * 3)
    assert meta["ingredients"] == [v.id for v in versions]
    assert merged.message == "uniform soup of 3 versions"
    # No ``into``: the live model does not hold the result, so its HEAD stays (issue 13 §3).
    assert merged.name == "model" and repo.head("model").id == versions[-1].id
    assert "average merge of 3 versions" in merged._repr_html_()  # the notebook shows the report
    assert str(merged.report).splitlines()[0] == "average merge of 3 versions"


def test_weighted_average_normalizes_the_weights(repo, weights):
    models = variants(weights, 3, seed=2)
    versions = commit_all(repo, models)
    merged = repo.merge([v.short_id for v in versions], weights=[2, 1, 1], message="weighted")
    state = repo.load_state(merged)
    expected = (2 * models[0]["dense/kernel"].astype(np.float64) + models[1]["dense/kernel"]
                + models[2]["dense/kernel"]) / 4
    np.testing.assert_allclose(state["dense/kernel"], expected.astype(np.float32), rtol=1e-6)
    assert merged.extra["merge"]["weights"] == pytest.approx([0.5, 0.25, 0.25])
    assert merged.message == "weighted"
    assert merged.report.tensors_averaged == 3 and merged.report.tensors_copied == 1


def test_zero_weight_input_is_a_parent_but_not_an_ingredient(repo, weights):
    models = variants(weights, 3, seed=3)
    versions = commit_all(repo, models)
    merged = repo.merge([v.id for v in versions], weights=[1, 1, 0])
    state = repo.load_state(merged)
    expected = (models[0]["out/kernel"].astype(np.float64) + models[1]["out/kernel"]) / 2
    np.testing.assert_allclose(state["out/kernel"], expected.astype(np.float32), rtol=1e-6)
    assert set(merged.parents) == {v.id for v in versions}
    assert merged.extra["merge"]["ingredients"] == [versions[0].id, versions[1].id]


def test_tensors_equal_in_every_input_are_copied_and_not_written_again(repo, weights):
    a, b = variants(weights, 2, seed=4)
    b["dense/bias"] = a["dense/bias"].copy()  # same bytes: same hash
    versions = commit_all(repo, [a, b])
    merged = repo.merge([v.id for v in versions])
    assert merged.report.tensors_copied == 2  # dense/bias and the step counter
    manifest = {e.name: e for e in repo.manifest(merged.id)}
    assert manifest["dense/bias"].object == versions[0].id  # bytes stay in the input's file
    assert manifest["dense/kernel"].object == merged.id
    assert merged.stats.tensors_written == 2
    assert merged.stats.bytes_written == a["dense/kernel"].nbytes + a["out/kernel"].nbytes


def test_merge_into_loads_the_result_in_place(repo, weights):
    models = variants(weights, 2, seed=5)
    versions = commit_all(repo, models)
    live = {k: v.copy() for k, v in models[0].items()}
    merged = repo.merge([v.id for v in versions], into=live)
    for key, value in repo.load_state(merged).items():
        np.testing.assert_array_equal(live[key], value)


def test_merge_into_an_incompatible_model_commits_nothing(repo, weights):
    versions = commit_all(repo, variants(weights, 2, seed=6))
    wrong = {"other": np.zeros(3, np.float32)}
    before = repo.index.count()
    with pytest.raises(ShapeMismatchError):
        repo.merge([v.id for v in versions], into=wrong)
    assert repo.index.count() == before
    np.testing.assert_array_equal(wrong["other"], np.zeros(3, np.float32))


def test_merge_is_deterministic_and_deduplicated(repo, weights):
    versions = commit_all(repo, variants(weights, 2, seed=7))
    first = repo.merge([v.id for v in versions])
    again = repo.merge([v.id for v in versions])
    assert again.id == first.id and not again.stats.new_version


def test_merged_snapshot_is_readable_with_plain_h5py(repo, weights):
    versions = commit_all(repo, variants(weights, 2, seed=8))
    merged = repo.merge([v.id for v in versions], weights=[3, 1])
    with h5py.File(repo.layout.snapshot_path(merged.id), "r") as f:
        meta = json.loads(f["meta"][()])
    assert meta["parents"] == [v.id for v in versions]
    assert meta["extra"]["merge"]["weights"] == [0.75, 0.25]


def test_unknown_method_and_greedy_without_eval_fn_are_refused(repo, weights):
    versions = commit_all(repo, variants(weights, 2, seed=9))
    before = repo.index.count()
    with pytest.raises(MergeError, match="unknown merge method"):
        repo.merge([v.id for v in versions], method="breadcrumbs")
    with pytest.raises(MergeError, match="eval_fn"):
        repo.merge([v.id for v in versions], method="greedy")
    with pytest.raises(MergeError, match="no weights"):
        repo.merge([v.id for v in versions], method="greedy", weights=[1, 1], eval_fn=lambda m: 0.0)
    assert repo.index.count() == before


def test_average_with_eval_fn_records_the_score_as_a_metric(repo, weights):
    versions = commit_all(repo, variants(weights, 2, seed=10))

    def kernel_norm(model):
        return float(np.linalg.norm(model["dense/kernel"]))

    merged = repo.merge([v.id for v in versions], eval_fn=kernel_norm)
    expected = np.linalg.norm(repo.load_state(merged)["dense/kernel"])
    assert merged.metrics["kernel_norm"] == pytest.approx(expected)
    assert merged.extra["merge"]["score"] == pytest.approx(expected)
    assert repo.resolve("best:kernel_norm:max", name="model").id == merged.id


def test_preview_computes_without_committing(repo, weights):
    models = variants(weights, 2, seed=11)
    versions = commit_all(repo, models)
    before = repo.index.count()
    preview = repo.merge_preview([v.id for v in versions], eval_fn=lambda m: float(m["dense/bias"].sum()))
    assert repo.index.count() == before
    expected = ((models[0]["dense/bias"].astype(np.float64) + models[1]["dense/bias"]) / 2).astype(np.float32)
    np.testing.assert_allclose(preview.model["dense/bias"], expected, rtol=1e-6)
    assert preview.score == pytest.approx(float(expected.sum()), rel=1e-5)


# -- Keras ---------------------------------------------------------------------------------------


def test_keras_average_equals_the_manual_mean_uniform_and_weighted(repo):
    x, y = sample_input("dense", n=16)
    models = []
    for seed in range(3):
        model = dense_model(seed)  # different layer names each time: dense_2, dense_3...
        model.fit(x, y, epochs=2, verbose=0)
        models.append(model)
    versions = [repo.commit(m, "net") for m in models]
    states = [m.get_weights() for m in models]
    rebuilt_models = []
    for weights in (None, [0.5, 0.3, 0.2]):
        w = np.full(3, 1 / 3) if weights is None else np.array(weights)
        merged = repo.merge([v.id for v in versions], weights=weights)
        rebuilt = repo.checkout(merged.id, name="net")  # from the stored structure, no model given
        rebuilt_models.append(rebuilt)
        for got, *inputs in zip(rebuilt.get_weights(), *states, strict=True):
            expected = sum(wi * a.astype(np.float64) for wi, a in zip(w, inputs, strict=True))
            np.testing.assert_allclose(got, expected.astype(np.float32), rtol=1e-5, atol=1e-6)
    live = dense_model(9)
    repo.merge([v.id for v in versions], into=live)
    np.testing.assert_allclose(live(x), rebuilt_models[0](x), rtol=1e-5, atol=1e-6)


def test_structures_are_compared_up_to_layer_names():
    a = {"class_name": "Sequential", "config": {"name": "sequential", "layers": [
        {"class_name": "Dense", "config": {"name": "dense", "units": 4}}]}}
    b = {"class_name": "Sequential", "config": {"name": "sequential_3", "layers": [
        {"class_name": "Dense", "config": {"name": "dense_7", "units": 4}}]}}
    c = {"class_name": "Sequential", "config": {"name": "sequential_3", "layers": [
        {"class_name": "Dense", "config": {"name": "dense_7", "units": 5}}]}}
    assert anonymized(a) == anonymized(b)
    assert anonymized(a) != anonymized(c)


def test_keras_batchnorm_statistics_are_averaged_and_rng_states_come_from_the_first_input(repo):
    x, y = sample_input("conv_bn", n=16)
    models = []
    for seed, epochs in ((0, 1), (1, 3)):  # different step counts: different dropout RNG counters
        model = conv_bn_model(seed)
        model.fit(x, y, epochs=epochs, verbose=0)
        models.append(model)
    versions = [repo.commit(m, "cnn") for m in models]
    states = [list(repo.load_state(v).items()) for v in versions]  # layer names differ: by position
    names = [name for name, _ in states[0]]
    rng = names.index(next(n for n in names if n.endswith("seed_generator_state")))
    mean = names.index(next(n for n in names if n.endswith("moving_mean")))
    assert not np.array_equal(states[0][rng][1], states[1][rng][1])
    merged = repo.merge([v.id for v in versions], weights=[1, 3])
    state = repo.load_state(merged)
    assert list(state) == names  # the first input's names
    np.testing.assert_array_equal(state[names[rng]], states[0][rng][1])
    expected = (states[0][mean][1].astype(np.float64) + 3 * states[1][mean][1]) / 4
    np.testing.assert_allclose(state[names[mean]], expected.astype(np.float32), rtol=1e-6)


def test_average_streams_one_tensor_at_a_time(repo):
    """Peak memory while merging 8 inputs stays near one output model, not 8 input models."""
    rng = np.random.default_rng(0)
    shape = (512, 512)  # 1 MiB per float32 tensor, 4 tensors: a 4 MiB model
    versions = []
    for _ in range(8):
        model = {f"layer{i}/kernel": rng.standard_normal(shape).astype(np.float32) for i in range(4)}
        versions.append(repo.commit(model, "big"))
        del model
    model_bytes = 4 * 512 * 512 * 4
    tracemalloc.start()
    try:
        merged = repo.merge([v.id for v in versions])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert merged.report.tensors_averaged == 4
    # output model (4 MiB) + one float64 accumulator (2 MiB) + one input tensor (1 MiB) + one float64
    # chunk (2 MiB here: the tensor is one chunk) = 9 MiB at most; loading every input: 32 MiB.
    assert peak < 2.5 * model_bytes, f"peak {peak / 2**20:.1f} MiB"


def test_only_the_package_vote_layer_is_trusted_on_rebuild():
    """The adapter trusts exactly MajorityVote of mvc_magics.keras_layers, nothing else in the package."""
    import keras  # noqa: F401 - the adapter handles Keras structures only once Keras is loaded

    from mvc_magics.adapters.keras import KerasAdapter
    from mvc_magics.adapters.keras_structure import foreign_modules
    from mvc_magics.errors import UnsupportedModelError

    own = {"module": "mvc_magics.keras_layers", "class_name": "MajorityVote", "config": {}}
    assert foreign_modules(own) == set()
    for hostile in ({"module": "mvc_magics.keras_layers", "class_name": "keras", "config": {}},
                    {"module": "mvc_magics.merge", "class_name": "MergeReport", "config": {}},
                    {"module": "os", "class_name": "system", "config": {}}):
        with pytest.raises(UnsupportedModelError, match="runs that class's code"):
            KerasAdapter().build(hostile, {})


def test_subclassed_keras_models_are_merged_in_a_borrowed_live_model(repo):
    """No safe rebuild for a subclassed model: the live model given holds the merge, then gets its weights back."""
    from keras_models import subclassed_model

    from mvc_magics.errors import MergeError

    x, y = sample_input("subclassed", n=8)
    models = [subclassed_model(seed) for seed in range(2)]
    for model in models:
        model.fit(x, y, epochs=1, verbose=0)
    versions = [repo.commit(m, "sub") for m in models]
    with pytest.raises(MergeError, match="pass model="):  # scoring runs the model: a live one is needed
        repo.merge([v.id for v in versions], eval_fn=lambda m: 0.0)
    live = models[0]
    own = [w.copy() for w in live.get_weights()]
    merged = repo.merge([v.id for v in versions], model=live, eval_fn=lambda m: float(np.mean(m(x))))
    for got, expected in zip(live.get_weights(), own, strict=True):  # given back unchanged
        np.testing.assert_array_equal(got, expected)
    assert live.history is not None and set(merged.metrics) == {"score"}  # no fit metrics of live
    expected = [(a.astype(np.float64) + b) / 2 for a, b in zip(*(m.get_weights() for m in models), strict=True)]
    for got, want in zip(repo.load_state(merged).values(), expected, strict=True):
        np.testing.assert_allclose(got, want.astype(np.float32), rtol=1e-6)
    target = subclassed_model(5)
    repo.merge([v.id for v in versions], into=target)  # `into` holds it when no model= is given
    for got, want in zip(target.get_weights(), expected, strict=True):
        np.testing.assert_allclose(got, want.astype(np.float32), rtol=1e-6)


def test_merges_survive_removing_an_input_and_gc(repo):
    """Soups and ensembles reference their inputs' stored tensors: rm + gc must keep those bytes."""
    members = [dense_model(seed) for seed in range(2)]
    versions = [repo.commit(m, "net") for m in members]
    ensemble = repo.merge([v.id for v in versions], method="ensemble")
    soup = repo.merge([v.id for v in versions])
    repo.remove(versions[0].id, name="net", force=True)
    repo.gc()
    x = np.ones((2, 6), np.float32)
    rebuilt = repo.checkout(ensemble.id, name="net_ensemble")
    expected = np.mean([np.asarray(m(x)) for m in members], axis=0)
    np.testing.assert_allclose(np.asarray(rebuilt(x)), expected, rtol=1e-5, atol=1e-6)
    repo.checkout(soup.id, name="net")
    assert repo.verify().ok

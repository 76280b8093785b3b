"""Round trips on real Keras models: commit, train further, checkout, rebuild from structure."""

from __future__ import annotations

import numpy as np
import pytest
from keras_models import BUILDERS, linear_regression, sample_input, train_reference

from mvc_magics.adapters.keras import KerasAdapter
from mvc_magics.errors import ShapeMismatchError, UnsupportedModelError


def variables(model):
    return {name: np.array(value) for name, value in KerasAdapter().get_state(model).items()}


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_checkout_restores_bit_identical_weights_and_predictions(repo, kind):
    model = BUILDERS[kind]()
    x, y = sample_input(kind)
    model.fit(x, y, epochs=1, verbose=0)
    saved = variables(model)
    expected = model.predict(x, verbose=0)
    version = repo.commit(model, kind, message="one epoch")
    assert version.metrics.get("loss") is not None  # captured from the fit history
    model.fit(x, y, epochs=2, verbose=0)
    assert any(not np.array_equal(saved[k], v) for k, v in variables(model).items())

    repo.checkout(version.id, model)
    after = variables(model)
    assert after.keys() == saved.keys()
    for name in saved:
        assert after[name].dtype == saved[name].dtype
        np.testing.assert_array_equal(after[name], saved[name])
    np.testing.assert_array_equal(model.predict(x, verbose=0), expected)
    assert not repo.status({kind: model})[0].changed


@pytest.mark.parametrize("kind", ["dense", "conv_bn", "lstm", "two_input"])
def test_rebuild_from_structure_predicts_identically(repo, kind):
    model = BUILDERS[kind]()
    x, y = sample_input(kind)
    model.fit(x, y, epochs=1, verbose=0)
    version = repo.commit(model, kind)
    rebuilt = repo.checkout(version.id, name=kind)
    assert rebuilt is not model
    np.testing.assert_array_equal(rebuilt.predict(x, verbose=0), model.predict(x, verbose=0))
    assert repo.commit(rebuilt, kind).id == version.id  # the rebuilt model is the same content


def test_non_trainable_state_is_versioned(repo):
    model = BUILDERS["conv_bn"]()
    x, y = sample_input("conv_bn", n=16)
    names = set(variables(model))
    assert {n for n in names if "moving_mean" in n or "moving_variance" in n}
    assert any("seed_generator" in n for n in names)
    version = repo.commit(model, "net")
    model.fit(x, y, epochs=2, verbose=0)  # moves BatchNorm statistics
    repo.checkout(version.id, model)
    restored = variables(model)
    stored = repo.load_state(version)
    for name in stored:
        np.testing.assert_array_equal(restored[name], stored[name])


def test_subclassed_model_without_config_checks_out_in_place_only(repo):
    model = BUILDERS["subclassed"]()
    version = repo.commit(model, "sub")
    with pytest.raises(UnsupportedModelError, match="existing model"):
        repo.checkout(version.id, name="sub")


def test_rerun_build_cell_still_checks_out_by_position(repo):
    """Re-running the cell that builds a model renames its layers (dense_3...); checkout still fits."""
    first = BUILDERS["dense"]()
    version = repo.commit(first, "net")
    second = BUILDERS["dense"](seed=5)
    assert set(variables(second)) != set(repo.load_state(version))
    repo.checkout(version.id, second, name="net")
    x, _ = sample_input("dense")
    np.testing.assert_array_equal(second.predict(x, verbose=0), first.predict(x, verbose=0))


def test_checkout_into_a_model_of_another_shape_leaves_it_untouched(repo):
    small = BUILDERS["dense"]()
    repo.commit(small, "net")
    import keras

    other = keras.Sequential([keras.Input((6,)), keras.layers.Dense(9), keras.layers.Dense(3)])
    before = variables(other)
    with pytest.raises(ShapeMismatchError, match="shape mismatch"):
        repo.checkout("latest", other, name="net")
    after = variables(other)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_reference_example_best_val_mse_is_the_100_epoch_version(repo):
    model = linear_regression()
    ids = {}
    for total, step in ((10, 10), (50, 40), (100, 50)):
        train_reference(model, step)
        ids[total] = repo.commit(model, "model", message=f"{total} epochs").id
    assert repo.resolve("best:val_mse", name="model").id == ids[100]
    log = repo.log("model")
    assert [v.metrics["val_mse"] for v in log] == sorted(v.metrics["val_mse"] for v in log)
    repo.checkout("HEAD~2", model)
    assert repo.head("model").id == ids[10]
    repo.checkout("best:val_mse", model)
    assert repo.head("model").id == ids[100]
    assert not repo.is_modified(model, repo.head("model"))


def test_fine_tune_of_last_layer_writes_only_that_layer(repo):
    model = BUILDERS["dense"]()
    repo.commit(model, "net")
    last = model.layers[-1]
    last.kernel.assign(last.kernel.numpy() + 1.0)
    v = repo.commit(model, "net", message="last layer")
    assert v.stats.tensors_written == 1
    assert v.stats.bytes_written == last.kernel.numpy().nbytes


def test_models_without_variables_are_refused(repo, store_path):
    import keras

    unbuilt = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(UnsupportedModelError, match="not built"):
        repo.commit(unbuilt, "net")
    empty = keras.Sequential([keras.Input((3, 2)), keras.layers.Flatten()])
    with pytest.raises(UnsupportedModelError, match="no variables"):
        repo.commit(empty, "net")
    assert repo.log() == []


def test_fit_metrics_are_captured_once_per_fit(repo):
    model = linear_regression()
    train_reference(model, 3)
    first = repo.commit(model, "model")
    assert "val_mse" in first.metrics
    last = model.layers[-1]
    last.bias.assign(last.bias.numpy() + 1.0)  # a manual edit, no new fit
    edited = repo.commit(model, "model", message="edited by hand")
    assert edited.metrics == {}  # the previous fit's metrics do not describe these weights
    train_reference(model, 1)
    assert "val_mse" in repo.commit(model, "model").metrics


def test_rebuilt_model_is_compiled_as_committed(repo):
    model = linear_regression()
    train_reference(model, 2)
    version = repo.commit(model, "model")
    rebuilt = repo.checkout(version.id, name="model")
    assert rebuilt.compiled
    assert rebuilt.optimizer.__class__.__name__ == "SGD"
    assert abs(float(rebuilt.optimizer.learning_rate.numpy()) - 0.01) < 1e-6
    from keras_models import REFERENCE_XV, REFERENCE_YV

    got = rebuilt.evaluate(REFERENCE_XV, REFERENCE_YV, verbose=0, return_dict=True)
    want = model.evaluate(REFERENCE_XV, REFERENCE_YV, verbose=0, return_dict=True)
    assert got["mse"] == pytest.approx(want["mse"])

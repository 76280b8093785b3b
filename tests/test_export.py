"""Export for serving: .keras, TensorFlow SavedModel and .weights.h5, checked against the live model."""

from __future__ import annotations

import numpy as np
import pytest
from IPython.core.error import UsageError
from keras_models import conv_bn_model, dense_model, sample_input

from mvc_magics.errors import ExportError


@pytest.fixture
def trained(repo):
    model = conv_bn_model(seed=2)
    x, y = sample_input("conv_bn", n=8)
    model.fit(x, y, epochs=1, verbose=0)  # BatchNorm statistics move: they must be exported too
    version = repo.commit(model, "model", tags=["production"])
    return model, version, x


def test_export_savedmodel_serves_identical_predictions(repo, trained, tmp_path):
    import tensorflow as tf

    model, version, x = trained
    path = repo.export("production", tmp_path / "saved", format="savedmodel")
    assert (path / "saved_model.pb").exists()
    served = tf.saved_model.load(str(path))
    np.testing.assert_array_equal(served.serve(tf.constant(x)).numpy(), model.predict(x, verbose=0))
    entry = list(repo.audit.entries())[-1]
    assert entry.op == "export" and entry.detail["format"] == "savedmodel"
    assert repo.head("model").id == version.id  # export moves no HEAD


@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
def test_export_keras_file_and_weights_h5(repo, trained, tmp_path):
    import keras

    model, version, x = trained
    keras_path = repo.export(version.short_id, tmp_path / "model.keras")
    loaded = keras.saving.load_model(keras_path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    weights_path = repo.export("production", tmp_path / "model.weights.h5", format="weights-h5")
    fresh = conv_bn_model(seed=7)
    fresh.load_weights(weights_path)
    for got, want in zip(fresh.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_export_refuses_bad_destinations_and_non_keras_versions(repo, trained, tmp_path, weights):
    with pytest.raises(ExportError, match=r"\.keras"):
        repo.export("production", tmp_path / "model.h5")
    with pytest.raises(ExportError, match=r"weights\.h5"):
        repo.export("production", tmp_path / "model.keras", format="weights-h5")
    (tmp_path / "taken.keras").write_bytes(b"mine")
    with pytest.raises(ExportError, match="already exists"):
        repo.export("production", tmp_path / "taken.keras")
    assert (tmp_path / "taken.keras").read_bytes() == b"mine"
    with pytest.raises(ExportError, match="unknown export format"):
        repo.export("production", tmp_path / "x", format="onnx")
    v = repo.commit(weights, "plain")
    with pytest.raises(ExportError, match="Keras"):
        repo.export(v.id, tmp_path / "plain.keras")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")) == []


def test_export_magic(ip, tmp_path):
    import keras

    model = dense_model(seed=1)
    ip.user_ns["model"] = model
    ip.run_line_magic("mvc_commit", "model --tag production")
    ip.run_line_magic("mvc_export", f"production {tmp_path / 'out.keras'}")
    x, _ = sample_input("dense")
    np.testing.assert_array_equal(keras.saving.load_model(tmp_path / "out.keras").predict(x, verbose=0),
                                  model.predict(x, verbose=0))
    with pytest.raises(UsageError, match="invalid choice"):
        ip.run_line_magic("mvc_export", f"production {tmp_path / 'o'} --format onnx")

"""TensorFlow models as users write them: the origin document's class verbatim (raw tf.Variable
attributes on a Keras 3 model), its tf.Module twin, nested modules, and Keras 2 (tf_keras) models."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from mvc_magics.errors import UnsupportedModelError  # noqa: E402

X_TRAIN, Y_TRAIN = [1, 2, 3, 4], [2, 4, 6, 8]
X_VAL, Y_VAL = [5, 6, 7, 8], [10, 12, 14, 16]


# The origin document's model, section 4.1, verbatim.
class LinearRegression(tf.keras.Model):
    def __init__(self):
        super(LinearRegression, self).__init__()  # noqa: UP008 - as the document writes it
        self.w = tf.Variable(0.0, name="weight")
        self.b = tf.Variable(0.0, name="bias")

    def call(self, x):
        return self.w * x + self.b


class LinearModule(tf.Module):
    """The same model as a tf.Module."""

    def __init__(self):
        super().__init__()
        self.w = tf.Variable(0.0, name="weight")
        self.b = tf.Variable(0.0, name="bias")

    def __call__(self, x):
        return self.w * x + self.b


def train(model, epochs: int) -> float:
    """The document's GradientTape loop (4.2); returns the validation MSE (4.3).

    Keras 3 does not track raw tf.Variables, so ``model.trainable_variables`` is empty for the
    document's class: the variables are given explicitly, which works for both models.
    """
    variables = [model.w, model.b]
    loss_fn = tf.keras.losses.MeanSquaredError()
    optimizer = tf.keras.optimizers.SGD(learning_rate=0.01)
    x = tf.constant(X_TRAIN, tf.float32)
    for _ in range(epochs):
        with tf.GradientTape() as tape:
            loss = loss_fn(tf.constant(Y_TRAIN, tf.float32), model(x))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
    return float(loss_fn(tf.constant(Y_VAL, tf.float32), model(tf.constant(X_VAL, tf.float32))))


@pytest.mark.parametrize("make", [LinearRegression, LinearModule], ids=["keras3-document-class", "tf-module"])
def test_document_model_end_to_end(repo, make):
    model = make()
    assert [e for e in repo.log()] == []
    untrained = repo.commit(model, "model", metrics={"val_mse": train(model, 0)})
    assert [e.name for e in repo.manifest(untrained.id)] == ["b", "w"]
    assert repo.is_modified(model, untrained) is False
    short = repo.commit(model, "model", metrics={"val_mse": train(model, 20)})
    assert repo.is_modified(model, short) is False  # cheap: the pinned buffers vouch for the bytes
    longer = repo.commit(model, "model", metrics={"val_mse": train(model, 200)})
    assert longer.metrics["val_mse"] < short.metrics["val_mse"] < untrained.metrics["val_mse"]
    expected = {k: v.copy() for k, v in repo.load_state(longer).items()}

    repo.checkout(untrained.id, model)
    assert float(model.w.numpy()) == 0.0 and repo.status({"model": model})[0].changed is False
    best = repo.checkout("best:val_mse", model)
    assert best is model
    assert model.w.numpy().tobytes() == expected["w"].tobytes()  # bit-identical
    assert model.b.numpy().tobytes() == expected["b"].tobytes()

    diff = repo.diff(untrained.id, longer.id)
    assert {t.name: t.status for t in diff.tensors} == {"b": "changed", "w": "changed"}
    table = repo.compare([untrained.id, short.id, longer.id], name="model")
    assert table.best.id == longer.id

    states = [repo.load_state(v) for v in (short, longer)]
    merged = repo.merge([short.id, longer.id], name="model", into=model)
    for key in ("w", "b"):
        mean = np.mean([s[key].astype(np.float64) for s in states], axis=0).astype(np.float32)
        assert repo.load_state(merged)[key].tobytes() == mean.tobytes()
        assert getattr(model, key).numpy().tobytes() == mean.tobytes()
    weighted = repo.merge([short.id, longer.id], weights=[3, 1], name="model", classes=[make])
    w = repo.load_state(weighted)["w"]
    assert w == np.float32((3 * states[0]["w"].astype(np.float64) + states[1]["w"]) / 4)

    with pytest.raises(UnsupportedModelError, match="classes="):
        repo.checkout(longer.id, name="model")
    rebuilt = repo.checkout(longer.id, name="model", classes={make.__name__: make})
    assert type(rebuilt) is make and rebuilt.w.numpy().tobytes() == expected["w"].tobytes()


def test_document_class_warns_that_keras_does_not_train_its_variables(repo):
    with pytest.warns(UserWarning, match="Keras 3 does not track"):
        repo.commit(LinearRegression(), "model")


class Dense(tf.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.kernel = tf.Variable(tf.random.stateless_normal((n_in, n_out), seed=(1, 2)))
        self.calls = tf.Variable(0, trainable=False)


class Encoder(tf.Module):
    def __init__(self):
        super().__init__()
        self.dense = Dense(3, 2)
        self.norm = tf.keras.layers.LayerNormalization()
        self.norm.build((None, 2))


class Nested(tf.Module):
    def __init__(self):
        super().__init__()
        self.encoder = Encoder()
        self.heads = [Dense(2, 1), Dense(2, 1)]
        self.table = {"scale": tf.Variable(2.0), "shift": tf.Variable(0.5, dtype=tf.float64)}
        self.half = tf.Variable(tf.ones((2,), tf.bfloat16))
        self.shared = self.heads[0].kernel  # the same variable twice: stored once, first name wins


def test_nested_module_names_every_variable_by_attribute_path(repo):
    model = Nested()
    version = repo.commit(model, "nested")
    names = [e.name for e in repo.manifest(version.id)]
    assert names == ["encoder/dense/calls", "encoder/dense/kernel", "encoder/norm/gamma", "encoder/norm/beta",
                     "half", "heads/0/calls", "heads/0/kernel", "heads/1/calls", "heads/1/kernel",
                     "table/scale", "table/shift"]
    assert [e.name for e in repo.manifest(repo.commit(Nested(), "again").id)] == names  # deterministic
    dtypes = {e.name: e.dtype for e in repo.manifest(version.id)}
    assert dtypes["half"] == "bfloat16" and dtypes["table/shift"] == "float64" and dtypes["heads/0/calls"] == "int32"
    before = {k: v.copy() for k, v in repo.load_state(version).items()}
    model.heads[1].kernel.assign(tf.zeros((2, 1)))
    model.encoder.dense.calls.assign(7)
    model.half.assign(tf.zeros((2,), tf.bfloat16))
    assert repo.status({"nested": model})[0].changed
    repo.checkout(version.id, model)
    assert int(model.encoder.dense.calls.numpy()) == 0
    np.testing.assert_array_equal(model.heads[1].kernel.numpy(), before["heads/1/kernel"])
    assert model.half.numpy().tobytes() == before["half"].tobytes()
    copy = repo.checkout(version.id, name="nested", unsafe=True)
    assert type(copy) is Nested and copy is not model


def test_module_without_variables_is_refused_with_a_sentence(repo):
    with pytest.raises(UnsupportedModelError, match=r"holds no variables.*before committing it\."):
        repo.commit(tf.Module(), "empty")


def test_keras3_model_with_add_weight_in_init_is_not_unbuilt(repo):
    import keras

    class Scale(keras.Model):
        def __init__(self):
            super().__init__()
            self.scale = self.add_weight(shape=(3,), initializer="ones", name="scale")

        def call(self, x):
            return x * self.scale

    model = Scale()
    assert not model.built
    version = repo.commit(model, "scale")
    assert [e.name for e in repo.manifest(version.id)] == [f"{model.name}/scale"]
    model.scale.assign(np.zeros(3, np.float32))
    repo.checkout(version.id, model)
    np.testing.assert_array_equal(model.scale.numpy(), np.ones(3, np.float32))


# -- Keras 2 (tf_keras) ---------------------------------------------------------------------------

tf_keras = pytest.importorskip("tf_keras")


def keras2_models():
    tf_keras.utils.set_random_seed(0)
    sequential = tf_keras.Sequential([tf_keras.layers.Dense(4, input_shape=(3,), activation="relu"),
                                      tf_keras.layers.BatchNormalization(), tf_keras.layers.Dense(1)])
    inputs = tf_keras.Input((3,))
    functional = tf_keras.Model(inputs, tf_keras.layers.Dense(1)(tf_keras.layers.Dense(5)(inputs)))
    return {"sequential": sequential, "functional": functional}


class Keras2Net(tf_keras.Model):
    def __init__(self):
        super().__init__()
        self.hidden = tf_keras.layers.Dense(4, activation="tanh")
        self.out = tf_keras.layers.Dense(1)
        self.temperature = tf.Variable(1.0, name="temperature")

    def call(self, x):
        return self.out(self.hidden(x)) / self.temperature


@pytest.mark.parametrize("kind", ["sequential", "functional", "subclassed"])
def test_keras2_models_round_trip_and_rebuild(repo, kind):
    x = np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32)
    y = x.sum(axis=1, keepdims=True)
    model = Keras2Net() if kind == "subclassed" else keras2_models()[kind]
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, y, epochs=1, verbose=0)
    version = repo.commit(model, kind)
    assert version.framework == "tf_keras" and "loss" in version.metrics
    names = [e.name for e in repo.manifest(version.id)]
    assert all(":" not in n for n in names)
    if kind == "subclassed":
        assert "temperature" in names
    expected = model.predict(x, verbose=0)
    model.fit(x, y, epochs=2, verbose=0)
    assert repo.status({kind: model})[0].changed
    repo.checkout(version.id, model)
    np.testing.assert_array_equal(model.predict(x, verbose=0), expected)
    trust = {"classes": [Keras2Net]} if kind == "subclassed" else {}
    rebuilt = repo.checkout(version.id, name=kind, **trust)
    assert type(rebuilt) is type(model) and rebuilt is not model
    np.testing.assert_array_equal(rebuilt.predict(x, verbose=0), expected)
    if kind != "subclassed":
        assert getattr(rebuilt, "compiled_loss", None) is not None  # training setup restored
    if kind == "sequential":
        folder = repo.path.parent
        loaded = tf_keras.models.load_model(repo.export(version.id, folder / "m.keras"))
        np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)
        assert repo.export(version.id, folder / "m.weights.h5", format="weights-h5").stat().st_size > 0
        served = tf.saved_model.load(str(repo.export(version.id, folder / "served", format="savedmodel",
                                                     model=model)))
        np.testing.assert_allclose(served(x, training=False), expected, rtol=1e-6)


def test_document_class_exports_as_savedmodel_and_refuses_what_would_lose_its_variables(repo, tmp_path):
    from mvc_magics.errors import ExportError, MergeConflictError

    model = LinearRegression()
    model(tf.constant([1.0]))
    first = repo.commit(model, "model")
    model.w.assign(2.0)
    second = repo.commit(model, "model")
    with pytest.raises(ExportError, match=r"raw tf.Variables \(b, w\) would be missing.*--format savedmodel"):
        repo.export(second.id, tmp_path / "m.keras", model=model)
    path = repo.export(second.id, tmp_path / "served", format="savedmodel", classes=[LinearRegression])
    served = tf.saved_model.load(str(path))  # kept: the function needs its variables alive
    np.testing.assert_allclose(served.serve(tf.constant([1.0, 2.0])), [2.0, 4.0])
    with pytest.raises(MergeConflictError, match="declare no inputs"):
        repo.merge([first.id, second.id], method="ensemble", classes=[LinearRegression])
    module = LinearModule()
    module.w.assign(5.0)
    version = repo.commit(module, "module")
    # a SavedModel with nothing to call is refused, saying why (tests/test_first_contact_export.py: signatures)
    with pytest.raises(ExportError, match="input_signature"):
        repo.export(version.id, tmp_path / "module", format="savedmodel", model=module)


def test_magics_and_autocommit_on_a_notebook_tf_module(ip):
    ip.run_cell("import tensorflow as tf\n"
                "class Twin(tf.Module):\n"
                "    def __init__(self):\n"
                "        super().__init__()\n"
                "        self.w = tf.Variable(0.0)\n"
                "        self.b = tf.Variable(0.0)\n"
                "model = Twin()").raise_error()
    ip.run_line_magic("mvc_commit", "model --metric val_mse=9")
    ip.run_line_magic("mvc_autocommit", "model on")
    ip.run_cell("model.w.assign(2.0)").raise_error()
    ip.run_cell("x = 1  # the model did not change: no commit").raise_error()
    from mvc_magics import Repo

    repo = Repo(".mvc")  # the shell's default store (the fixture runs in a fresh folder)
    log = repo.log("model")
    assert len(log) == 2 and log[0].framework == "tensorflow"
    assert float(repo.load_state(log[0])["w"]) == 2.0
    ip.run_line_magic("mvc_autocommit", "model off")
    ip.run_line_magic("mvc_checkout", f"{log[1].short_id} model")
    assert float(ip.user_ns["model"].w.numpy()) == 0.0
    ip.run_line_magic("mvc_checkout", "best:val_mse --as copy --unsafe")
    assert type(ip.user_ns["copy"]).__name__ == "Twin" and ip.user_ns["copy"] is not ip.user_ns["model"]


def test_commit_every_in_the_documents_gradient_tape_loop(repo):
    from mvc_magics import commit_every

    model = LinearModule()
    hook = commit_every(model, 50, "model", repo=repo)
    optimizer = tf.keras.optimizers.SGD(learning_rate=0.01)
    x, y = tf.constant(X_TRAIN, tf.float32), tf.constant(Y_TRAIN, tf.float32)
    for _ in range(100):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(x) - y) ** 2)
        optimizer.apply_gradients(zip(tape.gradient(loss, [model.w, model.b]), [model.w, model.b], strict=True))
        hook.step()
    log = repo.log("model")
    assert [v.message for v in log] == ["step 100", "step 50"]
    assert repo.load_state(log[0])["w"].tobytes() == model.w.numpy().tobytes()


def test_commit_callback_in_a_keras2_fit(repo):
    from mvc_magics.keras import CommitCallback

    model = keras2_models()["sequential"]
    model.compile(optimizer="sgd", loss="mse")
    x = np.random.default_rng(1).standard_normal((8, 3)).astype(np.float32)
    callback = CommitCallback(repo=repo, name="seq", monitor="loss")
    model.fit(x, x[:, :1], epochs=2, verbose=0, callbacks=[callback])
    assert [v.message.split(" loss=")[0] for v in repo.log("seq")] == ["epoch 2/2", "epoch 1/2"]
    assert [v.id for v in callback.versions] == [v.id for v in reversed(repo.log("seq"))]
    assert {v.framework for v in repo.log("seq")} == {"tf_keras"}

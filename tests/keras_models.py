"""Small real Keras models used across the tests (built fresh each call)."""

from __future__ import annotations

import numpy as np
import pytest

REFERENCE_X = np.array([[1.0], [2.0], [3.0], [4.0]], dtype=np.float32)
REFERENCE_Y = 2 * REFERENCE_X
REFERENCE_XV = np.array([[5.0], [6.0], [7.0], [8.0]], dtype=np.float32)
REFERENCE_YV = 2 * REFERENCE_XV


def keras():
    """The keras package; the calling test skips where Keras is not installed (a framework-free venv)."""
    return pytest.importorskip("keras", reason="Keras is not installed")


def linear_regression(seed: int = 0):
    """The reference example: y = w*x + b, SGD(lr 0.01), MSE."""
    k = keras()
    k.utils.set_random_seed(seed)
    model = k.Sequential([k.Input((1,)), k.layers.Dense(1)])
    model.compile(optimizer=k.optimizers.SGD(learning_rate=0.01), loss="mse", metrics=["mse"])
    return model


def train_reference(model, epochs: int):
    return model.fit(REFERENCE_X, REFERENCE_Y, epochs=epochs, verbose=0,
                     validation_data=(REFERENCE_XV, REFERENCE_YV))


def dense_model(seed: int = 0):
    k = keras()
    k.utils.set_random_seed(seed)
    model = k.Sequential([k.Input((6,)), k.layers.Dense(8, activation="relu"), k.layers.Dense(3)])
    model.compile(optimizer="adam", loss="mse")
    return model


def conv_bn_model(seed: int = 0):
    k = keras()
    k.utils.set_random_seed(seed)
    model = k.Sequential([
        k.Input((8, 8, 1)),
        k.layers.Conv2D(4, 3, activation="relu"),
        k.layers.BatchNormalization(),
        k.layers.Dropout(0.1),
        k.layers.Flatten(),
        k.layers.Dense(2),
    ])
    model.compile(optimizer="adam", loss="mse")
    return model


def lstm_model(seed: int = 0):
    k = keras()
    k.utils.set_random_seed(seed)
    model = k.Sequential([k.Input((5,), dtype="int32"), k.layers.Embedding(20, 4), k.layers.LSTM(3), k.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    return model


def two_input_model(seed: int = 0):
    k = keras()
    k.utils.set_random_seed(seed)
    a = k.Input((3,), name="a")
    b = k.Input((2,), name="b")
    merged = k.layers.Concatenate()([k.layers.Dense(4)(a), b])
    out = k.layers.Dense(1)(merged)
    model = k.Model([a, b], out)
    model.compile(optimizer="adam", loss="mse")
    return model


def subclassed_model(seed: int = 0):
    k = keras()
    k.utils.set_random_seed(seed)

    class TwoLayer(k.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.hidden = k.layers.Dense(4, activation="tanh")
            self.out = k.layers.Dense(1)

        def call(self, x):
            return self.out(self.hidden(x))

    model = TwoLayer()
    model(np.zeros((1, 3), np.float32))
    model.compile(optimizer="adam", loss="mse")
    return model


def sample_input(model_name: str, n: int = 4, seed: int = 1):
    rng = np.random.default_rng(seed)
    if model_name == "dense":
        return rng.standard_normal((n, 6)).astype(np.float32), rng.standard_normal((n, 3)).astype(np.float32)
    if model_name == "conv_bn":
        return rng.standard_normal((n, 8, 8, 1)).astype(np.float32), rng.standard_normal((n, 2)).astype(np.float32)
    if model_name == "lstm":
        return rng.integers(0, 20, (n, 5)).astype(np.int32), rng.standard_normal((n, 1)).astype(np.float32)
    if model_name == "two_input":
        return ([rng.standard_normal((n, 3)).astype(np.float32), rng.standard_normal((n, 2)).astype(np.float32)],
                rng.standard_normal((n, 1)).astype(np.float32))
    if model_name == "subclassed":
        return rng.standard_normal((n, 3)).astype(np.float32), rng.standard_normal((n, 1)).astype(np.float32)
    raise KeyError(model_name)


BUILDERS = {
    "dense": dense_model,
    "conv_bn": conv_bn_model,
    "lstm": lstm_model,
    "two_input": two_input_model,
    "subclassed": subclassed_model,
}


def committed_trained(repo, factory, kind: str, count: int = 3, name: str = "net") -> list:
    """``count`` models from ``factory`` (seeds 0, 1, ...), each fitted one epoch, committed to ``name``."""
    x, y = sample_input(kind, n=16)
    versions = []
    for seed in range(count):
        model = factory(seed)
        model.fit(x, y, epochs=1, verbose=0)
        versions.append(repo.commit(model, name))
    return versions

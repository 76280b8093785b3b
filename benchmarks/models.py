"""The benchmark models, built with random weights (nothing is downloaded)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@dataclass
class BenchModel:
    """A model plus what the cases need to know about it."""

    key: str
    description: str
    model: Any

    @property
    def nbytes(self) -> int:
        return int(sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in self.model.weights))

    @property
    def last_layer(self) -> Any:
        return [layer for layer in self.model.layers if layer.weights][-1]

    @property
    def last_layer_nbytes(self) -> int:
        return int(sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in self.last_layer.weights))

    def change_last_layer(self, seed: int) -> None:
        """Give the last layer new weights (a fine-tuned head), the rest untouched."""
        rng = np.random.default_rng(seed)
        for variable in self.last_layer.weights:
            shape = tuple(variable.shape)
            variable.assign(rng.standard_normal(shape).astype(np.dtype(variable.dtype)) * 0.01)


def _keras():
    import keras

    return keras


def dense_stack(width: int, depth: int, head: int, key: str, description: str) -> BenchModel:
    keras = _keras()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((width,))
    x = inputs
    for _ in range(depth):
        x = keras.layers.Dense(width, activation="relu")(x)
    outputs = keras.layers.Dense(head, name="head")(x)
    return BenchModel(key, description, keras.Model(inputs, outputs, name=key))


def dense_100mb() -> BenchModel:
    """~109 MB: six Dense(2048) layers and a Dense(1000) head (27.2M float32 parameters)."""
    return dense_stack(2048, 6, 1000, "dense_100mb", "Dense stack 6x2048 + head 1000 (27.2M params)")


def resnet50() -> BenchModel:
    """keras.applications.ResNet50(weights=None): 25.6M parameters in 320 variables."""
    keras = _keras()
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None)
    return BenchModel("resnet50", "ResNet50, weights=None (25.6M params, 320 variables)", model)


def large_1gb() -> BenchModel:
    """~1.07 GB: four Dense(8192) layers and a Dense(1000) head (268M float32 parameters)."""
    return dense_stack(8192, 4, 1000, "large_1gb", "Dense stack 4x8192 + head 1000 (268M params)")


def tiny() -> BenchModel:
    """A few kB: the --smoke model."""
    return dense_stack(16, 2, 4, "tiny", "Dense stack 2x16 + head 4 (smoke run)")

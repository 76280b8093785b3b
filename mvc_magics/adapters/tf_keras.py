"""Adapter for Keras 2 models (``tf_keras``: what ``TF_USE_LEGACY_KERAS=1`` makes ``tf.keras``).

Sequential, functional and subclassed models, as the Keras 3 adapter handles them: every variable
(Keras 2 tracks raw ``tf.Variable`` attributes as weights), the structure from
``tf_keras.saving.serialize_keras_object`` for rebuilds, the compile configuration and fit history.
Names are ``<layer>/<variable>`` without Keras 2's scope and ``:0`` suffix (``dense/kernel``), and
variables the model holds itself are named by attribute (``w``, ``b``) like a ``tf.Module``'s.
"""

from __future__ import annotations

import os
from typing import Any

from .keras import KerasAdapter
from .tf_variables import attribute_variables, save_quietly


class TfKerasAdapter(KerasAdapter):
    """Keras 2 (``tf_keras``) models: the Keras adapter over the legacy package."""

    framework = "tf_keras"
    package = "tf_keras"

    def library(self) -> Any:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tf_keras

        return tf_keras

    def variable_name(self, variable: Any) -> str:
        # "dense_1/kernel:0" -> "kernel": the layer path is added from layer names, as for Keras 3.
        return variable.name.rsplit("/", 1)[-1].split(":", 1)[0]

    def claim_own(self, model: Any, claim: Any) -> None:
        for path, variable in attribute_variables(model).items():  # w, b: by attribute, as in tf.Module
            claim(variable, path)
        for variable in model.weights:  # anything else the model tracks itself
            claim(variable, f"{model.name}/{self.variable_name(variable)}")

    def export_model(self, model: Any, path: str, fmt: str) -> None:
        """``.keras`` / ``.weights.h5`` through tf_keras; a SavedModel through TensorFlow."""
        if fmt == "savedmodel":
            import tensorflow as tf

            save_quietly(tf, model, path)
        else:
            super().export_model(model, path, fmt)

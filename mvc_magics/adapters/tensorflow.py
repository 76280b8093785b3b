"""Adapter for TensorFlow ``tf.Module`` models: variables held as attributes, however nested.

A ``tf.Module`` has no config to rebuild it from: its structure is its class
(``{"format": "tf.Module", "class": "__main__.LinearModel"}``), made again with ``cls()`` on the
user's opt-in (``classes=`` or ``unsafe=True``, see :mod:`.trust`) and then given the weights.
Variables are found and named by :func:`.tf_variables.attribute_variables` (``w``,
``encoder/dense/kernel``, ``blocks/0/scale``); Keras layers inside the module count like any
attribute. Keras models themselves (Keras 3 and tf_keras, whose layers are ``tf.Module``s too)
belong to their own adapters.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..errors import ExportError, UnsupportedModelError
from .base import match_state
from .tf_variables import (
    PinnedHashes,
    adopter,
    attribute_variables,
    module_signatures,
    numpy_dtype,
    read_variable,
    save_quietly,
)
from .trust import AllowList, TrustPolicy, import_class, qualified_name

STRUCTURE_FORMAT = "tf.Module"
# A plain tf.Module is the only class rebuilt without asking: any subclass is user code.
ALLOWED = AllowList(["tensorflow.python.module.module:Module"])


class TensorFlowAdapter(PinnedHashes):
    """``tf.Module`` models: every variable by attribute path, rebuilt from the class on opt-in."""

    framework = "tensorflow"
    export_formats = ("savedmodel",)

    def handles(self, obj: object) -> bool:
        tf = sys.modules.get("tensorflow")
        if tf is None or not isinstance(obj, tf.Module):
            return False
        return not any(cls.__module__.split(".")[0] in ("keras", "tf_keras") for cls in type(obj).__mro__)

    def named_variables(self, model: Any) -> dict[str, Any]:
        """Attribute path -> variable, for every variable the module holds (deterministic order)."""
        return attribute_variables(model)

    def get_state(self, model: Any) -> dict[str, np.ndarray]:
        named = self.named_variables(model)
        if not named:
            raise UnsupportedModelError(
                f"The tf.Module {type(model).__name__} holds no variables (none in its attributes, lists or "
                "dicts); create its tf.Variables before committing it."
            )
        return {name: read_variable(variable) for name, variable in named.items()}

    def set_state(self, model: Any, state: Mapping[str, np.ndarray], owned: bool = False) -> None:
        """Assign ``state``: every shape checked (and every value cast) before the first assignment."""
        named = self.named_variables(model)
        live = {name: (tuple(v.shape), numpy_dtype(v).name) for name, v in named.items()}
        pairs = match_state(live, state)  # raises before any assignment
        values = {}
        for live_name, stored_name in pairs.items():
            value, dtype = state[stored_name], numpy_dtype(named[live_name])
            values[live_name] = value.astype(dtype) if value.dtype != dtype else value
        adopt = adopter() if owned else None
        for live_name, value in values.items():
            named[live_name].assign(adopt(value) if adopt is not None and value is state[pairs[live_name]]
                                    else value)

    def structure(self, model: Any) -> object | None:
        return {"format": STRUCTURE_FORMAT, "class": qualified_name(type(model))}

    def build(self, structure: object, state: Mapping[str, np.ndarray], unsafe: bool = False,
              classes: Iterable[type] | Mapping[str, type] | None = None) -> Any:
        if not isinstance(structure, dict) or structure.get("format") != STRUCTURE_FORMAT:
            raise UnsupportedModelError("This version has no tf.Module structure; check it out into an existing "
                                        "module instead (%mvc_checkout REF model).")
        cls = import_class(structure.get("class"), TrustPolicy(ALLOWED, unsafe, classes))
        try:
            model = cls()
        except TypeError as exc:
            raise UnsupportedModelError(
                f"{cls.__name__}() needs arguments ({exc}); create one yourself and check the version out "
                "into it (%mvc_checkout REF model).") from exc
        if not self.handles(model):
            raise UnsupportedModelError(f"{structure.get('class')} is not a tf.Module; check the version out into "
                                        "an existing model instead.")
        self.set_state(model, state)
        return model

    def export_model(self, model: Any, path: str, fmt: str) -> None:
        """A TensorFlow SavedModel: the variables and every ``tf.function`` the module defines."""
        if fmt != "savedmodel":
            raise ExportError("A tf.Module exports only as a SavedModel; choose --format savedmodel.")
        import tensorflow as tf

        signatures = module_signatures(model)
        if not signatures:
            raise ExportError(f"{type(model).__name__} has no tf.function with an input_signature, so its SavedModel "
                              "would hold the variables but nothing TensorFlow Serving can call; decorate __call__ "
                              "(or another method) with @tf.function(input_signature=[tf.TensorSpec(...)]), or read "
                              "the tensors with repo.load_state.")
        save_quietly(tf, model, path, signatures)

    def extra_metadata(self, model: Any) -> dict:
        return {}

    def fit_metrics(self, model: Any) -> dict[str, float]:
        return {}

    def library_versions(self) -> dict[str, str]:
        tf = sys.modules.get("tensorflow")
        return {"tensorflow": getattr(tf, "__version__", "unknown")}

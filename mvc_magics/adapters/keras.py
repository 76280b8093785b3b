"""Adapter for Keras 3 models (Sequential, functional and subclassed).

TensorFlow/Keras is imported only when a Keras model is actually handled, so loading the extension
stays fast. Variable names are ``<layer>/<sublayer>/<variable>`` built from layer names (which the
structure config preserves), not Keras's creation-time ``variable.path`` (which changes when a model
is rebuilt from its config).
"""

from __future__ import annotations

import json
import os
import sys
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import UnsupportedModelError
from .base import match_state

_KERAS_BASES = {"Layer", "Model", "Sequential", "Functional"}
# Layers mvc_magics itself defines (the vote of an ensemble): package code, trusted on rebuild.
# Only these exact classes are allowed, so a structure cannot name anything else in the package.
_OWN_LAYERS = {"mvc_magics.keras_layers": frozenset({"MajorityVote"})}


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _keras():
    _quiet_tensorflow()
    import keras

    return keras


class KerasAdapter:
    """Keras 3 models: every variable (trainable and not), the JSON structure, fit history."""

    framework = "keras"

    def __init__(self) -> None:
        # model -> (id of its History, epochs) last used by a commit; weak so models can be freed
        self._captured: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def handles(self, obj: object) -> bool:
        if "keras" not in sys.modules:
            return False
        return any(
            cls.__module__.split(".")[0] == "keras" and cls.__name__ in _KERAS_BASES
            for cls in type(obj).__mro__
        )

    # -- variables ------------------------------------------------------------------------

    def named_variables(self, model: Any) -> dict[str, Any]:
        """Stable name -> Keras variable for every variable of ``model``, deterministic order."""
        keras = _keras()
        claimed: dict[int, str] = {}
        variables: dict[int, Any] = {}

        def claim(variable: Any, name: str) -> None:
            if id(variable) not in claimed:
                claimed[id(variable)] = name
                variables[id(variable)] = variable

        def walk(layer: Any, prefix: str) -> None:
            for sub in layer._flatten_layers(include_self=False, recursive=False):
                path = f"{prefix}{sub.name}"
                walk(sub, path + "/")  # innermost layers claim their variables first
                for variable in sub.weights:
                    claim(variable, f"{path}/{variable.name}")
                for attr, value in sorted(vars(sub).items()):
                    if isinstance(value, keras.random.SeedGenerator):
                        claim(value.state, f"{path}/{attr}/{value.state.name}")

        walk(model, "")
        for variable in model.weights:  # variables the model holds directly (subclassed models)
            claim(variable, f"{model.name}/{variable.name}")
        ordered: dict[str, Any] = {}
        for key, name in claimed.items():
            unique, n = name, 1
            while unique in ordered:
                n += 1
                unique = f"{name}#{n}"
            ordered[unique] = variables[key]
        return ordered

    def get_state(self, model: Any) -> dict[str, np.ndarray]:
        keras = _keras()
        if not model.built:
            raise UnsupportedModelError(
                "the Keras model is not built yet (no variables): call it on data or build() it first"
            )
        return {
            name: np.asarray(keras.ops.convert_to_numpy(variable))
            for name, variable in self.named_variables(model).items()
        }

    def set_state(self, model: Any, state: Mapping[str, np.ndarray]) -> None:
        named = self.named_variables(model)
        live = {name: (tuple(v.shape), str(v.dtype)) for name, v in named.items()}
        pairs = match_state(live, state)  # raises before any assignment
        for live_name, stored_name in pairs.items():
            named[live_name].assign(state[stored_name])

    # -- structure ------------------------------------------------------------------------

    def structure(self, model: Any) -> object | None:
        keras = _keras()
        try:
            config = keras.saving.serialize_keras_object(model)
            config = json.loads(json.dumps(config))
        except (NotImplementedError, TypeError, ValueError, AttributeError):
            return None
        if isinstance(config, dict):
            config.pop("compile_config", None)  # training setup is metadata, not identity
        return config

    def build(self, structure: object, state: Mapping[str, np.ndarray], unsafe: bool = False) -> Any:
        keras = _keras()
        if structure is None:
            raise UnsupportedModelError(
                "this version has no stored structure (the model was not serializable); "
                "check it out into an existing model instead"
            )
        if not unsafe:
            foreign = _foreign_modules(structure)
            if foreign:
                raise UnsupportedModelError(
                    f"the structure refers to code outside Keras ({', '.join(sorted(foreign)[:3])}); "
                    "check out into an existing model, or pass unsafe=True if you trust this store"
                )
        from .. import keras_layers  # noqa: F401 - registers the package's own layers

        try:
            model = keras.saving.deserialize_keras_object(structure, safe_mode=not unsafe)
        except Exception as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UnsupportedModelError(
                f"cannot rebuild the model from its stored structure: {first_line[:200]}; "
                "check it out into an existing model instead"
            ) from exc
        if not model.built:
            raise UnsupportedModelError("the rebuilt model has no variables; check out into an existing model")
        self.set_state(model, state)
        return model

    # -- metadata -------------------------------------------------------------------------

    def extra_metadata(self, model: Any) -> dict:
        compile_config = None
        try:
            if getattr(model, "compiled", False):
                compile_config = json.loads(json.dumps(model.get_compile_config(), default=str))
        except Exception:
            compile_config = None
        return {"compile": compile_config} if compile_config else {}

    def _history_mark(self, model: Any) -> tuple[int, int] | None:
        history = getattr(model, "history", None)
        logs = getattr(history, "history", None)
        if not isinstance(logs, dict):
            return None
        return id(history), max((len(v) for v in logs.values() if isinstance(v, list | tuple)), default=0)

    def mark_committed(self, model: Any) -> None:
        """Remember the fit history a commit used, so a later commit does not reuse its metrics."""
        mark = self._history_mark(model)
        if mark is not None:
            try:
                self._captured[model] = mark
            except TypeError:  # not weak-referenceable: metrics may then be captured again
                pass

    def fit_metrics(self, model: Any) -> dict[str, float]:
        """The last epoch of the most recent fit, unless a commit of this model already used it."""
        mark = self._history_mark(model)
        if mark is None or self._captured.get(model) == mark:
            return {}
        logs = model.history.history
        metrics = {}
        for key, values in logs.items():
            if isinstance(values, list | tuple) and values:
                try:
                    metrics[str(key)] = float(values[-1])
                except (TypeError, ValueError):
                    continue
        return metrics

    def library_versions(self) -> dict[str, str]:
        keras = _keras()
        versions = {"keras": keras.__version__, "backend": keras.backend.backend()}
        tf = sys.modules.get("tensorflow")
        if tf is not None:
            versions["tensorflow"] = getattr(tf, "__version__", "unknown")
        return versions


def _foreign_modules(structure: object) -> set[str]:
    """Modules named in a Keras config that are not Keras itself (code that would be imported)."""
    found: set[str] = set()
    stack = [structure]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            module = item.get("module")
            own = item.get("class_name") in _OWN_LAYERS.get(module, ())
            if isinstance(module, str) and module.split(".")[0] != "keras" and not own:
                found.add(module)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found

"""A Keras model's structure (its serialized config) and the rebuild from it, for Keras 3 and 2.

Keras rebuilds its own layers by itself. A class that is not Keras's (a subclassed model defined in
the notebook, a custom layer from the user's package) is code: the structure records its module and
name, and it is rebuilt only with the caller's opt-in (``classes=`` or ``unsafe=True``, see
:mod:`.trust`). A subclassed model whose constructor Keras cannot call from its config (the usual
``def __init__(self)`` with no arguments) is made with ``cls()`` and built from its recorded input
shape, then given the stored weights.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ..core.messages import first_sentence
from ..errors import UnsupportedModelError
from .trust import EMPTY, Classes, TrustPolicy, describe_class, import_class

# Layers mvc_magics itself defines (the vote of an ensemble): package code, trusted on rebuild.
# Only these exact classes are allowed, so a structure cannot name anything else in the package.
_OWN_LAYERS = {"mvc_magics.keras_layers": frozenset({"MajorityVote"})}
_KERAS_PACKAGES = {"keras", "tf_keras"}


def serialize(keras: Any, model: Any) -> object | None:
    """The JSON-able config of ``model`` without its training setup; None when not serializable.

    Keras writes ``"module": null`` for classes defined in ``__main__``; the module is recorded
    here instead, so the version says where its class lives.
    """
    try:
        config = json.loads(json.dumps(keras.saving.serialize_keras_object(model)))
    except (NotImplementedError, TypeError, ValueError, AttributeError):
        return None
    if isinstance(config, dict):
        config.pop("compile_config", None)  # training setup is metadata, not identity
        if config.get("module") is None and config.get("class_name") == type(model).__name__:
            config["module"] = type(model).__module__
    return config


def foreign_modules(structure: object) -> set[str]:
    """Modules named in a Keras config that are not Keras itself (code that would be imported)."""
    return {module or "__main__" for module, _name, _registered in _foreign_entries(structure)}


def _foreign_entries(structure: object) -> list[tuple[str | None, str, str]]:
    found: list[tuple[str | None, str, str]] = []
    stack = [structure]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            module, name = item.get("module"), item.get("class_name")
            own = name in _OWN_LAYERS.get(module, ())
            # "__keras_tensor__", "__lambda__"...: Keras's own markers (safe_mode guards the lambda)
            is_class = isinstance(name, str) and "config" in item and not name.startswith("__")
            registered = item.get("registered_name")
            if is_class and not own and (module is None or not isinstance(module, str)
                                         or module.split(".")[0] not in _KERAS_PACKAGES):
                found.append((module if isinstance(module, str) else None, name, str(registered or name)))
            elif is_class and not own and registered not in (None, name):
                # Keras looks a registered name up before the module: "thirdparty>X" under
                # keras.layers would make any class registered in the process, so it is foreign too.
                found.append((module, name, str(registered)))
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def custom_objects(keras: Any, structure: object, unsafe: bool, classes: Classes | None) -> dict[str, Any]:
    """``{registered name: class}`` for every non-Keras class the structure names, if opted in.

    Raises :class:`UnsupportedModelError` (a sentence saying how to opt in) for the first class the
    caller did not trust.
    """
    found: dict[str, Any] = {}
    policy = TrustPolicy(EMPTY, unsafe, classes)
    for module, name, registered in _foreign_entries(structure):
        if name == "function":  # a function by name: only Keras's registry or unsafe imports it
            if not unsafe:
                raise UnsupportedModelError(
                    f"The structure calls the function {registered} from {module}; pass unsafe=True "
                    "(--unsafe) if you trust this store, or check the version out into an existing model.")
            continue
        if module and module.split(".")[0] in _KERAS_PACKAGES:  # Keras's module, someone else's class
            if not unsafe:
                raise UnsupportedModelError(
                    f"The structure names {name} from {module} but asks Keras for the registered class "
                    f"{registered!r}, which is not Keras's; pass unsafe=True (--unsafe) if you trust this "
                    "store, or check the version out into an existing model.")
            found[registered] = keras.saving.get_registered_object(registered)
            continue
        registered_cls = keras.saving.get_registered_object(registered) if unsafe else None
        found[registered] = registered_cls or import_class(f"{module or '__main__'}.{name}", policy)
    return found


def rebuild(keras: Any, structure: object, unsafe: bool, classes: Classes | None) -> Any:
    """A new model from ``structure`` (weights not yet assigned)."""
    if structure is None:
        raise UnsupportedModelError(
            "This version has no stored structure (the model was not serializable), so it cannot be "
            "rebuilt; check it out into an existing model instead (%mvc_checkout REF model)."
        )
    objects = custom_objects(keras, structure, unsafe, classes)
    try:
        # Keras pops keys out of the config it deserializes: give it a copy, so the structure the store
        # keeps (Store.content caches it per file) is never emptied by a rebuild.
        return keras.saving.deserialize_keras_object(json.loads(json.dumps(structure)), custom_objects=objects,
                                                     safe_mode=not unsafe)
    except Exception as exc:
        top = structure.get("registered_name") or structure.get("class_name") if isinstance(structure, dict) else None
        cls = objects.get(top) if isinstance(top, str) else None
        if cls is None:
            raise UnsupportedModelError(
                f"Keras cannot rebuild the model from its stored structure ({first_sentence(exc)}). "
                "Check it out into an existing model instead (%mvc_checkout REF model)."
            ) from exc
    # A subclassed model whose __init__ does not take its own config: made as the notebook made it.
    model = _construct(cls, describe_class(f"{structure.get('module') or '__main__'}.{structure.get('class_name')}"))
    build_config = structure.get("build_config")
    if isinstance(build_config, dict) and not getattr(model, "built", False):
        try:
            model.build_from_config(build_config)
            shape = build_config.get("input_shape")
            known = isinstance(shape, list) and all(isinstance(d, int) for d in shape)
            if known and not getattr(model, "built", False):
                # A model whose variables are raw attributes has no build(): one call on zeros of the
                # recorded input shape marks it built (SavedModel export needs that), as the notebook did.
                model(np.zeros(shape, "float32"))
        except Exception as exc:
            raise UnsupportedModelError(
                f"{type(model).__name__} was made but could not be built from its recorded input shape "
                f"({first_sentence(exc)}); check the version out into an existing model instead."
            ) from exc
    return model


def _construct(cls: type, what: str) -> Any:
    try:
        return cls()
    except TypeError as exc:
        raise UnsupportedModelError(
            f"The model is {what}, whose constructor needs arguments ({first_sentence(exc)}). "
            "Create one yourself and check the version out into it (%mvc_checkout REF model)."
        ) from exc


__all__ = ["custom_objects", "foreign_modules", "rebuild", "serialize"]

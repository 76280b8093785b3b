"""Adapter for Keras 3 optimizers: their variables (iteration count, learning rate, moments), so
``%mvc_commit model --optimizer opt`` / ``%mvc_checkout REF model --optimizer opt`` resume training
exactly, as for PyTorch. Names are the variables' paths without the optimizer's own name
(``adam/`` vs ``adam_1/`` when a cell is re-run); the configuration (``get_config()``) is the
structure. Restoring needs a built optimizer (one that has taken a step or was ``build()``-t on the
model's trainable variables): Keras creates the moment variables only then.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import ShapeMismatchError
from .base import OptimizerAdapter, match_state

STRUCTURE_FORMAT = "keras.optimizer/1"


class KerasOptimizerAdapter(OptimizerAdapter):
    """Keras 3 optimizer variables; restored in place, all shapes checked first."""

    framework = "keras-optimizer"

    def handles(self, obj: object) -> bool:
        if "keras" not in sys.modules:
            return False
        return any(cls.__module__.split(".")[0] == "keras" and cls.__name__ == "BaseOptimizer"
                   for cls in type(obj).__mro__)

    def _named(self, optimizer: Any) -> dict[str, Any]:
        named: dict[str, Any] = {}
        for variable in optimizer.variables:
            name = variable.path.split("/", 1)[-1]
            unique, n = name, 1
            while unique in named:
                n += 1
                unique = f"{name}#{n}"
            named[unique] = variable
        return named

    def get_state(self, optimizer: Any) -> dict[str, np.ndarray]:
        return {name: np.array(v.numpy()) for name, v in self._named(optimizer).items()}

    def structure(self, optimizer: Any) -> object | None:
        config = json.loads(json.dumps(optimizer.get_config(), default=str))
        config.pop("name", None)
        return {"format": STRUCTURE_FORMAT, "class": type(optimizer).__name__, "config": config}

    def set_state(self, optimizer: Any, state: Mapping[str, np.ndarray], owned: bool = False) -> None:
        named = self._named(optimizer)
        live = {k: (tuple(v.shape), str(v.dtype)) for k, v in named.items()}
        try:
            pairs = match_state(live, state)
        except ShapeMismatchError as exc:
            built = getattr(optimizer, "built", True)
            hint = "" if built else " (build it first: optimizer.build(model.trainable_variables), or train a step)"
            raise ShapeMismatchError(f"{exc}{hint}") from exc
        for key, stored in pairs.items():
            named[key].assign(state[stored])

    def load_version(self, optimizer: Any, structure: object, state: Mapping[str, np.ndarray]) -> Any:
        if isinstance(structure, dict) and structure.get("class") not in (None, type(optimizer).__name__):
            raise ShapeMismatchError(f"the version is the state of a {structure.get('class')}, the optimizer a "
                                     f"{type(optimizer).__name__}: optimizer left unchanged")
        self.set_state(optimizer, state)
        return optimizer

    def library_versions(self) -> dict[str, str]:
        return {"keras": sys.modules["keras"].__version__}

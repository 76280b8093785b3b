"""Adapter for a plain ``dict`` of numpy arrays: the framework-free model."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .base import match_state


class NumpyDictAdapter:
    """Models that are ``dict[str, numpy.ndarray]``; checkout replaces the arrays in the dict."""

    framework = "numpy"

    def handles(self, obj: object) -> bool:
        return isinstance(obj, dict) and all(
            isinstance(k, str) and isinstance(v, np.ndarray | np.generic) for k, v in obj.items()
        )

    def get_state(self, model: dict) -> dict[str, np.ndarray]:
        return {name: np.asarray(model[name]) for name in sorted(model)}

    def set_state(self, model: dict, state: Mapping[str, np.ndarray], owned: bool = False) -> None:
        live = {name: (np.shape(array), np.asarray(array).dtype.name) for name, array in model.items()}
        pairs = match_state(live, state)
        taken: set[int] = set()
        for live_name, stored_name in pairs.items():
            array = state[stored_name]
            # An owned array is handed over once; a second use of the same array gets a copy.
            if owned and id(array) not in taken and array.flags.writeable:
                taken.add(id(array))
                model[live_name] = array
            else:
                model[live_name] = np.array(array, copy=True)

    def structure(self, model: dict) -> object | None:
        return None

    def build(self, structure: object, state: Mapping[str, np.ndarray], unsafe: bool = False,
              classes: Mapping[str, type] | None = None) -> dict:
        return {name: np.array(array, copy=True) for name, array in state.items()}

    def extra_metadata(self, model: dict) -> dict:
        return {}

    def fit_metrics(self, model: dict) -> dict[str, float]:
        return {}

    def library_versions(self) -> dict[str, str]:
        return {"numpy": np.__version__}

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

    def set_state(self, model: dict, state: Mapping[str, np.ndarray]) -> None:
        live = {name: (np.shape(array), np.asarray(array).dtype.name) for name, array in model.items()}
        pairs = match_state(live, state)
        for live_name, stored_name in pairs.items():
            model[live_name] = np.array(state[stored_name], copy=True)

    def structure(self, model: dict) -> object | None:
        return None

    def build(self, structure: object, state: Mapping[str, np.ndarray], unsafe: bool = False) -> dict:
        return {name: np.array(array, copy=True) for name, array in state.items()}

    def extra_metadata(self, model: dict) -> dict:
        return {}

    def fit_metrics(self, model: dict) -> dict[str, float]:
        return {}

    def library_versions(self) -> dict[str, str]:
        return {"numpy": np.__version__}

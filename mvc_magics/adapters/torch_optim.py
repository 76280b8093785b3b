"""Adapter for PyTorch optimizers (``torch.optim.Optimizer``): their state, so training resumes exactly.

Tensors of ``optimizer.state_dict()["state"]`` (Adam's ``exp_avg``, ``exp_avg_sq``, ``step``; SGD's
``momentum_buffer``) are the tensors, named ``state/<parameter index>/<key>``; the parameter groups
(learning rate, betas, which parameters) are the structure. Restoring goes through the optimizer's
own ``load_state_dict``, which checks the groups against the optimizer before changing anything
and moves each tensor to its parameter's device and dtype. An optimizer has no rebuild: it belongs
to a live model, so it is only ever restored into an existing optimizer.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import ShapeMismatchError, UnsupportedModelError
from .base import OptimizerAdapter, match_state
from .torch import _plain, from_numpy, to_numpy

STRUCTURE_FORMAT = "torch.optim/1"


class TorchOptimizerAdapter(OptimizerAdapter):
    """``torch.optim.Optimizer`` state: tensors per parameter, hyper-parameters as structure."""

    framework = "torch-optimizer"

    def handles(self, obj: object) -> bool:
        torch = sys.modules.get("torch")
        return torch is not None and isinstance(obj, torch.optim.Optimizer)

    def _state_dict(self, optimizer: Any) -> dict:
        return optimizer.state_dict()

    def get_state(self, optimizer: Any) -> dict[str, np.ndarray]:
        state = self._state_dict(optimizer)["state"]
        tensors = {f"state/{index}/{key}": to_numpy(value) for index, entry in sorted(state.items())
                   for key, value in sorted(entry.items()) if hasattr(value, "detach")}
        if not tensors:
            raise UnsupportedModelError("the optimizer has no state yet (no step taken): nothing to version")
        return tensors

    def structure(self, optimizer: Any) -> object | None:
        saved = self._state_dict(optimizer)
        try:
            groups = [{k: _plain(v) for k, v in group.items()} for group in saved["param_groups"]]
        except TypeError as exc:
            raise UnsupportedModelError(f"an optimizer hyper-parameter is a {exc}, not a number or flag") from exc
        # Entries that are not tensors (None momentum buffers, plain-number steps) are structure.
        scalars = {f"{index}/{key}": _plain(value) for index, entry in sorted(saved["state"].items())
                   for key, value in sorted(entry.items()) if not hasattr(value, "detach")}
        return {"format": STRUCTURE_FORMAT, "class": f"{type(optimizer).__module__}.{type(optimizer).__qualname__}",
                "param_groups": groups, "scalars": scalars}

    def set_state(self, optimizer: Any, state: Mapping[str, np.ndarray], owned: bool = False) -> None:
        self.load_version(optimizer, self.structure(optimizer), state)

    def load_version(self, optimizer: Any, structure: object, state: Mapping[str, np.ndarray]) -> Any:
        """``optimizer.load_state_dict`` of the stored state; refuses another optimizer class or shapes."""
        if not isinstance(structure, dict) or structure.get("format") != STRUCTURE_FORMAT:
            raise UnsupportedModelError("this version holds no PyTorch optimizer state")
        own_class = f"{type(optimizer).__module__}.{type(optimizer).__qualname__}"
        if structure.get("class") != own_class:
            raise ShapeMismatchError(f"the version is the state of a {structure.get('class')}, the optimizer a "
                                     f"{own_class}: optimizer left unchanged")
        try:
            live = {k: (v.shape, v.dtype.name) for k, v in self.get_state(optimizer).items()}
        except UnsupportedModelError:  # no step taken yet: nothing to compare shapes with
            live = {}
        if live:
            match_state(live, state)
        entries: dict[int, dict[str, Any]] = {}
        for name, array in state.items():
            _prefix, index, key = name.split("/", 2)
            entries.setdefault(int(index), {})[key] = from_numpy(array).clone()
        for name, value in (structure.get("scalars") or {}).items():
            index, key = name.split("/", 1)
            entries.setdefault(int(index), {})[key] = value
        groups = [dict(group) for group in structure["param_groups"]]
        for group in groups:
            if isinstance(group.get("betas"), list):
                group["betas"] = tuple(group["betas"])
        try:
            optimizer.load_state_dict({"state": entries, "param_groups": groups})
        except (ValueError, KeyError, RuntimeError) as exc:
            raise ShapeMismatchError(f"the optimizer state does not fit this optimizer: {str(exc)[:200]}") from exc
        return optimizer

    def library_versions(self) -> dict[str, str]:
        return {"torch": sys.modules["torch"].__version__}

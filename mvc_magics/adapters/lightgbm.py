"""Adapter for LightGBM boosters (``lightgbm.Booster``), through LightGBM's own text model format.

The text model (``booster.model_to_string()``) is split where LightGBM itself separates it: the
header, one part per tree (``Tree=0``, ``Tree=1``...) and the footer (feature importances and
parameters). Each part is stored as a tensor of its UTF-8 bytes, so a booster trained further
shares every earlier tree with its parent (stored once), and a diff names the trees that changed.
Rebuilding is ``lightgbm.Booster(model_str=...)``: LightGBM parses text, nothing is unpickled, and
the text is checked first (:mod:`.lightgbm_text`), since LightGBM kills the process on some
malformed trees instead of raising.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..errors import ShapeMismatchError, UnsupportedModelError
from .lightgbm_text import check_model_text
from .trust import shown

STRUCTURE_FORMAT = "lightgbm.text/1"
_TREE = re.compile(r"^Tree=(\d+)$", re.M)


def split_model(text: str) -> dict[str, str]:
    """The model text as ordered parts: ``header``, ``tree/<i>``..., ``footer`` (joined, the text)."""
    starts = [(m.start(), f"tree/{m.group(1)}") for m in _TREE.finditer(text)]
    end = text.find("end of trees")
    if not starts or end < 0:
        return {"header": text}
    bounds = [(0, "header"), *starts, (end, "footer")]
    return {name: text[start:(bounds[i + 1][0] if i + 1 < len(bounds) else len(text))]
            for i, (start, name) in enumerate(bounds)}


class LightGBMAdapter:
    """``lightgbm.Booster`` models: header, trees and footer of the text model as tensors."""

    framework = "lightgbm"

    def handles(self, obj: object) -> bool:
        lightgbm = sys.modules.get("lightgbm")
        return lightgbm is not None and isinstance(obj, lightgbm.Booster)

    def get_state(self, model: Any) -> dict[str, np.ndarray]:
        parts = split_model(model.model_to_string())
        return {name: np.frombuffer(part.encode("utf-8"), np.uint8) for name, part in parts.items()}

    def structure(self, model: Any) -> object | None:
        return {"format": STRUCTURE_FORMAT, "parts": list(split_model(model.model_to_string()))}

    def _text(self, structure: object, state: Mapping[str, np.ndarray]) -> str:
        names = structure.get("parts") if isinstance(structure, dict) else None
        if not isinstance(names, list) or any(n not in state for n in names):
            raise ShapeMismatchError("the version's LightGBM model parts are incomplete; model left unchanged")
        try:
            return "".join(np.asarray(state[n], np.uint8).tobytes().decode("utf-8") for n in names)
        except UnicodeDecodeError as exc:
            raise ShapeMismatchError("the stored LightGBM model is not UTF-8 text") from exc

    def build(self, structure: object, state: Mapping[str, np.ndarray], unsafe: bool = False,
              classes: Iterable[type] = ()) -> Any:
        import lightgbm

        text = self._text(structure, state)
        check_model_text(text)
        try:
            return lightgbm.Booster(model_str=text)
        except Exception as exc:
            raise UnsupportedModelError(f"LightGBM cannot load the stored model: {shown(exc, 200)}") from exc

    def load_version(self, model: Any, structure: object, state: Mapping[str, np.ndarray]) -> Any:
        """Parse the stored model into a new booster first; only then reload ``model`` from it."""
        text = self._text(structure, state)
        self.build(structure, state)  # raises on anything LightGBM would not load: model unchanged
        model.model_from_string(text)
        return model

    def set_state(self, model: Any, state: Mapping[str, np.ndarray], owned: bool = False) -> None:
        self.load_version(model, {"format": STRUCTURE_FORMAT, "parts": list(state)}, state)

    def average_refusal(self, structure: object) -> str | None:
        return "boosted trees cannot be averaged weight by weight: their trees are not aligned parameters"

    export_formats = ("lightgbm",)

    def export(self, structure: object, state: Mapping[str, np.ndarray], path: str, fmt: str) -> None:
        """LightGBM's text model file: ``lightgbm.Booster(model_file=path)`` loads it."""
        with open(path, "w", encoding="utf-8") as out:
            out.write(self._text(structure, state))

    def extra_metadata(self, model: Any) -> dict:
        return {}

    def fit_metrics(self, model: Any) -> dict[str, float]:
        return {}

    def library_versions(self) -> dict[str, str]:
        return {"lightgbm": sys.modules["lightgbm"].__version__}
